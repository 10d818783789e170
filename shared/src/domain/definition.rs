use std::collections::BTreeSet;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantNames};
use time::OffsetDateTime;

use super::{DefinitionKey, OAuthQuirks, OrgId, Sealed, Verify};

/// How a connection authenticates against the third-party app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumString, IntoStaticStr, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AuthKind {
    ApiKey,
    Basic,
    Oauth2AuthorizationCode,
    Oauth2ClientCredentials,
    Custom,
    /// RFC 8628 device authorization: the user approves a code shown to them on another
    /// device; Latchkey polls the token endpoint (SPEC section 12).
    Oauth2DeviceCode,
    /// RFC 7523 section 2.1: Latchkey signs a JWT assertion with the definition's private key
    /// and exchanges it for an access token (service accounts; no user, no refresh token).
    Oauth2JwtBearer,
    /// RFC 5849 OAuth 1.0a, three-legged: a request token, the user's approval at the provider,
    /// and an access token with its token secret, which executions sign their requests with
    /// (SPEC section 12). Tokens do not expire and are never refreshed.
    Oauth1,
}

impl AuthKind {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            Self::Oauth2AuthorizationCode
                | Self::Oauth2ClientCredentials
                | Self::Oauth2DeviceCode
                | Self::Oauth2JwtBearer
        )
    }

    /// Whether definitions of this kind carry the OAuth app settings of an organization (client
    /// or consumer credentials, provider endpoints), kept on a connection through a disconnect:
    /// the OAuth 2.0 kinds and OAuth 1.0a.
    pub fn has_app_settings(self) -> bool {
        self.is_oauth() || self == Self::Oauth1
    }

    /// Whether Latchkey obtains this kind's access tokens itself, with no user and no refresh
    /// token: client credentials and JWT bearer. A new token is simply requested again.
    pub fn grants_without_user(self) -> bool {
        matches!(self, Self::Oauth2ClientCredentials | Self::Oauth2JwtBearer)
    }
}

/// The type of an input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumString, IntoStaticStr, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum InputType {
    String,
    /// A secret: sealed at rest, never returned by a read.
    Password,
    Number,
    Boolean,
    Url,
    Text,
}

impl InputType {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    pub fn is_secret(self) -> bool {
        self == Self::Password
    }
}

/// Who may see and set an input.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, EnumString, IntoStaticStr, VariantNames,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Visibility {
    /// Customers see and set it.
    #[default]
    Customer,
    /// Customers may set it programmatically, but it is never shown to them.
    Embedded,
    /// Customers neither see nor set it.
    Organization,
}

impl Visibility {
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    pub fn customer_can_set(self) -> bool {
        self != Self::Organization
    }

    pub fn customer_can_see(self) -> bool {
        self == Self::Customer
    }
}

/// One input of a definition. A `password` input's default is never here: it is sealed in
/// [`Definition::secret_defaults`] and only its name is listed in `secret_default_names`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub label: String,
    #[serde(rename = "type")]
    pub kind: InputType,
    pub required: bool,
    pub default: Option<serde_json::Value>,
    pub visibility: Visibility,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Where the OAuth callback sends the user's browser afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirects {
    pub success_url: Option<String>,
    pub failure_url: Option<String>,
}

/// What a connection needs: a stored connection definition of one organization.
#[derive(Debug, Serialize, Deserialize)]
pub struct Definition {
    pub org: OrgId,
    pub key: DefinitionKey,
    pub label: String,
    pub description: Option<String>,
    pub auth: AuthKind,
    pub provider: Option<String>,
    pub inputs: IndexMap<String, Input>,
    pub redirects: Option<Redirects>,
    /// The provider quirks the organization stated (SPEC section 8), over the catalog entry's.
    #[serde(default)]
    pub oauth: OAuthQuirks,
    /// The request that checks a connection's credentials (SPEC section 10), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// Names of the `password` inputs that have a (sealed) default.
    #[serde(default)]
    pub secret_default_names: BTreeSet<String>,
    /// The sealed JSON object of `password` defaults, if any.
    #[serde(default)]
    pub secret_defaults: Option<Sealed>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The OAuth app settings: the well-known inputs of OAuth definitions that configure the
/// organization's OAuth app rather than a customer's account.
pub const OAUTH_APP_SETTINGS: [&str; 20] = [
    "authorizeUrl",
    "tokenUrl",
    "revokeUrl",
    "scopes",
    "clientId",
    "clientSecret",
    "clientAuth",
    "pkce",
    "issuer",
    "deviceAuthorizationUrl",
    // JWT bearer (RFC 7523): the service account's assertion settings.
    "subject",
    "audience",
    "privateKey",
    "algorithm",
    "keyId",
    // OAuth 1.0a (RFC 5849): the consumer and its endpoints (authorizeUrl and privateKey above).
    "requestTokenUrl",
    "accessTokenUrl",
    "consumerKey",
    "consumerSecret",
    "signatureMethod",
];

impl Definition {
    /// Whether connections read input `name` from this definition at each use rather than from
    /// a copy made when they were created (SPEC section 8, app settings by reference): the
    /// OAuth app settings of `organization` visibility. A connection that sets one itself
    /// keeps its own value.
    pub fn by_reference(&self, name: &str) -> bool {
        self.auth.has_app_settings()
            && OAUTH_APP_SETTINGS.contains(&name)
            && self.inputs.get(name).is_some_and(|i| i.visibility == Visibility::Organization)
    }
}

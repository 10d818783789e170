//! An entry of the built-in provider catalog (`shared/providers.json`, loaded by
//! [`crate::catalog`]): the facts a definition naming it starts from. Plain data, passed to
//! definition parsing by whoever holds the catalog.
//!
//! OAuth 2.0 entries carry endpoints, scopes and quirks; `api_key` and `basic` entries carry the
//! inputs a connection gives and a `verify` request that checks them. Which blocks an entry may
//! have follows from its `auth` (checked by the catalog's tests).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::{AuthKind, Input, InputType, OAuthQuirks, Verify, Visibility};

/// What the provider's token answers are like (documentation of the entry; the reader takes any
/// answer as it comes).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenResponse {
    /// `number` (RFC 6749), `string` (a number sent as a string), or `absent` (never sent: the
    /// token does not expire by itself, or the provider does not say).
    pub expires_in: ExpiresIn,
    /// Whether the provider issues refresh tokens (with the default scopes/params).
    pub refresh_token: bool,
    /// Whether a refresh returns a new refresh token that replaces the old one.
    #[serde(default)]
    pub rotates_refresh_token: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiresIn {
    #[default]
    Number,
    String,
    Absent,
}

/// An input a non-OAuth provider needs (`apiKey`, `accountSid`...), in the form of a
/// definition's input without a default. A definition naming the provider gets it unless it
/// declares an input of that name itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderInput {
    pub label: String,
    /// `password` for secrets (sealed, never read back), `string` for account ids and the like.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Required unless the entry says otherwise.
    #[serde(default = "required_by_default")]
    pub required: bool,
    /// Customers see and set it unless the entry says otherwise.
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn required_by_default() -> bool {
    true
}

impl ProviderInput {
    /// The definition input this entry gives a definition that names the provider.
    pub fn to_input(&self) -> Input {
        Input {
            label: self.label.clone(),
            kind: self.kind,
            required: self.required,
            default: None,
            visibility: self.visibility,
            description: self.description.clone(),
        }
    }
}

/// One provider of the catalog.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The catalog key (`slack`), used as a definition's `provider`.
    pub key: String,
    pub name: String,
    /// How connections authenticate: `oauth2_authorization_code`, `oauth2_client_credentials`,
    /// `api_key`, `basic` (or `custom`).
    pub auth: AuthKind,
    /// https URLs (OAuth only). `{name}` placeholders (e.g. Shopify's `{shop}`) are filled from
    /// the connection's inputs of that name, listed in `url_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_url: Option<String>,
    /// The RFC 8628 device authorization endpoint (`oauth2_device_code` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_url: Option<String>,
    /// OAuth 1.0a (`oauth1` only, RFC 5849 section 2): the temporary credential request
    /// endpoint; `authorize_url` is the resource owner authorization endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_token_url: Option<String>,
    /// OAuth 1.0a: the token request endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_url: Option<String>,
    /// OAuth 1.0a: the `oauth_signature_method` the provider expects (`HMAC-SHA1` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_method: Option<String>,
    /// Inputs the URLs need (customer-settable strings), e.g. `["shop"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_params: Vec<String>,
    /// The scopes a definition starts from (OAuth only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_scopes: Vec<String>,
    /// Whether the provider supports PKCE (S256); OAuth only, absent means yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkce: Option<bool>,
    /// `client_secret_basic` or `client_secret_post`; OAuth only, absent means
    /// `client_secret_basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
    /// The provider's quirks, in the very form of a definition's `oauth` block (which may
    /// override any of it): scope separator and parameter, extra parameters, token path,
    /// captured values.
    #[serde(default, skip_serializing_if = "is_default")]
    pub oauth: OAuthQuirks,
    /// What its token answers are like (OAuth only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_response: Option<TokenResponse>,
    /// Seconds to refresh before the stated expiry, on top of the lookup's `min_valid_seconds`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub expiry_buffer_secs: u64,
    /// The inputs a connection gives (`api_key` and `basic` providers), by name.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub inputs: IndexMap<String, ProviderInput>,
    /// A cheap request that says whether a connection's credentials are accepted (SPEC section
    /// 10); its templates name the inputs above, or `access_token` for OAuth providers. A
    /// definition naming the provider runs it unless it states its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// The public documentation these facts come from (https).
    pub docs_url: String,
    /// A note for whoever picks the entry: which region or site it is for, or why it has no
    /// `verify` request or no revocation URL (one sentence or two, plain text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Provider {
    /// Whether the provider supports PKCE (an OAuth entry that does not say: yes).
    pub fn supports_pkce(&self) -> bool {
        self.pkce.unwrap_or(true)
    }

    /// How the client authenticates at the token endpoint (`client_secret_basic` unless the
    /// entry says otherwise).
    pub fn client_auth_method(&self) -> &str {
        self.client_auth.as_deref().unwrap_or("client_secret_basic")
    }
}

//! An entry of the built-in provider catalog (`shared/providers.json`, loaded by
//! [`crate::catalog`]): the facts a definition naming it starts from. Plain data, passed to
//! definition parsing by whoever holds the catalog.

use serde::{Deserialize, Serialize};

use super::{AuthKind, OAuthQuirks};

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

/// One provider of the catalog.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The catalog key (`slack`), used as a definition's `provider`.
    pub key: String,
    pub name: String,
    /// `oauth2_authorization_code` or `oauth2_client_credentials`.
    pub auth: AuthKind,
    /// https URLs. `{name}` placeholders (e.g. Shopify's `{shop}`) are filled from the
    /// connection's inputs of that name, listed in `url_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    pub token_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_url: Option<String>,
    /// Inputs the URLs need (customer-settable strings), e.g. `["shop"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_params: Vec<String>,
    pub default_scopes: Vec<String>,
    /// Whether the provider supports PKCE (S256).
    pub pkce: bool,
    /// `client_secret_basic` or `client_secret_post`.
    pub client_auth: String,
    /// The provider's quirks, in the very form of a definition's `oauth` block (which may
    /// override any of it): scope separator and parameter, extra parameters, token path,
    /// captured values.
    #[serde(default)]
    pub oauth: OAuthQuirks,
    pub token_response: TokenResponse,
    /// Seconds to refresh before the stated expiry, on top of the lookup's `min_valid_seconds`.
    #[serde(default)]
    pub expiry_buffer_secs: u64,
    /// The public documentation these facts come from.
    pub docs_url: String,
}

//! OAuth 2.0 facts that belong to the domain: the provider quirks a definition (or a catalog
//! entry) carries, and the classes of refusal a provider's answer can mean (SPEC section 8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How one provider bends RFC 6749, as a definition's `oauth` block or a catalog entry states it:
///
/// ```json
/// { "scope_separator": ",", "scope_param": "user_scope",
///   "authorization_params": {"access_type": "offline"}, "token_params": {"expires_in": "86400"},
///   "token_path": "authed_user", "capture": {"token": ["api_domain"], "callback": ["realmId"]},
///   "required_scopes": ["read"] }
/// ```
///
/// Every field is optional. A definition that names a catalog provider is read as its own block
/// [over](OAuthQuirks::over) the provider's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthQuirks {
    /// How scopes are joined in the authorize URL and a client-credentials request (RFC 6749
    /// section 3.3 says a space; some providers want `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_separator: Option<String>,
    /// The authorize URL parameter that carries the scopes (`scope`; Slack user tokens:
    /// `user_scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_param: Option<String>,
    /// Extra authorize URL parameters (Google's `access_type=offline`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorization_params: BTreeMap<String, String>,
    /// Extra form parameters of every token request: code exchange, refresh, client credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub token_params: BTreeMap<String, String>,
    /// Dotted path of the object of the token answer that holds the access token (Slack user
    /// tokens: `authed_user`); `scope`, `token_type`, `expires_in` and `refresh_token` are read
    /// from that object too. Empty: the top level (to undo a catalog entry's path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
    /// Values kept when a connection is authorized and returned by lookups as fields.
    #[serde(default, skip_serializing_if = "Capture::is_empty")]
    pub capture: Capture,
    /// Scopes the grant must include; a grant without one of them turns the connection red
    /// `scopes_missing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// How long a refresh token lives, in seconds, when the token answer does not say
    /// (SPEC section 10): a newly issued refresh token lapses this long after it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_lifetime_secs: Option<u64>,
    /// The member of the token answer (in the `token_path` object) that states the refresh
    /// token's lifetime in seconds, when the provider does not call it `refresh_token_expires_in`
    /// (QuickBooks: `x_refresh_token_expires_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_in_member: Option<String>,
}

/// What to keep from an authorization besides the tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Dotted paths into the token answer (`instance_url`, `team.id`); sealed with the tokens
    /// (an `id_token` is a credential), returned under the path as field name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token: Vec<String>,
    /// Query parameters of the redirect back from the provider (QuickBooks' `realmId`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callback: Vec<String>,
}

impl Capture {
    pub fn is_empty(&self) -> bool {
        self.token.is_empty() && self.callback.is_empty()
    }
}

fn joined(own: &[String], base: &[String]) -> Vec<String> {
    let mut all = base.to_vec();
    all.extend(own.iter().filter(|n| !base.contains(n)).cloned());
    all
}

impl OAuthQuirks {
    /// The separator RFC 6749 uses when none is stated.
    pub const DEFAULT_SEPARATOR: &'static str = " ";
    pub const DEFAULT_SCOPE_PARAM: &'static str = "scope";
    /// The token answer member that states a refresh token's lifetime when the definition names
    /// no other (Microsoft, GitHub apps, Box).
    pub const DEFAULT_REFRESH_TOKEN_EXPIRES_IN: &'static str = "refresh_token_expires_in";

    /// `self` (a definition's block) over `base` (its catalog provider's): a field set here
    /// wins, parameter maps are merged key by key, and capture lists are joined.
    pub fn over(&self, base: &OAuthQuirks) -> OAuthQuirks {
        let merged = |own: &BTreeMap<String, String>, base: &BTreeMap<String, String>| {
            let mut all = base.clone();
            all.extend(own.clone());
            all
        };
        OAuthQuirks {
            scope_separator: self.scope_separator.clone().or_else(|| base.scope_separator.clone()),
            scope_param: self.scope_param.clone().or_else(|| base.scope_param.clone()),
            authorization_params: merged(&self.authorization_params, &base.authorization_params),
            token_params: merged(&self.token_params, &base.token_params),
            token_path: self.token_path.clone().or_else(|| base.token_path.clone()),
            capture: Capture {
                token: joined(&self.capture.token, &base.capture.token),
                callback: joined(&self.capture.callback, &base.capture.callback),
            },
            required_scopes: if self.required_scopes.is_empty() {
                base.required_scopes.clone()
            } else {
                self.required_scopes.clone()
            },
            refresh_token_lifetime_secs: self.refresh_token_lifetime_secs.or(base.refresh_token_lifetime_secs),
            refresh_token_expires_in_member: self
                .refresh_token_expires_in_member
                .clone()
                .or_else(|| base.refresh_token_expires_in_member.clone()),
        }
    }

    /// The token answer member stating the refresh token's lifetime.
    pub fn refresh_token_expires_in_member(&self) -> &str {
        self.refresh_token_expires_in_member.as_deref().unwrap_or(Self::DEFAULT_REFRESH_TOKEN_EXPIRES_IN)
    }

    pub fn separator(&self) -> &str {
        self.scope_separator.as_deref().unwrap_or(Self::DEFAULT_SEPARATOR)
    }

    pub fn scope_param(&self) -> &str {
        self.scope_param.as_deref().unwrap_or(Self::DEFAULT_SCOPE_PARAM)
    }

    /// The token path, `None` for the top level.
    pub fn token_path(&self) -> Option<&str> {
        self.token_path.as_deref().filter(|p| !p.is_empty())
    }

    /// Splits a scope list as written in an input or an answer: on the separator, commas and
    /// white space (a provider that joins with `,` may still answer with spaces).
    pub fn split_scopes(&self, s: &str) -> Vec<String> {
        s.split(self.separator())
            .flat_map(|part| part.split(|c: char| c.is_whitespace() || c == ','))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Why a provider will not give a connection tokens any more, each with who must act
/// (SPEC section 8). Stored as the connection's `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Refusal {
    /// The grant is dead (`invalid_grant`, a revoked or expired refresh token): the customer
    /// authorizes again.
    GrantRefused,
    /// The OAuth app's client settings are wrong or rotated (`invalid_client`,
    /// `unauthorized_client`): the organization updates the definition.
    ClientRejected,
    /// The grant lacks scopes the definition requires.
    ScopesMissing,
    /// The access token expired and nothing can renew it.
    TokenExpired,
    /// The token endpoint's origin changed since the grant was obtained: tokens are not sent
    /// to another origin.
    ReauthorizationRequired,
}

impl Refusal {
    /// The class's `error.code`: `grant_refused`, `client_rejected`, `scopes_missing`,
    /// `token_expired`, `reauthorization_required`.
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// What happened and who must act, for the connection's `error.message` and its log.
    pub fn message(self, detail: &str) -> String {
        let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
        match self {
            Self::GrantRefused => format!(
                "the provider refused the connection's grant{detail}: the customer must authorize the connection again"
            ),
            Self::ClientRejected => format!(
                "the provider rejected the OAuth app's client settings{detail}: the organization must update the \
                 definition's client ID, secret or endpoints; the customer cannot fix this"
            ),
            Self::ScopesMissing => {
                format!("the grant lacks required scopes{detail}: the customer must authorize again and grant them")
            }
            Self::TokenExpired => format!(
                "the access token expired and the provider gave no way to renew it{detail}: the customer must \
                 authorize the connection again"
            ),
            Self::ReauthorizationRequired => format!(
                "the token endpoint changed since the grant was obtained{detail}; tokens are never sent to another \
                 origin: the customer must authorize the connection again"
            ),
        }
    }
}

/// A provider's own error code as Latchkey keeps it: `[A-Za-z0-9_.-]`, at most 64 characters
/// (anything else is dropped), so it is safe in logs, redirects and JSON.
pub fn provider_code(raw: &str) -> Option<String> {
    let kept: String =
        raw.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')).take(64).collect();
    (!kept.is_empty()).then_some(kept)
}

/// Form fields of token requests that Latchkey sets itself: a definition's `token_params` may
/// not name them (RFC 6749 sections 2.3.1, 4.1.3, 6; RFC 7636 section 4.5).
pub const RESERVED_TOKEN_PARAMS: [&str; 9] = [
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "token",
    "device_code",
];

/// `scheme://host[:port]` of a URL: what a grant is bound to.
pub fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_block_overrides_its_provider_field_by_field() {
        let catalog = OAuthQuirks {
            scope_separator: Some(",".into()),
            authorization_params: BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
            token_path: Some("authed_user".into()),
            capture: Capture { token: vec!["x".into()], callback: vec![] },
            ..Default::default()
        };
        let own = OAuthQuirks {
            scope_param: Some("user_scope".into()),
            authorization_params: BTreeMap::from([("b".into(), "3".into())]),
            token_path: Some(String::new()),
            capture: Capture { token: vec!["y".into(), "x".into()], callback: vec!["realmId".into()] },
            ..Default::default()
        };
        let q = own.over(&catalog);
        assert_eq!(q.separator(), ",");
        assert_eq!(q.scope_param(), "user_scope");
        assert_eq!(q.authorization_params["a"], "1");
        assert_eq!(q.authorization_params["b"], "3");
        assert_eq!(q.token_path(), None, "an empty path undoes the catalog's");
        assert_eq!(q.capture.token, vec!["x".to_owned(), "y".to_owned()]);
        assert_eq!(q.capture.callback, vec!["realmId".to_owned()]);
    }

    #[test]
    fn scopes_split_on_the_separator_commas_and_spaces() {
        let plus = OAuthQuirks { scope_separator: Some("+".into()), ..Default::default() };
        assert_eq!(plus.split_scopes("a+b c,d"), vec!["a", "b", "c", "d"]);
        let pipes = OAuthQuirks { scope_separator: Some("||".into()), ..Default::default() };
        assert_eq!(pipes.split_scopes(":||a"), vec![":", "a"]);
        assert_eq!(OAuthQuirks::default().split_scopes(" read,activity:read_all "), vec!["read", "activity:read_all"]);
    }

    #[test]
    fn provider_codes_are_reduced() {
        assert_eq!(provider_code("bad_refresh_token").as_deref(), Some("bad_refresh_token"));
        assert_eq!(provider_code("<script>x</script>").as_deref(), Some("scriptxscript"));
        assert_eq!(provider_code("é\n").as_deref(), None);
        assert_eq!(provider_code(&"a".repeat(100)).map(|c| c.len()), Some(64));
    }
}

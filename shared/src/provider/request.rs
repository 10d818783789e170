//! The forms Latchkey posts to providers, one per grant (RFC 6749) and for revocation
//! (RFC 7009), each with the client's authentication.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::{FormPost, Reach};
use crate::domain::RESERVED_TOKEN_PARAMS;

/// How the client authenticates at the token endpoint (RFC 6749 section 2.3.1). Serialized
/// (in sealed revocation jobs) as its RFC 7591 `token_endpoint_auth_method` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientAuthMethod {
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    #[serde(rename = "client_secret_basic")]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    #[serde(rename = "client_secret_post")]
    Post,
}

impl ClientAuthMethod {
    pub fn parse(s: Option<&str>) -> Self {
        if s == Some("client_secret_post") { Self::Post } else { Self::Basic }
    }
}

/// The OAuth client: its id, its secret (none for a public client) and how it sends them.
pub struct ClientAuth {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub method: ClientAuthMethod,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "[REDACTED]"))
            .field("method", &self.method)
            .finish()
    }
}

/// RFC 6749 section 2.3.1: client credentials in a Basic header are form-encoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What a token request asks for.
pub enum GrantRequest<'a> {
    /// RFC 6749 section 4.1.3 (and RFC 7636 section 4.5 for the verifier).
    AuthorizationCode { code: &'a str, redirect_uri: &'a str, verifier: Option<&'a SecretString> },
    /// RFC 6749 section 6.
    RefreshToken { refresh_token: &'a SecretString },
    /// RFC 6749 section 4.4.2.
    ClientCredentials { scope: Option<String> },
    /// RFC 8628 section 3.4: a poll of a pending device authorization.
    DeviceCode { device_code: &'a SecretString },
    /// RFC 7523 section 2.1: a signed JWT assertion exchanged for an access token.
    JwtBearer { assertion: &'a SecretString, scope: Option<String> },
}

/// The `grant_type` of RFC 7523 section 2.1.
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The `grant_type` of RFC 8628 section 3.4.
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn text(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

impl ClientAuth {
    /// Adds the client's authentication to a form: Basic when it has a secret and uses
    /// `client_secret_basic`, otherwise `client_id` (and the secret, if any) in the form; nothing
    /// for a client with neither (a JWT bearer grant without client authentication, RFC 7523
    /// section 3.1).
    fn authenticate(&self, url: url::Url, reach: Reach, mut form: Vec<(String, SecretString)>) -> FormPost {
        let basic = match (self.method, &self.client_secret) {
            (ClientAuthMethod::Basic, Some(secret)) => {
                Some((form_encode(&self.client_id), Some(SecretString::from(form_encode(secret.expose_secret())))))
            }
            _ if self.client_id.is_empty() && self.client_secret.is_none() => None,
            _ => {
                form.push(("client_id".into(), text(&self.client_id)));
                if let Some(secret) = &self.client_secret {
                    form.push(("client_secret".into(), secret.clone()));
                }
                None
            }
        };
        FormPost { url, reach, basic, form }
    }

    /// A token request: the grant's fields, then the definition's `token_params` (reserved
    /// names skipped), then the client's authentication.
    pub fn token_request(
        &self,
        url: url::Url,
        reach: Reach,
        grant: GrantRequest<'_>,
        token_params: &BTreeMap<String, String>,
    ) -> FormPost {
        let mut form: Vec<(String, SecretString)> = Vec::new();
        match grant {
            GrantRequest::AuthorizationCode { code, redirect_uri, verifier } => {
                form.push(("grant_type".into(), text("authorization_code")));
                form.push(("code".into(), text(code)));
                form.push(("redirect_uri".into(), text(redirect_uri)));
                if let Some(v) = verifier {
                    form.push(("code_verifier".into(), v.clone()));
                }
            }
            GrantRequest::RefreshToken { refresh_token } => {
                form.push(("grant_type".into(), text("refresh_token")));
                form.push(("refresh_token".into(), refresh_token.clone()));
            }
            GrantRequest::ClientCredentials { scope } => {
                form.push(("grant_type".into(), text("client_credentials")));
                if let Some(scope) = scope {
                    form.push(("scope".into(), text(&scope)));
                }
            }
            GrantRequest::DeviceCode { device_code } => {
                form.push(("grant_type".into(), text(DEVICE_CODE_GRANT_TYPE)));
                form.push(("device_code".into(), device_code.clone()));
            }
            GrantRequest::JwtBearer { assertion, scope } => {
                form.push(("grant_type".into(), text(JWT_BEARER_GRANT_TYPE)));
                form.push(("assertion".into(), assertion.clone()));
                if let Some(scope) = scope {
                    form.push(("scope".into(), text(&scope)));
                }
            }
        }
        for (k, v) in token_params.iter().filter(|(k, _)| !RESERVED_TOKEN_PARAMS.contains(&k.as_str())) {
            if !form.iter().any(|(f, _)| f == k) {
                form.push((k.clone(), text(v)));
            }
        }
        self.authenticate(url, reach, form)
    }

    /// An RFC 8628 section 3.1 device authorization request: the scopes (if any), then the
    /// client's authentication (a public client sends its `client_id` in the form).
    pub fn device_authorization_request(&self, url: url::Url, reach: Reach, scope: Option<&str>) -> FormPost {
        let form = scope.map(|s| vec![("scope".into(), text(s))]).unwrap_or_default();
        self.authenticate(url, reach, form)
    }

    /// An RFC 7009 revocation request for one token, with its `token_type_hint`.
    pub fn revocation_request(&self, url: url::Url, reach: Reach, token: &SecretString, hint: &str) -> FormPost {
        let form = vec![("token".into(), token.clone()), ("token_type_hint".into(), text(hint))];
        self.authenticate(url, reach, form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(method: ClientAuthMethod, secret: Option<&str>) -> ClientAuth {
        ClientAuth { client_id: "id:1".into(), client_secret: secret.map(|s| SecretString::from(s.to_owned())), method }
    }

    fn url() -> url::Url {
        url::Url::parse("https://idp.example.com/token").unwrap()
    }

    #[test]
    fn basic_clients_send_form_encoded_credentials_in_the_header_only() {
        let rt = SecretString::from("rt".to_owned());
        let post = client(ClientAuthMethod::Basic, Some("s&cret")).token_request(
            url(),
            Reach::Any,
            GrantRequest::RefreshToken { refresh_token: &rt },
            &BTreeMap::from([("expires_in".to_owned(), "86400".to_owned()), ("grant_type".to_owned(), "x".to_owned())]),
        );
        let (id, secret) = post.basic.as_ref().unwrap();
        assert_eq!(id, "id%3A1");
        assert_eq!(secret.as_ref().unwrap().expose_secret(), "s%26cret");
        assert_eq!(post.field("grant_type"), Some("refresh_token"), "token_params never replace the grant");
        assert_eq!(post.field("expires_in"), Some("86400"));
        assert_eq!(post.field("client_secret"), None);
        assert!(!format!("{post:?}").contains("rt\""), "Debug shows field names only");
    }

    #[test]
    fn post_and_public_clients_send_the_id_in_the_form() {
        let post = client(ClientAuthMethod::Post, Some("s")).token_request(
            url(),
            Reach::Any,
            GrantRequest::ClientCredentials { scope: Some("a,b".into()) },
            &BTreeMap::new(),
        );
        assert!(post.basic.is_none());
        assert_eq!(post.field("client_id"), Some("id:1"));
        assert_eq!(post.field("client_secret"), Some("s"));
        assert_eq!(post.field("scope"), Some("a,b"));
        let public = client(ClientAuthMethod::Basic, None).revocation_request(
            url(),
            Reach::Any,
            &SecretString::from("t".to_owned()),
            "refresh_token",
        );
        assert!(public.basic.is_none());
        assert_eq!(public.field("client_id"), Some("id:1"));
        assert_eq!(public.field("token_type_hint"), Some("refresh_token"));
    }
}

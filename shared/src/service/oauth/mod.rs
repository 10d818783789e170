//! OAuth 2.0 in the service: a connection's effective settings ([`OAuthSettings`]), the
//! authorize step ([`authorize`]), the callback ([`callback`]) and the storage of token answers
//! ([`tokens`]); OAuth 1.0a's three legs are [`oauth1`]'s. Requests to providers and the reading of their answers live in
//! [`crate::provider`].

mod authorize;
mod callback;
mod device;
mod jwt_bearer;
mod oauth1;
mod reconnect;
mod tokens;

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::Value;

pub use authorize::{AuthorizeResponse, STATE_TTL, state_hash};
pub use callback::CallbackOutcome;
pub(crate) use device::DeviceWake;
pub use device::{Authorization, DeviceAuthorizeResponse, DevicePollPass};
pub use jwt_bearer::ASSERTION_LIFETIME;
pub(crate) use jwt_bearer::{
    AssertionInputs, AssertionSigner, kept_key_errors as jwt_bearer_kept_key_errors,
    value_errors as jwt_bearer_value_errors,
};
pub(crate) use oauth1::value_errors as oauth1_value_errors;
pub use oauth1::{OAUTH1_TOKEN_TYPE, Oauth1Credentials};
pub(crate) use tokens::TokenSecrets;

use super::{Result, Service, ServiceError};
use crate::catalog::{self, Provider};
use crate::domain::validate::{ALGORITHM_INPUT, PRIVATE_KEY_INPUT, check_secure_url, is_loopback_host};
use crate::domain::{AuthKind, Connection, Definition, FieldError, OAuthQuirks, origin_of};
use crate::provider::destination::{DestinationError, check_public_destination};
use crate::provider::request::GrantRequest;
use crate::provider::{ClientAuth, ClientAuthMethod, FormPost, Grant, Reach, TokenAnswer, TokenFailure};

/// The callback path under the public URL (`LATCHKEY_PUBLIC_URL`, or on Lambda the API
/// Gateway domain of the request).
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";
/// The input naming the expected RFC 9207 issuer of OAuth definitions.
pub const ISSUER_INPUT: &str = "issuer";

/// A provider endpoint and where its address may be.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub url: url::Url,
    pub reach: Reach,
}

impl Endpoint {
    pub fn origin(&self) -> String {
        origin_of(&self.url)
    }
}

/// A connection's effective OAuth settings: its own values, over the definition's app settings
/// (read when used: SPEC section 8), over the catalog provider's.
pub(crate) struct OAuthSettings {
    pub authorize_url: Option<url::Url>,
    /// The RFC 8628 device authorization endpoint (`oauth2_device_code` definitions).
    pub device_authorization: Option<Endpoint>,
    pub token: Endpoint,
    pub revoke: Option<Endpoint>,
    pub client: ClientAuth,
    pub pkce: bool,
    /// The scopes requested.
    pub scopes: Vec<String>,
    /// The definition's quirks over its catalog provider's.
    pub quirks: OAuthQuirks,
    pub issuer: Option<String>,
    pub provider: Option<&'static Provider>,
    /// The assertion signer of `oauth2_jwt_bearer` connections (RFC 7523 section 2.1).
    pub assertion: Option<AssertionSigner>,
}

impl OAuthSettings {
    /// The requested scopes joined with the provider's separator.
    pub fn scope_param(&self) -> Option<String> {
        (!self.scopes.is_empty()).then(|| self.scopes.join(self.quirks.separator()))
    }

    /// The token request of `grant` at this token endpoint, with the definition's `token_params`.
    pub fn token_request(&self, grant: GrantRequest<'_>) -> FormPost {
        self.client.token_request(self.token.url.clone(), self.token.reach, grant, &self.quirks.token_params)
    }

    /// Required scopes the granted ones lack.
    pub fn missing_scopes(&self, granted: &[String]) -> Vec<String> {
        self.quirks.required_scopes.iter().filter(|s| !granted.contains(s)).cloned().collect()
    }
}

/// A host label a customer may put into a provider URL (`{shop}`): letters, digits, hyphens.
fn valid_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

impl Service {
    /// Sends a token request and reads the answer with the definition's quirks.
    pub(crate) async fn request_token(
        &self,
        settings: &OAuthSettings,
        grant: GrantRequest<'_>,
    ) -> std::result::Result<TokenAnswer, TokenFailure> {
        let kind = match grant {
            GrantRequest::AuthorizationCode { .. } => Grant::AuthorizationCode,
            GrantRequest::RefreshToken { .. } => Grant::RefreshToken,
            // No user grant to refuse either: a refused assertion is the service account's.
            GrantRequest::ClientCredentials { .. } | GrantRequest::JwtBearer { .. } => Grant::ClientCredentials,
            GrantRequest::DeviceCode { .. } => Grant::DeviceCode,
        };
        // The outbound policy, at each call: the address called is the address checked.
        match check_public_destination(&settings.token.url, self.allow_loopback_providers()).await {
            Ok(()) => {}
            Err(DestinationError::Refused(why)) => return Err(TokenFailure::Forbidden { why }),
            Err(DestinationError::Unresolved) => {
                return Err(TokenFailure::Transient { code: "unresolved".to_owned(), retry_after: None });
            }
        }
        let post = settings.token_request(grant);
        match self.provider.post_form(&post).await {
            Ok(raw) => {
                let path = settings.quirks.token_path();
                let mut answer =
                    crate::provider::read_token_answer(&raw, kind, path, &|s| settings.quirks.split_scopes(s))?;
                if let Some(member) = &settings.quirks.refresh_token_expires_in_member {
                    answer.read_refresh_token_lifetime(member, path);
                }
                Ok(answer)
            }
            Err(e) => Err(TokenFailure::Transient { code: e.code().to_owned(), retry_after: None }),
        }
    }

    /// Resolves the OAuth settings of a connection. App settings (client id and secret,
    /// endpoints, scopes) that the connection does not set itself come from the definition as it
    /// is now, so a rotated client secret reaches every connection at its next use.
    pub(crate) async fn oauth_settings(&self, def: &Definition, c: &Connection) -> Result<OAuthSettings> {
        let own_secrets = self.open_secrets(c).await?;
        let inherits_secret = |name: &str| def.by_reference(name) && !own_secrets.contains_key(name);
        let def_secrets = if inherits_secret("clientSecret") || inherits_secret(PRIVATE_KEY_INPUT) {
            self.definition_secrets(def).await?
        } else {
            BTreeMap::new()
        };
        let provider = def.provider.as_deref().and_then(catalog::provider);
        let own = |name: &str| c.values.get(name).filter(|v| v.as_str() != Some(""));
        let inherited = |name: &str| def.by_reference(name).then(|| def.inputs.get(name)?.default.as_ref()).flatten();
        let value = |name: &str| own(name).or_else(|| inherited(name));
        let text = |name: &str| value(name).and_then(Value::as_str).filter(|s| !s.is_empty());
        let mut errors = Vec::new();

        // Placeholders of per-tenant provider URLs, filled from the connection's inputs.
        let fill = |template: &str, errors: &mut Vec<FieldError>| -> Option<String> {
            let mut url = template.to_owned();
            for p in provider.map(|p| p.url_params.as_slice()).unwrap_or_default() {
                match text(p) {
                    Some(v) if valid_label(v) => url = url.replace(&format!("{{{p}}}"), v),
                    _ => {
                        errors
                            .push(FieldError::new(format!("values.{p}"), "must be a host label (letters, digits, -)"));
                        return None;
                    }
                }
            }
            Some(url)
        };
        let endpoint = |name: &str, from_provider: Option<&str>, errors: &mut Vec<FieldError>| -> Option<Endpoint> {
            let raw = match (text(name), from_provider) {
                (Some(v), _) => v.to_owned(),
                (None, Some(t)) => fill(t, errors)?,
                (None, None) => return None,
            };
            match check_secure_url(&raw) {
                Ok(url) => {
                    // One outbound policy, whoever set the URL: public addresses only, checked
                    // again at connection time; loopback only where the deployment allows it.
                    let reach = if is_loopback_host(&url) { Reach::Any } else { Reach::PublicOnly };
                    Some(Endpoint { url, reach })
                }
                Err(msg) => {
                    errors.push(FieldError::new(format!("values.{name}"), msg.to_string()));
                    None
                }
            }
        };
        let authorize = endpoint("authorizeUrl", provider.and_then(|p| p.authorize_url.as_deref()), &mut errors);
        let token = endpoint("tokenUrl", provider.and_then(|p| p.token_url.as_deref()), &mut errors);
        let revoke = endpoint("revokeUrl", provider.and_then(|p| p.revoke_url.as_deref()), &mut errors);
        let device_authorization = endpoint(
            "deviceAuthorizationUrl",
            provider.and_then(|p| p.device_authorization_url.as_deref()),
            &mut errors,
        );
        if def.auth == AuthKind::Oauth2DeviceCode
            && device_authorization.is_none()
            && !errors.iter().any(|e| e.field == "values.deviceAuthorizationUrl")
        {
            errors.push(FieldError::new("values.deviceAuthorizationUrl", "is required for the device flow"));
        }
        if token.is_none() && !errors.iter().any(|e| e.field == "values.tokenUrl") {
            errors.push(FieldError::new("values.tokenUrl", "is required for OAuth"));
        }
        if def.auth == AuthKind::Oauth2AuthorizationCode
            && authorize.is_none()
            && !errors.iter().any(|e| e.field == "values.authorizeUrl")
        {
            errors.push(FieldError::new("values.authorizeUrl", "is required for OAuth"));
        }
        let jwt_bearer = def.auth == AuthKind::Oauth2JwtBearer;
        // A JWT bearer assertion authenticates by itself (RFC 7523 section 3.1): no client id
        // means no client authentication beside it.
        let client_id = text("clientId").map(str::to_owned).or_else(|| jwt_bearer.then(String::new));
        if client_id.is_none() {
            errors.push(FieldError::new("values.clientId", "is required for OAuth"));
        }
        let private_key = own_secrets.get(PRIVATE_KEY_INPUT).or_else(|| def_secrets.get(PRIVATE_KEY_INPUT));
        let assertion = match &token {
            Some(token) if jwt_bearer => AssertionSigner::resolve(
                AssertionInputs {
                    issuer: text(ISSUER_INPUT),
                    subject: text("subject"),
                    audience: text("audience"),
                    algorithm: text(ALGORITHM_INPUT),
                    key_id: text("keyId"),
                    private_key,
                    token_url: token.url.as_str(),
                },
                &mut errors,
            ),
            _ => None,
        };
        let (Some(token), Some(client_id), true) = (token, client_id, errors.is_empty()) else {
            return Err(ServiceError::Invalid(errors));
        };
        let quirks = match provider {
            Some(p) => def.oauth.over(&p.oauth),
            None => def.oauth.clone(),
        };
        let scopes = text("scopes").map(|s| quirks.split_scopes(s)).unwrap_or_default();
        let client_secret: Option<SecretString> =
            own_secrets.get("clientSecret").or_else(|| def_secrets.get("clientSecret")).cloned();
        Ok(OAuthSettings {
            authorize_url: authorize.map(|e| e.url),
            device_authorization,
            token,
            revoke,
            client: ClientAuth { client_id, client_secret, method: ClientAuthMethod::parse(text("clientAuth")) },
            pkce: value("pkce").and_then(Value::as_bool).unwrap_or(true),
            scopes,
            quirks,
            issuer: text(ISSUER_INPUT).map(str::to_owned).filter(|_| !jwt_bearer),
            provider,
            assertion,
        })
    }

    /// Whether customer-supplied provider URLs may name loopback (local development, tests).
    pub fn allow_loopback_providers(&self) -> bool {
        self.options.allow_loopback_providers
    }

    /// The configured public URL (`LATCHKEY_PUBLIC_URL`, no trailing `/`), if any: the base
    /// of the OAuth redirect URI `{public_url}/v1/oauth/callback`.
    pub fn public_url(&self) -> Option<&str> {
        self.options.public_url.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_are_host_labels() {
        assert!(valid_label("my-shop") && !valid_label("evil.com/x") && !valid_label("-x"));
    }
}

//! The authorize step (RFC 6749 section 4.1.1): a single-use state, PKCE S256 (RFC 7636), the
//! provider's scope parameter and extra parameters, built with the `oauth2` crate.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl};
use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::super::{Result, Service, ServiceError};
use super::CALLBACK_PATH;
use crate::crypto::EncryptionContext;
use crate::domain::{AuthKind, BrowserBinding, LogType, OAuthState, Principal};

/// How long an authorize URL (its state) stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// What authorize answers.
#[derive(Debug, Serialize)]
pub struct AuthorizeResponse {
    pub authorize_url: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// 256 random bits, base64url: the state.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of a state (or of an OAuth 1.0a request token): what is stored, so a store dump
/// reveals no usable state.
pub fn state_hash(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

impl Service {
    /// `POST /v1/connections/{id}/authorize` with the configured public URL
    /// (`LATCHKEY_PUBLIC_URL`): see [`Service::authorize_at`].
    pub async fn authorize(&self, p: &Principal, id: &str) -> Result<AuthorizeResponse> {
        self.authorize_at(p, id, self.public_url()).await
    }

    /// `POST /v1/connections/{id}/authorize`: a single-use authorize URL for the browser, whose
    /// redirect URI is `{public_url}/v1/oauth/callback`. `public_url` is the origin the callback
    /// is reached at (`https://auth.example.com`, no trailing `/`): the configured one, or on
    /// Lambda the API Gateway domain of the request (`http::PublicUrl`). The redirect URI is
    /// stored with the state, and the callback exchanges the code with that same URI.
    ///
    /// # Errors
    /// Those of the connection's visibility and permissions, `Conflict` for a connection that is
    /// neither `oauth2_authorization_code` nor `oauth1` (whose authorize URL carries the request
    /// token instead of a state: [`Service::authorize_oauth1`]), `Invalid` for incomplete OAuth
    /// settings, `Provider` for a refused OAuth 1.0a request token, and
    /// `Unexpected` (a deployment fault) when `public_url` is `None`.
    pub async fn authorize_at(&self, p: &Principal, id: &str, public_url: Option<&str>) -> Result<AuthorizeResponse> {
        self.authorize_bound(p, id, public_url, None).await
    }

    /// [`Service::authorize_at`], its state bound to `browser` when given (the connect page's
    /// session): the callback then refuses a browser without that session's cookie.
    pub(crate) async fn authorize_bound(
        &self,
        p: &Principal,
        id: &str,
        public_url: Option<&str>,
        browser: Option<BrowserBinding>,
    ) -> Result<AuthorizeResponse> {
        let c = self.visible_connection(p, id).await?;
        super::super::connections::require_manage(p, &c)?;
        let def = self.definition_of(&c).await?;
        if def.auth == AuthKind::Oauth1 {
            return self.authorize_oauth1(&c, &def, public_url, browser).await;
        }
        if def.auth != AuthKind::Oauth2AuthorizationCode {
            return Err(ServiceError::Conflict(
                "only oauth2_authorization_code and oauth1 connections are authorized here",
            ));
        }
        // A deployment fault, not the caller's: a function that authorizes is configured with
        // LATCHKEY_PUBLIC_URL or runs behind API Gateway, which names its domain.
        let public_url = public_url.ok_or_else(|| {
            ServiceError::unexpected(
                "LATCHKEY_PUBLIC_URL is not configured and no API Gateway domain: no OAuth redirect URI",
            )
        })?;
        let redirect_uri = format!("{}{CALLBACK_PATH}", public_url.trim_end_matches('/'));
        let settings = self.oauth_settings(&def, &c).await?;
        // `oauth_settings` already requires it of authorization-code definitions.
        let auth_url = settings
            .authorize_url
            .clone()
            .ok_or_else(|| ServiceError::invalid("values.authorizeUrl", "is required for OAuth"))?;

        let state = random_token();
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let client = BasicClient::new(ClientId::new(settings.client.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(auth_url))
            .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).map_err(ServiceError::unexpected)?);
        let mut request = client.authorize_url(|| CsrfToken::new(state.clone()));
        if let Some(scopes) = settings.scope_param() {
            request = request.add_extra_param(settings.quirks.scope_param().to_owned(), scopes);
        }
        for (k, v) in &settings.quirks.authorization_params {
            request = request.add_extra_param(k.clone(), v.clone());
        }
        let verifier = if settings.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            let secret = SecretString::from(verifier.secret().clone());
            Some(self.envelope.seal_str(&ctx, &secret).await?)
        } else {
            None
        };
        let (url, _) = request.url();
        let now = self.clock.now();
        let expires_at = now + STATE_TTL;
        let record = OAuthState {
            hash: state_hash(&state),
            org: c.org.clone(),
            connection_id: c.id.clone(),
            verifier,
            request_token_secret: None,
            redirect_uri,
            issuer: settings.issuer,
            expires_at,
            generation: c.generation,
            browser,
        };
        self.store.put_oauth_state(&record).await?;
        self.log(&c, LogType::AuthorizeStarted, "authorization started").await;
        Ok(AuthorizeResponse { authorize_url: url.to_string(), expires_at })
    }
}

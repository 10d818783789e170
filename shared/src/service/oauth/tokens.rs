//! Token answers onto connections: what is sealed (the tokens and the values captured from the
//! answer), what is kept in clear (type, expiry, granted scopes, the origins the grant is bound
//! to), and the conditional write.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::retry::{Races, unavailable_retries};
use super::super::{Result, Service, ServiceError, Unusable};
use super::OAuthSettings;
use crate::crypto::{CryptoError, EncryptionContext};
use crate::domain::{Connection, OAuthTokens, Refusal, Status, StatusError};
use crate::ports::StoreError;
use crate::provider::TokenAnswer;

/// The sealed part of a connection's tokens: one JSON object under the connection's context.
#[derive(Serialize, Deserialize)]
pub(crate) struct TokenSecrets {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Values captured from token answers (`id_token`, `instance_url`): sealed, since some are
    /// credentials themselves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub captured: BTreeMap<String, Value>,
}

impl std::fmt::Debug for TokenSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSecrets")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("captured", &self.captured.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenSecrets {
    pub fn refresh_token(&self) -> Option<SecretString> {
        self.refresh_token.clone().map(SecretString::from)
    }
}

impl Service {
    /// A connection's red state for `class`, keeping the provider's code beside it.
    pub(crate) fn refusal_error(&self, class: Refusal, provider_code: Option<&str>, detail: &str) -> StatusError {
        StatusError {
            code: class.code().to_owned(),
            provider_code: provider_code.and_then(crate::domain::provider_code),
            message: class.message(detail),
            at: self.clock.now(),
        }
    }

    /// The `scopes_missing` error of a grant lacking required scopes, if it does.
    pub(crate) fn scopes_error(&self, settings: &OAuthSettings, tokens: &OAuthTokens) -> Option<StatusError> {
        let missing = settings.missing_scopes(&tokens.scopes);
        (!missing.is_empty()).then(|| self.refusal_error(Refusal::ScopesMissing, None, &missing.join(", ")))
    }

    /// Seals a token answer onto `c` with its callback captures and sets `status` (red when the
    /// grant lacks required scopes): a conditional write, redone on the latest version if
    /// another write won (a new authorization or client-credentials token supersedes whatever
    /// was there). Tokens obtained for a connection disconnected or deleted meanwhile are
    /// revoked instead.
    pub(crate) async fn store_tokens(
        &self,
        c: &Connection,
        settings: &OAuthSettings,
        answer: &TokenAnswer,
        callback_values: BTreeMap<String, Value>,
        status: Status,
    ) -> Result<Connection> {
        let tokens = self.seal_token_answer(c, settings, answer, None).await?;
        let error = self.scopes_error(settings, &tokens);
        let mut current = c.clone();
        let mut races = Races::default();
        loop {
            if current.generation != c.generation {
                self.revoke_orphaned(&current, tokens).await;
                return Err(ServiceError::Unusable(Unusable::Disconnected));
            }
            let next = self.with_tokens(&current, tokens.clone(), &callback_values, status, error.clone());
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            match self.store.get_connection(&c.org, &c.id).await? {
                Some(latest) => current = latest,
                None => {
                    self.revoke_orphaned(c, tokens).await;
                    return Err(ServiceError::NotFound);
                }
            }
        }
    }

    /// `c` with new tokens: status set (red with `error` if given), lease cleared, due time
    /// recomputed (none while red).
    pub(crate) fn with_tokens(
        &self,
        c: &Connection,
        tokens: OAuthTokens,
        callback_values: &BTreeMap<String, Value>,
        status: Status,
        error: Option<StatusError>,
    ) -> Connection {
        // A refresh (which passes the status it found) of a connection turned red meanwhile
        // keeps the red and its reason; an authorization replaces it.
        let (status, error) = match error {
            Some(e) => (Status::Error, Some(e)),
            None if status == Status::Error && c.status == Status::Error => (Status::Error, c.error.clone()),
            None => (status, None),
        };
        let mut next = c.clone();
        next.refresh = crate::domain::RefreshState {
            due_at: if status == Status::Error { None } else { self.due_at(&tokens) },
            day: c.refresh.day,
            attempts_today: c.refresh.attempts_today,
            ..Default::default()
        };
        next.oauth = Some(tokens);
        next.captured.extend(callback_values.clone());
        next.status = status;
        next.error = error;
        next.version = c.version + 1;
        next.updated_at = self.clock.now();
        next
    }

    /// Seals a token answer. `previous` (a refresh) is what the connection had: its refresh
    /// token is kept when the answer has none, its captured values when the answer lacks them,
    /// its granted scopes when the answer names none (RFC 6749 section 6).
    pub(crate) async fn seal_token_answer(
        &self,
        c: &Connection,
        settings: &OAuthSettings,
        answer: &TokenAnswer,
        previous: Option<(&OAuthTokens, &TokenSecrets)>,
    ) -> Result<OAuthTokens> {
        let mut captured = previous.map(|(_, s)| s.captured.clone()).unwrap_or_default();
        for path in &settings.quirks.capture.token {
            if let Some(v) = answer.captured(path) {
                captured.insert(path.clone(), v.clone());
            }
        }
        let now = self.clock.now();
        let buffer = Duration::from_secs(settings.provider.map_or(0, |p| p.expiry_buffer_secs));
        let expires_at = answer
            .expires_in
            .map(Duration::from_secs)
            .and_then(|d| time::Duration::try_from(d.saturating_sub(buffer.min(d / 2))).ok())
            .and_then(|d| now.checked_add(d));
        // Granted scopes are what the answer says; when it says nothing, what was granted
        // before (a refresh) or what was requested (SPEC section 8).
        let scopes = answer
            .scopes
            .clone()
            .unwrap_or_else(|| previous.map_or_else(|| settings.scopes.clone(), |(tokens, _)| tokens.scopes.clone()));
        let refresh = answer
            .refresh_token
            .as_ref()
            .map(|r| r.expose_secret().to_owned())
            .or_else(|| previous.and_then(|(_, s)| s.refresh_token.clone()));
        let secrets = TokenSecrets {
            access_token: answer.access_token.expose_secret().to_owned(),
            refresh_token: refresh.clone(),
            captured,
        };
        // The provider has answered: a key service that does not answer now is tried again
        // (a rotated refresh token cannot be asked for twice).
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let sealed = (|| self.envelope.seal_json(&ctx, &secrets))
            .retry(unavailable_retries())
            .when(|e| matches!(e, CryptoError::Unavailable(_)))
            .notify(|e, _| tracing::warn!(connection_id = %c.id, error = %e, "sealing new tokens failed; trying again"))
            .await?;
        // A refresh keeps the origins the grant was first bound to.
        let (token_origin, revoke_origin) = match previous {
            Some((tokens, _)) => (tokens.token_origin.clone(), tokens.revoke_origin.clone()),
            None => (settings.token.origin(), settings.revoke.as_ref().map(|r| r.origin())),
        };
        Ok(OAuthTokens {
            sealed,
            token_type: answer.token_type.clone(),
            expires_at,
            scopes,
            has_refresh_token: refresh.is_some(),
            obtained_at: now,
            token_origin,
            revoke_origin,
        })
    }

    /// The unsealed tokens of `c`, `None` when it has none.
    pub(crate) async fn open_tokens(&self, c: &Connection) -> Result<Option<TokenSecrets>> {
        let Some(tokens) = &c.oauth else {
            return Ok(None);
        };
        Ok(Some(self.envelope.open_json(&EncryptionContext::connection(&c.org, &c.id), &tokens.sealed).await?))
    }
}

//! Token answers onto connections: what is sealed (the tokens and the values captured from the
//! answer), what is kept in clear (type, expiry, granted scopes, the origins the grant is bound
//! to), and the conditional write.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;

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
    /// OAuth 1.0a (RFC 5849 section 2.3): the token secret beside the access token
    /// (`access_token` then holds `oauth_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
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

/// Whether `secrets` hold `refresh_token`, compared in constant time (the held one is a secret).
fn holds(secrets: &TokenSecrets, refresh_token: &SecretString) -> bool {
    secrets
        .refresh_token
        .as_ref()
        .is_some_and(|held| bool::from(held.as_bytes().ct_eq(refresh_token.expose_secret().as_bytes())))
}

/// What a new token answer takes from the tokens a connection had.
#[derive(Clone, Copy)]
enum Previous<'a> {
    /// Nothing: a first grant (an authorization, an import, client credentials).
    Nothing,
    /// A refresh (RFC 6749 section 6) of these tokens: where the answer is silent, their refresh
    /// token (with its lapse time), captured values and granted scopes are kept; their origins
    /// always are.
    Refresh(&'a OAuthTokens, &'a TokenSecrets),
    /// A reconnect replacing these tokens: a new grant, which keeps only their refresh token
    /// (with its lapse time) when the answer has none.
    Reconnect(&'a OAuthTokens, &'a TokenSecrets),
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
    ///
    /// A reconnect (SPEC section 10) is this same write on the record as it is: same id and
    /// values, the answer's tokens and granted scopes in place of the old ones, red reasons
    /// cleared, the due index rescheduled. An answer without a refresh token keeps the one the
    /// connection still holds (providers that send one only on first consent), with its
    /// lifetime, if it was granted by the same token endpoint origin; a disconnected connection
    /// holds none (its tokens went at the disconnect), so none is ever brought back.
    pub(crate) async fn store_tokens(
        &self,
        c: &Connection,
        settings: &OAuthSettings,
        answer: &TokenAnswer,
        callback_values: BTreeMap<String, Value>,
        status: Status,
    ) -> Result<Connection> {
        let mut current = c.clone();
        let mut races = Races::default();
        let mut tokens = self.seal_for_reconnect(&current, settings, answer).await?;
        loop {
            if current.generation != c.generation {
                self.revoke_orphaned(&current, tokens).await;
                return Err(ServiceError::Unusable(Unusable::Disconnected));
            }
            let error = self.scopes_error(settings, &tokens);
            let mut next = self.with_tokens(&current, tokens.clone(), &callback_values, status, error);
            // A new grant ends any device authorization still being polled (SPEC section 12).
            next.device = None;
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            match self.store.get_connection(&c.org, &c.id).await? {
                // A refresh token kept from the record is the latest one's: a refresh that
                // rotated it meanwhile must not be undone.
                Some(latest) if answer.refresh_token.is_none() && latest.oauth != current.oauth => {
                    current = latest;
                    tokens = self.seal_for_reconnect(&current, settings, answer).await?;
                }
                Some(latest) => current = latest,
                None => {
                    self.revoke_orphaned(c, tokens).await;
                    return Err(ServiceError::NotFound);
                }
            }
        }
    }

    /// The answer of a new grant sealed for `c`, keeping the refresh token `c` still holds when
    /// the answer has none (see [`Service::store_tokens`]).
    async fn seal_for_reconnect(
        &self,
        c: &Connection,
        settings: &OAuthSettings,
        answer: &TokenAnswer,
    ) -> Result<OAuthTokens> {
        let held = match &c.oauth {
            Some(t)
                if answer.refresh_token.is_none()
                    && t.has_refresh_token
                    && t.token_origin == settings.token.origin()
                    && t.refresh_token_expires_at.is_none_or(|lapse| lapse > self.clock.now()) =>
            {
                self.open_tokens(c).await?.map(|s| (t, s))
            }
            _ => None,
        };
        let previous = match &held {
            Some((t, s)) => Previous::Reconnect(t, s),
            None => Previous::Nothing,
        };
        self.seal_answer(c, settings, answer, previous).await
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
        // `Refresh Token Expiring` is armed for a refresh token with a new lifetime (a new one,
        // or one imported or reconnected with its lifetime); a kept one (absent from the answer,
        // or the same one sent back) keeps its lapse time and so its state: the warning fires
        // once per refresh token.
        let kept = c.oauth.as_ref().and_then(|t| t.refresh_token_expires_at);
        let rt_warn_at = match tokens.refresh_token_expires_at {
            None => None,
            Some(lapse) if kept == Some(lapse) => c.refresh.rt_warn_at,
            Some(lapse) => Some(lapse - self.policy().rt_warning),
        };
        let mut next = c.clone();
        next.refresh = crate::domain::RefreshState {
            due_at: if status == Status::Error { None } else { self.due_at(&tokens, c.auth) },
            day: c.refresh.day,
            attempts_today: c.refresh.attempts_today,
            rt_warn_at,
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
        let previous = match previous {
            Some((t, s)) => Previous::Refresh(t, s),
            None => Previous::Nothing,
        };
        self.seal_answer(c, settings, answer, previous).await
    }

    /// Seals a token answer, taking from `previous` what [`Previous`] says.
    ///
    /// The refresh token's lapse time: a refresh token in the answer lives for the answer's
    /// stated lifetime, else the definition's `oauth.refresh_token_lifetime_secs`, from now (a
    /// rotated refresh token restarts its lifetime); a kept one (absent from the answer, or the
    /// same one sent back) keeps the lapse time it had.
    async fn seal_answer(
        &self,
        c: &Connection,
        settings: &OAuthSettings,
        answer: &TokenAnswer,
        previous: Previous<'_>,
    ) -> Result<OAuthTokens> {
        let refreshed = match previous {
            Previous::Refresh(t, s) => Some((t, s)),
            Previous::Nothing | Previous::Reconnect(..) => None,
        };
        let kept_refresh = match previous {
            Previous::Refresh(t, s) | Previous::Reconnect(t, s) => Some((t, s)),
            Previous::Nothing => None,
        };
        let mut captured = refreshed.map(|(_, s)| s.captured.clone()).unwrap_or_default();
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
            .unwrap_or_else(|| refreshed.map_or_else(|| settings.scopes.clone(), |(tokens, _)| tokens.scopes.clone()));
        let (refresh, refresh_token_expires_at) = match &answer.refresh_token {
            Some(r) => {
                // The same refresh token sent back (LinkedIn states its remaining lifetime,
                // counting down) is a kept one: it keeps its lapse time, and so its warning state.
                let held = kept_refresh.filter(|(_, s)| holds(s, r)).and_then(|(t, _)| t.refresh_token_expires_at);
                let lifetime = answer.refresh_token_expires_in.or(settings.quirks.refresh_token_lifetime_secs);
                let lapse = held.or_else(|| {
                    lifetime
                        .and_then(|secs| i64::try_from(secs).ok())
                        .and_then(|secs| now.checked_add(time::Duration::seconds(secs)))
                });
                (Some(r.expose_secret().to_owned()), lapse)
            }
            None => match kept_refresh {
                Some((t, s)) if s.refresh_token.is_some() => (s.refresh_token.clone(), t.refresh_token_expires_at),
                _ => (None, None),
            },
        };
        let secrets = TokenSecrets {
            access_token: answer.access_token.expose_secret().to_owned(),
            refresh_token: refresh.clone(),
            captured,
            token_secret: None,
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
        let (token_origin, revoke_origin) = match refreshed {
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
            refresh_token_expires_at,
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

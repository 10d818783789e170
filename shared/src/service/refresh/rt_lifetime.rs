//! Refresh-token lifetime (SPEC section 10): a refresh token with a known lifetime is warned
//! about once before it lapses, and is never sent to the provider after it has.
//!
//! - **When it lapses** is [`OAuthTokens::refresh_token_expires_at`], set when the token was
//!   issued (see `seal_answer` in `service::oauth::tokens`).
//! - **The warning** is due at [`RefreshState::rt_warn_at`](crate::domain::RefreshState), armed
//!   for each new refresh token `LATCHKEY_RT_WARNING_DAYS` before it lapses. The sweep finds it
//!   without a scan: a connection's place in the due index is the earliest of its refresh, its
//!   warning and its lapse ([`Connection::due_index_at`]). The sweep clears `rt_warn_at` with a
//!   conditional write and only the writer that wins emits `Refresh Token Expiring`: a second
//!   sweep, or a concurrent worker, finds nothing left to warn about.
//! - **After it lapses** the connection turns red `token_expired` without any provider call:
//!   the sweep meets it at its lapse time (the refresh stops there, [`Service::lapsed_error`]),
//!   and a lookup that meets it first answers the `token-expired` problem.

use super::super::retry::Races;
use super::*;
use crate::domain::StatusError;

/// When `c`'s refresh token lapsed, if it has one that has lapsed by `now`.
pub(super) fn lapsed_at(c: &Connection, now: OffsetDateTime) -> Option<OffsetDateTime> {
    let tokens = c.oauth.as_ref().filter(|t| t.has_refresh_token)?;
    tokens.refresh_token_expires_at.filter(|at| *at <= now)
}

impl Service {
    /// The red state of a connection whose refresh token lapsed at `at`: `token_expired`
    /// (SPEC section 8's class: the access token cannot be renewed), naming when.
    pub(super) fn lapsed_error(&self, at: OffsetDateTime) -> StatusError {
        let at = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        StatusError {
            code: Refusal::TokenExpired.code().to_owned(),
            provider_code: None,
            message: format!(
                "the refresh token expired at {at}; the access token cannot be renewed: the customer must \
                 authorize the connection again"
            ),
            at: self.clock.now(),
        }
    }

    /// Fires `Refresh Token Expiring` for `c` if its warning is due, once: the write that clears
    /// the warning is conditional on the version read, and only the call whose write wins logs
    /// and emits. Returns the record as it now is (re-read after a lost race). A connection out
    /// of the due index (red, disconnected) or whose refresh token has already lapsed is not
    /// warned about.
    pub(super) async fn warn_refresh_token(&self, c: Connection) -> Result<Connection> {
        let mut current = c;
        let mut races = Races::default();
        loop {
            let now = self.clock.now();
            let due = current.refresh.due_at.is_some() && current.refresh.rt_warn_at.is_some_and(|w| w <= now);
            let lapse = current.oauth.as_ref().filter(|t| t.has_refresh_token).and_then(|t| t.refresh_token_expires_at);
            let Some(lapse) = lapse.filter(|l| due && *l > now) else {
                return Ok(current);
            };
            let mut warned = current.clone();
            warned.refresh.rt_warn_at = None;
            warned.version = current.version + 1;
            match self.store.update_connection(&warned, current.version).await {
                Ok(()) => {
                    let at = lapse.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                    self.log(
                        &warned,
                        LogType::RefreshTokenExpiring,
                        format!("the refresh token expires at {at}: the customer should authorize the connection again before then"),
                    )
                    .await;
                    self.emit(Event::about(EventType::RefreshTokenExpiring, &warned)).await;
                    return Ok(warned);
                }
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            current = self.store.get_connection(&current.org, &current.id).await?.ok_or(ServiceError::NotFound)?;
        }
    }

    /// For a lookup of `c`, whose refresh token lapsed at `at`: turns it red `token_expired`
    /// (unless something else changed it meanwhile) and returns the lookup's error, the
    /// `token-expired` problem. No provider is called.
    pub(crate) async fn refresh_token_lapsed(&self, c: Connection, at: OffsetDateTime) -> ServiceError {
        let error = self.lapsed_error(at);
        self.turn_red_expired(c, error).await
    }

    /// The lookup's check: `Some(at)` when `c`'s refresh token has lapsed.
    pub(crate) fn refresh_token_lapse(&self, c: &Connection) -> Option<OffsetDateTime> {
        lapsed_at(c, self.clock.now())
    }
}

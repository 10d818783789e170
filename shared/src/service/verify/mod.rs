//! Credential verification (SPEC section 10): a definition's `verify` request
//! ([`crate::domain::Verify`]) sent with a connection's values, at connect time (create and
//! values PATCH: refused credentials are never stored), on demand
//! (`POST /v1/connections/{id}/verify`) and periodically from the sweep.
//!
//! What a provider's status means ([`Verdict`]):
//! - expected (`expect_status`, any 2xx when empty): accepted;
//! - 401 or 403: rejected. At connect time 422 `credentials-rejected`; later the connection
//!   turns red `credentials_rejected` (`Connection Error` event);
//! - 408, 429, 5xx, and no answer at all (timeout, unreachable, refused destination): the
//!   provider is unavailable. At connect time 502 `verification-unavailable`; later a retry
//!   with backoff, the connection unchanged;
//! - any other status: not confirmed. At connect time 422 `credentials-rejected` (a wrong
//!   account id in the URL is the customer's to fix); later like unavailable, since a moved
//!   endpoint is no proof that the credentials are bad.
//!
//! # Schedule
//! A connection whose definition has a `verify` request carries `verify.due_at`; the due index
//! holds it (beside the refresh times, [`Connection::due_index_at`]) while the connection is
//! `configured` or `active`, so the sweep finds it by the same index query, never a scan.
//!
//! # Not hammering a provider
//! [`VerifyGate`] bounds the verify requests in flight in this process, and keeps per origin
//! the transient failures in a row: after [`VerifyPolicy::breaker_threshold`] of them the
//! origin is left alone for a backoff (doubling, at most [`BREAKER_MAX_BACKOFF`]), and the
//! sweep's due connections of that origin are postponed without a request. When the backoff
//! has elapsed one request goes through as a probe (the others wait for its answer). Only the
//! sweep is held back: a check someone asked for (create, values PATCH, on demand) always goes.
//!
//! # A result for the credentials it checked
//! A verification takes time; a result is written only to a connection that still holds the
//! credentials that were sent (same sealed values and tokens, same generation) and is still
//! `configured` or `active` (or, for an accepting answer, red `credentials_rejected`). A
//! connection disconnected, reconfigured or renewed meanwhile is left as it is.
//!
//! # Where
//! This module: the policy, the on-demand and sweep entry points and the stored connection's
//! check; [`request`]: the request and its gate; [`connect_time`]: the checks before values are
//! stored; [`record`]: writing a result.

mod connect_time;
mod gate;
mod record;
mod request;

use std::time::Duration;

use futures_util::StreamExt;
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;

use super::{Result, Service, ServiceError};
use crate::domain::validate::Values;
use crate::domain::{ACCESS_TOKEN, Connection, Definition, Principal, Status, Verdict, Verify};
use crate::ports::ConnectionFilter;
pub(crate) use gate::VerifyGate;
use request::{Checked, template_source, unavailable_code};

/// The `error.code` of a connection whose credentials the provider refused.
pub const CREDENTIALS_REJECTED: &str = "credentials_rejected";

/// How long an OAuth access token must stay valid to be verified with; one expiring sooner is
/// refreshed first (60 seconds).
pub const VERIFY_MIN_VALID: Duration = Duration::from_secs(60);

/// The longest an origin's breaker stays open before a probe may go (5 minutes).
pub const BREAKER_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How verification is scheduled and bounded.
#[derive(Debug)]
pub struct VerifyPolicy {
    /// How often a connection is verified (`LATCHKEY_VERIFY_INTERVAL_SECS`).
    pub interval: Duration,
    /// First wait after a transient failure; doubles per failure, at most `interval`.
    pub base_backoff: Duration,
    /// Verify requests in flight at once in this process.
    pub concurrency: usize,
    /// Transient failures in a row at one origin after which it is left alone for a backoff.
    pub breaker_threshold: u32,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(86_400),
            base_backoff: Duration::from_secs(60),
            concurrency: 4,
            breaker_threshold: 3,
        }
    }
}

/// The answer of `POST /v1/connections/{id}/verify`: whether the provider accepted the
/// credentials, its HTTP status, and when. Never the provider's body.
#[derive(Debug, Serialize)]
pub struct VerifyAnswer {
    pub ok: bool,
    pub status: u16,
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
}

impl Service {
    pub(crate) fn verify_policy(&self) -> &VerifyPolicy {
        &self.options.verify
    }

    /// After a definition gained or changed its verify request, schedules its connections that
    /// the sweep does not verify yet (created before it had one), spread over the next tenth of
    /// an interval. Pages through the definition's connections (an index query); a failure is
    /// logged: the definition change itself has succeeded.
    pub(crate) async fn schedule_verification(&self, def: &Definition) {
        let filter = ConnectionFilter { definition: Some(def.key.clone()), ..Default::default() };
        let spread = self.verify_policy().interval.mul_f64(0.1);
        let mut all = std::pin::pin!(super::walk::connections(self.store.as_ref(), &def.org, &filter));
        while let Some(found) = all.next().await {
            let c = match found {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(org = %def.org, definition = %def.key, error = %e, "scheduling verification failed");
                    return;
                }
            };
            if c.verify.due_at.is_some() {
                continue;
            }
            let at = self.clock.now() + spread.mul_f64(rand::random_range(0.0..1.0));
            let scheduled = self.write_verify_state(&c, |next| {
                next.verify.due_at = Some(at);
                true
            });
            if let Err(e) = scheduled.await {
                tracing::warn!(org = %c.org, connection_id = %c.id, error = %e, "scheduling a verification failed");
            }
        }
    }

    /// When a connection that was just verified (or created with a verify request) is due
    /// again: one interval from now, less up to a tenth at random so that connections created
    /// together do not all come due together.
    pub(crate) fn next_verify_at(&self) -> OffsetDateTime {
        let every = self.verify_policy().interval;
        self.clock.now() + every - every.mul_f64(rand::random_range(0.0..0.1))
    }

    /// Verifies a stored connection with its current values and access token (`periodic`: a
    /// sweep's check, held back by the origin's breaker), and returns the record it verified
    /// with that answer. An OAuth connection's token is made fresh first the way a lookup does
    /// (refreshed when it expires within [`VERIFY_MIN_VALID`]; one that nothing renews turns
    /// red `token_expired`), and an access token the provider refuses is renewed once and
    /// tried again before the refusal counts.
    ///
    /// # Errors
    /// [`ServiceError::Unusable`] for a connection without a usable token (pending, turned red
    /// meanwhile, `token_expired`), what a refresh fails with, a validation error for a value
    /// the request needs and lacks.
    async fn verify_stored(
        &self,
        c: &Connection,
        def: &Definition,
        verify: &Verify,
        periodic: bool,
    ) -> Result<(Connection, Checked)> {
        if !def.auth.is_oauth() {
            let checked = self.verify_with(c, def, verify, periodic).await?;
            return Ok((c.clone(), checked));
        }
        let c = self.fresh_for_verify(c.clone()).await?;
        let checked = self.verify_with(&c, def, verify, periodic).await?;
        if !matches!(checked, Checked::Answered(_, Verdict::Rejected)) || !verify.names().contains(&ACCESS_TOKEN) {
            return Ok((c, checked));
        }
        match self.renew_refused_token(&c).await? {
            Some(renewed) if renewed.status != Status::Error => {
                let again = self.verify_with(&renewed, def, verify, periodic).await?;
                Ok((renewed, again))
            }
            Some(_) => Err(ServiceError::Unusable(super::Unusable::Error)),
            None => Ok((c, checked)),
        }
    }

    /// An OAuth connection with an access token valid for at least [`VERIFY_MIN_VALID`], by
    /// the lookup's rules (a lapsed refresh token or an expired token nothing renews: red
    /// `token_expired`).
    async fn fresh_for_verify(&self, c: Connection) -> Result<Connection> {
        if let Some(at) = self.refresh_token_lapse(&c) {
            return Err(self.refresh_token_lapsed(c, at).await);
        }
        let now = self.clock.now();
        let min_valid = time::Duration::try_from(VERIFY_MIN_VALID).map_err(ServiceError::unexpected)?;
        let fresh = c.oauth.as_ref().is_some_and(|t| t.expires_at.is_none_or(|e| e > now + min_valid));
        let c = if fresh { c } else { self.fresh_for_lookup(c, min_valid).await? };
        if c.status == Status::Error {
            return Err(ServiceError::Unusable(super::Unusable::Error));
        }
        let expired = c.oauth.as_ref().and_then(|t| t.expires_at).is_some_and(|e| e <= self.clock.now());
        if expired && !self.renewable(&c) {
            return Err(self.token_expired(c).await);
        }
        Ok(c)
    }

    /// Sends `verify` with `c`'s values and access token.
    async fn verify_with(&self, c: &Connection, def: &Definition, verify: &Verify, periodic: bool) -> Result<Checked> {
        let own = Values { plain: c.values.clone(), secret: self.open_secrets(c).await? };
        let access_token = self.open_tokens(c).await?.map(|t| SecretString::from(t.access_token));
        if def.auth.is_oauth() && access_token.is_none() && verify.names().contains(&ACCESS_TOKEN) {
            return Err(ServiceError::Unusable(super::Unusable::Pending));
        }
        let defaults = self.definition_defaults(def).await?;
        self.send_verify(verify, template_source(defaults, &own, access_token), periodic).await
    }

    /// `POST /v1/connections/{id}/verify`: sends the definition's verify request now
    /// (organization users, and the connection's customer). A 401/403 turns the connection red
    /// `credentials_rejected`; an accepted answer brings a connection that was red for that
    /// reason back to `configured`.
    ///
    /// # Errors
    /// 404 for a connection the caller cannot see; 409 when its definition has no verify
    /// request or it has no credentials (pending, disconnected);
    /// [`ServiceError::VerificationUnavailable`] when the provider did not answer.
    pub async fn verify_connection(&self, p: &Principal, id: &str) -> Result<VerifyAnswer> {
        let c = self.visible_connection(p, id).await?;
        let def = self.definition_of(&c).await?;
        let Some(verify) = &def.verify else {
            return Err(ServiceError::Conflict("the connection's definition has no verify request"));
        };
        if matches!(c.status, Status::Pending | Status::Disconnected) {
            return Err(ServiceError::Unusable(super::Unusable::of(c.status).unwrap_or(super::Unusable::Error)));
        }
        let (c, checked) = self.verify_stored(&c, &def, verify, false).await?;
        let done = self.record_verification(&c, checked).await?;
        match checked {
            Checked::Answered(status, Verdict::Unavailable) => {
                Err(ServiceError::VerificationUnavailable(unavailable_code(status)))
            }
            Checked::Answered(status, verdict) => Ok(VerifyAnswer {
                ok: verdict == Verdict::Accepted,
                status,
                checked_at: done.verify.checked_at.unwrap_or(done.updated_at),
            }),
            Checked::Unavailable(code) => Err(ServiceError::VerificationUnavailable(code)),
        }
    }

    /// The sweep's part: verifies `c` if its verification came due, and returns the record as
    /// it is afterwards (the refresh may be due as well).
    pub(crate) async fn verify_if_due(&self, c: Connection) -> Result<Connection> {
        let now = self.clock.now();
        if c.verify.due_at.is_none_or(|d| d > now) || !matches!(c.status, Status::Configured | Status::Active) {
            return Ok(c);
        }
        let def = self.definition_of(&c).await?;
        let Some(verify) = &def.verify else {
            // The definition lost its verify request: out of the schedule.
            return self
                .write_verify_state(&c, |base| {
                    base.verify.due_at = None;
                    true
                })
                .await;
        };
        let (c, checked) = match self.verify_stored(&c, &def, verify, true).await {
            Ok(done) => done,
            // Values it cannot be verified with (an input left unset), or a token it cannot
            // have now: like an unexpected answer, tried again after the backoff, never turned
            // red for it (a connection turned red meanwhile is not written: see `applies`).
            Err(ServiceError::Invalid(_) | ServiceError::Unusable(_)) => (c, Checked::Unavailable("not_verifiable")),
            Err(ServiceError::Provider(_)) => (c, Checked::Unavailable("token_unavailable")),
            Err(e) => return Err(e),
        };
        self.record_verification(&c, checked).await
    }
}

#[cfg(test)]
mod tests;

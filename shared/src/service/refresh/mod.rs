//! Keeping OAuth tokens fresh: when a token is due, and the refreshes lookups ask for. The
//! rest, by concern:
//!
//! - [`lease`]: single flight (a lease on the connection record, the outcome written fenced by
//!   the version the lease was taken at, a provider's answer written until the lease ends);
//! - [`attempt`]: one refresh under the lease and the failure classes (refusals turn the
//!   connection red and stop; transient failures keep the tokens and back off);
//! - [`sweep`]: the scheduled sweep over the due index, and why it cannot be starved;
//!   [`fanout`]: the same work handed to queue workers above what one invocation refreshes;
//! - [`limit`]: how many refreshes a container runs at once, adapted to the store's throttling;
//! - [`rt_lifetime`]: refresh tokens that lapse.
use std::time::Duration;

use backon::Retryable;
use rand::Rng;
use serde::Serialize;
use time::OffsetDateTime;

use super::retry::{HELD_RETRY_MAX_WAIT, exponential, held_retries, jittered, unavailable_retries};
use super::{Result, Service, ServiceError, Unusable};
use crate::domain::{
    AuthKind, Connection, ConnectionId, Event, EventType, Lease, LogType, OAuthTokens, OrgId, Refusal, Status,
};
use crate::ports::{DueEntry, StoreError};
use crate::provider::TokenFailure;
use crate::provider::request::GrantRequest;

mod attempt;
mod fanout;
mod lease;
mod limit;
mod rt_lifetime;
mod shares;
mod sweep;

pub use fanout::{
    DispatchSummary, FanoutPolicy, MAX_SENDS, MessageEntry, QueueError, RefreshMessage, RefreshOutcome, RefreshQueue,
    RefreshTick,
};
use lease::{Persist, Take};
pub(super) use limit::RefreshLimit;
pub use sweep::SweepSummary;

/// How refreshes are scheduled and bounded.
#[derive(Debug)]
pub struct RefreshPolicy {
    /// Refresh this long before expiry (`LATCHKEY_REFRESH_LOOKAHEAD_SECS`), capped at half the
    /// token's lifetime so short-lived tokens are not refreshed on every sweep.
    pub lookahead: Duration,
    /// How long a lease is held: longer than the provider call's timeout (15 s). A provider's
    /// answer is written until shortly before it ends ([`lease`]).
    pub lease: Duration,
    /// Tokens without `expires_in` are refreshed this often (if there is a refresh token).
    pub keepalive: Duration,
    /// Attempts per connection and UTC day before waiting for the next day.
    pub max_attempts_per_day: u32,
    /// First backoff after a transient failure; doubles per failure up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Connections refreshed at once by a sweep (64). A refresh mostly waits (on the provider,
    /// then the store), so this bounds the sweep's rate at about `concurrency / latency`: at 8,
    /// a provider answering in 50 ms held one sweep to ~150 refreshes/s (10,000 due in over a
    /// minute); at 64, ~1,000/s (docs/performance.md, "Sweep"). The ceiling of the container's
    /// adaptive limit ([`limit`]): fewer run at once while the store or KMS throttles.
    pub concurrency: usize,
    /// Due entries a sweep reads per index query (and shard); it reads the next page after the
    /// last entry while time is left.
    pub page: usize,
    /// `Refresh Token Expiring` fires this long before a refresh token lapses
    /// (`LATCHKEY_RT_WARNING_DAYS`).
    pub rt_warning: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            lookahead: Duration::from_secs(600),
            lease: Duration::from_secs(30),
            keepalive: Duration::from_secs(24 * 3600),
            max_attempts_per_day: 24,
            base_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            concurrency: 64,
            page: 1_000,
            rt_warning: Duration::from_secs(7 * 86_400),
        }
    }
}

/// The outcome of [`Service::refresh_connection`].
enum Refreshed {
    /// This call refreshed it.
    Now(Connection),
    /// Nothing to do: fresh enough, or refreshed by someone else meanwhile.
    Already(Connection),
    /// Another worker holds the lease (only when not waiting: [`Take::Leave`]).
    Busy,
    /// Not refreshed: the time to take a lease had passed ([`Take::Leave`]'s deadline).
    Late,
}

/// Whether `c` needs a new token to be valid for `min_valid` from `now`: it expires within
/// `min_valid` (SPEC section 5), and a new one would actually last longer. A token issued a
/// moment ago is as fresh as a refresh can make it, so it is not refreshed again even when the
/// caller asks for more validity than tokens have: that would call the provider on every
/// lookup. "A moment" is the smaller of 10 s and half the token's lifetime. A connection without
/// a token needs one.
fn needs_token(c: &Connection, now: OffsetDateTime, min_valid: time::Duration) -> bool {
    let Some(tokens) = &c.oauth else {
        return true;
    };
    let Some(expires) = tokens.expires_at else {
        return false;
    };
    let lifetime: time::Duration = expires - tokens.obtained_at;
    let just_issued = now - tokens.obtained_at < (lifetime / 2_i32).min(time::Duration::seconds(10));
    expires <= now + min_valid && !just_issued
}

/// A transient failure was recorded and its retry time has not come.
fn backing_off(c: &Connection, now: OffsetDateTime) -> bool {
    c.refresh.failures > 0 && c.refresh.due_at.is_some_and(|d| d > now)
}

/// The longest a token of unknown lifetime waits for its refresh (SPEC sections 6 and 8: at
/// least daily).
const DAY: Duration = Duration::from_secs(24 * 3600);

/// When a token of unknown lifetime obtained at `obtained_at` is due: `keepalive` later (at most
/// a day), less up to a tenth of it at random, so that grants obtained together (an import of
/// many connections) do not all come due together, day after day.
fn keepalive_due(obtained_at: OffsetDateTime, keepalive: Duration) -> OffsetDateTime {
    let every = keepalive.min(DAY);
    obtained_at + every - every.mul_f64(rand::rng().random_range(0.0..0.1))
}

impl Service {
    pub(crate) fn policy(&self) -> &RefreshPolicy {
        &self.options.refresh
    }

    /// Something due right away (a refresh, a revocation job's first attempt), as the due
    /// indexes see it: the start of the current second, so that a sweep reading an index at any
    /// instant of this second finds it
    /// ([`crate::domain::due_second`] files a later instant under the next second).
    pub(crate) fn due_now(&self) -> OffsetDateTime {
        let now = self.clock.now();
        now.replace_nanosecond(0).unwrap_or(now)
    }

    /// When the sweep should refresh these tokens; `None` without a refresh token, except for
    /// JWT bearer connections (`auth`), whose next assertion renews them before they expire.
    pub(crate) fn due_at(&self, tokens: &OAuthTokens, auth: Option<AuthKind>) -> Option<OffsetDateTime> {
        if !tokens.has_refresh_token && auth != Some(AuthKind::Oauth2JwtBearer) {
            return None;
        }
        let p = self.policy();
        Some(match tokens.expires_at {
            Some(expires) => {
                let lifetime: Duration = (expires - tokens.obtained_at).try_into().unwrap_or_default();
                expires - p.lookahead.min(lifetime / 2)
            }
            None => keepalive_due(tokens.obtained_at, p.keepalive),
        })
    }

    /// For a lookup: a token that expires within `min_valid` is refreshed, or for client
    /// credentials fetched, first: once for all concurrent callers, in every process (callers
    /// that waited take the token obtained meanwhile even if it is shorter-lived than they
    /// asked). A transient failure returns the old token while it is still valid.
    pub(crate) async fn fresh_for_lookup(&self, c: Connection, min_valid: time::Duration) -> Result<Connection> {
        let without_user = c.auth.is_some_and(AuthKind::grants_without_user);
        let usable = c.oauth.as_ref().is_some_and(|t| t.has_refresh_token) || without_user;
        let now = self.clock.now();
        if !usable || !needs_token(&c, now, min_valid) {
            tracing::debug!(connection_id = %c.id, usable, "no refresh for a lookup: nothing renews the token, or it needs none (valid long enough, or just issued)");
            return Ok(c);
        }
        let valid = |c: &Connection, now: OffsetDateTime| {
            c.oauth.as_ref().is_some_and(|t| t.expires_at.is_none_or(|e| e > now))
        };
        let unavailable = || ServiceError::Provider("temporarily_unavailable".into());
        // After a transient failure, lookups wait for the backoff like the sweep does: an outage
        // must not turn every lookup into a provider call.
        if backing_off(&c, now) {
            tracing::debug!(connection_id = %c.id, "lookup during a refresh backoff: no provider call");
            return if valid(&c, now) { Ok(c) } else { Err(unavailable()) };
        }
        let needed = move |c: &Connection, now: OffsetDateTime| needs_token(c, now, min_valid) && !backing_off(c, now);
        let seen = c.oauth.as_ref().map(|t| t.obtained_at);
        match self.refresh_connection(&c.org, &c.id, None, seen, needed, Take::Wait).await {
            Ok(Refreshed::Now(done) | Refreshed::Already(done)) => {
                if valid(&done, self.clock.now()) {
                    Ok(done)
                } else {
                    Err(unavailable())
                }
            }
            Ok(Refreshed::Busy | Refreshed::Late) => Ok(c),
            Err(e @ ServiceError::Unusable(_)) => Err(e),
            // Any other failure: the old token while it is valid.
            Err(e) => {
                if valid(&c, self.clock.now()) {
                    tracing::warn!(connection_id = %c.id, error = %e, "a lookup's refresh failed; the current token is still valid and handed out");
                    Ok(c)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// For a verification whose access token the provider refused (SPEC section 10): a new
    /// token once, refreshed (or fetched, for client credentials) unless another was obtained
    /// after `c`'s meanwhile. `None` when nothing can renew it or another worker holds the
    /// lease.
    ///
    /// # Errors
    /// What a refresh fails with (a connection the provider refused turns red there).
    pub(crate) async fn renew_refused_token(&self, c: &Connection) -> Result<Option<Connection>> {
        let renewable =
            c.auth.is_some_and(AuthKind::grants_without_user) || c.oauth.as_ref().is_some_and(|t| t.has_refresh_token);
        if !renewable {
            return Ok(None);
        }
        let seen = c.oauth.as_ref().map(|t| t.obtained_at);
        Ok(match self.refresh_connection(&c.org, &c.id, None, seen, |_, _| true, Take::Wait).await? {
            Refreshed::Now(done) | Refreshed::Already(done) => Some(done),
            Refreshed::Busy | Refreshed::Late => None,
        })
    }

    /// `POST /v1/connections/{id}/refresh`: refresh now (organization users).
    pub async fn force_refresh(&self, p: &crate::domain::Principal, id: &str) -> Result<super::ConnectionView> {
        if !p.is_organization() {
            return Err(ServiceError::Forbidden("only organization users force a refresh"));
        }
        let c = self.visible_connection(p, id).await?;
        if !matches!(c.auth, Some(AuthKind::Oauth2AuthorizationCode | AuthKind::Oauth2DeviceCode)) {
            return Err(ServiceError::Conflict(
                "only oauth2_authorization_code and oauth2_device_code connections are refreshed",
            ));
        }
        let seen = c.oauth.as_ref().map(|t| t.obtained_at);
        let done = match self.refresh_connection(&c.org, &c.id, None, seen, |_, _| true, Take::Wait).await? {
            Refreshed::Now(done) | Refreshed::Already(done) => done,
            Refreshed::Busy | Refreshed::Late => c,
        };
        self.get_connection(p, done.id.as_str()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_unknown_lifetime_are_due_within_a_day_spread_never_at_once() {
        let obtained = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut seen = std::collections::BTreeSet::new();
        for keepalive in [DAY, 2 * DAY] {
            for _ in 0..200 {
                let due = keepalive_due(obtained, keepalive);
                assert!(due <= obtained + DAY, "at least daily: {due}");
                assert!(due >= obtained + DAY.mul_f64(0.9), "not at once: {due}");
                seen.insert(due);
            }
        }
        assert!(seen.len() > 100, "spread, not one instant: {}", seen.len());
        let hourly = Duration::from_secs(3600);
        assert!(keepalive_due(obtained, hourly) <= obtained + hourly);
    }
}

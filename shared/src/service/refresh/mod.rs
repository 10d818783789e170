//! Keeping OAuth tokens fresh: single-flight refresh (a lease on the connection record, the
//! token write fenced by the version the lease was taken at), the scheduled sweep over the due
//! index, and the failure classes (refusals turn the connection red and stop; transient failures
//! keep the tokens and back off).
//!
//! The scheduled sweep over the due index, and why it cannot be starved, is in [`sweep`].
use std::time::{Duration, Instant};

use backon::Retryable;
use rand::Rng;
use serde::Serialize;
use time::OffsetDateTime;

use super::retry::{exponential, jittered, unavailable_retries};
use super::{Result, Service, ServiceError, Unusable};
use crate::domain::{
    AuthKind, Connection, ConnectionId, Event, EventType, Lease, LogType, OAuthTokens, OrgId, Refusal, Status,
};
use crate::ports::{DueEntry, StoreError};
use crate::provider::TokenFailure;
use crate::provider::request::GrantRequest;

mod fanout;
mod rt_lifetime;
mod sweep;

pub use fanout::{
    DispatchSummary, FanoutPolicy, QueueError, RefreshMessage, RefreshOutcome, RefreshQueue, RefreshTick,
};
pub use sweep::SweepSummary;

/// How refreshes are scheduled and bounded.
#[derive(Debug)]
pub struct RefreshPolicy {
    /// Refresh this long before expiry (`LATCHKEY_REFRESH_LOOKAHEAD_SECS`), capped at half the
    /// token's lifetime so short-lived tokens are not refreshed on every sweep.
    pub lookahead: Duration,
    /// How long a lease is held: longer than the provider call's timeout (15 s).
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
    /// minute); at 64, ~1,000/s (docs/performance.md, "Sweep").
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

/// How often a leased refresh's outcome is written again after losing to other writers.
const COMMIT_ATTEMPTS: usize = 25;

/// The outcome of [`Service::refresh_connection`].
enum Refreshed {
    /// This call refreshed it.
    Now(Connection),
    /// Nothing to do: fresh enough, or refreshed by someone else meanwhile.
    Already(Connection),
    /// Another worker holds the lease (only when not waiting).
    Busy,
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

fn days(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(86_400)
}

impl Service {
    pub(crate) fn policy(&self) -> &RefreshPolicy {
        &self.options.refresh
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

    /// Refreshes one connection if `needed` says so, so that across every process only one
    /// caller talks to the provider: the others wait (when `wait`) and read its result.
    ///
    /// `seen` is when the token the caller judged insufficient was obtained (`None`: it saw no
    /// token): any token obtained after it is the shared result of a refresh that raced this one.
    ///
    /// `read` is the record as the caller has just read it from the store (the sweep does), taken
    /// as the first read instead of reading it again: one store read less per refresh. It may be
    /// stale: the lease is written conditionally on its version, and a lost write re-reads.
    async fn refresh_connection(
        &self,
        org: &OrgId,
        id: &ConnectionId,
        read: Option<Connection>,
        seen: Option<OffsetDateTime>,
        needed: impl Fn(&Connection, OffsetDateTime) -> bool,
        wait: bool,
    ) -> Result<Refreshed> {
        let owner = ulid::Ulid::new().to_string();
        let give_up = Instant::now() + self.policy().lease + Duration::from_secs(5);
        let mut read = read.filter(|c| (&c.org, &c.id) == (org, id));
        loop {
            let c = match read.take() {
                Some(c) => c,
                None => self.store.get_connection(org, id).await?.ok_or(ServiceError::NotFound)?,
            };
            let without_user = c.auth.is_some_and(AuthKind::grants_without_user);
            // A client-credentials or JWT bearer connection without a token is what this call
            // is about to authorize.
            match Unusable::of(c.status) {
                Some(why @ (Unusable::Error | Unusable::Disconnected)) => return Err(ServiceError::Unusable(why)),
                _ if c.oauth.is_none() && !without_user => return Err(ServiceError::Unusable(Unusable::Pending)),
                _ => {}
            }
            let now = self.clock.now();
            // Obtained by anyone since the caller looked: that result is the caller's too.
            let newer = c.oauth.as_ref().is_some_and(|t| seen.is_none_or(|s| t.obtained_at > s));
            if newer || !needed(&c, now) {
                return Ok(Refreshed::Already(c));
            }
            if let Some(lease) = c.refresh.lease.as_ref().filter(|l| l.until > now && l.owner != owner) {
                if !wait {
                    return Ok(Refreshed::Busy);
                }
                if Instant::now() > give_up {
                    tracing::warn!(org = %org, connection_id = %id, holder = %lease.owner, "gave up waiting for a refresh lease");
                    return Ok(Refreshed::Already(c));
                }
                let pause = rand::rng().random_range(40..120);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            // Take the lease: a conditional write, so of many contenders exactly one wins.
            let mut leased = c.clone();
            leased.refresh.lease = Some(Lease { owner: owner.clone(), until: now + self.policy().lease });
            leased.version = c.version + 1;
            match self.store.update_connection(&leased, c.version).await {
                Ok(()) => {}
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
            match self.refresh_leased(&leased).await {
                Ok(Some(done)) => return Ok(Refreshed::Now(done)),
                // The lease is gone (expired and taken over, or a disconnect): re-read.
                Ok(None) => continue,
                // The outcome is written (red, or backed off after a provider failure).
                Err(e @ (ServiceError::Unusable(_) | ServiceError::Provider(_))) => return Err(e),
                Err(e) => {
                    // Nothing was written: the lease must not outlive this call, and a sweep
                    // (which does not wait) must not meet this connection first again next time.
                    self.release_lease(&leased, !wait).await;
                    return Err(e);
                }
            }
        }
    }

    /// Calls the provider for a connection whose lease this call holds, and writes the outcome
    /// conditionally on the leased version. `None` when that write lost.
    async fn refresh_leased(&self, leased: &Connection) -> Result<Option<Connection>> {
        let def = self.definition_of(leased).await?;
        let settings = match self.oauth_settings(&def, leased).await {
            Ok(settings) => settings,
            // Settings that are incomplete (no client id, an endpoint that is not a URL):
            // the organization's to fix; red, so the sweep does not meet it again.
            Err(ServiceError::Invalid(errors)) => {
                let detail: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
                let error = self.refusal_error(Refusal::ClientRejected, None, &detail.join("; "));
                return self.refused(leased, error, "not refreshed").await;
            }
            Err(e) => return Err(e),
        };
        let without_user = def.auth.grants_without_user();
        let previous = match &leased.oauth {
            Some(tokens) if !without_user => self.open_tokens(leased).await?.map(|s| (tokens.clone(), s)),
            _ => None,
        };
        let refresh_token = previous.as_ref().and_then(|(_, s)| s.refresh_token());
        if !without_user && refresh_token.is_none() {
            // Nothing to refresh with: leave the index, keep the token until it expires.
            return self
                .commit_leased(leased, |base| {
                    let mut next = base.clone();
                    next.refresh.lease = None;
                    next.refresh.due_at = None;
                    next.version = base.version + 1;
                    next
                })
                .await;
        }
        // A grant is bound to the origin that issued it (SPEC section 8): a refresh token is
        // never sent to another token endpoint, whoever changed the setting.
        if let Some((tokens, _)) = &previous
            && tokens.token_origin != settings.token.origin()
        {
            let detail = format!("granted by {}, now {}", tokens.token_origin, settings.token.origin());
            let error = self.refusal_error(Refusal::ReauthorizationRequired, None, &detail);
            return self.refused(leased, error, "not refreshed").await;
        }
        let now = self.clock.now();
        // A lapsed refresh token is never sent (SPEC section 10): red `token_expired`.
        if let Some(at) = rt_lifetime::lapsed_at(leased, now).filter(|_| !without_user) {
            return self.refused(leased, self.lapsed_error(at), "not refreshed").await;
        }
        let day = days(now);
        let attempts = if leased.refresh.day == day { leased.refresh.attempts_today + 1 } else { 1 };

        // JWT bearer: a new assertion (new `jti`, issued now) for every request.
        let assertion = match settings.assertion.as_ref().map(|a| a.sign(now)) {
            Some(Err(why)) => {
                let error = self.refusal_error(Refusal::ClientRejected, None, why);
                return self.refused(leased, error, "not refreshed").await;
            }
            Some(Ok(assertion)) => Some(assertion),
            None => None,
        };
        let grant = match (&refresh_token, &assertion) {
            (Some(token), _) => GrantRequest::RefreshToken { refresh_token: token },
            (None, Some(assertion)) => GrantRequest::JwtBearer { assertion, scope: settings.scope_param() },
            (None, None) => GrantRequest::ClientCredentials { scope: settings.scope_param() },
        };
        match self.request_token(&settings, grant).await {
            Ok(answer) => {
                let kept = previous.as_ref().map(|(t, s)| (t, s));
                let tokens = self.seal_token_answer(leased, &settings, &answer, kept).await?;
                let error = self.scopes_error(&settings, &tokens);
                let written = self
                    .commit_leased(leased, |base| {
                        let mut next =
                            self.with_tokens(base, tokens.clone(), &Default::default(), base.status, error.clone());
                        next.refresh.day = day;
                        next.refresh.attempts_today = attempts;
                        next
                    })
                    .await?;
                let Some(done) = written else {
                    // Disconnected or deleted meanwhile: the new tokens must not stay alive.
                    let current = self.store.get_connection(&leased.org, &leased.id).await?;
                    if current.is_none_or(|c| c.generation != leased.generation || c.status == Status::Disconnected) {
                        self.revoke_orphaned(leased, tokens).await;
                    }
                    return Ok(None);
                };
                let expires = done.oauth.as_ref().and_then(|t| t.expires_at).map(|e| e.to_string());
                self.log(
                    &done,
                    LogType::Refreshed,
                    format!("token refreshed (expires {})", expires.as_deref().unwrap_or("never")),
                )
                .await;
                self.announce_refreshed(leased, &done).await;
                if let Some(error) = &error {
                    self.log(&done, LogType::RefreshFailed, format!("{}: {}", error.code, error.message)).await;
                    self.announce_red(&done).await;
                    return Err(ServiceError::Unusable(Unusable::Error));
                }
                Ok(Some(done))
            }
            Err(TokenFailure::Forbidden { why }) => {
                let detail = format!("the token endpoint {why}");
                let error = self.refusal_error(Refusal::ClientRejected, None, &detail);
                self.refused(leased, error, "not refreshed").await
            }
            Err(TokenFailure::Refused { class, provider_code, status, .. }) => {
                // Another worker may have rotated the token meanwhile (and this one was the
                // old one): only a refusal of the current token turns the connection red.
                let current =
                    self.store.get_connection(&leased.org, &leased.id).await?.ok_or(ServiceError::NotFound)?;
                if current.oauth != leased.oauth || current.generation != leased.generation {
                    self.release_lease(leased, false).await;
                    return Ok(None);
                }
                // The message names the HTTP status, never the provider's text (it could echo
                // what was sent); the provider's code is kept beside the class.
                let detail = format!("HTTP {status}");
                let class =
                    if without_user && class == Refusal::GrantRefused { Refusal::ClientRejected } else { class };
                let error = self.refusal_error(class, provider_code.as_deref(), &detail);
                self.refused(leased, error, "refresh refused").await
            }
            Err(failure) => {
                let failures = leased.refresh.failures + 1;
                let p = self.policy();
                let jittered = self.backoff(failures);
                let retry_after = match &failure {
                    TokenFailure::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = retry_after.map_or(jittered, |r| r.max(jittered)).min(Duration::from_secs(86_400));
                let mut next_at = now + wait;
                if attempts >= p.max_attempts_per_day {
                    next_at = next_at.max(OffsetDateTime::from_unix_timestamp((day + 1) * 86_400).unwrap_or(next_at));
                }
                let backed_off = |base: &Connection| {
                    let mut next = base.clone();
                    next.refresh.lease = None;
                    next.refresh.failures = failures;
                    next.refresh.day = day;
                    next.refresh.attempts_today = attempts;
                    // The next try, by the sweep (lookups wait for it too); none for a connection
                    // reported red meanwhile, which stays out of the index.
                    next.refresh.due_at = (base.status != Status::Error).then_some(next_at);
                    next.version = base.version + 1;
                    next.updated_at = now;
                    next
                };
                let Some(done) = self.commit_leased(leased, backed_off).await? else {
                    return Ok(None);
                };
                let why = match &failure {
                    TokenFailure::Unreadable { status, .. } => {
                        format!("could not read the provider's answer (HTTP {status})")
                    }
                    other => format!("the provider is unavailable ({})", other.code()),
                };
                self.log(
                    &done,
                    LogType::RefreshFailed,
                    format!(
                        "refresh failed: {why}; tokens kept, nobody needs to act: next attempt in {} s",
                        wait.as_secs()
                    ),
                )
                .await;
                let reason = match failure {
                    TokenFailure::Unreadable { .. } => "unreadable_answer",
                    _ => "provider_unavailable",
                };
                self.emit(Event::about(EventType::TokenRefreshFailed, &done).with_reason(reason)).await;
                Err(ServiceError::Provider(failure.code()))
            }
        }
    }

    /// The wait before the next attempt after `failures` failures in a row: exponential from
    /// the policy's base to its maximum, with jitter on the upper half so that an outage does
    /// not end in a stampede.
    fn backoff(&self, failures: u32) -> Duration {
        let p = self.policy();
        jittered(exponential(p.base_backoff, p.max_backoff, failures))
    }

    /// Turns a leased connection red with `error` (a refusal: no further tries until someone
    /// acts), logs it and emits `Token Refresh Failed` (reason: the error class), then
    /// `Connection Error` and `Connection Expired`. A connection reported red meanwhile keeps the
    /// reason it was reported with (and was announced by that report).
    async fn refused(
        &self,
        leased: &Connection,
        error: crate::domain::StatusError,
        what: &str,
    ) -> Result<Option<Connection>> {
        let message = match &error.provider_code {
            Some(code) => format!("{what}: {} ({code}): {}", error.code, error.message),
            None => format!("{what}: {}: {}", error.code, error.message),
        };
        let red = |base: &Connection| {
            let mut red = base.turned_red(error.clone());
            if base.status == Status::Error {
                red.error = base.error.clone();
            }
            red.refresh.lease = None;
            red
        };
        let Some(done) = self.commit_leased(leased, red).await? else {
            return Ok(None);
        };
        self.log(&done, LogType::RefreshFailed, message).await;
        self.emit(Event::about(EventType::TokenRefreshFailed, &done).with_reason(error.code.clone())).await;
        // Red already (reported meanwhile): that report announced it.
        if done.error.as_ref().is_some_and(|e| (&e.code, &e.message, e.at) == (&error.code, &error.message, error.at)) {
            self.announce_red(&done).await;
        }
        Err(ServiceError::Unusable(Unusable::Error))
    }

    /// Writes the outcome of a leased refresh, built by `apply` from the record. The write is
    /// conditional on the version read; if another write won meanwhile (a label PATCH, a status
    /// change) while this call still holds the lease in the same generation, the outcome is
    /// applied again to the latest record, so rotated tokens are never dropped. `None` when the
    /// lease is no longer ours (expired and taken over) or the connection was disconnected or
    /// deleted: a stale worker cannot overwrite newer tokens.
    async fn commit_leased(
        &self,
        leased: &Connection,
        apply: impl Fn(&Connection) -> Connection,
    ) -> Result<Option<Connection>> {
        let owner = leased.refresh.lease.as_ref().map(|l| l.owner.clone());
        let mut base = leased.clone();
        // While the lease is ours the outcome must land (it may hold a rotated refresh token the
        // provider will not accept twice): other writers' conflicts are re-read and re-applied,
        // a store that does not answer is tried again, each a bounded number of times.
        for _ in 0..COMMIT_ATTEMPTS {
            let next = apply(&base);
            let written = (|| self.store.update_connection(&next, base.version))
                .retry(unavailable_retries())
                .when(StoreError::is_unavailable)
                .notify(|e, _| tracing::warn!(connection_id = %leased.id, error = %e, "the store did not take a refresh outcome; trying again"))
                .await;
            match written {
                Ok(()) => return Ok(Some(next)),
                Err(StoreError::Conflict) => {
                    let Some(current) = self.store.get_connection(&leased.org, &leased.id).await? else {
                        return Ok(None);
                    };
                    let ours = current.refresh.lease.as_ref().map(|l| &l.owner) == owner.as_ref()
                        && current.generation == leased.generation
                        && current.status != Status::Disconnected;
                    if !ours {
                        return Ok(None);
                    }
                    base = current;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Best effort: clears this call's lease after a failure, so others need not wait it out.
    /// With `retry_later` (the sweep), a connection still in the due index is due again only
    /// after the policy's base backoff: a store, key or configuration failure must not put it
    /// first in every sweep. Its failure count (which makes lookups wait too, for provider
    /// outages) is left alone: lookups keep refreshing on demand, so service resumes as soon as
    /// the dependency does.
    async fn release_lease(&self, leased: &Connection, retry_later: bool) {
        let retry_at = self.clock.now() + self.backoff(1);
        let released = self
            .commit_leased(leased, |base| {
                let mut next = base.clone();
                next.refresh.lease = None;
                if retry_later && base.refresh.due_at.is_some() {
                    next.refresh.due_at = Some(retry_at);
                }
                next.version = base.version + 1;
                next
            })
            .await;
        if let Err(e) = released {
            tracing::warn!(connection_id = %leased.id, error = %e, "releasing a refresh lease failed; it expires by itself");
        }
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
            return Ok(c);
        }
        let valid = |c: &Connection, now: OffsetDateTime| {
            c.oauth.as_ref().is_some_and(|t| t.expires_at.is_none_or(|e| e > now))
        };
        let unavailable = || ServiceError::Provider("temporarily_unavailable".into());
        // After a transient failure, lookups wait for the backoff like the sweep does: an outage
        // must not turn every lookup into a provider call.
        if backing_off(&c, now) {
            return if valid(&c, now) { Ok(c) } else { Err(unavailable()) };
        }
        let needed = move |c: &Connection, now: OffsetDateTime| needs_token(c, now, min_valid) && !backing_off(c, now);
        let seen = c.oauth.as_ref().map(|t| t.obtained_at);
        match self.refresh_connection(&c.org, &c.id, None, seen, needed, true).await {
            Ok(Refreshed::Now(done) | Refreshed::Already(done)) => {
                if valid(&done, self.clock.now()) {
                    Ok(done)
                } else {
                    Err(unavailable())
                }
            }
            Ok(Refreshed::Busy) => Ok(c),
            Err(e @ ServiceError::Unusable(_)) => Err(e),
            // Any other failure: the old token while it is valid.
            Err(e) => {
                if valid(&c, self.clock.now()) {
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
        Ok(match self.refresh_connection(&c.org, &c.id, None, seen, |_, _| true, true).await? {
            Refreshed::Now(done) | Refreshed::Already(done) => Some(done),
            Refreshed::Busy => None,
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
        let done = match self.refresh_connection(&c.org, &c.id, None, seen, |_, _| true, true).await? {
            Refreshed::Now(done) | Refreshed::Already(done) => done,
            Refreshed::Busy => c,
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

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

mod gate;

use std::time::Duration;

use futures_util::StreamExt;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::retry::{Races, exponential, jittered};
use super::{Result, Service, ServiceError};
use crate::domain::validate::{FieldError, Values};
use crate::domain::{
    ACCESS_TOKEN, Connection, Definition, LogType, Principal, RenderError, Status, StatusError, Verdict, Verify,
    VerifyMethod, VerifyState,
};
use crate::ports::{ConnectionFilter, StoreError};
use crate::provider::destination::{DestinationError, check_literal_destination, check_public_destination};
use crate::provider::{ApiMethod, ApiRequest, Reach};
pub(crate) use gate::VerifyGate;

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

/// What one verify request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// The provider answered this status.
    Answered(u16, Verdict),
    /// No answer: the transport's code (`timeout`, `unreachable`...), or `origin_backing_off`
    /// when the gate did not let the request go.
    Unavailable(&'static str),
}

/// The code of a status that means the provider cannot answer now.
fn unavailable_code(status: u16) -> &'static str {
    match status {
        429 => "throttled",
        408 => "timeout",
        _ => "provider_error",
    }
}

/// A template value as text: strings as they are, numbers and booleans as JSON writes them.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// The values a verify template may name: `own` over the definition's `defaults` (inputs read
/// by reference are in the defaults only), and the access token.
fn template_source(
    defaults: Values,
    own: &Values,
    access_token: Option<SecretString>,
) -> impl Fn(&str) -> Option<SecretString> {
    let mut all = defaults;
    all.plain.extend(own.plain.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.secret.extend(own.secret.iter().map(|(k, v)| (k.clone(), v.clone())));
    move |name: &str| {
        if name == ACCESS_TOKEN {
            return access_token.clone();
        }
        all.secret.get(name).cloned().or_else(|| all.plain.get(name).and_then(text_of).map(SecretString::from))
    }
}

impl Service {
    pub(crate) fn verify_policy(&self) -> &VerifyPolicy {
        &self.options.verify
    }

    /// Sends `verify` rendered with `value`, through the gate: the in-flight limit always, the
    /// origin's breaker only when `periodic` (the sweep's checks). A template naming a value the
    /// connection lacks, or a value that cannot go into a header, is the caller's to fix: a
    /// validation error naming `values.{name}`.
    async fn send_verify(
        &self,
        verify: &Verify,
        value: impl Fn(&str) -> Option<SecretString>,
        periodic: bool,
    ) -> Result<Checked> {
        let rendered = verify.render(value).map_err(|e| match e {
            RenderError::Missing(ref name) | RenderError::ControlCharacter(ref name) => {
                ServiceError::Invalid(vec![FieldError::new(format!("values.{name}"), e.to_string())])
            }
            // Checked when the definition was stored: a stored block that no longer renders is
            // Latchkey's failure.
            RenderError::Url | RenderError::Template(_) => {
                ServiceError::unexpected("a stored verify request did not render")
            }
        })?;
        let origin = rendered.url.origin().ascii_serialization();
        let now = self.clock.now();
        if periodic && !self.verify_gate.admit(&origin, now) {
            return Ok(Checked::Unavailable("origin_backing_off"));
        }
        let allow_loopback = self.allow_loopback_providers();
        match check_public_destination(&rendered.url, allow_loopback).await {
            Ok(()) => {}
            Err(DestinationError::Refused(_)) => return Ok(Checked::Unavailable("destination_refused")),
            Err(DestinationError::Unresolved) => {
                self.verify_gate.record(&origin, true, now);
                return Ok(Checked::Unavailable("unresolved"));
            }
        }
        let reach =
            if crate::domain::validate::is_loopback_host(&rendered.url) { Reach::Any } else { Reach::PublicOnly };
        let request = ApiRequest {
            method: match rendered.method {
                VerifyMethod::Get => ApiMethod::Get,
                VerifyMethod::Head => ApiMethod::Head,
                VerifyMethod::Post => ApiMethod::Post,
            },
            url: rendered.url,
            reach,
            headers: rendered.headers,
            json_body: rendered.body,
        };
        let answer = {
            let _permit = self.verify_gate.permits.acquire().await.map_err(ServiceError::unexpected)?;
            self.provider.send(&request).await
        };
        let checked = match answer {
            Ok(a) => Checked::Answered(a.status, verify.verdict(a.status)),
            Err(e) => Checked::Unavailable(e.code()),
        };
        let transient = matches!(checked, Checked::Unavailable(_) | Checked::Answered(_, Verdict::Unavailable));
        self.verify_gate.record(&origin, transient, self.clock.now());
        Ok(checked)
    }

    /// The verify URL of a definition being stored passes the outbound policy as far as it can
    /// be told without DNS (a literal private address, or loopback where not allowed, is
    /// refused at once; every address again at each request), like the token endpoints.
    ///
    /// # Errors
    /// A validation error naming `verify.url`.
    pub(crate) fn check_verify_destination(&self, verify: Option<&Verify>) -> Result<()> {
        let Some(url) = verify.and_then(|v| v.origin_url()) else {
            return Ok(());
        };
        check_literal_destination(&url, self.allow_loopback_providers())
            .map_err(|e| ServiceError::invalid("verify.url", &format!("the verify URL {e}")))
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

    /// Connect-time verification of `conn`'s new values (create, values PATCH), before they are
    /// stored: when its definition has a verify request and the connection needs no
    /// authorization for it (not OAuth: those are verified on demand and by the sweep, with
    /// their access token), the provider must accept them; then `conn.verify` records it and
    /// schedules the next one. Without a verify request nothing happens.
    ///
    /// # Errors
    /// [`ServiceError::CredentialsRejected`] (401/403 or another unexpected status),
    /// [`ServiceError::VerificationUnavailable`] (no answer, 408, 429, 5xx), a validation error
    /// for a value the request needs and lacks.
    pub(crate) async fn verify_new_values(
        &self,
        def: &Definition,
        conn: &mut Connection,
        values: &Values,
    ) -> Result<()> {
        let Some(verify) = &def.verify else {
            return Ok(());
        };
        if def.auth.is_oauth() {
            if conn.verify.due_at.is_none() {
                conn.verify.due_at = Some(self.next_verify_at());
            }
            return Ok(());
        }
        let defaults = self.definition_defaults(def).await?;
        let checked = self.send_verify(verify, template_source(defaults, values, None), false).await?;
        self.connect_time_outcome(conn, checked)
    }

    /// Connect-time verification of an imported grant (SPEC section 10): its access token (and
    /// `conn`'s values, sealed already) sent with the definition's verify request, before
    /// anything is stored, with the outcomes of [`Self::verify_new_values`]. Without a verify
    /// request nothing happens.
    ///
    /// # Errors
    /// As [`Self::verify_new_values`].
    pub(crate) async fn verify_imported_token(
        &self,
        def: &Definition,
        conn: &mut Connection,
        access_token: &SecretString,
    ) -> Result<()> {
        let Some(verify) = &def.verify else {
            return Ok(());
        };
        let own = Values { plain: conn.values.clone(), secret: self.open_secrets(conn).await? };
        let defaults = self.definition_defaults(def).await?;
        let source = template_source(defaults, &own, Some(access_token.clone()));
        let checked = self.send_verify(verify, source, false).await?;
        self.connect_time_outcome(conn, checked)
    }

    /// What a connect-time check came to: accepted is recorded in `conn.verify` (the next one
    /// scheduled), anything else an error.
    fn connect_time_outcome(&self, conn: &mut Connection, checked: Checked) -> Result<()> {
        match checked {
            Checked::Answered(status, Verdict::Accepted) => {
                conn.verify = VerifyState {
                    due_at: Some(self.next_verify_at()),
                    failures: 0,
                    checked_at: Some(self.clock.now()),
                    status: Some(status),
                };
                Ok(())
            }
            Checked::Answered(status, Verdict::Rejected | Verdict::Unexpected) => {
                Err(ServiceError::CredentialsRejected { status })
            }
            Checked::Answered(status, Verdict::Unavailable) => {
                Err(ServiceError::VerificationUnavailable(unavailable_code(status)))
            }
            Checked::Unavailable(code) => Err(ServiceError::VerificationUnavailable(code)),
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

    /// The log line of a connect-time verification, once the connection it checked is stored
    /// (`before`: the record the PATCH changed; none for a new connection).
    pub(crate) async fn log_connect_time_verification(&self, before: Option<&Connection>, c: &Connection) {
        if let (Some(at), Some(status)) = (c.verify.checked_at, c.verify.status)
            && before.is_none_or(|b| b.verify.checked_at != Some(at))
        {
            self.log(c, LogType::Verified, format!("credentials verified (HTTP {status})")).await;
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

    /// Writes a verification's outcome (see the module documentation), its log line and, for
    /// a refusal, the red status and `Connection Error` event.
    async fn record_verification(&self, c: &Connection, checked: Checked) -> Result<Connection> {
        let now = self.clock.now();
        let next_at = self.next_verify_at();
        let policy = self.verify_policy();
        let (message, kind) = match checked {
            Checked::Answered(status, Verdict::Accepted) => {
                (format!("credentials verified (HTTP {status})"), LogType::Verified)
            }
            Checked::Answered(status, Verdict::Rejected) => {
                (format!("the provider refused the credentials (HTTP {status})"), LogType::VerifyFailed)
            }
            Checked::Answered(status, _) => {
                (format!("verification not confirmed (HTTP {status}); retried later"), LogType::VerifyFailed)
            }
            Checked::Unavailable(code) => {
                (format!("verification unavailable ({code}); retried later"), LogType::VerifyFailed)
            }
        };
        let apply = |base: &mut Connection| {
            if !applies(c, base) {
                return false;
            }
            base.verify.checked_at = Some(now);
            match checked {
                Checked::Answered(status, Verdict::Accepted) => {
                    base.verify.status = Some(status);
                    base.verify.failures = 0;
                    base.verify.due_at = Some(next_at);
                    if base.status == Status::Error
                        && base.error.as_ref().is_some_and(|e| e.code == CREDENTIALS_REJECTED)
                    {
                        base.status = Status::Configured;
                        base.error = None;
                    }
                }
                Checked::Answered(status, Verdict::Rejected) => {
                    base.verify.status = Some(status);
                    base.verify.failures = 0;
                    base.verify.due_at = Some(next_at);
                    if base.status != Status::Error {
                        let red = base.turned_red(StatusError {
                            code: CREDENTIALS_REJECTED.to_owned(),
                            provider_code: None,
                            message: format!("the provider refused the credentials (HTTP {status})"),
                            at: now,
                        });
                        // `turned_red` counts a version of its own; the write below counts one.
                        *base = Connection { version: base.version, ..red };
                    }
                }
                Checked::Answered(status, _) => {
                    base.verify.status = Some(status);
                    base.verify.failures += 1;
                    base.verify.due_at =
                        Some(now + jittered(exponential(policy.base_backoff, policy.interval, base.verify.failures)));
                }
                Checked::Unavailable(_) => {
                    base.verify.failures += 1;
                    base.verify.due_at =
                        Some(now + jittered(exponential(policy.base_backoff, policy.interval, base.verify.failures)));
                }
            }
            true
        };
        let before = self.write_verify_state_seen(c, apply).await?;
        let Some((was, done)) = before else {
            // The connection changed while the provider was asked: the result is not its own.
            let current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
            tracing::info!(org = %c.org, connection_id = %c.id, "a verification result for credentials replaced meanwhile is dropped");
            return Ok(current);
        };
        self.log(&done, kind, message).await;
        if done.status == Status::Error && was.status != Status::Error {
            tracing::info!(org = %done.org, connection_id = %done.id, "credentials rejected by the provider");
            self.announce_red(&done).await;
        }
        Ok(done)
    }

    /// Applies `apply` to the latest record and writes it, redone on a lost race; when `apply`
    /// says `false` nothing is written and the latest record is returned.
    async fn write_verify_state(&self, c: &Connection, apply: impl Fn(&mut Connection) -> bool) -> Result<Connection> {
        Ok(match self.write_verify_state_seen(c, apply).await? {
            Some((_, done)) => done,
            None => self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?,
        })
    }

    /// [`Self::write_verify_state`], returning the record `apply` changed and what it became,
    /// or `None` when `apply` declined the latest record.
    async fn write_verify_state_seen(
        &self,
        c: &Connection,
        apply: impl Fn(&mut Connection) -> bool,
    ) -> Result<Option<(Connection, Connection)>> {
        let mut races = Races::default();
        let mut current = c.clone();
        loop {
            let mut next = current.clone();
            if !apply(&mut next) {
                return Ok(None);
            }
            next.version = current.version + 1;
            next.updated_at = self.clock.now();
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => return Ok(Some((current, next))),
                Err(StoreError::Conflict) => {
                    races.lost()?;
                    current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether `latest` still holds the credentials `checked` was verified with: the same values,
/// the same sealed secrets and tokens (compared sealed, never opened), the same generation.
fn same_credentials(checked: &Connection, latest: &Connection) -> bool {
    checked.generation == latest.generation
        && checked.values == latest.values
        && checked.secrets == latest.secrets
        && checked.oauth.as_ref().map(|t| &t.sealed) == latest.oauth.as_ref().map(|t| &t.sealed)
}

/// Whether a verification of `checked` may be written to `latest`: the same credentials, and a
/// state the result speaks to (`configured`/`active`, or red `credentials_rejected`, which an
/// accepting answer turns back).
fn applies(checked: &Connection, latest: &Connection) -> bool {
    if !same_credentials(checked, latest) {
        return false;
    }
    match latest.status {
        Status::Configured | Status::Active => true,
        // Red for this very reason: an accepting answer turns it back, any other is recorded.
        Status::Error => latest.error.as_ref().is_some_and(|e| e.code == CREDENTIALS_REJECTED),
        Status::Pending | Status::Disconnected => false,
    }
}

#[cfg(test)]
mod tests;

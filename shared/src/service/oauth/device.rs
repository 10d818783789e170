//! The RFC 8628 device authorization grant (`oauth2_device_code`, SPEC section 12).
//!
//! - **Start** (`POST /v1/connections/{id}/authorize`): the device authorization request
//!   (section 3.1) through the provider-client port (the outbound policy, time and size bounds,
//!   the lenient answer reader); the device code is sealed onto the connection
//!   ([`DeviceAuthorization`]) and the user is shown the user code and verification URI
//!   ([`DeviceAuthorizeResponse`]). The connection keeps its status (`pending` until approved).
//! - **Polling** (sections 3.4 and 3.5) needs no long-running process: the device
//!   authorization's next poll time is the connection's time in the due index
//!   ([`Connection::due_index_at`]), so the refresh sweep (`token-refresh` in AWS, the sweep
//!   loop of `latchkey serve`) polls it when it comes due. A poll is claimed by a conditional
//!   write that moves the next poll time on by the interval first: two sweeps never poll one
//!   device code at once, and never sooner than the interval.
//! - **Outcomes**: tokens are stored like an authorization code's (`configured`, refreshed by
//!   the sweep when a refresh token came, `Connection Authorized`); `authorization_pending`
//!   polls again after the interval; `slow_down` adds 5 s to the interval for good; a transient
//!   or unreadable answer (an outage, a 5xx or 429, a timeout) doubles it for good (up to
//!   5 min) and the next poll also waits for the answer's `Retry-After`;
//!   `access_denied` turns a connection without tokens red `access_denied`; an expired device
//!   code (`expired_token`, or its `expires_in` passed) ends the authorization and leaves the
//!   connection as it was, `pending` (nobody refused anything: authorizing again shows a new
//!   code), with an `authorize_failed` log line saying so. A connection that had tokens (a
//!   reconnect) keeps them and its status whatever the device flow came to.
//! - **Disconnect** removes the device authorization with the tokens.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::super::retry::Races;
use super::super::{Result, Service, ServiceError};
use super::AuthorizeResponse;
use super::reconnect::is_reconnect;
use crate::crypto::EncryptionContext;
use crate::domain::{
    AuthKind, Connection, DeviceAuthorization, Event, EventType, LogType, Principal, Refusal, Status, StatusError,
    due_second,
};
use crate::ports::StoreError;
use crate::provider::TokenFailure;
use crate::provider::destination::{DestinationError, check_public_destination};
use crate::provider::device::read_device_authorization_answer;
use crate::provider::request::GrantRequest;

/// What RFC 8628 section 3.5 adds to the interval at each `slow_down`.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// The longest a failed poll's doubling makes the interval (a `slow_down` or the provider's
/// own interval may be longer, and is kept).
pub const MAX_BACKED_OFF_INTERVAL: Duration = Duration::from_secs(300);

/// What one [`Service::poll_due_devices`] pass did, and when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePollPass {
    /// How many device authorizations it polled (or ended, once lapsed).
    pub polled: usize,
    /// How long until the earliest next poll this process knows of, as the due index files it
    /// (the whole second at or after it): of the codes it or the sweep polled, in this pass or
    /// earlier, and of those it started ([`Service::device_started`]). `Some(ZERO)` when the
    /// pass stopped at its deadline with due entries left; `None` when it knows of none (codes
    /// another process started and nobody here polled yet are found by the caller's next look).
    pub next_in: Option<Duration>,
}

/// The due seconds of the next polls this process knows of: the first polls of the device
/// authorizations it started, and the next polls of those it or its sweep polled. What wakes
/// `latchkey serve`'s device poller when a code starts or the sweep polls one
/// ([`Service::device_started`]) and tells it when to look next ([`DevicePollPass::next_in`]),
/// so that no code waits for the poller's next tick.
/// A time whose code was meanwhile polled elsewhere, approved or disconnected costs one look
/// that finds nothing. At most [`DeviceWake::CAPACITY`] times are kept (the latest give way);
/// the poller's tick finds what is not kept.
#[derive(Default)]
pub(crate) struct DeviceWake {
    notify: tokio::sync::Notify,
    /// Unix seconds, as the due index files them (the whole second at or after the time).
    due: std::sync::Mutex<std::collections::BTreeSet<i64>>,
}

impl DeviceWake {
    const CAPACITY: usize = 4_096;

    fn due(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<i64>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `second`; without a wake-up.
    fn note(&self, second: i64) {
        let mut due = self.due();
        if due.contains(&second) {
            return;
        }
        if due.len() >= Self::CAPACITY {
            match due.last() {
                Some(&last) if last > second => {
                    due.pop_last();
                }
                _ => return,
            }
        }
        due.insert(second);
    }

    /// A device authorization started with its first poll due at `second`, or the sweep polled
    /// one with its next poll due then: kept, and the poller woken to look again.
    fn started(&self, second: i64) {
        self.note(second);
        self.notify.notify_one();
    }

    /// Forgets the seconds up to `now_second`: the pass about to read the due index up to then
    /// meets their codes there.
    fn forget_through(&self, now_second: i64) {
        let mut due = self.due();
        let later = due.split_off(&(now_second + 1));
        *due = later;
    }

    fn earliest(&self) -> Option<i64> {
        self.due().first().copied()
    }
}

/// What authorize answers for an `oauth2_device_code` connection: what the user is shown.
#[derive(Debug, Serialize)]
pub struct DeviceAuthorizeResponse {
    /// The code the user enters at `verification_uri`.
    pub user_code: String,
    /// Where the user enters it (https, or http on loopback).
    pub verification_uri: String,
    /// The same page with the code filled in, when the provider offers one; else `null`.
    pub verification_uri_complete: Option<String>,
    /// When the code lapses.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Seconds between Latchkey's polls of the token endpoint.
    pub interval: u64,
}

/// What `POST /v1/connections/{id}/authorize` answers: a URL to send the browser to, or a code
/// to show the user (device flow).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Authorization {
    Redirect(AuthorizeResponse),
    Device(DeviceAuthorizeResponse),
}

/// How a device authorization ended without tokens.
enum Ended {
    /// The user refused (`access_denied`).
    Denied(Option<String>),
    /// The device code lapsed unapproved.
    Expired,
    /// The provider refused for another reason (the client, the grant): red with this.
    Refused(StatusError),
}

fn secs(d: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(d).unwrap_or(i64::MAX / 2))
}

impl Service {
    /// `POST /v1/connections/{id}/authorize` of any OAuth connection that is authorized by a
    /// user: an authorize URL (`oauth2_authorization_code`, see [`Service::authorize_at`]) or a
    /// device authorization (`oauth2_device_code`, see [`Service::authorize_device`]).
    ///
    /// # Errors
    /// Those of the one it runs.
    pub async fn start_authorization(
        &self,
        p: &Principal,
        id: &str,
        public_url: Option<&str>,
    ) -> Result<Authorization> {
        let c = self.visible_connection(p, id).await?;
        let device = match c.auth {
            Some(kind) => kind == AuthKind::Oauth2DeviceCode,
            None => self.definition_of(&c).await?.auth == AuthKind::Oauth2DeviceCode,
        };
        Ok(if device {
            Authorization::Device(self.authorize_device(p, id).await?)
        } else {
            Authorization::Redirect(self.authorize_at(p, id, public_url).await?)
        })
    }

    /// Starts a device authorization (RFC 8628 section 3.1) for connection `id`: its device
    /// code sealed on the connection (replacing one in progress), its first poll due after the
    /// provider's interval. The connection's status does not change.
    ///
    /// # Errors
    /// Those of the connection's visibility and permissions; `Conflict` for a connection that
    /// is not `oauth2_device_code`; `Invalid` for incomplete OAuth settings (naming
    /// `values.deviceAuthorizationUrl`...); `Provider` with the provider's code (or Latchkey's:
    /// `timeout`, `unreadable_answer`, `destination_refused`) when the provider gave no code.
    pub async fn authorize_device(&self, p: &Principal, id: &str) -> Result<DeviceAuthorizeResponse> {
        let c = self.visible_connection(p, id).await?;
        super::super::connections::require_manage(p, &c)?;
        let def = self.definition_of(&c).await?;
        if def.auth != AuthKind::Oauth2DeviceCode {
            return Err(ServiceError::Conflict("only oauth2_device_code connections start a device authorization"));
        }
        let settings = self.oauth_settings(&def, &c).await?;
        let endpoint = settings
            .device_authorization
            .clone()
            .ok_or_else(|| ServiceError::invalid("values.deviceAuthorizationUrl", "is required for the device flow"))?;
        let failed = |f: TokenFailure| {
            tracing::warn!(connection_id = %c.id, code = %f.code(), "device authorization request failed");
            ServiceError::Provider(f.code())
        };
        match check_public_destination(&endpoint.url, self.allow_loopback_providers()).await {
            Ok(()) => {}
            Err(DestinationError::Refused(why)) => return Err(failed(TokenFailure::Forbidden { why })),
            Err(DestinationError::Unresolved) => return Err(ServiceError::Provider("unresolved".to_owned())),
        }
        let scope = settings.scope_param();
        let post = settings.client.device_authorization_request(endpoint.url.clone(), endpoint.reach, scope.as_deref());
        let raw = self.provider.post_form(&post).await.map_err(|e| ServiceError::Provider(e.code().to_owned()))?;
        let answer = read_device_authorization_answer(&raw).map_err(failed)?;

        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let device_code = self.envelope.seal_str(&ctx, &answer.device_code).await?;
        let now = self.clock.now();
        let expires_at = now + secs(answer.expires_in);
        let mut current = c;
        let mut races = Races::default();
        let started = loop {
            let mut next = current.clone();
            next.device = Some(DeviceAuthorization {
                device_code: device_code.clone(),
                user_code: answer.user_code.clone(),
                verification_uri: answer.verification_uri.clone(),
                verification_uri_complete: answer.verification_uri_complete.clone(),
                expires_at,
                interval_secs: answer.interval,
                next_poll_at: now + secs(answer.interval),
            });
            next.version = current.version + 1;
            next.updated_at = now;
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => break next,
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            current = self.store.get_connection(&current.org, &current.id).await?.ok_or(ServiceError::NotFound)?;
        };
        // `latchkey serve`'s device poller learns when the first poll is due.
        if let Some(d) = &started.device {
            self.device_wake.started(due_second(d.next_poll_at));
        }
        self.log(
            &started,
            LogType::AuthorizeStarted,
            format!(
                "device authorization started: the user enters the code at {} before {expires_at}; polled every {} s",
                answer.verification_uri, answer.interval
            ),
        )
        .await;
        Ok(DeviceAuthorizeResponse {
            user_code: answer.user_code,
            verification_uri: answer.verification_uri,
            verification_uri_complete: answer.verification_uri_complete,
            expires_at,
            interval: answer.interval,
        })
    }

    /// For the sweep: polls `c`'s device authorization if its poll time has come (see the
    /// module documentation). Returns the connection as it is afterwards and whether a poll (or
    /// the end of a lapsed authorization) happened.
    ///
    /// # Errors
    /// The store's and the key service's; provider failures are outcomes, not errors.
    pub(crate) async fn poll_device_if_due(&self, c: Connection) -> Result<(Connection, bool)> {
        let Some(device) = c.device.clone() else {
            return Ok((c, false));
        };
        let now = self.clock.now();
        if device.next_poll_at > now {
            return Ok((c, false));
        }
        if device.expires_at <= now {
            return Ok((self.end_device(&c, &device, Ended::Expired).await?, true));
        }
        // The claim: the next poll time moves on first, conditionally, so no other sweep polls
        // this device code before the interval has passed again.
        let mut claimed = c.clone();
        if let Some(d) = claimed.device.as_mut() {
            d.next_poll_at = now + secs(d.interval_secs);
        }
        claimed.version = c.version + 1;
        match self.store.update_connection(&claimed, c.version).await {
            Ok(()) => {}
            // Another worker polls it, or the record changed: the next sweep sees.
            Err(StoreError::Conflict) => return Ok((c, false)),
            Err(e) => return Err(e.into()),
        }
        let def = self.definition_of(&claimed).await?;
        let settings = match self.oauth_settings(&def, &claimed).await {
            Ok(settings) => settings,
            Err(ServiceError::Invalid(errors)) => {
                let detail: Vec<String> = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect();
                let error = self.refusal_error(Refusal::ClientRejected, None, &detail.join("; "));
                return Ok((self.end_device(&claimed, &device, Ended::Refused(error)).await?, true));
            }
            Err(e) => return Err(e),
        };
        let ctx = EncryptionContext::connection(&c.org, &c.id);
        let device_code = self.envelope.open_str(&ctx, &device.device_code).await?;
        let failure = match self.request_token(&settings, GrantRequest::DeviceCode { device_code: &device_code }).await
        {
            Ok(answer) => {
                let done =
                    match self.store_tokens(&claimed, &settings, &answer, BTreeMap::new(), Status::Configured).await {
                        Ok(done) => done,
                        // Disconnected or deleted while polling: the tokens were revoked instead.
                        Err(ServiceError::Unusable(_) | ServiceError::NotFound) => return Ok((claimed, true)),
                        Err(e) => return Err(e),
                    };
                let scopes = done.oauth.as_ref().map(|t| t.scopes.join(" ")).unwrap_or_default();
                self.log(
                    &done,
                    LogType::Authorized,
                    format!("authorized on the user's other device (scopes: {scopes})"),
                )
                .await;
                self.emit(Event::about(EventType::ConnectionAuthorized, &done)).await;
                if is_reconnect(&claimed) {
                    self.announce_reconnect(&claimed, &done, answer.refresh_token.is_some()).await;
                }
                if let (Status::Error, Some(error)) = (done.status, &done.error) {
                    self.log(&done, LogType::AuthorizeFailed, error.message.clone()).await;
                    self.emit(Event::about(EventType::ConnectionError, &done)).await;
                }
                return Ok((done, true));
            }
            Err(failure) => failure,
        };
        let code = failure.code();
        let ended = match (code.as_str(), &failure) {
            ("authorization_pending", _) => return Ok((claimed, true)),
            ("slow_down", _) => {
                let Some(interval) = claimed.device.as_ref().map(|d| d.interval_secs + SLOW_DOWN_STEP.as_secs()) else {
                    return Ok((claimed, true));
                };
                tracing::info!(connection_id = %claimed.id, interval_secs = interval, "device authorization: the provider asked to slow down");
                return Ok((self.stretch(&claimed, interval, None).await?, true));
            }
            ("access_denied", _) => Ended::Denied(Some(code.clone())),
            ("expired_token", _) => Ended::Expired,
            (_, TokenFailure::Refused { class, provider_code, .. }) => Ended::Refused(self.refusal_error(
                *class,
                provider_code.as_deref(),
                "while polling a device authorization",
            )),
            (_, TokenFailure::Forbidden { why }) => {
                let detail = format!("the token endpoint {why}");
                Ended::Refused(self.refusal_error(Refusal::ClientRejected, None, &detail))
            }
            // Transient (an outage, a rate limit, a timeout) or unreadable: polled again until the
            // code lapses, less often (RFC 8628 section 3.5).
            (_, TokenFailure::Transient { retry_after, .. }) => {
                tracing::warn!(org = %c.org, connection_id = %c.id, code = %code, "polling a device authorization failed; polling again, less often");
                return Ok((self.back_off(&claimed, *retry_after).await?, true));
            }
            (_, TokenFailure::Unreadable { .. }) => {
                tracing::warn!(org = %c.org, connection_id = %c.id, code = %code, "polling a device authorization failed; polling again, less often");
                return Ok((self.back_off(&claimed, None).await?, true));
            }
        };
        Ok((self.end_device(&claimed, &device, ended).await?, true))
    }

    /// Polls every device authorization whose poll time has come, and nothing else: what
    /// `latchkey serve` runs between its refresh sweeps so that a device flow is not held to the
    /// sweep interval (`LATCHKEY_REFRESH_INTERVAL_SECS`, 60 s by default, against the 5 s RFC
    /// 8628 suggests). It reads the same due index as the sweep; connections due for anything
    /// else are left to the sweep, and no code is polled sooner than its interval (each poll is
    /// claimed as in the sweep). Starts nothing after `deadline`.
    ///
    /// It answers when the earliest next poll this process knows of comes due
    /// ([`DevicePollPass::next_in`]): those of the codes it or the sweep polled, and the first
    /// polls of the codes it started. A caller that sleeps that long (and wakes on
    /// [`Service::device_started`]) polls each code once its interval has passed, up to the
    /// index's rounding to the whole second later, not at the next tick of a fixed timer, which
    /// polled a 5 s code every 10 s.
    ///
    /// # Errors
    /// The store's, when the due index cannot be read; a failed poll is logged and skipped.
    pub async fn poll_due_devices(&self, deadline: std::time::Instant) -> Result<DevicePollPass> {
        let mut polled = 0;
        let now = self.clock.now();
        self.device_wake.forget_through(now.unix_timestamp());
        let page = self.policy().page.max(1);
        for shard in 0..self.store.due_shards() {
            let mut after = None;
            loop {
                let due = self.store.due_connections(shard, now, after.as_ref(), page).await?;
                let more = due.len() >= page;
                after = due.last().cloned();
                for entry in due {
                    if std::time::Instant::now() >= deadline {
                        return Ok(DevicePollPass { polled, next_in: Some(Duration::ZERO) });
                    }
                    let Some(c) = self.store.get_connection(&entry.org, &entry.id).await? else {
                        continue;
                    };
                    if c.device.is_none() {
                        continue;
                    }
                    match self.poll_device_if_due(c).await {
                        Ok((after_poll, was_polled)) => {
                            polled += usize::from(was_polled);
                            if let Some(d) = &after_poll.device {
                                self.device_wake.note(due_second(d.next_poll_at));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(connection_id = %entry.id, error = %e, "polling a device authorization failed");
                        }
                    }
                }
                if !more {
                    break;
                }
            }
        }
        let next_in = self.device_wake.earliest().map(|second| {
            let at = OffsetDateTime::from_unix_timestamp(second).unwrap_or(now);
            Duration::try_from(at - self.clock.now()).unwrap_or_default()
        });
        Ok(DevicePollPass { polled, next_in })
    }

    /// The sweep polled `c`'s device authorization (the code may be one another process
    /// started, which this process's device poller does not know): the poller learns when its
    /// next poll is due, instead of finding it at its next tick, up to that tick late.
    pub(crate) fn device_polled_by_sweep(&self, c: &Connection) {
        if let Some(d) = &c.device {
            self.device_wake.started(due_second(d.next_poll_at));
        }
    }

    /// Resolves when this process starts a device authorization or its sweep polls one (at
    /// once when that happened since the last call while nobody waited): `latchkey serve`'s
    /// device poller then looks again, and its pass learns when the code's next poll is due.
    pub async fn device_started(&self) {
        self.device_wake.notify.notified().await;
    }

    /// A failed poll (RFC 8628 section 3.5: a client reduces its polling frequency after a
    /// connection timeout; here after any transient or unreadable answer): the interval doubles
    /// for the rest of this authorization (at most [`MAX_BACKED_OFF_INTERVAL`]), and the next
    /// poll waits for the new interval or the answer's `retry_after`, whichever is longer.
    async fn back_off(&self, claimed: &Connection, retry_after: Option<Duration>) -> Result<Connection> {
        let Some(d) = claimed.device.as_ref() else {
            return Ok(claimed.clone());
        };
        let interval = d.interval_secs.saturating_mul(2).min(MAX_BACKED_OFF_INTERVAL.as_secs()).max(d.interval_secs);
        self.stretch(claimed, interval, retry_after).await
    }

    /// Sets the interval of `claimed`'s device authorization to `interval_secs` for good, and
    /// its next poll after that interval, or after `wait` when longer (capped at a day).
    async fn stretch(&self, claimed: &Connection, interval_secs: u64, wait: Option<Duration>) -> Result<Connection> {
        let mut next = claimed.clone();
        let Some(d) = next.device.as_mut() else {
            return Ok(next);
        };
        d.interval_secs = interval_secs;
        let wait = wait.unwrap_or_default().min(Duration::from_secs(86_400)).as_secs().max(interval_secs);
        d.next_poll_at = self.clock.now() + secs(wait);
        next.version = claimed.version + 1;
        match self.store.update_connection(&next, claimed.version).await {
            Ok(()) => Ok(next),
            // Changed meanwhile (a disconnect, a new authorization): that write stands.
            Err(StoreError::Conflict) => Ok(claimed.clone()),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the device authorization `device` of `c` without tokens: removed from the record
    /// (unless a new one replaced it meanwhile), the connection red when the provider refused
    /// and it has no tokens, a log line and for a red connection `Connection Error`.
    async fn end_device(&self, c: &Connection, device: &DeviceAuthorization, ended: Ended) -> Result<Connection> {
        let mut current = c.clone();
        let mut races = Races::default();
        loop {
            // Replaced by a new authorization, or gone with a disconnect: nothing to end.
            if current.device.as_ref().is_none_or(|d| d.device_code != device.device_code) {
                return Ok(current);
            }
            let now = self.clock.now();
            let red = match &ended {
                Ended::Denied(code) => Some(StatusError {
                    code: "access_denied".to_owned(),
                    provider_code: code.clone(),
                    message: "the user denied the device authorization: authorize again to show a new code".to_owned(),
                    at: now,
                }),
                Ended::Refused(error) => Some(error.clone()),
                Ended::Expired => None,
            };
            // A connection that has tokens (a reconnect) keeps them, and its status.
            let mut next = match &red {
                Some(error) if current.oauth.is_none() => current.turned_red(error.clone()),
                _ => {
                    let mut next = current.clone();
                    next.version = current.version + 1;
                    next.updated_at = now;
                    next
                }
            };
            next.device = None;
            match self.store.update_connection(&next, current.version).await {
                Ok(()) => {
                    let message = match (&ended, &red) {
                        (Ended::Expired, _) => {
                            "the device code expired before the user approved it: authorize again to show a new code"
                                .to_owned()
                        }
                        (_, Some(error)) => format!("{}: {}", error.code, error.message),
                        (_, None) => "device authorization ended".to_owned(),
                    };
                    self.log(&next, LogType::AuthorizeFailed, message).await;
                    if next.status == Status::Error && current.status != Status::Error {
                        self.emit(Event::about(EventType::ConnectionError, &next)).await;
                    }
                    return Ok(next);
                }
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
            current = self.store.get_connection(&c.org, &c.id).await?.ok_or(ServiceError::NotFound)?;
        }
    }
}

#[cfg(all(test, feature = "embedded"))]
#[path = "device_tests.rs"]
mod tests;

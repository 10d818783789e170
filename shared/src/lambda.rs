//! Lambda entry points over the same service and router as `latchkey serve`.

use std::sync::Arc;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use tracing::field::Empty;

use crate::config::{Components, ConfigError, LookupAuth, Settings};
use crate::domain::{ConnectionId, OrgId};
use crate::http::Surface;
use crate::http::auth::Verifier;
use crate::http::problem::Problem;
use crate::service::{LookupRequest, PrincipalKind, ReadOrigin, Service, ServiceError, error_types};

pub type Error = lambda_runtime::Error;

mod refresh_worker;
/// token-refresh's inputs (its schedule, a batch of the refresh queue, or an operator's branch
/// key rotation), answers and handlers, and the SQS adapter of the fan-out's queue.
pub use refresh_worker::{
    RETRY_VISIBILITY, RefreshPorts, RotateBranchKeys, RotateRequest, RotatedBranchKeys, SqsRefreshQueue,
    TokenRefreshEvent, TokenRefreshResponse, handle_refresh_messages, handle_token_refresh, refresh_invocation,
    rotate_branch_keys, serve_refresh,
};
mod webhook_deliver;
/// webhook-deliver's inputs (an SQS batch of EventBridge envelopes, or its sweep's schedule) and
/// answers (the messages to hand back, or the sweep's summary), and its handlers.
pub use webhook_deliver::{
    BatchItemFailure, DUE_SOON, MAX_VISIBILITY, MessageVisibility, SqsBatchResponse, SqsEvent, SqsMessage,
    SqsVisibility, VisibilityError, WebhookDeliverEvent, WebhookDeliverResponse, WebhookSweep, handle_webhook_deliver,
    handle_webhook_messages, handle_webhook_sweep, queue_url, serve_webhook_deliver, visibility_seconds,
};

/// The `detail` of Latchkey's own `Connection Disconnected` and `Connection Deleted` events
/// (`domain::Event`, source `latchkey`) as token-revoke reads it: which connection. Its other
/// members (`customer`, `definition`, `status`) are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectionEventDetail {
    pub org: OrgId,
    pub connection_id: ConnectionId,
}

/// token-revoke's input: the EventBridge event its rule delivers. One whose `detail` lacks a
/// valid `org` or `connection_id` is refused by the runtime before the handler runs, with an
/// error naming the member (`[detail.connection_id] missing field ...`).
pub type ConnectionEvent = EventBridgeEvent<ConnectionEventDetail>;

/// The `detail` of an EventBridge scheduled event: `{}`. Whatever it holds is ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScheduleDetail {}

/// token-refresh's input: the event of its EventBridge schedule rule (`detail-type` `Scheduled
/// Event`, source `aws.events`).
pub type ScheduledEvent = EventBridgeEvent<ScheduleDetail>;

/// The span of one invocation: Lambda's `request_id` (`context.request_id`), then `org` and
/// `connection_id` once the payload has named them ([`record_ids`]). Every line written while
/// handling the invocation carries them (`telemetry::json_subscriber`).
fn invocation_span(context: &lambda_runtime::Context) -> tracing::Span {
    tracing::info_span!("invocation", request_id = %context.request_id, org = Empty, connection_id = Empty)
}

/// Names the organization and connection in the current span (an invocation's, or an HTTP
/// request's). Ids only, already parsed: never a payload.
fn record_ids(org: &OrgId, connection: Option<&ConnectionId>) {
    let span = tracing::Span::current();
    span.record("org", org.as_str());
    if let Some(id) = connection {
        span.record("connection_id", id.as_str());
    }
}

/// The verifier of the deployed functions: RS256/ES256 tokens of `LATCHKEY_JWT_ISSUER` (what the
/// template configures, the issuer API Gateway's JWT authorizer also checks), HS256 tokens when
/// `LATCHKEY_JWT_SECRET` is set (as under `cargo lambda watch`). With neither it refuses every
/// token (and says so at start): the claims of API Gateway's authorizer are never trusted on
/// their own, since whoever may invoke the function directly can write them.
pub fn function_verifier(config: &Settings) -> Result<Verifier, ConfigError> {
    let verifier = config.verifier(config.jwt_secret.as_ref())?;
    if !verifier.accepts_any() {
        tracing::warn!(
            "neither LATCHKEY_JWT_ISSUER nor LATCHKEY_JWT_SECRET is set: every authenticated request is refused (401)"
        );
    }
    Ok(verifier)
}

/// The router of an HTTP function: the routes of `surface`, callers verified by
/// [`function_verifier`].
pub fn http_router(app: &Components, config: &Settings, surface: Surface) -> Result<axum::Router, ConfigError> {
    Ok(crate::http::router_for(surface, app.router_state(function_verifier(config)?)))
}

/// The HTTP functions (`connections-api`, `oauth-callback`): the routes of `surface` behind API
/// Gateway (HTTP API, payload 2.0), every bearer token verified by the function itself.
pub async fn serve_http(app: Components, config: &Settings, surface: Surface) -> Result<(), Error> {
    let router = http_router(&app, config, surface)?;
    lambda_http::run(router).await
}

fn diagnostic(error_type: &'static str, message: &str) -> Diagnostic {
    Diagnostic { error_type: error_type.to_owned(), error_message: message.to_owned() }
}

fn invalid(message: &str) -> Diagnostic {
    diagnostic(error_types::INVALID, message)
}

/// The token check's refusal as a diagnostic: its problem's detail, under the `errorType` of
/// its status (401 `Unauthorized`, 403 `Forbidden`, 503 `Unavailable`: the issuer's keys could
/// not be fetched).
fn refused(p: Problem) -> Diagnostic {
    let error_type = match p.status {
        401 => error_types::UNAUTHORIZED,
        403 => error_types::FORBIDDEN,
        503 => error_types::UNAVAILABLE,
        _ => error_types::INTERNAL,
    };
    diagnostic(error_type, &p.detail)
}

/// The `token-lookup` function's handler as `LATCHKEY_LOOKUP_AUTH=iam` runs it (the caller's IAM
/// permission to invoke is the authorization): see [`handle_lookup_with`].
pub async fn handle_lookup(service: &Service, payload: Value) -> Result<Value, Diagnostic> {
    handle_lookup_with(service, None, payload).await
}

/// The `token-lookup` function's handler: `{"org", "connection_id", "min_valid_seconds",
/// "token"?}`, or `{"action": "report_error", "org", "connection_id", "message", "token"?}`.
/// Instead of `connection_id` either may name the connection by selector (SPEC section 10):
/// `"definition", "customer", "instance_id"?, "user"?`, resolved to the instance's connection,
/// then the user's, then the customer's reusable one, then the organization's for that customer
/// (`ConnectionNotFound` when none; `customer` may be left out when the token names one).
///
/// With `verifier` (`LATCHKEY_LOOKUP_AUTH=token`) `token` is required: a JWT verified exactly
/// like an HTTP bearer token, with the `runtime` role, whose `org` must be the payload's (which
/// may then be left out) and whose `customer`, if any, restricts the lookup to that customer's
/// connections. Without (`iam`) a `token` is ignored.
///
/// Failures are `Diagnostic`s whose `errorType` callers branch on: `ConnectionNotFound`,
/// `ConnectionPending`, `ConnectionDisconnected`, `ConnectionError`, `TokenExpired`,
/// `ProviderError`, `Unavailable` (DynamoDB, KMS or the token issuer did not answer in time:
/// retry), `InvalidRequest`, `InternalError`; in token mode also `Unauthorized` (no token, or
/// one that is invalid or expired) and `Forbidden` (no `runtime` role, or another
/// organization's token).
pub async fn handle_lookup_with(
    service: &Service,
    verifier: Option<&Verifier>,
    payload: Value,
) -> Result<Value, Diagnostic> {
    handle_lookup_invocation(service, verifier, payload, &ulid::Ulid::new().to_string()).await
}

/// [`handle_lookup_with`] for the invocation `request_id` (Lambda's `context.request_id`), the
/// id its audit line names. A call outside an invocation (as [`handle_lookup_with`] makes)
/// names a new ULID instead.
pub async fn handle_lookup_invocation(
    service: &Service,
    verifier: Option<&Verifier>,
    payload: Value,
    request_id: &str,
) -> Result<Value, Diagnostic> {
    // serde's message could quote a value of the payload: keep it out of the error.
    let req = LookupRequest::from_json(payload).ok_or_else(|| {
        invalid(
            "expected {org, connection_id, min_valid_seconds?, token?} or \
             {action: report_error, org, connection_id, message, token?}, where \
             {definition, customer, instance_id?, user?} may stand for connection_id",
        )
    })?;
    let (org, customer, principal) = match verifier {
        None => {
            let org = req.org.as_deref().ok_or_else(|| invalid("org is required"))?;
            (OrgId::parse(org).map_err(|_| invalid("org is not a valid organization id"))?, None, PrincipalKind::Iam)
        }
        Some(verifier) => {
            let token = req.token.as_ref().ok_or_else(|| {
                diagnostic(
                    error_types::UNAUTHORIZED,
                    "a runtime token is required (\"token\": a JWT with the runtime role)",
                )
            })?;
            let principal = verifier.verify(token.expose_secret()).await.map_err(refused)?;
            if !principal.is_runtime() {
                return Err(diagnostic(error_types::FORBIDDEN, "token lookup needs the runtime role"));
            }
            if req.org.as_deref().is_some_and(|o| o != principal.org.as_str()) {
                return Err(diagnostic(error_types::FORBIDDEN, "the token is another organization's"));
            }
            let kind = PrincipalKind::of(&principal);
            (principal.org, principal.customer, kind)
        }
    };
    let origin = ReadOrigin::lambda(principal, request_id);
    record_ids(&org, req.connection_id.as_deref().and_then(|id| ConnectionId::parse(id).ok()).as_ref());
    let result = match req.action.as_deref() {
        None | Some("lookup") => service.lookup(&org, customer.as_ref(), &req, &origin).await.map(serde_json::to_value),
        Some("report_error") => service.report_error(&org, customer.as_ref(), &req).await.map(serde_json::to_value),
        Some(_) => return Err(invalid("action must be lookup or report_error")),
    };
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ServiceError::unexpected(e).into()),
        Err(e) => Err(e.into()),
    }
}

/// The `token-refresh` handler: one sweep per scheduled event, until `deadline`; the summary
/// `{due, refreshed, failed, skipped, revocations, verified}`. The event's content does not matter (any schedule).
pub async fn handle_refresh(service: &Service, deadline: std::time::Instant) -> Result<Value, Diagnostic> {
    match service.refresh_sweep(deadline).await {
        Ok(summary) => Ok(serde_json::to_value(summary).unwrap_or_default()),
        Err(e) => Err(e.into()),
    }
}

/// What a sweep leaves of its invocation for the work in flight to finish (at most half of
/// what is left, see [`work_budget`]): 40 s, the refresh lease (30 s) and two store calls
/// ([`crate::adapters::aws::OPERATION_TIMEOUT`], 5 s each).
///
/// A sweep or worker takes no refresh lease after its deadline (the invocation's end less this
/// margin), so every lease it holds ends at most 30 s after the deadline, and a provider's
/// answer (which may hold a rotated refresh token) is written by then: its retries stop so that
/// the last try ends with the lease. A try lost to another writer at that moment is read again
/// (5 s) and written once more (5 s): 30 + 5 + 5 = 40 s. Work before the lease (waiting for a
/// place under the adaptive limit, reading the record, a verification or device poll due
/// beside it) only decides whether a lease is taken in time, never how long it lasts.
pub const SWEEP_MARGIN: std::time::Duration = std::time::Duration::from_secs(40);

/// [`work_budget`] from now: the invocation's deadline ([`remaining_until`]) less the margin, so
/// a refresh in flight (its provider call times out after 15 s, its answer is written until its
/// lease ends) is stored before Lambda ends the invocation, as a rotated refresh token cut off
/// there would be lost.
fn sweep_deadline(context: &lambda_runtime::Context) -> std::time::Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    std::time::Instant::now() + work_budget(remaining_until(context.deadline, now))
}

/// What is left of an invocation whose `Lambda-Runtime-Deadline-Ms` is `deadline_ms`, at `now`
/// (since the Unix epoch). Lambda sends the deadline as Unix milliseconds; `cargo lambda watch`
/// (cargo-lambda 1.9) sends the function's timeout itself (`600000`), which read as a time would
/// have passed in 1970 and leave no time at all: a value below 10^12 ms (September 2001) is
/// taken as that timeout, so the functions work under the emulator as they do deployed.
pub fn remaining_until(deadline_ms: u64, now: std::time::Duration) -> std::time::Duration {
    const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;
    let deadline = std::time::Duration::from_millis(deadline_ms);
    if deadline_ms < EPOCH_MS_FLOOR { deadline } else { deadline.saturating_sub(now) }
}

/// How long of `remaining` a sweep, tick or worker batch may start work in: all but
/// [`SWEEP_MARGIN`], or half of it when it is shorter than twice the margin (a function given a
/// 30 s timeout, or `cargo lambda watch`'s default deadline, still works for 15 s rather than
/// handing every entry back).
pub fn work_budget(remaining: std::time::Duration) -> std::time::Duration {
    remaining.saturating_sub(SWEEP_MARGIN.min(remaining / 2))
}

/// The `token-revoke` handler: an EventBridge event `Connection Disconnected` / `Connection
/// Deleted` runs the revocation jobs of the connection its detail names; the summary `{jobs,
/// revoked, retrying, gave_up, skipped}` (counts of jobs), also logged. A duplicate or replayed
/// event finds no job and does nothing.
pub async fn handle_revoke(service: &Service, event: &ConnectionEvent) -> Result<Value, Diagnostic> {
    let ConnectionEventDetail { org, connection_id: id } = &event.detail;
    record_ids(org, Some(id));
    let outcomes = service.revoke_pending(org, id).await.map_err(Diagnostic::from)?;
    let count = |o: crate::service::RevokeOutcome| outcomes.iter().filter(|x| **x == o).count();
    use crate::service::RevokeOutcome::{GaveUp, Retrying, Revoked, Skipped};
    let (revoked, retrying, gave_up, skipped) = (count(Revoked), count(Retrying), count(GaveUp), count(Skipped));
    tracing::info!(jobs = outcomes.len(), revoked, retrying, gave_up, skipped, "revocation jobs run");
    Ok(serde_json::json!({
        "jobs": outcomes.len(), "revoked": revoked, "retrying": retrying, "gave_up": gave_up, "skipped": skipped
    }))
}

/// The `token-revoke` function: the EventBridge rule on Latchkey's own disconnect/delete events.
pub async fn serve_revoke(app: Components) -> Result<(), Error> {
    let service: Arc<Service> = app.service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<ConnectionEvent>| {
        let service = service.clone();
        async move { revoke_invocation(&service, event).await }
    }))
    .await
}

/// One invocation of `token-revoke`: [`handle_revoke`] in the invocation's span.
pub async fn revoke_invocation(service: &Service, event: LambdaEvent<ConnectionEvent>) -> Result<Value, Diagnostic> {
    handle_revoke(service, &event.payload).instrument(invocation_span(&event.context)).await
}

/// The verifier of the `token-lookup` function: `None` for `LATCHKEY_LOOKUP_AUTH=iam`; for
/// `token`, [`function_verifier`]'s, which must accept something.
///
/// # Errors
/// `token` mode with neither `LATCHKEY_JWT_ISSUER` nor `LATCHKEY_JWT_SECRET` set, or their
/// errors.
pub fn lookup_verifier(config: &Settings) -> Result<Option<Verifier>, ConfigError> {
    match config.lookup_auth {
        LookupAuth::Iam => Ok(None),
        LookupAuth::Token => {
            let verifier = config.verifier(config.jwt_secret.as_ref())?;
            if !verifier.accepts_any() {
                return Err(ConfigError::Invalid {
                    name: "LATCHKEY_LOOKUP_AUTH",
                    why: "token needs LATCHKEY_JWT_ISSUER (with LATCHKEY_JWT_AUDIENCE) or LATCHKEY_JWT_SECRET".into(),
                });
            }
            Ok(Some(verifier))
        }
    }
}

/// The `token-lookup` function: invoked directly (`lambda:InvokeFunction`, IAM-authorized), and
/// with `LATCHKEY_LOOKUP_AUTH=token` each payload authorized by its runtime token too.
pub async fn serve_lookup(app: Components, config: &Settings) -> Result<(), Error> {
    let service: Arc<Service> = app.service;
    let verifier = lookup_verifier(config)?.map(Arc::new);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let service = service.clone();
        let verifier = verifier.clone();
        async move { lookup_invocation(&service, verifier.as_deref(), event).await }
    }))
    .await
}

/// One invocation of `token-lookup`: [`handle_lookup_with`] in the invocation's span. The
/// payload stays JSON up to the handler, which reads it into a [`LookupRequest`] itself: a
/// malformed one is then the stable `InvalidRequest`, and serde's message, which could quote a
/// value of the payload (the token), reaches neither the caller nor the log.
pub async fn lookup_invocation(
    service: &Service,
    verifier: Option<&Verifier>,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    handle_lookup_invocation(service, verifier, event.payload, &event.context.request_id)
        .instrument(invocation_span(&event.context))
        .await
}

#[cfg(test)]
mod work_budget_tests {
    use std::time::Duration;

    use super::work_budget;

    #[test]
    fn the_margin_is_forty_seconds_or_half_of_a_short_invocation() {
        // token-refresh's 300 s timeout: 260 s of work, 40 s for the refreshes in flight.
        assert_eq!(work_budget(Duration::from_secs(300)), Duration::from_secs(260));
        assert_eq!(work_budget(Duration::from_secs(90)), Duration::from_secs(50));
        assert_eq!(work_budget(Duration::from_secs(60)), Duration::from_secs(30));
        // A 30 s deadline (the emulator's): half, not nothing.
        assert_eq!(work_budget(Duration::from_secs(30)), Duration::from_secs(15));
        assert_eq!(work_budget(Duration::ZERO), Duration::ZERO);
    }

    /// The margin covers a lease taken just before the deadline and a provider's answer written
    /// until it ends, then read and written once more after losing to another writer.
    #[test]
    fn the_margin_covers_a_lease_taken_at_the_deadline_and_one_more_write() {
        let lease = crate::service::RefreshPolicy::default().lease;
        let store_call = crate::adapters::aws::OPERATION_TIMEOUT;
        assert!(super::SWEEP_MARGIN >= lease + 2 * store_call, "{:?}", super::SWEEP_MARGIN);
    }

    #[test]
    fn a_deadline_is_unix_milliseconds_or_the_emulators_timeout() {
        use super::remaining_until;
        let now = Duration::from_millis(1_796_046_604_116);
        // Lambda: the deadline as Unix milliseconds.
        assert_eq!(remaining_until(1_796_046_904_116, now), Duration::from_secs(300));
        assert_eq!(remaining_until(1_796_046_000_000, now), Duration::ZERO, "passed");
        // cargo lambda watch: the timeout itself.
        assert_eq!(remaining_until(600_000, now), Duration::from_secs(600));
    }

    /// token-refresh and webhook-deliver both sweep until `sweep_deadline`: under `cargo lambda
    /// watch` (a deadline of 600000, the timeout) that is 560 s of work, not none.
    #[test]
    fn the_sweeps_deadline_reads_lambdas_and_the_emulators() {
        let mut context = lambda_runtime::Context::default();
        context.deadline = 600_000;
        let left = super::sweep_deadline(&context).saturating_duration_since(std::time::Instant::now());
        assert!(left > Duration::from_secs(550) && left <= Duration::from_secs(560), "{left:?}");
        let in_five_minutes = std::time::SystemTime::now() + Duration::from_secs(300);
        context.deadline = in_five_minutes.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let left = super::sweep_deadline(&context).saturating_duration_since(std::time::Instant::now());
        assert!(left > Duration::from_secs(250) && left <= Duration::from_secs(260), "{left:?}");
    }
}

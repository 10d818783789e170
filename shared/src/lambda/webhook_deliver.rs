//! The `webhook-deliver` function: Latchkey's events, as the EventBridge rule hands them to the
//! webhook SQS queue, delivered to the organizations' webhook endpoints; and, on a schedule, the
//! sweep of every delivery still due, whatever became of its message.
//!
//! Per message: the EventBridge envelope in its body becomes a [`WebhookMessage`]; its
//! deliveries are enqueued (idempotent: a redelivered message finds the same ones, under the
//! same ids) and each one due (or due within [`DUE_SOON`]) is attempted. A message whose
//! deliveries are all settled (delivered or failed for good) is done, and SQS deletes it. One
//! with a delivery still pending is reported as a batch item failure (the event source
//! mapping's `ReportBatchItemFailures`), after its visibility is moved to that delivery's next
//! attempt ([`MessageVisibility`]), so that SQS hands it back when the attempt is due.
//!
//! The message is only the fast path. Redrive sends it to the dead-letter queue after 30
//! receives (infra/template.yaml), and an invocation may die before its answer: the deliveries
//! stay pending in the table meanwhile, and the scheduled sweep ([`handle_webhook_sweep`], every
//! 5 minutes) attempts every one due, as `latchkey serve`'s worker does. Both paths claim a
//! delivery before sending it ([`Service::attempt_delivery`]), so they never send it twice at
//! once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
pub use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures_util::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::config::Components;
use crate::domain::{DeliveryStatus, WebhookDelivery};
use crate::ports::BackendError;
use crate::service::Service;
use crate::service::webhooks::{DELIVERY_CONCURRENCY, WebhookMessage};

/// The longest SQS lets a received message stay invisible: 12 hours from its receipt. The
/// delay asked for is kept a few minutes short of it, as the message was received a little
/// before.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600 - 300);

/// How early a delivery is attempted when its message comes back: SQS may hand a message back
/// a moment before the visibility asked for ends (and clocks differ), and one seen just before
/// its delivery is due would otherwise spend a receive doing nothing.
pub const DUE_SOON: Duration = Duration::from_secs(3);

/// Why a message's redelivery could not be delayed. Never holds the receipt handle.
#[derive(Debug, thiserror::Error)]
pub enum VisibilityError {
    /// The record's `eventSourceARN` is not an SQS queue ARN.
    #[error("not an SQS queue ARN: {0}")]
    NotAQueue(String),
    /// `ChangeMessageVisibility` failed (the SDK's error as its source).
    #[error("ChangeMessageVisibility failed")]
    Sqs(#[source] BackendError),
}

/// Delays the redelivery of a received SQS message: `ChangeMessageVisibility`. A port, so the
/// handler is tested without AWS.
#[async_trait]
pub trait MessageVisibility: Send + Sync {
    /// Makes the message of `receipt_handle` in the queue `queue_arn` (the record's
    /// `eventSourceARN`) invisible for `delay` from now ([`visibility_seconds`]: whole seconds,
    /// rounded up, 1 s to [`MAX_VISIBILITY`]).
    ///
    /// # Errors
    /// [`VisibilityError`]: the ARN is not a queue's, or SQS refused or could not be reached.
    async fn delay(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), VisibilityError>;
}

/// [`MessageVisibility`] over SQS. The queue URL is derived from the queue's ARN
/// (`arn:{partition}:sqs:{region}:{account}:{name}` gives
/// `https://sqs.{region}.amazonaws.com{.cn}/{account}/{name}`), so no `GetQueueUrl` call (or
/// permission) is needed; the request goes to the client's endpoint whatever the URL's host.
pub struct SqsVisibility {
    client: aws_sdk_sqs::Client,
}

impl SqsVisibility {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self { client }
    }
}

/// The whole seconds of visibility that cover `delay`: rounded up (a message seen again a
/// moment before its delivery is due would find nothing to do and spend one of its receives),
/// at least 1 s (0 would hand it back at once), at most [`MAX_VISIBILITY`].
pub fn visibility_seconds(delay: Duration) -> u64 {
    let up = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    up.clamp(1, MAX_VISIBILITY.as_secs())
}

/// The queue URL of an SQS queue ARN; `None` for anything else.
pub fn queue_url(queue_arn: &str) -> Option<String> {
    let parts: Vec<&str> = queue_arn.split(':').collect();
    let [arn, partition, "sqs", region, account, name] = parts[..] else { return None };
    if arn != "arn" || [region, account, name].iter().any(|p| p.is_empty()) {
        return None;
    }
    let suffix = if partition == "aws-cn" { "amazonaws.com.cn" } else { "amazonaws.com" };
    Some(format!("https://sqs.{region}.{suffix}/{account}/{name}"))
}

#[async_trait]
impl MessageVisibility for SqsVisibility {
    async fn delay(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), VisibilityError> {
        let url = queue_url(queue_arn).ok_or_else(|| VisibilityError::NotAQueue(queue_arn.to_owned()))?;
        let seconds = visibility_seconds(delay);
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| VisibilityError::Sqs(e.into()))
    }
}

/// What `webhook-deliver` is invoked with: a batch of the webhook queue, or the sweep's
/// schedule. Told apart by their shapes (`Records`, or `detail-type` and `source`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WebhookDeliverEvent {
    /// A batch from the SQS event source mapping: [`handle_webhook_messages`].
    Queue(SqsEvent),
    /// The EventBridge schedule (`Scheduled Event`, source `aws.events`; its content does not
    /// matter): [`handle_webhook_sweep`].
    Schedule(super::ScheduledEvent),
}

/// What `webhook-deliver` answers: the batch's item failures (what the event source mapping
/// reads), or the sweep's summary.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum WebhookDeliverResponse {
    /// `{"batchItemFailures": [{"itemIdentifier": messageId}...]}`.
    Queue(SqsBatchResponse),
    /// `{"attempted": n}`.
    Sweep(WebhookSweep),
}

/// The summary of one scheduled sweep.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSweep {
    /// Deliveries that were due and attempted (one another worker had claimed counts, and is
    /// left to it).
    pub attempted: usize,
}

/// What became of one message.
enum Outcome {
    /// Every delivery of its event is delivered or failed for good (or it has none): delete it.
    Settled,
    /// A delivery is still pending: hand the message back after `delay` (`None`: at the
    /// queue's visibility timeout, as after an error).
    Pending { delay: Option<Duration> },
}

/// One invocation of `webhook-deliver`, whichever its source: the queue's batch
/// ([`handle_webhook_messages`], which never fails), or the schedule's sweep
/// ([`handle_webhook_sweep`] until `deadline`).
///
/// # Errors
/// The sweep's: the store could not list the due deliveries.
pub async fn handle_webhook_deliver(
    service: &Service,
    visibility: &dyn MessageVisibility,
    event: WebhookDeliverEvent,
    deadline: Instant,
) -> Result<WebhookDeliverResponse, Diagnostic> {
    match event {
        WebhookDeliverEvent::Queue(batch) => {
            Ok(WebhookDeliverResponse::Queue(handle_webhook_messages(service, visibility, batch).await))
        }
        WebhookDeliverEvent::Schedule(_) => {
            handle_webhook_sweep(service, deadline).await.map(WebhookDeliverResponse::Sweep)
        }
    }
}

/// The scheduled sweep: every delivery due, whatever became of its message (in the dead-letter
/// queue, or lost with an invocation), attempted as `latchkey serve`'s worker does, batch after
/// batch until none is due or `deadline` is near ([`Service::deliver_due_until`]; give it the
/// invocation's deadline less [`super::SWEEP_MARGIN`]). What it did not reach waits for the next
/// sweep, or for its message.
///
/// # Errors
/// The store's, listing the due deliveries ([`crate::service::ServiceError`] as a
/// [`Diagnostic`]); a failed attempt is logged, and the sweep goes on.
pub async fn handle_webhook_sweep(service: &Service, deadline: Instant) -> Result<WebhookSweep, Diagnostic> {
    let attempted = service.deliver_due_until(deadline).await?;
    tracing::info!(attempted, "webhook sweep");
    Ok(WebhookSweep { attempted })
}

/// The `webhook-deliver` handler of a queue batch: each message handled as the module says.
/// The messages' deliveries are enqueued a few messages at a time, then every due delivery of
/// the batch is attempted, at most [`DELIVERY_CONCURRENCY`] at once. The answer lists the
/// `messageId`s SQS must hand back (`batchItemFailures`): those with a pending delivery, and
/// those that could not be handled (an unreadable body, the store unavailable); every other
/// message is deleted by the event source mapping. Never fails as a whole.
pub async fn handle_webhook_messages(
    service: &Service,
    visibility: &dyn MessageVisibility,
    event: SqsEvent,
) -> SqsBatchResponse {
    // Per message: its event's deliveries, or `None` when it could not be handled.
    let mut deliveries: Vec<Option<Vec<WebhookDelivery>>> = futures_util::stream::iter(&event.records)
        .map(|record| enqueue(service, record))
        .buffered(DELIVERY_CONCURRENCY)
        .collect()
        .await;
    // Every delivery due (or about to be), of every message: one bounded stream of attempts, as
    // an attempt may take its whole timeout (10 s).
    let soon = service.now() + DUE_SOON;
    let mut due = Vec::new();
    for (i, found) in deliveries.iter_mut().enumerate() {
        let Some(found) = found else { continue };
        let (now, later) = std::mem::take(found)
            .into_iter()
            .partition(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at.is_none_or(|at| at <= soon));
        *found = later;
        due.extend(now.into_iter().map(|d: WebhookDelivery| (i, d)));
    }
    let attempts: Vec<_> = futures_util::stream::iter(due)
        .map(|(i, d)| async move { (i, service.attempt_delivery(d).await) })
        .buffer_unordered(DELIVERY_CONCURRENCY)
        .collect()
        .await;
    for (i, attempt) in attempts {
        match (attempt, &mut deliveries[i]) {
            (Ok(after), Some(found)) => found.push(after),
            (Err(error), found) => {
                let message_id = event.records[i].message_id.as_deref().unwrap_or("-");
                tracing::warn!(message_id, error = %error, "a delivery attempt could not be recorded");
                *found = None;
            }
            (Ok(_), None) => {}
        }
    }

    let now = service.now();
    let mut response = SqsBatchResponse::default();
    for (record, found) in event.records.iter().zip(deliveries) {
        let outcome = match found {
            None => Outcome::Pending { delay: None },
            Some(found) => match found.iter().filter_map(|d| pending_until(d, now)).min() {
                Some(at) => {
                    let delay = Duration::try_from(at - now).unwrap_or_default();
                    Outcome::Pending { delay: Some(delay.min(MAX_VISIBILITY)) }
                }
                None => Outcome::Settled,
            },
        };
        let Outcome::Pending { delay } = outcome else { continue };
        let id = record.message_id.clone().unwrap_or_default();
        if let (Some(delay), Some(arn), Some(handle)) = (delay, &record.event_source_arn, &record.receipt_handle)
            && let Err(error) = visibility.delay(arn, handle, delay).await
        {
            // SQS hands it back at the queue's visibility timeout instead: an early receive
            // only finds the delivery not yet due.
            tracing::warn!(message_id = %id, error = %aws_sdk_sqs::error::DisplayErrorContext(&error),
                "could not delay the message's redelivery");
        }
        response.add_failure(id);
    }
    tracing::info!(
        messages = event.records.len(),
        pending = response.batch_item_failures.len(),
        "webhook messages handled"
    );
    response
}

/// The deliveries of one message's event, enqueued; `None` when the message could not be
/// handled (left to the redrive policy and the sweep).
async fn enqueue(service: &Service, record: &SqsMessage) -> Option<Vec<WebhookDelivery>> {
    let message_id = record.message_id.as_deref().unwrap_or("-");
    let envelope = record.body.as_deref().and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok());
    let Some(message) = envelope.as_ref().and_then(|e| WebhookMessage::from_eventbridge(e).ok()) else {
        // After 30 receives it waits in the dead-letter queue, whose alarm fires. The body is
        // not logged (it is an event, but unread).
        tracing::error!(message_id, "not a Latchkey event envelope");
        return None;
    };
    match service.enqueue_deliveries(&message).await {
        Ok(deliveries) => Some(deliveries),
        Err(error) => {
            tracing::warn!(message_id, error = %error, "could not enqueue the event's deliveries");
            None
        }
    }
}

/// When a delivery still pending is due again (`now` if it does not say); `None` once it is
/// settled.
fn pending_until(d: &WebhookDelivery, now: OffsetDateTime) -> Option<OffsetDateTime> {
    (d.status == DeliveryStatus::Pending).then(|| d.next_attempt_at.unwrap_or(now))
}

/// The `webhook-deliver` function: the SQS event source mapping of the webhook queue (batches
/// of up to 10, `ReportBatchItemFailures`), redeliveries delayed with SQS built from the
/// standard AWS configuration the backend was built from; and the sweep's EventBridge
/// schedule, sweeping until [`super::SWEEP_MARGIN`] before the invocation's deadline (or half of
/// a shorter invocation: `super::sweep_deadline`, which also reads `cargo lambda watch`'s
/// deadline).
pub async fn serve_webhook_deliver(app: Components) -> Result<(), super::Error> {
    let visibility: Arc<dyn MessageVisibility> =
        Arc::new(SqsVisibility::new(aws_sdk_sqs::Client::new(&app.sdk_config().await)));
    let service: Arc<Service> = app.service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<WebhookDeliverEvent>| {
        let service = service.clone();
        let visibility = visibility.clone();
        async move {
            let span = super::invocation_span(&event.context);
            let deadline = super::sweep_deadline(&event.context);
            handle_webhook_deliver(&service, visibility.as_ref(), event.payload, deadline).instrument(span).await
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_covers_the_delay_in_whole_seconds() {
        assert_eq!(visibility_seconds(Duration::ZERO), 1);
        assert_eq!(visibility_seconds(Duration::from_millis(300)), 1);
        assert_eq!(visibility_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(visibility_seconds(Duration::from_secs(300)), 300);
        assert_eq!(visibility_seconds(Duration::from_secs(86_400)), MAX_VISIBILITY.as_secs());
    }

    #[test]
    fn queue_urls_come_from_queue_arns() {
        assert_eq!(
            queue_url("arn:aws:sqs:eu-west-1:123456789012:latchkey-WebhookQueue-AbC").as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/123456789012/latchkey-WebhookQueue-AbC")
        );
        assert_eq!(
            queue_url("arn:aws-cn:sqs:cn-north-1:123456789012:q").as_deref(),
            Some("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q")
        );
        for bad in ["", "arn:aws:sns:eu-west-1:123456789012:q", "arn:aws:sqs:eu-west-1::q", "q"] {
            assert_eq!(queue_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_samples_are_told_apart() {
        let read = |name: &str| {
            let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str::<WebhookDeliverEvent>(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        assert!(
            matches!(read("webhook-deliver/connection-created.json"), WebhookDeliverEvent::Queue(b) if b.records.len() == 1)
        );
        assert!(matches!(read("webhook-deliver/scheduled.json"), WebhookDeliverEvent::Schedule(_)));
        assert!(serde_json::from_str::<WebhookDeliverEvent>(r#"{"detail": {}}"#).is_err());
    }
}

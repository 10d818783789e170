//! The `webhook-deliver` function: Latchkey's events, as the EventBridge rule hands them to the
//! webhook SQS queue, delivered to the organizations' webhook endpoints.
//!
//! Per message: the EventBridge envelope in its body becomes a [`WebhookMessage`]; its
//! deliveries are enqueued (idempotent: a redelivered message finds the same ones, under the
//! same ids) and each one due is attempted. A message whose deliveries are all settled
//! (delivered or failed for good) is done, and SQS deletes it. One with a delivery still pending
//! is reported as a batch item failure (the event source mapping's `ReportBatchItemFailures`),
//! after its visibility is moved to that delivery's next attempt ([`MessageVisibility`]), so that
//! SQS hands it back when the attempt is due. Redrive sends a message to the dead-letter queue
//! after 12 receives (infra/template.yaml); its deliveries stay in the table meanwhile, and the
//! API can retry them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::config::Components;
use crate::domain::{DeliveryStatus, WebhookDelivery};
use crate::service::Service;
use crate::service::webhooks::WebhookMessage;

/// The longest SQS lets a received message stay invisible: 12 hours from its receipt. The
/// delay asked for is kept a few minutes short of it, as the message was received a little
/// before.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600 - 300);

/// Delays the redelivery of a received SQS message: `ChangeMessageVisibility`. A port, so the
/// handler is tested without AWS.
#[async_trait]
pub trait MessageVisibility: Send + Sync {
    /// Makes the message of `receipt_handle` in the queue `queue_arn` (the record's
    /// `eventSourceARN`) invisible for `delay` from now ([`visibility_seconds`]: whole seconds,
    /// rounded up, 1 s to [`MAX_VISIBILITY`]). The error is a description without the receipt
    /// handle.
    async fn delay(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), String>;
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
    async fn delay(&self, queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), String> {
        let url = queue_url(queue_arn).ok_or_else(|| format!("not an SQS queue ARN: {queue_arn}"))?;
        let seconds = visibility_seconds(delay);
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("ChangeMessageVisibility failed: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
    }
}

/// What became of one message.
enum Outcome {
    /// Every delivery of its event is delivered or failed for good (or it has none): delete it.
    Settled,
    /// A delivery is still pending: hand the message back after `delay` (`None`: at the
    /// queue's visibility timeout, as after an error).
    Pending { delay: Option<Duration> },
}

/// The `webhook-deliver` handler: each message of `event` handled as the module says, the
/// messages concurrently. The answer lists the `messageId`s SQS must hand back
/// (`batchItemFailures`): those with a pending delivery, and those that could not be handled
/// (an unreadable body, the store unavailable); every other message is deleted by the event
/// source mapping. Never fails as a whole.
pub async fn handle_webhook_messages(
    service: &Service,
    visibility: &dyn MessageVisibility,
    event: SqsEvent,
) -> SqsBatchResponse {
    let outcomes =
        futures_util::future::join_all(event.records.iter().map(|record| handle_message(service, record))).await;
    let mut response = SqsBatchResponse::default();
    for (record, outcome) in event.records.iter().zip(outcomes) {
        let Outcome::Pending { delay } = outcome else { continue };
        let id = record.message_id.clone().unwrap_or_default();
        if let (Some(delay), Some(arn), Some(handle)) = (delay, &record.event_source_arn, &record.receipt_handle)
            && let Err(error) = visibility.delay(arn, handle, delay).await
        {
            // SQS hands it back at the queue's visibility timeout instead: an early receive
            // only finds the delivery not yet due.
            tracing::warn!(message_id = %id, %error, "could not delay the message's redelivery");
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

async fn handle_message(service: &Service, record: &SqsMessage) -> Outcome {
    let message_id = record.message_id.as_deref().unwrap_or("-");
    let envelope = record.body.as_deref().and_then(|body| serde_json::from_str::<serde_json::Value>(body).ok());
    let Some(message) = envelope.as_ref().and_then(|e| WebhookMessage::from_eventbridge(e).ok()) else {
        // Left to the redrive policy: after 12 receives it waits in the dead-letter queue,
        // whose alarm fires. The body is not logged (it is an event, but unread).
        tracing::error!(message_id, "not a Latchkey event envelope");
        return Outcome::Pending { delay: None };
    };
    let deliveries = match service.enqueue_deliveries(&message).await {
        Ok(deliveries) => deliveries,
        Err(error) => {
            tracing::warn!(message_id, error = %error, "could not enqueue the event's deliveries");
            return Outcome::Pending { delay: None };
        }
    };
    // Every endpoint's delivery at once: an attempt may take its whole timeout (10 s).
    let now = OffsetDateTime::now_utc();
    let after = futures_util::future::join_all(deliveries.into_iter().map(|delivery| async move {
        let due = delivery.status == DeliveryStatus::Pending && delivery.next_attempt_at.is_none_or(|at| at <= now);
        if !due {
            return Some(delivery);
        }
        match service.attempt_delivery(delivery).await {
            Ok(after) => Some(after),
            Err(error) => {
                tracing::warn!(message_id, error = %error, "a delivery attempt could not be recorded");
                None
            }
        }
    }))
    .await;
    let unknown = after.iter().any(Option::is_none);
    let next = after.iter().flatten().filter_map(pending_until).min();
    match (next, unknown) {
        (_, true) => Outcome::Pending { delay: None },
        (Some(at), false) => {
            let delay = Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default();
            Outcome::Pending { delay: Some(delay.min(MAX_VISIBILITY)) }
        }
        (None, false) => Outcome::Settled,
    }
}

/// When a delivery still pending is due again; `None` once it is settled.
fn pending_until(d: &WebhookDelivery) -> Option<OffsetDateTime> {
    (d.status == DeliveryStatus::Pending).then(|| d.next_attempt_at.unwrap_or_else(OffsetDateTime::now_utc))
}

/// The `webhook-deliver` function: the SQS event source mapping of the webhook queue (batches
/// of up to 10, `ReportBatchItemFailures`), redeliveries delayed with SQS built from the
/// standard AWS configuration.
pub async fn serve_webhook_deliver(app: Components) -> Result<(), super::Error> {
    let service: Arc<Service> = app.service;
    let visibility: Arc<dyn MessageVisibility> =
        Arc::new(SqsVisibility::new(aws_sdk_sqs::Client::new(&crate::adapters::aws::sdk_config().await)));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let service = service.clone();
        let visibility = visibility.clone();
        async move {
            let span = super::invocation_span(&event.context);
            Ok::<_, super::Error>(
                handle_webhook_messages(&service, visibility.as_ref(), event.payload).instrument(span).await,
            )
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
}

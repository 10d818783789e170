//! `token-refresh` as one function with two inputs: its EventBridge schedule (one tick: the inline
//! sweep, or above [`FanoutPolicy::inline_max`] due connections the dispatch of every due entry to
//! the refresh queue), and batches of that queue (the workers: each entry refreshed as the sweep
//! would, at most the refresh policy's concurrency at once). Why duplicates and redeliveries are
//! safe, and how they are bounded: `service::refresh::fanout`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use futures_util::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::webhook_deliver::{SqsBatchResponse, SqsEvent};
use crate::config::{Components, Settings};
use crate::ports::DueEntry;
use crate::service::{FanoutPolicy, QueueError, RefreshMessage, RefreshQueue, RefreshTick, Service};

/// Entries per `SendMessageBatch` (SQS's limit).
const SQS_BATCH: usize = 10;
/// `SendMessageBatch` requests one [`SqsRefreshQueue::enqueue`] has in flight at once.
const SEND_CONCURRENCY: usize = 8;

/// [`RefreshQueue`] over SQS: one message per entry ([`RefreshMessage`] as JSON), sent ten to a
/// `SendMessageBatch` request (IAM action `sqs:SendMessage`), entries the queue refused sent once
/// more; the backlog from `GetQueueAttributes`.
pub struct SqsRefreshQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsRefreshQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self { client, url: url.into() }
    }

    /// One `SendMessageBatch` of at most ten entries, then once more for what it refused.
    async fn send(&self, entries: &[DueEntry]) -> Result<(), QueueError> {
        let mut pending: Vec<(String, String)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i.to_string(), serde_json::to_string(&RefreshMessage::from(e)).unwrap_or_default()))
            .collect();
        for _attempt in 0..2 {
            let batch: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .map(|(id, body)| SendMessageBatchRequestEntry::builder().id(id).message_body(body).build())
                .collect::<Result<_, _>>()
                .map_err(|e| QueueError::Unavailable(e.into()))?;
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(batch))
                .send()
                .await
                .map_err(|e| QueueError::Unavailable(e.into()))?;
            let refused: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
            pending.retain(|(id, _)| refused.contains(&id.as_str()));
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(QueueError::Refused(pending.len()))
    }
}

#[async_trait]
impl RefreshQueue for SqsRefreshQueue {
    async fn enqueue(&self, entries: &[DueEntry]) -> Result<(), QueueError> {
        let sends: Vec<_> = entries.chunks(SQS_BATCH).map(|chunk| self.send(chunk)).collect();
        let sent: Vec<Result<(), QueueError>> =
            futures_util::stream::iter(sends).buffer_unordered(SEND_CONCURRENCY).collect().await;
        sent.into_iter().collect()
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        let counts = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(counts.to_vec()))
            .send()
            .await
            .map_err(|e| QueueError::Unavailable(e.into()))?;
        let attributes = out.attributes();
        Ok(counts
            .iter()
            .filter_map(|name| attributes.and_then(|a| a.get(name)).and_then(|v| v.parse::<u64>().ok()))
            .sum())
    }
}

/// What `token-refresh` is invoked with: a batch of the refresh queue, or its schedule. Told
/// apart by their shapes (`Records`, or `detail-type` and `source`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TokenRefreshEvent {
    /// A batch from the SQS event source mapping: [`handle_refresh_messages`].
    Queue(SqsEvent),
    /// The EventBridge schedule (its content does not matter): one tick,
    /// [`Service::refresh_tick`].
    Schedule(super::ScheduledEvent),
}

/// What `token-refresh` answers: the batch's item failures (what the event source mapping
/// reads), or the tick's summary (the sweep's, or the dispatch's).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TokenRefreshResponse {
    /// `{"batchItemFailures": [{"itemIdentifier": messageId}...]}`.
    Queue(SqsBatchResponse),
    Tick(RefreshTick),
}

/// One invocation of `token-refresh`, whichever its source: a queue batch
/// ([`handle_refresh_messages`], which never fails), or a tick of the schedule
/// ([`Service::refresh_tick`] with `queue`, until `deadline`).
///
/// # Errors
/// The tick's: the index could not be read, or the queue could not take the entries.
pub async fn handle_token_refresh(
    service: &Service,
    queue: Option<&dyn RefreshQueue>,
    event: TokenRefreshEvent,
    deadline: Instant,
) -> Result<TokenRefreshResponse, Diagnostic> {
    match event {
        TokenRefreshEvent::Queue(batch) => {
            Ok(TokenRefreshResponse::Queue(handle_refresh_messages(service, batch, deadline).await))
        }
        TokenRefreshEvent::Schedule(_) => service
            .refresh_tick(queue, &FanoutPolicy::default(), deadline)
            .await
            .map(TokenRefreshResponse::Tick)
            .map_err(Diagnostic::from),
    }
}

/// The worker: each message's entry refreshed if still due ([`Service::refresh_due_entries`],
/// none started after `deadline`). The answer lists the `messageId`s SQS must hand back: those
/// whose store or key service did not answer, and those not started before the deadline. A
/// body that is not a [`RefreshMessage`] is logged (its message id only) and dropped: the due
/// index, not the queue, says what is due. Never fails as a whole.
pub async fn handle_refresh_messages(service: &Service, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
    let mut read: Vec<(String, DueEntry)> = Vec::with_capacity(event.records.len());
    for record in &event.records {
        let message_id = record.message_id.clone().unwrap_or_default();
        match record.body.as_deref().map(serde_json::from_str::<RefreshMessage>) {
            Some(Ok(message)) => read.push((message_id, message.into())),
            _ => tracing::error!(message_id, "not a refresh message: dropped"),
        }
    }
    let entries: Vec<DueEntry> = read.iter().map(|(_, e)| e.clone()).collect();
    let outcomes = service.refresh_due_entries(&entries, deadline).await;
    let mut response = SqsBatchResponse::default();
    for ((message_id, _), outcome) in read.into_iter().zip(outcomes) {
        if outcome.retry() {
            response.add_failure(message_id);
        }
    }
    response
}

/// The `token-refresh` function: the EventBridge schedule ticks (dispatching to
/// `LATCHKEY_REFRESH_QUEUE_URL` when it is set, through SQS built from the standard AWS
/// configuration), and the event source mapping of that queue hands it batches; both start no
/// work in the last [`super::SWEEP_MARGIN`] of the invocation.
pub async fn serve_refresh(app: Components, config: &Settings) -> Result<(), super::Error> {
    let service: Arc<Service> = app.service;
    let queue: Option<Arc<dyn RefreshQueue>> = match &config.refresh_queue_url {
        Some(url) => Some(Arc::new(SqsRefreshQueue::new(
            aws_sdk_sqs::Client::new(&crate::adapters::aws::sdk_config().await),
            url,
        ))),
        None => None,
    };
    lambda_runtime::run(service_fn(move |event: LambdaEvent<TokenRefreshEvent>| {
        let service = service.clone();
        let queue = queue.clone();
        async move { refresh_invocation(&service, queue.as_deref(), event).await }
    }))
    .await
}

/// One invocation of `token-refresh`: [`handle_token_refresh`] until [`super::SWEEP_MARGIN`]
/// before the invocation's deadline (`context.deadline`), in the invocation's span.
///
/// # Errors
/// [`handle_token_refresh`]'s.
pub async fn refresh_invocation(
    service: &Service,
    queue: Option<&dyn RefreshQueue>,
    event: LambdaEvent<TokenRefreshEvent>,
) -> Result<TokenRefreshResponse, Diagnostic> {
    let span = super::invocation_span(&event.context);
    let deadline = super::sweep_deadline(&event.context);
    handle_token_refresh(service, queue, event.payload, deadline).instrument(span).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_are_told_apart() {
        let read = |name: &str| {
            let path = format!("{}/../events/token-refresh/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str::<TokenRefreshEvent>(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        let TokenRefreshEvent::Queue(batch) = read("queue-batch.json") else { panic!("a batch") };
        let message: RefreshMessage = serde_json::from_str(batch.records[0].body.as_deref().unwrap()).unwrap();
        assert_eq!(message.org.as_str(), "acme");
        assert!(matches!(read("scheduled.json"), TokenRefreshEvent::Schedule(_)));
        assert!(serde_json::from_str::<TokenRefreshEvent>(r#"{"detail": {}}"#).is_err());
    }
}

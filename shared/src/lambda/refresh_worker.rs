//! `token-refresh` as one function with two inputs: its EventBridge schedule (one tick: the inline
//! sweep, or above [`FanoutPolicy::inline_max`] due connections the dispatch of every due entry to
//! the refresh queue), and batches of that queue (the workers: each entry refreshed as the sweep
//! would, at most the refresh policy's concurrency at once). Why duplicates and redeliveries are
//! safe, and how they are bounded: `service::refresh::fanout`. A third input, asked for by an
//! operator (`aws lambda invoke`), rotates organizations' branch keys: the function's role is
//! one the KMS key policy lets generate data keys, an operator's usually is not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use futures_util::StreamExt;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::webhook_deliver::{MessageVisibility, SqsBatchResponse, SqsEvent, SqsMessage, SqsVisibility};
use crate::config::{Components, Settings};
use crate::crypto::BranchKeyring;
use crate::domain::OrgId;
use crate::ports::DueEntry;
use crate::service::{FanoutPolicy, QueueError, RefreshMessage, RefreshQueue, RefreshTick, Service};

/// Entries per `SendMessageBatch` (SQS's limit).
const SQS_BATCH: usize = 10;
/// `SendMessageBatch` requests one [`SqsRefreshQueue::enqueue`] has in flight at once.
const SEND_CONCURRENCY: usize = 8;

/// How soon a message the worker hands back is seen again: a random delay in this range (so the
/// messages of one failed batch do not all return at once), set with `ChangeMessageVisibility`
/// before the batch's answer. Without it SQS would keep the message hidden for the queue's
/// visibility timeout (1,800 s), and counting in the backlog that holds every tick back, so a
/// short store or KMS outage would stall refreshes for half an hour.
pub const RETRY_VISIBILITY: std::ops::RangeInclusive<Duration> = Duration::from_secs(30)..=Duration::from_secs(60);

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
    /// An operator's request to rotate branch keys: [`RotateBranchKeys`].
    Rotate(RotateRequest),
    /// The EventBridge schedule (its content does not matter): one tick,
    /// [`Service::refresh_tick`].
    Schedule(super::ScheduledEvent),
}

/// `{"rotate_branch_keys": {"orgs": ["acme", ...]}}`: what an operator invokes `token-refresh`
/// with to rotate branch keys (README, Key hierarchy).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    pub rotate_branch_keys: RotateBranchKeys,
}

/// The organizations whose branch keys to rotate, each once, in this order
/// ([`BranchKeyring::rotate`], as `latchkey keys rotate` does).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBranchKeys {
    pub orgs: Vec<OrgId>,
}

/// The answer to a [`RotateRequest`]: `{"rotated": {"acme": 2, ...}}`, each organization's new
/// active branch key version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotatedBranchKeys {
    pub rotated: BTreeMap<String, u32>,
}

/// What `token-refresh` answers: the batch's item failures (what the event source mapping
/// reads), the new branch key versions, or the tick's summary (the sweep's, or the dispatch's).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum TokenRefreshResponse {
    /// `{"batchItemFailures": [{"itemIdentifier": messageId}...]}`.
    Queue(SqsBatchResponse),
    Rotated(RotatedBranchKeys),
    Tick(RefreshTick),
}

/// What `token-refresh`'s handler works with besides the service: the fan-out's queue (`None`:
/// always sweep inline), the visibility of the messages it hands back, and the key hierarchy it
/// rotates on request.
#[derive(Clone, Copy)]
pub struct RefreshPorts<'a> {
    pub queue: Option<&'a dyn RefreshQueue>,
    pub visibility: &'a dyn MessageVisibility,
    pub keys: &'a BranchKeyring,
}

/// One invocation of `token-refresh`, whichever its source: a queue batch
/// ([`handle_refresh_messages`], which never fails), a rotation ([`rotate_branch_keys`]), or a
/// tick of the schedule ([`Service::refresh_tick`] with the ports' queue, until `deadline`).
///
/// # Errors
/// The tick's: the index could not be read, or the queue could not take the entries; the
/// rotation's.
pub async fn handle_token_refresh(
    service: &Service,
    ports: RefreshPorts<'_>,
    event: TokenRefreshEvent,
    deadline: Instant,
) -> Result<TokenRefreshResponse, Diagnostic> {
    match event {
        TokenRefreshEvent::Queue(batch) => {
            Ok(TokenRefreshResponse::Queue(handle_refresh_messages(service, ports.visibility, batch, deadline).await))
        }
        TokenRefreshEvent::Rotate(request) => {
            rotate_branch_keys(ports.keys, &request.rotate_branch_keys).await.map(TokenRefreshResponse::Rotated)
        }
        TokenRefreshEvent::Schedule(_) => service
            .refresh_tick(ports.queue, &FanoutPolicy::default(), deadline)
            .await
            .map(TokenRefreshResponse::Tick)
            .map_err(Diagnostic::from),
    }
}

/// Rotates each organization's branch key in turn ([`BranchKeyring::rotate`]) and answers the
/// new versions. Logs each organization and version, nothing else.
///
/// # Errors
/// A [`Diagnostic`] `BranchKeyRotationFailed` naming the organization whose rotation failed
/// (those before it stay rotated; invoking again rotates them once more, which is harmless).
pub async fn rotate_branch_keys(
    keys: &BranchKeyring,
    request: &RotateBranchKeys,
) -> Result<RotatedBranchKeys, Diagnostic> {
    let mut rotated = BTreeMap::new();
    for org in &request.orgs {
        let version = keys.rotate(org).await.map_err(|error| {
            tracing::error!(org = org.as_str(), error = %error, "branch key rotation failed");
            Diagnostic {
                error_type: "BranchKeyRotationFailed".into(),
                error_message: format!("rotating the branch key of {org} failed: {error}"),
            }
        })?;
        tracing::info!(org = org.as_str(), version, "branch key rotated");
        rotated.insert(org.to_string(), version);
    }
    Ok(RotatedBranchKeys { rotated })
}

/// The worker: each message's entry refreshed if still due ([`Service::refresh_due_entries`],
/// none started after `deadline`). The answer lists the `messageId`s SQS must hand back: those
/// whose store or key service did not answer, and those not started before the deadline; each
/// is first made visible again after a random delay in [`RETRY_VISIBILITY`] (`visibility`), so
/// it neither waits out the queue's visibility timeout nor holds the next ticks back meanwhile.
/// If that call fails the message is still handed back (at the queue's timeout). A body that is
/// not a [`RefreshMessage`] is logged (its message id only) and dropped: the due index, not the
/// queue, says what is due. Never fails as a whole.
pub async fn handle_refresh_messages(
    service: &Service,
    visibility: &dyn MessageVisibility,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    let mut read: Vec<(usize, DueEntry)> = Vec::with_capacity(event.records.len());
    for (i, record) in event.records.iter().enumerate() {
        match record.body.as_deref().map(serde_json::from_str::<RefreshMessage>) {
            Some(Ok(message)) => read.push((i, message.into())),
            _ => tracing::error!(message_id = record.message_id.as_deref(), "not a refresh message: dropped"),
        }
    }
    let entries: Vec<DueEntry> = read.iter().map(|(_, e)| e.clone()).collect();
    let outcomes = service.refresh_due_entries(&entries, deadline).await;
    let back: Vec<&SqsMessage> =
        read.iter().zip(outcomes).filter(|(_, o)| o.retry()).map(|((i, _), _)| &event.records[*i]).collect();
    let delays = futures_util::stream::iter(&back)
        .map(|record| async move {
            let (Some(arn), Some(handle)) = (&record.event_source_arn, &record.receipt_handle) else { return };
            if let Err(error) = visibility.delay(arn, handle, retry_delay()).await {
                tracing::warn!(message_id = record.message_id.as_deref(),
                    error = %aws_sdk_sqs::error::DisplayErrorContext(&error),
                    "could not shorten the message's redelivery: it comes back at the queue's visibility timeout");
            }
        })
        .buffer_unordered(SEND_CONCURRENCY);
    delays.collect::<Vec<()>>().await;
    let mut response = SqsBatchResponse::default();
    for record in back {
        response.add_failure(record.message_id.clone().unwrap_or_default());
    }
    response
}

/// A random delay in [`RETRY_VISIBILITY`].
fn retry_delay() -> Duration {
    rand::random_range(RETRY_VISIBILITY)
}

/// The `token-refresh` function: the EventBridge schedule ticks (dispatching to
/// `LATCHKEY_REFRESH_QUEUE_URL` when it is set, through SQS built from the standard AWS
/// configuration), the event source mapping of that queue hands it batches (messages handed back
/// with their visibility shortened through the same SQS client), and an operator may ask it to
/// rotate branch keys; the first two start no work in the last [`super::SWEEP_MARGIN`] of the
/// invocation.
pub async fn serve_refresh(app: Components, config: &Settings) -> Result<(), super::Error> {
    let service: Arc<Service> = app.service;
    let keys: Arc<BranchKeyring> = app.keys;
    let sqs = aws_sdk_sqs::Client::new(&crate::adapters::aws::sdk_config().await);
    let queue: Option<Arc<dyn RefreshQueue>> = match &config.refresh_queue_url {
        Some(url) => Some(Arc::new(SqsRefreshQueue::new(sqs.clone(), url))),
        None => None,
    };
    let visibility: Arc<dyn MessageVisibility> = Arc::new(SqsVisibility::new(sqs));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<TokenRefreshEvent>| {
        let (service, keys, queue, visibility) = (service.clone(), keys.clone(), queue.clone(), visibility.clone());
        async move {
            let ports = RefreshPorts { queue: queue.as_deref(), visibility: visibility.as_ref(), keys: &keys };
            refresh_invocation(&service, ports, event).await
        }
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
    ports: RefreshPorts<'_>,
    event: LambdaEvent<TokenRefreshEvent>,
) -> Result<TokenRefreshResponse, Diagnostic> {
    let span = super::invocation_span(&event.context);
    let deadline = super::sweep_deadline(&event.context);
    handle_token_refresh(service, ports, event.payload, deadline).instrument(span).await
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
        let TokenRefreshEvent::Rotate(rotate) = read("rotate-branch-keys.json") else { panic!("a rotation") };
        assert_eq!(rotate.rotate_branch_keys.orgs.iter().map(OrgId::as_str).collect::<Vec<_>>(), ["acme"]);
        assert!(
            serde_json::from_str::<TokenRefreshEvent>(r#"{"rotate_branch_keys": {"orgs": ["Not An Org"]}}"#).is_err()
        );
        assert!(serde_json::from_str::<TokenRefreshEvent>(r#"{"detail": {}}"#).is_err());
    }
}

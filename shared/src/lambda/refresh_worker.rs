//! `token-refresh` as one function with two inputs: its EventBridge schedule (one tick: the inline
//! sweep, or above [`FanoutPolicy::inline_max`] due connections the dispatch of every due entry to
//! the refresh queue, one message per organization and up to 100 entries), and batches of that
//! queue (the workers: each entry of each message refreshed as the sweep would, at most the
//! refresh policy's concurrency at once). Why duplicates and redeliveries are safe, and how they
//! are bounded: `service::refresh::fanout`. A third input, asked for by an
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
use crate::service::{
    FanoutPolicy, MAX_SENDS, QueueError, RefreshMessage, RefreshOutcome, RefreshQueue, RefreshTick, Service,
};

/// Messages per `SendMessageBatch` (SQS's limit; ten full messages are under 70 KB of its
/// 256 KiB).
const SQS_BATCH: usize = 10;
/// `SendMessageBatch` requests one [`SqsRefreshQueue::enqueue`] has in flight at once.
const SEND_CONCURRENCY: usize = 8;
/// The longest `DelaySeconds` SQS takes: 15 minutes.
const MAX_DELAY_SECONDS: u64 = 900;

/// How soon the entries a worker retries are seen again: a random delay in this range (so the
/// retries of one failed batch do not all return at once). They go out as a new message with
/// that `DelaySeconds`; when that send fails, the message they came in is handed back whole,
/// made visible again after such a delay (`ChangeMessageVisibility`) before the batch's answer.
/// Left at the queue's visibility timeout (1,800 s), it would count in the backlog that holds
/// every tick back, so a short store or KMS outage would stall refreshes for half an hour.
pub const RETRY_VISIBILITY: std::ops::RangeInclusive<Duration> = Duration::from_secs(30)..=Duration::from_secs(60);

/// [`RefreshQueue`] over SQS: one SQS message per [`RefreshMessage`] (its JSON as the body), sent
/// ten to a `SendMessageBatch` request (IAM action `sqs:SendMessage`) with the delay as each
/// entry's `DelaySeconds` (whole seconds, rounded up, at most 900), messages the queue refused
/// sent once more; the backlog from `GetQueueAttributes`.
///
/// Each message's `MessageGroupId` is its organization, so the standard queue is an SQS *fair
/// queue* (Amazon SQS Developer Guide, "Amazon SQS fair queues"): an organization with many
/// messages in flight (a token endpoint that stalls every call of thousands of due connections)
/// is detected by its share of them, and SQS hands the workers the other organizations' messages
/// first (docs/scale.md: where this helps and where it does not). Nothing else changes for a standard queue:
/// no ordering, no per-group exclusivity, the same throughput. An [`OrgId`]'s alphabet (1-128
/// characters of letters, digits and `-_.:@`) is within `MessageGroupId`'s (128 characters,
/// letters, digits and punctuation).
pub struct SqsRefreshQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsRefreshQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self { client, url: url.into() }
    }

    /// One `SendMessageBatch` of at most ten messages, then once more for what it refused.
    async fn send(&self, messages: &[RefreshMessage], delay_seconds: i32) -> Result<(), QueueError> {
        let mut pending: Vec<(String, String, &str)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), serde_json::to_string(m).unwrap_or_default(), m.org.as_str()))
            .collect();
        for _attempt in 0..2 {
            let batch: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .map(|(id, body, org)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(body)
                        .delay_seconds(delay_seconds)
                        .message_group_id(*org)
                        .build()
                })
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
            pending.retain(|(id, _, _)| refused.contains(&id.as_str()));
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(QueueError::Refused(pending.len()))
    }
}

#[async_trait]
impl RefreshQueue for SqsRefreshQueue {
    async fn enqueue(&self, messages: &[RefreshMessage], delay: Duration) -> Result<(), QueueError> {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let delay_seconds = i32::try_from(seconds.min(MAX_DELAY_SECONDS)).unwrap_or_default();
        let sends: Vec<_> = messages.chunks(SQS_BATCH).map(|chunk| self.send(chunk, delay_seconds)).collect();
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
/// always sweep inline; the workers send their retries to it), the visibility of the messages it
/// hands back, and the key hierarchy it rotates on request.
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
            let answer = handle_refresh_messages(service, ports.queue, ports.visibility, batch, deadline).await;
            Ok(TokenRefreshResponse::Queue(answer))
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

/// The worker: each entry of each message ([`RefreshMessage::parse`]: grouped, or the
/// single-entry body of the releases before) refreshed if still due
/// ([`Service::refresh_due_entries`] over the whole batch, none started after `deadline`). A
/// message whose entries all settled is done. One with entries to retry
/// ([`RefreshOutcome::retry`]: the store or key service did not answer, or the
/// deadline came first) has only those sent again to `queue`, as a new message delayed by a
/// random [`RETRY_VISIBILITY`], and is done too, so its refreshed entries do not come back with
/// them. When there is no queue or that send fails, the message is handed back whole: its
/// `messageId` in the answer (a batch item failure), first made visible again after such a delay
/// (`visibility`; if that call fails too, at the queue's visibility timeout); its entries
/// refreshed meanwhile are no longer due and are skipped when it returns. A message already sent
/// [`MAX_SENDS`] times is not sent again: its entries stay due in the index for the next tick
/// (logged). A body that is neither format is logged (its message id only) and dropped: the due
/// index, not the queue, says what is due. Never fails as a whole.
pub async fn handle_refresh_messages(
    service: &Service,
    queue: Option<&dyn RefreshQueue>,
    visibility: &dyn MessageVisibility,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    let mut read: Vec<(&SqsMessage, RefreshMessage)> = Vec::with_capacity(event.records.len());
    for record in &event.records {
        match record.body.as_deref().map(RefreshMessage::parse) {
            Some(Ok(message)) => read.push((record, message)),
            _ => tracing::error!(message_id = record.message_id.as_deref(), "not a refresh message: dropped"),
        }
    }
    let entries: Vec<DueEntry> = read.iter().flat_map(|(_, m)| m.due_entries()).collect();
    let mut outcomes = service.refresh_due_entries(&entries, deadline).await.into_iter();
    // Each message's entries to retry, as a message of their own.
    let mut retries: Vec<(&SqsMessage, RefreshMessage)> = Vec::new();
    for (record, message) in read {
        let Some(retry) = to_retry(message, &mut outcomes) else { continue };
        if retry.attempt >= MAX_SENDS {
            tracing::error!(
                message_id = record.message_id.as_deref(),
                org = retry.org.as_str(),
                entries = retry.entries.len(),
                "refresh entries retried too often: left to the next tick"
            );
            continue;
        }
        retries.push((record, retry));
    }
    let back: Vec<Option<&SqsMessage>> = futures_util::stream::iter(retries)
        .map(|(record, retry)| async move {
            let Some(queue) = queue else { return Some(record) };
            match queue.enqueue(std::slice::from_ref(&retry), retry_delay()).await {
                Ok(()) => None,
                Err(error) => {
                    tracing::warn!(message_id = record.message_id.as_deref(), error = %error,
                        "could not send the entries to retry: the message is handed back");
                    Some(record)
                }
            }
        })
        .buffer_unordered(SEND_CONCURRENCY)
        .collect()
        .await;
    let back: Vec<&SqsMessage> = back.into_iter().flatten().collect();
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

/// The entries of `message` whose outcomes (the next of `outcomes`, one per entry, in order)
/// ask for a retry, as the message that sends them again (its `attempt` one more); `None` when
/// every entry settled.
fn to_retry(message: RefreshMessage, outcomes: &mut impl Iterator<Item = RefreshOutcome>) -> Option<RefreshMessage> {
    let retry: Vec<bool> = outcomes.by_ref().take(message.entries.len()).map(RefreshOutcome::retry).collect();
    let mut retry = retry.into_iter();
    let RefreshMessage { org, mut entries, attempt } = message;
    entries.retain(|_| retry.next().unwrap_or(true));
    (!entries.is_empty()).then(|| RefreshMessage { org, entries, attempt: attempt + 1 })
}

/// A random delay in [`RETRY_VISIBILITY`].
fn retry_delay() -> Duration {
    rand::random_range(RETRY_VISIBILITY)
}

/// The `token-refresh` function: the EventBridge schedule ticks (dispatching to
/// `LATCHKEY_REFRESH_QUEUE_URL` when it is set, through SQS built from the standard AWS
/// configuration the backend was built from), the event source mapping of that queue hands it batches (messages handed back
/// with their visibility shortened through the same SQS client), and an operator may ask it to
/// rotate branch keys; the first two start no work in the last [`super::SWEEP_MARGIN`] of the
/// invocation.
pub async fn serve_refresh(app: Components, config: &Settings) -> Result<(), super::Error> {
    let sqs = aws_sdk_sqs::Client::new(&app.sdk_config().await);
    let service: Arc<Service> = app.service;
    let keys: Arc<BranchKeyring> = app.keys;
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

    /// Of a message's entries, only those to retry go out again, in a message of their own whose
    /// attempt counts the sends; the outcomes of the next message are left to it.
    #[test]
    fn only_the_entries_to_retry_are_sent_again() {
        use crate::domain::ConnectionId;
        use crate::service::MessageEntry;

        let entry = |n: i64| MessageEntry { connection_id: ConnectionId::generate(), due: n };
        let message =
            RefreshMessage { org: OrgId::parse("acme").unwrap(), entries: (0..4).map(entry).collect(), attempt: 1 };
        let mut outcomes = [
            RefreshOutcome::Refreshed,
            RefreshOutcome::Unavailable,
            RefreshOutcome::Failed,
            RefreshOutcome::Deferred,
            RefreshOutcome::Skipped,
        ]
        .into_iter();
        let retry = to_retry(message.clone(), &mut outcomes).unwrap();
        assert_eq!(retry.org, message.org);
        assert_eq!(retry.entries, [message.entries[1].clone(), message.entries[3].clone()]);
        assert_eq!(retry.attempt, 2);
        assert_eq!(outcomes.next(), Some(RefreshOutcome::Skipped), "the next message's outcome is left");

        let settled =
            [RefreshOutcome::Refreshed, RefreshOutcome::Failed, RefreshOutcome::Skipped, RefreshOutcome::Polled];
        assert_eq!(to_retry(message, &mut settled.into_iter()), None);
    }

    #[test]
    fn the_samples_are_told_apart() {
        let read = |name: &str| {
            let path = format!("{}/../events/token-refresh/{name}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str::<TokenRefreshEvent>(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        let TokenRefreshEvent::Queue(batch) = read("queue-batch.json") else { panic!("a batch") };
        let messages: Vec<RefreshMessage> =
            batch.records.iter().map(|r| RefreshMessage::parse(r.body.as_deref().unwrap()).unwrap()).collect();
        let shape: Vec<(&str, usize)> = messages.iter().map(|m| (m.org.as_str(), m.entries.len())).collect();
        assert_eq!(shape, [("acme", 2), ("acme", 1)], "a grouped message, and one of the single-entry format");
        assert!(matches!(read("scheduled.json"), TokenRefreshEvent::Schedule(_)));
        let TokenRefreshEvent::Rotate(rotate) = read("rotate-branch-keys.json") else { panic!("a rotation") };
        assert_eq!(rotate.rotate_branch_keys.orgs.iter().map(OrgId::as_str).collect::<Vec<_>>(), ["acme"]);
        assert!(
            serde_json::from_str::<TokenRefreshEvent>(r#"{"rotate_branch_keys": {"orgs": ["Not An Org"]}}"#).is_err()
        );
        assert!(serde_json::from_str::<TokenRefreshEvent>(r#"{"detail": {}}"#).is_err());
    }
}

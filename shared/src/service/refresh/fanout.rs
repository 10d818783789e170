//! The sweep's fan-out: above what one invocation refreshes inline, the scheduled invocation
//! hands the due entries to a queue ([`RefreshQueue`]: SQS on AWS) and workers refresh them, each
//! entry exactly as the sweep would ([`Service::refresh_due_entry`]).
//!
//! # One message per organization
//! A tick groups its due entries by organization across every shard of the index: a message
//! ([`RefreshMessage`]) carries one organization's entries, at most
//! [`FanoutPolicy::message_entries`] (100) of them. So a worker that takes a message opens that
//! organization's branch key once (one KMS `Decrypt` per organization per container per 5
//! minutes, `crypto::BranchKeyring`), and the KMS calls of the whole fleet are bounded by the
//! messages, which follow organizations, not by containers times organizations (docs/scale.md,
//! "The bound at 10 million connections"). Why 100: the event source hands a worker up to 100
//! messages, so at most 10,000 entries an invocation (under a minute at 64 refreshes at once);
//! a body stays under 7 KB (an id is 30 characters, an organization at most 128), ten of them
//! well inside `SendMessageBatch`'s 256 KiB, a batch of 100 inside Lambda's 6 MB payload.
//!
//! # The index stays the truth
//! A message is a hint that its entries were due, nothing more. The worker re-reads each
//! connection and refreshes it only if it is still due (the index may lag the record, and the
//! entry may have been refreshed since it was enqueued); a refresh takes the connection's lease,
//! so two workers holding the same entry never both call the provider. What a worker could not
//! do stays due in the index, so a lost message, one in the dead-letter queue, or a tick that
//! ran out of time costs lag, never a refresh: the next tick enqueues the entry again.
//!
//! # Duplicates are bounded
//! An entry stays due until it is refreshed, so a tick could enqueue what an earlier tick
//! enqueued and no worker has taken yet. A tick therefore enqueues nothing while the queue holds
//! more than [`FanoutPolicy::low_water`] messages (visible, in flight or delayed, as the queue
//! counts them): at most that many messages, so at most `low_water x message_entries` entries,
//! can be in the queue twice. The low water is 100 messages: at most 10,000 entries, one
//! worker's batch, about 1% of a 5-minute tick at 10 million connections; a backlog the workers
//! cannot drain in one period holds the next ticks back instead of piling up copies. SQS itself
//! delivers at least once. A duplicate entry costs one read of the record; the lease and the
//! re-check keep it from a second provider call.
//!
//! # Only transient failures come back, and only those entries
//! A worker retries an entry ([`RefreshOutcome::retry`]) only when the store or the key service
//! did not answer, or its invocation's deadline came first: worth a retry soon. A provider's
//! failure is recorded on the connection (its backoff moves the due time) and the entry is done,
//! so one failing provider never fills the queue and holds the other organizations' refreshes
//! back. The entries to retry go out again as a new message of their own, delayed, and the
//! message they came in is acknowledged, so the refreshed entries beside them are not handed
//! back with them (`lambda::handle_refresh_messages`). A message is sent at most
//! [`MAX_SENDS`] times; then its entries are left to the next tick.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::sweep::Swept;
use super::*;
use crate::ports::BackendError;

/// Why messages could not be handed to the queue, or its backlog read. Never holds an entry's
/// content beyond ids.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue refused the request or did not answer (the SDK's error as its source).
    #[error("the refresh queue failed")]
    Unavailable(#[source] BackendError),
    /// Some messages of a batch were refused after a retry: how many.
    #[error("the refresh queue refused {0} messages")]
    Refused(usize),
}

/// Where a sweep in fan-out mode hands due entries, grouped by organization
/// ([`RefreshMessage`]), and where a worker sends again what it must retry: SQS
/// `SendMessageBatch` on AWS (`lambda::SqsRefreshQueue`), an in-memory queue in the simulation
/// and tests.
#[async_trait]
pub trait RefreshQueue: Send + Sync {
    /// Hands `messages` to the workers, any number (the adapter batches them as its queue
    /// allows), each visible `delay` from now (zero: at once; SQS allows up to 15 minutes). On an
    /// error some may have been sent: duplicates are safe (module docs).
    ///
    /// # Errors
    /// [`QueueError`]: the queue refused messages or could not be reached.
    async fn enqueue(&self, messages: &[RefreshMessage], delay: Duration) -> std::result::Result<(), QueueError>;

    /// Messages the queue holds that no worker has finished: visible, in flight and delayed
    /// (approximate on SQS: `ApproximateNumberOf{Messages,MessagesNotVisible,MessagesDelayed}`).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    async fn backlog(&self) -> std::result::Result<u64, QueueError>;
}

/// How many times a message's entries are sent (a tick's send and the workers' re-sends of what
/// they must retry) before a worker leaves them to the next tick: as many as the queue's
/// receives before its dead-letter queue (5).
pub const MAX_SENDS: u32 = 5;

/// One message of the refresh queue: one organization's due entries, as the body carries them,
/// `{"org": "acme", "entries": [{"connection_id": "con_...", "due": 1795341600}, ...],
/// "attempt": 1}` (`due`: the index's due time, Unix seconds; `attempt`: the sends before this
/// one, absent when 0). Ids only, never a secret. [`RefreshMessage::parse`] also reads the
/// single-entry body of the releases before, `{"org", "connection_id", "due"}`, which may still
/// be in the queue during a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshMessage {
    pub org: OrgId,
    pub entries: Vec<MessageEntry>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

/// One entry of a [`RefreshMessage`]: a connection of its organization and the index's due
/// time (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageEntry {
    pub connection_id: ConnectionId,
    pub due: i64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The single-entry body of the releases before organization-grouped messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SingleEntry {
    org: OrgId,
    connection_id: ConnectionId,
    due: i64,
}

/// A body in either format.
#[derive(Deserialize)]
#[serde(untagged)]
enum Body {
    Grouped(RefreshMessage),
    Single(SingleEntry),
}

impl RefreshMessage {
    /// Reads a message body: the grouped format, or the single-entry one of the releases before
    /// (a message of one entry).
    ///
    /// # Errors
    /// The body is neither (the error names no content).
    pub fn parse(body: &str) -> std::result::Result<Self, serde_json::Error> {
        Ok(match serde_json::from_str::<Body>(body)? {
            Body::Grouped(message) => message,
            Body::Single(e) => Self {
                org: e.org,
                entries: vec![MessageEntry { connection_id: e.connection_id, due: e.due }],
                attempt: 0,
            },
        })
    }

    /// `entries` grouped by organization (in organization order, each organization's in the
    /// order given), at most `max` entries a message (at least 1).
    pub fn group(entries: impl IntoIterator<Item = DueEntry>, max: usize) -> Vec<Self> {
        let mut open = Grouping::new(max);
        let mut messages: Vec<Self> = entries.into_iter().filter_map(|e| open.add(e)).collect();
        messages.extend(open.rest());
        messages
    }

    /// Its entries as the index's.
    pub fn due_entries(&self) -> impl Iterator<Item = DueEntry> + '_ {
        self.entries.iter().map(|e| DueEntry { org: self.org.clone(), id: e.connection_id.clone(), due: e.due })
    }
}

/// Due entries being grouped into messages: each organization's open message, sent when full.
/// Holds at most `max - 1` entries per organization, so never more than what is due.
struct Grouping {
    open: BTreeMap<OrgId, Vec<MessageEntry>>,
    max: usize,
}

impl Grouping {
    fn new(max: usize) -> Self {
        Self { open: BTreeMap::new(), max: max.max(1) }
    }

    /// Adds `e` to its organization's message; that message if it is now full.
    fn add(&mut self, e: DueEntry) -> Option<RefreshMessage> {
        let entries = self.open.entry(e.org.clone()).or_default();
        entries.push(MessageEntry { connection_id: e.id, due: e.due });
        if entries.len() < self.max {
            return None;
        }
        let entries = self.open.remove(&e.org).unwrap_or_default();
        Some(RefreshMessage { org: e.org, entries, attempt: 0 })
    }

    /// The messages not yet full, in organization order.
    fn rest(self) -> impl Iterator<Item = RefreshMessage> {
        self.open.into_iter().map(|(org, entries)| RefreshMessage { org, entries, attempt: 0 })
    }
}

/// How the scheduled invocation chooses between the inline sweep and the fan-out, and how fast
/// it enqueues.
#[derive(Debug, Clone)]
pub struct FanoutPolicy {
    /// Up to this many due entries, the scheduled invocation sweeps inline
    /// ([`Service::refresh_sweep`]); above, it dispatches them. 1,000 refreshes at the sweep's
    /// concurrency (`RefreshPolicy::concurrency`, 64) take about 5 s at a 300 ms provider (and
    /// ~30 ms of AWS calls each), well inside an invocation.
    pub inline_max: usize,
    /// A tick enqueues nothing while the queue holds more messages than this (module docs: 100,
    /// so at most 10,000 entries queued twice).
    pub low_water: u64,
    /// Shards read at once by a dispatch (16: every shard of the DynamoDB index).
    pub concurrency: usize,
    /// Entries one message carries at most (module docs: 100).
    pub message_entries: usize,
}

impl Default for FanoutPolicy {
    fn default() -> Self {
        Self { inline_max: 1_000, low_water: 100, concurrency: 16, message_entries: 100 }
    }
}

/// What a dispatch did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct DispatchSummary {
    /// Due entries read from the index.
    pub due: usize,
    /// Of those, handed to the queue.
    pub enqueued: usize,
    /// The messages they went in (one organization's entries each).
    pub messages: usize,
    /// The queue's backlog (messages) when the tick began.
    pub backlog: u64,
    /// Nothing enqueued: the backlog was above [`FanoutPolicy::low_water`].
    pub held_back: bool,
    /// Revocation jobs whose retry time had come, attempted by this tick (as the sweep does).
    pub revocations: usize,
}

/// What one scheduled invocation did: swept inline, or dispatched. Serialized as the summary
/// itself (a dispatch's has `enqueued`, a sweep's `refreshed`).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum RefreshTick {
    Inline(SweepSummary),
    Dispatched(DispatchSummary),
}

/// What a worker did with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshOutcome {
    Refreshed,
    /// The refresh failed and was recorded (backoff, or the connection turned red): done.
    Failed,
    /// The store or the key service did not answer: retry the entry soon.
    Unavailable,
    /// Nothing to do: refreshed, leased, deleted or no longer due meanwhile.
    Skipped,
    /// Its verification ran; no refresh was due.
    Verified,
    /// Its device authorization was polled; no refresh was due.
    Polled,
    /// Not started: the batch's deadline had come (before the entry had its place under the
    /// container's adaptive limit on refreshes at once, or before it took its lease), or that
    /// limit (`refresh::limit`, backing off while the store throttles) had no place for it
    /// within 5 s. Retry the entry soon.
    Deferred,
}

impl RefreshOutcome {
    /// Whether the entry should be tried again soon (module docs).
    pub fn retry(self) -> bool {
        matches!(self, Self::Unavailable | Self::Deferred)
    }
}

impl From<Swept> for RefreshOutcome {
    fn from(s: Swept) -> Self {
        match s {
            Swept::Refreshed => Self::Refreshed,
            Swept::Failed => Self::Failed,
            Swept::Unavailable => Self::Unavailable,
            Swept::Skipped => Self::Skipped,
            Swept::Verified => Self::Verified,
            Swept::Polled => Self::Polled,
            Swept::Deferred => Self::Deferred,
        }
    }
}

impl SweepSummary {
    /// Counts one entry's outcome, as the sweep's summary line reports it (the deployed stack's
    /// refresh-failure alarm reads `failed`): an unavailable dependency is a failure, an entry
    /// deferred past the deadline a skip.
    pub(super) fn tally(&mut self, outcome: RefreshOutcome) {
        match outcome {
            RefreshOutcome::Refreshed => self.refreshed += 1,
            RefreshOutcome::Failed | RefreshOutcome::Unavailable => self.failed += 1,
            RefreshOutcome::Skipped | RefreshOutcome::Deferred => self.skipped += 1,
            RefreshOutcome::Verified => self.verified += 1,
            RefreshOutcome::Polled => self.device_polls += 1,
        }
    }
}

/// What one shard of a dispatch did.
#[derive(Default)]
struct Sent {
    /// Entries read from the index.
    due: usize,
    /// Entries and messages handed to the queue.
    entries: usize,
    messages: usize,
}

impl Sent {
    fn add(&mut self, messages: &[RefreshMessage]) {
        self.messages += messages.len();
        self.entries += messages.iter().map(|m| m.entries.len()).sum::<usize>();
    }
}

impl Service {
    /// One scheduled tick: without a queue, the inline sweep as always; with one, the inline
    /// sweep while at most [`FanoutPolicy::inline_max`] entries are due, else
    /// [`Service::dispatch_due`].
    ///
    /// # Errors
    /// The sweep's or the dispatch's.
    pub async fn refresh_tick(
        &self,
        queue: Option<&dyn RefreshQueue>,
        fanout: &FanoutPolicy,
        deadline: Instant,
    ) -> Result<RefreshTick> {
        let Some(queue) = queue else {
            return self.refresh_sweep(deadline).await.map(RefreshTick::Inline);
        };
        if self.due_count_up_to(fanout.inline_max + 1).await? <= fanout.inline_max {
            return self.refresh_sweep(deadline).await.map(RefreshTick::Inline);
        }
        self.dispatch_due(queue, fanout, deadline).await.map(RefreshTick::Dispatched)
    }

    /// Due entries now, counted up to `limit` (index reads of keys only, shard by shard).
    async fn due_count_up_to(&self, limit: usize) -> Result<usize> {
        let now = self.clock.now();
        let mut count = 0;
        for shard in 0..self.store.due_shards() {
            if count >= limit {
                break;
            }
            count += self.store.due_connections(shard, now, None, limit - count).await?.len();
        }
        Ok(count)
    }

    /// Reads the due index as [`Service::refresh_sweep`] does (every shard, oldest first, a page
    /// at a time, [`FanoutPolicy::concurrency`] shards at once) and enqueues its entries grouped
    /// by organization instead of refreshing them (module docs): an organization's message is
    /// sent as soon as it holds [`FanoutPolicy::message_entries`], the others once every shard
    /// is read. Enqueues nothing while the queue's backlog is above [`FanoutPolicy::low_water`]
    /// (module docs: duplicates are bounded). Starts no read after `deadline` (what is left
    /// stays due for the next tick; what was read is still sent). The due revocation jobs run
    /// beside it under the same deadline, as in the sweep ([`Service::refresh_sweep`]).
    ///
    /// # Errors
    /// The store's (reading the index) or the queue's (as [`ServiceError::Unexpected`]): the
    /// dispatch's index part stops there, and what it had enqueued stays enqueued; or else the
    /// store's when the due revocation jobs cannot be read (they run beside, whatever the
    /// index part met).
    pub async fn dispatch_due(
        &self,
        queue: &dyn RefreshQueue,
        fanout: &FanoutPolicy,
        deadline: Instant,
    ) -> Result<DispatchSummary> {
        let ((mut summary, failure), revocations) =
            self.beside_due_revocations(self.dispatch_index(queue, fanout, deadline), deadline).await;
        summary.revocations = revocations;
        tracing::info!(
            target: "latchkey::service::refresh",
            due = summary.due,
            enqueued = summary.enqueued,
            messages = summary.messages,
            backlog = summary.backlog,
            held_back = summary.held_back,
            revocations = summary.revocations,
            "refresh dispatch"
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// The index part of [`Service::dispatch_due`]: what it enqueued and the first error it met
    /// (reading the queue's backlog ends it at once).
    async fn dispatch_index(
        &self,
        queue: &dyn RefreshQueue,
        fanout: &FanoutPolicy,
        deadline: Instant,
    ) -> (DispatchSummary, Option<ServiceError>) {
        let mut summary = DispatchSummary::default();
        match queue.backlog().await {
            Ok(backlog) => summary.backlog = backlog,
            Err(e) => return (summary, Some(ServiceError::unexpected(e))),
        }
        let mut failure = None;
        if summary.backlog > fanout.low_water {
            summary.held_back = true;
        } else {
            let now = self.clock.now();
            let grouping = Mutex::new(Grouping::new(fanout.message_entries));
            let shards: Vec<(Sent, Option<ServiceError>)> = futures_util::stream::iter(0..self.store.due_shards())
                .map(|shard| self.dispatch_shard(queue, &grouping, shard, now, deadline))
                .buffer_unordered(fanout.concurrency.max(1))
                .collect()
                .await;
            let mut sent = Sent::default();
            for (shard, error) in shards {
                sent.due += shard.due;
                sent.entries += shard.entries;
                sent.messages += shard.messages;
                if let Some(e) = error {
                    failure.get_or_insert(e);
                }
            }
            // What was read is due whatever stopped a shard: the organizations' last messages.
            let rest: Vec<RefreshMessage> =
                grouping.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).rest().collect();
            match queue.enqueue(&rest, Duration::ZERO).await {
                Ok(()) => sent.add(&rest),
                Err(e) => {
                    tracing::warn!(error = %e, messages = rest.len(), "enqueueing due connections failed");
                    failure.get_or_insert(ServiceError::unexpected(e));
                }
            }
            (summary.due, summary.enqueued, summary.messages) = (sent.due, sent.entries, sent.messages);
        }
        (summary, failure)
    }

    /// One shard of a dispatch: its pages read into `grouping`, the messages they fill sent at
    /// once; what it did and the error that stopped it.
    async fn dispatch_shard(
        &self,
        queue: &dyn RefreshQueue,
        grouping: &Mutex<Grouping>,
        shard: u32,
        now: OffsetDateTime,
        deadline: Instant,
    ) -> (Sent, Option<ServiceError>) {
        let page = self.policy().page.max(1);
        let mut sent = Sent::default();
        let mut after: Option<DueEntry> = None;
        while Instant::now() < deadline {
            let entries = match self.store.due_connections(shard, now, after.as_ref(), page).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(shard, error = %e, "reading the refresh index failed");
                    return (sent, Some(e.into()));
                }
            };
            sent.due += entries.len();
            let more = entries.len() >= page;
            after = entries.last().cloned();
            let full: Vec<RefreshMessage> = {
                let mut open = grouping.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                entries.into_iter().filter_map(|e| open.add(e)).collect()
            };
            if !full.is_empty() {
                if let Err(e) = queue.enqueue(&full, Duration::ZERO).await {
                    tracing::warn!(shard, error = %e, "enqueueing due connections failed");
                    return (sent, Some(ServiceError::unexpected(e)));
                }
                sent.add(&full);
            }
            if !more {
                break;
            }
        }
        (sent, None)
    }

    /// The worker's unit: what the sweep does for one due entry. Re-reads the connection and
    /// refreshes it only if it is still due (its verification, refresh-token warning and device
    /// poll too, when those came due); the lease makes a redelivered or duplicate entry safe.
    /// [`RefreshOutcome::Deferred`] when it could not start, or take its lease, before
    /// `deadline` (its invocation's end less [`crate::lambda::SWEEP_MARGIN`]).
    pub async fn refresh_due_entry(&self, entry: &DueEntry, deadline: Instant) -> RefreshOutcome {
        self.sweep_one(&entry.org, &entry.id, deadline).await.into()
    }

    /// A worker's batch (the entries of its messages): [`Service::refresh_due_entry`] for each,
    /// at most the refresh policy's `concurrency` at once (a slow refresh holds only its own
    /// slot, not the ones after it), shared among organizations as the sweep shares its places
    /// (`shares::Shares`: one organization whose token endpoint holds every call leaves at least
    /// an eighth of them to the batch's other organizations, whose entries go first into
    /// places that come free), none started after `deadline` ([`RefreshOutcome::Deferred`]); the
    /// outcomes in the order of `entries`. Logs one `refresh sweep` summary line (with `worker:
    /// true`), which the deployed stack's refresh-failure alarm counts as it counts the inline
    /// sweep's.
    pub async fn refresh_due_entries(&self, entries: &[DueEntry], deadline: Instant) -> Vec<RefreshOutcome> {
        use futures_util::stream::FuturesUnordered;

        // Where each entry's outcome goes (a batch may hold one entry twice: a redelivery).
        let mut slots: BTreeMap<(OrgId, ConnectionId), std::collections::VecDeque<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            slots.entry((e.org.clone(), e.id.clone())).or_default().push_back(i);
        }
        let mut outcomes = vec![RefreshOutcome::Deferred; entries.len()];
        let concurrency = self.policy().concurrency.max(1);
        let mut batch = [super::sweep::ShardWalk::of(entries.to_vec())];
        // The batch is in memory already: any of it may wait aside.
        let mut shares = super::shares::Shares::new(concurrency, entries.len());
        let mut turn = 0;
        let mut running = FuturesUnordered::new();
        loop {
            shares.set_places(concurrency.min(self.refresh_limit.current()));
            while Instant::now() < deadline
                && let Some((entry, began)) = shares.next(&mut batch, &mut turn)
            {
                let i = slots.get_mut(&(entry.org.clone(), entry.id.clone())).and_then(|s| s.pop_front());
                running.push(async move {
                    let swept = self.sweep_one(&entry.org, &entry.id, deadline).await;
                    (i, swept, entry.org, began)
                });
            }
            let Some((i, swept, org, began)) = running.next().await else { break };
            shares.ended(&org, began, super::shares::Ended::from(&swept));
            if let Some(i) = i {
                outcomes[i] = swept.into();
            }
        }
        let mut summary = SweepSummary { due: entries.len(), ..SweepSummary::default() };
        outcomes.iter().for_each(|o| summary.tally(*o));
        tracing::info!(
            target: "latchkey::service::refresh",
            worker = true,
            due = summary.due,
            refreshed = summary.refreshed,
            failed = summary.failed,
            unavailable = outcomes.iter().filter(|o| **o == RefreshOutcome::Unavailable).count(),
            skipped = summary.skipped,
            verified = summary.verified,
            device_polls = summary.device_polls,
            // The container's refreshes at once now (`limit`): below the ceiling after throttling.
            limit = self.refresh_limit.current(),
            "refresh sweep"
        );
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(org: &str, n: u8, due: i64) -> DueEntry {
        let id = format!("con_{:0>26}", n);
        DueEntry { org: OrgId::parse(org).unwrap(), id: ConnectionId::parse(&id).unwrap(), due }
    }

    #[test]
    fn entries_are_grouped_by_organization_in_messages_of_at_most_max() {
        let entries = [entry("b", 1, 10), entry("a", 2, 11), entry("b", 3, 12), entry("b", 4, 13), entry("a", 5, 14)];
        let messages = RefreshMessage::group(entries.clone(), 2);
        let shape: Vec<(&str, Vec<i64>)> =
            messages.iter().map(|m| (m.org.as_str(), m.entries.iter().map(|e| e.due).collect())).collect();
        // "b" fills a message first (sent when full); then the open ones in organization order.
        assert_eq!(shape, [("b", vec![10, 12]), ("a", vec![11, 14]), ("b", vec![13])]);
        let back: Vec<DueEntry> = messages.iter().flat_map(RefreshMessage::due_entries).collect();
        assert_eq!(back.len(), entries.len());
        assert!(entries.iter().all(|e| back.contains(e)), "every entry once, as read");
        assert_eq!(RefreshMessage::group(entries, 0).len(), 5, "at least one entry a message");
    }

    #[test]
    fn a_message_body_is_grouped_and_the_single_entry_body_before_it_still_reads() {
        let message = RefreshMessage::group([entry("acme", 1, 1_795_341_600)], 100).remove(0);
        let body = serde_json::to_string(&message).unwrap();
        assert_eq!(
            body,
            r#"{"org":"acme","entries":[{"connection_id":"con_00000000000000000000000001","due":1795341600}]}"#
        );
        assert_eq!(RefreshMessage::parse(&body).unwrap(), message);
        let resent = RefreshMessage { attempt: 2, ..message.clone() };
        assert_eq!(RefreshMessage::parse(&serde_json::to_string(&resent).unwrap()).unwrap().attempt, 2);

        let old = r#"{"org":"acme","connection_id":"con_00000000000000000000000001","due":1795341600}"#;
        assert_eq!(RefreshMessage::parse(old).unwrap(), message, "a message of one entry");

        for junk in [
            r#"{"hello": 1}"#,
            r#"{"org":"acme","entries":[{"connection_id":"nope","due":1}]}"#,
            r#"{"org":"acme","connection_id":"con_00000000000000000000000001"}"#,
            r#"{"org":"acme","entries":[],"extra":1}"#,
        ] {
            assert!(RefreshMessage::parse(junk).is_err(), "{junk}");
        }
    }

    /// The largest body: 100 entries of an organization id of 128 characters stays under 7 KB,
    /// so ten fit a `SendMessageBatch` (256 KiB) many times over.
    #[test]
    fn a_full_message_stays_small() {
        let org = "o".repeat(128);
        let full: Vec<DueEntry> = (0..100).map(|n| entry(&org, n, 1_795_341_600)).collect();
        let messages = RefreshMessage::group(full, FanoutPolicy::default().message_entries);
        assert_eq!(messages.len(), 1);
        let resent = RefreshMessage { attempt: MAX_SENDS, ..messages[0].clone() };
        let len = serde_json::to_string(&resent).unwrap().len();
        assert!(len < 7 * 1024, "{len} bytes");
    }
}

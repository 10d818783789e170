//! The sweep's fan-out: above what one invocation refreshes inline, the scheduled invocation
//! hands the due entries to a queue ([`RefreshQueue`]: SQS on AWS) and workers refresh them, each
//! entry exactly as the sweep would ([`Service::refresh_due_entry`]).
//!
//! # The index stays the truth
//! A message is a hint that an entry was due, nothing more. The worker re-reads the connection
//! and refreshes it only if it is still due (the index may lag the record, and the entry may have
//! been refreshed since it was enqueued); a refresh takes the connection's lease, so two workers
//! holding the same entry never both call the provider. What a worker could not do stays due in
//! the index, so a lost message, one in the dead-letter queue, or a tick that ran out of time
//! costs lag, never a refresh: the next tick enqueues the entry again.
//!
//! # Duplicates are bounded
//! An entry stays due until it is refreshed, so a tick could enqueue what an earlier tick
//! enqueued and no worker has taken yet. A tick therefore enqueues nothing while the queue holds
//! more than [`FanoutPolicy::low_water`] messages (visible, in flight or delayed, as the queue
//! counts them): at most that many of its entries can be in the queue twice, and a backlog the
//! workers cannot drain in one period holds the next ticks back instead of piling up copies. SQS
//! itself delivers at least once. A duplicate costs one message and one read of the record; the
//! lease and the re-check keep it from a second provider call.
//!
//! # Only transient failures come back
//! A worker hands a message back ([`RefreshOutcome::Unavailable`]) only when the store or the
//! key service did not answer: worth a retry soon. A provider's failure is recorded on the
//! connection (its backoff moves the due time) and the message is done, so one failing
//! provider never fills the queue and holds the other organizations' refreshes back.

use std::time::Instant;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::sweep::Swept;
use super::*;
use crate::ports::BackendError;

/// Why entries could not be handed to the queue, or its backlog read. Never holds an entry's
/// content beyond ids.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue refused the request or did not answer (the SDK's error as its source).
    #[error("the refresh queue failed")]
    Unavailable(#[source] BackendError),
    /// Some entries of a batch were refused after a retry: how many.
    #[error("the refresh queue refused {0} entries")]
    Refused(usize),
}

/// Where a sweep in fan-out mode hands due entries: SQS `SendMessageBatch` on AWS
/// (`lambda::SqsRefreshQueue`), an in-memory queue in the simulation and tests. One message per
/// entry ([`RefreshMessage`]).
#[async_trait]
pub trait RefreshQueue: Send + Sync {
    /// Hands `entries` to the workers, any number (the adapter batches them as its queue
    /// allows). On an error some may have been sent: duplicates are safe (module docs).
    ///
    /// # Errors
    /// [`QueueError`]: the queue refused entries or could not be reached.
    async fn enqueue(&self, entries: &[DueEntry]) -> std::result::Result<(), QueueError>;

    /// Messages the queue holds that no worker has finished: visible, in flight and delayed
    /// (approximate on SQS: `ApproximateNumberOf{Messages,MessagesNotVisible,MessagesDelayed}`).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`].
    async fn backlog(&self) -> std::result::Result<u64, QueueError>;
}

/// One queued entry, as the message body carries it: `{"org", "connection_id", "due"}` (`due`:
/// the index's due time, Unix seconds). Ids only, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshMessage {
    pub org: OrgId,
    pub connection_id: ConnectionId,
    pub due: i64,
}

impl From<&DueEntry> for RefreshMessage {
    fn from(e: &DueEntry) -> Self {
        Self { org: e.org.clone(), connection_id: e.id.clone(), due: e.due }
    }
}

impl From<RefreshMessage> for DueEntry {
    fn from(m: RefreshMessage) -> Self {
        Self { org: m.org, id: m.connection_id, due: m.due }
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
    /// A tick enqueues nothing while the queue holds more messages than this (module docs).
    pub low_water: u64,
    /// Shards read and enqueued at once by a dispatch (16: every shard of the DynamoDB index).
    pub concurrency: usize,
}

impl Default for FanoutPolicy {
    fn default() -> Self {
        Self { inline_max: 1_000, low_water: 1_000, concurrency: 16 }
    }
}

/// What a dispatch did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct DispatchSummary {
    /// Due entries read from the index.
    pub due: usize,
    /// Of those, handed to the queue.
    pub enqueued: usize,
    /// The queue's backlog when the tick began.
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
    /// The store or the key service did not answer: hand the message back.
    Unavailable,
    /// Nothing to do: refreshed, leased, deleted or no longer due meanwhile.
    Skipped,
    /// Its verification ran; no refresh was due.
    Verified,
    /// Its device authorization was polled; no refresh was due.
    Polled,
    /// Not started: the batch's deadline had come. Hand the message back.
    Deferred,
}

impl RefreshOutcome {
    /// Whether the message should come back (SQS: a batch item failure).
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
    /// at a time, [`FanoutPolicy::concurrency`] shards at once) and enqueues each page instead of
    /// refreshing it, unless the queue's backlog is above [`FanoutPolicy::low_water`] (module
    /// docs: duplicates are bounded). Starts no read after `deadline`; what is left stays due
    /// for the next tick. Then runs the due revocation jobs, as the sweep does.
    ///
    /// # Errors
    /// The store's (reading the index) or the queue's (as [`ServiceError::Unexpected`]): the
    /// dispatch stops there; what it had enqueued stays enqueued.
    pub async fn dispatch_due(
        &self,
        queue: &dyn RefreshQueue,
        fanout: &FanoutPolicy,
        deadline: Instant,
    ) -> Result<DispatchSummary> {
        let mut summary = DispatchSummary {
            backlog: queue.backlog().await.map_err(ServiceError::unexpected)?,
            ..DispatchSummary::default()
        };
        let mut failure = None;
        if summary.backlog > fanout.low_water {
            summary.held_back = true;
        } else {
            let now = self.clock.now();
            let shards: Vec<(usize, usize, Option<ServiceError>)> =
                futures_util::stream::iter(0..self.store.due_shards())
                    .map(|shard| self.dispatch_shard(queue, shard, now, deadline))
                    .buffer_unordered(fanout.concurrency.max(1))
                    .collect()
                    .await;
            for (due, enqueued, error) in shards {
                summary.due += due;
                summary.enqueued += enqueued;
                if let Some(e) = error {
                    failure.get_or_insert(e);
                }
            }
        }
        if failure.is_none() && Instant::now() < deadline {
            match self.revoke_due(deadline).await {
                Ok(done) => summary.revocations = done.len(),
                Err(e) => failure = Some(e),
            }
        }
        tracing::info!(
            target: "latchkey::service::refresh",
            due = summary.due,
            enqueued = summary.enqueued,
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

    /// One shard of a dispatch: (entries read, entries enqueued, the error that stopped it).
    async fn dispatch_shard(
        &self,
        queue: &dyn RefreshQueue,
        shard: u32,
        now: OffsetDateTime,
        deadline: Instant,
    ) -> (usize, usize, Option<ServiceError>) {
        let page = self.policy().page.max(1);
        let (mut due, mut enqueued) = (0, 0);
        let mut after: Option<DueEntry> = None;
        while Instant::now() < deadline {
            let entries = match self.store.due_connections(shard, now, after.as_ref(), page).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(shard, error = %e, "reading the refresh index failed");
                    return (due, enqueued, Some(e.into()));
                }
            };
            due += entries.len();
            if let Err(e) = queue.enqueue(&entries).await {
                tracing::warn!(shard, error = %e, "enqueueing due connections failed");
                return (due, enqueued, Some(ServiceError::unexpected(e)));
            }
            enqueued += entries.len();
            if entries.len() < page {
                break;
            }
            after = entries.last().cloned();
        }
        (due, enqueued, None)
    }

    /// The worker's unit: what the sweep does for one due entry. Re-reads the connection and
    /// refreshes it only if it is still due (its verification, refresh-token warning and device
    /// poll too, when those came due); the lease makes a redelivered or duplicate entry safe.
    pub async fn refresh_due_entry(&self, entry: &DueEntry) -> RefreshOutcome {
        self.sweep_one(&entry.org, &entry.id).await.into()
    }

    /// A worker's batch: [`Service::refresh_due_entry`] for each, at most the refresh policy's
    /// `concurrency` at once, none started after `deadline` ([`RefreshOutcome::Deferred`]); the
    /// outcomes in the order of `entries`. Logs one `refresh sweep` summary line (with `worker:
    /// true`), which the deployed stack's refresh-failure alarm counts as it counts the inline
    /// sweep's.
    pub async fn refresh_due_entries(&self, entries: &[DueEntry], deadline: Instant) -> Vec<RefreshOutcome> {
        let outcomes: Vec<RefreshOutcome> = futures_util::stream::iter(entries)
            .map(|entry| async move {
                if Instant::now() >= deadline {
                    return RefreshOutcome::Deferred;
                }
                self.refresh_due_entry(entry).await
            })
            .buffered(self.policy().concurrency.max(1))
            .collect()
            .await;
        let count = |o: RefreshOutcome| outcomes.iter().filter(|x| **x == o).count();
        tracing::info!(
            target: "latchkey::service::refresh",
            worker = true,
            due = entries.len(),
            refreshed = count(RefreshOutcome::Refreshed),
            failed = count(RefreshOutcome::Failed) + count(RefreshOutcome::Unavailable),
            unavailable = count(RefreshOutcome::Unavailable),
            skipped = count(RefreshOutcome::Skipped) + count(RefreshOutcome::Deferred),
            verified = count(RefreshOutcome::Verified),
            device_polls = count(RefreshOutcome::Polled),
            "refresh sweep"
        );
        outcomes
    }
}

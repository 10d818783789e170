//! The scheduled sweep: every connection due now, refreshed with bounded concurrency.
//!
//! # The due index cannot be starved
//!
//! The sweep reads each shard of the due index oldest first, a page at a time (its shards at
//! once, as a pipeline: `Service::sweep_index`). One organization must not be
//! able to fill those pages with entries the sweep cannot refresh (reported-red connections,
//! for instance), which would keep every other organization's tokens from being refreshed. Three
//! rules together make sure of it:
//!
//! - **By construction**, only refreshable connections are in the index: every write that makes
//!   a connection unusable clears `refresh.due_at` (red: [`Connection::turned_red`];
//!   disconnected and deleted: `strip_credentials`; no refresh token: the refresh that finds
//!   none), and both stores derive the index from `due_at` on every write.
//! - **When a refresh fails before reaching the provider** (a store, key or configuration
//!   error) the connection is due again only after the base backoff: an entry does not come
//!   first in every sweep for the same reason.
//! - **Entries it must leave in place** (a refresh lease held by another worker) do not block
//!   it: the sweep pages on after the last entry it read (a cursor, never the same page again)
//!   while entries are due and its deadline allows, so a healthy connection behind any number of
//!   them is still reached in the same sweep.

use std::time::Instant;

use super::shares::{Ended, Shares};
use super::*;

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct SweepSummary {
    /// Entries of the due index the sweep read.
    pub due: usize,
    pub refreshed: usize,
    pub failed: usize,
    /// Left for later: refreshed, leased or taken out of the index by someone else meanwhile
    /// (the index read may lag the record), not reached before the deadline, or passed over
    /// while its organization's refreshes hung ([`Shares`]).
    pub skipped: usize,
    /// Revocation jobs whose retry time had come, attempted by this sweep.
    pub revocations: usize,
    /// Connections whose credential verification came due and was handled (sent, whatever the
    /// provider answered, or postponed while its provider backs off) with no refresh due beside
    /// it (SPEC section 10, [`crate::service::VerifyPolicy`]).
    pub verified: usize,
    /// Device authorizations (SPEC section 12) whose poll time had come: polled, or ended
    /// because their code lapsed.
    pub device_polls: usize,
}

/// What the sweep did with one due entry (the fan-out's worker reads it too: `super::fanout`).
pub(super) enum Swept {
    Refreshed,
    Failed,
    /// Failed because the store or the key service did not answer (`is_unavailable`): worth
    /// retrying soon, where `Failed` is recorded on the connection (its backoff) or final.
    Unavailable,
    Skipped,
    /// Its verification ran; no refresh was due.
    Verified,
    /// Its device authorization was polled; no refresh was due.
    Polled,
    /// Not started: the container's adaptive limit ([`super::limit`]) had no place for it in
    /// time. Still due; hand it back.
    Deferred,
}

/// Index reads (a Query of one shard's next page) a sweep has in flight at once. A page of keys
/// takes DynamoDB milliseconds, so every shard is read within a few round trips of the sweep's
/// start. Not all 16 together: moto, the emulator the tests run on, serves one DynamoDB action
/// at a time and walks the whole table for each index Query, and on a loaded CI machine the
/// last of 16 (beside the due revocations' own) waited past the SDK's 5 s operation timeout.
const INDEX_READS: usize = 4;

/// One shard of a sweep's walk over the due index ([`Service::sweep_index`]), or a worker's
/// batch ([`Service::refresh_due_entries`]).
pub(super) struct ShardWalk {
    /// Read and not started yet, oldest first (taken by [`Shares`]).
    pub(super) queued: std::collections::VecDeque<DueEntry>,
    /// Where its next page starts: after this entry, at the start for `Some(None)` (a new
    /// walk); `None` once its last page is read, or its read failed.
    next: Option<Option<DueEntry>>,
    /// A read of its next page is under way.
    reading: bool,
}

impl ShardWalk {
    /// A shard not read yet: its first page is next.
    fn start() -> Self {
        Self { queued: std::collections::VecDeque::new(), next: Some(None), reading: false }
    }

    /// A walk of `entries` alone, in that order: nothing more to read.
    pub(super) fn of(entries: Vec<DueEntry>) -> Self {
        Self { queued: entries.into(), next: None, reading: false }
    }

    /// Takes the read of its next page: how many entries it found (queued, oldest first), or
    /// the store's error (then this shard's walk ends).
    fn took(&mut self, read: Result<Vec<DueEntry>, StoreError>, page: usize) -> Result<usize, StoreError> {
        self.reading = false;
        let due = read?;
        // A full page: there may be more after its last entry.
        self.next = (due.len() >= page).then(|| due.last().cloned());
        let found = due.len();
        self.queued.extend(due);
        Ok(found)
    }
}

impl Service {
    /// The scheduled sweep: refreshes every connection due now, every shard of the due index a
    /// page at a time and a bounded number at once, as a pipeline (`sweep_index`),
    /// starting nothing after `deadline` (what is left is counted as skipped and stays due).
    /// Entries it must leave (leased elsewhere) are paged past (see the module documentation).
    ///
    /// Each AWS call is bounded ([`crate::adapters::aws::OPERATION_TIMEOUT`]): a dependency that
    /// does not answer fails that connection's refresh and the sweep moves on.
    ///
    /// The revocation jobs whose retry time has come ([`Service::revoke_due`]) run beside the
    /// index, under the same deadline, not after it: a scan that outlasts its deadline (a
    /// backlog, a slow store, a refresh held by its provider) would otherwise keep them from
    /// ever running.
    ///
    /// # Errors
    /// The store's, when the index cannot be read (an unavailable store stops the sweep there;
    /// another error skips that shard), or else when the due revocation jobs cannot be read:
    /// the sweep still logs its summary, and the deployed stack alarms on failed sweeps.
    pub async fn refresh_sweep(&self, deadline: Instant) -> Result<SweepSummary> {
        let ((mut summary, failure), revocations) =
            self.beside_due_revocations(self.sweep_index(deadline), deadline).await;
        summary.revocations = revocations;
        // The deployed stack's refresh-failure alarm reads this line, and the log filter keeps
        // this target at info under any less verbose LogLevel (telemetry::KEPT): the target is
        // part of that contract.
        tracing::info!(
            target: "latchkey::service::refresh",
            revocations = summary.revocations,
            due = summary.due,
            refreshed = summary.refreshed,
            failed = summary.failed,
            skipped = summary.skipped,
            verified = summary.verified,
            device_polls = summary.device_polls,
            // The container's refreshes at once now (`limit`): below the ceiling after throttling.
            limit = self.refresh_limit.current(),
            "refresh sweep"
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    /// Runs `index` (a sweep's or a dispatch's reading of the due index) and the revocation jobs
    /// whose retry time has come ([`Service::revoke_due`], under `deadline`) at once: what
    /// `index` returned, its error or else the error reading the jobs, and how many jobs were
    /// attempted.
    pub(super) async fn beside_due_revocations<T>(
        &self,
        index: impl Future<Output = (T, Option<ServiceError>)>,
        deadline: Instant,
    ) -> ((T, Option<ServiceError>), usize) {
        let ((done, mut failure), revoked) = futures_util::future::join(index, self.revoke_due(deadline)).await;
        let attempted = match revoked {
            Ok(outcomes) => outcomes.len(),
            // Returned unless the index's own error is: then only logged here (the caller logs
            // what it returns).
            Err(e) if failure.is_some() => {
                tracing::warn!(error = %e, "reading the due revocations failed");
                0
            }
            Err(e) => {
                failure = Some(e);
                0
            }
        };
        ((done, failure), attempted)
    }

    /// The index part of [`Service::refresh_sweep`]: what it did and the first store error it
    /// met. Every shard is walked oldest first, a page at a time, and its entries are refreshed
    /// up to [`RefreshPolicy::concurrency`] at once, as a pipeline, not page after page:
    ///
    /// - A shard's next page is read while the refreshes of its last one still run (once fewer
    ///   than `concurrency` of its entries wait), so one slow refresh (a provider's tail, a
    ///   held lease) never keeps the rest of the index waiting: a page-by-page sweep paid the
    ///   slowest refresh of every page.
    /// - The shards are read together ([`INDEX_READS`] at once) and their entries started in
    ///   turn, one shard after another, so a sweep cut short by its deadline has reached into
    ///   every shard, not only the first ones.
    /// - The places are shared among organizations ([`Shares`]): one whose refreshes hang
    ///   holds at most all but an eighth of them (each more such organization one of those),
    ///   and the others' entries go first into places that come free while it holds a quarter
    ///   or more; one whose refreshes come back may use them all (so one whose endpoint starts
    ///   hanging mid-sweep can hold them all until the provider timeout, 15 s, frees them).
    /// - Nothing starts after `deadline`: neither a read nor a refresh. Entries read and not
    ///   started are counted as skipped; they stay due.
    /// - A shard whose read fails ends there; a store that is unavailable ends every shard
    ///   (each would wait as long), and what was read and not started is skipped.
    async fn sweep_index(&self, deadline: Instant) -> (SweepSummary, Option<ServiceError>) {
        use futures_util::stream::FuturesUnordered;
        use futures_util::{FutureExt, StreamExt};

        let now = self.clock.now();
        let page = self.policy().page.max(1);
        let concurrency = self.policy().concurrency.max(1);
        let mut summary = SweepSummary::default();
        let mut failure: Option<ServiceError> = None;
        let mut shards: Vec<ShardWalk> = (0..self.store.due_shards()).map(|_| ShardWalk::start()).collect();
        let mut reads = FuturesUnordered::new();
        let mut refreshes = FuturesUnordered::new();
        let mut shares = Shares::new(concurrency, 4 * concurrency);
        let (mut turn, mut read_from) = (0, 0);
        let mut unavailable = false;
        loop {
            let open = !unavailable && Instant::now() < deadline;
            if open {
                // From the shard after the last one read: each shard's turn to be read comes
                // round, whichever of them empty their queues fastest.
                let first = read_from;
                for k in 0..shards.len() {
                    if reads.len() >= INDEX_READS {
                        break;
                    }
                    let shard = (first + k) % shards.len();
                    let walk = &mut shards[shard];
                    if walk.reading || walk.queued.len() >= concurrency {
                        continue;
                    }
                    let Some(after) = walk.next.take() else { continue };
                    walk.reading = true;
                    read_from = shard + 1;
                    let shard = u32::try_from(shard).expect("due_shards is a u32");
                    reads.push(
                        async move { (shard, self.store.due_connections(shard, now, after.as_ref(), page).await) },
                    );
                }
                shares.set_places(concurrency.min(self.refresh_limit.current()));
                while let Some((entry, began)) = shares.next(&mut shards, &mut turn) {
                    refreshes.push(async move {
                        let swept = self.sweep_one(&entry.org, &entry.id, deadline).await;
                        (swept, entry.org, began)
                    });
                }
            }
            // When a refresh in flight turns hanging, its organization's entries past a full
            // aside may be passed over: nothing else may wake the loop for 15 s.
            let wake = if open { shares.next_hanging() } else { None };
            tokio::select! {
                () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {}
                Some((outcome, org, began)) = refreshes.next(), if !refreshes.is_empty() => {
                    shares.ended(&org, began, Ended::from(&outcome));
                    summary.tally(outcome.into());
                }
                Some(first) = reads.next(), if open && !reads.is_empty() => {
                    // Every read done by now, not only the first: their shards share the free
                    // places from the start.
                    let mut done = vec![first];
                    while let Some(Some(read)) = reads.next().now_or_never() {
                        done.push(read);
                    }
                    for (shard, read) in done {
                        match shards[shard as usize].took(read, page) {
                            Ok(read) => summary.due += read,
                            Err(e) => {
                                tracing::warn!(shard, error = %e, "reading the refresh index failed");
                                unavailable |= e.is_unavailable();
                                failure.get_or_insert(e.into());
                            }
                        }
                    }
                }
                else => break,
            }
        }
        summary.skipped += shards.iter().map(|w| w.queued.len()).sum::<usize>() + shares.left();
        (summary, failure)
    }

    /// One due entry of a sweep: refreshed if its record is still due, under the container's
    /// adaptive limit on refreshes at once ([`super::limit`]: every refresh of a sweep or a
    /// worker passes here). An entry that finds no place within [`super::limit::MAX_WAIT`] or
    /// before `deadline`, or whose place came after `deadline`, is [`Swept::Deferred`], as is one
    /// whose lease `deadline` passed before it could be taken: no refresh holds a lease that ends
    /// more than the lease's length after `deadline` ([`crate::lambda::SWEEP_MARGIN`] covers it).
    /// One that met a store or KMS that did not answer (or throttled past its retries) halves
    /// the limit.
    pub(super) async fn sweep_one(&self, org: &OrgId, id: &ConnectionId, deadline: Instant) -> Swept {
        let wait = super::limit::MAX_WAIT.min(deadline.saturating_duration_since(Instant::now()));
        let placed = tokio::time::timeout(wait, self.refresh_limit.acquire()).await;
        // A place taken past the deadline is dropped unreported: nothing ran.
        let Some(permit) = placed.ok().filter(|_| Instant::now() < deadline) else {
            let limit = self.refresh_limit.current();
            tracing::debug!(org = %org, connection_id = %id, limit, "no place for a refresh in time; handed back");
            return Swept::Deferred;
        };
        let outcome = self.sweep_one_now(org, id, deadline).await;
        match outcome {
            Swept::Unavailable => permit.congested(),
            _ => permit.succeeded(),
        }
        outcome
    }

    /// [`Service::sweep_one`] once it has its place.
    async fn sweep_one_now(&self, org: &OrgId, id: &ConnectionId, deadline: Instant) -> Swept {
        let c = match self.store.get_connection(org, id).await {
            Ok(Some(c)) => c,
            // Deleted meanwhile: its index entry went with it.
            Ok(None) => return Swept::Skipped,
            Err(e) => {
                tracing::warn!(org = %org, connection_id = %id, error = %e, "reading a due connection failed");
                return if e.is_unavailable() { Swept::Unavailable } else { Swept::Failed };
            }
        };
        // Its verification, if that came due (see `service::verify`); the refresh may be due too.
        let checked = c.verify.checked_at;
        let c = match self.verify_if_due(c).await {
            Ok(c) => c,
            Err(ServiceError::NotFound) => return Swept::Skipped,
            Err(e) => {
                tracing::warn!(org = %org, connection_id = %id, error = %e, "verifying a due connection failed");
                return Swept::failure(&e);
            }
        };
        // Its refresh token's warning, if that is what came due (see `rt_lifetime`).
        let c = match self.warn_refresh_token(c).await {
            Ok(c) => c,
            Err(ServiceError::NotFound) => return Swept::Skipped,
            Err(e) => {
                tracing::warn!(org = %org, connection_id = %id, error = %e, "recording a refresh token warning failed");
                return Swept::failure(&e);
            }
        };
        // Its device authorization's poll, if that came due (see `service::oauth::device`).
        let (c, polled) = match self.poll_device_if_due(c).await {
            Ok(polled) => polled,
            Err(ServiceError::NotFound) => return Swept::Skipped,
            Err(e) => {
                tracing::warn!(org = %org, connection_id = %id, error = %e, "polling a device authorization failed");
                return Swept::failure(&e);
            }
        };
        if polled {
            self.device_polled_by_sweep(&c);
        }
        // Due for a refresh, or its refresh token has lapsed (which the refresh turns red
        // without calling the provider).
        let needed = |c: &Connection, now: OffsetDateTime| {
            c.refresh.due_at.is_some_and(|d| d <= now)
                || (c.refresh.due_at.is_some() && rt_lifetime::lapsed_at(c, now).is_some())
        };
        // The index may lag the record (DynamoDB's is eventually consistent): a record that is
        // no longer due (refreshed, turned red, disconnected meanwhile) is not this sweep's.
        if !needed(&c, self.clock.now()) {
            return if polled {
                Swept::Polled
            } else if c.verify.checked_at == checked {
                Swept::Skipped
            } else {
                Swept::Verified
            };
        }
        let seen = c.oauth.as_ref().map(|t| t.obtained_at);
        // The record just read (and written, if a verification or warning was) is the refresh's
        // first read: one store read per refreshed connection, not two.
        match self.refresh_connection(org, id, Some(c), seen, needed, Take::Leave(deadline)).await {
            Ok(Refreshed::Now(_)) => Swept::Refreshed,
            Ok(Refreshed::Already(_) | Refreshed::Busy) | Err(ServiceError::NotFound) => Swept::Skipped,
            Ok(Refreshed::Late) => Swept::Deferred,
            Err(e) => Swept::failure(&e),
        }
    }
}

impl Swept {
    /// A failure's kind: [`Swept::Unavailable`] when a dependency did not answer.
    fn failure(e: &ServiceError) -> Self {
        if e.is_unavailable() { Self::Unavailable } else { Self::Failed }
    }
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::Principal;
    use crate::service::ServiceOptions;

    /// A service over a fresh SQLite store and local key, refreshing at most `concurrency` at
    /// once, and one connection of it (its token endpoint refuses connections: a refresh that
    /// reached it would fail and back off).
    async fn one_connection(concurrency: usize) -> (Service, OrgId, ConnectionId, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ServiceOptions::default();
        options.refresh.concurrency = concurrency;
        let service = Service::on_sqlite(dir.path(), options);
        let org = OrgId::parse("acme").unwrap();
        let p = Principal::organization(org.clone());
        let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
            "authorizeUrl": {"type": "url", "default": "http://127.0.0.1:9/authorize"},
            "tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"},
            "clientId": {"type": "string", "default": "client"},
            "clientSecret": {"type": "password", "default": "client-secret-000000000000"}}});
        service.put_definition(&p, "idp", &definition).await.unwrap();
        let body = json!({"definition": "idp", "customer": "c-0", "tokens": {
            "access_token": "at-0", "refresh_token": "rt-0", "token_type": "Bearer", "expires_in": 60}});
        let id = service.create_connection(&p, &body).await.unwrap().id;
        (service, org, id, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_waits_for_its_place_no_longer_than_its_deadline() {
        let (service, org, id, _dir) = one_connection(1).await;
        let running = service.refresh_limit.acquire().await;
        let began = tokio::time::Instant::now();
        let deadline = Instant::now() + Duration::from_secs(1);
        let outcome = service.sweep_one(&org, &id, deadline).await;
        assert!(matches!(outcome, Swept::Deferred), "no place before the deadline: handed back");
        let waited = began.elapsed();
        assert!(waited < super::super::limit::MAX_WAIT / 2, "waited {waited:?}, past its 1 s deadline");
        drop(running);
    }

    #[tokio::test]
    async fn a_place_had_past_the_deadline_starts_nothing() {
        let (service, org, id, _dir) = one_connection(4).await;
        let before = service.store.get_connection(&org, &id).await.unwrap().unwrap();
        let outcome = service.sweep_one(&org, &id, Instant::now()).await;
        assert!(matches!(outcome, Swept::Deferred), "a place free, but the deadline has passed");
        let after = service.store.get_connection(&org, &id).await.unwrap().unwrap();
        assert_eq!(after.version, before.version, "nothing was written");
        assert_eq!(service.refresh_limit.current(), 4, "the limit is as it was");
    }

    #[tokio::test]
    async fn no_lease_is_taken_once_the_deadline_has_passed() {
        let (service, org, id, _dir) = one_connection(4).await;
        let before = service.store.get_connection(&org, &id).await.unwrap().unwrap();
        let seen = before.oauth.as_ref().map(|t| t.obtained_at);
        let late = Take::Leave(Instant::now());
        let refreshed = service.refresh_connection(&org, &id, Some(before.clone()), seen, |_, _| true, late).await;
        assert!(matches!(refreshed, Ok(Refreshed::Late)), "too late to take a lease");
        let after = service.store.get_connection(&org, &id).await.unwrap().unwrap();
        assert_eq!(after.version, before.version, "no lease written");
        assert!(after.refresh.lease.is_none() && after.refresh.failures == 0, "the provider was not called");
    }
}

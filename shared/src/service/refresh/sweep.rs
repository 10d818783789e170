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
    /// Read and not started yet, oldest first.
    queued: std::collections::VecDeque<DueEntry>,
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

/// How a sweep shares its places (refreshes at once: [`RefreshPolicy::concurrency`], or the
/// container's adaptive limit while that is lower) among organizations
/// ([`Service::sweep_index`], and a worker's batch: [`Service::refresh_due_entries`]), so that
/// an organization whose token endpoint holds every call (up to the provider call's 15 s
/// timeout) cannot hold the places while other organizations' connections wait:
///
/// - While more places are free than the reserve (an eighth of them, at least one), any
///   organization's entry may start, and an organization with fewer than its share in flight
///   (a quarter of the places) goes first.
/// - Within the reserve, an entry starts only if its organization has nothing in flight, or
///   its refreshes come back: its last ones that reached an answer (as many as its share) each
///   ended within [`QUICK_REFRESH`], and none of its refreshes in flight is older than that.
///   So each organization whose calls hang takes at most one reserved place, and one alone
///   (no one else due) whose provider answers still uses every place once its first answers
///   came back.
/// - An entry that may not start yet waits aside, in read order per organization, rather than
///   at the head of its shard's queue, so the shard is read on to the other organizations'
///   entries. A sweep keeps up to four times its concurrency aside; past that, an entry that may
///   not start and whose organization has a refresh hanging (in flight for [`QUICK_REFRESH`]
///   or longer) is passed over (still due: the next sweep has it), and any other waits at the
///   head of its shard. Entries aside at the deadline are skipped (still due).
pub(super) struct Shares {
    places: usize,
    running: usize,
    orgs: std::collections::BTreeMap<OrgId, OrgShare>,
    /// Entries set aside, per organization, each with its read order.
    aside: std::collections::BTreeMap<OrgId, std::collections::VecDeque<(u64, DueEntry)>>,
    aside_len: usize,
    aside_cap: usize,
    read: u64,
    /// Entries passed over: aside was full and their organization could not start.
    passed: usize,
}

/// One organization's refreshes under [`Shares`].
#[derive(Default)]
struct OrgShare {
    /// Start times of its refreshes in flight, with how many started at each.
    started: std::collections::BTreeMap<tokio::time::Instant, usize>,
    in_flight: usize,
    /// How many of its last refreshes that reached an answer ended within [`QUICK_REFRESH`].
    quick: usize,
}

/// A refresh (its place, lease, provider call and writes) that ends within this counts toward
/// its organization's use of the reserve ([`Shares`]); a provider answers in 50 to 300 ms.
const QUICK_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// What an ended refresh tells [`Shares`] of its organization's provider.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ended {
    /// It ran to an answer (refreshed, failed, verified, polled): counted by its time.
    Answered,
    /// The store or the key service did not answer: its organization proves itself anew.
    Unavailable,
    /// Skipped or deferred: it says nothing.
    Neither,
}

impl From<&Swept> for Ended {
    fn from(s: &Swept) -> Self {
        match s {
            Swept::Refreshed | Swept::Failed | Swept::Verified | Swept::Polled => Self::Answered,
            Swept::Unavailable => Self::Unavailable,
            Swept::Skipped | Swept::Deferred => Self::Neither,
        }
    }
}

impl Shares {
    /// Shares for `places` at most, keeping up to `aside_cap` entries aside.
    pub(super) fn new(places: usize, aside_cap: usize) -> Self {
        Self {
            places: places.max(1),
            running: 0,
            orgs: std::collections::BTreeMap::new(),
            aside: std::collections::BTreeMap::new(),
            aside_len: 0,
            aside_cap,
            read: 0,
            passed: 0,
        }
    }

    /// The places now (the adaptive limit may have changed): at least one.
    pub(super) fn set_places(&mut self, places: usize) {
        self.places = places.max(1);
    }

    fn share(&self) -> usize {
        (self.places / 4).max(1)
    }

    fn reserve(&self) -> usize {
        if self.places >= 2 { (self.places / 8).max(1) } else { 0 }
    }

    fn in_flight(&self, org: &OrgId) -> usize {
        self.orgs.get(org).map_or(0, |o| o.in_flight)
    }

    /// Whether a refresh of `org`'s in flight has gone on for [`QUICK_REFRESH`] or longer.
    fn hanging(&self, org: &OrgId) -> bool {
        self.orgs.get(org).and_then(|o| o.started.keys().next()).is_some_and(|t| t.elapsed() >= QUICK_REFRESH)
    }

    /// When the next refresh in flight turns hanging ([`QUICK_REFRESH`] after it started), if
    /// one will and entries wait: a sweep may then pass its organization's entries over.
    pub(super) fn next_hanging(&self) -> Option<tokio::time::Instant> {
        if self.aside_len == 0 {
            return None;
        }
        let now = tokio::time::Instant::now();
        self.orgs
            .values()
            .filter_map(|o| o.started.keys().next().map(|t| *t + QUICK_REFRESH))
            .filter(|at| *at > now)
            .min()
    }

    /// Whether `org`'s refreshes come back (see [`Shares`]).
    fn proven(&self, org: &OrgId) -> bool {
        self.orgs.get(org).is_some_and(|o| {
            o.quick >= self.share() && o.started.keys().next().is_none_or(|t| t.elapsed() < QUICK_REFRESH)
        })
    }

    /// Whether an entry of `org` may start in a free place now.
    fn admits(&self, org: &OrgId) -> bool {
        self.places.saturating_sub(self.running) > self.reserve() || self.in_flight(org) == 0 || self.proven(org)
    }

    /// Whether an entry of `org` may start and goes first: its organization is under its share.
    fn goes_first(&self, org: &OrgId) -> bool {
        self.in_flight(org) < self.share() && self.admits(org)
    }

    /// Entries passed over and still aside: skipped by the sweep (still due).
    pub(super) fn left(&self) -> usize {
        self.passed + self.aside_len
    }

    /// The next entry to start in a free place and when it started, counted as running: one
    /// that goes first, aside (oldest read first) or at the head of the next shard in turn
    /// (the entries before it set aside, or passed over); else one that may start, aside or at
    /// a shard's head.
    pub(super) fn next(
        &mut self,
        shards: &mut [ShardWalk],
        turn: &mut usize,
    ) -> Option<(DueEntry, tokio::time::Instant)> {
        if self.running >= self.places {
            return None;
        }
        let entry = self
            .take_aside(Self::goes_first)
            .or_else(|| self.take_queued(shards, turn))
            .or_else(|| self.take_aside(Self::admits))
            .or_else(|| self.take_front(shards, turn))?;
        let now = tokio::time::Instant::now();
        self.running += 1;
        let org = self.orgs.entry(entry.org.clone()).or_default();
        org.in_flight += 1;
        *org.started.entry(now).or_default() += 1;
        Some((entry, now))
    }

    /// The entry aside read first among the organizations `allows` lets start.
    fn take_aside(&mut self, allows: fn(&Self, &OrgId) -> bool) -> Option<DueEntry> {
        let org = self
            .aside
            .iter()
            .filter(|(org, _)| allows(self, org))
            .filter_map(|(org, queue)| queue.front().map(|(read, _)| (*read, org)))
            .min()
            .map(|(_, org)| org.clone())?;
        let queue = self.aside.get_mut(&org)?;
        let (_, entry) = queue.pop_front()?;
        if queue.is_empty() {
            self.aside.remove(&org);
        }
        self.aside_len -= 1;
        Some(entry)
    }

    /// The first queued entry of the next shard in turn that may start.
    fn take_front(&self, shards: &mut [ShardWalk], turn: &mut usize) -> Option<DueEntry> {
        for _ in 0..shards.len() {
            let walk = &mut shards[*turn % shards.len()];
            *turn = turn.wrapping_add(1);
            if walk.queued.front().is_some_and(|e| self.admits(&e.org)) {
                return walk.queued.pop_front();
            }
        }
        None
    }

    /// The next shard's first queued entry in turn that goes first; the entries before it are
    /// set aside while there is room, then passed over if they may not start and their
    /// organization has a refresh hanging ([`QUICK_REFRESH`] or longer in flight); a shard
    /// whose head is neither is left as it is (to [`Shares::take_front`], or until a place or
    /// room aside comes free).
    fn take_queued(&mut self, shards: &mut [ShardWalk], turn: &mut usize) -> Option<DueEntry> {
        for _ in 0..shards.len() {
            let walk = &mut shards[*turn % shards.len()];
            *turn = turn.wrapping_add(1);
            while let Some(entry) = walk.queued.front() {
                if self.goes_first(&entry.org) {
                    return walk.queued.pop_front();
                }
                if self.aside_len < self.aside_cap {
                    let entry = walk.queued.pop_front()?;
                    self.read += 1;
                    self.aside.entry(entry.org.clone()).or_default().push_back((self.read, entry));
                    self.aside_len += 1;
                } else if self.admits(&entry.org) || !self.hanging(&entry.org) {
                    break;
                } else {
                    walk.queued.pop_front();
                    self.passed += 1;
                }
            }
        }
        None
    }

    /// A refresh of `org`'s that started at `began` ended: its place is free.
    pub(super) fn ended(&mut self, org: &OrgId, began: tokio::time::Instant, how: Ended) {
        self.running = self.running.saturating_sub(1);
        let Some(share) = self.orgs.get_mut(org) else { return };
        share.in_flight = share.in_flight.saturating_sub(1);
        if let Some(n) = share.started.get_mut(&began) {
            *n -= 1;
            if *n == 0 {
                share.started.remove(&began);
            }
        }
        match how {
            Ended::Answered if began.elapsed() < QUICK_REFRESH => share.quick += 1,
            Ended::Answered | Ended::Unavailable => share.quick = 0,
            Ended::Neither => {}
        }
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

    /// One shard walk whose queue holds `entries` (organization names), in that order.
    fn walk_of(entries: &[&str]) -> ShardWalk {
        let mut walk = ShardWalk::start();
        walk.next = None;
        walk.queued = entries
            .iter()
            .enumerate()
            .map(|(due, org)| DueEntry {
                org: OrgId::parse(org).unwrap(),
                id: ConnectionId::generate(),
                due: due as i64,
            })
            .collect();
        walk
    }

    /// Starts entries until [`Shares::next`] has none: their organizations and start times.
    fn start_all(
        shares: &mut Shares,
        shards: &mut [ShardWalk],
        turn: &mut usize,
    ) -> Vec<(String, tokio::time::Instant)> {
        std::iter::from_fn(|| shares.next(shards, turn)).map(|(e, began)| (e.org.to_string(), began)).collect()
    }

    fn orgs(started: &[(String, tokio::time::Instant)]) -> Vec<&str> {
        started.iter().map(|(org, _)| org.as_str()).collect()
    }

    /// Ends the refresh `started[i]` after `took` more of the paused clock, answered.
    async fn end(shares: &mut Shares, started: &[(String, tokio::time::Instant)], i: usize, took: Duration) {
        tokio::time::advance(took).await;
        shares.ended(&OrgId::parse(&started[i].0).unwrap(), started[i].1, Ended::Answered);
    }

    #[tokio::test(start_paused = true)]
    async fn an_organization_alone_keeps_the_reserve_until_its_refreshes_come_back() {
        let (mut shares, mut turn) = (Shares::new(8, 32), 0);
        let mut shards = vec![walk_of(&["alone"; 30])];
        let first = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(first.len(), 7, "all but the reserve (1 of 8)");
        let quick = Duration::from_millis(100);
        end(&mut shares, &first, 0, quick).await;
        let second = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(second.len(), 1, "its place, not the reserve's: one quick answer of a share of 2");
        end(&mut shares, &first, 1, quick).await;
        let third = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(third.len(), 2, "two quick answers: its place and the reserve's");
        assert_eq!(shares.running, 8);
        // Three seconds on, every refresh in flight hangs: a slow answer, and it proves itself anew.
        tokio::time::advance(Duration::from_secs(3)).await;
        shares.ended(&OrgId::parse("alone").unwrap(), third[0].1, Ended::Answered);
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 0, "a slow one: the reserve is kept again");
        shares.ended(&OrgId::parse("alone").unwrap(), first[2].1, Ended::Answered);
        let new = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(new.len(), 1);
        end(&mut shares, &new, 0, quick).await;
        let new = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(new.len(), 1);
        end(&mut shares, &new, 0, quick).await;
        // Two quick answers in a row, as many as its share, but 5 of its refreshes in flight
        // are over 2 s old: still not the reserve.
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 1, "its freed place only");
        assert_eq!(shares.running, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn another_organization_goes_first_into_the_places_that_come_free() {
        let (mut shares, mut turn) = (Shares::new(8, 32), 0);
        // Two shards, the held organization's entries first in both: the second shard is read on
        // past them (set aside) to the other organization's.
        let mut shards =
            vec![walk_of(&["held"; 10]), walk_of(&["held", "held", "held", "held", "other", "other", "other"])];
        let started = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(
            orgs(&started),
            ["held", "held", "other", "other", "held", "held", "held"],
            "each one's share (2) first, then the held one's up to the reserve (1 of 8 left free)"
        );
        assert_eq!(shares.aside_len, 10, "the other 10 set aside: the shards are read on");
        assert!(shards.iter().all(|w| w.queued.is_empty()));
        end(&mut shares, &started, 2, Duration::from_millis(100)).await;
        assert_eq!(orgs(&start_all(&mut shares, &mut shards, &mut turn)), ["other"], "under its share: first");
        end(&mut shares, &started, 0, Duration::from_secs(15)).await;
        assert_eq!(orgs(&start_all(&mut shares, &mut shards, &mut turn)), ["held"], "the other at its share");
        assert_eq!(shares.running, 7, "the reserve is free");
    }

    #[tokio::test(start_paused = true)]
    async fn each_unproven_organization_takes_one_reserved_place_at_most() {
        let (mut shares, mut turn) = (Shares::new(16, 64), 0);
        // 16 places, share 4, reserve 2: the first organization takes all but the reserve; of
        // the reserve, the second and third one place each, the fourth none.
        let mut shards = vec![walk_of(&["a"; 20])];
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 14, "all but the reserve");
        // The others' entries read after the first one's took its places.
        shards[0].queued.extend(walk_of(&[&["b"; 5][..], &["c"; 5], &["d"; 5]].concat()).queued);
        assert_eq!(orgs(&start_all(&mut shares, &mut shards, &mut turn)), ["b", "c"], "one reserved place each");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_organizations_entries_are_passed_over_once_aside_is_full() {
        let (mut shares, mut turn) = (Shares::new(8, 4), 0);
        let mut shards = vec![walk_of(&[&["held"; 20][..], &["other"]].concat())];
        let started = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(orgs(&started), ["held"; 7], "up to the reserve, some of them set aside and taken back");
        assert_eq!((shares.aside_len, shares.passed), (4, 0), "aside full; nothing passed over while none hangs");
        assert_eq!(shards[0].queued.len(), 10, "the rest wait in their shard");
        tokio::time::advance(QUICK_REFRESH).await;
        assert_eq!(orgs(&start_all(&mut shares, &mut shards, &mut turn)), ["other"], "read on past the hanging");
        assert!(shards[0].queued.is_empty());
        assert_eq!(shares.left(), 13, "4 aside and 9 passed over: skipped by the sweep, still due");
    }

    #[tokio::test(start_paused = true)]
    async fn places_follow_the_adaptive_limit() {
        let (mut shares, mut turn) = (Shares::new(8, 32), 0);
        let mut shards = vec![walk_of(&[&["a"; 10][..], &["b"; 10]].concat())];
        let started = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(started.len(), 7);
        // The limit halves to 4: nothing starts until fewer than 4 run.
        shares.set_places(4);
        assert!(start_all(&mut shares, &mut shards, &mut turn).is_empty());
        for i in 0..4 {
            end(&mut shares, &started, i, Duration::from_millis(10)).await;
        }
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 1, "4 places, reserve 1: 3 running, one more");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_store_resets_the_count_and_skipped_entries_prove_nothing() {
        let (mut shares, mut turn) = (Shares::new(8, 32), 0);
        let mut shards = vec![walk_of(&["a"; 30])];
        let first = start_all(&mut shares, &mut shards, &mut turn);
        let a = OrgId::parse("a").unwrap();
        let quick = Duration::from_millis(10);
        end(&mut shares, &first, 0, quick).await;
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 1, "one quick answer: its place only");
        shares.ended(&a, first[1].1, Ended::Unavailable);
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 1);
        end(&mut shares, &first, 2, quick).await;
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 1, "the count was reset: one, not two");
        shares.ended(&a, first[3].1, Ended::Neither);
        shares.ended(&a, first[4].1, Ended::Neither);
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 2, "skipped ones count for nothing");
        end(&mut shares, &first, 5, quick).await;
        assert_eq!(start_all(&mut shares, &mut shards, &mut turn).len(), 2, "two quick answers in a row: the reserve");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_is_woken_when_a_refresh_turns_hanging() {
        let (mut shares, mut turn) = (Shares::new(8, 4), 0);
        let mut shards = vec![walk_of(&[&["held"; 20][..], &["other"]].concat())];
        assert!(shares.next_hanging().is_none(), "nothing in flight");
        let started = start_all(&mut shares, &mut shards, &mut turn);
        assert_eq!(shares.next_hanging(), Some(started[0].1 + QUICK_REFRESH), "entries wait aside");
        tokio::time::advance(QUICK_REFRESH).await;
        assert!(shares.next_hanging().is_none(), "all in flight hang already");
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

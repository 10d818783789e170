//! How many refreshes a container runs at once: an adaptive limit (AIMD, additive increase and
//! multiplicative decrease, as TCP's congestion window and Netflix's concurrency-limits do).
//!
//! # Why a container limits itself
//! 200 worker containers refreshing [`RefreshPolicy::concurrency`](super::RefreshPolicy::concurrency)
//! (64) connections each can start 12,800 refreshes in a fraction of a second, while the due
//! index's 16 shards take 1,000 WCU a second each (2 per refresh: 8,000 refreshes a second in
//! all): the fleet's burst is above what the index can write even when its sustained rate is
//! not (docs/scale.md, "1M and 10M connections"). Each container therefore halves its own
//! limit when a refresh meets a store
//! (or KMS) that throttles or does not answer, at most once a second (the refreshes already in
//! flight meet the same throttling: one episode, one halving), and adds one after a run of as
//! many successes as the limit, up to the policy's ceiling. The fleet's rate follows the
//! index's capacity without any coordination between containers.
//!
//! The limit lives in the [`Service`](crate::service::Service), so it survives from one
//! invocation to the next in a warm container; a cold container starts at the ceiling (the
//! unthrottled behaviour is unchanged).
//!
//! # Own code, not a crate
//! The crates that offer this (`tower-acc`, `rate_limiter_aimd`) are young (0.1), built around a
//! `tower::Service` or a `reqwest` middleware and a latency signal; the refresh is neither, and
//! its signal is an error class. The AWS SDK's adaptive retry mode (`RetryConfig::adaptive`)
//! limits a client's request rate, process-wide per service and region, after any throttling:
//! it would slow every DynamoDB call of the process for one hot due shard (AWS advises against
//! it for multi-tenant use), and it does not bound what is held while a provider answers. About
//! a hundred lines of our own, tested on tokio's paused clock, fit better.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// At most one halving per this window: the refreshes in flight when the store began to
/// throttle report it too, and each report must not halve the limit again.
pub(crate) const DECREASE_WINDOW: Duration = Duration::from_secs(1);

/// The longest a refresh waits for its place (`sweep_one` hands it back after that, or at its
/// deadline if that comes first). Only the wait is bounded here: the invocation's end is kept
/// by `sweep_one`, which starts nothing whose place came after its deadline, and by the lease,
/// which is taken before the deadline or not at all ([`crate::lambda::SWEEP_MARGIN`] covers a
/// lease taken just before it). A place that frees up within seconds is worth waiting for; a
/// container throttled longer hands its entries back to be retried, by the next sweep or as a
/// delayed message, rather than holding them.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(5);

/// A container's adaptive limit on refreshes at once, between 1 and its ceiling.
#[derive(Debug)]
pub(crate) struct RefreshLimit {
    ceiling: usize,
    state: Mutex<State>,
    /// Wakes a waiting [`RefreshLimit::acquire`] when a permit is returned or the limit grows.
    freed: Notify,
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    /// Successes since the limit last changed.
    successes: usize,
    decreased_at: Option<Instant>,
    /// Reports of throttling so far: a refresh that overlapped one is not a success.
    congestions: u64,
}

/// One refresh's place under the limit; returned when dropped. Report how it went with
/// [`Permit::succeeded`] or [`Permit::congested`]; a permit dropped unreported (a cancelled
/// refresh) changes nothing.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    limit: &'a RefreshLimit,
    /// [`State::congestions`] when the place was taken.
    seen: u64,
}

impl RefreshLimit {
    /// A limit starting at `ceiling` (at least 1).
    pub(crate) fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            ceiling,
            state: Mutex::new(State { limit: ceiling, in_flight: 0, successes: 0, decreased_at: None, congestions: 0 }),
            freed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refreshes allowed at once now.
    pub(crate) fn current(&self) -> usize {
        self.state().limit
    }

    /// Waits until fewer refreshes than the limit are running, and takes a place.
    pub(crate) async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a permit returned in between is not missed.
            freed.as_mut().enable();
            {
                let mut s = self.state();
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return Permit { limit: self, seen: s.congestions };
                }
            }
            freed.await;
        }
    }

    /// A refresh met a store or key service that throttled or did not answer: halves the limit
    /// (not below 1), unless it was halved less than [`DECREASE_WINDOW`] ago.
    pub(crate) fn congested(&self) {
        let now = Instant::now();
        let mut s = self.state();
        s.successes = 0;
        s.congestions += 1;
        if s.decreased_at.is_some_and(|at| now.duration_since(at) < DECREASE_WINDOW) {
            return;
        }
        let was = s.limit;
        s.limit = (was / 2).max(1);
        s.decreased_at = Some(now);
        if s.limit != was {
            tracing::debug!(limit = s.limit, was, "refreshes at once lowered: the store or KMS throttled");
        }
    }

    /// A refresh taken when [`State::congestions`] was `seen` went through: unless throttling
    /// was reported meanwhile (by it or a refresh beside it), a success; after as many successes
    /// as the limit in a row, the limit grows by one, up to the ceiling.
    fn succeeded(&self, seen: u64) {
        let mut s = self.state();
        if s.congestions != seen {
            return;
        }
        s.successes += 1;
        if s.successes >= s.limit && s.limit < self.ceiling {
            s.limit += 1;
            s.successes = 0;
            tracing::debug!(limit = s.limit, "refreshes at once raised");
            drop(s);
            self.freed.notify_one();
        }
    }
}

impl Permit<'_> {
    /// The refresh went through (a success unless throttling was reported while it ran).
    pub(crate) fn succeeded(self) {
        self.limit.succeeded(self.seen);
    }

    /// The refresh met throttling (see [`RefreshLimit::congested`]).
    pub(crate) fn congested(self) {
        self.limit.congested();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limit.state().in_flight -= 1;
        self.limit.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    /// Whether `f` completes without simulated time passing (on the paused clock, a pending
    /// future stays pending: nothing else runs that could free it).
    async fn ready<F: Future>(f: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(1), f).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_limit_once_a_window_down_to_one() {
        let limit = RefreshLimit::new(64);
        assert_eq!(limit.current(), 64, "a container starts at the ceiling");
        limit.congested();
        assert_eq!(limit.current(), 32);
        // The refreshes in flight when throttling began report it too: one halving.
        limit.congested();
        limit.congested();
        assert_eq!(limit.current(), 32);
        let mut seen = vec![];
        for _ in 0..8 {
            tokio::time::advance(DECREASE_WINDOW).await;
            limit.congested();
            seen.push(limit.current());
        }
        assert_eq!(seen, [16, 8, 4, 2, 1, 1, 1, 1], "halved once a window, never below 1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_successes_as_long_as_the_limit_adds_one_up_to_the_ceiling() {
        let limit = RefreshLimit::new(6);
        limit.congested();
        assert_eq!(limit.current(), 3);
        for _ in 0..2 {
            limit.acquire().await.succeeded();
        }
        assert_eq!(limit.current(), 3, "two successes are not yet a run of three");
        // Throttling in the run starts it again.
        tokio::time::advance(DECREASE_WINDOW).await;
        limit.congested();
        assert_eq!(limit.current(), 1);
        limit.acquire().await.succeeded();
        assert_eq!(limit.current(), 2);
        for _ in 0..2 {
            limit.acquire().await.succeeded();
        }
        assert_eq!(limit.current(), 3);
        for _ in 0..100 {
            limit.acquire().await.succeeded();
        }
        assert_eq!(limit.current(), 6, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_that_ran_while_throttling_was_reported_is_no_success() {
        let limit = RefreshLimit::new(8);
        limit.congested();
        assert_eq!(limit.current(), 4);
        let overlapping = limit.acquire().await;
        tokio::time::advance(DECREASE_WINDOW).await;
        // Another refresh met throttling while this one ran (its commit retried, say).
        limit.acquire().await.congested();
        assert_eq!(limit.current(), 2);
        overlapping.succeeded();
        limit.acquire().await.succeeded();
        assert_eq!(limit.current(), 2, "one success after the throttling, not two");
        limit.acquire().await.succeeded();
        assert_eq!(limit.current(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_refreshes_than_the_limit_run_at_once_and_a_returned_place_is_taken() {
        let limit = RefreshLimit::new(4);
        tokio::time::advance(DECREASE_WINDOW).await;
        limit.congested();
        assert_eq!(limit.current(), 2);
        let first = limit.acquire().await;
        let second = ready(limit.acquire()).await.expect("a second place under a limit of 2");
        let third = limit.acquire();
        tokio::pin!(third);
        assert!(ready(third.as_mut()).await.is_none(), "a third waits");
        // A cancelled refresh (dropped unreported) frees its place and changes nothing else.
        drop(first);
        let third = ready(third).await.expect("the freed place is taken");
        assert_eq!(limit.current(), 2);
        // Halving below what is running: no new place until enough have finished.
        tokio::time::advance(DECREASE_WINDOW).await;
        second.congested();
        assert_eq!(limit.current(), 1);
        let fourth = limit.acquire();
        tokio::pin!(fourth);
        assert!(ready(fourth.as_mut()).await.is_none(), "one running, limit one: wait");
        third.succeeded();
        assert!(ready(fourth).await.is_some(), "a place again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grown_limit_wakes_a_waiting_refresh() {
        let limit = RefreshLimit::new(2);
        limit.congested();
        let running = limit.acquire().await;
        let waiting = limit.acquire();
        tokio::pin!(waiting);
        assert!(ready(waiting.as_mut()).await.is_none());
        // One success at limit 1 is a full run: the limit grows to 2, while `running` still
        // holds its place, and the waiting refresh gets the new one.
        limit.succeeded(1);
        assert_eq!(limit.current(), 2);
        assert!(ready(waiting).await.is_some(), "woken by the grown limit");
        drop(running);
    }
}

//! How a sweep, or a fan-out worker's batch, shares its places among organizations: one whose
//! token endpoint hangs cannot hold them all ([`Shares`]). Its own module because the rules
//! (share, reserve, set aside, passed over) are one thing with their own tests, apart from the
//! sweep's reading of the due index.

use super::sweep::{ShardWalk, Swept};
use crate::domain::OrgId;
use crate::ports::DueEntry;

/// How a sweep shares its places (refreshes at once:
/// [`RefreshPolicy::concurrency`](super::RefreshPolicy::concurrency), or the container's
/// adaptive limit while that is lower) among organizations
/// ([`Service::sweep_index`](crate::service::Service::sweep_index), and a worker's batch:
/// [`Service::refresh_due_entries`](crate::service::Service::refresh_due_entries)), so that an
/// organization whose token endpoint holds every call (up to the provider call's 15 s timeout)
/// cannot hold the places while other organizations' connections wait:
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::ConnectionId;

    /// One shard walk whose queue holds `entries` (organization names), in that order.
    fn walk_of(entries: &[&str]) -> ShardWalk {
        ShardWalk::of(
            entries
                .iter()
                .enumerate()
                .map(|(due, org)| DueEntry {
                    org: OrgId::parse(org).unwrap(),
                    id: ConnectionId::generate(),
                    due: due as i64,
                })
                .collect(),
        )
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
}

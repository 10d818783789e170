//! A bounded map whose entries lapse a fixed time after they were put: the data-key cache of
//! [`super::Envelope`] and the branch-key cache of [`super::BranchKeyring`].
//!
//! Every entry lives as long (`ttl`), so the order entries were put in is also the order they
//! lapse: making room looks at the oldest entries only, at the front of a queue of the puts. A
//! get and a put cost O(1) (a put amortized), and neither reads a clock: the caller passes `now`.
//! Before, making room in a full cache tested the age of every entry, a clock read each, then
//! searched them all for the oldest, under the cache's lock: at the data-key cache's 1,024
//! entries, 34 µs more a seal once a process had sealed that many records in five minutes
//! (docs/performance.md, "The key caches' eviction").

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::ops::Sub;
use std::time::Duration;

/// At most `capacity` entries, each answered by [`ExpiringMap::get`] until `ttl` after its put.
/// `I` is the instant type the caller's clock gives (`std::time::Instant`, or tokio's, whose
/// paused time tests and the simulation move). The `now` of each put must not be earlier than
/// the last put's: read it under the lock that guards the map, as both caches do (else a live
/// entry could be pushed out while a slightly older lapsed one stays).
pub(crate) struct ExpiringMap<K, V, I> {
    entries: HashMap<K, Entry<V, I>>,
    /// One record per put, oldest first: the key and the put's sequence number. A record whose
    /// number is not its key's entry's (the key was put again since, or pushed out) is stale and
    /// skipped; [`ExpiringMap::put`] keeps them fewer than the entries plus `capacity`.
    order: VecDeque<(K, u64)>,
    next_seq: u64,
    capacity: usize,
    ttl: Duration,
}

struct Entry<V, I> {
    value: V,
    at: I,
    seq: u64,
}

impl<K, V, I> ExpiringMap<K, V, I>
where
    K: Clone + Eq + Hash,
    I: Copy + Sub<Output = Duration>,
{
    /// An empty map of at most `capacity` entries living `ttl` each; either zero keeps nothing.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), next_seq: 0, capacity, ttl }
    }

    /// Changes the bound. A smaller one takes effect at the next put of a new key; zero drops
    /// every entry at the next put.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Changes the lifetime of every entry, those already kept included (a longer one answers
    /// again an entry that had lapsed but was not dropped yet); zero drops every entry at the
    /// next put.
    pub(crate) fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// The value put under `key`, if it was put less than `ttl` before `now`. A lapsed entry
    /// stays until a put makes room (it is among the oldest) or replaces it.
    pub(crate) fn get<Q>(&self, key: &Q, now: I) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).filter(|e| now - e.at < self.ttl).map(|e| &e.value)
    }

    /// Keeps `value` under `key` from `now` (replacing what the key had). First drops the
    /// lapsed entries, then, if the map is still full and `key` is new, the oldest ones. With a
    /// zero capacity or lifetime it keeps nothing, and drops what it kept.
    pub(crate) fn put(&mut self, key: K, value: V, now: I) {
        if self.capacity == 0 || self.ttl.is_zero() {
            self.entries.clear();
            self.order.clear();
            return;
        }
        self.drop_lapsed(now);
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity && self.pop_oldest() {}
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        self.entries.insert(key, Entry { value, at: now, seq });
        // Stale records pile up only where keys are put again; one pass over the queue every
        // `capacity` of them keeps a put O(1) amortized.
        if self.order.len() >= self.entries.len().saturating_add(self.capacity) {
            let entries = &self.entries;
            self.order.retain(|(k, seq)| entries.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Drops the entries lapsed at `now` from the front of the queue, and the stale records
    /// before the first entry that has not lapsed.
    fn drop_lapsed(&mut self, now: I) {
        while let Some((key, seq)) = self.order.front() {
            match self.entries.get(key) {
                Some(e) if e.seq == *seq => {
                    if now - e.at < self.ttl {
                        return;
                    }
                    self.entries.remove(key);
                }
                _ => {}
            }
            self.order.pop_front();
        }
    }

    /// Drops the oldest entry; `false` when there is none.
    fn pop_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.entries.remove(&key);
                return true;
            }
        }
        false
    }

    /// How many entries are kept, lapsed or not.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// How many ages (`now - at`) the map has computed on this thread.
        static AGES: Cell<usize> = const { Cell::new(0) };
    }

    /// Seconds since a start, counting each age computed from it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct T(u64);

    impl Sub for T {
        type Output = Duration;

        fn sub(self, earlier: T) -> Duration {
            AGES.with(|n| n.set(n.get() + 1));
            Duration::from_secs(self.0.saturating_sub(earlier.0))
        }
    }

    fn ages() -> usize {
        AGES.with(Cell::get)
    }

    const TTL: Duration = Duration::from_secs(300);

    #[test]
    fn an_entry_is_answered_until_its_ttl_after_its_put() {
        let mut m = ExpiringMap::new(4, TTL);
        m.put("a".to_owned(), 1, T(10));
        assert_eq!(m.get("a", T(10)), Some(&1));
        assert_eq!(m.get("a", T(309)), Some(&1));
        assert_eq!(m.get("a", T(310)), None);
        assert_eq!(m.get("b", T(10)), None);
        // Put again, it lives from the new put.
        m.put("a".to_owned(), 2, T(200));
        assert_eq!(m.get("a", T(499)), Some(&2));
        assert_eq!(m.get("a", T(500)), None);
    }

    #[test]
    fn zero_capacity_or_ttl_keeps_nothing() {
        let mut none = ExpiringMap::new(0, TTL);
        none.put(1, (), T(0));
        assert_eq!((none.len(), none.get(&1, T(0))), (0, None));
        let mut lapsed = ExpiringMap::new(4, Duration::ZERO);
        lapsed.put(1, (), T(0));
        assert_eq!((lapsed.len(), lapsed.get(&1, T(0))), (0, None));
    }

    #[test]
    fn a_full_map_drops_the_lapsed_entries_first_then_the_oldest() {
        let mut m = ExpiringMap::new(3, TTL);
        m.put(1, (), T(0));
        m.put(2, (), T(100));
        m.put(3, (), T(200));
        // Full, nothing lapsed: the oldest (1) makes room.
        m.put(4, (), T(250));
        assert_eq!([1, 2, 3, 4].map(|k| m.get(&k, T(250)).is_some()), [false, true, true, true]);
        // At 520, 2 and 3 have lapsed: both go, 4 stays although the map had room after one.
        m.put(5, (), T(520));
        assert_eq!(m.len(), 2);
        assert_eq!([4, 5].map(|k| m.get(&k, T(520)).is_some()), [true, true]);
        // Lapsed entries go at any put, not only when the map is full.
        m.put(6, (), T(900));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_key_put_again_is_as_old_as_its_last_put() {
        let mut m = ExpiringMap::new(2, TTL);
        m.put("a", 1, T(0));
        m.put("b", 2, T(1));
        m.put("a", 3, T(2));
        // The full map makes room by dropping b, the oldest entry; a's first record is stale.
        m.put("c", 4, T(3));
        assert_eq!((m.get("a", T(3)), m.get("b", T(3)), m.get("c", T(3))), (Some(&3), None, Some(&4)));
        m.put("d", 5, T(4));
        assert_eq!((m.get("a", T(4)), m.get("c", T(4)), m.get("d", T(4))), (None, Some(&4), Some(&5)));
    }

    #[test]
    fn keys_put_again_and_again_leave_a_bounded_queue() {
        let mut m = ExpiringMap::new(8, TTL);
        // The oldest entry stays live, so the stale records behind it never reach the front:
        // only the pass over the queue drops them.
        m.put(99, 0, T(0));
        for i in 1..10_000 {
            m.put(i % 3, i, T(1));
            assert!(m.order.len() < m.len() + 8, "{} records for {} entries", m.order.len(), m.len());
        }
        assert_eq!((m.get(&99, T(1)), m.get(&0, T(1)), m.len()), (Some(&0), Some(&9_999), 4));
    }

    #[test]
    fn a_zero_bound_or_lifetime_set_later_drops_what_was_kept() {
        let mut m = ExpiringMap::new(4, TTL);
        m.put(1, (), T(0));
        m.set_capacity(0);
        m.put(2, (), T(1));
        assert_eq!((m.len(), m.order.len()), (0, 0));
        m.set_capacity(4);
        m.put(3, (), T(2));
        m.set_ttl(Duration::ZERO);
        assert_eq!(m.get(&3, T(2)), None);
        m.put(3, (), T(2));
        assert_eq!((m.len(), m.order.len()), (0, 0));
    }

    #[test]
    fn a_smaller_bound_makes_room_down_to_it_at_the_next_new_key() {
        let mut m = ExpiringMap::new(4, TTL);
        for k in 0..4 {
            m.put(k, (), T(k));
        }
        m.set_capacity(2);
        m.put(4, (), T(4));
        assert_eq!(m.len(), 2);
        assert_eq!([2, 3, 4].map(|k| m.get(&k, T(4)).is_some()), [false, true, true]);
    }

    /// The cost this map exists for: a put into a full map of live entries looks at its oldest
    /// entry, not at all of them (the caches it replaced computed every entry's age, and read a
    /// clock for each, under their lock).
    #[test]
    fn a_put_into_a_full_map_computes_a_few_ages_not_one_per_entry() {
        let mut m = ExpiringMap::new(1_024, TTL);
        for i in 0..1_024 {
            m.put(i, (), T(0));
        }
        for i in 1_024..3_072 {
            let before = ages();
            m.put(i, (), T(1));
            assert!(ages() - before <= 2, "a put computed {} ages", ages() - before);
        }
        assert_eq!(m.len(), 1_024);
        assert!(m.get(&2_047, T(1)).is_none() && m.get(&2_048, T(1)).is_some());
    }
}

//! A bounded cache of verified bearer tokens: an integration sends the same runtime token with
//! every lookup, and verifying it each time (two base64 decodes, two JSON parses, an HMAC or an
//! RSA/ECDSA check) is work that a hash-map hit skips.
//!
//! Keyed by the SHA-256 of the whole token, so a hit is that exact token, signature included,
//! verified before; it answers the principal that verification produced. An entry lives until
//! the token's `exp` (without [`super::CLOCK_SKEW`]: a token in its leeway is verified every
//! time, never cached) or [`MAX_AGE`] after it was verified, whichever comes first. Refusals are
//! never cached: a refused token is verified (and refused) again on every request. Tokens carry
//! no revocation in Latchkey; for issuer tokens, [`MAX_AGE`] bounds how long a token signed by a
//! key that left the issuer's set stays accepted beyond the key set's own cache
//! ([`super::KEYS_MAX_AGE`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::{CustomerId, OrgId, Principal};

/// How long a verified token is answered from the cache at most, whatever its `exp`.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// The most tokens kept (all shards together).
pub const CAPACITY: usize = 4_096;
/// Independent locks, so that concurrent requests on many cores rarely meet.
const SHARDS: usize = 16;

struct Entry {
    org: OrgId,
    customer: Option<CustomerId>,
    roles: Vec<String>,
    /// Answered while the time (seconds since the Unix epoch) is before this.
    until: u64,
}

/// Verified tokens by SHA-256, with the principal each one verified to.
pub(super) struct VerifiedTokens {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry>>>,
    per_shard: usize,
    max_age: u64,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0: nothing is cached), each kept `max_age` at most.
    pub(super) fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            max_age: max_age.as_secs(),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.shards[usize::from(key[0]) % SHARDS].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of `token`.
    pub(super) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The principal `key`'s token verified to, if it was verified and `now` (seconds since the
    /// Unix epoch) is before its `exp` and within [`MAX_AGE`] of its verification.
    pub(super) fn get(&self, key: &[u8; 32], now: u64) -> Option<Principal> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(e) if now < e.until => {
                Some(Principal { org: e.org.clone(), customer: e.customer.clone(), roles: e.roles.clone() })
            }
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers that `key`'s token, whose `exp` is `exp`, verified at `now` to `principal`.
    /// A token already at or past its `exp` (accepted within the clock skew) is not kept.
    pub(super) fn put(&self, key: [u8; 32], principal: &Principal, exp: u64, now: u64) {
        let until = exp.min(now.saturating_add(self.max_age));
        if until <= now || self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| now < e.until);
            if shard.len() >= self.per_shard {
                // Any one: keys are hashes, so this is an arbitrary token, never a chosen one.
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        let entry = Entry {
            org: principal.org.clone(),
            customer: principal.customer.clone(),
            roles: principal.roles.clone(),
            until,
        };
        shard.insert(key, entry);
    }

    /// How many tokens are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(org: &str, customer: Option<&str>) -> Principal {
        Principal {
            org: OrgId::parse(org).unwrap(),
            customer: customer.map(|c| CustomerId::parse(c).unwrap()),
            roles: vec!["runtime".into()],
        }
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_cached_token_answers_its_own_principal_until_its_exp_and_no_later() {
        let cache = VerifiedTokens::new(CAPACITY, MAX_AGE);
        let (a, b) = (VerifiedTokens::key("token-of-acme"), VerifiedTokens::key("token-of-umbrella"));
        assert!(cache.get(&a, NOW).is_none(), "nothing verified yet");
        cache.put(a, &principal("acme", Some("c-1")), NOW + 30, NOW);
        let hit = cache.get(&a, NOW + 29).expect("before exp");
        assert_eq!((hit.org.as_str(), hit.customer.as_ref().map(CustomerId::as_str)), ("acme", Some("c-1")));
        assert!(hit.is_runtime());
        assert!(cache.get(&b, NOW).is_none(), "another token (another organization's) is not a hit");
        cache.put(b, &principal("umbrella", None), NOW + 30, NOW);
        assert_eq!(cache.get(&b, NOW).unwrap().org.as_str(), "umbrella");
        assert_eq!(cache.get(&a, NOW).unwrap().org.as_str(), "acme");
        assert!(cache.get(&a, NOW + 30).is_none(), "at exp the token is verified again");
        assert!(cache.get(&a, NOW + 29).is_none(), "and an expired entry is gone");
    }

    #[test]
    fn an_entry_lives_max_age_at_most_and_a_token_in_its_leeway_is_never_kept() {
        let cache = VerifiedTokens::new(CAPACITY, MAX_AGE);
        let long = VerifiedTokens::key("twelve-hour-token");
        cache.put(long, &principal("acme", None), NOW + 12 * 3600, NOW);
        assert!(cache.get(&long, NOW + MAX_AGE.as_secs() - 1).is_some());
        assert!(cache.get(&long, NOW + MAX_AGE.as_secs()).is_none());
        let lapsed = VerifiedTokens::key("accepted-within-the-clock-skew");
        cache.put(lapsed, &principal("acme", None), NOW - 5, NOW);
        cache.put(lapsed, &principal("acme", None), NOW, NOW);
        assert!(cache.get(&lapsed, NOW).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = VerifiedTokens::new(64, MAX_AGE);
        for i in 0..1_000 {
            cache.put(VerifiedTokens::key(&format!("token-{i}")), &principal("acme", None), NOW + 600, NOW);
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        let none = VerifiedTokens::new(0, MAX_AGE);
        none.put(VerifiedTokens::key("t"), &principal("acme", None), NOW + 600, NOW);
        assert_eq!(none.len(), 0);
    }
}

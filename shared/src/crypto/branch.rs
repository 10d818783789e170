//! The key hierarchy (AWS's hierarchical keyring): each organization has a **branch key**,
//! generated and wrapped by the inner [`KeyProvider`] (KMS `GenerateDataKey`, or the local
//! master key) under the encryption context `{org, purpose: "branch-key"}`, stored wrapped in a
//! [`BranchKeyStore`] and cached unwrapped for minutes. A record's data key is still its own,
//! fresh and random, but wrapped *locally* (AES-256-GCM) under the org's active branch key with
//! the record's encryption context as associated data. So a cold process pays one KMS `Decrypt`
//! per organization it touches, not one per record, and a sealed value copied onto another
//! record still fails to open (the context is the AEAD's associated data, twice over).
//!
//! Data keys wrapped this way carry the key id `branch:v{version}` (the org is the context's).
//! Every other key id goes to the inner provider unchanged: records sealed before the hierarchy
//! stay readable and are re-wrapped whenever they are written again (every seal takes a new
//! data key from here). Contexts naming an organization only (a webhook's signing secret, an
//! idempotency record's body hash) also go to the inner provider: the roles that open those
//! alone (webhook-deliver) must never hold a key that opens a connection's secrets.
//!
//! Rotation ([`BranchKeyring::rotate`]) stores the next version, which becomes the active one;
//! older versions stay readable, so nothing sealed has to be re-entered or rewritten.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{CryptoError, DataKey, EncryptionContext, ExpiringMap, KeyProvider, PlainKey, aead_open, aead_seal};
use crate::domain::OrgId;
use crate::ports::{BranchKeyRecord, BranchKeyStore, Clock, StoreError, SystemClock};

/// The `purpose` of a branch key's encryption context at the inner provider.
pub const BRANCH_KEY_PURPOSE: &str = "branch-key";
/// How long an unwrapped branch key (and which version is active) stays cached by default.
pub const BRANCH_CACHE_TTL: Duration = Duration::from_secs(300);
/// How many unwrapped branch keys (org and version) are cached at most by default: 32 bytes of
/// key each, a few MiB at this bound with the org names, the maps and their queues of puts.
pub const BRANCH_CACHE_CAPACITY: usize = 10_000;

/// Lock stripes for loading branch keys: concurrent misses of one org wait for one load (one
/// KMS call), while different orgs mostly load in parallel.
const LOAD_STRIPES: usize = 64;

/// A lock stripe for loading branch keys, and what the last load under it found. A load that
/// found the key provider (or the branch key store) unavailable fails the loads that were
/// waiting for it, of whatever org of the stripe: KMS and the table serve every org alike.
/// Without that each waiter, given the lock in turn, tried again and waited its own operation
/// timeout: with KMS hung, the 12th of 12 refreshes of one org failed after 12 timeouts one
/// after another (a minute) instead of one (5 s), past its sweep's deadline.
#[derive(Default)]
struct LoadStripe {
    lock: tokio::sync::Mutex<()>,
    /// Loads finished under the lock (a generation: read before waiting, compared after).
    loads: AtomicU64,
    /// Whether the last of them found the provider unavailable.
    unavailable: AtomicBool,
}

impl LoadStripe {
    /// `Err` when a load finished since `seen` (this caller's [`LoadStripe::loads`] before it
    /// began to wait) and found the provider unavailable: its waiters fail with it rather than
    /// each trying again. A caller that comes after that failure tries again itself, and a
    /// success since then lets the waiters try. Called under the lock.
    fn shared_failure(&self, seen: u64) -> Result<(), CryptoError> {
        if self.loads.load(Ordering::SeqCst) > seen && self.unavailable.load(Ordering::SeqCst) {
            return Err(CryptoError::Unavailable(
                "the key provider was unavailable to a branch key load this call waited for".into(),
            ));
        }
        Ok(())
    }

    /// Counts a finished load and keeps whether it found the provider unavailable. Called
    /// under the lock.
    fn finished<T>(&self, outcome: &Result<T, CryptoError>) {
        self.unavailable.store(matches!(outcome, Err(CryptoError::Unavailable(_))), Ordering::SeqCst);
        self.loads.fetch_add(1, Ordering::SeqCst);
    }
}

/// The key id of data keys wrapped under version `version` of their org's branch key.
pub fn branch_key_id(version: u32) -> String {
    format!("branch:v{version}")
}

/// The version a `branch:v{n}` key id names; `None` for any other key id (the inner provider's).
pub fn parse_branch_key_id(key_id: &str) -> Option<u32> {
    key_id.strip_prefix("branch:v")?.parse().ok().filter(|v| *v > 0)
}

/// The inner provider's encryption context of `org`'s branch keys: `{org, purpose}`.
pub fn branch_key_context(org: &OrgId) -> EncryptionContext {
    EncryptionContext(
        [("org".to_owned(), org.to_string()), ("purpose".to_owned(), BRANCH_KEY_PURPOSE.to_owned())].into(),
    )
}

/// A [`KeyProvider`] that wraps data keys under per-organization branch keys (module docs).
/// `Envelope::new(Arc::new(BranchKeyring::new(inner, store)))` is all a caller changes.
pub struct BranchKeyring {
    inner: Arc<dyn KeyProvider>,
    store: Arc<dyn BranchKeyStore>,
    clock: Arc<dyn Clock>,
    cache: Mutex<BranchCache>,
    loading: Vec<LoadStripe>,
}

/// Unwrapped branch keys by (org, version), and each org's active version, both expiring
/// after the cache's ttl and bounded by its capacity each ([`ExpiringMap`]).
struct BranchCache {
    keys: ExpiringMap<(String, u32), PlainKey, Instant>,
    active: ExpiringMap<String, u32, Instant>,
}

impl BranchCache {
    fn key(&self, org: &OrgId, version: u32) -> Option<PlainKey> {
        self.keys.get(&(org.to_string(), version), Instant::now()).cloned()
    }

    fn active(&self, org: &OrgId) -> Option<(u32, PlainKey)> {
        let version = *self.active.get(org.as_str(), Instant::now())?;
        self.key(org, version).map(|k| (version, k))
    }

    fn put(&mut self, org: &OrgId, version: u32, key: PlainKey, active: bool) {
        let now = Instant::now();
        self.keys.put((org.to_string(), version), key, now);
        if active {
            self.active.put(org.to_string(), version, now);
        }
    }
}

fn store_failure(e: StoreError) -> CryptoError {
    match e {
        StoreError::Unavailable(source) => CryptoError::Unavailable(source),
        other => CryptoError::Provider(Box::new(other)),
    }
}

/// The org of a context the hierarchy serves: one that names a connection or a definition.
/// `None` for an org-only context (left to the inner provider) or one without an org.
fn branch_org(ctx: &EncryptionContext) -> Option<Result<OrgId, CryptoError>> {
    let mut org = None;
    let mut record = false;
    for (k, v) in ctx.pairs() {
        match k {
            "org" => org = Some(v),
            "connection_id" | "definition" => record = true,
            _ => {}
        }
    }
    let org = org.filter(|_| record)?;
    Some(OrgId::parse(org).map_err(|_| CryptoError::Decrypt))
}

impl BranchKeyring {
    /// Branch keys from `inner`, stored in `store`, cached [`BRANCH_CACHE_TTL`] (at most
    /// [`BRANCH_CACHE_CAPACITY`] of them).
    pub fn new(inner: Arc<dyn KeyProvider>, store: Arc<dyn BranchKeyStore>) -> Self {
        Self {
            inner,
            store,
            clock: Arc::new(SystemClock),
            cache: Mutex::new(BranchCache {
                keys: ExpiringMap::new(BRANCH_CACHE_CAPACITY, BRANCH_CACHE_TTL),
                active: ExpiringMap::new(BRANCH_CACHE_CAPACITY, BRANCH_CACHE_TTL),
            }),
            loading: (0..LOAD_STRIPES).map(|_| LoadStripe::default()).collect(),
        }
    }

    /// How long unwrapped branch keys stay cached (and how soon this process sees another's
    /// rotation); zero disables the cache.
    pub fn with_cache_ttl(self, ttl: Duration) -> Self {
        let mut cache = self.cache();
        cache.keys.set_ttl(ttl);
        cache.active.set_ttl(ttl);
        drop(cache);
        self
    }

    /// How many branch keys stay cached at most; zero disables the cache.
    pub fn with_cache_capacity(self, capacity: usize) -> Self {
        let mut cache = self.cache();
        cache.keys.set_capacity(capacity);
        cache.active.set_capacity(capacity);
        drop(cache);
        self
    }

    /// The clock that stamps new branch keys' `created_at` (the system clock by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BranchCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stripe(&self, org: &OrgId) -> &LoadStripe {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        org.as_str().hash(&mut h);
        &self.loading[(h.finish() % LOAD_STRIPES as u64) as usize]
    }

    /// Stores version `version` of `org`'s branch key, new from the inner provider, and caches
    /// it as the active one. If another process stored that version first, theirs is read and
    /// used instead (the put is conditional).
    async fn create(&self, org: &OrgId, version: u32) -> Result<(u32, PlainKey), CryptoError> {
        let ctx = branch_key_context(org);
        let dk = self.inner.generate_data_key(&ctx).await?;
        let record = BranchKeyRecord {
            org: org.clone(),
            version,
            key_id: dk.key_id,
            wrapped: dk.wrapped,
            created_at: self.clock.now(),
        };
        match self.store.put_branch_key(&record).await {
            Ok(()) => {
                self.cache().put(org, version, dk.plaintext.clone(), true);
                Ok((version, dk.plaintext))
            }
            Err(StoreError::Conflict) => {
                let theirs = self.store.get_branch_key(org, version).await.map_err(store_failure)?;
                let theirs = theirs
                    .ok_or_else(|| CryptoError::Provider("a branch key put conflicted, yet is missing".into()))?;
                let key = self.unwrap(&theirs).await?;
                self.cache().put(org, version, key.clone(), true);
                Ok((version, key))
            }
            Err(e) => Err(store_failure(e)),
        }
    }

    async fn unwrap(&self, record: &BranchKeyRecord) -> Result<PlainKey, CryptoError> {
        self.inner.decrypt_data_key(&record.key_id, &record.wrapped, &branch_key_context(&record.org)).await
    }

    /// The active branch key of `org` and its version, created (version 1) on first use.
    async fn active_key(&self, org: &OrgId) -> Result<(u32, PlainKey), CryptoError> {
        if let Some(hit) = self.cache().active(org) {
            return Ok(hit);
        }
        let stripe = self.stripe(org);
        let seen = stripe.loads.load(Ordering::SeqCst);
        let _loading = stripe.lock.lock().await;
        if let Some(hit) = self.cache().active(org) {
            return Ok(hit);
        }
        stripe.shared_failure(seen)?;
        let loaded = self.load_active_key(org).await;
        stripe.finished(&loaded);
        loaded
    }

    /// [`BranchKeyring::active_key`]'s load, under its stripe's lock: the store's record,
    /// unwrapped (or created).
    async fn load_active_key(&self, org: &OrgId) -> Result<(u32, PlainKey), CryptoError> {
        match self.store.active_branch_key(org).await.map_err(store_failure)? {
            None => self.create(org, 1).await,
            Some(record) => {
                let cached = self.cache().key(org, record.version);
                let key = match cached {
                    Some(k) => k,
                    None => self.unwrap(&record).await?,
                };
                self.cache().put(org, record.version, key.clone(), true);
                Ok((record.version, key))
            }
        }
    }

    /// Version `version` of `org`'s branch key; `Decrypt` if there is none.
    async fn key(&self, org: &OrgId, version: u32) -> Result<PlainKey, CryptoError> {
        if let Some(hit) = self.cache().key(org, version) {
            return Ok(hit);
        }
        let stripe = self.stripe(org);
        let seen = stripe.loads.load(Ordering::SeqCst);
        let _loading = stripe.lock.lock().await;
        if let Some(hit) = self.cache().key(org, version) {
            return Ok(hit);
        }
        stripe.shared_failure(seen)?;
        let loaded = self.load_key(org, version).await;
        stripe.finished(&loaded);
        loaded
    }

    /// [`BranchKeyring::key`]'s load, under its stripe's lock: the store's record, unwrapped.
    async fn load_key(&self, org: &OrgId, version: u32) -> Result<PlainKey, CryptoError> {
        let record = self.store.get_branch_key(org, version).await.map_err(store_failure)?;
        let key = self.unwrap(&record.ok_or(CryptoError::Decrypt)?).await?;
        self.cache().put(org, version, key.clone(), false);
        Ok(key)
    }

    /// Rotates `org`'s branch key: stores the next version (1 if it had none), new from the
    /// inner provider, which becomes the active one; returns its version. Records sealed under
    /// older versions stay readable (those versions are kept), and are re-wrapped under the
    /// new one whenever they are written again. Other processes start using the new version
    /// when their cached active version expires (the cache TTL, 5 minutes by default). Of two
    /// concurrent rotations of one org, both return the one version stored.
    ///
    /// # Errors
    /// The store or the inner provider failed ([`CryptoError::Unavailable`] when retrying
    /// may succeed).
    pub async fn rotate(&self, org: &OrgId) -> Result<u32, CryptoError> {
        let stripe = self.stripe(org);
        let _loading = stripe.lock.lock().await;
        let rotated = async {
            let current = self.store.active_branch_key(org).await.map_err(store_failure)?;
            let next = current.map_or(1, |r| r.version + 1);
            self.create(org, next).await.map(|(version, _)| version)
        }
        .await;
        stripe.finished(&rotated);
        rotated
    }
}

#[async_trait]
impl KeyProvider for BranchKeyring {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        let Some(org) = branch_org(ctx) else {
            return self.inner.generate_data_key(ctx).await;
        };
        let (version, branch) = self.active_key(&org?).await?;
        let plaintext = PlainKey::generate();
        let wrapped = aead_seal(&branch, plaintext.expose(), &ctx.aad());
        Ok(DataKey { plaintext, wrapped, key_id: branch_key_id(version) })
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        let Some(version) = parse_branch_key_id(key_id) else {
            return self.inner.decrypt_data_key(key_id, wrapped, ctx).await;
        };
        let org = branch_org(ctx).ok_or(CryptoError::Decrypt)??;
        let branch = self.key(&org, version).await?;
        let bytes = aead_open(&branch, wrapped, &ctx.aad())?;
        PlainKey::try_from_slice(&bytes).ok_or(CryptoError::Decrypt)
    }
}

#[cfg(all(test, feature = "embedded"))]
#[path = "branch_tests.rs"]
mod tests;

//! Tests of the key hierarchy (`super`): one KMS-like call per org and version, shared
//! failures of concurrent loads, rotation, the cache's lifetime and capacity.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::adapters::{LocalKeyProvider, SqliteStore};
use crate::crypto::Envelope;
use crate::domain::ConnectionId;

/// The local master key, counting what reaches it (KMS calls, on AWS); while `hung`, each
/// `Decrypt` waits 200 ms and fails as a KMS that did not answer does.
struct Counting {
    inner: LocalKeyProvider,
    generated: AtomicUsize,
    decrypted: AtomicUsize,
    hung: std::sync::atomic::AtomicBool,
}

impl Counting {
    fn counts(&self) -> (usize, usize) {
        (self.generated.load(Ordering::SeqCst), self.decrypted.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl KeyProvider for Counting {
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
        self.generated.fetch_add(1, Ordering::SeqCst);
        self.inner.generate_data_key(ctx).await
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError> {
        self.decrypted.fetch_add(1, Ordering::SeqCst);
        if self.hung.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(CryptoError::Unavailable("operation timed out".into()));
        }
        self.inner.decrypt_data_key(key_id, wrapped, ctx).await
    }
}

struct Fixture {
    master: Arc<Counting>,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inner = LocalKeyProvider::open_or_create(dir.path()).unwrap();
        let master = Arc::new(Counting {
            inner,
            generated: AtomicUsize::new(0),
            decrypted: AtomicUsize::new(0),
            hung: Default::default(),
        });
        let store = Arc::new(SqliteStore::open(&dir.path().join("latchkey.db")).unwrap());
        Self { master, store, _dir: dir }
    }

    /// A keyring with empty caches over the same store and master key: another container.
    fn keyring(&self) -> BranchKeyring {
        BranchKeyring::new(self.master.clone(), self.store.clone())
    }
}

fn record(org: &OrgId) -> EncryptionContext {
    EncryptionContext::connection(org, &ConnectionId::generate())
}

fn org(name: &str) -> OrgId {
    OrgId::parse(name).unwrap()
}

#[tokio::test]
async fn the_master_key_is_used_once_per_org_not_once_per_record() {
    let f = Fixture::new();
    // No data-key cache in the envelope: every open reaches the keyring.
    let writer = Envelope::with_cache(Arc::new(f.keyring()), 0, Duration::ZERO);
    let mut sealed = Vec::new();
    for (i, org) in ["acme", "acme", "acme", "globex", "globex"].into_iter().map(org).enumerate() {
        let ctx = record(&org);
        sealed.push((ctx.clone(), writer.seal(&ctx, format!("sk_{i}").as_bytes()).await.unwrap(), i));
    }
    assert_eq!(f.master.counts(), (2, 0), "one branch key generated per org, no data key per record");
    assert!(sealed.iter().all(|(_, s, _)| s.key_id == "branch:v1"));

    let reader = Envelope::with_cache(Arc::new(f.keyring()), 0, Duration::ZERO);
    for (ctx, s, i) in &sealed {
        assert_eq!(reader.open(ctx, s).await.unwrap().as_slice(), format!("sk_{i}").as_bytes());
    }
    assert_eq!(f.master.counts(), (2, 2), "a cold reader unwraps each org's branch key once");
}

#[tokio::test]
async fn org_only_contexts_are_left_to_the_master_key() {
    let f = Fixture::new();
    let keys = f.keyring();
    let ctx = EncryptionContext::organization(&org("acme"));
    let dk = keys.generate_data_key(&ctx).await.unwrap();
    assert_eq!(dk.key_id, f.master.inner.key_id(), "a webhook secret or a request hash: the master key's own");
    assert_eq!(f.master.counts(), (1, 0));
    keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &ctx).await.unwrap();
    assert!(f.store.active_branch_key(&org("acme")).await.unwrap().is_none(), "no branch key was made");
}

#[tokio::test]
async fn a_branch_wrapped_key_opens_only_under_its_own_context_and_version() {
    let f = Fixture::new();
    let keys = f.keyring();
    let acme = record(&org("acme"));
    let dk = keys.generate_data_key(&acme).await.unwrap();
    keys.generate_data_key(&record(&org("globex"))).await.unwrap();
    let refused = |ctx: EncryptionContext, key_id: &'static str| {
        let (keys, wrapped) = (&keys, dk.wrapped.clone());
        async move { matches!(keys.decrypt_data_key(key_id, &wrapped, &ctx).await, Err(CryptoError::Decrypt)) }
    };
    assert!(refused(record(&org("acme")), "branch:v1").await, "another record of the org");
    assert!(refused(record(&org("globex")), "branch:v1").await, "another org");
    assert!(refused(EncryptionContext::organization(&org("acme")), "branch:v1").await, "an org-only context");
    assert!(refused(acme.clone(), "branch:v2").await, "a version that does not exist");
    let back = keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &acme).await.unwrap();
    assert_eq!(back.expose(), dk.plaintext.expose());
}

#[tokio::test]
async fn concurrent_first_uses_make_one_branch_key() {
    let f = Fixture::new();
    let one = Arc::new(f.keyring());
    let acme = org("acme");
    let seals: Vec<_> = (0..16)
        .map(|_| {
            let (keys, ctx) = (one.clone(), record(&acme));
            tokio::spawn(async move { keys.generate_data_key(&ctx).await.map(|d| d.key_id) })
        })
        .collect();
    for s in seals {
        assert_eq!(s.await.unwrap().unwrap(), "branch:v1");
    }
    assert_eq!(f.master.counts(), (1, 0), "concurrent misses of one org wait for one load");

    // Two cold containers racing over one store: one put wins, the other adopts its key.
    let globex = org("globex");
    let (a, b) = (f.keyring(), f.keyring());
    let (ca, cb) = (record(&globex), record(&globex));
    let (da, db) = tokio::join!(a.generate_data_key(&ca), b.generate_data_key(&cb));
    let (da, db) = (da.unwrap(), db.unwrap());
    assert_eq!((da.key_id.as_str(), db.key_id.as_str()), ("branch:v1", "branch:v1"));
    let reader = f.keyring();
    assert_eq!(reader.decrypt_data_key(&da.key_id, &da.wrapped, &ca).await.unwrap().expose(), da.plaintext.expose());
    assert_eq!(reader.decrypt_data_key(&db.key_id, &db.wrapped, &cb).await.unwrap().expose(), db.plaintext.expose());
}

/// Concurrent misses of one org behind a load that finds the master key unavailable fail
/// with it: one KMS call and one wait, not one each in turn (12 refreshes of an org with
/// KMS hung took 12 operation timeouts one after another). A call after that failure tries
/// again, and succeeds once KMS answers.
#[tokio::test]
async fn waiters_share_a_load_that_found_the_master_key_unavailable() {
    let f = Fixture::new();
    let acme = record(&org("acme"));
    let dk = f.keyring().generate_data_key(&acme).await.unwrap();
    let cold = Arc::new(f.keyring());
    f.master.hung.store(true, Ordering::SeqCst);
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let (keys, ctx, wrapped) = (cold.clone(), acme.clone(), dk.wrapped.clone());
            tokio::spawn(async move { keys.decrypt_data_key("branch:v1", &wrapped, &ctx).await })
        })
        .collect();
    for open in opens {
        let failed = open.await.unwrap();
        assert!(matches!(failed, Err(CryptoError::Unavailable(_))), "{:?}", failed.map(|_| ()));
    }
    assert_eq!(f.master.counts(), (1, 1), "one Decrypt for the eight who waited");

    // After the failure: tried again (and failed again while KMS hangs), then opened.
    assert!(matches!(cold.decrypt_data_key("branch:v1", &dk.wrapped, &acme).await, Err(CryptoError::Unavailable(_))));
    f.master.hung.store(false, Ordering::SeqCst);
    let back = cold.decrypt_data_key("branch:v1", &dk.wrapped, &acme).await.unwrap();
    assert_eq!(back.expose(), dk.plaintext.expose());
    assert_eq!(f.master.counts(), (1, 3));
}

/// Two orgs whose loads share a stripe, waiting in turn (A, B, A, B...) behind a hung
/// Decrypt: one call for all of them. Remembering the failure per org let each waiter of
/// the other org try again, one timeout after another.
#[tokio::test]
async fn waiters_of_two_orgs_of_one_stripe_share_the_failure() {
    let f = Fixture::new();
    let cold = Arc::new(f.keyring());
    let acme = org("acme");
    let other = (0..)
        .map(|i| org(&format!("org-{i}")))
        .find(|o| std::ptr::eq(cold.stripe(o), cold.stripe(&acme)))
        .expect("an org of acme's stripe");
    let (a, b) = (record(&acme), record(&other));
    let (da, db) = (f.keyring().generate_data_key(&a).await.unwrap(), f.keyring().generate_data_key(&b).await.unwrap());
    f.master.hung.store(true, Ordering::SeqCst);
    let opens: Vec<_> = (0..8)
        .map(|i| {
            let (ctx, wrapped) =
                if i % 2 == 0 { (a.clone(), da.wrapped.clone()) } else { (b.clone(), db.wrapped.clone()) };
            let keys = cold.clone();
            tokio::spawn(async move { keys.decrypt_data_key("branch:v1", &wrapped, &ctx).await })
        })
        .collect();
    for open in opens {
        assert!(matches!(open.await.unwrap(), Err(CryptoError::Unavailable(_))));
    }
    assert_eq!(f.master.counts(), (2, 1), "one Decrypt for both orgs' waiters");
}

#[tokio::test]
async fn the_cache_lapses_after_its_ttl_and_holds_at_most_its_capacity() {
    let f = Fixture::new();
    let acme = record(&org("acme"));
    let dk = f.keyring().generate_data_key(&acme).await.unwrap();
    let base = f.master.counts();

    let uncached = f.keyring().with_cache_ttl(Duration::ZERO);
    for _ in 0..3 {
        uncached.decrypt_data_key(&dk.key_id, &dk.wrapped, &acme).await.unwrap();
    }
    assert_eq!(f.master.counts().1 - base.1, 3, "a zero TTL caches nothing");

    let small = f.keyring().with_cache_capacity(1);
    small.decrypt_data_key(&dk.key_id, &dk.wrapped, &acme).await.unwrap();
    small.decrypt_data_key(&dk.key_id, &dk.wrapped, &acme).await.unwrap();
    assert_eq!(f.master.counts().1 - base.1, 4, "a hit");
    small.generate_data_key(&record(&org("globex"))).await.unwrap();
    small.decrypt_data_key(&dk.key_id, &dk.wrapped, &acme).await.unwrap();
    assert_eq!(f.master.counts().1 - base.1, 5, "globex's key took the only place: acme's is unwrapped again");
}

#[tokio::test]
async fn rotation_seals_under_the_next_version_and_keeps_the_old_ones() {
    let f = Fixture::new();
    let keys = f.keyring();
    let acme = org("acme");
    assert_eq!(keys.rotate(&acme).await.unwrap(), 1, "an org without a branch key gets its first");
    let ctx = record(&acme);
    let v1 = keys.generate_data_key(&ctx).await.unwrap();
    assert_eq!(v1.key_id, "branch:v1");
    assert_eq!(keys.rotate(&acme).await.unwrap(), 2);
    let v2 = keys.generate_data_key(&ctx).await.unwrap();
    assert_eq!(v2.key_id, "branch:v2", "the rotating process uses the new version at once");

    let cold = f.keyring();
    for dk in [&v1, &v2] {
        assert_eq!(cold.decrypt_data_key(&dk.key_id, &dk.wrapped, &ctx).await.unwrap().expose(), dk.plaintext.expose());
    }
    assert_eq!(cold.generate_data_key(&ctx).await.unwrap().key_id, "branch:v2");
    let stored = f.store.active_branch_key(&acme).await.unwrap().unwrap();
    assert_eq!(stored.key_id, f.master.inner.key_id(), "wrapped by the master key");
    assert!(!stored.wrapped.windows(32).any(|w| w == v2.plaintext.expose()));
}

#[test]
fn branch_key_ids_name_a_positive_version() {
    assert_eq!(parse_branch_key_id(&branch_key_id(12)), Some(12));
    for other in ["branch:v0", "branch:vx", "branch:", "local:4bb06f8e4e3a7715", "arn:aws:kms:eu-west-1:1:key/k"] {
        assert_eq!(parse_branch_key_id(other), None, "{other}");
    }
}

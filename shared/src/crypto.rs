//! Envelope encryption: every sealed record has its own data key from a [`KeyProvider`]
//! (KMS `GenerateDataKey`, or the local master key), and is encrypted with AES-256-GCM whose
//! associated data is the record's encryption context (`org`, `connection_id`). A ciphertext
//! copied onto another record fails twice over: the data key does not unwrap under the other
//! context, and the AEAD tag does not verify.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use zeroize::Zeroizing;

pub mod branch;
mod expiring;

pub use crate::domain::Sealed;
use crate::domain::{ConnectionId, DefinitionKey, OrgId};
use crate::ports::BackendError;
pub use branch::BranchKeyring;
use expiring::ExpiringMap;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Wrong key, wrong context, or tampered data. Deliberately says nothing more.
    #[error("decryption failed")]
    Decrypt,
    #[error("the key provider failed")]
    Provider(#[source] BackendError),
    /// The key provider did not answer in time, could not be reached, or throttled past the
    /// retries: the same request may succeed shortly.
    #[error("the key provider is unavailable")]
    Unavailable(#[source] BackendError),
    /// Opened fine, but not the form that was sealed (JSON of another shape, text that is not
    /// UTF-8): a bug or a foreign record, never a wrong key.
    #[error("the opened secret is not in the expected form")]
    Format,
}

/// The key-management seam, shaped like KMS `GenerateDataKey` / `Decrypt`: a data key is
/// returned in plaintext and wrapped under a master key, bound to an encryption context.
#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// A fresh 256-bit data key, plus its wrapped form to store beside the ciphertext.
    async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError>;
    /// Unwraps a data key; fails unless `ctx` is exactly the one it was generated with.
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        wrapped: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<PlainKey, CryptoError>;
}

/// The non-secret values a sealed record is bound to. KMS logs it to CloudTrail, so it holds
/// identifiers only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The context of a connection's secrets.
    pub fn connection(org: &OrgId, id: &ConnectionId) -> Self {
        Self(BTreeMap::from([("org".to_owned(), org.to_string()), ("connection_id".to_owned(), id.to_string())]))
    }

    /// The context of an organization's sealed values that belong to no connection or
    /// definition (an idempotency record's request hash).
    pub fn organization(org: &OrgId) -> Self {
        Self(BTreeMap::from([("org".to_owned(), org.to_string())]))
    }

    /// The context of a definition's secret defaults.
    pub fn definition(org: &OrgId, key: &DefinitionKey) -> Self {
        Self(BTreeMap::from([("org".to_owned(), org.to_string()), ("definition".to_owned(), key.to_string())]))
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Canonical bytes (sorted-key JSON), the AEAD associated data.
    pub fn aad(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).unwrap_or_default()
    }
}

/// A plaintext 256-bit data key, wiped on drop, never printed.
#[derive(Clone)]
pub struct PlainKey(Zeroizing<[u8; 32]>);

impl PlainKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A new random key.
    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(OsRng);
        Self::from_bytes(key.into())
    }

    /// Builds a key from a slice, which must be 32 bytes.
    pub fn try_from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self::from_bytes)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.as_slice()))
    }
}

impl fmt::Debug for PlainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainKey([REDACTED])")
    }
}

/// What [`KeyProvider::generate_data_key`] returns.
pub struct DataKey {
    pub plaintext: PlainKey,
    /// The data key wrapped under the master key: safe to store.
    pub wrapped: Vec<u8>,
    /// The master key that wrapped it, kept for rotation.
    pub key_id: String,
}

/// AES-256-GCM encryption of `msg` with associated data; returns `nonce || ciphertext`.
pub fn aead_seal(key: &PlainKey, msg: &[u8], aad: &[u8]) -> Vec<u8> {
    seal_with(&key.cipher(), msg, aad)
}

/// [`aead_seal`] with the key's cipher already built.
fn seal_with(cipher: &Aes256Gcm, msg: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ct =
        cipher.encrypt(&nonce, Payload { msg, aad }).expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// The inverse of [`aead_seal`].
pub fn aead_open(key: &PlainKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_with(&key.cipher(), sealed, aad)
}

/// [`aead_open`] with the key's cipher already built.
fn open_with(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 12 + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

/// An unwrapped data key, as its AES-GCM cipher (the key schedule done once, not on every
/// open; shared by reference count, so a hit copies no key material), and the context it was
/// unwrapped under. The cipher's round keys are wiped when the last reference goes (`aes` with
/// its `zeroize` feature, checked below).
struct CachedKey {
    cipher: Arc<Aes256Gcm>,
    ctx: EncryptionContext,
}

// Compiles only while the AES key schedule is wiped on drop (the `zeroize` feature of `aes`,
// asked for in the workspace's `Cargo.toml`): the data-key cache keeps ciphers, not
// `PlainKey`s, and they must be wiped as a `PlainKey` is.
const _: () = {
    const fn wiped<T: zeroize::ZeroizeOnDrop>() {}
    wiped::<aes_gcm::aes::Aes256>();
};

/// A bounded, TTL'd cache of unwrapped data keys, by wrapped key (a wrapped key is unique to
/// its data key). A hit must also match the context the key was unwrapped under: a lookup
/// under any other context is a miss and goes to the provider, which refuses it, so the cache
/// never skips the context check the provider makes. Keyed by the wrapped bytes alone, a
/// lookup borrows them and the context instead of building an owned key of both. Making room
/// costs the same whatever the capacity ([`ExpiringMap`]).
struct KeyCache(ExpiringMap<Vec<u8>, CachedKey, Instant>);

impl KeyCache {
    fn get(&self, wrapped: &[u8], ctx: &EncryptionContext) -> Option<Arc<Aes256Gcm>> {
        self.0.get(wrapped, Instant::now()).filter(|k| k.ctx == *ctx).map(|k| k.cipher.clone())
    }

    /// Keeps `key` under `wrapped`; both are built by the caller before it takes the lock.
    fn put(&mut self, wrapped: Vec<u8>, key: CachedKey) {
        self.0.put(wrapped, key, Instant::now());
    }
}

/// Seals and opens records with a fresh data key each, caching unwrapped data keys.
pub struct Envelope {
    keys: Arc<dyn KeyProvider>,
    cache: Mutex<KeyCache>,
}

/// Default bound and lifetime of the data-key cache.
pub const KEY_CACHE_CAPACITY: usize = 1_024;
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(300);

impl Envelope {
    pub fn new(keys: Arc<dyn KeyProvider>) -> Self {
        Self::with_cache(keys, KEY_CACHE_CAPACITY, KEY_CACHE_TTL)
    }

    pub fn with_cache(keys: Arc<dyn KeyProvider>, capacity: usize, ttl: Duration) -> Self {
        Self { keys, cache: Mutex::new(KeyCache(ExpiringMap::new(capacity, ttl))) }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seals `plaintext` under a new data key bound to `ctx`.
    pub async fn seal(&self, ctx: &EncryptionContext, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let dk = self.keys.generate_data_key(ctx).await?;
        let cipher = Arc::new(dk.plaintext.cipher());
        let ciphertext = seal_with(&cipher, plaintext, &ctx.aad());
        let cached = CachedKey { cipher, ctx: ctx.clone() };
        let wrapped = dk.wrapped.clone();
        self.cache().put(wrapped, cached);
        Ok(Sealed { key_id: dk.key_id, wrapped_key: dk.wrapped, ciphertext })
    }

    /// Opens a sealed record; fails if it was sealed for another context or tampered with.
    pub async fn open(&self, ctx: &EncryptionContext, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let cached = self.cache().get(&sealed.wrapped_key, ctx);
        let cipher = match cached {
            Some(cipher) => cipher,
            None => {
                let key = self.keys.decrypt_data_key(&sealed.key_id, &sealed.wrapped_key, ctx).await?;
                let cipher = Arc::new(key.cipher());
                let cached = CachedKey { cipher: cipher.clone(), ctx: ctx.clone() };
                let wrapped = sealed.wrapped_key.clone();
                self.cache().put(wrapped, cached);
                cipher
            }
        };
        // The caller's context as the associated data, not the cached one: a hit has matched
        // the context already, and the tag checks it again (the module's "twice over").
        open_with(&cipher, &sealed.ciphertext, &ctx.aad())
    }

    pub async fn seal_str(&self, ctx: &EncryptionContext, plaintext: &SecretString) -> Result<Sealed, CryptoError> {
        self.seal(ctx, plaintext.expose_secret().as_bytes()).await
    }

    pub async fn open_str(&self, ctx: &EncryptionContext, sealed: &Sealed) -> Result<SecretString, CryptoError> {
        let bytes = self.open(ctx, sealed).await?;
        let s = std::str::from_utf8(&bytes).map_err(|_| CryptoError::Format)?;
        Ok(SecretString::from(s.to_owned()))
    }

    /// Seals a value as JSON (the tokens of a connection, a revocation job's settings).
    pub async fn seal_json<T: Serialize>(&self, ctx: &EncryptionContext, value: &T) -> Result<Sealed, CryptoError> {
        let json = Zeroizing::new(serde_json::to_vec(value).map_err(|_| CryptoError::Format)?);
        self.seal(ctx, &json).await
    }

    /// Opens what [`Envelope::seal_json`] sealed.
    pub async fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        ctx: &EncryptionContext,
        sealed: &Sealed,
    ) -> Result<T, CryptoError> {
        let bytes = self.open(ctx, sealed).await?;
        serde_json::from_slice(&bytes).map_err(|_| CryptoError::Format)
    }

    /// Seals named secret values as one JSON object (a connection's `password` values, a
    /// definition's `password` defaults).
    pub async fn seal_secrets(
        &self,
        ctx: &EncryptionContext,
        secrets: &BTreeMap<String, SecretString>,
    ) -> Result<Sealed, CryptoError> {
        let map: BTreeMap<&str, &str> = secrets.iter().map(|(k, v)| (k.as_str(), v.expose_secret())).collect();
        self.seal_json(ctx, &map).await
    }

    /// Opens what [`Envelope::seal_secrets`] sealed.
    pub async fn open_secrets(
        &self,
        ctx: &EncryptionContext,
        sealed: &Sealed,
    ) -> Result<BTreeMap<String, SecretString>, CryptoError> {
        let map: BTreeMap<String, String> = self.open_json(ctx, sealed).await?;
        Ok(map.into_iter().map(|(k, v)| (k, SecretString::from(v))).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// On x86, `polyval` (aes-gcm's GHASH) picks CLMUL or its software backend at run time by
    /// default, and that union of backends is never dropped: the CLMUL one's key was never
    /// wiped. `.cargo/config.toml` builds the software backend alone (`--cfg
    /// polyval_force_soft`), which wipes on drop with the `zeroize` feature the workspace asks
    /// for. So `Polyval` must have drop glue: the run-time choice has none. Fails when the flag
    /// is lost (a `RUSTFLAGS` variable replaces the file's) or a `polyval` ignores it.
    #[test]
    fn the_ghash_key_is_wiped_on_drop() {
        assert!(
            std::mem::needs_drop::<polyval::Polyval>(),
            "polyval's GHASH backend does not wipe its key on drop: built without --cfg polyval_force_soft \
             (.cargo/config.toml; a RUSTFLAGS variable replaces it)?"
        );
    }

    /// A key provider wrapping data keys under its own master key with the context as
    /// associated data (so, like KMS, it unwraps only under the context it wrapped with),
    /// counting the data keys it unwraps.
    struct Counting {
        master: PlainKey,
        unwrapped: AtomicUsize,
    }

    #[async_trait]
    impl KeyProvider for Counting {
        async fn generate_data_key(&self, ctx: &EncryptionContext) -> Result<DataKey, CryptoError> {
            let plaintext = PlainKey::generate();
            let wrapped = aead_seal(&self.master, plaintext.expose(), &ctx.aad());
            Ok(DataKey { plaintext, wrapped, key_id: "counting".to_owned() })
        }
        async fn decrypt_data_key(
            &self,
            _: &str,
            wrapped: &[u8],
            ctx: &EncryptionContext,
        ) -> Result<PlainKey, CryptoError> {
            self.unwrapped.fetch_add(1, Ordering::SeqCst);
            let key = aead_open(&self.master, wrapped, &ctx.aad())?;
            PlainKey::try_from_slice(&key).ok_or(CryptoError::Decrypt)
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting { master: PlainKey::generate(), unwrapped: AtomicUsize::new(0) })
    }

    fn context(org: &str) -> EncryptionContext {
        EncryptionContext::connection(&OrgId::parse(org).unwrap(), &ConnectionId::generate())
    }

    #[tokio::test]
    async fn a_cached_key_opens_its_own_context_and_sends_any_other_to_the_provider() {
        let keys = counting();
        let env = Envelope::new(keys.clone());
        let (a, b) = (context("acme"), context("acme"));
        let sealed = env.seal(&a, b"sk_live_value").await.unwrap();
        for _ in 0..3 {
            assert_eq!(env.open(&a, &sealed).await.unwrap().as_slice(), b"sk_live_value");
        }
        assert_eq!(keys.unwrapped.load(Ordering::SeqCst), 0, "sealing cached the data key");
        assert!(matches!(env.open(&b, &sealed).await, Err(CryptoError::Decrypt)));
        assert_eq!(keys.unwrapped.load(Ordering::SeqCst), 1, "another context is a miss, refused by the provider");
        assert!(env.open(&a, &sealed).await.is_ok());
        assert_eq!(keys.unwrapped.load(Ordering::SeqCst), 1, "the refusal left the key cached for its own context");

        // A fresh envelope unwraps once, then answers from the cache.
        let reader = Envelope::new(keys.clone());
        for _ in 0..3 {
            assert!(reader.open(&a, &sealed).await.is_ok());
        }
        assert_eq!(keys.unwrapped.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn cached_keys_are_bounded_and_lapse() {
        let keys = counting();
        let writer = Envelope::with_cache(keys.clone(), 0, Duration::ZERO);
        let ctx = context("acme");
        let mut sealed = Vec::new();
        for i in 0..3u8 {
            sealed.push(writer.seal(&ctx, &[i]).await.unwrap());
        }
        let unwrapped = || keys.unwrapped.load(Ordering::SeqCst);

        let two = Envelope::with_cache(keys.clone(), 2, Duration::from_secs(300));
        for s in &sealed {
            assert!(two.open(&ctx, s).await.is_ok());
        }
        assert_eq!(unwrapped(), 3);
        assert_eq!(two.cache().0.len(), 2, "at most its capacity");
        assert!(two.open(&ctx, &sealed[2]).await.is_ok());
        assert_eq!(unwrapped(), 3, "the latest stayed");
        assert!(two.open(&ctx, &sealed[0]).await.is_ok());
        assert_eq!(unwrapped(), 4, "the oldest was pushed out");

        let lapsing = Envelope::with_cache(keys.clone(), 16, Duration::ZERO);
        assert!(lapsing.open(&ctx, &sealed[0]).await.is_ok());
        assert!(lapsing.open(&ctx, &sealed[0]).await.is_ok());
        assert_eq!(unwrapped(), 6, "a key past its lifetime is unwrapped again");
    }
}

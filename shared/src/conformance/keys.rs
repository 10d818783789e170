//! The key-provider and envelope cases ([`crate::crypto::KeyProvider`], [`Envelope`]): a
//! sealed value or data key opens only under its own context, tampering is detected, and the
//! data-key cache never skips the context check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::fresh_org;
use crate::crypto::{CryptoError, EncryptionContext, Envelope, KeyProvider};
use crate::domain::{ConnectionId, OrgId};

fn ctx(org: &OrgId) -> (EncryptionContext, ConnectionId) {
    let id = ConnectionId::generate();
    (EncryptionContext::connection(org, &id), id)
}

pub async fn sealed_values_open_only_under_their_context(keys: Arc<dyn KeyProvider>) {
    let env = Envelope::with_cache(keys, 0, Duration::ZERO);
    let org = fresh_org();
    let (a, _) = ctx(&org);
    let (b, _) = ctx(&org);
    let sealed = env.seal(&a, b"sk_live_secret").await.unwrap();
    assert_eq!(env.open(&a, &sealed).await.unwrap().as_slice(), b"sk_live_secret");
    assert!(!sealed.ciphertext.windows(14).any(|w| w == b"sk_live_secret"));
    assert!(matches!(env.open(&b, &sealed).await, Err(CryptoError::Decrypt)), "another record's context");
    let other_org = EncryptionContext::connection(&fresh_org(), &ConnectionId::generate());
    assert!(matches!(env.open(&other_org, &sealed).await, Err(CryptoError::Decrypt)));
}

pub async fn data_keys_unwrap_only_under_their_context(keys: Arc<dyn KeyProvider>) {
    let org = fresh_org();
    let (a, _) = ctx(&org);
    let (b, _) = ctx(&org);
    let dk = keys.generate_data_key(&a).await.unwrap();
    let back = keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &a).await.unwrap();
    assert_eq!(back.expose(), dk.plaintext.expose());
    assert!(keys.decrypt_data_key(&dk.key_id, &dk.wrapped, &b).await.is_err());
    let dk2 = keys.generate_data_key(&a).await.unwrap();
    assert_ne!(dk.plaintext.expose(), dk2.plaintext.expose(), "a fresh data key per record");
    assert!(!dk.wrapped.windows(32).any(|w| w == dk.plaintext.expose()), "the wrapped key hides the key");
}

pub async fn tampering_is_detected(keys: Arc<dyn KeyProvider>) {
    let env = Envelope::with_cache(keys, 0, Duration::ZERO);
    let (a, _) = ctx(&fresh_org());
    let sealed = env.seal(&a, b"value").await.unwrap();
    let mut flipped = sealed.clone();
    let last = flipped.ciphertext.len() - 1;
    flipped.ciphertext[last] ^= 1;
    assert!(env.open(&a, &flipped).await.is_err());
    let mut wrapped = sealed.clone();
    wrapped.wrapped_key[20] ^= 1;
    assert!(env.open(&a, &wrapped).await.is_err());
}

/// A value that decrypts but is not what its reader expects (not JSON, not UTF-8) is a
/// `Format` error, never `Decrypt`: the key and context were right, the content is not.
pub async fn opened_values_of_the_wrong_shape_are_format_errors(keys: Arc<dyn KeyProvider>) {
    let env = Envelope::with_cache(keys, 0, Duration::ZERO);
    let (a, _) = ctx(&fresh_org());
    let not_json = env.seal(&a, b"sk_live_not json").await.unwrap();
    let opened: Result<BTreeMap<String, String>, _> = env.open_json(&a, &not_json).await;
    assert!(matches!(opened, Err(CryptoError::Format)), "not JSON");
    assert!(matches!(env.open_secrets(&a, &not_json).await, Err(CryptoError::Format)), "not a secrets map");
    let not_utf8 = env.seal(&a, &[0xff, 0xfe, 0x00]).await.unwrap();
    assert!(matches!(env.open_str(&a, &not_utf8).await, Err(CryptoError::Format)), "not UTF-8");
    let wrong_shape = env.seal_json(&a, &serde_json::json!({"apiKey": 1})).await.unwrap();
    assert!(matches!(env.open_secrets(&a, &wrong_shape).await, Err(CryptoError::Format)), "not strings");
    let (b, _) = ctx(&fresh_org());
    assert!(matches!(env.open_secrets(&b, &wrong_shape).await, Err(CryptoError::Decrypt)), "wrong context");
}

pub async fn the_key_cache_never_skips_the_context_check(keys: Arc<dyn KeyProvider>) {
    let env = Envelope::new(keys);
    let org = fresh_org();
    let (a, _) = ctx(&org);
    let (b, _) = ctx(&org);
    let sealed = env.seal(&a, b"value").await.unwrap();
    assert!(env.open(&a, &sealed).await.is_ok());
    assert!(env.open(&b, &sealed).await.is_err(), "a cached data key is not used for another context");
}

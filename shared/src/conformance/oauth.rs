//! Store cases for the OAuth flows' short-lived records: revocation jobs (claimed once,
//! retried, deleted) and pending authorizations (single use, expiring).

use std::sync::Arc;

use time::OffsetDateTime;

use super::{fresh_org, now};
use crate::domain::{ConnectionId, DefinitionKey};
use crate::ports::{Store, StoreError};

pub async fn revocation_jobs_are_claimed_once_and_deleted(store: Arc<dyn Store>) {
    use crate::crypto::Sealed;
    use crate::domain::RevocationJob;
    let org = fresh_org();
    let sealed = Sealed { key_id: "k".into(), wrapped_key: vec![1; 40], ciphertext: vec![2; 40] };
    let t0 = now();
    let job = |conn: &ConnectionId, at: OffsetDateTime| RevocationJob {
        id: ulid::Ulid::new().to_string(),
        org: org.clone(),
        connection_id: conn.clone(),
        definition: DefinitionKey::parse("acme").unwrap(),
        tokens: sealed.clone(),
        settings: sealed.clone(),
        attempts: 0,
        next_attempt_at: at,
        expires_at: t0 + time::Duration::days(7),
    };
    let conn = ConnectionId::generate();
    let now_job = job(&conn, t0 - time::Duration::seconds(1));
    let later_job = job(&conn, t0 + time::Duration::hours(1));
    store.put_revocation(&now_job).await.unwrap();
    store.put_revocation(&later_job).await.unwrap();
    assert!(matches!(store.put_revocation(&now_job).await, Err(StoreError::Conflict)));
    assert_eq!(store.revocations_of(&org, &conn).await.unwrap().len(), 2);
    let due: Vec<_> = store.due_revocations(t0, 10_000).await.unwrap().into_iter().filter(|j| j.org == org).collect();
    assert_eq!(due, vec![now_job.clone()]);
    // Two workers claim the same attempt: one wins.
    let mut claim = now_job.clone();
    claim.attempts = 1;
    claim.next_attempt_at = t0 + time::Duration::minutes(1);
    store.update_revocation(&claim, 0).await.unwrap();
    assert!(matches!(store.update_revocation(&claim, 0).await, Err(StoreError::Conflict)));
    assert!(store.delete_revocation(&claim).await.unwrap());
    assert!(!store.delete_revocation(&claim).await.unwrap(), "deleting twice is harmless");
    assert_eq!(store.revocations_of(&org, &conn).await.unwrap(), vec![later_job]);
}

pub async fn oauth_states_are_single_use_and_expire(store: Arc<dyn Store>) {
    use crate::domain::OAuthState;
    let org = fresh_org();
    let state = |hash: &str, ttl: i64| OAuthState {
        hash: hash.to_owned(),
        org: org.clone(),
        connection_id: ConnectionId::generate(),
        verifier: None,
        request_token_secret: None,
        redirect_uri: "http://127.0.0.1:8080/v1/oauth/callback".into(),
        issuer: None,
        generation: 0,
        expires_at: now() + time::Duration::seconds(ttl),
        browser: None,
    };
    let live = state(&format!("h-{}", ulid::Ulid::new()), 600);
    store.put_oauth_state(&live).await.unwrap();
    assert!(matches!(store.put_oauth_state(&live).await, Err(StoreError::Conflict)));
    // Concurrent callbacks with one state: exactly one wins.
    let takes: Vec<_> = (0..6)
        .map(|_| {
            let (store, hash) = (store.clone(), live.hash.clone());
            tokio::spawn(async move { store.take_oauth_state(&hash, now()).await.unwrap() })
        })
        .collect();
    let mut won = Vec::new();
    for t in takes {
        won.extend(t.await.unwrap());
    }
    assert_eq!(won, vec![live.clone()], "exactly one take returns the state");
    assert!(store.take_oauth_state(&live.hash, now()).await.unwrap().is_none(), "a replay finds nothing");
    let expired = state(&format!("h-{}", ulid::Ulid::new()), 1);
    store.put_oauth_state(&expired).await.unwrap();
    let later = now() + time::Duration::seconds(5);
    assert!(store.take_oauth_state(&expired.hash, later).await.unwrap().is_none(), "an expired state is refused");
    assert!(store.take_oauth_state("never-stored", now()).await.unwrap().is_none());
    // OAuth 1.0a's pending authorization holds the sealed request token secret: read back whole.
    let mut oauth1 = state(&format!("h-{}", ulid::Ulid::new()), 600);
    let sealed = crate::domain::Sealed { key_id: "k".into(), wrapped_key: vec![3; 40], ciphertext: vec![4; 40] };
    oauth1.request_token_secret = Some(sealed);
    store.put_oauth_state(&oauth1).await.unwrap();
    assert_eq!(store.take_oauth_state(&oauth1.hash, now()).await.unwrap(), Some(oauth1));
}

//! Store cases for idempotency records (SPEC section 10).

use std::sync::Arc;

use time::Duration;

use super::{fresh_org, now};
use crate::domain::idempotency::{CLAIM_LEASE, RETENTION};
use crate::domain::{IdempotencyRecord, StoredResponse};
use crate::ports::{Store, StoreError};

fn claim_of(org: &crate::domain::OrgId, id: &str, hash: &str, at: time::OffsetDateTime) -> IdempotencyRecord {
    IdempotencyRecord::claim(id.to_owned(), org, "POST /v1/connections", hash.to_owned(), at)
}

fn response() -> StoredResponse {
    StoredResponse { status: 201, body: r#"{"id":"x"}"#.to_owned() }
}

pub async fn idempotency_keys_are_claimed_once_and_answered_for_a_day(store: Arc<dyn Store>) {
    let org = fresh_org();
    let t0 = now();
    let id = format!("{:064x}", rand_id());

    // Of concurrent claims, exactly one wins; the others see its (incomplete) claim.
    let claims: Vec<_> = (0..8).map(|_| claim_of(&org, &id, "h1", t0)).collect();
    let results = futures_util::future::join_all(claims.iter().map(|c| store.claim_idempotency(c, t0))).await;
    let winners: Vec<_> = claims.iter().zip(&results).filter(|(_, r)| matches!(r, Ok(None))).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let first = winners[0].0.clone();
    for r in &results {
        if let Ok(Some(seen)) = r {
            assert_eq!((seen.claim.as_str(), seen.response.as_ref()), (first.claim.as_str(), None));
        }
    }

    // Only the claimant completes it; then every claim gets the stored response.
    let other = claim_of(&org, &id, "h1", t0);
    assert!(matches!(store.complete_idempotency(&other.completed(response())).await, Err(StoreError::Conflict)));
    store.complete_idempotency(&first.completed(response())).await.unwrap();
    let t1 = t0 + Duration::hours(23);
    let again =
        store.claim_idempotency(&claim_of(&org, &id, "h2", t1), t1).await.unwrap().expect("the completed record");
    assert_eq!((again.request_hash.as_str(), again.response), ("h1", Some(response())));
    store.release_idempotency(&first).await.unwrap();
    assert!(
        store.claim_idempotency(&claim_of(&org, &id, "h1", t0), t0).await.unwrap().is_some(),
        "a release after completion does nothing"
    );

    // After the retention the key is free again (whatever the TTL has not deleted yet).
    let later = t0 + RETENTION + Duration::seconds(1);
    assert!(store.claim_idempotency(&claim_of(&org, &id, "h3", later), later).await.unwrap().is_none());
}

pub async fn idempotency_claims_are_released_or_lapse(store: Arc<dyn Store>) {
    let org = fresh_org();
    let t0 = now();
    let id = format!("{:064x}", rand_id());

    // A failed request releases its key: the next claim wins.
    let failed = claim_of(&org, &id, "h1", t0);
    assert!(store.claim_idempotency(&failed, t0).await.unwrap().is_none());
    let blocked = store.claim_idempotency(&claim_of(&org, &id, "h1", t0), t0).await.unwrap();
    assert_eq!(blocked.map(|r| r.claim), Some(failed.claim.clone()), "held while running");
    store.release_idempotency(&failed).await.unwrap();
    let retry = claim_of(&org, &id, "h2", t0);
    assert!(store.claim_idempotency(&retry, t0).await.unwrap().is_none(), "free after a release");
    // A stale release (not the holder) frees nothing.
    store.release_idempotency(&failed).await.unwrap();
    assert!(store.claim_idempotency(&claim_of(&org, &id, "h2", t0), t0).await.unwrap().is_some());

    // A claim abandoned by a request that died lapses after its lease; its late completion
    // then loses to the new claimant.
    let after = t0 + CLAIM_LEASE + Duration::seconds(1);
    let takeover = claim_of(&org, &id, "h2", after);
    assert!(store.claim_idempotency(&takeover, after).await.unwrap().is_none());
    assert!(matches!(store.complete_idempotency(&retry.completed(response())).await, Err(StoreError::Conflict)));
    store.complete_idempotency(&takeover.completed(response())).await.unwrap();
}

/// 128 random bits, so that cases sharing a backend never share a record id.
fn rand_id() -> u128 {
    ulid::Ulid::new().0
}

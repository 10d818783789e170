//! The branch-key store port's cases ([`crate::ports::BranchKeyStore`]): versions are put once,
//! read back exactly, the newest is the active one, and of concurrent puts of one version
//! exactly one wins while puts of different versions all land.

use std::sync::Arc;

use super::{fresh_org, now};
use crate::domain::OrgId;
use crate::ports::{BranchKeyRecord, BranchKeyStore, StoreError};

fn record(org: &OrgId, version: u32, wrapped: &[u8]) -> BranchKeyRecord {
    BranchKeyRecord {
        org: org.clone(),
        version,
        key_id: "arn:aws:kms:eu-west-1:111122223333:key/conformance".into(),
        wrapped: wrapped.to_vec(),
        created_at: now(),
    }
}

pub async fn branch_keys_are_put_once_per_version_and_the_newest_is_active(store: Arc<dyn BranchKeyStore>) {
    let org = fresh_org();
    assert!(store.active_branch_key(&org).await.unwrap().is_none(), "no branch key before the first put");
    assert!(store.get_branch_key(&org, 1).await.unwrap().is_none());
    let v1 = record(&org, 1, &[1; 184]);
    store.put_branch_key(&v1).await.expect("first put");
    let again = record(&org, 1, &[9; 184]);
    assert!(matches!(store.put_branch_key(&again).await, Err(StoreError::Conflict)), "a version is put once");
    assert_eq!(store.get_branch_key(&org, 1).await.unwrap(), Some(v1.clone()), "read back exactly, the first kept");
    assert_eq!(store.active_branch_key(&org).await.unwrap(), Some(v1.clone()));

    let v2 = record(&org, 2, &[2; 184]);
    store.put_branch_key(&v2).await.expect("the next version");
    assert_eq!(store.active_branch_key(&org).await.unwrap(), Some(v2.clone()), "the newest is active");
    assert_eq!(store.get_branch_key(&org, 1).await.unwrap(), Some(v1), "older versions stay readable");
    assert_eq!(store.get_branch_key(&org, 2).await.unwrap(), Some(v2));
    assert!(store.get_branch_key(&org, 3).await.unwrap().is_none());

    let other = fresh_org();
    assert!(store.active_branch_key(&other).await.unwrap().is_none(), "another org sees nothing");
    assert!(store.get_branch_key(&other, 1).await.unwrap().is_none());
}

pub async fn concurrent_puts_of_one_version_have_one_winner(store: Arc<dyn BranchKeyStore>) {
    let org = fresh_org();
    let puts: Vec<_> = (0..8u8)
        .map(|i| {
            let (store, key) = (store.clone(), record(&org, 1, &[i; 184]));
            tokio::spawn(async move { (store.put_branch_key(&key).await, key) })
        })
        .collect();
    let mut winners = Vec::new();
    for put in puts {
        match put.await.unwrap() {
            (Ok(()), key) => winners.push(key),
            (Err(StoreError::Conflict), _) => {}
            (Err(e), _) => panic!("a racing put failed otherwise: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one cold container creates the branch key");
    assert_eq!(store.active_branch_key(&org).await.unwrap(), winners.pop(), "the loser re-reads the winner's");
}

pub async fn concurrent_puts_of_different_versions_all_land(store: Arc<dyn BranchKeyStore>) {
    let org = fresh_org();
    let puts: Vec<_> = (1..=5u32)
        .map(|v| {
            let (store, key) = (store.clone(), record(&org, v, &[v as u8; 184]));
            tokio::spawn(async move { store.put_branch_key(&key).await })
        })
        .collect();
    for put in puts {
        put.await.unwrap().expect("a put of another version is no conflict");
    }
    for v in 1..=5u32 {
        let got = store.get_branch_key(&org, v).await.unwrap().expect("every version stored");
        assert_eq!(got.wrapped, vec![v as u8; 184]);
    }
    assert_eq!(store.active_branch_key(&org).await.unwrap().map(|k| k.version), Some(5));
}

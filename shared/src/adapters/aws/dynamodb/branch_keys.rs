//! Branch keys in DynamoDB ([`BranchKeyStore`]): one item per organization, `pk` = `ORG#{org}`,
//! `sk` = `BRANCH`, holding every version in a map (`keys`: version -> `{key_id, wrapped,
//! created_ms}`), the newest version (`active`) and a revision counter (`rev`) that makes each
//! write conditional on the item read. One item, so that each read is one strongly consistent
//! GetItem and each write one conditional PutItem: the two actions every function role has
//! (token-lookup has no Query). Each version is about 250 bytes (a KMS ciphertext blob is
//! about 180), so the 400 KB item limit allows over 1,500 rotations of one organization.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use time::OffsetDateTime;

use super::DynamoStore;
use super::item::{Item, key, n, org_pk, s};
use super::write::{backend, conditional};
use crate::domain::OrgId;
use crate::ports::{BranchKeyRecord, BranchKeyStore, StoreError};

/// The sort key of an organization's branch keys.
const BRANCH_SK: &str = "BRANCH";
/// How many times a put re-reads and retries when a concurrent write of another version changed
/// the item in between.
const PUT_ATTEMPTS: usize = 8;

/// An organization's branch-key item, read.
struct Versions {
    rev: u64,
    keys: HashMap<u32, BranchKeyRecord>,
}

fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Result<T, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| backend(format!("a branch-key item lacks a numeric `{name}`")))
}

fn version_of(org: &OrgId, version: &str, v: &AttributeValue) -> Result<BranchKeyRecord, StoreError> {
    let m = v.as_m().map_err(|_| backend("a branch key version is not a map"))?;
    let key_id = m.get("key_id").and_then(|v| v.as_s().ok()).ok_or_else(|| backend("a branch key lacks key_id"))?;
    let wrapped = m.get("wrapped").and_then(|v| v.as_b().ok()).ok_or_else(|| backend("a branch key lacks wrapped"))?;
    let created_ms: i64 = number(m, "created_ms")?;
    Ok(BranchKeyRecord {
        org: org.clone(),
        version: version.parse().map_err(|_| backend("a branch key version is not a number"))?,
        key_id: key_id.clone(),
        wrapped: wrapped.clone().into_inner(),
        created_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(created_ms) * 1_000_000).map_err(backend)?,
    })
}

fn version_value(k: &BranchKeyRecord) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("key_id".to_owned(), s(k.key_id.clone())),
        ("wrapped".to_owned(), AttributeValue::B(Blob::new(k.wrapped.clone()))),
        ("created_ms".to_owned(), n(k.created_at.unix_timestamp_nanos() / 1_000_000)),
    ]))
}

impl DynamoStore {
    async fn branch_versions(&self, org: &OrgId) -> Result<Option<Versions>, StoreError> {
        let Some(item) = self.get(key(org_pk(org), BRANCH_SK.to_owned())).await? else {
            return Ok(None);
        };
        let keys =
            item.get("keys").and_then(|v| v.as_m().ok()).ok_or_else(|| backend("a branch-key item lacks keys"))?;
        let keys = keys.iter().map(|(v, k)| version_of(org, v, k).map(|r| (r.version, r))).collect::<Result<_, _>>()?;
        Ok(Some(Versions { rev: number(&item, "rev")?, keys }))
    }
}

#[async_trait]
impl BranchKeyStore for DynamoStore {
    async fn active_branch_key(&self, org: &OrgId) -> Result<Option<BranchKeyRecord>, StoreError> {
        let versions = self.branch_versions(org).await?;
        Ok(versions.and_then(|mut v| v.keys.keys().max().copied().and_then(|newest| v.keys.remove(&newest))))
    }

    async fn get_branch_key(&self, org: &OrgId, version: u32) -> Result<Option<BranchKeyRecord>, StoreError> {
        Ok(self.branch_versions(org).await?.and_then(|mut v| v.keys.remove(&version)))
    }

    async fn put_branch_key(&self, k: &BranchKeyRecord) -> Result<(), StoreError> {
        for _ in 0..PUT_ATTEMPTS {
            let current = self.branch_versions(&k.org).await?;
            if current.as_ref().is_some_and(|c| c.keys.contains_key(&k.version)) {
                return Err(StoreError::Conflict);
            }
            let (rev, mut keys) = match current {
                Some(c) => (Some(c.rev), c.keys),
                None => (None, HashMap::new()),
            };
            keys.insert(k.version, k.clone());
            let active = keys.keys().max().copied().unwrap_or(k.version);
            let mut item: Item = key(org_pk(&k.org), BRANCH_SK.to_owned());
            item.insert("active".into(), n(active));
            item.insert("rev".into(), n(rev.map_or(1, |r| r + 1)));
            item.insert(
                "keys".into(),
                AttributeValue::M(keys.values().map(|r| (r.version.to_string(), version_value(r))).collect()),
            );
            let put = self.client.put_item().table_name(&self.table).set_item(Some(item));
            let put = match rev {
                None => put.condition_expression("attribute_not_exists(pk)"),
                Some(r) => put.condition_expression("rev = :rev").expression_attribute_values(":rev", n(r)),
            };
            match put.send().await.map_err(conditional) {
                // Another version was written since the read: read again and retry.
                Err(StoreError::Conflict) => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(StoreError::Unavailable("the branch-key item kept changing under concurrent writes".into()))
    }
}

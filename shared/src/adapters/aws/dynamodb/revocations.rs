//! Revocation jobs' reads and writes. An item (`TryFrom` in [`super::item`]): `pk` =
//! `REVOKE#{org}#{connection}`, `sk` = the job's id, `attempts` (the condition of an update),
//! the table's TTL attribute at the job's expiry, and in the `refresh-due` index under
//! `RDUE#{shard}` by next attempt (docs/dynamodb.md).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::ReturnValue;
use time::OffsetDateTime;

use super::item::{Item, doc_of, due_upper, key, n, revocation_pk, s};
use super::write::sdk;
use super::{DUE_SHARDS, DynamoStore, REFRESH_DUE};
use crate::domain::{ConnectionId, OrgId, RevocationJob};
use crate::ports::StoreError;

/// Index Queries (one shard each) in flight at once while [`DynamoStore::due_revocation_items`]
/// reads the due jobs' keys: as the sweep's own index reads (`service::refresh::sweep`), not all
/// 16 together, which moto (one DynamoDB action at a time, a walk of the table for each) did not
/// answer within the SDK's operation timeout on a loaded machine.
const JOB_INDEX_READS: usize = 4;

/// GetItems in flight at once while [`DynamoStore::due_revocation_items`] reads the jobs its
/// index keys name (in index order; up to this many minus one read past the `limit`th job).
const JOB_READS: usize = 8;

impl DynamoStore {
    pub(super) async fn put_revocation_item(&self, job: &RevocationJob) -> Result<(), StoreError> {
        self.put_if(Item::try_from(job)?, "attribute_not_exists(pk)", &[]).await
    }

    /// The jobs of one connection: one strongly consistent Query of its partition.
    pub(super) async fn revocation_items_of(
        &self,
        org: &OrgId,
        id: &ConnectionId,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        let items = self
            .query_until(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(revocation_pk(org, id)))
                        .consistent_read(true)
                },
                usize::MAX,
            )
            .await?;
        items.iter().map(doc_of).collect()
    }

    /// Up to `limit` jobs due by `until`, oldest first (by next attempt), from every shard of the
    /// due index (`RDUE#{shard}`, each Query up to `limit` keys; [`JOB_INDEX_READS`] shards at
    /// once): the sweep reads them beside its own index under the same deadline. The keys of all
    /// shards are merged by index key (next attempt first), so a shard with `limit` due jobs
    /// does not keep the other shards' older ones waiting; then each job is read from the table (the index holds keys
    /// only; [`JOB_READS`] GetItems at once) until `limit` are found: a key whose item is gone
    /// (the index lags a delete) takes no place. The first error of any read fails the call.
    pub(super) async fn due_revocation_items(
        &self,
        until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};

        let upper = due_upper(until);
        let upper = &upper;
        let shards: Vec<Vec<Item>> = futures_util::stream::iter(0..DUE_SHARDS)
            .map(|shard| {
                self.query_until(
                    move || {
                        self.client
                            .query()
                            .table_name(&self.table)
                            .index_name(REFRESH_DUE)
                            .key_condition_expression("gsi3pk = :p AND gsi3sk <= :u")
                            .expression_attribute_values(":p", s(format!("RDUE#{shard}")))
                            .expression_attribute_values(":u", s(upper.clone()))
                    },
                    limit.max(1),
                )
            })
            .buffer_unordered(JOB_INDEX_READS)
            .try_collect()
            .await?;
        // `gsi3sk` starts with the next attempt's 12-digit second: its order is the time order.
        let index_key = |k: &Item| k.get("gsi3sk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        let mut keys: Vec<(String, Item)> = shards
            .into_iter()
            .flatten()
            .filter_map(|k| {
                let (pk, sk) = (k.get("pk")?.clone(), k.get("sk")?.clone());
                Some((index_key(&k), HashMap::from([("pk".to_owned(), pk), ("sk".to_owned(), sk)])))
            })
            .collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut items = futures_util::stream::iter(keys).map(|(_, k)| self.get(k)).buffered(JOB_READS);
        let mut jobs = Vec::new();
        while jobs.len() < limit {
            match items.try_next().await? {
                Some(Some(item)) => jobs.push(doc_of(&item)?),
                Some(None) => {}
                None => break,
            }
        }
        Ok(jobs)
    }

    pub(super) async fn update_revocation_item(
        &self,
        job: &RevocationJob,
        expected_attempts: u32,
    ) -> Result<(), StoreError> {
        self.put_if(Item::try_from(job)?, "attempts = :a", &[(":a", n(expected_attempts))]).await
    }

    /// Deletes the job; whether it was there.
    pub(super) async fn delete_revocation_item(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(revocation_pk(&job.org, &job.connection_id), job.id.clone())))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }
}

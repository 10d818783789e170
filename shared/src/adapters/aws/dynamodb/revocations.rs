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

    /// Up to `limit` jobs due by `until`, from every shard of the due index (`RDUE#{shard}`)
    /// read at once (one round trip, not [`DUE_SHARDS`] in a row: the sweep reads them beside
    /// its own index under the same deadline), taken in shard order, each job read from the
    /// table (the index holds keys only). The first error of any shard fails the read.
    pub(super) async fn due_revocation_items(
        &self,
        until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        let upper = due_upper(until);
        let shards = futures_util::future::try_join_all((0..DUE_SHARDS).map(|shard| {
            let upper = &upper;
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
        }))
        .await?;
        let mut jobs = Vec::new();
        for k in shards.iter().flatten().take(limit) {
            let (Some(pk), Some(sk)) = (k.get("pk"), k.get("sk")) else { continue };
            let item = self.get(HashMap::from([("pk".to_owned(), pk.clone()), ("sk".to_owned(), sk.clone())])).await?;
            if let Some(item) = item {
                jobs.push(doc_of(&item)?);
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

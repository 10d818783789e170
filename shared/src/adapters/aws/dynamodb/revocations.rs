//! Revocation jobs' reads and writes. An item (`TryFrom` in [`super::item`]): `pk` =
//! `REVOKE#{org}#{connection}`, `sk` = the job's id, `attempts` (the condition of an update),
//! the table's TTL attribute at the job's expiry, and in the `refresh-due` index under
//! `RDUE#{shard}` by next attempt (docs/dynamodb.md).

use aws_sdk_dynamodb::types::ReturnValue;
use time::OffsetDateTime;

use super::DynamoStore;
use super::item::{Item, doc_of, due_upper, key, n, revocation_pk, s};
use super::write::sdk;
use crate::domain::{ConnectionId, OrgId, RevocationJob};
use crate::ports::StoreError;

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

    /// Up to `limit` jobs due by `until`, round by round (each organization's oldest by next
    /// attempt, then each one's second oldest, up to `per_org` of one organization; the port's
    /// order, [`crate::ports::Store::due_revocations`]), from every shard of the due index
    /// (`RDUE#{shard}`; [`super::due_rounds::JOB_INDEX_READS`] shards at once): the sweep reads them beside its own
    /// index under the same deadline.
    /// - Each shard's due keys are read page after page to the end of the due range, at most
    ///   [`super::due_rounds::JOB_INDEX_SCAN`] of them, keeping `per_org` of one organization
    ///   ([`DynamoStore::due_keys_round_by_round`]): a key's place among its organization's jobs is known
    ///   only once every shard's older keys are, so no shard stops at `limit`.
    /// - The keys of all shards are merged by index key (next attempt first; within a second by
    ///   organization, connection and id), numbered per organization, kept up to `per_org`, and
    ///   ordered by that number, then by index key.
    /// - Then each job is read from the table in that order (the index holds keys only;
    ///   [`JOB_READS`] GetItems at once) until `limit` are found: a key whose item is gone (the
    ///   index lags a delete) takes no place, though it took its organization's number.
    ///
    /// The first error of any read fails the call.
    pub(super) async fn due_revocation_items(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};

        if limit == 0 || per_org == 0 {
            return Ok(Vec::new());
        }
        let keys = self.due_keys_round_by_round("RDUE", &due_upper(until), per_org).await?;
        let mut items = futures_util::stream::iter(keys).map(|k| self.get(k)).buffered(JOB_READS);
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

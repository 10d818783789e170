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

/// How many index keys of one shard [`DynamoStore::due_revocation_items`] looks at, at most,
/// to find `limit` keys within the per-organization cap: one organization with more due jobs
/// than this in one shard (about 16 times as many in all) can keep newer due jobs of that shard
/// out of a sweep's answer until its own back off. About 1 MB of keys, one or two pages.
const JOB_INDEX_SCAN: usize = 10_000;

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

    /// Up to `limit` jobs due by `until`, oldest first (by next attempt), at most `per_org` of
    /// one organization, from every shard of the due index (`RDUE#{shard}`; [`JOB_INDEX_READS`]
    /// shards at once): the sweep reads them beside its own index under the same deadline.
    /// - Each shard's keys are read page after page until `limit` of them pass the organization
    ///   cap within that shard ([`due_job_keys`]), so one organization's many due jobs (its
    ///   revocation endpoint down) are read past, not handed out; at most [`JOB_INDEX_SCAN`]
    ///   keys of a shard are looked at.
    /// - The keys of all shards are merged by index key (next attempt first) and capped again
    ///   per organization, so a shard with `limit` due jobs does not keep the other shards'
    ///   older ones waiting.
    /// - Then each job is read from the table (the index holds keys only; [`JOB_READS`]
    ///   GetItems at once) until `limit` are found: a key whose item is gone (the index lags a
    ///   delete) takes no place, though it counted against its organization's cap.
    ///
    /// The first error of any read fails the call.
    pub(super) async fn due_revocation_items(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};

        let upper = due_upper(until);
        let upper = &upper;
        let shards: Vec<Vec<(String, Item)>> = futures_util::stream::iter(0..DUE_SHARDS)
            .map(|shard| self.due_job_keys(shard, upper, limit, per_org))
            .buffer_unordered(JOB_INDEX_READS)
            .try_collect()
            .await?;
        let mut keys: Vec<(String, Item)> = shards.into_iter().flatten().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut cap = OrgCap::new(per_org);
        keys.retain(|(_, k)| cap.admits(k));
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

    /// One shard's due job keys up to `upper`, in index order, each with its index key (`gsi3sk`,
    /// which starts with the next attempt's 12-digit second: its order is the time order):
    /// up to `limit` keys, at most `per_org` of one organization, read page after page past the
    /// others, looking at no more than [`JOB_INDEX_SCAN`] keys.
    async fn due_job_keys(
        &self,
        shard: u32,
        upper: &str,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<(String, Item)>, StoreError> {
        let mut cap = OrgCap::new(per_org);
        let (mut kept, mut seen) = (Vec::new(), 0);
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(REFRESH_DUE)
                .key_condition_expression("gsi3pk = :p AND gsi3sk <= :u")
                .expression_attribute_values(":p", s(format!("RDUE#{shard}")))
                .expression_attribute_values(":u", s(upper.to_owned()))
                .set_exclusive_start_key(start.take())
                .limit((limit - kept.len()).clamp(1, 1_000) as i32)
                .send()
                .await
                .map_err(sdk)?;
            for k in out.items.unwrap_or_default() {
                seen += 1;
                let (Some(pk), Some(sk), Some(index_key)) = (k.get("pk"), k.get("sk"), k.get("gsi3sk")) else {
                    continue;
                };
                let key = HashMap::from([("pk".to_owned(), pk.clone()), ("sk".to_owned(), sk.clone())]);
                if cap.admits(&key) {
                    kept.push((index_key.as_s().cloned().unwrap_or_default(), key));
                }
            }
            match out.last_evaluated_key {
                Some(k) if kept.len() < limit && seen < JOB_INDEX_SCAN => start = Some(k),
                _ => return Ok(kept),
            }
        }
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

/// Counts the job keys handed out per organization (the `{org}` of `pk` =
/// `REVOKE#{org}#{connection}`; an organization id holds no `#`) and admits a key while its
/// organization has fewer than the cap.
struct OrgCap {
    per_org: usize,
    taken: HashMap<String, usize>,
}

impl OrgCap {
    fn new(per_org: usize) -> Self {
        Self { per_org, taken: HashMap::new() }
    }

    /// Whether `key`'s organization is under the cap, counting it if so. A key whose `pk` is
    /// not a revocation job's is admitted (reading its item fails the call as any bad item).
    fn admits(&mut self, key: &Item) -> bool {
        let org = key.get("pk").and_then(|v| v.as_s().ok()).and_then(|pk| pk.split('#').nth(1));
        let Some(org) = org else { return true };
        let n = self.taken.entry(org.to_owned()).or_default();
        *n += 1;
        *n <= self.per_org
    }
}

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

/// How many index keys of one shard [`DynamoStore::due_revocation_items`] looks at, at most:
/// about 1.2 MB of keys, ten pages of 1,000. Past it, a shard's newer due jobs are not seen by
/// that sweep: that takes more than this many due jobs in one shard, about 16 times as many in
/// all (a very large organization whose revocation endpoint is down, or many of them), and
/// lasts until enough of the older ones have been attempted and backed off past them (each
/// sweep attempts up to [`crate::service::revoke::DUE_REVOCATIONS`]), or expired. A shard
/// keeps at most `per_org` of each organization's keys it looks at: all 10,000 only when 400
/// organizations have 25 due jobs each in it (about 0.5 KB a key held).
const JOB_INDEX_SCAN: usize = 10_000;

/// Keys a page of [`DynamoStore::due_revocation_items`]'s index Queries asks for: whatever the
/// answer's `limit`, since the keys past an organization's cap are read past too (a page sized
/// to the places left took one Query a key once all but one were taken).
const JOB_INDEX_PAGE: usize = 1_000;

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
    /// (`RDUE#{shard}`; [`JOB_INDEX_READS`] shards at once): the sweep reads them beside its own
    /// index under the same deadline.
    /// - Each shard's due keys are read page after page to the end of the due range, at most
    ///   [`JOB_INDEX_SCAN`] of them, keeping `per_org` of one organization
    ///   ([`DynamoStore::due_job_keys`]): a key's place among its organization's jobs is known
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

    /// The table keys (`pk`, `sk`) of the due index partitions `{partition}#{shard}` up to
    /// `upper`, round by round: every shard's keys read ([`JOB_INDEX_READS`] shards at once, each
    /// by [`DynamoStore::due_job_keys`]), merged by index key, numbered per organization (the
    /// `{org}` of `pk`), kept up to `per_org`, ordered by that number, then by index key. Shared
    /// by revocation jobs (`RDUE`) and webhook deliveries (`WDUE`).
    pub(super) async fn due_keys_round_by_round(
        &self,
        partition: &str,
        upper: &str,
        per_org: usize,
    ) -> Result<Vec<Item>, StoreError> {
        use futures_util::{StreamExt, TryStreamExt};

        let shards: Vec<Vec<(String, Item)>> = futures_util::stream::iter(0..DUE_SHARDS)
            .map(|shard| self.due_job_keys(partition, shard, upper, per_org))
            .buffer_unordered(JOB_INDEX_READS)
            .try_collect()
            .await?;
        let mut keys: Vec<(String, Item)> = shards.into_iter().flatten().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut cap = OrgCap::new(per_org);
        let mut keys: Vec<(usize, Item)> =
            keys.into_iter().filter_map(|(_, k)| cap.number(&k).map(|nth| (nth, k))).collect();
        // Stable: within a round the index order stays.
        keys.sort_by_key(|(nth, _)| *nth);
        Ok(keys.into_iter().map(|(_, k)| k).collect())
    }

    /// One shard's due keys up to `upper` (`gsi3pk` = `{partition}#{shard}`), in index order,
    /// each with its index key (`gsi3sk`, which starts with the due time: its order is the time
    /// order): at most `per_org` of one organization (a later one cannot be among its `per_org`
    /// oldest in all), read in pages of [`JOB_INDEX_PAGE`] to the end of the range or to
    /// [`JOB_INDEX_SCAN`] keys looked at.
    async fn due_job_keys(
        &self,
        partition: &str,
        shard: u32,
        upper: &str,
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
                .expression_attribute_values(":p", s(format!("{partition}#{shard}")))
                .expression_attribute_values(":u", s(upper.to_owned()))
                .set_exclusive_start_key(start.take())
                .limit((JOB_INDEX_SCAN - seen).min(JOB_INDEX_PAGE) as i32)
                .send()
                .await
                .map_err(sdk)?;
            for k in out.items.unwrap_or_default() {
                seen += 1;
                let (Some(pk), Some(sk), Some(index_key)) = (k.get("pk"), k.get("sk"), k.get("gsi3sk")) else {
                    continue;
                };
                let key = HashMap::from([("pk".to_owned(), pk.clone()), ("sk".to_owned(), sk.clone())]);
                if cap.number(&key).is_some() {
                    kept.push((index_key.as_s().cloned().unwrap_or_default(), key));
                }
            }
            match out.last_evaluated_key {
                Some(k) if seen < JOB_INDEX_SCAN => start = Some(k),
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

/// Numbers the keys it is shown per organization (the `{org}` of `pk`: a revocation job's
/// `REVOKE#{org}#{connection}`, a webhook delivery's `WHD#{org}#{webhook}`; an organization id
/// holds no `#`): 1 for an organization's first, and `None` past the cap.
struct OrgCap {
    per_org: usize,
    taken: HashMap<String, usize>,
}

impl OrgCap {
    fn new(per_org: usize) -> Self {
        Self { per_org, taken: HashMap::new() }
    }

    /// `key`'s number among its organization's keys shown so far, counting it, or `None` once
    /// that passes the cap. A key whose `pk` has no organization is numbered 1 (reading its item
    /// fails the call as any bad item).
    fn number(&mut self, key: &Item) -> Option<usize> {
        let org = key.get("pk").and_then(|v| v.as_s().ok()).and_then(|pk| pk.split('#').nth(1));
        let Some(org) = org else { return Some(1) };
        let n = self.taken.entry(org.to_owned()).or_default();
        *n += 1;
        (*n <= self.per_org).then_some(*n)
    }
}

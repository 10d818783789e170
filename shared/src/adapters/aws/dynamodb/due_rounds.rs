//! The due index read round by round among organizations, shared by revocation jobs
//! (`RDUE#{shard}`, [`DynamoStore::due_revocation_items`]) and webhook deliveries
//! (`WDUE#{shard}`, [`DynamoStore::due_delivery_items`]): every shard's due keys, merged by
//! index key, numbered per organization, each organization's first, then each one's second...
//! (docs/dynamodb.md).

use std::collections::HashMap;

use super::item::{Item, s};
use super::write::sdk;
use super::{DUE_SHARDS, DynamoStore, REFRESH_DUE};
use crate::ports::StoreError;

/// Index Queries (one shard each) in flight at once while [`DynamoStore::due_keys_round_by_round`]
/// reads the due keys: as the sweep's own index reads (`service::refresh::sweep`), not all
/// 16 together, which moto (one DynamoDB action at a time, a walk of the table for each) did not
/// answer within the SDK's operation timeout on a loaded machine.
pub(super) const JOB_INDEX_READS: usize = 4;

/// How many index keys of one shard [`DynamoStore::due_keys_round_by_round`] looks at, at most:
/// about 1.2 MB of keys, ten pages of 1,000. Past it, a shard's newer due entries are not seen
/// by that read (the same holds for webhook deliveries). For revocation jobs: that takes more than this many due jobs in one shard, about 16 times as many in
/// all (a very large organization whose revocation endpoint is down, or many of them), and
/// lasts until enough of the older ones have been attempted and backed off past them (each
/// sweep attempts up to [`crate::service::revoke::DUE_REVOCATIONS`]), or expired. A shard
/// keeps at most `per_org` of each organization's keys it looks at: all 10,000 only when 400
/// organizations have 25 due jobs each in it (about 0.5 KB a key held).
pub(super) const JOB_INDEX_SCAN: usize = 10_000;

/// Keys a page of [`DynamoStore::due_keys_round_by_round`]'s index Queries asks for: whatever the
/// answer's `limit`, since the keys past an organization's cap are read past too (a page sized
/// to the places left took one Query a key once all but one were taken).
pub(super) const JOB_INDEX_PAGE: usize = 1_000;

impl DynamoStore {
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

//! The DynamoDB store: one table, designed in docs/dynamodb.md. Every write that can race is
//! conditional; listings are Queries on the table or an index, never a Scan.
//!
//! - this module: the [`Store`] implementation, its point reads (GetItem) and paging, and the
//!   definitions, connections and logs' writes;
//! - [`queries`]: listings, the selector's candidates and the due index (Queries);
//! - [`revocations`], [`webhooks`], [`connect`], [`idempotency`], [`branch_keys`]: those
//!   records' items, reads and writes; [`due_rounds`]: the due index read round by round among
//!   organizations, for revocation jobs and webhook deliveries;
//! - [`item`]: records as items and back (`TryFrom`), the key layout;
//! - [`write`]: conditional writes, the counted transaction, batch deletes, and what SDK errors
//!   mean as [`StoreError`]s.
//!
//! SDK types (`AttributeValue`, the builders) never leave this module.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::query::QueryError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use backon::BackoffBuilder;
use time::OffsetDateTime;

use crate::domain::{ConnectSession, IdempotencyRecord};
use crate::domain::{
    Connection, ConnectionId, CustomerId, Definition, DefinitionKey, LogEntry, OAuthState, OrgId, RevocationJob,
};
use crate::domain::{DeliveryStatus, Webhook, WebhookDelivery, WebhookId};
use crate::ports::{ConnectionFilter, DeliveryCursor, DueEntry, Expect, Page, Store, StoreError};

mod branch_keys;
mod connect;
mod due_rounds;
mod idempotency;
mod item;
mod queries;
mod revocations;
mod webhooks;
mod write;

pub use item::due_shard;
use item::{Item, STATE_SK, con_sk, def_sk, doc_of, key, log_item, log_pk, n, org_pk, s, state_pk};
use write::{backend, conditional, sdk, unprocessed_retries};

/// The customer index (`gsi1pk` = `ORG#{org}#CUS#{customer}`, `gsi1sk` = `CON#{id}`; a
/// webhook's deliveries under `WHD#{org}#{webhook}`). It projects the keys and
/// [`LISTING_ATTRIBUTES`] only, so a refresh, which changes none of them, writes nothing to it;
/// the records a Query of it finds are read from the table (BatchGetItem). docs/dynamodb.md.
pub const BY_CUSTOMER: &str = "by-customer-v2";
/// The definition index (`gsi2pk` = `ORG#{org}#DEF#{key}`, `gsi2sk` = `CON#{id}`), projected
/// like [`BY_CUSTOMER`].
pub const BY_DEFINITION: &str = "by-definition-v2";
/// What [`BY_CUSTOMER`] and [`BY_DEFINITION`] project beside the keys: the attributes a
/// listing's FilterExpression tests (`definition`, `status`, `user`, `tags`).
pub const LISTING_ATTRIBUTES: [&str; 4] = ["definition", "status", "user", "tags"];
/// The indexes [`BY_CUSTOMER`] and [`BY_DEFINITION`] replace, on the same key attributes but
/// projecting every attribute (tables made before 2026-12-01). A Query reads them instead
/// while its index is missing or still being built, which is what a stack in the middle of the
/// migration has (infra/README.md, "Index migration").
pub const LEGACY_INDEXES: [(&str, &str); 2] = [(BY_CUSTOMER, "by-customer"), (BY_DEFINITION, "by-definition")];
/// The attribute DynamoDB's TTL deletes items by (Unix seconds): logs, pending authorizations,
/// revocation jobs.
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The due index: refreshes (`DUE#{shard}`) and revocations (`RDUE#{shard}`) by due time.
pub const REFRESH_DUE: &str = "refresh-due";
/// Shards of the due index: a sweep over millions of due connections spreads over this many
/// partitions instead of one hot key. Each refresh moves its entry within its shard (2 index
/// writes): 10M connections on 1-hour tokens are 3,333 refreshes/s, 6,667 WCU/s, and 16 shards
/// keep each at 42% of a partition's 1,000 WCU/s (docs/scale.md, Design). Raising it is safe
/// without a backfill: every reader reads shards `0..DUE_SHARDS`, a superset of the old ones, so
/// an entry under its old shard is still read until its next write moves it. Lowering it is not.
pub const DUE_SHARDS: u32 = 16;
/// How long connection logs are kept (DynamoDB TTL deletes them afterwards).
pub const LOG_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Whether a Query failed because the table has no `index`, or has not finished building it:
/// DynamoDB's `ValidationException` ("The table does not have the specified index: {index}",
/// "Cannot read from backfilling global secondary index: {index}"), or the
/// `ResourceNotFoundException` moto answers ("Invalid index: {index} ..."), naming it.
fn names_unready_index(e: &SdkError<QueryError, HttpResponse>, index: &str) -> bool {
    e.as_service_error().is_some_and(|e| unready_index(e.code(), e.message(), index))
}

fn unready_index(code: Option<&str>, message: Option<&str>, index: &str) -> bool {
    matches!(code, Some("ValidationException" | "ResourceNotFoundException"))
        && message.is_some_and(|m| m.contains(index))
}

/// The DynamoDB adapter of the store port.
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Monotonic ULIDs order log entries written by this process within one millisecond.
    log_ids: Mutex<ulid::Generator>,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), log_ids: Mutex::new(ulid::Generator::new()) }
    }

    async fn get(&self, k: Item) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(k))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item)
    }

    /// Every record of `org`'s partition whose sort key starts with `prefix` (`DEF#`, `WHK#`),
    /// in sort-key order: one strongly consistent Query, paged to the end.
    async fn org_docs<T: serde::de::DeserializeOwned>(&self, org: &OrgId, prefix: &str) -> Result<Vec<T>, StoreError> {
        let items = self
            .query_until(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                        .expression_attribute_values(":pk", s(org_pk(org)))
                        .expression_attribute_values(":p", s(prefix))
                        .consistent_read(true)
                },
                usize::MAX,
            )
            .await?;
        items.iter().map(doc_of).collect()
    }

    /// Runs a query, page after page, to its end or until it has read at least `want` items.
    async fn query_until(&self, build: impl Fn() -> QueryFluentBuilder, want: usize) -> Result<Vec<Item>, StoreError> {
        self.query_pages(build, want).await.map_err(sdk)
    }

    async fn query_pages(
        &self,
        build: impl Fn() -> QueryFluentBuilder,
        want: usize,
    ) -> Result<Vec<Item>, SdkError<QueryError, HttpResponse>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = build()
                .set_exclusive_start_key(start.take())
                .limit((want - items.len()).clamp(1, 1_000) as i32)
                .send()
                .await?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if items.len() < want => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// [`Self::query_until`] on `index` (`build` names no index). While the table lacks `index`
    /// or is still building it ([`names_unready_index`]), the same
    /// Query runs on the index it replaces ([`LEGACY_INDEXES`]), whose items carry every
    /// attribute: callers read the records by key either way.
    async fn query_index_until(
        &self,
        index: &str,
        build: impl Fn() -> QueryFluentBuilder,
        want: usize,
    ) -> Result<Vec<Item>, StoreError> {
        match self.query_pages(|| build().index_name(index), want).await {
            Ok(items) => Ok(items),
            Err(e) => match LEGACY_INDEXES.iter().find(|(new, _)| *new == index) {
                Some((_, legacy)) if names_unready_index(&e, index) => {
                    tracing::debug!(index, legacy, "index missing or backfilling: reading the one it replaces");
                    match self.query_pages(|| build().index_name(*legacy), want).await {
                        Ok(items) => Ok(items),
                        // Neither there: the new index is the one to name.
                        Err(old) if names_unready_index(&old, legacy) => Err(sdk(e)),
                        Err(old) => Err(sdk(old)),
                    }
                }
                _ => Err(sdk(e)),
            },
        }
    }

    /// The items of `keys` as they are now, in the order of `keys` (`None` for one that is gone):
    /// strongly consistent BatchGetItem, each key asked once (DynamoDB refuses a request naming
    /// one twice), 100 keys a call, the keys DynamoDB leaves unprocessed asked again with
    /// backoff.
    async fn get_batch(&self, keys: &[Item]) -> Result<Vec<Option<Item>>, StoreError> {
        let text = |i: &Item, k: &str| match i.get(k) {
            Some(AttributeValue::S(v)) => v.clone(),
            _ => String::new(),
        };
        let key_of = |i: &Item| (text(i, "pk"), text(i, "sk"));
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<Item> = keys.iter().filter(|k| seen.insert(key_of(k))).cloned().collect();
        let mut found: HashMap<_, Item> = HashMap::with_capacity(unique.len());
        let request = |keys: Vec<Item>| {
            KeysAndAttributes::builder().set_keys(Some(keys)).consistent_read(true).build().map_err(backend)
        };
        for chunk in unique.chunks(100) {
            let mut pending = chunk.to_vec();
            let mut waits = unprocessed_retries().build();
            loop {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request(std::mem::take(&mut pending))?)
                    .send()
                    .await
                    .map_err(sdk)?;
                for item in out.responses.and_then(|mut r| r.remove(&self.table)).unwrap_or_default() {
                    found.insert(key_of(&item), item);
                }
                pending =
                    out.unprocessed_keys.and_then(|mut m| m.remove(&self.table)).map(|k| k.keys).unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                let wait = waits.next().ok_or_else(|| StoreError::Unavailable("a batch read was throttled".into()))?;
                tokio::time::sleep(wait).await;
            }
        }
        Ok(keys.iter().map(|k| found.get(&key_of(k)).cloned()).collect())
    }

    /// Deletes every item of partition `pk` (a connection's log lines, a webhook's deliveries),
    /// a page of keys at a time.
    async fn delete_partition(&self, pk: String) -> Result<(), StoreError> {
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk.clone()))
                .projection_expression("pk, sk")
                .consistent_read(true)
                .limit(100)
                .send()
                .await
                .map_err(sdk)?;
            let keys = out.items.unwrap_or_default();
            if keys.is_empty() {
                return Ok(());
            }
            self.delete_batch(&keys).await?;
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn put_webhook(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
        self.put_webhook_item(hook, expect).await
    }

    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        self.get_webhook_item(org, id).await
    }

    async fn list_webhooks(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError> {
        self.list_webhook_items(org).await
    }

    async fn delete_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError> {
        self.delete_webhook_item(org, id).await
    }

    async fn insert_delivery(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        self.insert_delivery_item(delivery).await
    }

    async fn get_delivery(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        self.get_delivery_item(org, webhook, id).await
    }

    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
        self.list_delivery_items(org, webhook, status, limit, cursor).await
    }

    async fn update_delivery(&self, delivery: &WebhookDelivery, expected_version: u64) -> Result<(), StoreError> {
        self.update_delivery_item(delivery, expected_version).await
    }

    async fn due_deliveries(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.due_delivery_items(until, limit).await
    }

    async fn get_definition(&self, org: &OrgId, key_: &DefinitionKey) -> Result<Option<Definition>, StoreError> {
        self.get(key(org_pk(org), def_sk(key_))).await?.as_ref().map(doc_of).transpose()
    }

    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        self.org_docs(org, "DEF#").await
    }

    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError> {
        // UpdateItem, not PutItem: the item also carries `conn_count`, which a replace must keep.
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(&def.org), def_sk(&def.key))))
            .update_expression("SET #doc = :doc, #version = :nv, kind = :kind")
            .expression_attribute_names("#doc", "doc")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":doc", s(serde_json::to_string(def).map_err(backend)?))
            .expression_attribute_values(":nv", n(def.version))
            .expression_attribute_values(":kind", s("definition"));
        req = match expect {
            Expect::Absent => req.condition_expression("attribute_not_exists(pk)"),
            Expect::Version(v) => req.condition_expression("#version = :v").expression_attribute_values(":v", n(v)),
        };
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(conditional(e)),
        }
    }

    async fn delete_definition(&self, org: &OrgId, key_: &DefinitionKey) -> Result<bool, StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), def_sk(key_))))
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(conn_count) OR conn_count = :zero)")
            .expression_attribute_values(":zero", n(0))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if super::is_unavailable(&e) => Err(sdk(e)),
            Err(e) => match e.into_service_error() {
                DeleteItemError::ConditionalCheckFailedException(c) => {
                    // The old item comes back only if it existed: then it is in use.
                    if c.item.is_some_and(|i| !i.is_empty()) { Err(StoreError::InUse) } else { Ok(false) }
                }
                other => Err(backend(other)),
            },
        }
    }

    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(Item::try_from(conn)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(backend)?;
        let write = TransactWriteItem::builder().put(put).build();
        match self.write_counting(write, &conn.org, &conn.definition, 1).await? {
            None => Ok(()),
            Some(c) if c.condition_failed(0) => Err(StoreError::Conflict),
            Some(c) if c.condition_failed(1) => Err(StoreError::DefinitionMissing),
            Some(c) => Err(c.into_error()),
        }
    }

    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        self.get(key(org_pk(org), con_sk(id))).await?.as_ref().map(doc_of).transpose()
    }

    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError> {
        self.put_if(Item::try_from(conn)?, "#version = :v", &[(":v", n(expected_version))]).await
    }

    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError> {
        let Some(item) = self.get(key(org_pk(org), con_sk(id))).await? else {
            return Ok(false);
        };
        let conn: Connection = doc_of(&item)?;
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), con_sk(id))))
            .condition_expression("attribute_exists(pk)")
            .build()
            .map_err(backend)?;
        let write = TransactWriteItem::builder().delete(delete).build();
        match self.write_counting(write, org, &conn.definition, -1).await? {
            None => {}
            Some(c) if c.condition_failed(0) => return Ok(false),
            Some(c) => return Err(c.into_error()),
        }
        self.delete_partition(log_pk(org, id)).await?;
        Ok(true)
    }

    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        self.list_connection_items(org, filter, limit, cursor).await
    }

    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        self.selector_candidate_items(org, definition, customer).await
    }

    fn due_shards(&self) -> u32 {
        DUE_SHARDS
    }

    async fn due_connections(
        &self,
        shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        self.due_connection_entries(shard, until, after, limit).await
    }

    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        self.put_revocation_item(job).await
    }

    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        self.revocation_items_of(org, id).await
    }

    async fn due_revocations(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        self.due_revocation_items(until, limit, per_org).await
    }

    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        self.update_revocation_item(job, expected_attempts).await
    }

    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        self.delete_revocation_item(job).await
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        self.put_if(Item::try_from(state)?, "attribute_not_exists(pk)", &[]).await
    }

    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        // DeleteItem returning the old item: of concurrent takes, exactly one gets it.
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(state_pk(hash), STATE_SK.to_owned())))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        let Some(item) = out.attributes.filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let state: OAuthState = doc_of(&item)?;
        Ok((state.expires_at > now).then_some(state))
    }

    async fn put_connect_session(&self, session: &ConnectSession) -> Result<(), StoreError> {
        self.put_connect_session_item(session).await
    }

    async fn trade_connect_link(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        self.trade_connect_link_item(id, link_hash, browser_hash, now).await
    }

    async fn get_connect_session(&self, id: &str, now: OffsetDateTime) -> Result<Option<ConnectSession>, StoreError> {
        self.get_connect_session_item(id, now).await
    }

    async fn claim_idempotency(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.claim_idempotency_item(claim, now).await
    }

    async fn complete_idempotency(&self, done: &IdempotencyRecord) -> Result<(), StoreError> {
        self.complete_idempotency_item(done).await
    }

    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<(), StoreError> {
        self.release_idempotency_item(claim).await
    }

    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError> {
        let sk = {
            let mut g = self.log_ids.lock().unwrap_or_else(|p| p.into_inner());
            g.generate().map_err(backend)?.to_string()
        };
        let expires = OffsetDateTime::now_utc().unix_timestamp() + LOG_RETENTION.as_secs() as i64;
        let item = log_item(org, id, sk, entry, expires)?;
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(sdk)?;
        Ok(())
    }

    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let items = self
            .query_until(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(log_pk(org, id)))
                        .scan_index_forward(false)
                        .consistent_read(true)
                },
                limit.max(1),
            )
            .await?;
        items.iter().take(limit).map(doc_of).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: &str, message: &str, index: &str) -> bool {
        unready_index(Some(code), Some(message), index)
    }

    #[test]
    fn a_missing_or_backfilling_index_is_told_from_other_failures() {
        // DynamoDB's answers for an index that is not there, or not built yet.
        assert!(failed(
            "ValidationException",
            "The table does not have the specified index: by-customer-v2",
            BY_CUSTOMER
        ));
        assert!(failed(
            "ValidationException",
            "Cannot read from backfilling global secondary index: by-definition-v2",
            BY_DEFINITION
        ));
        // moto's.
        assert!(failed(
            "ResourceNotFoundException",
            "Invalid index: by-customer-v2 for table: t. Available indexes are: x",
            BY_CUSTOMER
        ));
        // Another index, another failure, a missing table.
        assert!(!failed(
            "ValidationException",
            "The table does not have the specified index: by-definition-v2",
            BY_CUSTOMER
        ));
        assert!(!failed("ValidationException", "Invalid FilterExpression", BY_CUSTOMER));
        assert!(!failed("ResourceNotFoundException", "Requested resource not found: Table: t not found", BY_CUSTOMER));
        assert!(!failed("ThrottlingException", "by-customer-v2", BY_CUSTOMER));
        assert!(!unready_index(None, None, BY_CUSTOMER));
    }
}

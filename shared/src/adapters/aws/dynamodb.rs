//! The DynamoDB store: one table, designed in docs/dynamodb.md. Every write that can race is
//! conditional; listings are Queries on the table or an index, never a Scan.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Delete, DeleteRequest, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update, WriteRequest,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use time::OffsetDateTime;

use crate::domain::{Connection, ConnectionId, Definition, DefinitionKey, LogEntry, OAuthState, OrgId, RevocationJob};
use crate::ports::{BackendError, ConnectionFilter, DueEntry, Expect, Page, Store, StoreError};

pub const BY_CUSTOMER: &str = "by-customer";
pub const BY_DEFINITION: &str = "by-definition";
pub const TTL_ATTRIBUTE: &str = "expires_at";
pub const REFRESH_DUE: &str = "refresh-due";
/// Shards of the due index: a sweep over millions of due connections spreads over this many
/// partitions instead of one hot key.
pub const DUE_SHARDS: u32 = 8;

/// The due-index shard of a connection: a stable hash (FNV-1a) of its id.
pub fn due_shard(id: &ConnectionId) -> u32 {
    let h = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h % u64::from(DUE_SHARDS)) as u32
}
/// How long connection logs are kept (DynamoDB TTL deletes them afterwards).
pub const LOG_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn backend(e: impl Into<BackendError>) -> StoreError {
    StoreError::Backend(e.into())
}

/// A failed DynamoDB call: [`StoreError::Unavailable`] when it timed out, could not reach
/// DynamoDB or was throttled (the caller may retry shortly), [`StoreError::Backend`] otherwise.
fn sdk<E>(e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if super::is_unavailable(&e) { StoreError::Unavailable(e.into()) } else { backend(e) }
}

fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

fn def_sk(key: &DefinitionKey) -> String {
    format!("DEF#{key}")
}

fn con_sk(id: &ConnectionId) -> String {
    format!("CON#{id}")
}

fn log_pk(org: &OrgId, id: &ConnectionId) -> String {
    format!("LOG#{org}#{id}")
}

fn customer_pk(org: &OrgId, customer: &str) -> String {
    format!("ORG#{org}#CUS#{customer}")
}

fn definition_pk(org: &OrgId, key: &str) -> String {
    format!("ORG#{org}#DEF#{key}")
}

fn key(pk: String, sk: String) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn doc_of<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    match item.get("doc") {
        Some(AttributeValue::S(doc)) => serde_json::from_str(doc).map_err(backend),
        _ => Err(backend("an item has no doc attribute")),
    }
}

/// The item of a connection: its document plus the key and index attributes derived from it.
fn connection_item(c: &Connection) -> Result<Item, StoreError> {
    let mut item = key(org_pk(&c.org), con_sk(&c.id));
    item.insert("kind".into(), s("connection"));
    item.insert("version".into(), n(c.version));
    item.insert("doc".into(), s(serde_json::to_string(c).map_err(backend)?));
    item.insert("definition".into(), s(c.definition.as_str()));
    item.insert("status".into(), s(c.status.as_str()));
    if let Some(customer) = &c.customer {
        item.insert("customer".into(), s(customer.as_str()));
        item.insert("gsi1pk".into(), s(customer_pk(&c.org, customer.as_str())));
        item.insert("gsi1sk".into(), s(con_sk(&c.id)));
    }
    item.insert("gsi2pk".into(), s(definition_pk(&c.org, c.definition.as_str())));
    item.insert("gsi2sk".into(), s(con_sk(&c.id)));
    // Sparse: only connections with a due time are in the refresh index. Every write of a
    // connection replaces its whole item (PutItem), so one whose due time was cleared (red,
    // disconnected, refreshed without a refresh token) has no `gsi3*` attributes any more and
    // leaves the index: no stale entry can survive an update.
    if let Some(due) = c.refresh.due_at {
        item.insert("gsi3pk".into(), s(format!("DUE#{}", due_shard(&c.id))));
        item.insert("gsi3sk".into(), s(due_sk(due.unix_timestamp(), &c.org, &c.id)));
    }
    Ok(item)
}

/// A connection's sort key in the due index: due time (zero-padded Unix seconds, so that text
/// order is time order), then organization and id.
fn due_sk(due: i64, org: &OrgId, id: &ConnectionId) -> String {
    format!("{:012}#{org}#{id}", due.max(0))
}

fn revocation_pk(org: &OrgId, id: &ConnectionId) -> String {
    format!("REVOKE#{org}#{id}")
}

/// A revocation job's item: in the due index under its own `RDUE#` partitions.
fn revocation_item(job: &RevocationJob) -> Result<Item, StoreError> {
    let mut item = key(revocation_pk(&job.org, &job.connection_id), job.id.clone());
    item.insert("kind".into(), s("revocation"));
    item.insert("attempts".into(), n(job.attempts));
    item.insert("doc".into(), s(serde_json::to_string(job).map_err(backend)?));
    item.insert(TTL_ATTRIBUTE.into(), n(job.expires_at.unix_timestamp()));
    item.insert("gsi3pk".into(), s(format!("RDUE#{}", due_shard(&job.connection_id))));
    item.insert(
        "gsi3sk".into(),
        s(format!("{:012}#{}#{}#{}", job.next_attempt_at.unix_timestamp().max(0), job.org, job.connection_id, job.id)),
    );
    Ok(item)
}

/// Which reasons of a cancelled transaction were failed conditions.
/// A transaction DynamoDB cancelled: the code of each item's reason, in order (`None` for items
/// that did not fail).
struct Cancelled(Vec<String>);

impl Cancelled {
    fn new(reasons: &[CancellationReason]) -> Self {
        Self(reasons.iter().map(|r| r.code().unwrap_or("None").to_owned()).collect())
    }

    /// Whether item `i`'s condition failed.
    fn condition_failed(&self, i: usize) -> bool {
        self.0.get(i).is_some_and(|c| c == "ConditionalCheckFailed")
    }

    fn into_error(self) -> StoreError {
        let message = format!("transaction cancelled: {}", self.0.join(", "));
        // Throttled or in conflict with another transaction: worth retrying shortly.
        let transient = ["ThrottlingError", "ProvisionedThroughputExceeded", "TransactionConflict"];
        if self.0.iter().any(|c| transient.contains(&c.as_str())) {
            StoreError::Unavailable(message.into())
        } else {
            backend(message)
        }
    }
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

    /// PutItem under `condition` (with `values` for its placeholders, and `#version` naming
    /// `version`); a failed condition is `Conflict`.
    /// Writes `write` and adds `delta` to the connection count of its definition, in one
    /// transaction. `Some` when DynamoDB cancelled it: item 0 is `write`, item 1 the count (its
    /// condition: the definition exists).
    async fn write_counting(
        &self,
        write: TransactWriteItem,
        org: &OrgId,
        definition: &DefinitionKey,
        delta: i64,
    ) -> Result<Option<Cancelled>, StoreError> {
        let count = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(org_pk(org), def_sk(definition))))
            .update_expression("ADD conn_count :delta")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":delta", n(delta))
            .build()
            .map_err(backend)?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(write)
            .transact_items(TransactWriteItem::builder().update(count).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) if super::is_unavailable(&e) => Err(sdk(e)),
            Err(e) => match e.into_service_error() {
                aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
                    t,
                ) => Ok(Some(Cancelled::new(t.cancellation_reasons()))),
                other => Err(backend(other)),
            },
        }
    }

    async fn put_if(&self, item: Item, condition: &str, values: &[(&str, AttributeValue)]) -> Result<(), StoreError> {
        let mut req =
            self.client.put_item().table_name(&self.table).set_item(Some(item)).condition_expression(condition);
        if condition.contains("#version") {
            req = req.expression_attribute_names("#version", "version");
        }
        for (k, v) in values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(sdk(e)),
        }
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

    /// Runs a query to its end or until `want` items matched, returning items and whether more
    /// may follow.
    async fn query_until(
        &self,
        build: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        want: usize,
    ) -> Result<(Vec<Item>, bool), StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = build()
                .set_exclusive_start_key(start.take())
                .limit((want - items.len()).clamp(1, 1_000) as i32)
                .send()
                .await
                .map_err(sdk)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if items.len() < want => start = Some(k),
                Some(_) => return Ok((items, true)),
                None => return Ok((items, false)),
            }
        }
    }

    async fn delete_logs(&self, org: &OrgId, id: &ConnectionId) -> Result<(), StoreError> {
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(log_pk(org, id)))
                .projection_expression("pk, sk")
                .limit(100)
                .send()
                .await
                .map_err(sdk)?;
            let keys = out.items.unwrap_or_default();
            if keys.is_empty() {
                return Ok(());
            }
            for chunk in keys.chunks(25) {
                let mut pending: Vec<WriteRequest> = chunk
                    .iter()
                    .map(|k| {
                        let req = DeleteRequest::builder().set_key(Some(k.clone())).build().map_err(backend)?;
                        Ok(WriteRequest::builder().delete_request(req).build())
                    })
                    .collect::<Result<_, StoreError>>()?;
                for attempt in 0..8 {
                    if pending.is_empty() {
                        break;
                    }
                    let out = self
                        .client
                        .batch_write_item()
                        .request_items(&self.table, std::mem::take(&mut pending))
                        .send()
                        .await
                        .map_err(sdk)?;
                    pending = out.unprocessed_items.and_then(|mut m| m.remove(&self.table)).unwrap_or_default();
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
                    }
                }
                if !pending.is_empty() {
                    return Err(backend("deleting connection logs was throttled; they expire by TTL"));
                }
            }
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get_definition(&self, org: &OrgId, key_: &DefinitionKey) -> Result<Option<Definition>, StoreError> {
        self.get(key(org_pk(org), def_sk(key_))).await?.as_ref().map(doc_of).transpose()
    }

    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        let (items, _) = self
            .query_until(
                || {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
                        .expression_attribute_values(":pk", s(org_pk(org)))
                        .expression_attribute_values(":p", s("DEF#"))
                        .consistent_read(true)
                },
                usize::MAX,
            )
            .await?;
        items.iter().map(doc_of).collect()
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
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(sdk(e)),
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
                aws_sdk_dynamodb::operation::delete_item::DeleteItemError::ConditionalCheckFailedException(c) => {
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
            .set_item(Some(connection_item(conn)?))
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
        self.put_if(connection_item(conn)?, "#version = :v", &[(":v", n(expected_version))]).await
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
        self.delete_logs(org, id).await?;
        Ok(true)
    }

    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let limit = limit.max(1);
        // The narrowest key first: the customer's index, the definition's, or the org partition.
        let (index, pk_name, sk_name, pk) = match (&filter.customer, &filter.definition) {
            (Some(c), _) => (Some(BY_CUSTOMER), "gsi1pk", "gsi1sk", customer_pk(org, c.as_str())),
            (None, Some(d)) => (Some(BY_DEFINITION), "gsi2pk", "gsi2sk", definition_pk(org, d.as_str())),
            (None, None) => (None, "pk", "sk", org_pk(org)),
        };
        let mut conditions = Vec::new();
        let mut values: Item = HashMap::from([(":pk".to_owned(), s(pk))]);
        let mut names: HashMap<String, String> = HashMap::new();
        if filter.customer.is_some()
            && let Some(d) = &filter.definition
        {
            conditions.push("#definition = :definition");
            values.insert(":definition".into(), s(d.as_str()));
            names.insert("#definition".into(), "definition".into());
        }
        if let Some(st) = filter.status {
            conditions.push("#status = :status");
            values.insert(":status".into(), s(st.as_str()));
            names.insert("#status".into(), "status".into());
        }
        // Ids sort by creation; newest first, strictly before the cursor. On the table the sort
        // key range must also stay inside the connections (`CON#`), so BETWEEN is used and the
        // cursor item itself skipped.
        let key_condition = match cursor {
            Some(c) => {
                values.insert(":lo".into(), s("CON#"));
                values.insert(":hi".into(), s(con_sk(c)));
                format!("{pk_name} = :pk AND {sk_name} BETWEEN :lo AND :hi")
            }
            None => {
                values.insert(":lo".into(), s("CON#"));
                format!("{pk_name} = :pk AND begins_with({sk_name}, :lo)")
            }
        };
        let filter_expr = (!conditions.is_empty()).then(|| conditions.join(" AND "));
        let names = (!names.is_empty()).then_some(names);
        let cursor_sk = cursor.map(con_sk);
        let build = || {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .set_index_name(index.map(str::to_owned))
                .key_condition_expression(&key_condition)
                .set_expression_attribute_values(Some(values.clone()))
                .set_filter_expression(filter_expr.clone())
                .set_expression_attribute_names(names.clone())
                .scan_index_forward(false);
            if index.is_none() {
                q = q.consistent_read(true);
            }
            q
        };
        // One more than asked, to know whether a next page exists; one more again for the
        // cursor item that BETWEEN includes.
        let want = limit + 1 + usize::from(cursor.is_some());
        let (items, _) = self.query_until(build, want).await?;
        let mut conns = Vec::with_capacity(items.len());
        for item in &items {
            let is_cursor = matches!(item.get("sk"), Some(AttributeValue::S(sk)) if Some(sk) == cursor_sk.as_ref());
            if !is_cursor {
                conns.push(doc_of::<Connection>(item)?);
            }
        }
        let next = if conns.len() > limit {
            conns.truncate(limit);
            conns.last().map(|c| c.id.clone())
        } else {
            None
        };
        Ok(Page { items: conns, next })
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
        // `~` sorts after every id character: every entry due at or before `until`.
        let upper = format!("{:012}#~", until.unix_timestamp().max(0));
        // After a cursor: from its own index key (BETWEEN is inclusive, so the cursor entry, if
        // still there, is read and skipped, as listings do with theirs).
        let cursor = after.map(|a| due_sk(a.due, &a.org, &a.id));
        let lower = cursor.clone().unwrap_or_default();
        let (items, _) = self
            .query_until(
                || {
                    let q = self.client.query().table_name(&self.table).index_name(REFRESH_DUE);
                    let q = q
                        .expression_attribute_values(":p", s(format!("DUE#{shard}")))
                        .expression_attribute_values(":u", s(upper.clone()));
                    if cursor.is_some() {
                        q.key_condition_expression("gsi3pk = :p AND gsi3sk BETWEEN :l AND :u")
                            .expression_attribute_values(":l", s(lower.clone()))
                    } else {
                        q.key_condition_expression("gsi3pk = :p AND gsi3sk <= :u")
                    }
                },
                limit.max(1) + usize::from(cursor.is_some()),
            )
            .await?;
        let mut entries = Vec::with_capacity(items.len());
        for item in &items {
            let text = |k: &str| match item.get(k) {
                Some(AttributeValue::S(v)) => Ok(v.as_str()),
                _ => Err(backend("a due-index entry lacks its keys")),
            };
            let sk3 = text("gsi3sk")?;
            if Some(sk3) == cursor.as_deref() {
                continue;
            }
            let org = OrgId::parse(text("pk")?.trim_start_matches("ORG#")).map_err(backend)?;
            let id = ConnectionId::parse(text("sk")?.trim_start_matches("CON#")).map_err(backend)?;
            let due =
                sk3.split('#').next().and_then(|d| d.parse().ok()).ok_or_else(|| backend("a malformed due key"))?;
            entries.push(DueEntry { org, id, due });
        }
        entries.truncate(limit);
        Ok(entries)
    }

    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        self.put_if(revocation_item(job)?, "attribute_not_exists(pk)", &[]).await
    }

    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        let (items, _) = self
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

    async fn due_revocations(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<RevocationJob>, StoreError> {
        let upper = format!("{:012}#~", until.unix_timestamp().max(0));
        let mut jobs = Vec::new();
        for shard in 0..DUE_SHARDS {
            let (keys, _) = self
                .query_until(
                    || {
                        self.client
                            .query()
                            .table_name(&self.table)
                            .index_name(REFRESH_DUE)
                            .key_condition_expression("gsi3pk = :p AND gsi3sk <= :u")
                            .expression_attribute_values(":p", s(format!("RDUE#{shard}")))
                            .expression_attribute_values(":u", s(upper.clone()))
                    },
                    limit.saturating_sub(jobs.len()).max(1),
                )
                .await?;
            // The index projects keys only: read each job.
            for k in keys {
                let (Some(pk), Some(sk)) = (k.get("pk"), k.get("sk")) else { continue };
                let item =
                    self.get(HashMap::from([("pk".to_owned(), pk.clone()), ("sk".to_owned(), sk.clone())])).await?;
                if let Some(item) = item {
                    jobs.push(doc_of(&item)?);
                }
            }
            if jobs.len() >= limit {
                break;
            }
        }
        jobs.truncate(limit);
        Ok(jobs)
    }

    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        self.put_if(revocation_item(job)?, "attempts = :a", &[(":a", n(expected_attempts))]).await
    }

    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(revocation_pk(&job.org, &job.connection_id), job.id.clone())))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let mut item = key(format!("STATE#{}", state.hash), "STATE".to_owned());
        item.insert("kind".into(), s("oauth_state"));
        item.insert("doc".into(), s(serde_json::to_string(state).map_err(backend)?));
        // TTL removes it eventually; `take` checks the expiry itself, as TTL lags.
        item.insert(TTL_ATTRIBUTE.into(), n(state.expires_at.unix_timestamp()));
        self.put_if(item, "attribute_not_exists(pk)", &[]).await
    }

    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        // DeleteItem returning the old item: of concurrent takes, exactly one gets it.
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("STATE#{hash}"), "STATE".to_owned())))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        let Some(item) = out.attributes.filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let state: OAuthState = doc_of(&item)?;
        Ok((state.expires_at > now).then_some(state))
    }

    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError> {
        let sk = {
            let mut g = self.log_ids.lock().unwrap_or_else(|p| p.into_inner());
            g.generate().map_err(backend)?.to_string()
        };
        let expires = OffsetDateTime::now_utc().unix_timestamp() + LOG_RETENTION.as_secs() as i64;
        let mut item = key(log_pk(org, id), sk);
        item.insert("kind".into(), s("log"));
        item.insert("doc".into(), s(serde_json::to_string(entry).map_err(backend)?));
        item.insert(TTL_ATTRIBUTE.into(), n(expires));
        self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await.map_err(sdk)?;
        Ok(())
    }

    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let (items, _) = self
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

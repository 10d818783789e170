//! Records as DynamoDB items and back: the key layout of docs/dynamodb.md, each record's
//! document (`doc`, JSON) beside the key and index attributes derived from it. Every record
//! becomes an item through `TryFrom` here, and comes back through [`doc_of`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use time::OffsetDateTime;

use super::write::backend;
use super::{DUE_SHARDS, TTL_ATTRIBUTE};
use crate::domain::{Connection, ConnectionId, DefinitionKey, LogEntry, OAuthState, OrgId, RevocationJob, due_second};
use crate::ports::{DueEntry, StoreError};

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The due-index shard of a connection: a stable hash (FNV-1a) of its id.
pub fn due_shard(id: &ConnectionId) -> u32 {
    shard_of(id.as_str())
}

/// The due-index shard of any record id: FNV-1a of it, modulo [`DUE_SHARDS`].
pub(super) fn shard_of(id: &str) -> u32 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h % u64::from(DUE_SHARDS)) as u32
}

pub(super) fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

pub(super) fn def_sk(key: &DefinitionKey) -> String {
    format!("DEF#{key}")
}

pub(super) fn con_sk(id: &ConnectionId) -> String {
    format!("CON#{id}")
}

pub(super) fn log_pk(org: &OrgId, id: &ConnectionId) -> String {
    format!("LOG#{org}#{id}")
}

pub(super) fn customer_pk(org: &OrgId, customer: &str) -> String {
    format!("ORG#{org}#CUS#{customer}")
}

pub(super) fn definition_pk(org: &OrgId, key: &str) -> String {
    format!("ORG#{org}#DEF#{key}")
}

pub(super) fn revocation_pk(org: &OrgId, id: &ConnectionId) -> String {
    format!("REVOKE#{org}#{id}")
}

pub(super) fn state_pk(hash: &str) -> String {
    format!("STATE#{hash}")
}

/// The sort key of every pending authorization (its hash is the partition).
pub(super) const STATE_SK: &str = "STATE";

pub(super) fn key(pk: String, sk: String) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

/// The table key (`pk`, `sk`) of an item read from an index: every projection carries it.
pub(super) fn table_key(item: &Item) -> Result<Item, StoreError> {
    ["pk", "sk"]
        .into_iter()
        .map(|k| match item.get(k) {
            Some(v @ AttributeValue::S(_)) => Ok((k.to_owned(), v.clone())),
            _ => Err(backend("an index entry lacks its table key")),
        })
        .collect()
}

/// The id of the connection whose table or index item this is (its `sk`, `CON#{id}`).
pub(super) fn connection_id_of(item: &Item) -> Result<ConnectionId, StoreError> {
    match item.get("sk") {
        Some(AttributeValue::S(sk)) if sk.starts_with("CON#") => {
            ConnectionId::parse(&sk["CON#".len()..]).map_err(backend)
        }
        _ => Err(backend("a connection item lacks its sort key")),
    }
}

/// A connection's sort key in the due index: due time (zero-padded Unix seconds, rounded up
/// by [`crate::domain::due_second`], so that text order is time order), then organization and
/// id.
pub(super) fn due_sk(due: i64, org: &OrgId, id: &ConnectionId) -> String {
    format!("{:012}#{org}#{id}", due.max(0))
}

/// The upper bound of a due-index range: every entry due at or before `until` (`~` sorts after
/// every id character).
pub(super) fn due_upper(until: OffsetDateTime) -> String {
    format!("{:012}#~", until.unix_timestamp().max(0))
}

/// The record an item holds, read from its `doc`.
pub(super) fn doc_of<T: serde::de::DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    match item.get("doc") {
        Some(AttributeValue::S(doc)) => serde_json::from_str(doc).map_err(backend),
        _ => Err(backend("an item has no doc attribute")),
    }
}

fn doc(record: &impl serde::Serialize) -> Result<AttributeValue, StoreError> {
    Ok(s(serde_json::to_string(record).map_err(backend)?))
}

impl TryFrom<&Connection> for Item {
    type Error = StoreError;

    /// The item of a connection: its document plus the key and index attributes derived from
    /// it.
    fn try_from(c: &Connection) -> Result<Self, StoreError> {
        let mut item = key(org_pk(&c.org), con_sk(&c.id));
        item.insert("kind".into(), s("connection"));
        item.insert("version".into(), n(c.version));
        item.insert("doc".into(), doc(c)?);
        item.insert("definition".into(), s(c.definition.as_str()));
        item.insert("status".into(), s(c.status.as_str()));
        if let Some(customer) = &c.customer {
            item.insert("customer".into(), s(customer.as_str()));
            item.insert("gsi1pk".into(), s(customer_pk(&c.org, customer.as_str())));
            item.insert("gsi1sk".into(), s(con_sk(&c.id)));
        }
        // The tags again as a map, so that a listing's FilterExpression can test `tags.#k = :v`.
        if !c.tags.is_empty() {
            let tags = c.tags.iter().map(|(k, v)| (k.clone(), s(v.as_str()))).collect();
            item.insert("tags".into(), AttributeValue::M(tags));
        }
        // The end user in clear too, for a listing's `?user=` filter.
        if let Some(user) = &c.user {
            item.insert("user".into(), s(user.as_str()));
        }
        item.insert("gsi2pk".into(), s(definition_pk(&c.org, c.definition.as_str())));
        item.insert("gsi2sk".into(), s(con_sk(&c.id)));
        // Sparse: only connections with a due time are in the refresh index. Every write of a
        // connection replaces its whole item (PutItem), so one whose due time was cleared (red,
        // disconnected, refreshed without a refresh token) has no `gsi3*` attributes any more and
        // leaves the index: no stale entry can survive an update.
        if let Some(due) = c.due_index_second() {
            item.insert("gsi3pk".into(), s(format!("DUE#{}", due_shard(&c.id))));
            item.insert("gsi3sk".into(), s(due_sk(due, &c.org, &c.id)));
        }
        Ok(item)
    }
}

impl TryFrom<&RevocationJob> for Item {
    type Error = StoreError;

    /// A revocation job's item: in the due index under its own `RDUE#` partitions, removed by
    /// TTL when the job expires.
    fn try_from(job: &RevocationJob) -> Result<Self, StoreError> {
        let mut item = key(revocation_pk(&job.org, &job.connection_id), job.id.clone());
        item.insert("kind".into(), s("revocation"));
        item.insert("attempts".into(), n(job.attempts));
        item.insert("doc".into(), doc(job)?);
        item.insert(TTL_ATTRIBUTE.into(), n(job.expires_at.unix_timestamp()));
        item.insert("gsi3pk".into(), s(format!("RDUE#{}", due_shard(&job.connection_id))));
        let due = due_second(job.next_attempt_at).max(0);
        item.insert("gsi3sk".into(), s(format!("{due:012}#{}#{}#{}", job.org, job.connection_id, job.id)));
        Ok(item)
    }
}

impl TryFrom<&OAuthState> for Item {
    type Error = StoreError;

    /// A pending authorization's item, keyed by its state's hash. TTL removes it eventually;
    /// taking it checks the expiry itself, as TTL lags.
    fn try_from(state: &OAuthState) -> Result<Self, StoreError> {
        let mut item = key(state_pk(&state.hash), STATE_SK.to_owned());
        item.insert("kind".into(), s("oauth_state"));
        item.insert("doc".into(), doc(state)?);
        item.insert(TTL_ATTRIBUTE.into(), n(state.expires_at.unix_timestamp()));
        Ok(item)
    }
}

/// A log line's item under its connection's `LOG#` partition, sorted by `sk` (a ULID), deleted
/// by TTL at `expires` (Unix seconds).
pub(super) fn log_item(
    org: &OrgId,
    id: &ConnectionId,
    sk: String,
    entry: &LogEntry,
    expires: i64,
) -> Result<Item, StoreError> {
    let mut item = key(log_pk(org, id), sk);
    item.insert("kind".into(), s("log"));
    item.insert("doc".into(), doc(entry)?);
    item.insert(TTL_ATTRIBUTE.into(), n(expires));
    Ok(item)
}

impl TryFrom<&Item> for DueEntry {
    type Error = StoreError;

    /// A connection's entry of the due index (its keys and index sort key; the index projects
    /// keys only).
    fn try_from(item: &Item) -> Result<Self, StoreError> {
        let text = |k: &str| match item.get(k) {
            Some(AttributeValue::S(v)) => Ok(v.as_str()),
            _ => Err(backend("a due-index entry lacks its keys")),
        };
        let org = OrgId::parse(text("pk")?.trim_start_matches("ORG#")).map_err(backend)?;
        let id = ConnectionId::parse(text("sk")?.trim_start_matches("CON#")).map_err(backend)?;
        let due = text("gsi3sk")?
            .split('#')
            .next()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| backend("a malformed due key"))?;
        Ok(DueEntry { org, id, due })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_read_back_from_their_index_keys() {
        let org = OrgId::parse("acme").unwrap();
        let id = ConnectionId::generate();
        let mut item = key(org_pk(&org), con_sk(&id));
        item.insert("gsi3sk".into(), s(due_sk(1_700_000_000, &org, &id)));
        let entry = DueEntry::try_from(&item).unwrap();
        assert_eq!(entry, DueEntry { org: org.clone(), id: id.clone(), due: 1_700_000_000 });
        // Text order is time order, and the upper bound takes every id of its second.
        assert!(due_sk(99, &org, &id) < due_sk(100, &org, &id));
        assert!(due_sk(100, &org, &id) < due_upper(OffsetDateTime::from_unix_timestamp(100).unwrap()));
        item.remove("gsi3sk");
        assert!(DueEntry::try_from(&item).is_err());
    }
}

//! Webhooks and their deliveries in SQLite (SPEC section 11).
//!
//! - `webhooks`: one row per endpoint, keyed `(org, id)`, its `version` beside the document;
//! - `webhook_deliveries`: one row per delivery, keyed `(org, webhook_id, id)`, with the columns
//!   the queries need beside the document: `status`, `next_ms` (the next attempt, Unix
//!   milliseconds, set only while `pending`), `created_ms` and `expires_ms`.
//!
//! There is no TTL in SQLite: every new delivery first purges the rows expired at its
//! `created_at` (the service clock's now). Conditional writes are single statements (`ON
//! CONFLICT DO NOTHING`, `WHERE version = ?`), so concurrent writers serialize on SQLite's lock.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{backend, from_json, to_json};
use crate::domain::{DeliveryStatus, Webhook, WebhookDelivery};
use crate::ports::{DeliveryCursor, Expect, Page, StoreError};

/// The tables (part of the store's schema). `webhook_deliveries_due` serves `due`
/// (`status = 'pending' AND next_ms <= ?`, then numbered per organization and ordered round by
/// round), `webhook_deliveries_recent`
/// serves `list_deliveries` (newest first), `webhook_deliveries_expiry` the purge.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhooks (
    org TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    org TEXT NOT NULL, webhook_id TEXT NOT NULL, id TEXT NOT NULL,
    status TEXT NOT NULL, version INTEGER NOT NULL, next_ms INTEGER,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (org, webhook_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_ms);
CREATE INDEX IF NOT EXISTS webhook_deliveries_recent ON webhook_deliveries (org, webhook_id, created_ms, id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_expiry ON webhook_deliveries (expires_ms);
";

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The columns of a delivery beside its document.
struct DeliveryRow {
    org: String,
    webhook: String,
    id: String,
    status: &'static str,
    version: i64,
    next_ms: Option<i64>,
    created_ms: i64,
    expires_ms: i64,
    doc: String,
}

impl DeliveryRow {
    fn from(d: &WebhookDelivery) -> Result<Self, StoreError> {
        let pending = d.status == DeliveryStatus::Pending;
        Ok(Self {
            org: d.org.to_string(),
            webhook: d.webhook_id.to_string(),
            id: d.id.clone(),
            status: d.status.into(),
            version: d.version as i64,
            // Only pending deliveries are due: the others never match the due query.
            next_ms: d.next_attempt_at.filter(|_| pending).map(ms),
            created_ms: ms(d.created_at),
            expires_ms: ms(d.expires_at),
            doc: to_json(d)?,
        })
    }
}

fn docs<T: serde::de::DeserializeOwned>(
    db: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = db.prepare(sql).map_err(backend)?;
    let docs = stmt
        .query_map(params, |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    docs.iter().map(|d| from_json(d)).collect()
}

pub(super) fn put_webhook(db: &mut rusqlite::Connection, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
    let (org, id, version, doc) = (hook.org.to_string(), hook.id.to_string(), hook.version as i64, to_json(hook)?);
    let n = match expect {
        Expect::Absent => db.execute(
            "INSERT INTO webhooks (org, id, version, doc) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![org, id, version, doc],
        ),
        Expect::Version(v) => db.execute(
            "UPDATE webhooks SET version = ?3, doc = ?4 WHERE org = ?1 AND id = ?2 AND version = ?5",
            params![org, id, version, doc, v as i64],
        ),
    }
    .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

pub(super) fn get_webhook(db: &mut rusqlite::Connection, org: &str, id: &str) -> Result<Option<Webhook>, StoreError> {
    let doc: Option<String> = db
        .query_row("SELECT doc FROM webhooks WHERE org = ?1 AND id = ?2", params![org, id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    doc.as_deref().map(from_json).transpose()
}

pub(super) fn list_webhooks(db: &mut rusqlite::Connection, org: &str) -> Result<Vec<Webhook>, StoreError> {
    docs(db, "SELECT doc FROM webhooks WHERE org = ?1 ORDER BY id", params![org])
}

/// Deletes the webhook and every delivery of it in one transaction.
pub(super) fn delete_webhook(db: &mut rusqlite::Connection, org: &str, id: &str) -> Result<bool, StoreError> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let n = tx.execute("DELETE FROM webhooks WHERE org = ?1 AND id = ?2", params![org, id]).map_err(backend)?;
    tx.execute("DELETE FROM webhook_deliveries WHERE org = ?1 AND webhook_id = ?2", params![org, id])
        .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(n > 0)
}

pub(super) fn insert_delivery(db: &mut rusqlite::Connection, d: &WebhookDelivery) -> Result<bool, StoreError> {
    let row = DeliveryRow::from(d)?;
    db.execute("DELETE FROM webhook_deliveries WHERE expires_ms <= ?1", params![row.created_ms]).map_err(backend)?;
    let n = db
        .execute(
            "INSERT INTO webhook_deliveries
             (org, webhook_id, id, status, version, next_ms, created_ms, expires_ms, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
            params![
                row.org,
                row.webhook,
                row.id,
                row.status,
                row.version,
                row.next_ms,
                row.created_ms,
                row.expires_ms,
                row.doc
            ],
        )
        .map_err(backend)?;
    Ok(n == 1)
}

pub(super) fn get_delivery(
    db: &mut rusqlite::Connection,
    org: &str,
    webhook: &str,
    id: &str,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let doc: Option<String> = db
        .query_row(
            "SELECT doc FROM webhook_deliveries WHERE org = ?1 AND webhook_id = ?2 AND id = ?3",
            params![org, webhook, id],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    doc.as_deref().map(from_json).transpose()
}

/// A page newest first: a keyset on `(created_ms, id)` after the cursor, the status filter in
/// the same statement, one row more than the page to know whether another follows.
pub(super) fn list_deliveries(
    db: &mut rusqlite::Connection,
    org: &str,
    webhook: &str,
    status: Option<DeliveryStatus>,
    limit: usize,
    cursor: Option<&DeliveryCursor>,
) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
    let limit = limit.max(1);
    let status: Option<&'static str> = status.map(Into::into);
    let (after_ms, after_id) = match cursor {
        Some(c) => (Some(c.created_ms()), Some(c.id.as_str())),
        None => (None, None),
    };
    let mut items: Vec<WebhookDelivery> = docs(
        db,
        "SELECT doc FROM webhook_deliveries WHERE org = ?1 AND webhook_id = ?2
         AND (?3 IS NULL OR status = ?3)
         AND (?4 IS NULL OR created_ms < ?4 OR (created_ms = ?4 AND id < ?5))
         ORDER BY created_ms DESC, id DESC LIMIT ?6",
        params![org, webhook, status, after_ms, after_id, limit as i64 + 1],
    )?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(DeliveryCursor::after)
    } else {
        None
    };
    Ok(Page { items, next })
}

pub(super) fn update_delivery(
    db: &mut rusqlite::Connection,
    d: &WebhookDelivery,
    expected_version: u64,
) -> Result<(), StoreError> {
    let row = DeliveryRow::from(d)?;
    let n = db
        .execute(
            "UPDATE webhook_deliveries SET status = ?4, version = ?5, next_ms = ?6, expires_ms = ?7, doc = ?8
             WHERE org = ?1 AND webhook_id = ?2 AND id = ?3 AND version = ?9",
            params![
                row.org,
                row.webhook,
                row.id,
                row.status,
                row.version,
                row.next_ms,
                row.expires_ms,
                row.doc,
                expected_version as i64
            ],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

/// Pending deliveries due at or before `until`, round by round among organizations (the port's
/// order): each one's soonest, then each one's second soonest..., within a round soonest first
/// (then organization, webhook, id).
pub(super) fn due(
    db: &mut rusqlite::Connection,
    until: OffsetDateTime,
    limit: usize,
) -> Result<Vec<WebhookDelivery>, StoreError> {
    let pending: &str = DeliveryStatus::Pending.into();
    docs(
        db,
        "SELECT doc FROM (
             SELECT doc, next_ms, org, webhook_id, id,
                    ROW_NUMBER() OVER (PARTITION BY org ORDER BY next_ms, webhook_id, id) AS nth
             FROM webhook_deliveries WHERE status = ?1 AND next_ms <= ?2)
         WHERE nth <= ?3
         ORDER BY nth, next_ms, org, webhook_id, id LIMIT ?3",
        // Past i64 (usize::MAX: no limit) reads as i64::MAX, not as -1 (which `nth <= ?3` would
        // match nothing by).
        params![pending, ms(until), i64::try_from(limit).unwrap_or(i64::MAX)],
    )
}

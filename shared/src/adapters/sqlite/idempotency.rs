//! Idempotency records in SQLite: the `idempotency` table, one row per scoped key. There is no
//! TTL in SQLite, so every claim first purges the rows past `expires_at`; a row that no longer
//! holds its key (expired, or an abandoned claim) is taken over in the same IMMEDIATE
//! transaction that checks it, so concurrent claims of one key serialize.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use super::{backend, from_json, to_json};
use crate::domain::IdempotencyRecord;
use crate::ports::StoreError;

/// The table (part of the store's schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    id TEXT PRIMARY KEY, claim TEXT NOT NULL, done INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
";

pub(super) fn claim(
    db: &mut rusqlite::Connection,
    claim: &IdempotencyRecord,
    now: OffsetDateTime,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let doc = to_json(claim)?;
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    tx.execute("DELETE FROM idempotency WHERE expires_at <= ?1", params![now.unix_timestamp()]).map_err(backend)?;
    let existing: Option<String> = tx
        .query_row("SELECT doc FROM idempotency WHERE id = ?1", params![claim.id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    if let Some(existing) = existing {
        let record: IdempotencyRecord = from_json(&existing)?;
        if record.holds_key(now) {
            return Ok(Some(record));
        }
    }
    tx.execute(
        "INSERT INTO idempotency (id, claim, done, expires_at, doc) VALUES (?1, ?2, 0, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET claim = excluded.claim, done = 0, expires_at = excluded.expires_at,
         doc = excluded.doc",
        params![claim.id, claim.claim, claim.expires_at.unix_timestamp(), doc],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(None)
}

pub(super) fn complete(db: &mut rusqlite::Connection, done: &IdempotencyRecord) -> Result<(), StoreError> {
    let n = db
        .execute(
            "UPDATE idempotency SET done = 1, doc = ?3 WHERE id = ?1 AND claim = ?2",
            params![done.id, done.claim, to_json(done)?],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

pub(super) fn release(db: &mut rusqlite::Connection, claim: &IdempotencyRecord) -> Result<(), StoreError> {
    db.execute("DELETE FROM idempotency WHERE id = ?1 AND claim = ?2 AND done = 0", params![claim.id, claim.claim])
        .map_err(backend)?;
    Ok(())
}

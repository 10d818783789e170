//! Revocation jobs in SQLite: one row per job, keyed by its id, with `attempts` (the
//! condition of an update), `next_at` (Unix seconds rounded up, as the connections' due index:
//! [`due_second`]) and `expires_at` (Unix seconds) beside the document.
//! There is no TTL in SQLite: every new job first deletes the jobs past their lifetime.

use rusqlite::params;

use super::{backend, from_json, to_json};
use crate::domain::{RevocationJob, due_second};
use crate::ports::StoreError;

/// The table (part of the store's schema). `revocations_due` serves `due`.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revocations (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, connection_id TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_by_connection ON revocations (org, connection_id);
CREATE INDEX IF NOT EXISTS revocations_due ON revocations (next_at);
";

/// Inserts a new job ([`StoreError::Conflict`] if its id is taken).
pub(super) fn put(db: &rusqlite::Connection, job: &RevocationJob) -> Result<(), StoreError> {
    let doc = to_json(job)?;
    db.execute("DELETE FROM revocations WHERE expires_at <= unixepoch()", []).map_err(backend)?;
    let n = db
        .execute(
            "INSERT INTO revocations (id, org, connection_id, attempts, next_at, expires_at, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![
                job.id,
                job.org.as_str(),
                job.connection_id.as_str(),
                job.attempts,
                due_second(job.next_attempt_at),
                job.expires_at.unix_timestamp(),
                doc
            ],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

/// The jobs of one connection, by id.
pub(super) fn of(db: &rusqlite::Connection, org: &str, id: &str) -> Result<Vec<RevocationJob>, StoreError> {
    let mut stmt =
        db.prepare("SELECT doc FROM revocations WHERE org = ?1 AND connection_id = ?2 ORDER BY id").map_err(backend)?;
    let docs = stmt
        .query_map(params![org, id], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    docs.iter().map(|d| from_json(d)).collect()
}

/// Up to `limit` unexpired jobs whose next attempt is due by `until` (Unix seconds), taken
/// round by round: each organization's soonest, then each one's second soonest, up to `per_org`
/// of one organization (numbered per organization by a window function over the due rows);
/// within a round soonest first, ties by organization, connection and id.
pub(super) fn due(
    db: &rusqlite::Connection,
    until: i64,
    limit: usize,
    per_org: usize,
) -> Result<Vec<RevocationJob>, StoreError> {
    let mut stmt = db
        .prepare(
            "SELECT doc FROM (
                SELECT doc, next_at, org, connection_id, id,
                    ROW_NUMBER() OVER (PARTITION BY org ORDER BY next_at, connection_id, id) AS nth
                FROM revocations WHERE next_at <= ?1 AND expires_at > ?1
             ) WHERE nth <= ?3 ORDER BY nth, next_at, org, connection_id, id LIMIT ?2",
        )
        .map_err(backend)?;
    // `usize::MAX` (no cap) is `i64::MAX` to SQLite, not -1.
    let (limit, per_org) = (i64::try_from(limit).unwrap_or(i64::MAX), i64::try_from(per_org).unwrap_or(i64::MAX));
    let docs = stmt
        .query_map(params![until, limit, per_org], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    docs.iter().map(|d| from_json(d)).collect()
}

/// Replaces the job if its stored attempts are `expected_attempts` ([`StoreError::Conflict`]
/// if not, or if it is gone).
pub(super) fn update(db: &rusqlite::Connection, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
    let doc = to_json(job)?;
    let n = db
        .execute(
            "UPDATE revocations SET attempts = ?2, next_at = ?3, doc = ?4 WHERE id = ?1 AND attempts = ?5",
            params![job.id, job.attempts, due_second(job.next_attempt_at), doc, expected_attempts],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

pub(super) fn delete(db: &rusqlite::Connection, id: &str) -> Result<bool, StoreError> {
    let n = db.execute("DELETE FROM revocations WHERE id = ?1", params![id]).map_err(backend)?;
    Ok(n > 0)
}

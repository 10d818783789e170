//! Connect sessions in SQLite: the `connect_sessions` table, one row per session. The browser
//! hash is a column of its own (the document holds the session as created), so that trading the
//! link is one conditional UPDATE. There is no TTL in SQLite: every new session first purges
//! the expired rows.

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::{backend, from_json, to_json};
use crate::domain::ConnectSession;
use crate::ports::StoreError;

/// The table (part of the store's schema). `expires_ms`: Unix milliseconds.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS connect_sessions (
    id TEXT PRIMARY KEY, link_hash TEXT NOT NULL, browser_hash TEXT,
    expires_ms INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connect_sessions_expiry ON connect_sessions (expires_ms);
";

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The session of a row: its document with the row's browser hash.
fn session(doc: &str, browser_hash: Option<String>) -> Result<ConnectSession, StoreError> {
    let mut s: ConnectSession = from_json(doc)?;
    s.browser_hash = browser_hash;
    Ok(s)
}

/// Inserts `s`, first purging the sessions expired when it was created (its `created_at` is
/// the service clock's now).
pub(super) fn put(db: &mut rusqlite::Connection, s: &ConnectSession) -> Result<(), StoreError> {
    let doc = to_json(&ConnectSession { browser_hash: None, ..s.clone() })?;
    db.execute("DELETE FROM connect_sessions WHERE expires_ms <= ?1", params![ms(s.created_at)]).map_err(backend)?;
    let n = db
        .execute(
            "INSERT INTO connect_sessions (id, link_hash, browser_hash, expires_ms, doc) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT DO NOTHING",
            params![s.id, s.link_hash, s.browser_hash, ms(s.expires_at), doc],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

pub(super) fn trade(
    db: &mut rusqlite::Connection,
    id: &str,
    link_hash: &str,
    browser_hash: &str,
    now: OffsetDateTime,
) -> Result<Option<ConnectSession>, StoreError> {
    let doc: Option<String> = db
        .query_row(
            "UPDATE connect_sessions SET browser_hash = ?3
             WHERE id = ?1 AND link_hash = ?2 AND browser_hash IS NULL AND expires_ms > ?4 RETURNING doc",
            params![id, link_hash, browser_hash, ms(now)],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    doc.map(|d| session(&d, Some(browser_hash.to_owned()))).transpose()
}

pub(super) fn get(
    db: &mut rusqlite::Connection,
    id: &str,
    now: OffsetDateTime,
) -> Result<Option<ConnectSession>, StoreError> {
    let row: Option<(String, Option<String>)> = db
        .query_row(
            "SELECT doc, browser_hash FROM connect_sessions WHERE id = ?1 AND expires_ms > ?2",
            params![id, ms(now)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    row.map(|(doc, hash)| session(&doc, hash)).transpose()
}

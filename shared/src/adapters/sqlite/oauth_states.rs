//! Pending OAuth authorizations in SQLite: one row per state, keyed by the state's hash, its
//! `expires_at` (Unix seconds) beside the document. There is no TTL in SQLite: every new state
//! first deletes the expired ones, and taking a state deletes it whether or not it expired.

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::{backend, from_json, to_json};
use crate::domain::OAuthState;
use crate::ports::StoreError;

/// The table (part of the store's schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS oauth_states (
    hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
";

/// Inserts a new state ([`StoreError::Conflict`] if its hash is taken).
pub(super) fn put(db: &rusqlite::Connection, state: &OAuthState) -> Result<(), StoreError> {
    let doc = to_json(state)?;
    db.execute("DELETE FROM oauth_states WHERE expires_at <= unixepoch()", []).map_err(backend)?;
    let n = db
        .execute(
            "INSERT INTO oauth_states (hash, expires_at, doc) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![state.hash, state.expires_at.unix_timestamp(), doc],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

/// Deletes the state of `hash` and returns it if it had not expired at `now`: each state is
/// used once.
pub(super) fn take(
    db: &rusqlite::Connection,
    hash: &str,
    now: OffsetDateTime,
) -> Result<Option<OAuthState>, StoreError> {
    let taken: Option<(String, i64)> = db
        .query_row("DELETE FROM oauth_states WHERE hash = ?1 RETURNING doc, expires_at", params![hash], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(backend)?;
    match taken {
        Some((doc, expires)) if expires > now.unix_timestamp() => Ok(Some(from_json(&doc)?)),
        _ => Ok(None),
    }
}

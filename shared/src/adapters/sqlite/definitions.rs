//! Integration definitions in SQLite: one row per `(org, key)`, its `version` beside the
//! document. A definition in use by a connection cannot be deleted (checked in the deleting
//! transaction).

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{backend, from_json, to_json};
use crate::domain::Definition;
use crate::ports::{Expect, StoreError};

/// The table (part of the store's schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS definitions (
    org TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (org, key)
) WITHOUT ROWID;
";

/// A definition's document, for a reader connection.
pub(super) fn get_doc(db: &rusqlite::Connection, org: &str, key: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT doc FROM definitions WHERE org = ?1 AND key = ?2")?
        .query_row(params![org, key], |r| r.get(0))
        .optional()
}

pub(super) fn list(db: &rusqlite::Connection, org: &str) -> Result<Vec<Definition>, StoreError> {
    let mut stmt = db.prepare("SELECT doc FROM definitions WHERE org = ?1 ORDER BY key").map_err(backend)?;
    let docs = stmt
        .query_map(params![org], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    docs.iter().map(|d| from_json(d)).collect()
}

/// A definition's row: its key and version beside its JSON document.
pub(super) struct DefinitionRow {
    org: String,
    key: String,
    version: i64,
    doc: String,
}

impl DefinitionRow {
    pub(super) fn from(def: &Definition) -> Result<Self, StoreError> {
        Ok(Self { org: def.org.to_string(), key: def.key.to_string(), version: def.version as i64, doc: to_json(def)? })
    }
}

/// Writes the definition if the stored one is as `expect` says ([`StoreError::Conflict`] if
/// not).
pub(super) fn put(db: &mut rusqlite::Connection, row: &DefinitionRow, expect: Expect) -> Result<(), StoreError> {
    let DefinitionRow { org, key, version, doc } = row;
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let current: Option<i64> = tx
        .query_row("SELECT version FROM definitions WHERE org = ?1 AND key = ?2", params![org, key], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let ok = match (expect, current) {
        (Expect::Absent, None) => true,
        (Expect::Version(v), Some(c)) => v as i64 == c,
        _ => false,
    };
    if !ok {
        return Err(StoreError::Conflict);
    }
    tx.execute(
        "INSERT INTO definitions (org, key, version, doc) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (org, key) DO UPDATE SET version = excluded.version, doc = excluded.doc",
        params![org, key, version, doc],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Deletes the definition unless a connection of the organization uses it
/// ([`StoreError::InUse`]); whether there was one.
pub(super) fn delete(db: &mut rusqlite::Connection, org: &str, key: &str) -> Result<bool, StoreError> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let used: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM connections WHERE org = ?1 AND definition = ?2)",
            params![org, key],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if used {
        return Err(StoreError::InUse);
    }
    let n = tx.execute("DELETE FROM definitions WHERE org = ?1 AND key = ?2", params![org, key]).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(n > 0)
}

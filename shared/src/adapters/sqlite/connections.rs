//! Connections and their logs in SQLite.
//!
//! - `connections`: one row per `(org, id)`, with the columns the queries need beside the
//!   document: `customer`, `definition`, `status`, `version` (the optimistic-concurrency
//!   check) and `due_at` (Unix seconds rounded up, [`Connection::due_index_second`]; `NULL` while nothing is
//!   scheduled, which keeps the row out of the partial due index);
//! - `logs`: a connection's log lines in insertion order (`seq`), deleted with the connection.

use rusqlite::types::Type;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::readers::Reader;
use super::{backend, from_json, to_json};
use crate::domain::{Connection, ConnectionId, LogEntry, OrgId};
use crate::ports::{ConnectionFilter, DueEntry, Page, StoreError};

/// The tables (part of the store's schema). `connections_by_customer` serves the selector's
/// candidates and customer listings, `connections_due` the sweep.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS connections (
    org TEXT NOT NULL, id TEXT NOT NULL, customer TEXT, definition TEXT NOT NULL,
    status TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL, due_at INTEGER,
    PRIMARY KEY (org, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connections_by_definition ON connections (org, definition, id);
CREATE INDEX IF NOT EXISTS connections_by_customer ON connections (org, customer, id);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org TEXT NOT NULL, connection_id TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_connection ON logs (org, connection_id, seq);
CREATE INDEX IF NOT EXISTS connections_due ON connections (due_at) WHERE due_at IS NOT NULL;
";

/// The indexed columns of a connection beside its JSON document.
pub(super) struct ConnectionRow {
    org: String,
    id: String,
    customer: Option<String>,
    definition: String,
    status: &'static str,
    version: i64,
    doc: String,
    due_at: Option<i64>,
}

impl ConnectionRow {
    pub(super) fn from(c: &Connection) -> Result<Self, StoreError> {
        Ok(Self {
            org: c.org.to_string(),
            id: c.id.to_string(),
            customer: c.customer.as_ref().map(ToString::to_string),
            definition: c.definition.to_string(),
            status: c.status.as_str(),
            version: c.version as i64,
            doc: to_json(c)?,
            due_at: c.due_index_second(),
        })
    }
}

/// Inserts a new connection: [`StoreError::DefinitionMissing`] without its definition,
/// [`StoreError::Conflict`] when the id is taken.
pub(super) fn insert(db: &mut rusqlite::Connection, row: &ConnectionRow) -> Result<(), StoreError> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let def_exists: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM definitions WHERE org = ?1 AND key = ?2)",
            params![row.org, row.definition],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if !def_exists {
        return Err(StoreError::DefinitionMissing);
    }
    let inserted = tx
        .execute(
            "INSERT INTO connections (org, id, customer, definition, status, version, doc, due_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            params![row.org, row.id, row.customer, row.definition, row.status, row.version, row.doc, row.due_at],
        )
        .map_err(backend)?;
    if inserted == 0 {
        return Err(StoreError::Conflict);
    }
    tx.commit().map_err(backend)
}

/// A connection, read on a reader connection and parsed through its kept parses.
pub(super) fn get_parsed(reader: &mut Reader, org: &str, id: &str) -> rusqlite::Result<Option<Connection>> {
    let Reader { db, parsed } = reader;
    db.prepare_cached("SELECT doc FROM connections WHERE org = ?1 AND id = ?2")?
        .query_row(params![org, id], |r| parsed.connection(id, text_at(r, 0)?).map_err(unreadable(0)))
        .optional()
}

/// Column `i` of `row` as text, borrowed from SQLite's buffer.
fn text_at<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(i)?.as_str().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// The error of a document (column `i`) that is not a connection record.
fn unreadable(i: usize) -> impl Fn(serde_json::Error) -> rusqlite::Error {
    move |e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))
}

/// Replaces the connection if its stored version is `expected` ([`StoreError::Conflict`] if
/// not, or if it is gone).
pub(super) fn update(db: &rusqlite::Connection, row: &ConnectionRow, expected: i64) -> Result<(), StoreError> {
    let n = db
        .execute(
            "UPDATE connections SET customer = ?3, definition = ?4, status = ?5, version = ?6, doc = ?7, due_at = ?9
             WHERE org = ?1 AND id = ?2 AND version = ?8",
            params![
                row.org,
                row.id,
                row.customer,
                row.definition,
                row.status,
                row.version,
                row.doc,
                expected,
                row.due_at
            ],
        )
        .map_err(backend)?;
    if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
}

/// Deletes the connection and its logs; whether there was one.
pub(super) fn delete(db: &mut rusqlite::Connection, org: &str, id: &str) -> Result<bool, StoreError> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let n = tx.execute("DELETE FROM connections WHERE org = ?1 AND id = ?2", params![org, id]).map_err(backend)?;
    tx.execute("DELETE FROM logs WHERE org = ?1 AND connection_id = ?2", params![org, id]).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(n > 0)
}

/// A listing's parameters, owned (built on the caller's thread, run on the writer's).
pub(super) struct Listing {
    org: String,
    customer: Option<String>,
    definition: Option<String>,
    status: Option<&'static str>,
    /// The id the page starts strictly before.
    cursor: Option<String>,
    limit: usize,
    /// Each tag filter as a JSON path into the document (keys are `[a-z0-9_.-]`, safe inside a
    /// quoted path label) and the value.
    tags: Vec<(String, String)>,
    user: Option<String>,
}

impl Listing {
    pub(super) fn new(org: &OrgId, filter: &ConnectionFilter, limit: usize, cursor: Option<&ConnectionId>) -> Self {
        Self {
            org: org.to_string(),
            customer: filter.customer.as_ref().map(ToString::to_string),
            definition: filter.definition.as_ref().map(ToString::to_string),
            status: filter.status.map(|s| s.as_str()),
            cursor: cursor.map(ToString::to_string),
            limit: limit.max(1),
            tags: filter.tags.iter().map(|t| (format!("$.tags.\"{}\"", t.key), t.value.clone())).collect(),
            user: filter.user.as_ref().map(ToString::to_string),
        }
    }
}

/// A page of a listing's connections, newest first (one more row read than the page, to know
/// whether a next page exists).
pub(super) fn list(db: &rusqlite::Connection, q: Listing) -> Result<Page<Connection>, StoreError> {
    let Listing { org, customer, definition, status, cursor, limit, tags, user } = q;
    // The tags bound as ?7 and ?8, ?9 and ?10..., the end user (from the document too) after
    // them.
    let tag_sql: String =
        (0..tags.len()).map(|i| format!(" AND json_extract(doc, ?{}) = ?{}", 7 + 2 * i, 8 + 2 * i)).collect();
    let user_sql = format!(" AND (?{0} IS NULL OR json_extract(doc, '$.user') = ?{0})", 7 + 2 * tags.len());
    let mut stmt = db
        .prepare(&format!(
            "SELECT doc FROM connections WHERE org = ?1
               AND (?2 IS NULL OR customer = ?2) AND (?3 IS NULL OR definition = ?3)
               AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR id < ?5){tag_sql}{user_sql}
             ORDER BY id DESC LIMIT ?6"
        ))
        .map_err(backend)?;
    let mut bound: Vec<Box<dyn rusqlite::ToSql>> = vec![
        Box::new(org),
        Box::new(customer),
        Box::new(definition),
        Box::new(status),
        Box::new(cursor),
        Box::new((limit + 1) as i64),
    ];
    for (path, value) in tags {
        bound.push(Box::new(path));
        bound.push(Box::new(value));
    }
    bound.push(Box::new(user));
    let docs = stmt
        .query_map(rusqlite::params_from_iter(bound), |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut items: Vec<Connection> = docs.iter().map(|d| from_json(d)).collect::<Result<_, _>>()?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

/// One customer's connections of one definition, oldest first, read on a reader connection and
/// parsed through its kept parses: the customer index `(org, customer, id)`, the definition
/// filtered within it.
pub(super) fn selector_candidates(
    reader: &mut Reader,
    org: &str,
    definition: &str,
    customer: &str,
) -> rusqlite::Result<Vec<Connection>> {
    let Reader { db, parsed } = reader;
    db.prepare_cached(
        "SELECT id, doc FROM connections WHERE org = ?1 AND customer = ?2 AND definition = ?3 ORDER BY id",
    )?
    .query_map(params![org, customer, definition], |r| {
        parsed.connection(text_at(r, 0)?, text_at(r, 1)?).map_err(unreadable(1))
    })?
    .collect()
}

/// Up to `limit` entries of the due index due by `until` (Unix seconds), in index order,
/// strictly after `after` (a row value comparison) when given.
pub(super) fn due(
    db: &rusqlite::Connection,
    until: i64,
    after: Option<&DueEntry>,
    limit: usize,
) -> Result<Vec<DueEntry>, StoreError> {
    let mut stmt = db
        .prepare(
            "SELECT org, id, due_at FROM connections WHERE due_at IS NOT NULL AND due_at <= ?1
             AND (?2 IS NULL OR (due_at, org, id) > (?2, ?3, ?4)) ORDER BY due_at, org, id LIMIT ?5",
        )
        .map_err(backend)?;
    let (due, org, id) = after.map_or((None, None, None), |a| (Some(a.due), Some(a.org.as_str()), Some(a.id.as_str())));
    let rows = stmt
        .query_map(params![until, due, org, id, limit as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    rows.into_iter()
        .map(|(o, i, due)| {
            Ok(DueEntry { org: OrgId::parse(&o).map_err(backend)?, id: ConnectionId::parse(&i).map_err(backend)?, due })
        })
        .collect()
}

/// Appends a log line (its JSON document) to a connection's.
pub(super) fn append_log(db: &rusqlite::Connection, org: &str, id: &str, doc: &str) -> Result<(), StoreError> {
    db.execute("INSERT INTO logs (org, connection_id, doc) VALUES (?1, ?2, ?3)", params![org, id, doc])
        .map_err(backend)?;
    Ok(())
}

/// The newest `limit` log lines of a connection, newest first.
pub(super) fn list_logs(
    db: &rusqlite::Connection,
    org: &str,
    id: &str,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    let mut stmt = db
        .prepare("SELECT doc FROM logs WHERE org = ?1 AND connection_id = ?2 ORDER BY seq DESC LIMIT ?3")
        .map_err(backend)?;
    let docs = stmt
        .query_map(params![org, id, limit as i64], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    docs.iter().map(|d| from_json(d)).collect()
}

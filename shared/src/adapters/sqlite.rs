//! The embedded store: one SQLite file in WAL mode. SQLite's file locking makes it safe for
//! several `latchkey serve` processes sharing one data directory; every write that can race
//! runs in an IMMEDIATE transaction and checks its condition inside it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use time::OffsetDateTime;

use crate::domain::{ConnectSession, IdempotencyRecord};
use crate::domain::{
    Connection, ConnectionId, CustomerId, Definition, DefinitionKey, LogEntry, OAuthState, OrgId, RevocationJob,
};
use crate::domain::{DeliveryStatus, Webhook, WebhookDelivery, WebhookId};
use crate::ports::{ConnectionFilter, DeliveryCursor, DueEntry, Expect, Page, Store, StoreError};

mod branch_keys;
mod connect;
mod idempotency;
mod readers;
mod webhooks;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS definitions (
    org TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (org, key)
) WITHOUT ROWID;
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
CREATE TABLE IF NOT EXISTS revocations (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, connection_id TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS revocations_by_connection ON revocations (org, connection_id);
CREATE INDEX IF NOT EXISTS revocations_due ON revocations (next_at);
CREATE TABLE IF NOT EXISTS oauth_states (
    hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, doc TEXT NOT NULL
) WITHOUT ROWID;
";

/// The SQLite store.
#[derive()]
pub struct SqliteStore {
    db: Arc<Mutex<rusqlite::Connection>>,
    /// Read-only connections for the lookup path's point reads (`get_connection`,
    /// `get_definition`, `find_for_selector`), one per core: see [`readers`].
    readers: Arc<readers::Readers>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(backend)
}

/// Creates the database file with mode 0600 if missing, and narrows the modes of the database
/// and its `-wal`/`-shm` files to 0600.
fn restrict_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema. The file, and the WAL and
    /// shared-memory files beside it, are mode 0600 whatever the umask (SQLite gives its side
    /// files the database file's mode); existing ones with wider modes are narrowed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        restrict_files(path).map_err(backend)?;
        let db = rusqlite::Connection::open(path).map_err(backend)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
        db.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        db.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        // Overwrite deleted content, so replaced records do not linger in free pages.
        db.pragma_update(None, "secure_delete", "ON").map_err(backend)?;
        db.execute_batch(SCHEMA).map_err(backend)?;
        db.execute_batch(idempotency::SCHEMA).map_err(backend)?;
        db.execute_batch(connect::SCHEMA).map_err(backend)?;
        db.execute_batch(webhooks::SCHEMA).map_err(backend)?;
        db.execute_batch(branch_keys::SCHEMA).map_err(backend)?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let readers = readers::Readers::open(path, cores.max(2), Duration::from_secs(10))?;
        Ok(Self { db: Arc::new(Mutex::new(db)), readers: Arc::new(readers) })
    }

    /// Runs blocking SQLite work off the async runtime.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(backend)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_webhook(&self, hook: &Webhook, expect: Expect) -> Result<(), StoreError> {
        let hook = hook.clone();
        self.run(move |db| webhooks::put_webhook(db, &hook, expect)).await
    }

    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| webhooks::get_webhook(db, &org, &id)).await
    }

    async fn list_webhooks(&self, org: &OrgId) -> Result<Vec<Webhook>, StoreError> {
        let org = org.to_string();
        self.run(move |db| webhooks::list_webhooks(db, &org)).await
    }

    async fn delete_webhook(&self, org: &OrgId, id: &WebhookId) -> Result<bool, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| webhooks::delete_webhook(db, &org, &id)).await
    }

    async fn insert_delivery(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        let delivery = delivery.clone();
        self.run(move |db| webhooks::insert_delivery(db, &delivery)).await
    }

    async fn get_delivery(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        id: &str,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        let (org, webhook, id) = (org.to_string(), webhook.to_string(), id.to_owned());
        self.run(move |db| webhooks::get_delivery(db, &org, &webhook, &id)).await
    }

    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        status: Option<DeliveryStatus>,
        limit: usize,
        cursor: Option<&DeliveryCursor>,
    ) -> Result<Page<WebhookDelivery, DeliveryCursor>, StoreError> {
        let (org, webhook, cursor) = (org.to_string(), webhook.to_string(), cursor.cloned());
        self.run(move |db| webhooks::list_deliveries(db, &org, &webhook, status, limit, cursor.as_ref())).await
    }

    async fn update_delivery(&self, delivery: &WebhookDelivery, expected_version: u64) -> Result<(), StoreError> {
        let delivery = delivery.clone();
        self.run(move |db| webhooks::update_delivery(db, &delivery, expected_version)).await
    }

    async fn due_deliveries(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.run(move |db| webhooks::due(db, until, limit)).await
    }

    async fn get_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<Option<Definition>, StoreError> {
        let (org, key) = (org.to_string(), key.to_string());
        let doc: Option<String> = self
            .readers
            .read(move |db| {
                db.prepare_cached("SELECT doc FROM definitions WHERE org = ?1 AND key = ?2")?
                    .query_row(params![org, key], |r| r.get(0))
                    .optional()
            })
            .await?;
        doc.as_deref().map(from_json).transpose()
    }

    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        let org = org.to_string();
        self.run(move |db| {
            let mut stmt = db.prepare("SELECT doc FROM definitions WHERE org = ?1 ORDER BY key").map_err(backend)?;
            let docs = stmt
                .query_map(params![org], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            docs.iter().map(|d| from_json(d)).collect()
        })
        .await
    }

    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError> {
        let (org, key, version, doc) = (def.org.to_string(), def.key.to_string(), def.version as i64, to_json(def)?);
        self.run(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let current: Option<i64> = tx
                .query_row("SELECT version FROM definitions WHERE org = ?1 AND key = ?2", params![org, key], |r| {
                    r.get(0)
                })
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
        })
        .await
    }

    async fn delete_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<bool, StoreError> {
        let (org, key) = (org.to_string(), key.to_string());
        self.run(move |db| {
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
            let n = tx
                .execute("DELETE FROM definitions WHERE org = ?1 AND key = ?2", params![org, key])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError> {
        let row = ConnectionRow::from(conn)?;
        self.run(move |db| {
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
                    params![
                        row.org,
                        row.id,
                        row.customer,
                        row.definition,
                        row.status,
                        row.version,
                        row.doc,
                        row.due_at
                    ],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        let doc: Option<String> = self
            .readers
            .read(move |db| {
                db.prepare_cached("SELECT doc FROM connections WHERE org = ?1 AND id = ?2")?
                    .query_row(params![org, id], |r| r.get(0))
                    .optional()
            })
            .await?;
        doc.as_deref().map(from_json).transpose()
    }

    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError> {
        let row = ConnectionRow::from(conn)?;
        let expected = expected_version as i64;
        self.run(move |db| {
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
        })
        .await
    }

    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let n =
                tx.execute("DELETE FROM connections WHERE org = ?1 AND id = ?2", params![org, id]).map_err(backend)?;
            tx.execute("DELETE FROM logs WHERE org = ?1 AND connection_id = ?2", params![org, id]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let org = org.to_string();
        let customer = filter.customer.as_ref().map(ToString::to_string);
        let definition = filter.definition.as_ref().map(ToString::to_string);
        let status = filter.status.map(|s| s.as_str());
        let cursor = cursor.map(ToString::to_string);
        let limit = limit.max(1);
        // Each tag condition is a JSON path into the document (keys are `[a-z0-9_.-]`, safe
        // inside a quoted path label) and the value, both bound: ?7 and ?8, ?9 and ?10...
        let tags: Vec<(String, String)> =
            filter.tags.iter().map(|t| (format!("$.tags.\"{}\"", t.key), t.value.clone())).collect();
        let tag_sql: String =
            (0..tags.len()).map(|i| format!(" AND json_extract(doc, ?{}) = ?{}", 7 + 2 * i, 8 + 2 * i)).collect();
        // The end user, from the document too, bound after the tags.
        let user = filter.user.as_ref().map(ToString::to_string);
        let user_sql = format!(" AND (?{0} IS NULL OR json_extract(doc, '$.user') = ?{0})", 7 + 2 * tags.len());
        self.run(move |db| {
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
        })
        .await
    }

    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        let (org, definition, customer) = (org.to_string(), definition.to_string(), customer.to_string());
        let docs = self
            .readers
            .read(move |db| {
                // The customer index (org, customer, id), the definition filtered within it.
                db.prepare_cached(
                    "SELECT doc FROM connections WHERE org = ?1 AND customer = ?2 AND definition = ?3 ORDER BY id",
                )?
                .query_map(params![org, customer, definition], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        docs.iter().map(|d| from_json(d)).collect()
    }

    async fn due_connections(
        &self,
        _shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let until = until.unix_timestamp();
        let after = after.map(|a| (a.due, a.org.to_string(), a.id.to_string()));
        self.run(move |db| {
            // Index order, strictly after the cursor (a row value comparison) when there is one.
            let mut stmt = db
                .prepare(
                    "SELECT org, id, due_at FROM connections WHERE due_at IS NOT NULL AND due_at <= ?1
                     AND (?2 IS NULL OR (due_at, org, id) > (?2, ?3, ?4)) ORDER BY due_at, org, id LIMIT ?5",
                )
                .map_err(backend)?;
            let (due, org, id) = after.map_or((None, None, None), |(d, o, i)| (Some(d), Some(o), Some(i)));
            let rows = stmt
                .query_map(params![until, due, org, id, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter()
                .map(|(o, i, due)| {
                    Ok(DueEntry {
                        org: OrgId::parse(&o).map_err(backend)?,
                        id: ConnectionId::parse(&i).map_err(backend)?,
                        due,
                    })
                })
                .collect()
        })
        .await
    }

    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        let row = (
            job.id.clone(),
            job.org.to_string(),
            job.connection_id.to_string(),
            job.attempts,
            job.next_attempt_at.unix_timestamp(),
            job.expires_at.unix_timestamp(),
            to_json(job)?,
        );
        self.run(move |db| {
            // Jobs past their lifetime are swept here: there is no TTL in SQLite.
            db.execute("DELETE FROM revocations WHERE expires_at <= unixepoch()", []).map_err(backend)?;
            let n = db
                .execute(
                    "INSERT INTO revocations (id, org, connection_id, attempts, next_at, expires_at, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    params![row.0, row.1, row.2, row.3, row.4, row.5, row.6],
                )
                .map_err(backend)?;
            if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
        })
        .await
    }

    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| {
            let mut stmt = db
                .prepare("SELECT doc FROM revocations WHERE org = ?1 AND connection_id = ?2 ORDER BY id")
                .map_err(backend)?;
            let docs = stmt
                .query_map(params![org, id], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            docs.iter().map(|d| from_json(d)).collect()
        })
        .await
    }

    async fn due_revocations(&self, until: OffsetDateTime, limit: usize) -> Result<Vec<RevocationJob>, StoreError> {
        let until = until.unix_timestamp();
        self.run(move |db| {
            let mut stmt = db
                .prepare(
                    "SELECT doc FROM revocations WHERE next_at <= ?1 AND expires_at > ?1 ORDER BY next_at LIMIT ?2",
                )
                .map_err(backend)?;
            let docs = stmt
                .query_map(params![until, limit as i64], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            docs.iter().map(|d| from_json(d)).collect()
        })
        .await
    }

    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        let (id, attempts, next, doc) =
            (job.id.clone(), job.attempts, job.next_attempt_at.unix_timestamp(), to_json(job)?);
        self.run(move |db| {
            let n = db
                .execute(
                    "UPDATE revocations SET attempts = ?2, next_at = ?3, doc = ?4 WHERE id = ?1 AND attempts = ?5",
                    params![id, attempts, next, doc, expected_attempts],
                )
                .map_err(backend)?;
            if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
        })
        .await
    }

    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        let id = job.id.clone();
        self.run(move |db| {
            let n = db.execute("DELETE FROM revocations WHERE id = ?1", params![id]).map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let (hash, expires, doc) = (state.hash.clone(), state.expires_at.unix_timestamp(), to_json(state)?);
        self.run(move |db| {
            // Expired states are swept here: there is no TTL in SQLite.
            db.execute("DELETE FROM oauth_states WHERE expires_at <= unixepoch()", []).map_err(backend)?;
            let n = db
                .execute(
                    "INSERT INTO oauth_states (hash, expires_at, doc) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    params![hash, expires, doc],
                )
                .map_err(backend)?;
            if n == 1 { Ok(()) } else { Err(StoreError::Conflict) }
        })
        .await
    }

    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        let hash = hash.to_owned();
        let taken: Option<(String, i64)> = self
            .run(move |db| {
                db.query_row("DELETE FROM oauth_states WHERE hash = ?1 RETURNING doc, expires_at", params![hash], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(backend)
            })
            .await?;
        match taken {
            Some((doc, expires)) if expires > now.unix_timestamp() => Ok(Some(from_json(&doc)?)),
            _ => Ok(None),
        }
    }

    async fn put_connect_session(&self, session: &ConnectSession) -> Result<(), StoreError> {
        let session = session.clone();
        self.run(move |db| connect::put(db, &session)).await
    }

    async fn trade_connect_link(
        &self,
        id: &str,
        link_hash: &str,
        browser_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ConnectSession>, StoreError> {
        let (id, link_hash, browser_hash) = (id.to_owned(), link_hash.to_owned(), browser_hash.to_owned());
        self.run(move |db| connect::trade(db, &id, &link_hash, &browser_hash, now)).await
    }

    async fn get_connect_session(&self, id: &str, now: OffsetDateTime) -> Result<Option<ConnectSession>, StoreError> {
        let id = id.to_owned();
        self.run(move |db| connect::get(db, &id, now)).await
    }

    async fn claim_idempotency(
        &self,
        claim: &IdempotencyRecord,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let claim = claim.clone();
        self.run(move |db| idempotency::claim(db, &claim, now)).await
    }

    async fn complete_idempotency(&self, done: &IdempotencyRecord) -> Result<(), StoreError> {
        let done = done.clone();
        self.run(move |db| idempotency::complete(db, &done)).await
    }

    async fn release_idempotency(&self, claim: &IdempotencyRecord) -> Result<(), StoreError> {
        let claim = claim.clone();
        self.run(move |db| idempotency::release(db, &claim)).await
    }

    async fn append_log(&self, org: &OrgId, id: &ConnectionId, entry: &LogEntry) -> Result<(), StoreError> {
        let (org, id, doc) = (org.to_string(), id.to_string(), to_json(entry)?);
        self.run(move |db| {
            db.execute("INSERT INTO logs (org, connection_id, doc) VALUES (?1, ?2, ?3)", params![org, id, doc])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| {
            let mut stmt = db
                .prepare("SELECT doc FROM logs WHERE org = ?1 AND connection_id = ?2 ORDER BY seq DESC LIMIT ?3")
                .map_err(backend)?;
            let docs = stmt
                .query_map(params![org, id, limit as i64], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            docs.iter().map(|d| from_json(d)).collect()
        })
        .await
    }
}

/// The indexed columns of a connection beside its JSON document.
struct ConnectionRow {
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
    fn from(c: &Connection) -> Result<Self, StoreError> {
        Ok(Self {
            org: c.org.to_string(),
            id: c.id.to_string(),
            customer: c.customer.as_ref().map(ToString::to_string),
            definition: c.definition.to_string(),
            status: c.status.as_str(),
            version: c.version as i64,
            doc: to_json(c)?,
            due_at: c.due_index_at().map(OffsetDateTime::unix_timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ports::Store;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn database_files_are_mode_0600_even_when_they_existed_wider() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        // A write creates the WAL and shared-memory files beside it.
        let org = crate::domain::OrgId::parse("acme").unwrap();
        store.list_definitions(&org).await.unwrap();
        let def = crate::conformance::definition(&org, "acme-api");
        store.put_definition(&def, crate::ports::Expect::Absent).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            assert!(file.exists(), "{}", file.display());
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(store);
        let fresh = dir.path().join("new.db");
        SqliteStore::open(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }

    #[tokio::test]
    async fn a_reopened_database_keeps_its_records_and_due_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.db");
        let org = crate::conformance::fresh_org();
        let def = crate::conformance::definition(&org, "acme-api");
        let mut c = crate::conformance::connection(&def, "c-1");
        let due = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        c.refresh.due_at = Some(due);
        {
            let store = SqliteStore::open(&path).unwrap();
            store.put_definition(&def, crate::ports::Expect::Absent).await.unwrap();
            store.insert_connection(&c).await.unwrap();
        }
        // Opening runs the schema again: it creates what is missing and keeps what is there.
        let store = SqliteStore::open(&path).unwrap();
        let read = store.get_connection(&org, &c.id).await.unwrap().expect("the connection is kept");
        assert_eq!(read.refresh.due_at, Some(due));
        let entries = store.due_connections(0, due, None, 10).await.unwrap();
        assert_eq!(entries.iter().map(|e| &e.id).collect::<Vec<_>>(), vec![&c.id], "the due index is kept");
    }

    #[tokio::test]
    async fn a_grant_stored_without_its_token_origin_does_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("latchkey.db")).unwrap();
        let org = crate::conformance::fresh_org();
        let def = crate::conformance::definition(&org, "acme-api");
        let mut c = crate::conformance::connection(&def, "c-1");
        c.oauth = Some(crate::domain::OAuthTokens {
            sealed: crate::domain::Sealed { key_id: "k".into(), wrapped_key: vec![1; 8], ciphertext: vec![2; 8] },
            token_type: "Bearer".into(),
            expires_at: None,
            scopes: Vec::new(),
            has_refresh_token: true,
            obtained_at: OffsetDateTime::now_utc(),
            token_origin: "https://idp.example.com".into(),
            revoke_origin: None,
            refresh_token_expires_at: None,
        });
        store.put_definition(&def, crate::ports::Expect::Absent).await.unwrap();
        store.insert_connection(&c).await.unwrap();
        assert!(store.get_connection(&org, &c.id).await.unwrap().is_some(), "a grant with its origin reads");
        // No grant is unbound: a record without the origin is an error, never a fallback.
        let changed = store
            .db
            .lock()
            .unwrap()
            .execute(
                "UPDATE connections SET doc = json_remove(doc, '$.oauth.token_origin') WHERE id = ?1",
                [c.id.as_str()],
            )
            .unwrap();
        assert_eq!(changed, 1);
        let read = store.get_connection(&org, &c.id).await;
        assert!(matches!(read, Err(StoreError::Backend(_))), "{read:?}");
    }
}

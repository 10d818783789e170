//! The embedded store: one SQLite file in WAL mode. SQLite's file locking makes it safe for
//! several `latchkey serve` processes sharing one data directory; every write that can race
//! runs in an IMMEDIATE transaction or one conditional statement, and checks its condition
//! inside it.
//!
//! This module opens the file (its modes, pragmas and schema) and implements [`Store`] by
//! running each call on the one writer connection off the async runtime, or on a reader
//! ([`readers`], with their [`anchor`]) for the lookup path's point reads. Each table's SQL
//! lives in its own module: [`definitions`], [`connections`] (and their logs), [`revocations`],
//! [`oauth_states`], [`connect`], [`idempotency`], [`webhooks`], [`branch_keys`].

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::{ConnectSession, IdempotencyRecord};
use crate::domain::{
    Connection, ConnectionId, CustomerId, Definition, DefinitionKey, LogEntry, OAuthState, OrgId, RevocationJob,
};
use crate::domain::{DeliveryStatus, Webhook, WebhookDelivery, WebhookId};
use crate::ports::{ConnectionFilter, DeliveryCursor, DueEntry, Expect, Page, Store, StoreError};

mod anchor;
mod branch_keys;
mod connect;
mod connections;
mod definitions;
mod idempotency;
mod oauth_states;
mod readers;
mod revocations;
mod webhooks;

use connections::ConnectionRow;

/// Every table's schema, run at each open: each creates what is missing and keeps what is
/// there.
const SCHEMA: [&str; 8] = [
    definitions::SCHEMA,
    connections::SCHEMA,
    revocations::SCHEMA,
    oauth_states::SCHEMA,
    idempotency::SCHEMA,
    connect::SCHEMA,
    webhooks::SCHEMA,
    branch_keys::SCHEMA,
];

/// The SQLite store.
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
        for schema in SCHEMA {
            db.execute_batch(schema).map_err(backend)?;
        }
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
        let doc = self.readers.read(move |reader| definitions::get_doc(&reader.db, &org, &key)).await?;
        doc.as_deref().map(from_json).transpose()
    }

    async fn list_definitions(&self, org: &OrgId) -> Result<Vec<Definition>, StoreError> {
        let org = org.to_string();
        self.run(move |db| definitions::list(db, &org)).await
    }

    async fn put_definition(&self, def: &Definition, expect: Expect) -> Result<(), StoreError> {
        let row = definitions::DefinitionRow::from(def)?;
        self.run(move |db| definitions::put(db, &row, expect)).await
    }

    async fn delete_definition(&self, org: &OrgId, key: &DefinitionKey) -> Result<bool, StoreError> {
        let (org, key) = (org.to_string(), key.to_string());
        self.run(move |db| definitions::delete(db, &org, &key)).await
    }

    async fn insert_connection(&self, conn: &Connection) -> Result<(), StoreError> {
        let row = ConnectionRow::from(conn)?;
        self.run(move |db| connections::insert(db, &row)).await
    }

    async fn get_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<Option<Connection>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.readers.read(move |reader| connections::get_parsed(reader, &org, &id)).await
    }

    async fn update_connection(&self, conn: &Connection, expected_version: u64) -> Result<(), StoreError> {
        let row = ConnectionRow::from(conn)?;
        self.run(move |db| connections::update(db, &row, expected_version as i64)).await
    }

    async fn delete_connection(&self, org: &OrgId, id: &ConnectionId) -> Result<bool, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| connections::delete(db, &org, &id)).await
    }

    async fn list_connections(
        &self,
        org: &OrgId,
        filter: &ConnectionFilter,
        limit: usize,
        cursor: Option<&ConnectionId>,
    ) -> Result<Page<Connection>, StoreError> {
        let listing = connections::Listing::new(org, filter, limit, cursor);
        self.run(move |db| connections::list(db, listing)).await
    }

    async fn find_for_selector(
        &self,
        org: &OrgId,
        definition: &DefinitionKey,
        customer: &CustomerId,
    ) -> Result<Vec<Connection>, StoreError> {
        let (org, definition, customer) = (org.to_string(), definition.to_string(), customer.to_string());
        self.readers.read(move |reader| connections::selector_candidates(reader, &org, &definition, &customer)).await
    }

    async fn due_connections(
        &self,
        _shard: u32,
        until: OffsetDateTime,
        after: Option<&DueEntry>,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let (until, after) = (until.unix_timestamp(), after.cloned());
        self.run(move |db| connections::due(db, until, after.as_ref(), limit)).await
    }

    async fn put_revocation(&self, job: &RevocationJob) -> Result<(), StoreError> {
        let job = job.clone();
        self.run(move |db| revocations::put(db, &job)).await
    }

    async fn revocations_of(&self, org: &OrgId, id: &ConnectionId) -> Result<Vec<RevocationJob>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| revocations::of(db, &org, &id)).await
    }

    async fn due_revocations(
        &self,
        until: OffsetDateTime,
        limit: usize,
        per_org: usize,
    ) -> Result<Vec<RevocationJob>, StoreError> {
        let until = until.unix_timestamp();
        self.run(move |db| revocations::due(db, until, limit, per_org)).await
    }

    async fn update_revocation(&self, job: &RevocationJob, expected_attempts: u32) -> Result<(), StoreError> {
        let job = job.clone();
        self.run(move |db| revocations::update(db, &job, expected_attempts)).await
    }

    async fn delete_revocation(&self, job: &RevocationJob) -> Result<bool, StoreError> {
        let id = job.id.clone();
        self.run(move |db| revocations::delete(db, &id)).await
    }

    async fn put_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let state = state.clone();
        self.run(move |db| oauth_states::put(db, &state)).await
    }

    async fn take_oauth_state(&self, hash: &str, now: OffsetDateTime) -> Result<Option<OAuthState>, StoreError> {
        let hash = hash.to_owned();
        self.run(move |db| oauth_states::take(db, &hash, now)).await
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
        self.run(move |db| connections::append_log(db, &org, &id, &doc)).await
    }

    async fn list_logs(&self, org: &OrgId, id: &ConnectionId, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let (org, id) = (org.to_string(), id.to_string());
        self.run(move |db| connections::list_logs(db, &org, &id, limit)).await
    }
}

#[cfg(test)]
mod tests;

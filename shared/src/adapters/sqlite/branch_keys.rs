//! Branch keys in SQLite ([`BranchKeyStore`]): the `branch_keys` table, one row per
//! organization and version, holding the key wrapped by the key provider (never in clear).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::{SqliteStore, backend};
use crate::domain::OrgId;
use crate::ports::{BranchKeyRecord, BranchKeyStore, StoreError};

/// The table (part of the store's schema).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS branch_keys (
    org TEXT NOT NULL, version INTEGER NOT NULL, key_id TEXT NOT NULL, wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, version)
) WITHOUT ROWID;
";

const COLUMNS: &str = "org, version, key_id, wrapped, created_at";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, u32, String, Vec<u8>, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn decode(row: Option<(String, u32, String, Vec<u8>, i64)>) -> Result<Option<BranchKeyRecord>, StoreError> {
    let Some((org, version, key_id, wrapped, created_ms)) = row else {
        return Ok(None);
    };
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(created_ms) * 1_000_000).map_err(backend)?;
    Ok(Some(BranchKeyRecord { org: OrgId::parse(&org).map_err(backend)?, version, key_id, wrapped, created_at }))
}

#[async_trait]
impl BranchKeyStore for SqliteStore {
    async fn active_branch_key(&self, org: &OrgId) -> Result<Option<BranchKeyRecord>, StoreError> {
        let org = org.to_string();
        let row = self
            .run(move |db| {
                db.query_row(
                    &format!("SELECT {COLUMNS} FROM branch_keys WHERE org = ?1 ORDER BY version DESC LIMIT 1"),
                    params![org],
                    record,
                )
                .optional()
                .map_err(backend)
            })
            .await?;
        decode(row)
    }

    async fn get_branch_key(&self, org: &OrgId, version: u32) -> Result<Option<BranchKeyRecord>, StoreError> {
        let org = org.to_string();
        let row = self
            .run(move |db| {
                db.query_row(
                    &format!("SELECT {COLUMNS} FROM branch_keys WHERE org = ?1 AND version = ?2"),
                    params![org, version],
                    record,
                )
                .optional()
                .map_err(backend)
            })
            .await?;
        decode(row)
    }

    async fn put_branch_key(&self, key: &BranchKeyRecord) -> Result<(), StoreError> {
        let (org, version, key_id, wrapped) =
            (key.org.to_string(), key.version, key.key_id.clone(), key.wrapped.clone());
        let created_ms = (key.created_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let written = self
            .run(move |db| {
                db.execute(
                    &format!("INSERT INTO branch_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"),
                    params![org, version, key_id, wrapped, created_ms],
                )
                .map_err(backend)
            })
            .await?;
        if written == 1 { Ok(()) } else { Err(StoreError::Conflict) }
    }
}

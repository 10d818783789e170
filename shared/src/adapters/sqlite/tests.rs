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
        .execute("UPDATE connections SET doc = json_remove(doc, '$.oauth.token_origin') WHERE id = ?1", [c.id.as_str()])
        .unwrap();
    assert_eq!(changed, 1);
    let read = store.get_connection(&org, &c.id).await;
    assert!(matches!(read, Err(StoreError::Backend(_))), "{read:?}");
}

//! The port conformance suites against the embedded adapters (SQLite store, local master key).

use std::sync::Arc;

use latchkey::adapters::{LocalKeyProvider, SqliteStore};
use latchkey::crypto::KeyProvider;
use latchkey::ports::Store;
use tempfile::TempDir;

async fn sqlite_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("latchkey.db")).expect("open store");
    (Arc::new(store), dir)
}

async fn local_keys() -> (Arc<dyn KeyProvider>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = LocalKeyProvider::open_or_create(dir.path()).expect("master key");
    (Arc::new(keys), dir)
}

mod store {
    latchkey::store_conformance_tests!(super::sqlite_store());
}

mod keys {
    latchkey::keys_conformance_tests!(super::local_keys());
}

//! The simulation's in-memory store runs the same store conformance suite as the SQLite and
//! DynamoDB adapters: what the scale simulation measures is the real service over a faithful
//! store.

use std::sync::Arc;

use latchkey::ports::{BranchKeyStore, Store};
use latchkey_bench::sim::memory::MemoryStore;

async fn make_store() -> (Arc<dyn Store>, ()) {
    (Arc::new(MemoryStore::new(8)), ())
}

latchkey::store_conformance_tests!(make_store());

async fn make_branch_keys() -> (Arc<dyn BranchKeyStore>, ()) {
    (Arc::new(MemoryStore::new(8)), ())
}

mod branch_keys {
    use super::*;

    latchkey::branch_keys_conformance_tests!(make_branch_keys());
}

//! The adapters behind the ports, through the library (no HTTP): the store, envelope and event
//! adapters on both backends (the embedded ones, and the AWS ones through the real AWS SDK
//! against moto), and the service over them where an adapter's behaviour shows (the sweep, hung
//! dependencies). One binary, so the AWS SDK is linked once; moto is shared by its tests (one
//! server, started on first use) except where a test stops one.

mod aws_backend;
mod branch_keys;
mod conformance_embedded;
mod dependency_timeouts;
mod due_shards;
mod listing_indexes;
mod moto_smoke;
mod sweep_calls;
mod sweep_starvation;

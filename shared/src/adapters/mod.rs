//! Adapters of the ports. The embedded ones run `latchkey serve`; they are product code, not
//! test doubles.

//!
//! The embedded ones that need SQLite or the data directory (`local_key`, `secret_file`,
//! `sqlite`) are compiled only with the `embedded` feature (on by default; the Lambda functions
//! build without it).

pub mod aws;
#[cfg(feature = "embedded")]
pub mod local_key;
pub mod log_sink;
#[cfg(feature = "embedded")]
pub mod secret_file;
#[cfg(feature = "embedded")]
pub mod sqlite;

#[cfg(feature = "embedded")]
pub use local_key::LocalKeyProvider;
pub use log_sink::LogEventSink;
#[cfg(feature = "embedded")]
pub use sqlite::SqliteStore;

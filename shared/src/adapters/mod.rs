//! Adapters of the ports. The embedded ones run `latchkey serve`; they are product code, not
//! test doubles.

pub mod aws;
pub mod local_key;
pub mod log_sink;
pub mod secret_file;
pub mod sqlite;

pub use local_key::LocalKeyProvider;
pub use log_sink::LogEventSink;
pub use sqlite::SqliteStore;

//! Configuration and the composition root: [`Settings`] (every `LATCHKEY_*` variable or its
//! flag, parsed and checked at start), [`Components`] (the adapters those settings name, wired
//! into one [`Service`](crate::service::Service)), and the HS256 secret of the data directory.

#[cfg(feature = "embedded")]
mod jwt_secret;
mod settings;
mod wiring;

use std::path::PathBuf;

#[cfg(feature = "embedded")]
pub use jwt_secret::{DEV_ORG, JWT_SECRET_FILE};
pub use settings::{BackendKind, LogFormat, LookupAuth, Settings, ignore_blank_env};
pub use wiring::Components;

/// Why Latchkey cannot start with its settings. Messages name the variable and never quote a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
    /// A value refused while parsing the settings: the parser's message, which names the
    /// variable (`LATCHKEY_ADDR is invalid: ...`).
    #[error("{0}")]
    Unparsed(String),
    #[error("{0} must be set for the aws backend")]
    Missing(&'static str),
    /// A setting that is unset where nothing stands in for it: `why` says where else it was
    /// looked for and how to give it.
    #[error("{name} is unset: {why}")]
    Unset { name: &'static str, why: String },
    #[error("the data directory {path} cannot be used: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the embedded store cannot be opened: {0}")]
    Store(#[from] crate::ports::StoreError),
}

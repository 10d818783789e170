//! A typed client of Latchkey for integration code and tools.
//!
//! - [`Client`]: the HTTP API. Integration code looks credentials up with a token that has the
//!   `runtime` role ([`Client::lookup`], [`Client::report_error`], or by [`Selector`] without
//!   the id: [`Client::lookup_by_selector`]); tools with an organization
//!   token read connections and definitions and create connections (token import).
//! - `LambdaClient` (feature `lambda`): the `token-lookup` function invoked directly, as code
//!   running in AWS does.
//!
//! Failures are [`Error`]s; when Latchkey refused, [`Error::kind`] gives an [`ErrorKind`] named
//! like the `token-lookup` function's `errorType`s, the same over HTTP and Lambda. Secrets
//! (field values, access tokens, the bearer token) are [`secrecy::SecretString`]s whose `Debug`
//! shows nothing.
//!
//! ```no_run
//! # async fn run() -> Result<(), latchkey_client::Error> {
//! use latchkey_client::{Client, ErrorKind};
//! use secrecy::ExposeSecret;
//!
//! let client = Client::new("http://127.0.0.1:8080", std::env::var("LATCHKEY_TOKEN").unwrap().into())?;
//! match client.lookup("con_01J...", Some(60)).await {
//!     Ok(creds) => {
//!         let token = creds.token.as_ref().map(|t| t.access_token.expose_secret());
//!         // call the provider with `token`...
//!     }
//!     Err(e) if e.kind() == Some(&ErrorKind::Unavailable) => { /* retry shortly */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

mod error;
mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
mod selector;
mod types;

pub use error::{ApiError, Error, ErrorKind, FieldError};
pub use http::{Client, DEFAULT_TIMEOUT};
#[cfg(feature = "lambda")]
pub use lambda::LambdaClient;
pub use selector::Selector;
pub use types::{
    AccessToken, Connection, ConnectionFilter, ConnectionPage, Credentials, Definition, Fields, ImportedTokens,
    NewConnection, Oauth1Credentials, Put, ReportedError, Status, StatusError,
};

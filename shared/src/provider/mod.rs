//! The provider-client port: every request Latchkey sends to an OAuth provider's token and
//! revocation endpoints, and the one reader of what providers answer.
//!
//! - [`request`] builds the form of each grant (RFC 6749 sections 4.1.3, 4.4.2, 6; RFC 7009
//!   section 2.1) with the client authentication of section 2.3.1.
//! - [`ProviderClient`] is the port that sends a form and hands back the raw answer;
//!   [`HttpProviderClient`] is its adapter (reqwest, redirects off, bounded time and size, the
//!   SSRF guard of [`destination`]).
//! - [`answer`] decides what an answer means: a token answer, a refusal and its class, or a
//!   transient failure. Status, body shape and refusal class are decided there and nowhere else.

pub mod answer;
pub mod destination;
pub mod device;
mod http;
pub(crate) mod oauth1;
pub mod request;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

pub use answer::{Grant, RevokeAnswer, TokenAnswer, TokenFailure, read_revoke_answer, read_token_answer};
pub use http::HttpProviderClient;
pub(crate) use http::builder as http_client_builder;
pub use request::{ClientAuth, ClientAuthMethod};

/// Where a request may go: any address (an endpoint the organization set), or public addresses
/// only (an endpoint a customer could set: no reaching into private networks).
#[derive(Debug, Clone, Copy)]
pub enum Reach {
    Any,
    PublicOnly,
}

/// One `application/x-www-form-urlencoded` POST to a provider. Values are secrets (codes,
/// refresh tokens, client secrets): `Debug` shows the field names only.
pub struct FormPost {
    pub url: url::Url,
    pub reach: Reach,
    /// HTTP Basic client authentication (RFC 6749 section 2.3.1), already form-encoded.
    pub basic: Option<(String, Option<SecretString>)>,
    pub form: Vec<(String, SecretString)>,
}

impl fmt::Debug for FormPost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormPost")
            .field("url", &self.url.as_str())
            .field("reach", &self.reach)
            .field("basic", &self.basic.is_some())
            .field("fields", &self.form.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl FormPost {
    /// The value of a form field (tests and the reader's callers).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.expose_secret())
    }
}

/// One request of a definition's own to a provider's API (a `verify` request, SPEC section
/// 10), already rendered: method, URL, headers and an optional JSON body. Header values, the
/// URL's query and the body may hold secrets: `Debug` shows the method, origin and header names
/// only.
pub struct ApiRequest {
    pub method: ApiMethod,
    pub url: url::Url,
    pub reach: Reach,
    pub headers: Vec<(String, SecretString)>,
    /// Serialized JSON, sent as `application/json`.
    pub json_body: Option<SecretString>,
}

/// The methods an [`ApiRequest`] may use: none that changes anything at the provider by
/// convention but POST, which some providers' "who am I" endpoints need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiMethod {
    Get,
    Head,
    Post,
}

impl fmt::Debug for ApiRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("origin", &self.url.origin().ascii_serialization())
            .field("reach", &self.reach)
            .field("headers", &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("json_body", &self.json_body.is_some())
            .finish()
    }
}

/// A provider's answer as it came: any status, the body unread. `Debug` never shows the body
/// (it may hold tokens).
#[derive()]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    /// `Retry-After` in its seconds form.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl fmt::Debug for RawAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawAnswer")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("retry_after", &self.retry_after)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why no answer came back. Never carries a request or body.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider could not be reached")]
    Unreachable,
    #[error("the provider's answer is larger than {} bytes", http::MAX_ANSWER_BYTES)]
    TooLarge,
    /// The request could not be built (a header the HTTP client refuses); nothing was sent.
    #[error("the request could not be built")]
    Invalid,
}

impl TransportError {
    /// The code logs and connection errors show.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::TooLarge => "answer_too_large",
            Self::Invalid => "invalid_request",
        }
    }
}

/// The port: sends one form, or one API request, to a provider and returns what it answered.
#[async_trait]
pub trait ProviderClient: Send + Sync + 'static {
    async fn post_form(&self, post: &FormPost) -> Result<RawAnswer, TransportError>;
    /// Sends an [`ApiRequest`] under the same rules as forms (no redirects followed, bounded
    /// time and answer size, the reach's resolver).
    async fn send(&self, request: &ApiRequest) -> Result<RawAnswer, TransportError>;
}

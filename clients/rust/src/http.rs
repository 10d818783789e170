//! The HTTP API client (`latchkey serve`, or the deployed API behind API Gateway).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use crate::error::{ApiError, Error};
use crate::selector::Selector;
use crate::types::{
    Connection, ConnectionFilter, ConnectionPage, Credentials, Definition, NewConnection, Put, ReportedError,
};

/// How long one request may take, unless [`Client::with_timeout`] says otherwise: 90 s, the
/// deployed functions' timeout. A lookup that needs a refresh may first wait out another
/// caller's refresh lease (30 s, and 5 s of grace), read the record (5 s), then hold its own
/// lease (30 s: the provider call, at most 15 s, and the write of its answer, retried while the
/// store throttles until shortly before the lease ends) and write once more after losing to
/// another writer (10 s): about 80 s in the worst case, which a shorter limit would cut short
/// and turn into a retry that waits again. Behind API Gateway the gateway answers 503 after 29 s
/// while the function finishes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// A client of Latchkey's HTTP API with one bearer token. Cheap to clone (one connection
/// pool). Which calls succeed depends on the token: organization users manage definitions and
/// connections, the `runtime` role looks tokens up.
#[derive(Clone)]
pub struct Client {
    base: Url,
    token: SecretString,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:8080`, or the API's stage URL
    /// with a path), authenticating with the JWT `token`.
    ///
    /// # Errors
    /// [`Error::Config`] when `base_url` is not an http(s) URL.
    pub fn new(base_url: &str, token: SecretString) -> Result<Self, Error> {
        Self::with_timeout(base_url, token, DEFAULT_TIMEOUT)
    }

    /// [`Client::new`] with a total time limit per request.
    ///
    /// # Errors
    /// [`Error::Config`] when `base_url` is not an http(s) URL or no HTTP client can be built.
    pub fn with_timeout(base_url: &str, token: SecretString, timeout: Duration) -> Result<Self, Error> {
        let mut base = Url::parse(base_url).map_err(|e| Error::Config(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!("base URL {base_url:?} is not an http(s) URL")));
        }
        // `join` replaces the last segment of a base without a trailing slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("latchkey-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Self { base, token, http })
    }

    /// The base URL, always ending in `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// A request to the path of `segments` under the base, each segment percent-encoded (ids
    /// and keys come from callers: a `/` in one stays inside it).
    fn request(&self, method: Method, segments: &[&str]) -> Result<RequestBuilder, Error> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Config("base URL cannot carry paths".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(self.http.request(method, url).bearer_auth(self.token.expose_secret()))
    }

    /// Sends `req` and reads a 2xx answer as `T`; any other status is an [`ApiError`].
    async fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &'static str,
    ) -> Result<(StatusCode, T), Error> {
        let res = req.send().await.map_err(Error::Transport)?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = res.bytes().await.map_err(Error::Transport)?;
        if !status.is_success() {
            return Err(ApiError::from_http(status.as_u16(), &body, retry_after).into());
        }
        let value = serde_json::from_slice(&body).map_err(|source| Error::Decode { what, source })?;
        Ok((status, value))
    }

    /// `POST /v1/connections/{id}/token` (role `runtime`): fresh credentials, the access token
    /// refreshed first if it expires within `min_valid_seconds` (the server's default when
    /// `None`). Marks the connection `active`.
    ///
    /// # Errors
    /// [`ErrorKind`](crate::ErrorKind) `NotFound`, `ConnectionPending`, `ConnectionDisconnected`,
    /// `ConnectionError`, `TokenExpired`, `ProviderError`, `Unavailable` (retry), `Forbidden`
    /// (no `runtime` role), `Unauthorized`; or no answer.
    pub async fn lookup(&self, connection_id: &str, min_valid_seconds: Option<u64>) -> Result<Credentials, Error> {
        let mut body = json!({});
        if let Some(s) = min_valid_seconds {
            body["min_valid_seconds"] = s.into();
        }
        let req = self.request(Method::POST, &["v1", "connections", connection_id, "token"])?.json(&body);
        Ok(self.send(req, "lookup").await?.1)
    }

    /// `report_error` over `POST /v1/connections/{id}/token` (role `runtime`): the integration
    /// found the credentials do not work; the connection turns red (`reported`) with `message`
    /// (at most 1,000 characters, never put a secret in it).
    ///
    /// # Errors
    /// As [`Client::lookup`], `InvalidRequest` for an empty or too long message.
    pub async fn report_error(&self, connection_id: &str, message: &str) -> Result<ReportedError, Error> {
        let body = json!({"action": "report_error", "message": message});
        let req = self.request(Method::POST, &["v1", "connections", connection_id, "token"])?.json(&body);
        Ok(self.send(req, "report_error").await?.1)
    }

    /// `POST /v1/token` (role `runtime`): [`Client::lookup`] of the connection `selector`
    /// resolves to (the instance's, the user's, the customer's reusable one, the organization's
    /// for that customer; see [`Selector`]). `Credentials::connection_id` says which.
    ///
    /// # Errors
    /// As [`Client::lookup`]: `NotFound` when nothing matches (or the selector names another
    /// customer than a customer-bound token's), the chosen connection's own problem when it is
    /// unusable; `InvalidRequest` for a malformed selector.
    pub async fn lookup_by_selector(
        &self,
        selector: &Selector,
        min_valid_seconds: Option<u64>,
    ) -> Result<Credentials, Error> {
        let mut body = selector.members();
        if let Some(s) = min_valid_seconds {
            body.insert("min_valid_seconds".into(), s.into());
        }
        let req = self.request(Method::POST, &["v1", "token"])?.json(&body);
        Ok(self.send(req, "lookup").await?.1)
    }

    /// [`Client::report_error`] on the connection `selector` resolves to (`POST /v1/token`).
    ///
    /// # Errors
    /// As [`Client::lookup_by_selector`], `InvalidRequest` for an empty or too long message.
    pub async fn report_error_by_selector(&self, selector: &Selector, message: &str) -> Result<ReportedError, Error> {
        let mut body = selector.members();
        body.insert("action".into(), "report_error".into());
        body.insert("message".into(), message.into());
        let req = self.request(Method::POST, &["v1", "token"])?.json(&body);
        Ok(self.send(req, "report_error").await?.1)
    }

    /// `GET /v1/connections/{id}`.
    ///
    /// # Errors
    /// `NotFound` (also for another organization's), `Unauthorized`, or no answer.
    pub async fn get_connection(&self, connection_id: &str) -> Result<Connection, Error> {
        let req = self.request(Method::GET, &["v1", "connections", connection_id])?;
        Ok(self.send(req, "connection").await?.1)
    }

    /// One page of `GET /v1/connections` with `filter`.
    ///
    /// # Errors
    /// `InvalidRequest` for a bad filter, `Unauthorized`, or no answer.
    pub async fn list_connections(&self, filter: &ConnectionFilter) -> Result<ConnectionPage, Error> {
        let req = self.request(Method::GET, &["v1", "connections"])?.query(&filter.query());
        Ok(self.send(req, "connection list").await?.1)
    }

    /// Every connection matching `filter`, following `next_cursor` from `filter.cursor`;
    /// `on_page` is told the count so far after each page (for progress output).
    ///
    /// # Errors
    /// As [`Client::list_connections`], for any page.
    pub async fn all_connections(
        &self,
        filter: &ConnectionFilter,
        mut on_page: impl FnMut(usize),
    ) -> Result<Vec<Connection>, Error> {
        let mut filter = filter.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list_connections(&filter).await?;
            all.extend(page.items);
            on_page(all.len());
            match page.next_cursor {
                Some(c) if filter.cursor.as_deref() != Some(c.as_str()) => filter.cursor = Some(c),
                _ => return Ok(all),
            }
        }
    }

    /// `POST /v1/connections` (organization users, or a customer for their own): creates a
    /// connection; with [`NewConnection::tokens`] it imports tokens obtained elsewhere.
    ///
    /// # Errors
    /// `InvalidRequest` with [`ApiError::errors`] naming each bad field, `NotFound` for an
    /// unknown definition, `Forbidden`, or no answer.
    pub async fn create_connection(&self, connection: &NewConnection) -> Result<Connection, Error> {
        let req = self.request(Method::POST, &["v1", "connections"])?.json(connection);
        Ok(self.send(req, "connection").await?.1)
    }

    /// [`Client::create_connection`] with an `Idempotency-Key` (1-255 printable ASCII
    /// characters): the same key and body within 24 h answer the first connection again and
    /// create nothing, so a retry after a timeout creates no duplicate.
    ///
    /// # Errors
    /// Those of [`Client::create_connection`]; `IdempotencyKeyReused` (422) when the key came
    /// with another body, `IdempotencyInProgress` (409) while its first request still runs,
    /// `InvalidRequest` (400) for a key that is not 1-255 printable ASCII characters.
    pub async fn create_connection_idempotent(
        &self,
        connection: &NewConnection,
        idempotency_key: &str,
    ) -> Result<Connection, Error> {
        let req = self
            .request(Method::POST, &["v1", "connections"])?
            .header("Idempotency-Key", idempotency_key)
            .json(connection);
        Ok(self.send(req, "connection").await?.1)
    }

    /// `GET /v1/definitions/{key}`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// `Forbidden` (customer users), `Unauthorized`, or no answer.
    pub async fn get_definition(&self, key: &str) -> Result<Option<Definition>, Error> {
        let req = self.request(Method::GET, &["v1", "definitions", key])?;
        match self.send(req, "definition").await {
            Ok((_, d)) => Ok(Some(d)),
            Err(Error::Api(e)) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/definitions`.
    ///
    /// # Errors
    /// `Forbidden` (customer users), `Unauthorized`, or no answer.
    pub async fn list_definitions(&self) -> Result<Vec<Definition>, Error> {
        #[derive(serde::Deserialize)]
        struct Items {
            items: Vec<Definition>,
        }
        let req = self.request(Method::GET, &["v1", "definitions"])?;
        Ok(self.send::<Items>(req, "definition list").await?.1.items)
    }

    /// `PUT /v1/definitions/{key}` with `body` (`{label, auth, inputs, ...}`, without `key`):
    /// the stored definition, and whether it was created or replaced.
    ///
    /// # Errors
    /// `InvalidRequest` with [`ApiError::errors`], `Forbidden`, `Unauthorized`, or no answer.
    pub async fn put_definition(&self, key: &str, body: &Value) -> Result<(Definition, Put), Error> {
        let req = self.request(Method::PUT, &["v1", "definitions", key])?.json(body);
        let (status, d) = self.send(req, "definition").await?;
        Ok((d, if status == StatusCode::CREATED { Put::Created } else { Put::Replaced }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(base, SecretString::from("t")).unwrap()
    }

    #[test]
    fn paths_go_under_the_base_and_ids_are_encoded() {
        let c = client("https://api.example.com/prod");
        let req = c.request(Method::GET, &["v1", "connections", "a b?/x"]).unwrap().build().unwrap();
        assert_eq!(req.url().as_str(), "https://api.example.com/prod/v1/connections/a%20b%3F%2Fx");
        let c = client("http://127.0.0.1:8080/");
        let req = c.request(Method::GET, &["v1", "definitions", "acme"]).unwrap().build().unwrap();
        assert_eq!(req.url().as_str(), "http://127.0.0.1:8080/v1/definitions/acme");
        assert_eq!(req.headers()["authorization"], "Bearer t");
    }

    #[test]
    fn a_base_url_that_is_not_http_is_refused() {
        for bad in ["ftp://x", "not a url", "mailto:a@b"] {
            assert!(matches!(Client::new(bad, SecretString::from("t")), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let c = Client::new("http://x", SecretString::from("eyJ_canary")).unwrap();
        assert!(!format!("{c:?}").contains("canary"));
    }
}

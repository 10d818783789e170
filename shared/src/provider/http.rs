//! The reqwest adapter of [`ProviderClient`]: two clients built once per process (any address,
//! and public addresses only), redirects never followed (a token endpoint that redirects is not
//! followed with credentials), bounded connect time, total time and answer size.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::destination::PublicOnlyResolver;
use super::{ApiMethod, ApiRequest, FormPost, ProviderClient, RawAnswer, Reach, TransportError};

/// The largest answer read; a token answer is a few KiB.
pub(super) const MAX_ANSWER_BYTES: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds a whole provider call; the refresh lease (30 s) outlasts it.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// `Retry-After` in its seconds form (the HTTP-date form is not honoured: the backoff applies).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// No proxy (`HTTP(S)_PROXY` would resolve names where the SSRF guard cannot see them), no
/// redirects. Also the base of the webhook sender's clients (`service::webhooks`), which set
/// their own total timeout and user agent on it.
pub(crate) fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .user_agent(concat!("latchkey/", env!("CARGO_PKG_VERSION")))
}

/// Sends provider requests over HTTPS (or http to loopback, where the URL allows it).
/// [`Reach::PublicOnly`] requests resolve names only to public addresses; literal addresses
/// are not resolved at all, so callers check them first with
/// [`super::destination::check_public_destination`].
#[derive()]
pub struct HttpProviderClient {
    any: reqwest::Client,
    public_only: reqwest::Client,
}

impl Default for HttpProviderClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpProviderClient {
    pub fn new() -> Self {
        Self {
            any: builder().build().expect("the provider HTTP client builds with static settings"),
            public_only: builder()
                .dns_resolver(Arc::new(PublicOnlyResolver))
                .build()
                .expect("the provider HTTP client builds with static settings"),
        }
    }
}

fn transport(e: &reqwest::Error) -> TransportError {
    if e.is_timeout() { TransportError::Timeout } else { TransportError::Unreachable }
}

/// Reads an answer: status, content type, `Retry-After`, and the body up to [`MAX_ANSWER_BYTES`].
async fn read_answer(mut response: reqwest::Response) -> Result<RawAnswer, TransportError> {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let retry_after = retry_after(response.headers());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(TransportError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(RawAnswer { status, content_type, retry_after, body })
}

impl HttpProviderClient {
    fn client(&self, reach: Reach) -> &reqwest::Client {
        match reach {
            Reach::Any => &self.any,
            Reach::PublicOnly => &self.public_only,
        }
    }
}

#[async_trait]
impl ProviderClient for HttpProviderClient {
    async fn send(&self, request: &ApiRequest) -> Result<RawAnswer, TransportError> {
        let method = match request.method {
            ApiMethod::Get => reqwest::Method::GET,
            ApiMethod::Head => reqwest::Method::HEAD,
            ApiMethod::Post => reqwest::Method::POST,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers
            .insert(reqwest::header::ACCEPT, reqwest::header::HeaderValue::from_static("application/json, */*;q=0.1"));
        for (name, value) in &request.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| TransportError::Invalid)?;
            let mut value =
                reqwest::header::HeaderValue::from_str(value.expose_secret()).map_err(|_| TransportError::Invalid)?;
            // Kept out of the client's own debug output.
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = self.client(request.reach).request(method, request.url.clone());
        if let Some(body) = &request.json_body {
            headers
                .insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
            builder = builder.body(body.expose_secret().to_owned());
        }
        let response = builder.headers(headers).send().await.map_err(|e| transport(&e))?;
        read_answer(response).await
    }

    async fn post_form(&self, post: &FormPost) -> Result<RawAnswer, TransportError> {
        let client = self.client(post.reach);
        let form: Vec<(&str, &str)> = post.form.iter().map(|(k, v)| (k.as_str(), v.expose_secret())).collect();
        let mut request = client
            .post(post.url.clone())
            .header(reqwest::header::ACCEPT, "application/json, application/x-www-form-urlencoded;q=0.9, */*;q=0.1")
            .form(&form);
        if let Some((id, secret)) = &post.basic {
            request = request.basic_auth(id, secret.as_ref().map(|s| s.expose_secret()));
        }
        let response = request.send().await.map_err(|e| transport(&e))?;
        read_answer(response).await
    }
}

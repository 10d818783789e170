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
/// How long a kept-alive connection may sit idle and still be reused: under the 5 s after which
/// Apache's and Node's HTTP servers close one by default (`KeepAliveTimeout`; `keepAliveTimeout`
/// in Node 20, which newer versions give a 1 s grace). A request sent on a connection the server
/// is closing is reset (`ECONNRESET`) and fails in transport, and RFC 8628's default polling
/// interval is those same 5 s: device polls reused such connections just as the provider closed
/// them, and each reset doubled the interval (section 3.5). A connection idle longer is dropped
/// and a new one opened; a sweep's calls to one token endpoint come closer together than this and
/// still share one. Webhook deliveries (`service::webhooks`, built on [`builder`]) get the same
/// rule: one more than 4 s after the last to a receiver opens a new connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

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
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
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

/// Classifies a failed call, and logs why at `debug`: the HTTP client's causes (for example
/// `connection closed before message completed`), never the URL, which may carry a credential in
/// its query.
fn transport(e: &reqwest::Error) -> TransportError {
    let causes = std::iter::successors(std::error::Error::source(e), |c| c.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    tracing::debug!(
        connect = e.is_connect(),
        timeout = e.is_timeout(),
        %causes,
        "a provider call failed in transport"
    );
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use secrecy::SecretString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::{HttpProviderClient, POOL_IDLE_TIMEOUT};
    use crate::provider::{ApiMethod, ApiRequest, FormPost, ProviderClient, Reach};

    /// How long Node's and Apache's HTTP servers keep an idle connection open by default.
    const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(5);

    /// A token endpoint on loopback that keeps connections alive as Node's HTTP server does, and
    /// is late closing them, as Node is under load: a request that comes on a connection idle
    /// for [`SERVER_KEEP_ALIVE`] or more is not answered, the connection closed under it. Every
    /// other request gets `authorization_pending`. Idle time is on tokio's clock, as the HTTP
    /// client's pool measures it. Its URL, and how many connections it accepted.
    async fn keep_alive_endpoint() -> (url::Url, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut idle_since = Instant::now();
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        if request.is_empty() && idle_since.elapsed() >= SERVER_KEEP_ALIVE {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        if !whole_request(&request) {
                            continue;
                        }
                        request.clear();
                        let body = br#"{"error":"authorization_pending"}"#;
                        let head = format!(
                            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        // One write: the answer arrives whole, so the client's connection is back
                        // in its pool before the caller sees the answer (two calls in a row then
                        // share it, which the test counts on).
                        if socket.write_all(&[head.as_bytes(), body].concat()).await.is_err() {
                            return;
                        }
                        idle_since = Instant::now();
                    }
                });
            }
        });
        (url, accepted)
    }

    /// Whether `bytes` hold a whole request: its head and the `content-length` bytes after it.
    fn whole_request(bytes: &[u8]) -> bool {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        bytes.len() >= end + 4 + length
    }

    fn poll(url: &url::Url) -> FormPost {
        let grant = "urn:ietf:params:oauth:grant-type:device_code";
        FormPost {
            url: url.clone(),
            reach: Reach::Any,
            basic: None,
            form: vec![
                ("grant_type".into(), SecretString::from(grant)),
                ("device_code".into(), SecretString::from("dc-1")),
            ],
        }
    }

    /// RFC 8628's default polling interval is the 5 s after which Node and Apache close an idle
    /// connection: a poll that reused one as the provider closed it failed in transport, and the
    /// back-off doubled the interval (the device flow's black-box test saw a 17 s gap). A call
    /// after [`POOL_IDLE_TIMEOUT`] goes on a new connection; calls closer together share one.
    #[tokio::test]
    async fn a_call_after_the_servers_keep_alive_goes_on_a_new_connection() {
        assert!(POOL_IDLE_TIMEOUT < SERVER_KEEP_ALIVE);
        let (url, accepted) = keep_alive_endpoint().await;
        let client = HttpProviderClient::new();
        for _ in 0..2 {
            assert_eq!(client.post_form(&poll(&url)).await.unwrap().status, 400);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "calls close together share a connection");

        // The idle time passes on tokio's clock, which the pool's idle check and the endpoint
        // both read; nothing is in flight, so no call's timeout runs meanwhile.
        tokio::time::pause();
        tokio::time::advance(SERVER_KEEP_ALIVE + Duration::from_millis(100)).await;
        tokio::time::resume();
        let polled = client.post_form(&poll(&url)).await;
        assert_eq!(polled.map(|a| a.status).map_err(|e| e.code()), Ok(400), "the poll after 5 s idle is answered");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// The same for the other calls on this client: a verification request (`send`, the path of
    /// API-key checks) after the server's keep-alive is answered on a new connection too.
    #[tokio::test]
    async fn a_verification_after_the_servers_keep_alive_goes_on_a_new_connection() {
        let (url, accepted) = keep_alive_endpoint().await;
        let client = HttpProviderClient::new();
        let verify = || ApiRequest {
            method: ApiMethod::Get,
            url: url.clone(),
            reach: Reach::Any,
            headers: vec![],
            json_body: None,
        };
        assert_eq!(client.send(&verify()).await.unwrap().status, 400);
        tokio::time::pause();
        tokio::time::advance(SERVER_KEEP_ALIVE + Duration::from_millis(100)).await;
        tokio::time::resume();
        let verified = client.send(&verify()).await;
        assert_eq!(verified.map(|a| a.status).map_err(|e| e.code()), Ok(400), "the call after 5 s idle is answered");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}

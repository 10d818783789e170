//! The HTTP client side of the harness: [`Api`] (one method per route the suites call), [`Reply`]
//! (a response read to the end, with problem+json assertions) and [`raw_exchange`] for what
//! reqwest will not send.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No request of the suite should ever take this long.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The raw body, for "never contains" assertions.
    pub text: String,
    /// The body as JSON, `Null` when empty or not JSON.
    pub body: Value,
}

impl Reply {
    async fn read(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("read the response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self { status, headers, text, body }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `type` of a problem+json body.
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }

    /// The fields named by a validation problem's `errors`, sorted.
    pub fn error_fields(&self) -> Vec<String> {
        let mut fields: Vec<String> = self.body["errors"]
            .as_array()
            .map(|errs| errs.iter().filter_map(|e| e["field"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        fields.sort();
        fields
    }

    /// Asserts an RFC 9457 problem with this status and returns `self` for more checks.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "body: {}", self.text);
        assert_eq!(self.body["status"], status.as_u16(), "body: {}", self.text);
        for key in ["type", "title", "detail"] {
            assert!(self.body[key].is_string(), "problem without {key}: {}", self.text);
        }
        self
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }
}

/// The HTTP API of one running server: cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Api {
    pub address: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Any request with an optional bearer token and JSON body.
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Reply::read(req.send().await.expect("send the request")).await
    }

    /// A request with a raw body, for malformed and oversized ones. It goes on a connection of
    /// its own: the server closes the connection after refusing an oversized body unread, and a
    /// pooled connection would carry that into the next request.
    pub async fn request_raw(&self, method: Method, path: &str, token: &str, body: Vec<u8>) -> Reply {
        let one_shot = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build the HTTP client");
        let req = one_shot.request(method, self.url(path)).bearer_auth(token).header(CONTENT_TYPE, "application/json");
        Reply::read(req.body(body).send().await.expect("send the request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn health(&self) -> Reply {
        self.request(Method::GET, "/healthz", None, None).await
    }

    pub async fn put_definition(&self, token: &str, key: &str, body: &Value) -> Reply {
        self.request(Method::PUT, &format!("/v1/definitions/{key}"), Some(token), Some(body)).await
    }

    pub async fn get_definition(&self, token: &str, key: &str) -> Reply {
        self.get(&format!("/v1/definitions/{key}"), token).await
    }

    pub async fn list_definitions(&self, token: &str) -> Reply {
        self.get("/v1/definitions", token).await
    }

    pub async fn delete_definition(&self, token: &str, key: &str) -> Reply {
        self.request(Method::DELETE, &format!("/v1/definitions/{key}"), Some(token), None).await
    }

    pub async fn create_connection(&self, token: &str, body: &Value) -> Reply {
        self.request(Method::POST, "/v1/connections", Some(token), Some(body)).await
    }

    pub async fn get_connection(&self, token: &str, id: &str) -> Reply {
        self.get(&format!("/v1/connections/{id}"), token).await
    }

    /// `GET /v1/connections?{query}` (`query` already encoded, may be empty).
    pub async fn list_connections(&self, token: &str, query: &str) -> Reply {
        self.get(&format!("/v1/connections?{query}"), token).await
    }

    pub async fn patch_connection(&self, token: &str, id: &str, body: &Value, if_match: Option<&str>) -> Reply {
        let mut req = self.client.patch(self.url(&format!("/v1/connections/{id}"))).bearer_auth(token).json(body);
        if let Some(etag) = if_match {
            req = req.header(IF_MATCH, etag);
        }
        Reply::read(req.send().await.expect("send the request")).await
    }

    pub async fn delete_connection(&self, token: &str, id: &str) -> Reply {
        self.request(Method::DELETE, &format!("/v1/connections/{id}"), Some(token), None).await
    }

    pub async fn connection_logs(&self, token: &str, id: &str) -> Reply {
        self.get(&format!("/v1/connections/{id}/logs"), token).await
    }

    /// `POST /v1/connections/{id}/token`: the runtime lookup (or `report_error`).
    pub async fn lookup(&self, token: &str, id: &str, body: &Value) -> Reply {
        self.request(Method::POST, &format!("/v1/connections/{id}/token"), Some(token), Some(body)).await
    }
}

/// A raw HTTP/1.1 exchange, for what reqwest will not send (chunked bodies) or hides (what
/// happens to a kept-alive connection): writes `request` on `socket` and reads one response.
/// Returns the response head, lowercased, or `None` if the connection closed first.
pub async fn raw_exchange(socket: &mut TcpStream, request: &[u8]) -> Option<String> {
    // The server may stop reading before the end of a refused body: a failed write is fine.
    let _ = socket.write_all(request).await;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if rest.len() >= length {
                return Some(head);
            }
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

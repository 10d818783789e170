//! The harness: runs the real `latchkey serve` binary on a free loopback port with a fresh data
//! directory, talks to it over HTTP, and mints tokens with `latchkey token`.
//!
//! With `LATCHKEY_TEST_TRANSPORT=in-process` the same tests run against the library's router
//! served inside the test process (embedded backend, same data directory layout) instead of the
//! binary: `tests/run.sh` runs the suite both ways.

// Each test file uses a different subset of the helpers.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// Whether this run serves the router in-process rather than spawning the binary.
pub fn in_process() -> bool {
    std::env::var("LATCHKEY_TEST_TRANSPORT").is_ok_and(|v| v == "in-process")
}

/// In-process mode: everything the library logs (at trace level) in this test process.
fn in_process_logs() -> Arc<Mutex<String>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<String>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(RUST_LOG))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<String>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The router served in this process, and how to stop it.
struct InProcess {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

/// How long the server may take to start or to stop.
const STARTUP: Duration = Duration::from_secs(20);
/// No request of the suite should ever take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `RUST_LOG` of every server: as verbose as it gets, so that the canary test sees every line
/// the product could ever write.
const RUST_LOG: &str = "trace";

/// A random string: 128 bits from the OS, as hex (no random-number crate needed).
pub fn random_hex() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh HS256 secret (256 bits, hex).
pub fn random_secret() -> String {
    format!("{}{}", random_hex(), random_hex())
}

/// Mints a token with `latchkey token`, signed with `secret`.
pub async fn mint_token(secret: &str, org: &str, customer: Option<&str>, roles: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("LATCHKEY_JWT_SECRET", secret).env("RUST_LOG", "warn").args(["token", "--org", org]);
    if let Some(c) = customer {
        cmd.args(["--customer", c]);
    }
    for r in roles {
        cmd.args(["--role", r]);
    }
    let out = cmd.output().await.expect("run latchkey token");
    assert!(out.status.success(), "latchkey token failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("token is UTF-8").trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    token
}

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

/// One running `latchkey serve`. Killed when dropped.
pub struct TestApp {
    pub api: Api,
    pub port: u16,
    pub data_dir: PathBuf,
    secret: String,
    child: Option<Child>,
    /// In-process mode: the server task instead of a child process.
    local: Option<InProcess>,
    /// Everything the server wrote to stderr so far (its logs), filled by a background task.
    logs: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// The data directory, when this app created it (removed on drop).
    _owned_dir: Option<TempDir>,
}

/// `app.get_connection(..)` rather than `app.api.get_connection(..)`.
impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Appends every line of `stream` to `sink` until the stream ends.
fn capture(stream: impl AsyncRead + Unpin + Send + 'static, sink: Arc<Mutex<String>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl TestApp {
    /// A server with a fresh data directory and a fresh JWT secret.
    pub async fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let mut app = Self::spawn_with(dir.path(), &random_secret()).await;
        app._owned_dir = Some(dir);
        app
    }

    /// A server on `data_dir` with `secret`: what a restart needs.
    pub async fn spawn_with(data_dir: &Path, secret: &str) -> Self {
        if in_process() {
            return Self::serve_in_process(data_dir, secret).await;
        }
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
            .env("LATCHKEY_DATA_DIR", data_dir)
            .env("LATCHKEY_JWT_SECRET", secret)
            .env("RUST_LOG", RUST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start latchkey serve");

        let logs = Arc::new(Mutex::new(String::new()));
        let stderr_reader = capture(child.stderr.take().expect("piped stderr"), logs.clone());

        // Stdout says where the server listens; after that it is drained (never closed, or the
        // server's next println! would fail).
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let listening = tokio::time::timeout(STARTUP, async {
            while let Some(line) = stdout.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("latchkey listening on ") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        })
        .await;
        let address = match listening {
            Ok(Some(address)) => address,
            Ok(None) | Err(_) => {
                let _ = child.kill().await;
                let _ = stderr_reader.await;
                panic!("latchkey serve did not start; its stderr:\n{}", logs.lock().unwrap());
            }
        };
        let port = address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in the address");
        assert!(address.starts_with("http://127.0.0.1:"), "listens on loopback only: {address}");
        let stdout_reader = tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        let client =
            reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("build the HTTP client");
        let app = Self {
            api: Api { address, client },
            port,
            data_dir: data_dir.to_owned(),
            secret: secret.to_owned(),
            child: Some(child),
            local: None,
            logs,
            readers: vec![stderr_reader, stdout_reader],
            _owned_dir: None,
        };
        app.wait_until_healthy().await;
        app
    }

    /// The library's router over the embedded backend, served on a free loopback port by this
    /// process: the in-process transport.
    async fn serve_in_process(data_dir: &Path, secret: &str) -> Self {
        use latchkey::config::App;
        use latchkey::http::auth::Verifier;

        let logs = in_process_logs();
        let app = App::embedded(data_dir).expect("open the embedded backend");
        let router = latchkey::http::router(app.http_state(Verifier::hs256(&secret.to_owned().into())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let port = listener.local_addr().expect("bound address").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        let client =
            reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build().expect("build the HTTP client");
        let app = Self {
            api: Api { address: format!("http://127.0.0.1:{port}"), client },
            port,
            data_dir: data_dir.to_owned(),
            secret: secret.to_owned(),
            child: None,
            local: Some(InProcess { shutdown: Some(tx), server }),
            logs,
            readers: Vec::new(),
            _owned_dir: None,
        };
        app.wait_until_healthy().await;
        app
    }

    /// Polls `GET /healthz` until it answers 200.
    async fn wait_until_healthy(&self) {
        let ready = tokio::time::timeout(STARTUP, async {
            loop {
                match self.client.get(self.url("/healthz")).send().await {
                    Ok(res) if res.status() == StatusCode::OK => return,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        assert!(ready.is_ok(), "/healthz never answered 200; logs:\n{}", self.logs());
    }

    /// The HS256 secret the server verifies tokens with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A token for `org`, a customer user's if `customer` is given, with `roles`.
    pub async fn token(&self, org: &str, customer: Option<&str>, roles: &[&str]) -> String {
        mint_token(&self.secret, org, customer, roles).await
    }

    /// The server's stderr so far. Complete once [`TestApp::stop`] or [`TestApp::kill`] returned.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the server as an operator would (SIGTERM), falling back to SIGKILL, and waits for
    /// it and for the last of its output.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(mut local) = self.local.take() {
            // In-process: a graceful shutdown; "exit status" 0 when the server task ended cleanly.
            use std::os::unix::process::ExitStatusExt;
            let _ = local.shutdown.take().map(|tx| tx.send(()));
            let ended = tokio::time::timeout(STARTUP, &mut local.server).await;
            return Some(ExitStatus::from_raw(if matches!(ended, Ok(Ok(Ok(())))) { 0 } else { 1 << 8 }));
        }
        let child = self.child.as_mut()?;
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        let status = match tokio::time::timeout(STARTUP, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.kill().await;
                None
            }
        };
        self.finish().await;
        status
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it.
    pub async fn kill(&mut self) {
        if let Some(local) = self.local.take() {
            local.server.abort();
            let _ = local.server.await;
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill().await;
        }
        self.finish().await;
    }

    async fn finish(&mut self) {
        self.child = None;
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(local) = self.local.as_ref() {
            local.server.abort();
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read a data directory").flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

//! The harness: runs the real `latchkey serve` binary on a free loopback port with a fresh data
//! directory, talks to it over HTTP, and mints tokens with `latchkey token`.
//!
//! Two switches, so that `tests/run.sh` runs the suite in all four combinations:
//! - `LATCHKEY_TEST_TRANSPORT=in-process`: the same tests run against the library's router served
//!   inside the test process instead of the binary.
//! - `LATCHKEY_TEST_BACKEND=aws` (default `embedded`): every server gets a fresh DynamoDB table
//!   (made by `latchkey bootstrap`) and KMS key in this test binary's moto server
//!   (`tests/support/moto.rs`), and events go to moto's `default` EventBridge bus.

// Each test file uses a different subset of the helpers.
#![allow(dead_code)]

#[path = "../support/moto.rs"]
pub mod moto;

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

/// Whether this run uses the aws backend (DynamoDB + KMS + EventBridge in moto) rather than the
/// embedded one: `LATCHKEY_TEST_BACKEND=aws`.
pub fn aws_backend() -> bool {
    match std::env::var("LATCHKEY_TEST_BACKEND").as_deref() {
        Ok("aws") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("LATCHKEY_TEST_BACKEND={other:?} is not one of embedded, aws"),
    }
}

/// The AWS resources of one aws-backend server (and of its restarts).
#[derive(Debug, Clone)]
pub struct AwsResources {
    pub table: String,
    pub kms_key_id: String,
}

/// Where a server keeps its data: pass the same value to [`TestApp::spawn_with`] again to restart
/// it on the same data. Cheap to clone; the data directory is removed when the last clone goes.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `LATCHKEY_DATA_DIR`: all the embedded backend's data. The aws backend would keep only a
    /// generated JWT secret there (the harness always sets `LATCHKEY_JWT_SECRET`).
    dir: Arc<TempDir>,
    /// `Some` for the aws backend.
    aws: Option<AwsResources>,
}

impl Backend {
    /// A fresh backend of the kind `LATCHKEY_TEST_BACKEND` names: an empty data directory, and
    /// for aws a new table (made by `latchkey bootstrap`, or in-process by the library's
    /// bootstrap) and a new KMS key.
    pub async fn fresh() -> Self {
        Self::fresh_of(aws_backend()).await
    }

    /// A fresh aws backend, whatever `LATCHKEY_TEST_BACKEND` says.
    pub async fn fresh_aws() -> Self {
        Self::fresh_of(true).await
    }

    async fn fresh_of(aws: bool) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("create a temp dir"));
        if !aws {
            return Self { dir, aws: None };
        }
        // Starting moto blocks for about a second, the first time.
        let endpoint = tokio::task::spawn_blocking(moto::endpoint).await.expect("start moto");
        let config = moto::sdk_config().await;
        let table = moto::unique("latchkey-serve");
        if in_process() {
            let client = aws_sdk_dynamodb::Client::new(&config);
            let outcome = latchkey::adapters::aws::schema::bootstrap(&client, &table).await.expect("bootstrap");
            assert_eq!(outcome, latchkey::adapters::aws::schema::Bootstrap::Created);
        } else {
            let out = Command::new(BIN)
                .arg("bootstrap")
                .env_clear()
                .envs(moto::aws_env(endpoint))
                .env("LATCHKEY_TABLE", &table)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run latchkey bootstrap");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "latchkey bootstrap failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(stdout.trim(), format!("table {table} created"), "what latchkey bootstrap printed");
        }
        let kms_key_id = moto::create_kms_key(&config).await;
        Self { dir, aws: Some(AwsResources { table, kms_key_id }) }
    }

    /// `LATCHKEY_DATA_DIR`.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The table and key, for the aws backend.
    pub fn aws(&self) -> Option<&AwsResources> {
        self.aws.as_ref()
    }

    /// The settings of `latchkey serve` for this backend, but for the address and secret.
    fn serve_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("LATCHKEY_DATA_DIR", self.data_dir().to_string_lossy().into_owned())];
        if let Some(aws) = &self.aws {
            env.extend(moto::aws_env(moto::endpoint()));
            env.push(("LATCHKEY_BACKEND", "aws".to_owned()));
            env.push(("LATCHKEY_TABLE", aws.table.clone()));
            env.push(("LATCHKEY_KMS_KEY_ID", aws.kms_key_id.clone()));
            // The OAuth test servers listen on loopback, which the aws backend refuses by default.
            env.push(("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "true".to_owned()));
        }
        env
    }

    /// What the backend has stored, as `(where, bytes)`: for embedded every file of the data
    /// directory (database, WAL, master key...), for aws every item of the table, read with a
    /// Scan, each attribute's raw content (strings as UTF-8, binaries as their bytes) in turn.
    /// For "no secret is stored in clear" checks, with a positive control.
    pub async fn stored_data(&self) -> Vec<(String, Vec<u8>)> {
        let Some(aws) = &self.aws else {
            return files_under(self.data_dir())
                .into_iter()
                .map(|f| {
                    let bytes = std::fs::read(&f).expect("read a data file");
                    (f.display().to_string(), bytes)
                })
                .collect();
        };
        let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
        let mut stored = Vec::new();
        let mut start = None;
        loop {
            let out = client
                .scan()
                .table_name(&aws.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("dynamodb Scan");
            for item in out.items() {
                let mut names: Vec<&String> = item.keys().collect();
                names.sort();
                let mut bytes = Vec::new();
                for name in names {
                    bytes.extend_from_slice(name.as_bytes());
                    bytes.push(b'=');
                    attribute_bytes(&item[name], &mut bytes);
                    bytes.push(b'\n');
                }
                let key = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).map_or("?", String::as_str);
                stored.push((format!("item {} / {} of {}", key("pk"), key("sk"), aws.table), bytes));
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return stored,
            }
        }
    }
}

/// Appends the raw content of `value` to `out`: what a reader of the table would see.
fn attribute_bytes(value: &aws_sdk_dynamodb::types::AttributeValue, out: &mut Vec<u8>) {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    match value {
        V::S(s) | V::N(s) => out.extend_from_slice(s.as_bytes()),
        V::B(b) => out.extend_from_slice(b.as_ref()),
        V::Ss(list) | V::Ns(list) => list.iter().for_each(|s| {
            out.extend_from_slice(s.as_bytes());
            out.push(b' ');
        }),
        V::Bs(list) => list.iter().for_each(|b| {
            out.extend_from_slice(b.as_ref());
            out.push(b' ');
        }),
        V::L(list) => list.iter().for_each(|v| {
            attribute_bytes(v, out);
            out.push(b' ');
        }),
        V::M(map) => map.iter().for_each(|(k, v)| {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            attribute_bytes(v, out);
            out.push(b' ');
        }),
        V::Bool(b) => out.extend_from_slice(b.to_string().as_bytes()),
        V::Null(_) => out.extend_from_slice(b"null"),
        // A kind of value this SDK version does not know: its Debug text is all there is.
        other => out.extend_from_slice(format!("{other:?}").as_bytes()),
    }
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
    /// Where the data is: what a restart passes to [`TestApp::spawn_with`].
    pub backend: Backend,
    secret: String,
    child: Option<Child>,
    /// In-process mode: the server task instead of a child process.
    local: Option<InProcess>,
    /// Everything the server wrote to stderr so far (its logs), filled by a background task.
    logs: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
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
    /// A server on a fresh backend ([`Backend::fresh`]) with a fresh JWT secret.
    pub async fn spawn() -> Self {
        Self::spawn_with(&Backend::fresh().await, &random_secret()).await
    }

    /// A server on `backend` with `secret`: what a restart needs.
    pub async fn spawn_with(backend: &Backend, secret: &str) -> Self {
        Self::spawn_with_env(backend, secret, &[]).await
    }

    /// [`TestApp::spawn_with`] with extra `LATCHKEY_*` settings for the binary (the in-process
    /// transport ignores them).
    pub async fn spawn_with_env(backend: &Backend, secret: &str, env: &[(&str, &str)]) -> Self {
        if in_process() {
            return Self::serve_in_process(backend, secret).await;
        }
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(backend.serve_env())
            .envs(env.iter().copied())
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
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
            data_dir: backend.data_dir().to_owned(),
            backend: backend.clone(),
            secret: secret.to_owned(),
            child: Some(child),
            local: None,
            logs,
            readers: vec![stderr_reader, stdout_reader],
        };
        app.wait_until_healthy().await;
        app
    }

    /// The library's router over `backend`, served on a free loopback port by this process: the
    /// in-process transport.
    async fn serve_in_process(backend: &Backend, secret: &str) -> Self {
        use latchkey::config::App;
        use latchkey::http::auth::Verifier;

        let logs = in_process_logs();
        let app = match backend.aws() {
            None => App::embedded(backend.data_dir()).expect("open the embedded backend"),
            Some(aws) => {
                // Clients of this test's runtime (see moto::sdk_config), as `latchkey serve`
                // builds them from the AWS environment (with its timeouts).
                let config = moto::sdk_config()
                    .await
                    .to_builder()
                    .timeout_config(latchkey::adapters::aws::timeout_config())
                    .build();
                App::aws(
                    aws_sdk_dynamodb::Client::new(&config),
                    aws_sdk_kms::Client::new(&config),
                    aws_sdk_eventbridge::Client::new(&config),
                    &aws.table,
                    &aws.kms_key_id,
                    "default",
                )
            }
        };
        let router = latchkey::http::router(
            app.http_state(Verifier::hs256(&secret.to_owned().into()).expect("a secret of 32 bytes or more")),
        );
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
            data_dir: backend.data_dir().to_owned(),
            backend: backend.clone(),
            secret: secret.to_owned(),
            child: None,
            local: Some(InProcess { shutdown: Some(tx), server }),
            logs,
            readers: Vec::new(),
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

    /// What the server's backend has stored: see [`Backend::stored_data`].
    pub async fn stored_data(&self) -> Vec<(String, Vec<u8>)> {
        self.backend.stored_data().await
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

/// Polls `check` every 100 ms until it holds, for at most `limit`: for what the tests cannot
/// await directly (a sweep, a background revocation).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + limit;
    while !check().await {
        assert!(std::time::Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! [`TestApp`]: one running `latchkey serve` (the binary, or the library's router served in this
//! process), its logs, and how to stop, kill and restart it.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use support::moto;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::client::REQUEST_TIMEOUT;
use super::{Api, Backend, eventually, in_process, random_secret};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// In-process mode: everything the library logs (at trace level) in this test process, written
/// as `latchkey serve` writes it (a request's lines together, `telemetry::Lines`).
fn in_process_logs() -> Arc<Mutex<String>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<String>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(RUST_LOG))
            .with_ansi(false)
            .with_writer(latchkey::telemetry::Lines::new(Arc::new(LogSink(logs.clone()))))
            .try_init();
        logs
    })
    .clone()
}

struct LogSink(Arc<Mutex<String>>);

impl latchkey::telemetry::Destination for LogSink {
    fn write_lines(&self, lines: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(lines));
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

/// The `RUST_LOG` of every server: as verbose as it gets, so that the canary test sees every line
/// the product could ever write.
const RUST_LOG: &str = "trace";

/// What the summary line of every refresh sweep says (`shared/src/service/refresh/sweep.rs`).
const SWEEP_SUMMARY: &str = "refresh sweep revocations=";

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

    /// A server on `backend` with `secret`, of the transport `LATCHKEY_TEST_TRANSPORT` names: what
    /// a restart needs.
    pub async fn spawn_with(backend: &Backend, secret: &str) -> Self {
        if in_process() {
            return Self::serve_in_process(backend, secret).await;
        }
        Self::spawn_binary_with_env(backend, secret, &[]).await
    }

    /// The `latchkey serve` binary on `backend` with `secret`, whatever `LATCHKEY_TEST_TRANSPORT`
    /// says: for tests about the binary itself (its signals, its sweep and revoker, two
    /// processes on one backend).
    pub async fn spawn_binary(backend: &Backend, secret: &str) -> Self {
        Self::spawn_binary_with_env(backend, secret, &[]).await
    }

    /// [`TestApp::spawn_binary`] with extra settings (`env`, added to the backend's and the
    /// harness's own; a `RUST_LOG` there replaces the harness's).
    pub async fn spawn_binary_with_env(backend: &Backend, secret: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(backend.serve_env())
            .env("RUST_LOG", RUST_LOG)
            .envs(env.iter().copied())
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
            .env("LATCHKEY_JWT_SECRET", secret)
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
        use latchkey::config::Components;
        use latchkey::http::auth::Verifier;
        use latchkey::service::ServiceOptions;

        let logs = in_process_logs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let port = listener.local_addr().expect("bound address").port();
        // As the binary under the harness: its own address as the public URL, the OAuth test
        // servers on loopback allowed.
        let options = ServiceOptions {
            public_url: Some(format!("http://127.0.0.1:{port}")),
            allow_loopback_providers: true,
            ..ServiceOptions::default()
        };
        let app = match backend.aws() {
            None => Components::embedded(backend.data_dir(), options).expect("open the embedded backend"),
            Some(aws) => {
                // Clients of this test's runtime (see moto::sdk_config), as `latchkey serve`
                // builds them from the AWS environment (with its timeouts).
                let config = moto::sdk_config_for(&aws.endpoint)
                    .await
                    .to_builder()
                    .timeout_config(latchkey::adapters::aws::timeout_config())
                    .build();
                Components::aws(
                    aws_sdk_dynamodb::Client::new(&config),
                    aws_sdk_kms::Client::new(&config),
                    aws_sdk_eventbridge::Client::new(&config),
                    &aws.table,
                    &aws.kms_key_id,
                    "default",
                    options,
                )
            }
        };
        let router = latchkey::http::router(
            app.router_state(Verifier::hs256(&secret.to_owned().into()).expect("a secret of 32 bytes or more")),
        );
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

    /// A token for `org`, a customer user's if `customer` is given, with `roles`.
    pub async fn token(&self, org: &str, customer: Option<&str>, roles: &[&str]) -> String {
        mint_token(&self.secret, org, customer, roles).await
    }

    /// Waits until the binary has finished `n` more refresh sweeps (its `refresh sweep` summary
    /// lines) than it had when called, for at most 20 s: to assert that sweeps left something
    /// alone without guessing how long they take. The server must sweep often
    /// (`LATCHKEY_REFRESH_INTERVAL_SECS=1`).
    pub async fn sweeps_run(&self, n: usize) {
        let sweeps = || self.logs().matches(SWEEP_SUMMARY).count();
        let target = sweeps() + n;
        eventually(Duration::from_secs(20), &format!("{n} more refresh sweeps"), || async { sweeps() >= target }).await;
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

//! The outside processes of the test harness and helpers around them, shared by the root
//! package's test binaries (`tests/api`, `tests/adapters`, `tests/cli`, `tests/infra_template.rs`):
//! - [`moto`]: the AWS emulator (one per test binary, from `.venv/`), SDK configuration for it and
//!   the few resources the AWS adapters need;
//! - [`oauth`]: real OAuth 2.0 servers (`tests/oauth/oidc.mjs`, `tests/oauth/mock.mjs`);
//! - [`oauth1`]: the OAuth 1.0a provider (`tests/oauth/oauth1_server.py`, oauthlib);
//! - [`quirks`]: the scripted provider of the real-provider quirk table (`tests/oauth/quirks.mjs`);
//! - [`calls`]: records every AWS call (and the IAM action it needs) of the clients it is put on;
//! - [`eventually`]: polls a condition with a deadline, instead of sleeping for it;
//! - [`spawn_ready`]: starts a server process that prints its URL once it listens;
//! - [`lambda_context`]: the Lambda invocation context of a test invocation;
//! - [`random_secret`]: a fresh HS256 secret for a server under test;
//! - [`webhook_receiver`]: a webhook endpoint on loopback that records what it gets.
//!
//! A library rather than modules included into each binary, so that a binary that uses part of
//! it compiles without dead code.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod calls;
pub mod moto;
pub mod oauth;
pub mod oauth1;
pub mod quirks;
pub mod webhook_receiver;

/// The repository root (the root package's directory): `.venv/` and `tests/oauth/` are under it.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// 32 random bytes from the OS as 64 lowercase hex digits: a JWT secret (HS256 wants at least
/// 32 bytes) for a server a test starts.
pub fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `check` every 100 ms until it holds, for at most `limit`: for what the tests cannot
/// await directly (a sweep, a background revocation).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `command` (stdin and stdout piped, stderr inherited) and waits up to `timeout` for the
/// line `{ready_prefix}URL` on its stdout: the child, its stdin and the URL. Holding the stdin
/// open keeps a server that reads it to its end alive until this process exits, however that
/// ends. Panics, naming `what` and `hint`, if the process exits first (with what it printed) or
/// says nothing in time (then it is killed).
pub fn spawn_ready(
    mut command: Command,
    ready_prefix: &'static str,
    timeout: Duration,
    what: &str,
    hint: &str,
) -> (Child, ChildStdin, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}. {hint}"));
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    // Read on a thread so a hung start is a timeout instead of a test that never ends.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix(ready_prefix) {
                let _ = tx.send(Ok(url.trim().to_owned()));
                return;
            }
            seen.push(line);
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(url)) => (child, stdin, url),
        Ok(Err(stdout)) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            panic!(
                "{what} exited ({status}) before it was ready; its stderr is above, its stdout was {stdout:?}. {hint}"
            )
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not report `{ready_prefix}URL` within {timeout:?} (its stderr is above). {hint}")
        }
    }
}

/// The Lambda context of a test invocation with request id `request_id` and a deadline two
/// minutes ahead.
pub fn lambda_context(request_id: &str) -> lambda_http::lambda_runtime::Context {
    let mut context = lambda_http::lambda_runtime::Context::default();
    context.request_id = request_id.to_owned();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    context.deadline = (now + Duration::from_secs(120)).as_millis() as u64;
    context
}

//! The outside processes of the test harness and helpers around them, shared by the root
//! package's test binaries (`tests/api`, `tests/adapters`, `tests/cli`, `tests/infra_template.rs`):
//! - [`moto`]: the AWS emulator (one per test binary, from `.venv/`), SDK configuration for it and
//!   the few resources the AWS adapters need;
//! - [`oauth`]: real OAuth 2.0 servers (`tests/oauth/oidc.mjs`, `tests/oauth/mock.mjs`);
//! - [`oauth1`]: the OAuth 1.0a provider (`tests/oauth/oauth1_server.py`, oauthlib);
//! - [`quirks`]: the scripted provider of the real-provider quirk table (`tests/oauth/quirks.mjs`);
//! - [`calls`]: records every AWS call (and the IAM action it needs) of the clients it is put on;
//! - [`eventually`]: polls a condition with a deadline, instead of sleeping for it;
//! - [`random_secret`]: a fresh HS256 secret for a server under test;
//! - [`webhook_receiver`]: a webhook endpoint on loopback that records what it gets.
//!
//! A library rather than modules included into each binary, so that a binary that uses part of
//! it compiles without dead code.

use std::future::Future;
use std::path::{Path, PathBuf};
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

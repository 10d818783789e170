//! The harness of the black-box suites: runs the real `latchkey serve` binary on a free loopback
//! port with a fresh backend ([`TestApp`], [`Backend`]), talks to it over HTTP ([`Api`],
//! [`Reply`]), and mints tokens with `latchkey token`.
//!
//! Two switches, so that `tests/run.sh` runs the serve suite in all four combinations:
//! - `LATCHKEY_TEST_TRANSPORT=in-process`: [`TestApp::spawn`] serves the library's router inside
//!   the test process instead of spawning the binary. Tests about the binary itself (its sweep,
//!   its revoker, two processes, its settings) use [`TestApp::spawn_binary`], which always spawns
//!   it, so they test the same thing under either transport.
//! - `LATCHKEY_TEST_BACKEND=aws` (default `embedded`): every server gets a fresh DynamoDB table
//!   (made by `latchkey bootstrap`) and KMS key in this test binary's moto server
//!   ([`support::moto`]), and events go to moto's `default` EventBridge bus.

mod app;
mod backend;
mod client;

use std::path::{Path, PathBuf};

pub use app::{BIN, TestApp, mint_token};
pub use backend::Backend;
pub use client::{Api, Reply, raw_exchange};
pub use support::eventually;

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

/// The system clock moved forward on demand, for in-process tests that age tokens and leases
/// without waiting: the service reads it, while waits inside the service still take real time.
#[derive(Default)]
pub struct ShiftedClock {
    ahead: std::sync::Mutex<std::time::Duration>,
}

impl ShiftedClock {
    /// Moves the clock `by` forward (cumulative).
    pub fn advance(&self, by: std::time::Duration) {
        *self.ahead.lock().unwrap() += by;
    }
}

impl latchkey::ports::Clock for ShiftedClock {
    fn now(&self) -> time::OffsetDateTime {
        latchkey::ports::SystemClock.now() + *self.ahead.lock().unwrap()
    }
}

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

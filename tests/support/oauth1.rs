//! The OAuth 1.0a test provider (`tests/oauth/oauth1_server.py`, oauthlib's provider endpoints):
//! one per test binary, started on first use from `.venv-oauth1/`, which this module creates
//! from `tests/oauth/oauth1-requirements.txt` through `tests/venv.sh` when it is missing. Tests
//! share the server and register consumers of their own ([`Oauth1Server::register`]), so they
//! never collide. Its stdin is a pipe held open by this process, so it exits with the test
//! binary however that ends.

use std::process::{Child, ChildStdin, Command};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

/// How long the provider may take to start (pip already done).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const READY_PREFIX: &str = "oauth1 listening on ";

/// The shared provider process.
pub struct Oauth1Server {
    url: String,
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

static SERVER: OnceLock<Oauth1Server> = OnceLock::new();

/// This test binary's provider, started (and its venv installed) on first use. Blocks the
/// calling thread for a second or two the first time (longer when pip has to install).
pub fn server() -> &'static Oauth1Server {
    SERVER.get_or_init(start)
}

impl Oauth1Server {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn request_token_endpoint(&self) -> String {
        format!("{}/request_token", self.url)
    }

    pub fn authorize_endpoint(&self) -> String {
        format!("{}/authorize", self.url)
    }

    pub fn access_token_endpoint(&self) -> String {
        format!("{}/access_token", self.url)
    }

    /// The protected resource: 200 `{"client_key", "token", "method"}` for a request whose
    /// signature and token oauthlib accepts, 401 otherwise.
    pub fn resource_endpoint(&self) -> String {
        format!("{}/resource", self.url)
    }

    /// Registers a consumer: its secret (HMAC, PLAINTEXT) and, for RSA-SHA1, its public key (PEM).
    pub async fn register(&self, key: &str, secret: &str, rsa_public_key: Option<&str>) {
        let body = json!({"client_key": key, "client_secret": secret, "rsa_public_key": rsa_public_key});
        let res = reqwest::Client::new().post(format!("{}/admin/clients", self.url)).json(&body).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 201, "registering consumer {key}");
    }

    /// What the user's browser does at the authorize URL: the provider approves at once and
    /// redirects to the callback with `oauth_token` and `oauth_verifier`; that redirect's URL.
    pub async fn approve(&self, authorize_url: &str) -> String {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let res = client.get(authorize_url).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 302, "the provider approves: {:?}", res.text().await);
        res.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned()
    }

    /// How many access tokens the provider issued to consumer `key` so far.
    pub async fn access_tokens_issued(&self, key: &str) -> u64 {
        let stats: Value =
            reqwest::get(format!("{}/admin/stats?client_key={key}", self.url)).await.unwrap().json().await.unwrap();
        stats["access_tokens"].as_u64().expect("access_tokens")
    }
}

fn start() -> Oauth1Server {
    let repo = &crate::repo_root();
    let venv = repo.join(".venv-oauth1");
    // tests/venv.sh's `venv`: creates the venv if missing and installs the pinned requirements
    // (a no-op in a second or two when they are there).
    let installed = Command::new("bash")
        .arg("-c")
        .arg("source tests/venv.sh && venv .venv-oauth1 tests/oauth/oauth1-requirements.txt")
        .current_dir(repo)
        .status()
        .expect("run bash");
    assert!(installed.success(), "installing tests/oauth/oauth1-requirements.txt into .venv-oauth1 failed");
    let mut command = Command::new(venv.join("bin/python"));
    command.arg(repo.join("tests/oauth/oauth1_server.py")).current_dir(repo);
    let (child, stdin, url) = crate::spawn_ready(
        command,
        READY_PREFIX,
        START_TIMEOUT,
        "tests/oauth/oauth1_server.py",
        "Is .venv-oauth1 complete? Delete it to reinstall",
    );
    Oauth1Server { url, _stdin: Mutex::new(stdin), _child: Mutex::new(child) }
}

/// RFC 3986 percent-encoding of RFC 5849 section 3.6 (what an execution's own signing code
/// does): every byte but `A-Z a-z 0-9 - . _ ~` as `%XX`, upper-case.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! The harness of the `latchkey` command's tests: a real `latchkey serve` ([`Server`]) on a
//! free port, the command run against it ([`Server::run`]) or on its own ([`latchkey`]), and
//! what a finished command printed ([`Run`]).

use std::process::{Output, Stdio};
use std::time::Duration;

use latchkey_client::Client;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The `latchkey` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// `latchkey` with no environment but `RUST_LOG=warn`, run synchronously.
pub fn latchkey() -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear().env("RUST_LOG", "warn");
    cmd
}

/// One `latchkey serve` on a free loopback port with a fresh data directory. Killed when dropped.
pub struct Server {
    pub url: String,
    secret: String,
    pub dir: TempDir,
    _child: Child,
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let secret = support::random_secret();
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .env("LATCHKEY_DATA_DIR", dir.path().join("data"))
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
            .env("LATCHKEY_JWT_SECRET", &secret)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start latchkey serve");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("latchkey listening on ") {
                    return addr.trim().to_owned();
                }
            }
            panic!("latchkey serve ended before listening");
        })
        .await
        .expect("latchkey serve listens within 20 s");
        // Drained, never closed: the server prints more.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { url, secret, dir, _child: child }
    }

    /// The server's HS256 secret (`LATCHKEY_JWT_SECRET`), for commands that sign their own token.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub async fn token(&self, org: &str, roles: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().env("LATCHKEY_JWT_SECRET", &self.secret).args(["token", "--org", org]);
        for r in roles {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().await.expect("run latchkey token");
        assert!(out.status.success(), "latchkey token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token.to_owned().into()).expect("a client")
    }

    /// `latchkey ARGS` against this server with `token`.
    pub async fn run(&self, token: &str, args: &[&str]) -> Run {
        self.run_with_stdin(token, args, None).await
    }

    /// [`Server::run`] with `stdin` written to the command's input.
    pub async fn run_with_stdin(&self, token: &str, args: &[&str], stdin: Option<&str>) -> Run {
        self.run_with(token, args, stdin, &[]).await
    }

    /// [`Server::run_with_stdin`] with the variables `env` besides (they override
    /// `LATCHKEY_URL`/`LATCHKEY_TOKEN`).
    pub async fn run_with(&self, token: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("LATCHKEY_URL", &self.url)
            .env("LATCHKEY_TOKEN", token)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("run latchkey");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input.as_bytes()).await.expect("write stdin");
        }
        Run::of(child.wait_with_output().await.expect("wait for latchkey"))
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path.to_string_lossy().into_owned()
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

//! Where a test server keeps its data: a fresh data directory, and on the aws backend a fresh
//! table and KMS key in moto.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use support::moto;
use tempfile::TempDir;
use tokio::process::Command;

use super::app::BIN;
use super::{aws_backend, files_under, in_process};

/// The AWS resources of one aws-backend server (and of its restarts).
#[derive(Debug, Clone)]
pub struct AwsResources {
    /// The moto server they are in, `http://127.0.0.1:PORT`.
    pub endpoint: String,
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
    /// bootstrap) and a new KMS key in this test binary's moto server.
    pub async fn fresh() -> Self {
        if aws_backend() { Self::fresh_aws().await } else { Self::fresh_embedded() }
    }

    /// A fresh embedded backend, whatever `LATCHKEY_TEST_BACKEND` says: for tests about its
    /// local files.
    pub fn fresh_embedded() -> Self {
        Self { dir: Arc::new(tempfile::tempdir().expect("create a temp dir")), aws: None }
    }

    /// A fresh aws backend in this test binary's moto server, whatever `LATCHKEY_TEST_BACKEND`
    /// says.
    pub async fn fresh_aws() -> Self {
        // Starting moto blocks for about a second, the first time.
        let endpoint = tokio::task::spawn_blocking(moto::endpoint).await.expect("start moto");
        Self::fresh_aws_on(endpoint).await
    }

    /// A fresh aws backend in the moto server at `endpoint`: one of the test's own
    /// ([`moto::Moto::start`]), for a test that stops it.
    pub async fn fresh_aws_on(endpoint: &str) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("create a temp dir"));
        let config = moto::sdk_config_for(endpoint).await;
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
        Self { dir, aws: Some(AwsResources { endpoint: endpoint.to_owned(), table, kms_key_id }) }
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
    pub(super) fn serve_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("LATCHKEY_DATA_DIR", self.data_dir().to_string_lossy().into_owned())];
        if let Some(aws) = &self.aws {
            env.extend(moto::aws_env(&aws.endpoint));
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
        let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config_for(&aws.endpoint).await);
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

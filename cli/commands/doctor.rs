//! `latchkey doctor`: checks what `latchkey serve` (or a function) would run on, with the same
//! `LATCHKEY_*` settings, and says per check `ok`, `warn` or `fail` and why. Exits non-zero
//! when a check fails.
//!
//! - embedded: the data directory, the master key, the JWT secret and the database files
//!   (present, private, the right size);
//! - aws: the DynamoDB table (DescribeTable: active, the indexes of `infra/`), the KMS key
//!   (DescribeKey, then a GenerateDataKey/Decrypt round trip: what sealing needs), the
//!   EventBridge bus (DescribeEventBus), and the clock against the `Date` of an AWS answer.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Failure;

/// What to check, from the settings `latchkey serve` reads.
#[derive(Debug, Clone)]
pub enum Target {
    /// `LATCHKEY_BACKEND=embedded`.
    Embedded {
        /// `LATCHKEY_DATA_DIR`.
        data_dir: PathBuf,
        /// Whether `LATCHKEY_JWT_SECRET` is set (then no secret file is needed).
        jwt_secret_set: bool,
    },
    /// `LATCHKEY_BACKEND=aws`.
    Aws {
        /// `LATCHKEY_TABLE`.
        table: Option<String>,
        /// `LATCHKEY_KMS_KEY_ID`.
        kms_key_id: Option<String>,
        /// `LATCHKEY_EVENT_BUS`.
        event_bus: String,
    },
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        })
    }
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub why: String,
}

fn check(name: impl Into<String>, verdict: Verdict, why: impl Into<String>) -> Check {
    Check { name: name.into(), verdict, why: why.into() }
}

/// Runs every check of `target`, prints one line per check, and fails if any check failed.
///
/// # Errors
/// The count of failed checks.
pub async fn run(target: Target) -> Result<(), Failure> {
    let checks = match target {
        Target::Embedded { data_dir, jwt_secret_set } => embedded(&data_dir, jwt_secret_set),
        Target::Aws { table, kms_key_id, event_bus } => aws(table.as_deref(), kms_key_id.as_deref(), &event_bus).await,
    };
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &checks {
        println!("{:<4}  {:<width$}  {}", c.verdict.to_string(), c.name, c.why);
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    let warned = checks.iter().filter(|c| c.verdict == Verdict::Warn).count();
    if failed > 0 {
        return Err(format!("{failed} check(s) failed, {warned} warning(s)").into());
    }
    eprintln!("all checks passed{}", if warned > 0 { format!(", {warned} warning(s)") } else { String::new() });
    Ok(())
}

// ---- embedded ----

/// The file names of the embedded backend under its data directory.
const DATABASE: &str = "latchkey.db";
const MASTER_KEY: &str = latchkey::adapters::local_key::MASTER_KEY_FILE;
const JWT_SECRET: &str = latchkey::config::JWT_SECRET_FILE;

/// The embedded backend's checks under `dir`.
pub fn embedded(dir: &Path, jwt_secret_set: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            checks.push(check(
                "data directory",
                Verdict::Warn,
                format!("{shown} does not exist yet: `latchkey serve` creates it (mode 0700)"),
            ));
            checks.push(jwt_secret_check(None, jwt_secret_set));
            return checks;
        }
        Err(e) => {
            checks.push(check("data directory", Verdict::Fail, format!("{shown}: {e}")));
            return checks;
        }
        Ok(m) if !m.is_dir() => {
            checks.push(check("data directory", Verdict::Fail, format!("{shown} is not a directory")));
            return checks;
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            checks.push(if mode & 0o077 != 0 {
                check(
                    "data directory",
                    Verdict::Fail,
                    format!("{shown} has mode {mode:04o}: other users can look inside; run `chmod 700 {shown}`"),
                )
            } else {
                check("data directory", Verdict::Ok, format!("{shown} (mode {mode:04o})"))
            });
        }
    }
    let database = dir.join(DATABASE);
    checks.push(secret_file_check("master key", &dir.join(MASTER_KEY), Some(32), || {
        if database.exists() {
            (
                Verdict::Fail,
                format!("{DATABASE} exists without {MASTER_KEY}: its secrets cannot be decrypted; restore the key"),
            )
        } else {
            (Verdict::Warn, "not created yet: `latchkey serve` creates it (32 bytes, mode 0600)".to_owned())
        }
    }));
    checks.push(jwt_secret_check(Some(dir), jwt_secret_set));
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{DATABASE}{suffix}"));
        let name = format!("database file {DATABASE}{suffix}");
        match std::fs::metadata(&path) {
            Err(_) if suffix.is_empty() => {
                checks.push(check(name, Verdict::Warn, "not created yet: `latchkey serve` creates it"));
            }
            Err(_) => {}
            Ok(m) => {
                let mode = m.permissions().mode() & 0o777;
                checks.push(if mode & 0o077 != 0 {
                    check(
                        name,
                        Verdict::Warn,
                        format!("mode {mode:04o}: readable by others until `latchkey serve` sets it to 0600"),
                    )
                } else {
                    check(name, Verdict::Ok, format!("mode {mode:04o}"))
                });
            }
        }
    }
    checks
}

fn jwt_secret_check(dir: Option<&Path>, jwt_secret_set: bool) -> Check {
    if jwt_secret_set {
        return check("jwt secret", Verdict::Ok, "LATCHKEY_JWT_SECRET is set");
    }
    let missing = || {
        (
            Verdict::Warn,
            "LATCHKEY_JWT_SECRET is unset and there is no secret file: `latchkey serve` generates one and \
             prints a token; set LATCHKEY_JWT_SECRET to share one with other processes"
                .to_owned(),
        )
    };
    match dir {
        None => {
            let (verdict, why) = missing();
            check("jwt secret", verdict, why)
        }
        Some(dir) => secret_file_check("jwt secret", &dir.join(JWT_SECRET), None, missing),
    }
}

/// A secret file: present (else `missing` decides), private (0600), and of `size` bytes if
/// given (else at least 32, as HS256 secrets must be).
fn secret_file_check(name: &str, path: &Path, size: Option<u64>, missing: impl FnOnce() -> (Verdict, String)) -> Check {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (verdict, why) = missing();
            check(name, verdict, format!("{shown}: {why}"))
        }
        Err(e) => check(name, Verdict::Fail, format!("{shown}: {e}")),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                check(
                    name,
                    Verdict::Fail,
                    format!("{shown} has mode {mode:04o}: Latchkey refuses it; run `chmod 600 {shown}`"),
                )
            } else if size.is_some_and(|s| s != m.len()) {
                check(name, Verdict::Fail, format!("{shown} holds {} bytes, not {}", m.len(), size.unwrap_or(0)))
            } else if size.is_none() && m.len() < 32 {
                check(name, Verdict::Fail, format!("{shown} holds {} bytes: HS256 needs at least 32", m.len()))
            } else {
                check(name, Verdict::Ok, format!("{shown} (mode {mode:04o})"))
            }
        }
    }
}

// ---- aws ----

/// Clock skew past which AWS refuses signed requests (SigV4 allows 5 minutes).
const SKEW_FAIL: Duration = Duration::from_secs(240);
/// Clock skew past which tokens' expiry checks (60 s leeway) and refresh timing go wrong.
const SKEW_WARN: Duration = Duration::from_secs(30);

async fn aws(table: Option<&str>, kms_key_id: Option<&str>, event_bus: &str) -> Vec<Check> {
    let sdk = latchkey::adapters::aws::sdk_config().await;
    let mut checks = Vec::new();
    match sdk.region() {
        Some(r) => checks.push(check("aws region", Verdict::Ok, r.to_string())),
        None => {
            checks.push(check("aws region", Verdict::Fail, "no region: set AWS_REGION"));
            return checks;
        }
    }
    checks.push(match table {
        None => check("dynamodb table", Verdict::Fail, "LATCHKEY_TABLE is not set"),
        Some(t) => dynamodb_check(&aws_sdk_dynamodb::Client::new(&sdk), t).await,
    });
    checks.push(match kms_key_id {
        None => check("kms key", Verdict::Fail, "LATCHKEY_KMS_KEY_ID is not set"),
        Some(k) => kms_check(&aws_sdk_kms::Client::new(&sdk), k).await,
    });
    checks.push(eventbridge_check(&aws_sdk_eventbridge::Client::new(&sdk), event_bus).await);
    checks.push(clock_check(&sdk).await);
    checks
}

/// An AWS call's failure in one line: the service's code and message, or the chain of causes
/// of a failure to get an answer (timeout, connection, credentials).
fn sdk_error<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    if let Some(service) = e.as_service_error() {
        return format!("{}: {}", service.code().unwrap_or("error"), service.message().unwrap_or("no message"));
    }
    let mut said = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        said = format!("{said}: {s}");
        source = s.source();
    }
    said
}

async fn dynamodb_check(client: &aws_sdk_dynamodb::Client, table: &str) -> Check {
    let name = "dynamodb table";
    let out = match client.describe_table().table_name(table).send().await {
        Ok(out) => out,
        Err(e) => return check(name, Verdict::Fail, format!("DescribeTable {table}: {}", sdk_error(&e))),
    };
    let Some(t) = out.table() else {
        return check(name, Verdict::Fail, format!("DescribeTable {table} answered without a table"));
    };
    let status = t.table_status().map(|s| s.as_str().to_owned()).unwrap_or_else(|| "unknown".into());
    let have: Vec<&str> = t.global_secondary_indexes().iter().filter_map(|i| i.index_name()).collect();
    let missing: Vec<String> = latchkey::adapters::aws::schema::schema()
        .global_secondary_indexes
        .into_iter()
        .map(|i| i.index_name)
        .filter(|n| !have.contains(&n.as_str()))
        .collect();
    if !missing.is_empty() {
        check(
            name,
            Verdict::Fail,
            format!(
                "{table} lacks the index(es) {}: deploy infra/ (or `latchkey bootstrap` on an emulator)",
                missing.join(", ")
            ),
        )
    } else if status != "ACTIVE" {
        check(name, Verdict::Warn, format!("{table} is {status}, not ACTIVE"))
    } else {
        check(name, Verdict::Ok, format!("{table}: ACTIVE, indexes {}", have.join(", ")))
    }
}

async fn kms_check(client: &aws_sdk_kms::Client, key: &str) -> Check {
    use aws_sdk_kms::types::{DataKeySpec, KeyState};
    let name = "kms key";
    // DescribeKey says why a key cannot work; a role may lack it, then the round trip decides.
    let mut described = String::new();
    match client.describe_key().key_id(key).send().await {
        Ok(out) => {
            if let Some(m) = out.key_metadata() {
                match m.key_state() {
                    Some(KeyState::Enabled) => {}
                    Some(state) => {
                        return check(name, Verdict::Fail, format!("{key} is {}: enable it", state.as_str()));
                    }
                    None => {}
                }
                let spec = m.key_spec().map(|s| s.as_str()).unwrap_or("unknown");
                if spec != "SYMMETRIC_DEFAULT" {
                    return check(name, Verdict::Fail, format!("{key} is {spec}: Latchkey needs a symmetric key"));
                }
                described = format!("{}, enabled; ", m.key_id());
            }
        }
        Err(e) => described = format!("DescribeKey refused ({}); ", sdk_error(&e)),
    }
    let context = [("latchkey", "doctor")];
    let mut generate = client.generate_data_key().key_id(key).key_spec(DataKeySpec::Aes256);
    for (k, v) in context {
        generate = generate.encryption_context(k, v);
    }
    let wrapped = match generate.send().await {
        Ok(out) => out.ciphertext_blob().cloned(),
        Err(e) => {
            return check(name, Verdict::Fail, format!("{described}GenerateDataKey with {key}: {}", sdk_error(&e)));
        }
    };
    let Some(wrapped) = wrapped else {
        return check(name, Verdict::Fail, format!("{described}GenerateDataKey answered without a ciphertext"));
    };
    let mut decrypt = client.decrypt().ciphertext_blob(wrapped);
    for (k, v) in context {
        decrypt = decrypt.encryption_context(k, v);
    }
    match decrypt.send().await {
        Ok(out) if out.plaintext().is_some_and(|p| p.as_ref().len() == 32) => {
            check(name, Verdict::Ok, format!("{described}GenerateDataKey and Decrypt work"))
        }
        Ok(_) => check(name, Verdict::Fail, format!("{described}Decrypt answered without a 32-byte key")),
        Err(e) => check(name, Verdict::Fail, format!("{described}Decrypt of a fresh data key: {}", sdk_error(&e))),
    }
}

async fn eventbridge_check(client: &aws_sdk_eventbridge::Client, bus: &str) -> Check {
    let name = "eventbridge bus";
    match client.describe_event_bus().name(bus).send().await {
        Ok(out) => check(name, Verdict::Ok, out.arn().unwrap_or(bus).to_owned()),
        Err(e) => check(name, Verdict::Fail, format!("DescribeEventBus {bus}: {}", sdk_error(&e))),
    }
}

/// The local clock against the `Date` of an answer of the DynamoDB endpoint (an unsigned GET:
/// any answer carries the time).
async fn clock_check(sdk: &aws_config::SdkConfig) -> Check {
    let name = "clock";
    let endpoint = match (sdk.endpoint_url(), sdk.region()) {
        (Some(url), _) => url.to_owned(),
        (None, Some(region)) => format!("https://dynamodb.{region}.amazonaws.com/"),
        (None, None) => return check(name, Verdict::Warn, "no endpoint to compare with"),
    };
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => return check(name, Verdict::Warn, format!("no HTTP client: {e}")),
    };
    let sent = SystemTime::now();
    let answer = match http.get(&endpoint).send().await {
        Ok(a) => a,
        Err(e) => return check(name, Verdict::Warn, format!("{endpoint} did not answer: {e}")),
    };
    let received = SystemTime::now();
    let Some(date) = answer.headers().get(reqwest::header::DATE).and_then(|d| d.to_str().ok()) else {
        return check(name, Verdict::Warn, format!("{endpoint} answered without a Date"));
    };
    let Ok(theirs) = httpdate::parse_http_date(date) else {
        return check(name, Verdict::Warn, format!("{endpoint} answered an unreadable Date"));
    };
    // Ours at the middle of the exchange; theirs has whole seconds.
    let ours = sent + received.duration_since(sent).unwrap_or_default() / 2;
    let skew = ours.duration_since(theirs).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
    let skew = skew.saturating_sub(Duration::from_secs(1));
    let ahead = ours > theirs;
    let said = format!("{}s {} {endpoint}", skew.as_secs(), if ahead { "ahead of" } else { "behind" });
    if skew > SKEW_FAIL {
        check(name, Verdict::Fail, format!("{said}: AWS refuses signatures beyond 5 minutes; sync the clock (NTP)"))
    } else if skew > SKEW_WARN {
        check(name, Verdict::Warn, format!("{said}: token expiry checks allow 60 s; sync the clock (NTP)"))
    } else {
        check(name, Verdict::Ok, format!("within {}s of {endpoint}", skew.as_secs().max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8], mode: u32) {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn verdict_of<'c>(checks: &'c [Check], name: &str) -> &'c Check {
        checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:?}"))
    }

    #[test]
    fn a_missing_data_directory_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let checks = embedded(&dir.path().join("absent"), false);
        assert_eq!(verdict_of(&checks, "data directory").verdict, Verdict::Warn);
        assert!(checks.iter().all(|c| c.verdict != Verdict::Fail), "{checks:?}");
    }

    #[test]
    fn private_files_of_the_right_size_pass_and_a_readable_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        write(&dir.path().join(MASTER_KEY), &[7; 32], 0o600);
        write(&dir.path().join(JWT_SECRET), &[b'a'; 64], 0o600);
        write(&dir.path().join(DATABASE), b"", 0o600);
        let checks = embedded(dir.path(), false);
        assert!(checks.iter().all(|c| c.verdict == Verdict::Ok), "{checks:?}");

        std::fs::set_permissions(dir.path().join(MASTER_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = verdict_of(&embedded(dir.path(), false), "master key").clone();
        assert_eq!(key.verdict, Verdict::Fail);
        assert!(key.why.contains("chmod 600"), "{}", key.why);
    }

    #[test]
    fn a_database_without_its_key_fails_and_a_short_key_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        write(&dir.path().join(DATABASE), b"", 0o600);
        assert_eq!(verdict_of(&embedded(dir.path(), true), "master key").verdict, Verdict::Fail);
        write(&dir.path().join(MASTER_KEY), &[7; 16], 0o600);
        let key = verdict_of(&embedded(dir.path(), true), "master key").clone();
        assert_eq!(key.verdict, Verdict::Fail);
        assert!(key.why.contains("16 bytes"), "{}", key.why);
    }
}

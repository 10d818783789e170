//! The commands that talk to a Latchkey API (`definitions`, `connections`, `lookup`, `import`),
//! `doctor`, and the `latchkey-client` crate they are built on, end to end against a real
//! `latchkey serve` (embedded backend) started by this file's small harness.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use latchkey_client::{Client, ErrorKind, NewConnection, Status};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_latchkey");

/// One `latchkey serve` on a free loopback port with a fresh data directory. Killed when dropped.
struct Server {
    url: String,
    secret: String,
    dir: TempDir,
    _child: Child,
}

fn random_secret() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let secret = random_secret();
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

    async fn token(&self, org: &str, roles: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().env("LATCHKEY_JWT_SECRET", &self.secret).args(["token", "--org", org]);
        for r in roles {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().await.expect("run latchkey token");
        assert!(out.status.success(), "latchkey token: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
    }

    fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token.to_owned().into()).expect("a client")
    }

    /// `latchkey ARGS` against this server with `token`.
    async fn run(&self, token: &str, args: &[&str]) -> Run {
        self.run_with_stdin(token, args, None).await
    }

    async fn run_with_stdin(&self, token: &str, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("LATCHKEY_URL", &self.url)
            .env("LATCHKEY_TOKEN", token)
            .env("RUST_LOG", "warn")
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

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path.to_string_lossy().into_owned()
    }
}

/// A finished command.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

const ACME: &str = r#"
- key: acme-api
  label: Acme API
  auth: api_key
  inputs:
    apiKey: {label: API Key, type: password, required: true}
    endpoint: {label: Endpoint, type: url, default: "https://api.acme.com"}
- key: crm
  provider: github
  inputs:
    clientId: {label: Client ID, type: string, default: client-1}
"#;

async fn definition_version(server: &Server, token: &str, key: &str) -> u64 {
    server.client(token).get_definition(key).await.expect("read the definition").expect("it exists").version
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_apply_creates_then_writes_only_what_changed_with_a_diff() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let file = server.write("defs.yaml", ACME);

    let first = server.run(&org, &["definitions", "apply", "-f", &file]).await;
    first.ok();
    assert!(first.stdout.contains("+ acme-api (new") && first.stdout.contains("+ crm (new"), "{first:#?}");
    assert!(first.stdout.contains("+      \"default\": \"https://api.acme.com\""), "the diff: {}", first.stdout);
    assert!(first.stderr.contains("created 2, updated 0, unchanged 0"), "{first:#?}");

    // The same file again writes nothing: the provider's filled-in inputs compare equal too.
    let again = server.run(&org, &["definitions", "apply", "-f", &file]).await;
    again.ok();
    assert!(
        again.stdout.contains("= acme-api (unchanged)") && again.stdout.contains("= crm (unchanged)"),
        "{again:#?}"
    );
    assert_eq!(definition_version(&server, &org, "acme-api").await, 1, "no PUT for an unchanged definition");
    assert_eq!(definition_version(&server, &org, "crm").await, 1);

    let changed = server.write("defs2.yaml", &ACME.replace("https://api.acme.com", "https://eu.acme.com"));
    let dry = server.run(&org, &["definitions", "apply", "-f", &changed, "--dry-run"]).await;
    dry.ok();
    assert!(dry.stdout.contains("~ acme-api (changes"), "{dry:#?}");
    assert!(
        dry.stdout.contains("-      \"default\": \"https://api.acme.com\"")
            && dry.stdout.contains("+      \"default\": \"https://eu.acme.com\""),
        "{}",
        dry.stdout
    );
    assert!(dry.stderr.contains("would update 1"), "{dry:#?}");
    assert_eq!(definition_version(&server, &org, "acme-api").await, 1, "a dry run writes nothing");

    server.run(&org, &["definitions", "apply", "-f", &changed]).await.ok();
    assert_eq!(definition_version(&server, &org, "acme-api").await, 2);
    assert_eq!(definition_version(&server, &org, "crm").await, 1, "only what changed is written");
    let stored = server.client(&org).get_definition("acme-api").await.unwrap().unwrap();
    assert_eq!(stored.inputs["endpoint"]["default"], "https://eu.acme.com");
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_apply_reads_json_and_refuses_an_invalid_file_before_writing_anything() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let good = json!({"key": "one", "auth": "api_key", "inputs": {"k": {"label": "K", "type": "string"}}});
    let bad = json!([
        {"key": "two", "auth": "api_key"},
        {"key": "three", "auth": "carrier_pigeon"}
    ]);
    let good_file = server.write("one.json", &good.to_string());
    let bad_file = server.write("bad.json", &bad.to_string());
    let run = server.run(&org, &["definitions", "apply", "-f", &good_file, "-f", &bad_file]).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("nothing was applied"), "{run:#?}");
    assert!(run.stderr.contains("bad.json[1] (three): auth:"), "names the file, entry and field: {run:#?}");
    assert!(server.client(&org).list_definitions().await.unwrap().is_empty(), "not even the valid file");

    server.run(&org, &["definitions", "apply", "-f", &good_file]).await.ok();
    assert_eq!(definition_version(&server, &org, "one").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn import_creates_each_record_and_reports_failures_by_line_with_their_problems() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.token("acme", &["runtime"]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();

    let lines = [
        json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_canary_1"}}).to_string(),
        json!({"definition": "acme-api", "customer": "c-2", "values": {"apiKey": "sk_canary_2"}}).to_string(),
        String::new(),
        json!({"definition": "acme-api", "customer": "c-3"}).to_string(),
        "{not json".to_owned(),
        json!({"definition": "crm", "customer": "c-4", "tokens": {"access_token": "at_canary", "refresh_token": "rt_canary",
            "expires_in": 3600, "scopes": ["read:user"], "token_type": "Bearer"}})
        .to_string(),
    ];
    let file = server.write("import.jsonl", &lines.join("\n"));
    let run = server.run(&org, &["import", &file, "--concurrency", "3"]).await;
    assert_eq!(run.code, Some(1), "a failed record fails the command: {run:#?}");
    assert!(run.stderr.contains("imported 3 of 5"), "{run:#?}");
    assert!(
        run.stderr.contains("line 4: InvalidRequest") && run.stderr.contains("values.apiKey: is required"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("line 5: not JSON"), "{run:#?}");
    assert!(!run.stderr.contains("canary") && !run.stdout.contains("canary"), "no secret is printed: {run:#?}");
    let imported: Vec<Value> = run.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let at: std::collections::BTreeSet<&str> = imported.iter().map(|v| v["at"].as_str().unwrap()).collect();
    assert_eq!(at, ["line 1", "line 2", "line 6"].into());

    // The imported tokens are what a lookup hands out.
    let oauth = imported.iter().find(|v| v["at"] == "line 6").unwrap()["connection_id"].as_str().unwrap();
    let creds = server.client(&runtime).lookup(oauth, None).await.expect("lookup of the imported connection");
    assert_eq!(creds.token.as_ref().unwrap().access_token.expose_secret(), "at_canary");
    assert_eq!(creds.token.as_ref().unwrap().scopes, ["read:user"]);

    // A JSON array from stdin, numbered by record.
    let array = json!([{"definition": "acme-api", "customer": "c-5", "values": {"apiKey": "k"}}, {"definition": "nope", "customer": "c"}]);
    let run = server.run_with_stdin(&org, &["import", "-"], Some(&array.to_string())).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stderr.contains("imported 1 of 2") && run.stderr.contains("record 2: "), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_list_filters_and_get_shows_no_secret() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let client = server.client(&org);
    let mut ids = Vec::new();
    for customer in ["c-1", "c-1", "c-2"] {
        let body: NewConnection = serde_json::from_value(
            json!({"definition": "acme-api", "customer": customer, "values": {"apiKey": "sk_canary"}}),
        )
        .unwrap();
        ids.push(client.create_connection(&body).await.expect("create").id);
    }

    let table = server.run(&org, &["connections", "list"]).await;
    table.ok();
    assert!(table.stdout.starts_with("ID "), "{table:#?}");
    assert!(ids.iter().all(|id| table.stdout.contains(id.as_str())), "{table:#?}");
    assert!(table.stderr.contains("3 connections"), "{table:#?}");

    let only =
        server.run(&org, &["connections", "list", "--customer", "c-1", "--definition", "acme-api", "--json"]).await;
    let listed = only.ok().json();
    let listed: Vec<&str> = listed.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{only:#?}");
    assert!(!listed.contains(&ids[2].as_str()));

    let got = server.run(&org, &["connections", "get", &ids[0]]).await;
    let view = got.ok().json();
    assert_eq!(view["id"], ids[0].as_str());
    assert_eq!(view["values"]["apiKey"], json!({"set": true}));
    assert!(!got.stdout.contains("canary"));

    let missing = server.run(&org, &["connections", "get", "con_00000000000000000000000000"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("ConnectionNotFound"), "{missing:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_prints_the_credentials_for_a_runtime_token_and_refusals_exit_non_zero() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.token("acme", &["runtime"]).await;
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let body: NewConnection =
        serde_json::from_value(json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "sk_live_1"}}))
            .unwrap();
    let id = server.client(&org).create_connection(&body).await.unwrap().id;

    let run = server.run(&runtime, &["lookup", &id]).await;
    let creds = run.ok().json();
    assert_eq!(creds["fields"]["apiKey"], "sk_live_1", "printed in clear, as asked");
    assert_eq!(creds["fields"]["endpoint"], "https://api.acme.com");
    assert_eq!(creds["status"], "active");
    assert_eq!(creds["token"], Value::Null);

    let refused = server.run(&org, &["lookup", &id]).await;
    assert_eq!(refused.code, Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("Forbidden") && refused.stdout.is_empty(), "{refused:#?}");
    let no_token = server.run("", &["lookup", &id]).await;
    assert_eq!(no_token.code, Some(1));
    assert!(no_token.stderr.contains("LATCHKEY_TOKEN"), "{no_token:#?}");
    let help = Run::of(std::process::Command::new(BIN).args(["lookup", "--help"]).output().unwrap());
    assert!(help.stdout.contains("PRINTS SECRETS"), "{help:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_gives_typed_errors_for_each_unusable_connection_and_reports_errors() {
    let server = Server::start().await;
    let org = server.token("acme", &[]).await;
    let runtime = server.client(&server.token("acme", &["runtime"]).await);
    server.run(&org, &["definitions", "apply", "-f", &server.write("defs.yaml", ACME)]).await.ok();
    let org_client = server.client(&org);
    let new = |definition: &str| -> NewConnection {
        let values = if definition == "crm" { json!({}) } else { json!({"apiKey": "k"}) };
        serde_json::from_value(json!({"definition": definition, "customer": "c-1", "values": values})).unwrap()
    };

    // An OAuth connection not authorized yet.
    let pending = org_client.create_connection(&new("crm")).await.expect("create an OAuth connection");
    assert_eq!(pending.status, Status::Pending);
    let e = runtime.lookup(&pending.id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::ConnectionPending), "{e:?}");

    let id = org_client.create_connection(&new("acme-api")).await.unwrap().id;
    let creds = runtime.lookup(&id, Some(60)).await.unwrap();
    assert_eq!(creds.fields.secret("apiKey").unwrap().expose_secret(), "k");
    assert!(!format!("{creds:?}").contains("\"k\""), "Debug hides values");

    let reported = runtime.report_error(&id, "401 from Acme").await.unwrap();
    assert_eq!(reported.status, Status::Error);
    assert_eq!(reported.error.code, "reported");
    let e = runtime.lookup(&id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::ConnectionError), "{e:?}");
    assert_eq!(e.kind().unwrap().error_type(), "ConnectionError", "the Lambda errorType of the same refusal");

    let e = runtime.lookup("con_00000000000000000000000000", None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::NotFound));
    let e = org_client.lookup(&id, None).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::Forbidden));
    let e = server.client("not-a-jwt").get_connection(&id).await.unwrap_err();
    assert_eq!(e.kind(), Some(&ErrorKind::Unauthorized));
    let e = org_client.create_connection(&new("nope")).await.unwrap_err();
    assert!(matches!(e.kind(), Some(ErrorKind::NotFound | ErrorKind::InvalidRequest)), "{e:?}");

    // Paging: every connection, whatever the page size.
    for _ in 0..4 {
        org_client.create_connection(&new("acme-api")).await.unwrap();
    }
    let filter = latchkey_client::ConnectionFilter { limit: Some(2), ..Default::default() };
    let mut pages = 0;
    let all = org_client.all_connections(&filter, |_| pages += 1).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(pages >= 3, "followed the cursor over {pages} pages");

    // No answer at all.
    let closed = Client::new("http://127.0.0.1:9", "t".to_owned().into()).unwrap();
    let e = closed.get_connection(&id).await.unwrap_err();
    assert!(e.is_retryable() && e.kind().is_none(), "{e:?}");
}

fn mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_data_directory_serve_made_and_fails_a_readable_key() {
    let server = Server::start().await;
    let data = server.dir.path().join("data");
    let doctor = || {
        let data = data.clone();
        async move {
            Run::of(
                Command::new(BIN)
                    .env_clear()
                    .env("LATCHKEY_DATA_DIR", &data)
                    .env("RUST_LOG", "warn")
                    .arg("doctor")
                    .output()
                    .await
                    .expect("run latchkey doctor"),
            )
        }
    };
    let run = doctor().await;
    run.ok();
    for line in ["ok    data directory", "ok    master key", "ok    database file latchkey.db "] {
        assert!(run.stdout.contains(line), "{line:?} in {run:#?}");
    }
    // serve got its secret from LATCHKEY_JWT_SECRET: no file, a warning that says what to do.
    assert!(run.stdout.contains("warn  jwt secret"), "{run:#?}");

    mode(&data.join("master.key"), 0o644);
    let run = doctor().await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  master key") && run.stdout.contains("chmod 600"), "{run:#?}");
    mode(&data.join("master.key"), 0o600);
    mode(&data, 0o755);
    let run = doctor().await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  data directory"), "{run:#?}");
}

/// A moto server (the AWS emulator of `.venv/`, as `tests/run.sh` installs it) on a free port.
/// Killed when dropped.
struct Moto {
    endpoint: String,
    _child: Child,
}

impl Moto {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} ({e}): run tests/run.sh once to install it", bin.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "moto listens within 20 s");
        Self { endpoint, _child: child }
    }

    fn env(&self) -> [(&'static str, &str); 5] {
        [
            ("AWS_ENDPOINT_URL", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("LATCHKEY_BACKEND", "aws"),
        ]
    }

    async fn latchkey(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = Command::new(BIN)
            .env_clear()
            .envs(self.env())
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .args(args)
            .output()
            .await
            .expect("run latchkey");
        Run::of(out)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_table_key_bus_and_clock_of_the_aws_backend() {
    let moto = Moto::start().await;
    moto.latchkey(&["bootstrap"], &[("LATCHKEY_TABLE", "doctor-table")]).await.ok();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto.endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kms::config::Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
    let kms = aws_sdk_kms::Client::new(&sdk);
    let key = kms.create_key().send().await.expect("CreateKey").key_metadata.expect("metadata").key_id;

    let good = [("LATCHKEY_TABLE", "doctor-table"), ("LATCHKEY_KMS_KEY_ID", key.as_str())];
    let run = moto.latchkey(&["doctor"], &good).await;
    run.ok();
    for line in [
        "ok    dynamodb table   doctor-table: ACTIVE",
        "ok    kms key",
        "GenerateDataKey and Decrypt work",
        "ok    eventbridge bus  arn:aws:events:",
        "ok    clock",
    ] {
        assert!(run.stdout.contains(line), "{line:?} in {run:#?}");
    }

    let bad = [("LATCHKEY_TABLE", "absent"), ("LATCHKEY_KMS_KEY_ID", "alias/absent"), ("LATCHKEY_EVENT_BUS", "absent")];
    let run = moto.latchkey(&["doctor"], &bad).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(run.stdout.contains("fail  dynamodb table   DescribeTable absent: ResourceNotFoundException"), "{run:#?}");
    assert!(run.stdout.contains("fail  kms key") && run.stdout.contains("fail  eventbridge bus"), "{run:#?}");
    assert!(run.stderr.contains("3 check(s) failed"), "{run:#?}");

    kms.disable_key().key_id(&key).send().await.expect("DisableKey");
    let run = moto.latchkey(&["doctor"], &good).await;
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert!(
        run.stdout.contains("is Disabled: enable it"),
        "moto lets a disabled key work: doctor asks DescribeKey: {run:#?}"
    );
}

//! The AWS API emulator harness: one moto server per test binary, started on first use from
//! `.venv/` (which `tests/run.sh` creates from `tests/requirements.txt`), plus helpers that build
//! SDK clients against it and provision the few resources the AWS adapters need.
//!
//! Tests share the one server and never
//! reset it: every resource a test creates is named with [`unique`], so tests cannot collide.
//! moto's stdin is a pipe held open by this process, so moto exits when the test binary does,
//! however it ends.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::{Child, ChildStdin, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

/// The region every test resource lives in.
pub const REGION: &str = "us-east-1";

/// How long moto may take to start (it answers in about a second; CI may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`receive_all`] polls before it gives up and returns what it has.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

const READY_PREFIX: &str = "moto listening on ";

/// A moto server process: this test binary's shared one ([`endpoint`]), or one of a test's own
/// ([`Moto::start`]), killed when dropped.
pub struct Moto {
    endpoint: String,
    // Never written to: holding the write end open keeps moto alive until this process exits.
    _stdin: ChildStdin,
    child: Child,
}

impl Moto {
    /// A moto server of the caller's own, separate from the shared one (its own state), for a
    /// test that makes one AWS service misbehave while the others go on (point that service's
    /// `AWS_ENDPOINT_URL_<SERVICE>` at it). Blocks for about a second.
    pub fn start() -> Self {
        start()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The process id, to [`freeze`] it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Also ends a stopped process (SIGKILL needs no SIGCONT).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The URL of this test binary's moto server (`http://127.0.0.1:PORT`), starting it on first use.
///
/// Blocks the calling thread for about a second the first time.
pub fn endpoint() -> &'static str {
    &MOTO.get_or_init(start).endpoint
}

/// A process stopped with SIGSTOP (its sockets still accept connections, nothing answers: a
/// hung dependency), continued with SIGCONT when dropped, so that a failing test does not
/// leave it stopped.
pub struct Frozen(u32);

/// Stops process `pid` until the returned guard is dropped (or [`Frozen::thaw`]ed).
pub fn freeze(pid: u32) -> Frozen {
    assert!(signal("-STOP", pid), "kill -STOP {pid} failed");
    Frozen(pid)
}

impl Frozen {
    pub fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed test unwinds.
        if !signal("-CONT", self.0) {
            eprintln!("kill -CONT {} failed: the process stays stopped", self.0);
        }
    }
}

fn signal(which: &str, pid: u32) -> bool {
    Command::new("kill").args([which, &pid.to_string()]).status().is_ok_and(|s| s.success())
}

fn start() -> Moto {
    let repo = &crate::repo_root();
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: moto is not installed. Run `bash tests/run.sh`, or create the venv with \
         `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt`",
        python.display()
    );
    let mut command = Command::new(&python);
    command.arg(repo.join("tests/moto_server.py")).current_dir(repo);
    let (child, stdin, endpoint) = crate::spawn_ready(
        command,
        READY_PREFIX,
        START_TIMEOUT,
        "moto",
        "Is .venv up to date? Run `bash tests/run.sh`",
    );
    Moto { endpoint, _stdin: stdin, child }
}

/// SDK configuration for the moto server: its endpoint, [`REGION`], static test credentials.
///
/// Build clients from it in the test (runtime) that uses them: the SDK's HTTP connection pool
/// belongs to the tokio runtime it first ran on, and every `#[tokio::test]` has its own.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_for(endpoint()).await
}

/// [`sdk_config`] for the moto server at `endpoint` (one from [`Moto::start`]).
pub async fn sdk_config_for(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// Environment for a child process (`latchkey serve`, `latchkey bootstrap`) that should talk to
/// moto at `endpoint` and never reach real AWS or the instance metadata service.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", REGION.to_owned()),
        ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// A resource name no other test in this process uses: `prefix-` and 16 random hex digits
/// (valid for DynamoDB tables, SQS queues, EventBridge buses and rules).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS once per thread; the counter separates calls.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{prefix}-{:016x}", hasher.finish())
}

/// Creates a symmetric KMS key (the default kind) and returns its key id.
pub async fn create_kms_key(config: &SdkConfig) -> String {
    let out = aws_sdk_kms::Client::new(config)
        .create_key()
        .description(unique("latchkey-test"))
        .send()
        .await
        .expect("kms CreateKey");
    out.key_metadata().expect("CreateKey returns KeyMetadata").key_id().to_owned()
}

/// Routes every event with source `latchkey` on `bus` to a new SQS queue, and returns
/// `(queue_url, rule_name)`; read the events with [`receive_all`].
///
/// Creates `bus` first unless it is `default` or already exists. moto delivers to SQS targets
/// synchronously within PutEvents, and does not require a queue policy as AWS does. On a bus
/// other tests publish to (`default`), prefer [`sqs_queue_for_org_events`].
pub async fn sqs_queue_for_latchkey_events(config: &SdkConfig, bus: &str) -> (String, String) {
    sqs_queue_for_pattern(config, bus, &serde_json::json!({"source": ["latchkey"]})).await
}

/// Like [`sqs_queue_for_latchkey_events`], but the rule only matches events whose
/// `detail.org` is `org`: a test that uses an organization of its own gets only its own events
/// on a bus shared with concurrent tests.
pub async fn sqs_queue_for_org_events(config: &SdkConfig, bus: &str, org: &str) -> (String, String) {
    let pattern = serde_json::json!({"source": ["latchkey"], "detail": {"org": [org]}});
    sqs_queue_for_pattern(config, bus, &pattern).await
}

/// Routes the events on `bus` that match the EventBridge `pattern` to a new SQS queue; returns
/// `(queue_url, rule_name)`.
async fn sqs_queue_for_pattern(config: &SdkConfig, bus: &str, pattern: &Value) -> (String, String) {
    let sqs = aws_sdk_sqs::Client::new(config);
    let events = aws_sdk_eventbridge::Client::new(config);

    let queue_url = sqs
        .create_queue()
        .queue_name(unique("latchkey-events"))
        .send()
        .await
        .expect("sqs CreateQueue")
        .queue_url()
        .expect("CreateQueue returns QueueUrl")
        .to_owned();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("sqs GetQueueAttributes");
    let queue_arn = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .expect("GetQueueAttributes returns QueueArn")
        .clone();

    if bus != "default"
        && let Err(e) = events.create_event_bus().name(bus).send().await
    {
        let exists = e.as_service_error().is_some_and(|e| e.is_resource_already_exists_exception());
        assert!(exists, "eventbridge CreateEventBus {bus}: {e:?}");
    }
    let rule_name = unique("latchkey-events");
    events
        .put_rule()
        .name(&rule_name)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .expect("eventbridge PutRule");
    let target = Target::builder().id("sqs").arn(queue_arn).build().expect("target has id and arn");
    let out = events
        .put_targets()
        .rule(&rule_name)
        .event_bus_name(bus)
        .targets(target)
        .send()
        .await
        .expect("eventbridge PutTargets");
    assert_eq!(out.failed_entry_count(), 0, "PutTargets failed: {:?}", out.failed_entries());
    (queue_url, rule_name)
}

/// Receives (and deletes) messages from `queue_url` until at least `expect_at_least` have arrived
/// and a receive comes back empty (the queue is drained), or about ten seconds have passed, and
/// returns their bodies parsed as JSON: for an EventBridge target, envelopes with `source`,
/// `detail-type` and `detail`. `expect_at_least = 0` collects whatever is already there.
pub async fn receive_all(config: &SdkConfig, queue_url: &str, expect_at_least: usize) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    let mut bodies = Vec::new();
    loop {
        // Long-poll while short of the expectation; once met, only drain what is already there.
        let wait = if bodies.len() < expect_at_least { 1 } else { 0 };
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .send()
            .await
            .expect("sqs ReceiveMessage");
        let empty = out.messages().is_empty();
        for message in out.messages() {
            let body = message.body().expect("SQS message has a body");
            bodies
                .push(serde_json::from_str(body).unwrap_or_else(|e| panic!("message body is not JSON ({e}): {body}")));
            if let Some(handle) = message.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .expect("sqs DeleteMessage");
            }
        }
        if (empty && bodies.len() >= expect_at_least) || Instant::now() >= deadline {
            return bodies;
        }
    }
}

/// A table as `latchkey bootstrap` made it before 2026-12-01: the listing indexes `by-customer`
/// and `by-definition` projecting ALL (infra/README.md, Index migration), and `refresh-due`.
pub async fn create_legacy_table(client: &aws_sdk_dynamodb::Client) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
        ScalarAttributeType,
    };
    let key =
        |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().unwrap();
    let index = |name: &str, keys: &str, projection: ProjectionType| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(&format!("{keys}pk"), KeyType::Hash))
            .key_schema(key(&format!("{keys}sk"), KeyType::Range))
            .projection(Projection::builder().projection_type(projection).build())
            .build()
            .unwrap()
    };
    let table = unique("latchkey-legacy");
    let mut req = client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(index("by-customer", "gsi1", ProjectionType::All))
        .global_secondary_indexes(index("by-definition", "gsi2", ProjectionType::All))
        .global_secondary_indexes(index("refresh-due", "gsi3", ProjectionType::KeysOnly));
    for name in ["pk", "sk", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", "gsi3pk", "gsi3sk"] {
        req = req.attribute_definitions(
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().unwrap(),
        );
    }
    req.send().await.expect("CreateTable");
    table
}

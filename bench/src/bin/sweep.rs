//! The sweep bench (issue 15): `--connections` due OAuth connections (10,000 by default) are
//! refreshed by ONE call of [`Service::refresh_sweep`] against a token endpoint on loopback that
//! answers at once (an axum server in this process), on the embedded backend (SQLite, local key)
//! and on the aws backend (DynamoDB, KMS and EventBridge in moto).
//!
//! Per backend it prints: seeding time, sweep time, refreshes/s, the sweep's summary, and with
//! `--profile` what one refresh costs (calls and time of every store, key-provider, event and
//! provider operation, measured by wrapping each port). On aws it first measures moto's own
//! request rate (GetItem, PutItem, KMS GenerateDataKey at the sweep's concurrency), the ceiling
//! the aws figure is bounded by. With `--svg` it draws refreshes over time, one line per backend.
//!
//! ```text
//! cargo run --release -p latchkey-bench --bin sweep -- --backends embedded,aws --svg docs/perf-sweep.svg
//! ```
//!
//! The service is wired as `config::Components` wires it (`latchkey serve` for embedded, the
//! functions for aws), with each port wrapped by a counter, and logs formatted as JSON lines to
//! a sink (the formatting is paid, nothing is printed). Seeding goes through
//! [`Service::create_connection`] with imported, already expired tokens (due at once).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use latchkey::adapters::aws::{DynamoStore, EventBridgeSink, KmsKeyProvider};
use latchkey::adapters::{LocalKeyProvider, LogEventSink, SqliteStore};
use latchkey::crypto::{BranchKeyring, EncryptionContext, Envelope, KeyProvider};
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::ports::{BranchKeyStore, DueEntry, EventSink, Store, SystemClock};
use latchkey::provider::{HttpProviderClient, ProviderClient};
use latchkey::service::{Service, ServiceOptions, SweepSummary};
use latchkey_bench::counted::{Counted, Stats, StoreTimer, print_profile};
use latchkey_bench::store_tap::Tapped;
use serde_json::json;

/// The organization every seeded connection belongs to.
const ORG: &str = "bench";
/// The definition they use.
const DEFINITION: &str = "loopback";

#[derive(Parser)]
#[command(about = "One refresh sweep over N due OAuth connections, embedded and aws (moto)")]
struct Args {
    /// Backends to measure, in order: `embedded`, `aws` (moto from `.venv/`, which `tests/run.sh`
    /// creates).
    #[arg(long, value_delimiter = ',', default_value = "embedded,aws")]
    backends: Vec<String>,
    /// Due connections seeded before the sweep.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections the sweep refreshes at once (`RefreshPolicy::concurrency`); default: the
    /// policy's own.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Connections created at once while seeding.
    #[arg(long, default_value_t = 32)]
    seed_concurrency: usize,
    /// Print what one refresh costs, port by port.
    #[arg(long)]
    profile: bool,
    /// Requests per operation of the moto rate probe (aws only; 0 skips it).
    #[arg(long, default_value_t = 2_000)]
    moto_probe: usize,
    /// How long the token endpoint waits before it answers, in milliseconds (0: at once). A
    /// real provider takes 50 to 300 ms.
    #[arg(long, default_value_t = 0)]
    provider_latency_ms: u64,
    /// Every Nth token request (the Nth, 2Nth...) is slow (0: none): a provider's tail, which
    /// a sweep that waited for a whole page before reading the next paid once per page.
    #[arg(long, default_value_t = 0)]
    provider_slow_every: u64,
    /// How long a slow request (`--provider-slow-every`) waits before it answers, in
    /// milliseconds.
    #[arg(long, default_value_t = 2_000)]
    provider_slow_ms: u64,
    /// Draw refreshes over time (one line per backend) into this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    // As on Lambda: every log line formatted as JSON (to a sink here, so the cost is paid and
    // nothing is printed).
    let filter = tracing_subscriber::EnvFilter::new("info");
    tracing::subscriber::set_global_default(latchkey::telemetry::json_subscriber(filter, std::io::sink))
        .expect("the first subscriber");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let slow = (args.provider_slow_every > 0)
        .then(|| (args.provider_slow_every, Duration::from_millis(args.provider_slow_ms)));
    let provider = TokenEndpoint::start(Duration::from_millis(args.provider_latency_ms), slow).await;
    println!(
        "machine: {} cores; load average before: {}; token endpoint latency {} ms{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        args.provider_latency_ms,
        slow.map(|(every, tail)| format!(", every {every}th request {} ms", tail.as_millis())).unwrap_or_default()
    );
    let mut runs = Vec::new();
    for backend in &args.backends {
        let (wired, _keep) = match backend.as_str() {
            "embedded" => {
                let dir = tempfile::tempdir().expect("temp dir");
                (embedded(dir.path(), &args), Keep::Dir(dir))
            }
            "aws" => {
                let moto = Moto::start();
                let (wired, config) = aws(moto.endpoint(), &args).await;
                if args.moto_probe > 0 {
                    moto_rates(&config, args.moto_probe, wired.concurrency).await;
                }
                (wired, Keep::Moto(moto))
            }
            other => panic!("unknown backend {other}: embedded or aws"),
        };
        runs.push(measure(backend, &wired, &provider, &args).await);
    }
    println!();
    println!("| backend | connections | concurrency | seed s | sweep s | refreshes/s | refreshed | failed | skipped |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {} | {} | {} |",
            r.backend,
            args.connections,
            r.concurrency,
            r.seed.as_secs_f64(),
            r.sweep.as_secs_f64(),
            r.summary.refreshed as f64 / r.sweep.as_secs_f64(),
            r.summary.refreshed,
            r.summary.failed,
            r.summary.skipped
        );
    }
    println!("load average after: {}", load_average());
    if let Some(path) = &args.svg {
        draw(path, &runs, args.connections);
        println!("drew {}", path.display());
    }
}

/// What keeps a backend alive while it is measured.
enum Keep {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Moto(#[allow(dead_code)] Moto),
}

/// A wired service and the counters around its ports.
struct Wired {
    service: Arc<Service>,
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    concurrency: usize,
    /// aws: seed by copying one connection's item (see [`seed_copies`]).
    copies: Option<AwsSeed>,
}

/// What seeding the aws backend by copies needs: the table, and an envelope over the same KMS
/// key to seal each copy's tokens under its own id.
struct AwsSeed {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    envelope: Envelope,
}

fn options(args: &Args) -> ServiceOptions {
    let mut options = ServiceOptions {
        public_url: Some("http://127.0.0.1:9".to_owned()),
        allow_loopback_providers: true,
        ..ServiceOptions::default()
    };
    if let Some(n) = args.concurrency {
        options.refresh.concurrency = n;
    }
    options
}

/// The service as `Components` wires it (the master key behind per-organization branch keys
/// kept in the store), each port wrapped by a counter: the master key's calls (KMS on aws) are
/// the `keys` rows.
fn wire(
    store: Arc<dyn Store>,
    branch_keys: Arc<dyn BranchKeyStore>,
    master: Arc<dyn KeyProvider>,
    events: Arc<dyn EventSink>,
    options: ServiceOptions,
) -> Wired {
    let stats = Arc::new(Stats::default());
    let concurrency = options.refresh.concurrency;
    let store: Arc<dyn Store> = Arc::new(Tapped::around(store, StoreTimer(stats.clone())));
    let master: Arc<dyn KeyProvider> = Arc::new(Counted::new(master, stats.clone()));
    let keys: Arc<dyn KeyProvider> = Arc::new(BranchKeyring::new(master, branch_keys));
    let events: Arc<dyn EventSink> = Arc::new(Counted::new(events, stats.clone()));
    let provider: Arc<dyn ProviderClient> =
        Arc::new(Counted::new(Arc::new(HttpProviderClient::new()) as Arc<dyn ProviderClient>, stats.clone()));
    let service = Service::new(store.clone(), Arc::new(Envelope::new(keys)), events, Arc::new(SystemClock), options)
        .with_provider_client(provider);
    Wired { service: Arc::new(service), store, stats, concurrency, copies: None }
}

/// As `Components::embedded` (what `latchkey serve` runs): SQLite, the local master key, the
/// log event sink and the webhook outbox.
fn embedded(dir: &Path, args: &Args) -> Wired {
    let mut options = options(args);
    options.webhook_outbox = true;
    let store = Arc::new(SqliteStore::open(&dir.join("latchkey.db")).expect("open SQLite"));
    let keys = Arc::new(LocalKeyProvider::open_or_create(dir).expect("master key"));
    wire(store.clone(), store, keys, Arc::new(LogEventSink::default()), options)
}

/// As `Components::aws` (the functions): DynamoDB, KMS and EventBridge, here in moto.
async fn aws(endpoint: &str, args: &Args) -> (Wired, aws_config::SdkConfig) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("testing", "testing", None, None, "moto"))
        .timeout_config(latchkey::adapters::aws::timeout_config())
        .load()
        .await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = "latchkey-sweep-bench";
    latchkey::adapters::aws::schema::bootstrap(&ddb, table).await.expect("bootstrap the table");
    let key = aws_sdk_kms::Client::new(&config).create_key().send().await.expect("kms CreateKey");
    let key_id = key.key_metadata().expect("key metadata").key_id().to_owned();
    let kms = Arc::new(KmsKeyProvider::new(aws_sdk_kms::Client::new(&config), key_id));
    let dynamo = Arc::new(DynamoStore::new(ddb.clone(), table));
    let mut wired = wire(
        dynamo.clone(),
        dynamo.clone(),
        kms.clone(),
        Arc::new(EventBridgeSink::new(aws_sdk_eventbridge::Client::new(&config), "default")),
        options(args),
    );
    // Copies are sealed as the service seals: under the organization's branch key.
    let envelope = Envelope::new(Arc::new(BranchKeyring::new(kms, dynamo)));
    wired.copies = Some(AwsSeed { ddb, table: table.to_owned(), envelope });
    (wired, config)
}

/// One backend's figures.
struct Run {
    backend: String,
    concurrency: usize,
    seed: Duration,
    sweep: Duration,
    summary: SweepSummary,
    /// (seconds since the sweep started, token requests answered by then).
    progress: Vec<(f64, u64)>,
}

async fn measure(backend: &str, wired: &Wired, provider: &TokenEndpoint, args: &Args) -> Run {
    let principal = Principal::organization(OrgId::parse(ORG).expect("org id"));
    let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": format!("{}/authorize", provider.base)},
        "tokenUrl": {"type": "url", "default": format!("{}/token", provider.base)},
        "clientId": {"type": "string", "default": "bench-client"},
        "clientSecret": {"type": "password", "default": "bench-secret"},
        "scopes": {"type": "string", "default": "read"}}});
    wired.service.put_definition(&principal, DEFINITION, &definition).await.expect("put the definition");

    println!("\n== {backend}: seeding {} due connections", args.connections);
    let started = Instant::now();
    let created = match &wired.copies {
        None => seed_service(&wired.service, &principal, 0..args.connections, args.seed_concurrency).await,
        Some(aws) if args.connections > 0 => {
            let one = seed_service(&wired.service, &principal, 0..1, 1).await;
            one + seed_copies(aws, wired.store.as_ref(), args.connections - 1, args.seed_concurrency).await
        }
        Some(_) => 0,
    };
    let seed = started.elapsed();
    println!("seeded {created} in {:.1} s ({:.0}/s)", seed.as_secs_f64(), created as f64 / seed.as_secs_f64());
    let due = due_count(wired.store.as_ref()).await;
    println!("due now: {due}");

    let before = wired.stats.snapshot();
    let hits_before = provider.hits.load(Ordering::Relaxed);
    let progress = Arc::new(Mutex::new(vec![(0.0, 0)]));
    let started = Instant::now();
    let sampler = {
        let progress = progress.clone();
        let hits = provider.hits.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let n = hits.load(Ordering::Relaxed) - hits_before;
                progress.lock().expect("progress").push((started.elapsed().as_secs_f64(), n));
            }
        })
    };
    let summary = wired.service.refresh_sweep(Instant::now() + Duration::from_secs(900)).await.expect("the sweep runs");
    let sweep = started.elapsed();
    sampler.abort();
    let answered = provider.hits.load(Ordering::Relaxed) - hits_before;
    let mut progress = std::mem::take(&mut *progress.lock().expect("progress"));
    progress.push((sweep.as_secs_f64(), answered));
    println!(
        "swept in {:.2} s: {:.0} refreshes/s, {summary:?}, token requests answered: {answered}",
        sweep.as_secs_f64(),
        summary.refreshed as f64 / sweep.as_secs_f64()
    );
    let left = due_count(wired.store.as_ref()).await;
    println!("due after the sweep: {left}");
    if args.profile {
        print_profile(&wired.stats.snapshot(), &before, summary.refreshed.max(1), sweep);
    }
    Run { backend: backend.to_owned(), concurrency: wired.concurrency, seed, sweep, summary, progress }
}

/// Creates connections `range` through the service, as an import: expired tokens with a refresh
/// token, so each is due at once. Returns how many were created.
async fn seed_service(
    service: &Service,
    principal: &Principal,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> usize {
    futures_util::stream::iter(range)
        .map(|i| async move {
            let body = json!({"definition": DEFINITION, "customer": format!("c-{i}"), "tokens": {
                "access_token": format!("at-import-{i}"), "refresh_token": format!("rt-import-{i}"),
                "expires_at": "2020-01-01T00:00:00Z"}});
            service.create_connection(principal, &body).await.map(|_| 1).unwrap_or_else(|e| {
                eprintln!("seeding connection {i} failed: {e}");
                0
            })
        })
        .buffer_unordered(concurrency.max(1))
        .fold(0, |n, one| async move { n + one })
        .await
}

/// aws: `count` copies of the one connection seeded through the service, each with a new id in
/// the template's due shard and its tokens sealed anew under that id (under the organization's
/// branch key, as the service seals), written 25 at a time with BatchWriteItem (the service's insert is a transaction, which
/// moto takes tens of milliseconds for). The definition's connection counter is not raised for
/// the copies: nothing in a sweep reads it.
async fn seed_copies(seed: &AwsSeed, store: &dyn Store, count: usize, concurrency: usize) -> usize {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    use latchkey::adapters::aws::dynamodb::due_shard;

    let org = OrgId::parse(ORG).expect("org id");
    let mut found = None;
    for shard in 0..store.due_shards() {
        let page = store.due_connections(shard, time::OffsetDateTime::now_utc(), None, 1).await;
        if let Some(entry) = page.ok().and_then(|p| p.into_iter().next()) {
            found = Some(entry.id);
            break;
        }
    }
    let template_id = found.expect("the template connection is due");
    let template = store.get_connection(&org, &template_id).await.expect("read").expect("the template exists");
    let item = seed
        .ddb
        .get_item()
        .table_name(&seed.table)
        .key("pk", AttributeValue::S(format!("ORG#{org}")))
        .key("sk", AttributeValue::S(format!("CON#{template_id}")))
        .consistent_read(true)
        .send()
        .await
        .expect("read the template item")
        .item
        .expect("the template item exists");
    let shard = due_shard(&template_id);
    let ids: Vec<ConnectionId> =
        std::iter::repeat_with(ConnectionId::generate).filter(|id| due_shard(id) == shard).take(count).collect();
    let (template, item, template_id, org) = (&template, &item, &template_id, &org);
    let requests: Vec<WriteRequest> = futures_util::stream::iter(ids.into_iter().enumerate())
        .map(|(i, id)| async move {
            let mut copy = template.clone();
            copy.id = id.clone();
            let tokens = json!({"access_token": format!("at-copy-{i}"), "refresh_token": format!("rt-copy-{i}")});
            let sealed = seed
                .envelope
                .seal_json(&EncryptionContext::connection(org, &id), &tokens)
                .await
                .expect("seal a copy's tokens");
            copy.oauth.as_mut().expect("the template holds tokens").sealed = sealed;
            let mut raw = item.clone();
            for value in raw.values_mut() {
                if let AttributeValue::S(s) = value {
                    *s = s.replace(template_id.as_str(), id.as_str());
                }
            }
            raw.insert("doc".to_owned(), AttributeValue::S(serde_json::to_string(&copy).expect("a document")));
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(raw)).build().expect("an item"))
                .build()
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for chunk in requests.chunks(25) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let out = seed
                .ddb
                .batch_write_item()
                .request_items(&seed.table, pending)
                .send()
                .await
                .expect("dynamodb BatchWriteItem");
            pending = out.unprocessed_items.and_then(|mut m| m.remove(&seed.table)).unwrap_or_default();
        }
    }
    requests.len()
}

/// Entries of the due index at or before now, every shard.
async fn due_count(store: &dyn Store) -> usize {
    let now = time::OffsetDateTime::now_utc();
    let mut n = 0;
    for shard in 0..store.due_shards() {
        let mut after: Option<DueEntry> = None;
        loop {
            let page = store.due_connections(shard, now, after.as_ref(), 1_000).await.expect("read the due index");
            n += page.len();
            if page.len() < 1_000 {
                break;
            }
            after = page.last().cloned();
        }
    }
    n
}

/// moto's own request rate at `concurrency` requests in flight: the ceiling of any aws figure.
async fn moto_rates(config: &aws_config::SdkConfig, n: usize, concurrency: usize) {
    use aws_sdk_dynamodb::types::AttributeValue;

    let ddb = aws_sdk_dynamodb::Client::new(config);
    let kms = aws_sdk_kms::Client::new(config);
    let table = "latchkey-sweep-bench";
    let key = kms.create_key().send().await.expect("kms CreateKey");
    let key_id = key.key_metadata().expect("key metadata").key_id().to_owned();
    let item = |i: usize| {
        let mut item = std::collections::HashMap::new();
        item.insert("pk".to_owned(), AttributeValue::S(format!("probe#{}", i % 100)));
        item.insert("sk".to_owned(), AttributeValue::S("probe".to_owned()));
        item.insert("doc".to_owned(), AttributeValue::S("x".repeat(1_500)));
        item
    };
    println!("moto's own rate, {n} requests per operation, {concurrency} at once:");
    let rate = |took: Duration| n as f64 / took.as_secs_f64();
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| ddb.put_item().table_name(table).set_item(Some(item(i))).send())
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("PutItem");
        })
        .await;
    println!("  DynamoDB PutItem: {:.0}/s", rate(started.elapsed()));
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let mut key = item(i);
            key.remove("doc");
            ddb.get_item().table_name(table).set_key(Some(key)).consistent_read(true).send()
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("GetItem");
        })
        .await;
    println!("  DynamoDB GetItem: {:.0}/s", rate(started.elapsed()));
    let started = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|_| {
            kms.generate_data_key()
                .key_id(&key_id)
                .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                .encryption_context("org", ORG)
                .send()
        })
        .buffer_unordered(concurrency)
        .for_each(|r| async move {
            r.expect("GenerateDataKey");
        })
        .await;
    println!("  KMS GenerateDataKey: {:.0}/s", rate(started.elapsed()));
}

/// A token endpoint on loopback that answers every request after `latency` (at once for zero),
/// or every Nth after the `slow` tail's own time, with a new access token and a rotated refresh
/// token (an hour's lifetime), counting the requests it answered.
struct TokenEndpoint {
    base: String,
    hits: Arc<AtomicU64>,
}

impl TokenEndpoint {
    async fn start(latency: Duration, slow: Option<(u64, Duration)>) -> Self {
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let wait = match slow {
                    Some((every, tail)) if (n + 1).is_multiple_of(every) => tail,
                    _ => latency,
                };
                async move {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    axum::Json(json!({"access_token": format!("at-{n}"), "token_type": "Bearer",
                        "expires_in": 3600, "refresh_token": format!("rt-{n}")}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the token endpoint");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, hits }
    }
}

/// moto from `.venv/` (`tests/moto_server.py`), stopped when dropped.
struct Moto {
    endpoint: String,
    _stdin: ChildStdin,
    child: Child,
}

impl Moto {
    fn start() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_owned();
        let python = repo.join(".venv/bin/python");
        assert!(python.exists(), "{} is missing: run `bash tests/run.sh` once to create it", python.display());
        let mut child = Command::new(python)
            .arg(repo.join("tests/moto_server.py"))
            .current_dir(&repo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start moto");
        let stdin = child.stdin.take().expect("moto's stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("moto's stdout")).read_line(&mut line).expect("moto's first line");
        let endpoint = line.trim().strip_prefix("moto listening on ").expect("moto's ready line").to_owned();
        Self { endpoint, _stdin: stdin, child }
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Refreshes over time, one line per backend.
fn draw(path: &Path, runs: &[Run], connections: usize) {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).expect("fill");
    let longest = runs.iter().map(|r| r.sweep.as_secs_f64()).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("One sweep of {connections} due connections (loopback token endpoint)"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..longest * 1.05, 0u64..(connections as u64 * 21 / 20))
        .expect("chart");
    chart
        .configure_mesh()
        .x_desc("seconds since the sweep started")
        .y_desc("connections refreshed")
        .draw()
        .expect("mesh");
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let label = format!(
            "{}: {:.1} s, {:.0}/s",
            run.backend,
            run.sweep.as_secs_f64(),
            run.summary.refreshed as f64 / run.sweep.as_secs_f64()
        );
        chart
            .draw_series(LineSeries::new(run.progress.iter().copied(), color.stroke_width(2)))
            .expect("series")
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().expect("legend");
    root.present().expect("write the SVG");
}

//! The scenario: organizations and their connections seeded through the real service, then
//! simulated hours of the deployed schedule (EventBridge `rate(5 minutes)` invoking
//! `token-refresh`, reserved concurrency 1, 300 s timeout, no new work in its last 30 s), each
//! invocation in a Lambda container whose [`Service`] (and key caches) live as long as the
//! container.

use std::sync::Arc;
use std::time::Duration;

use latchkey::adapters::local_key::LocalKeyProvider;
use latchkey::crypto::{Envelope, KeyProvider};
use latchkey::domain::{OrgId, Principal};
use latchkey::ports::Store;
use latchkey::service::{Service, ServiceOptions};
use serde_json::json;
use time::OffsetDateTime;

use super::clock::SimClock;
use super::memory::MemoryStore;
use super::provider::{Rng, SimProvider};
use super::quota::{CountingEvents, Limits, Meter, MeterSnapshot, MeteredKeys, MeteredStore};

/// How due connections are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `token-refresh` sweep per schedule tick refreshes them itself.
    Inline,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
        }
    }
}

/// What is simulated.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub connections: usize,
    pub orgs: usize,
    /// Simulated time after seeding.
    pub duration: Duration,
    pub mode: Mode,
    /// Access tokens' lifetime from the provider (refreshed ones); seeded ones expire spread
    /// over the first interval so the load is even from the start.
    pub token_lifetime: Duration,
    pub provider_median: Duration,
    pub provider_p99: Duration,
    pub limits: Limits,
    /// EventBridge schedule of `token-refresh`.
    pub schedule: Duration,
    /// `token-refresh`'s timeout and the margin in which it starts nothing new.
    pub sweep_timeout: Duration,
    pub sweep_margin: Duration,
    /// Lambda memory (MB) of the refresh functions, for GB-seconds.
    pub memory_mb: u32,
    pub seed: u64,
    /// The population is `slices` times this scenario: the run simulates one slice (its share
    /// of the organizations and connections) with its share of every account-wide and
    /// due-index quota, and the figures are multiplied back (docs/scale.md says how).
    pub slices: usize,
}

impl Scenario {
    /// The deployed configuration (infra/template.yaml) for `connections` over `orgs`.
    pub fn deployed(connections: usize, orgs: usize, duration: Duration) -> Self {
        Self {
            connections,
            orgs: orgs.max(1),
            duration,
            mode: Mode::Inline,
            token_lifetime: Duration::from_secs(3_600),
            provider_median: Duration::from_millis(120),
            provider_p99: Duration::from_millis(900),
            limits: Limits::default(),
            schedule: Duration::from_secs(300),
            sweep_timeout: Duration::from_secs(300),
            sweep_margin: Duration::from_secs(30),
            memory_mb: 256,
            seed: 15,
            slices: 1,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    pub meter: MeterSnapshot,
    /// Resident memory the seeded store added, per connection (bytes).
    pub bytes_per_connection: f64,
    /// Connections in the store after seeding.
    pub seeded: usize,
    pub invocations: u64,
    /// Invocations dropped because the previous one still ran (reserved concurrency).
    pub throttled_invocations: u64,
    pub cold_starts: u64,
    /// Summed duration of invocations, seconds.
    pub lambda_seconds: f64,
    pub provider_calls: u64,
    /// Due entries left at the end that were due more than one schedule interval before it.
    pub stale_at_end: usize,
    /// SQS requests (send, receive, delete batches) of the fan-out.
    pub sqs_requests: u64,
    /// How many identical slices this run stands for (1: it is the whole population; see
    /// `Scenario::slices`).
    pub slices: usize,
    /// Wall-clock seconds the simulation took (CPU, not simulated time).
    pub wall_secs: f64,
}

/// Resident set size of this process, bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Picks organizations with a Zipf (s = 1) distribution: a few large organizations and a long
/// tail, as a SaaS customer base looks.
struct OrgPicker {
    cdf: Vec<f64>,
}

impl OrgPicker {
    fn new(orgs: usize) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=orgs)
            .map(|k| {
                acc += 1.0 / k as f64;
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

fn org_id(i: usize) -> OrgId {
    OrgId::parse(&format!("org-{i:05}")).expect("valid org id")
}

/// The definition every organization refreshes with: an authorization-code provider whose
/// client secret is sealed (opened per container, as deployed). Its endpoints are loopback
/// literals: the service checks a provider's address before each call (a DNS lookup for a
/// name, on a blocking thread that would stop the simulated clock); a literal needs none, and
/// no request leaves the process anyway (the provider is [`SimProvider`]).
fn definition() -> serde_json::Value {
    json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": "http://127.0.0.1:9/authorize"},
        "tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"},
        "clientId": {"type": "string", "default": "latchkey-sim"},
        "clientSecret": {"type": "password", "default": "sim-client-secret-0000000000000000"},
        "scopes": {"type": "string", "default": "read write"}}})
}

/// The key provider the service seals with: the (metered) KMS stand-in.
fn key_provider(kms: Arc<dyn KeyProvider>) -> Arc<dyn KeyProvider> {
    kms
}

/// One Lambda container: its service (key caches included) lives as long as it does.
struct Container {
    service: Arc<Service>,
}

struct World {
    store: Arc<dyn Store>,
    kms: Arc<dyn KeyProvider>,
    events: Arc<CountingEvents>,
    clock: SimClock,
    provider: Arc<SimProvider>,
}

impl World {
    fn container(&self) -> Container {
        let envelope = Arc::new(Envelope::new(key_provider(self.kms.clone())));
        let service = Service::new(
            self.store.clone(),
            envelope,
            self.events.clone(),
            Arc::new(self.clock),
            ServiceOptions::default(),
        )
        .with_provider_client(self.provider.clone());
        Container { service: Arc::new(service) }
    }
}

/// Seeds `scn.connections` connections through the real service (unmetered: seeding is not
/// part of the figures), their tokens expiring spread over the first refresh interval.
async fn seed(scn: &Scenario, memory: &Arc<MemoryStore>, kms: Arc<dyn KeyProvider>, clock: SimClock) {
    let events = Arc::new(CountingEvents::new(Arc::new(Meter::new(clock, Limits::default()))));
    let seeding = Service::new(
        memory.clone(),
        Arc::new(Envelope::new(key_provider(kms))),
        events,
        Arc::new(clock),
        ServiceOptions::default(),
    );
    let def = definition();
    for o in 0..scn.orgs {
        let p = Principal::organization(org_id(o));
        seeding.put_definition(&p, "idp", &def).await.expect("the simulation's definition is valid");
    }
    let picker = OrgPicker::new(scn.orgs);
    let mut rng = Rng::new(scn.seed);
    let lifetime = scn.token_lifetime.as_secs();
    // Due `lookahead` (10 min) before expiry: seeded tokens come due evenly over one interval.
    let interval = lifetime.saturating_sub(600).max(60);
    for i in 0..scn.connections {
        let p = Principal::organization(org_id(picker.pick(&mut rng)));
        let expires_in = 1_200.max(600 + (rng.unit() * interval as f64) as u64);
        let body = json!({"definition": "idp", "customer": format!("c-{i}"), "tokens": {
            "access_token": format!("seed-at-{i:012}-0000000000000000000000000000000000"),
            "refresh_token": format!("seed-rt-{i:012}-00000000000000000000"),
            "token_type": "Bearer", "expires_in": expires_in}});
        seeding.create_connection(&p, &body).await.expect("a seeded connection is valid");
    }
}

/// Runs `scn` on a paused current-thread runtime and returns its figures.
pub fn run(scn: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(simulate(scn))
}

async fn simulate(scn: &Scenario) -> Outcome {
    let wall = std::time::Instant::now();
    let start = OffsetDateTime::from_unix_timestamp(1_796_083_200).expect("2026-12-01"); // 2026-12-01T00:00:00Z
    let clock = SimClock::starting_at(start);
    let keydir = tempfile::tempdir().expect("a temporary directory");
    let inner: Arc<dyn KeyProvider> = Arc::new(LocalKeyProvider::open_or_create(keydir.path()).expect("a local key"));
    let memory = Arc::new(MemoryStore::new(latchkey::adapters::aws::dynamodb::DUE_SHARDS).with_log_cap(4));

    let before = rss_bytes();
    seed(scn, &memory, inner.clone(), clock).await;
    let seeded = memory.connection_count();
    let bytes_per_connection = rss_bytes().saturating_sub(before) as f64 / seeded.max(1) as f64;

    // The simulated clock starts now: seeding took no simulated time.
    let clock = SimClock::starting_at(start);
    let meter = Arc::new(Meter::new(clock, scn.limits.clone()));
    let world = World {
        store: Arc::new(MeteredStore::new(memory.clone(), meter.clone(), clock)),
        kms: Arc::new(MeteredKeys::new(inner, meter.clone())),
        events: Arc::new(CountingEvents::new(meter.clone())),
        clock,
        provider: Arc::new(SimProvider::new(
            scn.provider_median,
            scn.provider_p99,
            scn.token_lifetime.as_secs(),
            scn.seed,
        )),
    };

    // The backlog, sampled at every simulated minute's end.
    let sampler = {
        let (memory, meter) = (memory.clone(), meter.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60) - Duration::from_millis(1)).await;
                meter.backlog(memory.due_count(latchkey::ports::Clock::now(&clock)));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let stats = match scn.mode {
        Mode::Inline => inline(scn, &world).await,
    };
    sampler.abort();

    let end = latchkey::ports::Clock::now(&clock);
    let stale_at_end = memory.due_count(end - time::Duration::try_from(scn.schedule).unwrap_or_default());
    Outcome {
        scenario: scn.clone(),
        meter: meter.snapshot(),
        bytes_per_connection,
        seeded,
        invocations: stats.invocations,
        throttled_invocations: stats.throttled,
        cold_starts: stats.cold_starts,
        lambda_seconds: stats.lambda_seconds,
        provider_calls: world.provider.calls(),
        stale_at_end,
        sqs_requests: stats.sqs_requests,
        slices: scn.slices.max(1),
        wall_secs: wall.elapsed().as_secs_f64(),
    }
}

#[derive(Default)]
struct LambdaStats {
    invocations: u64,
    throttled: u64,
    cold_starts: u64,
    lambda_seconds: f64,
    sqs_requests: u64,
}

/// The deployed schedule: every `schedule`, one `token-refresh` invocation, unless the previous
/// one still runs (reserved concurrency 1: the event is dropped). One warm container serves
/// them all while invocations keep coming within Lambda's idle lifetime.
async fn inline(scn: &Scenario, world: &World) -> LambdaStats {
    let mut stats = LambdaStats::default();
    let end = tokio::time::Instant::now() + scn.duration;
    let mut warm: Option<Arc<Service>> = None;
    let mut running: Option<tokio::task::JoinHandle<f64>> = None;
    let mut tick = tokio::time::interval(scn.schedule);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        if let Some(r) = running.take() {
            if r.is_finished() {
                stats.lambda_seconds += r.await.unwrap_or_default();
            } else {
                stats.throttled += 1;
                running = Some(r);
                continue;
            }
        }
        stats.invocations += 1;
        let service = match &warm {
            Some(s) => s.clone(),
            None => {
                stats.cold_starts += 1;
                let s = world.container().service;
                warm = Some(s.clone());
                s
            }
        };
        let budget = scn.sweep_timeout.saturating_sub(scn.sweep_margin);
        running = Some(tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            // The sweep's own deadline is a std Instant, which simulated time does not move:
            // the invocation's budget is enforced on the simulated clock instead (work in
            // flight at the budget's end is cut off; its lease lapses after 30 s).
            let far = std::time::Instant::now() + Duration::from_secs(86_400);
            let _ = tokio::time::timeout(budget, service.refresh_sweep(far)).await;
            began.elapsed().as_secs_f64()
        }));
    }
    if let Some(r) = running {
        // Cut off at the end of the simulated time: count what it ran.
        r.abort();
        stats.lambda_seconds += scn.sweep_timeout.as_secs_f64() / 2.0;
    }
    stats
}

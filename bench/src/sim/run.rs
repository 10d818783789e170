//! The scenario: organizations and their connections seeded through the real service, then
//! simulated hours of the deployed schedule (EventBridge `rate(5 minutes)` invoking
//! `token-refresh`, reserved concurrency 1, 300 s timeout, no new work in its last
//! [`latchkey::lambda::SWEEP_MARGIN`], 40 s), each
//! invocation in a Lambda container whose [`Service`] (and key caches) live as long as the
//! container.

use std::sync::Arc;
use std::time::Duration;

use latchkey::adapters::local_key::LocalKeyProvider;
use latchkey::crypto::{BranchKeyring, Envelope, KeyProvider};
use latchkey::domain::{OrgId, Principal};
use latchkey::lambda::{MessageVisibility, SqsEvent, SqsMessage, VisibilityError, handle_refresh_messages};
use latchkey::ports::{BranchKeyStore, Store};
use latchkey::service::{FanoutPolicy, QueueError, RefreshMessage, RefreshQueue, Service, ServiceOptions};
use serde_json::json;
use time::OffsetDateTime;

use super::clock::SimClock;
use super::memory::MemoryStore;
use super::provider::{Rng, SimProvider};
use super::quota::{CountingEvents, Limits, Meter, MeterSnapshot, MeteredKeys, MeteredStore};

/// How due connections are refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `token-refresh` sweep per schedule tick refreshes them itself (the deployment
    /// before the fan-out).
    Inline,
    /// Each tick sweeps inline up to 1,000 due entries and above that enqueues them, one
    /// message per organization (up to 100 entries each); SQS batches of up to 100 messages go
    /// to worker invocations (at most `workers` at once, the real worker's handler), each
    /// refreshing `RefreshPolicy::concurrency` (64) at a time (the deployed template).
    Fanout,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Inline => "inline",
            Mode::Fanout => "fan-out",
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
    /// Per-organization branch keys (`BranchKeyring`) between the service and KMS; `false`:
    /// one KMS data key per sealed record, as before issue 15.
    pub branch_keys: bool,
    /// Worker invocations at once (the SQS event source's `MaximumConcurrency`), messages per
    /// batch, the queue's visibility timeout and receives before the dead-letter queue.
    pub workers: usize,
    pub batch: usize,
    pub visibility: Duration,
    pub max_receives: u32,
    /// A Lambda container idle this long is reclaimed (its next invocation starts cold).
    pub container_idle: Duration,
    pub seed: u64,
    /// The population is `slices` times this scenario: the run simulates one slice (its share
    /// of the organizations and connections) with its share of every account-wide and
    /// due-index quota, and the figures are multiplied back (docs/scale.md says how).
    pub slices: usize,
}

impl Scenario {
    /// How long after its due time an entry may still wait at the end of a run: a schedule
    /// interval (the next tick) plus a minute for that tick's work.
    pub fn stale_after(&self) -> Duration {
        self.schedule + Duration::from_secs(60)
    }

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
            sweep_margin: latchkey::lambda::SWEEP_MARGIN,
            memory_mb: 256,
            branch_keys: true,
            workers: 200,
            batch: 100,
            visibility: Duration::from_secs(1_800),
            max_receives: 5,
            container_idle: Duration::from_secs(600),
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
    /// Due entries left at the end that were due more than `Scenario::stale_after` before it.
    pub stale_at_end: usize,
    /// SQS requests (send, receive, delete batches, attribute reads) of the fan-out.
    pub sqs_requests: u64,
    /// Messages that failed `max_receives` times (their connections stay due in the index).
    pub dead_lettered: u64,
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

/// The key provider a process seals with: KMS (metered, in the simulation) behind the
/// per-organization branch keys, or KMS alone.
fn key_provider(kms: Arc<dyn KeyProvider>, branch: Option<Arc<dyn BranchKeyStore>>) -> Arc<dyn KeyProvider> {
    match branch {
        Some(store) => Arc::new(BranchKeyring::new(kms, store)),
        None => kms,
    }
}

/// One Lambda container: its service (key caches included) lives as long as it does.
struct Container {
    service: Arc<Service>,
}

#[derive(Clone)]
struct World {
    store: Arc<dyn Store>,
    branch: Option<Arc<dyn BranchKeyStore>>,
    kms: Arc<dyn KeyProvider>,
    events: Arc<CountingEvents>,
    clock: SimClock,
    provider: Arc<SimProvider>,
}

impl World {
    fn container(&self) -> Container {
        let envelope = Arc::new(Envelope::new(key_provider(self.kms.clone(), self.branch.clone())));
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
    // Seeding takes no simulated time: every seeded token is obtained at the start, so its due
    // time is what the workload says (an event latency here once moved the millionth
    // connection's tokens 10,000 s past the end of the run, and they never came due).
    let began = tokio::time::Instant::now();
    let events = Arc::new(CountingEvents::instant(Arc::new(Meter::new(clock, Limits::default()))));
    let branch = scn.branch_keys.then(|| memory.clone() as Arc<dyn BranchKeyStore>);
    let seeding = Service::new(
        memory.clone(),
        Arc::new(Envelope::new(key_provider(kms, branch))),
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
    assert_eq!(began.elapsed(), Duration::ZERO, "seeding moved the simulated clock: seeded due times would be shifted");
}

/// Runs `scn` on a paused current-thread runtime and returns its figures.
pub fn run(scn: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    // Local tasks: the worker's futures need not be `Send` on one thread.
    tokio::task::LocalSet::new().block_on(&rt, simulate(scn))
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
    let metered = Arc::new(MeteredStore::new(memory.clone(), meter.clone(), clock));
    let world = World {
        store: metered.clone(),
        branch: scn.branch_keys.then(|| metered.clone() as Arc<dyn BranchKeyStore>),
        kms: Arc::new(MeteredKeys::new(inner, meter.clone())),
        events: Arc::new(CountingEvents::new(meter.clone())),
        clock,
        provider: Arc::new(
            SimProvider::new(scn.provider_median, scn.provider_p99, scn.token_lifetime.as_secs(), scn.seed)
                .recording(meter.answers()),
        ),
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
        Mode::Fanout => fanout(scn, world.clone()).await,
    };
    sampler.abort();

    let end = latchkey::ports::Clock::now(&clock);
    let stale_at_end = memory.due_count(end - time::Duration::try_from(scn.stale_after()).unwrap_or_default());
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
        dead_lettered: stats.dead_lettered,
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
    dead_lettered: u64,
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

/// The refresh queue (SQS standard, modelled): messages (one organization's entries each)
/// visible, in flight (received by a worker) or delayed (sent with a delay, or handed back:
/// visible again after the delay the worker asked for, else the visibility timeout), and the
/// requests SQS would bill.
#[derive(Default)]
struct SimQueue {
    state: std::sync::Mutex<QueueState>,
}

/// A message of the queue and how many times it was received.
type Queued = (RefreshMessage, u32);

#[derive(Default)]
struct QueueState {
    visible: std::collections::VecDeque<Queued>,
    in_flight: usize,
    delayed: Vec<(tokio::time::Instant, Queued)>,
    /// Receipt handles whose message the worker asked to see again after a delay
    /// (`ChangeMessageVisibility`).
    visibility: std::collections::HashMap<String, Duration>,
    /// Receipt handles given out so far (each receive gets a new one).
    receipts: u64,
    requests: u64,
    dead_lettered: u64,
}

/// SendMessageBatch takes 10 messages; the adapter sends 8 batches at once.
const SQS_BATCH: usize = 10;
const SQS_SEND_CONCURRENCY: usize = 8;
const SQS_LATENCY: Duration = Duration::from_millis(10);

impl SimQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `n` visible messages, received (in flight), after making due delayed ones visible;
    /// each with its receipt handle.
    fn receive(&self, n: usize) -> Vec<(String, Queued)> {
        let mut s = self.state();
        let now = tokio::time::Instant::now();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut s.delayed).into_iter().partition(|(at, _)| *at <= now);
        s.delayed = waiting;
        s.visible.extend(ready.into_iter().map(|(_, q)| q));
        let take = n.min(s.visible.len());
        let got: Vec<Queued> = s.visible.drain(..take).collect();
        s.in_flight += got.len();
        // ReceiveMessage returns at most 10 messages: the poller's requests for one batch.
        s.requests += got.len().div_ceil(SQS_BATCH) as u64;
        let first = s.receipts;
        s.receipts += got.len() as u64;
        got.into_iter().enumerate().map(|(i, q)| (format!("r-{}", first + i as u64), q)).collect()
    }

    /// A worker's batch is done: the messages whose receipt handles are in `back` are handed
    /// back (visible again after the delay the worker asked for, else `visibility`, or
    /// dead-lettered after `max_receives`), the others deleted.
    fn finish(&self, received: Vec<(String, Queued)>, back: &[String], visibility: Duration, max_receives: u32) {
        let mut s = self.state();
        s.in_flight -= received.len();
        let deleted = received.len() - back.len();
        s.requests += deleted.div_ceil(SQS_BATCH) as u64;
        let now = tokio::time::Instant::now();
        for (handle, (message, receives)) in received {
            let asked = s.visibility.remove(&handle);
            if !back.contains(&handle) {
                continue;
            }
            if receives + 1 >= max_receives {
                s.dead_lettered += 1;
            } else {
                s.delayed.push((now + asked.unwrap_or(visibility), (message, receives + 1)));
            }
        }
    }

    fn has_visible(&self) -> bool {
        let s = self.state();
        let now = tokio::time::Instant::now();
        !s.visible.is_empty() || s.delayed.iter().any(|(at, _)| *at <= now)
    }
}

#[async_trait::async_trait]
impl RefreshQueue for SimQueue {
    async fn enqueue(&self, messages: &[RefreshMessage], delay: Duration) -> Result<(), QueueError> {
        let batches = messages.len().div_ceil(SQS_BATCH);
        tokio::time::sleep(SQS_LATENCY * batches.div_ceil(SQS_SEND_CONCURRENCY) as u32).await;
        let mut s = self.state();
        s.requests += batches as u64;
        let queued = messages.iter().map(|m| (m.clone(), 0));
        if delay.is_zero() {
            s.visible.extend(queued);
        } else {
            let at = tokio::time::Instant::now() + delay;
            s.delayed.extend(queued.map(|q| (at, q)));
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        tokio::time::sleep(SQS_LATENCY).await;
        let mut s = self.state();
        s.requests += 1;
        Ok((s.visible.len() + s.in_flight + s.delayed.len()) as u64)
    }
}

#[async_trait::async_trait]
impl MessageVisibility for SimQueue {
    async fn delay(&self, _queue_arn: &str, receipt_handle: &str, delay: Duration) -> Result<(), VisibilityError> {
        tokio::time::sleep(SQS_LATENCY).await;
        let mut s = self.state();
        s.requests += 1;
        s.visibility.insert(receipt_handle.to_owned(), delay);
        Ok(())
    }
}

/// A batch as the event source mapping hands it to the worker: the messages' JSON bodies.
fn sqs_event(received: &[(String, Queued)]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = received
        .iter()
        .map(|(handle, (message, _))| {
            let mut record = SqsMessage::default();
            record.message_id = Some(handle.clone());
            record.receipt_handle = Some(handle.clone());
            record.body = Some(serde_json::to_string(message).expect("a message serializes"));
            record.event_source_arn = Some(QUEUE_ARN.to_owned());
            record
        })
        .collect();
    event
}

const QUEUE_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:latchkey-RefreshQueue";

/// Warm containers of one function, reclaimed after `idle`.
struct Pool {
    idle: std::sync::Mutex<Vec<(Arc<Service>, tokio::time::Instant)>>,
    stats: std::sync::Mutex<LambdaStats>,
    idle_limit: Duration,
}

impl Pool {
    fn take(&self, world: &World) -> Arc<Service> {
        let now = tokio::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, at)| now.duration_since(*at) < self.idle_limit);
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.invocations += 1;
        match idle.pop() {
            Some((s, _)) => s,
            None => {
                stats.cold_starts += 1;
                world.container().service
            }
        }
    }

    fn give_back(&self, service: Arc<Service>, ran: Duration) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push((service, tokio::time::Instant::now()));
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).lambda_seconds += ran.as_secs_f64();
    }
}

/// The fan-out deployment: every `schedule` a tick ([`Service::refresh_tick`] with the queue:
/// inline up to 1,000 due, else dispatch); the SQS event source polls every second and starts
/// worker invocations (`token-refresh`'s own handler, [`handle_refresh_messages`]) on batches of
/// up to `batch` messages, at most `workers` at once. Entries to retry come back as new delayed
/// messages; handed-back messages after the delay the worker set, a cut-off batch after the
/// visibility timeout.
async fn fanout(scn: &Scenario, world: World) -> LambdaStats {
    let end = tokio::time::Instant::now() + scn.duration;
    let queue = Arc::new(SimQueue::default());
    let pool = Arc::new(Pool { idle: Default::default(), stats: Default::default(), idle_limit: scn.container_idle });
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let budget = scn.sweep_timeout.saturating_sub(scn.sweep_margin);
    // A slice's share of the queue's thresholds (the whole queue holds `slices` times its messages).
    let whole = FanoutPolicy::default();
    let k = scn.slices.max(1);
    let policy = FanoutPolicy { inline_max: whole.inline_max / k, low_water: whole.low_water / k as u64, ..whole };
    let mut next_tick = tokio::time::Instant::now();
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        if now >= next_tick {
            next_tick += scn.schedule;
            let service = pool.take(&world);
            let (queue, pool, policy) = (queue.clone(), pool.clone(), policy.clone());
            tokio::task::spawn_local(async move {
                let began = tokio::time::Instant::now();
                let far = std::time::Instant::now() + Duration::from_secs(86_400);
                let q: &dyn RefreshQueue = queue.as_ref();
                let _ = tokio::time::timeout(budget, service.refresh_tick(Some(q), &policy, far)).await;
                pool.give_back(service, began.elapsed());
            });
        }
        while active.load(std::sync::atomic::Ordering::SeqCst) < scn.workers && queue.has_visible() {
            let received = queue.receive(scn.batch);
            if received.is_empty() {
                break;
            }
            active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = pool.take(&world);
            let (queue, pool, active) = (queue.clone(), pool.clone(), active.clone());
            let (visibility, max_receives) = (scn.visibility, scn.max_receives);
            tokio::task::spawn_local(async move {
                let began = tokio::time::Instant::now();
                let far = std::time::Instant::now() + Duration::from_secs(86_400);
                let q: &SimQueue = queue.as_ref();
                let work = handle_refresh_messages(&service, Some(q), q, sqs_event(&received), far);
                // Batch item failures go back; a cut-off batch goes back whole.
                let back: Vec<String> = match tokio::time::timeout(budget, work).await {
                    Ok(answer) => answer.batch_item_failures.into_iter().map(|f| f.item_identifier).collect(),
                    Err(_) => received.iter().map(|(handle, _)| handle.clone()).collect(),
                };
                queue.finish(received, &back, visibility, max_receives);
                pool.give_back(service, began.elapsed());
                active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    }
    let mut stats = std::mem::take(&mut *pool.stats.lock().unwrap_or_else(|p| p.into_inner()));
    let q = queue.state();
    stats.sqs_requests = q.requests;
    stats.dead_lettered = q.dead_lettered;
    stats
}

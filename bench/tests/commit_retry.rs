//! A provider's answer is written through a store that throttles: the real service over the
//! simulation's ports (`sim::quota`'s due index, made to throttle every write for a while), on
//! tokio's paused clock.
//!
//! - A store that throttles for 10 s (the SDK-like retries, then `StoreError::Unavailable`,
//!   again and again): the answer is retried until it lands, so the rotated refresh token is
//!   kept (the old retry gave up after about two seconds), and the container's adaptive limit
//!   halves, once for the whole commit.
//! - A store down past the refresh lease: the service gives up shortly before the lease ends,
//!   logs it as an error that names the connection and holds no secret, and the ledger counts
//!   the answer lost.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use latchkey::adapters::local_key::LocalKeyProvider;
use latchkey::crypto::{Envelope, KeyProvider};
use latchkey::domain::{OrgId, Principal};
use latchkey::ports::Store;
use latchkey::service::{RefreshPolicy, Service, ServiceOptions, SweepSummary};
use latchkey_bench::sim::answers::{AnswerTally, give_ups};
use latchkey_bench::sim::clock::SimClock;
use latchkey_bench::sim::memory::MemoryStore;
use latchkey_bench::sim::provider::SimProvider;
use latchkey_bench::sim::quota::{CountingEvents, Limits, Meter, MeteredStore};
use serde_json::json;
use time::OffsetDateTime;
use tracing_subscriber::Layer;

/// Every secret the run handles: none may reach a log line.
const SECRETS: &[&str] = &["seed-rt-", "seed-at-", "sim-rt-", "sim-at-", "sim-client-secret"];

/// Log lines captured from the service (debug and up).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// One connection, due now, and a service over a due index that throttles every write for
/// `outage` from now. Returns the service, the meter and the simulated start.
async fn one_due_connection(outage: Duration) -> (Service, Arc<Meter>, tempfile::TempDir) {
    let start = OffsetDateTime::from_unix_timestamp(1_796_083_200).expect("a valid time");
    let keydir = tempfile::tempdir().expect("a temporary directory");
    let keys: Arc<dyn KeyProvider> = Arc::new(LocalKeyProvider::open_or_create(keydir.path()).expect("a local key"));
    let memory = Arc::new(MemoryStore::new(16));
    let seeding_clock = SimClock::starting_at(start);
    let unmetered = Arc::new(Meter::new(seeding_clock, Limits::default()));
    let seeding = Service::new(
        memory.clone(),
        Arc::new(Envelope::new(keys.clone())),
        Arc::new(CountingEvents::instant(unmetered)),
        Arc::new(seeding_clock),
        ServiceOptions::default(),
    );
    let org = Principal::organization(OrgId::parse("org-00000").expect("an org id"));
    let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": "http://127.0.0.1:9/authorize"},
        "tokenUrl": {"type": "url", "default": "http://127.0.0.1:9/token"},
        "clientId": {"type": "string", "default": "latchkey-sim"},
        "clientSecret": {"type": "password", "default": "sim-client-secret-0000000000000000"}}});
    seeding.put_definition(&org, "idp", &definition).await.expect("a valid definition");
    // Due 10 minutes before it expires: at 600 s.
    let body = json!({"definition": "idp", "customer": "c-0", "tokens": {
        "access_token": "seed-at-000000000000-0000000000000000000000000000000000",
        "refresh_token": "seed-rt-000000000000-00000000000000000000",
        "token_type": "Bearer", "expires_in": 1_200}});
    seeding.create_connection(&org, &body).await.expect("a valid connection");
    tokio::time::advance(Duration::from_secs(601)).await;

    let clock = SimClock::starting_at(start + Duration::from_secs(601));
    let meter = Arc::new(Meter::new(clock, Limits { due_outage: outage, ..Limits::default() }));
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(memory, meter.clone(), clock));
    let provider =
        SimProvider::new(Duration::from_millis(120), Duration::from_millis(900), 3_600, 15).recording(meter.answers());
    let service = Service::new(
        store,
        Arc::new(Envelope::new(keys)),
        Arc::new(CountingEvents::new(meter.clone())),
        Arc::new(clock),
        ServiceOptions::default(),
    )
    .with_provider_client(Arc::new(provider));
    (service, meter, keydir)
}

/// Answered, committed, lost, cut off.
fn counts(t: &AnswerTally) -> (u64, u64, u64, u64) {
    (t.answered, t.committed, t.lost, t.cut_off)
}

async fn sweep(service: &Service) -> SweepSummary {
    let far = std::time::Instant::now() + Duration::from_secs(86_400);
    service.refresh_sweep(far).await.expect("the index is readable")
}

/// Log lines (debug and up) captured for this test's thread, the embedded-metric-format lines
/// the Lambda functions would write for them (`telemetry::metrics`), and the simulation's count
/// of the service's give-ups (`answers::give_ups`).
fn capture() -> (Captured, Captured, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::layer::SubscriberExt;

    let captured = Captured::default();
    let metrics = Captured::default();
    let writer = captured.clone();
    let metrics_writer = metrics.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        )
        .with(latchkey::telemetry::metrics::EmbeddedMetrics::new(move || metrics_writer.clone()))
        .with(give_ups());
    (captured, metrics, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_written_through_a_store_that_throttles_for_ten_seconds() {
    let (logs, metrics, _guard) = capture();
    let (service, meter, _keys) = one_due_connection(Duration::from_secs(10)).await;
    let began = tokio::time::Instant::now();
    let summary = sweep(&service).await;
    assert_eq!((summary.due, summary.refreshed, summary.failed), (1, 1, 0), "{summary:?}");
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(10), "landed once the store took writes again: {took:?}");
    let answers = meter.snapshot().answers;
    assert_eq!(counts(&answers), (1, 1, 0, 0), "{answers:?}");
    let logs = logs.text();
    assert!(logs.contains("the store did not take a refresh outcome; trying again"), "{logs}");
    assert!(logs.contains("refreshes at once lowered"), "the adaptive limit halved: {logs}");
    // Once: one commit retrying for 10 s is one refresh that met throttling, not one per retry.
    assert_eq!(logs.matches("refreshes at once lowered").count(), 1, "{logs}");
    assert!(logs.contains("limit=32"), "64 halved once: {logs}");
    assert_eq!(metrics.text(), "", "nothing lost, nothing counted");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} logged");
    }

    // The rotated refresh token was kept: the next refresh (due 50 minutes later) is answered
    // and committed as one, not counted lost.
    tokio::time::advance(Duration::from_secs(3_000)).await;
    let summary = sweep(&service).await;
    assert_eq!(summary.refreshed, 1, "{summary:?}");
    let answers = meter.snapshot().answers;
    assert_eq!(counts(&answers), (2, 2, 0, 0), "{answers:?}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_the_store_refuses_past_the_lease_is_given_up_before_it_ends_and_logged() {
    let (logs, metrics, _guard) = capture();
    let (service, meter, _keys) = one_due_connection(Duration::from_secs(3_600)).await;
    let began = tokio::time::Instant::now();
    let summary = sweep(&service).await;
    assert_eq!((summary.due, summary.refreshed, summary.failed), (1, 0, 1), "{summary:?}");
    let took = began.elapsed();
    let lease = RefreshPolicy::default().lease;
    assert!(took > lease / 2 && took < lease, "tried for most of the lease, not past it: {took:?}");
    let logs = logs.text();
    assert!(
        logs.contains("a provider's answer could not be written before its refresh lease ends"),
        "the loss is logged: {logs}"
    );
    // Counted for the stack's LostAnswersAlarm: one Latchkey/LostAnswers data point.
    let counted: Vec<serde_json::Value> =
        metrics.text().lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0]["LostAnswers"], 1, "{counted:?}");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} logged");
    }
    tokio::time::advance(lease).await;
    let answers = meter.snapshot().answers;
    assert_eq!(counts(&answers), (1, 0, 1, 0), "{answers:?}");
    assert_eq!(answers.given_up, 1, "the service's error line counted: {answers:?}");
}

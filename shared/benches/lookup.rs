//! Token lookup and envelope benchmarks over the embedded backend.
//!
//! `cargo bench -p latchkey --bench lookup` prints a Markdown table; docs/benchmarks.md records
//! the figures of a run. Plain `std::time` rather than criterion keeps the build lean.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::config::Components;
use latchkey::crypto::{EncryptionContext, Envelope};
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::service::{LookupRequest, PrincipalKind, ReadOrigin, ServiceOptions};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(name: &str, mut samples: Vec<Duration>, wall: Duration) {
    samples.sort();
    let n = samples.len();
    println!(
        "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.0} |",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples[n - 1].as_secs_f64() * 1e6,
        n as f64 / wall.as_secs_f64(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = Components::embedded(dir.path(), ServiceOptions::default()).expect("embedded backend");
    let service = app.service.clone();
    let org = OrgId::parse("bench").unwrap();
    let p = Principal::organization(org.clone());
    let def = json!({"auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "endpoint": {"type": "url", "default": "https://api.acme.com"}}});
    service.put_definition(&p, "acme", &def).await.unwrap();
    let conn = service
        .create_connection(&p, &json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": "sk_bench"}}))
        .await
        .unwrap();
    let req = LookupRequest { connection_id: Some(conn.id.to_string()), ..Default::default() };
    let origin = ReadOrigin::http(PrincipalKind::Runtime, "bench");
    service.lookup(&org, None, &req, &origin).await.unwrap(); // configured -> active

    println!("| operation | ops | p50 µs | p99 µs | max µs | ops/s |");
    println!("|---|---|---|---|---|---|");

    let n = 20_000;
    let mut samples = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(service.lookup(&org, None, &req, &origin).await.unwrap());
        samples.push(t.elapsed());
    }
    row("warm lookup, sequential", samples, wall.elapsed());

    // By selector: the customer index query, then the read of the connection chosen.
    let by_selector =
        LookupRequest { definition: Some("acme".into()), customer: Some("c-1".into()), ..Default::default() };
    let mut samples = Vec::with_capacity(n);
    let wall = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(service.lookup(&org, None, &by_selector, &origin).await.unwrap());
        samples.push(t.elapsed());
    }
    row("warm lookup by selector, sequential", samples, wall.elapsed());

    let tasks = 8;
    let wall = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (service, org, req, origin) = (service.clone(), org.clone(), req.clone(), origin.clone());
            tokio::spawn(async move {
                let mut s = Vec::with_capacity(n / tasks);
                for _ in 0..n / tasks {
                    let t = Instant::now();
                    std::hint::black_box(service.lookup(&org, None, &req, &origin).await.unwrap());
                    s.push(t.elapsed());
                }
                s
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.unwrap());
    }
    row("warm lookup, 8 concurrent tasks", samples, wall.elapsed());

    let keys = Arc::new(latchkey::adapters::LocalKeyProvider::open_or_create(dir.path()).unwrap());
    let envelope = Envelope::new(keys);
    let ctx = EncryptionContext::connection(&org, &ConnectionId::generate());
    // Every seal caches its new data key: the first `KEY_CACHE_CAPACITY` fill the cache, each
    // later one makes room in a full cache first (the cache's eviction cost, if any, shows here).
    let filling = latchkey::crypto::KEY_CACHE_CAPACITY;
    let (mut first, mut full) = (Vec::with_capacity(filling), Vec::with_capacity(n - filling));
    let (wall, mut first_wall) = (Instant::now(), Duration::ZERO);
    for i in 0..n {
        let t = Instant::now();
        let sealed = envelope.seal(&ctx, b"{\"apiKey\":\"sk_bench\"}").await.unwrap();
        std::hint::black_box(envelope.open(&ctx, &sealed).await.unwrap());
        if i < filling {
            first.push(t.elapsed());
            first_wall = wall.elapsed();
        } else {
            full.push(t.elapsed());
        }
    }
    let full_wall = wall.elapsed() - first_wall;
    row("seal + open (fresh data key), data-key cache filling", first, first_wall);
    row("seal + open (fresh data key), data-key cache full", full, full_wall);

    let m = 2_000;
    let mut samples = Vec::with_capacity(m);
    let wall = Instant::now();
    for i in 0..m {
        let t = Instant::now();
        let body = json!({"definition": "acme", "customer": format!("c-{i}"), "values": {"apiKey": "sk_bench"}});
        std::hint::black_box(service.create_connection(&p, &body).await.unwrap());
        samples.push(t.elapsed());
    }
    row("create connection (validate, seal, insert, log, event)", samples, wall.elapsed());
}

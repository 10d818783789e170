//! What one refresh by the sweep costs on the aws backend (issue 15), counted at the wire (an
//! SDK interceptor on the DynamoDB, KMS and EventBridge clients) against moto, with a token
//! endpoint on loopback: the connection is read once (the sweep's read is the refresh's), the
//! definition once, and three writes (lease, tokens, log line) and one event are made. Counts,
//! never times: `bench/src/bin/sweep.rs` measures the rate (docs/performance.md, "Sweep").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use latchkey::config::Components;
use latchkey::domain::Principal;
use latchkey::service::ServiceOptions;
use serde_json::json;
use support::calls::Calls;
use support::moto;

/// A token endpoint on loopback answering every request with new tokens (the refresh token
/// rotated), counting the requests.
async fn token_endpoint() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                axum::Json(json!({"access_token": format!("at-{n}"), "token_type": "Bearer",
                    "expires_in": 3600, "refresh_token": format!("rt-{n}")}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn counted(calls: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for c in calls {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_swept_refresh_reads_its_connection_once() {
    tokio::task::spawn_blocking(moto::endpoint).await.expect("start moto");
    let config = moto::sdk_config().await;
    let ddb = aws_sdk_dynamodb::Client::new(&config);
    let table = moto::unique("latchkey-sweep-calls");
    latchkey::adapters::aws::schema::bootstrap(&ddb, &table).await.expect("bootstrap the table");
    let key = moto::create_kms_key(&config).await;
    let calls = Calls::default();
    let (ddb, kms, eb) = calls.clients(&config);
    let options = ServiceOptions { allow_loopback_providers: true, ..ServiceOptions::default() };
    let app = Components::aws(ddb, kms, eb, &table, &key, "default", options);
    let service = &app.service;
    let (base, hits) = token_endpoint().await;

    let p = Principal::organization(latchkey::conformance::fresh_org());
    let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": format!("{base}/authorize")},
        "tokenUrl": {"type": "url", "default": format!("{base}/token")},
        "clientId": {"type": "string", "default": "client"},
        "clientSecret": {"type": "password", "default": "secret"},
        "scopes": {"type": "string", "default": "read"}}});
    service.put_definition(&p, "loopback", &definition).await.expect("put the definition");
    // An import whose access token has expired: due at once.
    let created = service
        .create_connection(
            &p,
            &json!({"definition": "loopback", "customer": "c-1", "tokens": {
            "access_token": "at-imported", "refresh_token": "rt-imported", "expires_at": "2020-01-01T00:00:00Z"}}),
        )
        .await
        .expect("import a connection");
    calls.take();

    let summary = service.refresh_sweep(Instant::now() + Duration::from_secs(60)).await.expect("the sweep runs");
    let made = calls.take();
    let counts = counted(&made);
    println!("one swept refresh: {counts:?}");
    assert_eq!((summary.due, summary.refreshed, summary.failed), (1, 1, 0), "{summary:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one token request");
    // The sweep's read of the connection is the refresh's first read (it was read twice), and
    // the definition is read once.
    assert_eq!(counts.get("DynamoDB.GetItem"), Some(&2), "{made:?}");
    // The lease, the new tokens, the log line: the single-flight lease is still taken.
    assert_eq!(counts.get("DynamoDB.PutItem"), Some(&3), "{made:?}");
    assert_eq!(counts.get("EventBridge.PutEvents"), Some(&1), "Token Refreshed: {made:?}");

    // The refresh token was rotated and stored: the connection left the index until its next
    // due time, and a lookup returns the new access token.
    let c = app.store.get_connection(&p.org, &created.id).await.unwrap().expect("the connection exists");
    assert!(c.refresh.due_at.is_some_and(|d| d > time::OffsetDateTime::now_utc()), "due later: {:?}", c.refresh);
    assert!(c.refresh.lease.is_none(), "the lease is released");
    let again = service.refresh_sweep(Instant::now() + Duration::from_secs(60)).await.expect("the sweep runs");
    assert_eq!((again.due, again.refreshed), (0, 0), "nothing due after the refresh: {again:?}");
}

/// A token endpoint that answers its first `answer_first` requests at once and holds each later
/// one until `release_at` are in flight at once (or, if that never happens, until a generous
/// bound passes), recording the most seen in flight.
async fn holding_token_endpoint(answer_first: usize, release_at: usize) -> (String, Arc<AtomicU64>) {
    let in_flight = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let requests = Arc::new(AtomicU64::new(0));
    let seen = most.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || {
            let (in_flight, most, all_in) = (in_flight.clone(), most.clone(), all_in.clone());
            let first = (requests.fetch_add(1, Ordering::SeqCst) as usize) < answer_first;
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The first ones are answered at once.
                if !first {
                    if now as usize >= release_at {
                        all_in.notify_waiters();
                    } else {
                        // Not a timing assertion: only what ends the wait when fewer ever arrive.
                        let _ = tokio::time::timeout(Duration::from_secs(5), all_in.notified()).await;
                    }
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                axum::Json(json!({"access_token": format!("at-{now}"), "token_type": "Bearer",
                    "expires_in": 3600, "refresh_token": format!("rt-{now}")}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

/// A refresh mostly waits on the provider, so the sweep's rate is its concurrency over the
/// provider's latency: by default it has 64 refreshes in flight at once (it had 8, which held a
/// 50 ms provider to ~150 refreshes/s). Every connection is still refreshed exactly once. One
/// organization: it takes the last eighth of the places once its refreshes come back (the
/// first 16 answered at once; `service::refresh::shares`' own tests for the rest).
#[tokio::test]
async fn the_sweep_has_64_refreshes_in_flight_at_once() {
    const DUE: usize = 96;
    let policy = latchkey::service::RefreshPolicy::default();
    assert_eq!(policy.concurrency, 64);
    let dir = tempfile::tempdir().expect("temp dir");
    let app = Components::embedded(dir.path(), ServiceOptions::default()).expect("the embedded backend");
    let service = &app.service;
    let (base, most) = holding_token_endpoint(policy.concurrency / 4, policy.concurrency).await;
    let p = Principal::organization(latchkey::conformance::fresh_org());
    let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": format!("{base}/authorize")},
        "tokenUrl": {"type": "url", "default": format!("{base}/token")},
        "clientId": {"type": "string", "default": "client"},
        "scopes": {"type": "string", "default": "read"}}});
    service.put_definition(&p, "loopback", &definition).await.expect("put the definition");
    for i in 0..DUE {
        service
            .create_connection(
                &p,
                &json!({"definition": "loopback", "customer": format!("c-{i}"), "tokens": {
                "access_token": "at", "refresh_token": "rt", "expires_at": "2020-01-01T00:00:00Z"}}),
            )
            .await
            .expect("import a connection");
    }

    let summary = service.refresh_sweep(Instant::now() + Duration::from_secs(120)).await.expect("the sweep runs");
    assert_eq!((summary.due, summary.refreshed, summary.failed), (DUE, DUE, 0), "{summary:?}");
    assert_eq!(most.load(Ordering::SeqCst), policy.concurrency as u64, "refreshes in flight at once");
}

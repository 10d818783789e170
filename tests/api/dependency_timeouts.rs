//! A hung AWS dependency must not hang `latchkey serve`'s callers (issue 12, item 10). The
//! dependency is moto stopped with SIGSTOP: its socket still accepts connections, nothing
//! answers. Each test stops only moto servers of its own (`AWS_ENDPOINT_URL_KMS`,
//! `AWS_ENDPOINT_URL_EVENTBRIDGE` point the binary at one), so the other tests of this binary go
//! on. The tests are about the binary and its AWS configuration: they spawn it under either
//! transport, on the aws backend under either backend setting.
//!
//! - A token lookup answers 503 `urn:latchkey:problem:unavailable` with `Retry-After` within
//!   seconds while DynamoDB hangs, and while KMS hangs (a data key not cached: right after a
//!   restart); the first lookup after the dependency answers again is 200.
//! - A request that emits an event is held at most briefly by a hung EventBridge.
//!
//! The sweep's side is in the adapters binary (`tests/adapters/dependency_timeouts.rs`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use support::moto::{self, Moto};

use crate::harness::{Backend, Reply, TestApp, random_secret};

const ORG: &str = "acme";

/// What a caller may wait at most while a dependency hangs: one AWS call's operation timeout
/// (5 s) and change.
const BOUND: Duration = Duration::from_secs(10);

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

#[track_caller]
fn assert_unavailable(reply: &Reply, took: Duration, what: &str) {
    reply.assert_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:unavailable", "{what}: {}", reply.text);
    let retry_after: Option<u64> = reply.header("retry-after").and_then(|v| v.parse().ok());
    assert!(retry_after.is_some_and(|s| (1..=60).contains(&s)), "{what}: Retry-After in seconds: {retry_after:?}");
    assert!(took < BOUND, "{what}: answered after {took:?}, more than {BOUND:?}");
}

/// Defines `keyed` (an API key, sealed) and creates one connection per customer; their ids.
async fn keyed_connections(app: &TestApp, customers: &[&str]) -> Vec<String> {
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    let put = app.put_definition(&org, "keyed", &def).await;
    assert!(put.status.is_success(), "{}", put.text);
    let mut ids = Vec::new();
    for customer in customers {
        let body = json!({"definition": "keyed", "customer": customer, "values": {"apiKey": "sk_live_1"}});
        let created = app.create_connection(&org, &body).await;
        created.assert_status(StatusCode::CREATED);
        ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn a_lookup_answers_503_while_dynamodb_hangs_and_200_as_soon_as_it_answers() {
    // DynamoDB in a moto of the test's own, which it stops.
    let own = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let backend = Backend::fresh_aws_on(own.endpoint()).await;
    let app = TestApp::spawn_binary(&backend, &random_secret()).await;
    let id = keyed_connections(&app, &["c-1"]).await.remove(0);
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &id, &json!({})).await.assert_status(StatusCode::OK);

    let frozen = moto::freeze(own.pid());
    let (reply, took) = timed(app.lookup(&runtime, &id, &json!({}))).await;
    assert_unavailable(&reply, took, "a lookup while DynamoDB hangs");
    let report = json!({"action": "report_error", "message": "401"});
    let (reply, took) = timed(app.lookup(&runtime, &id, &report)).await;
    assert_unavailable(&reply, took, "a report while DynamoDB hangs");
    frozen.thaw();

    let (reply, took) = timed(app.lookup(&runtime, &id, &json!({}))).await;
    reply.assert_status(StatusCode::OK);
    assert!(took < BOUND, "the first lookup after DynamoDB answers again took {took:?}");
    assert_eq!(reply.body["fields"]["apiKey"], "sk_live_1");
}

#[tokio::test]
async fn a_lookup_answers_503_while_kms_hangs_and_a_hung_eventbridge_holds_no_request() {
    let side = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let key = moto::create_kms_key(&moto::sdk_config_for(side.endpoint()).await).await;
    let backend = Backend::fresh_aws().await;
    let env = [
        ("AWS_ENDPOINT_URL_KMS", side.endpoint()),
        ("AWS_ENDPOINT_URL_EVENTBRIDGE", side.endpoint()),
        ("LATCHKEY_KMS_KEY_ID", key.as_str()),
    ];
    let secret = random_secret();
    let mut app = TestApp::spawn_binary_with_env(&backend, &secret, &env).await;
    let ids = keyed_connections(&app, &["c-1", "c-2"]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &ids[0], &json!({})).await.assert_status(StatusCode::OK);
    // A restart forgets the data keys: the next lookup needs KMS.
    app.stop().await;
    let app = TestApp::spawn_binary_with_env(&backend, &secret, &env).await;

    let frozen = moto::freeze(side.pid());
    let (reply, took) = timed(app.lookup(&runtime, &ids[0], &json!({}))).await;
    assert_unavailable(&reply, took, "a lookup while KMS hangs");
    // A report needs no key, only DynamoDB (which answers) and an event (which hangs).
    let report = json!({"action": "report_error", "message": "Acme answered 401"});
    let (reply, took) = timed(app.lookup(&runtime, &ids[1], &report)).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["status"], "error");
    let events = latchkey::adapters::aws::eventbridge::PUBLISH_BUDGET;
    assert!(took < events + Duration::from_secs(2), "a hung EventBridge held the report {took:?}");
    frozen.thaw();

    let (reply, took) = timed(app.lookup(&runtime, &ids[0], &json!({}))).await;
    reply.assert_status(StatusCode::OK);
    assert!(took < BOUND, "the first lookup after KMS answers again took {took:?}");
    assert_eq!(reply.body["fields"]["apiKey"], "sk_live_1");
    let logs = app.logs();
    assert!(logs.contains("publishing an event failed"), "the lost event is logged");
}

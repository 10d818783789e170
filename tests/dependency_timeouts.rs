//! A hung AWS dependency must not hang Latchkey's callers (issue 12, item 10). The dependency is
//! moto stopped with SIGSTOP: its socket still accepts connections, nothing answers. DynamoDB
//! is this test binary's shared moto; KMS and EventBridge are a second moto of the test's own
//! (`AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL_EVENTBRIDGE`), so each can hang while the others
//! answer.
//!
//! - A token lookup through `latchkey serve` (aws backend) answers 503
//!   `urn:latchkey:problem:unavailable` with `Retry-After` within seconds while DynamoDB hangs,
//!   and while KMS hangs (a data key not cached: right after a restart); the first lookup after
//!   the dependency answers again is 200.
//! - A request that emits an event is held at most briefly by a hung EventBridge.
//! - The sweep gives up on each connection whose refresh hangs and ends by its deadline; a
//!   lookup through the `token-lookup` handler fails with `errorType` `Unavailable`.
//!
//! The tests stop shared processes, so they run one at a time.

mod common;
#[path = "support/oauth.rs"]
mod oauth;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::moto::{self, Moto};
use common::{Backend, Reply, TestApp, random_secret};
use latchkey::adapters::aws::OPERATION_TIMEOUT;
use latchkey::config::App;
use latchkey::domain::{ConnectionId, OrgId, Principal};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The tests freeze moto servers other tests of this binary would use: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ORG: &str = "acme";

/// What a caller may wait at most while a dependency hangs: one AWS call's operation timeout
/// (5 s) and change.
const BOUND: Duration = Duration::from_secs(10);

/// The in-process transport serves the router with the test's own clients: these tests are
/// about `latchkey serve` and its AWS configuration.
fn in_process() -> bool {
    if common::in_process() {
        eprintln!("skipped: the dependency timeouts are tested against the latchkey serve binary");
        return true;
    }
    false
}

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
    let _serial = SERIAL.lock().await;
    if in_process() {
        return;
    }
    let backend = Backend::fresh_aws().await;
    let app = TestApp::spawn_with(&backend, &random_secret()).await;
    let id = keyed_connections(&app, &["c-1"]).await.remove(0);
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &id, &json!({})).await.assert_status(StatusCode::OK);

    let frozen = moto::freeze(moto::pid());
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
    let _serial = SERIAL.lock().await;
    if in_process() {
        return;
    }
    let side = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let key = moto::create_kms_key(&moto::sdk_config_for(side.endpoint()).await).await;
    let backend = Backend::fresh_aws().await;
    let env = [
        ("AWS_ENDPOINT_URL_KMS", side.endpoint()),
        ("AWS_ENDPOINT_URL_EVENTBRIDGE", side.endpoint()),
        ("LATCHKEY_KMS_KEY_ID", key.as_str()),
    ];
    let secret = random_secret();
    let mut app = TestApp::spawn_with_env(&backend, &secret, &env).await;
    let ids = keyed_connections(&app, &["c-1", "c-2"]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &ids[0], &json!({})).await.assert_status(StatusCode::OK);
    // A restart forgets the data keys: the next lookup needs KMS.
    app.stop().await;
    let app = TestApp::spawn_with_env(&backend, &secret, &env).await;

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

/// The aws backend over DynamoDB in the shared moto and KMS and EventBridge in `side`, with
/// the timeouts `latchkey serve` and the functions use, refreshing 4 connections at a time.
async fn service_app(table: &str, key: &str, side: &Moto) -> App {
    let timeouts = latchkey::adapters::aws::timeout_config();
    let main = moto::sdk_config().await.to_builder().timeout_config(timeouts.clone()).build();
    let other = moto::sdk_config_for(side.endpoint()).await.to_builder().timeout_config(timeouts).build();
    let app = App::aws(
        aws_sdk_dynamodb::Client::new(&main),
        aws_sdk_kms::Client::new(&other),
        aws_sdk_eventbridge::Client::new(&other),
        table,
        key,
        "default",
    );
    app.service.set_public_url("http://127.0.0.1:9");
    app.service.set_allow_loopback_providers(true);
    app.service.set_refresh_policy(latchkey::service::RefreshPolicy { concurrency: 4, ..Default::default() });
    app
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[tokio::test]
async fn the_sweep_gives_up_on_hung_refreshes_and_ends_by_its_deadline() {
    let _serial = SERIAL.lock().await;
    tokio::task::spawn_blocking(moto::endpoint).await.unwrap();
    let side = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let table = moto::unique("latchkey-hung");
    let main = moto::sdk_config().await;
    latchkey::adapters::aws::schema::bootstrap(&aws_sdk_dynamodb::Client::new(&main), &table).await.unwrap();
    let key = moto::create_kms_key(&moto::sdk_config_for(side.endpoint()).await).await;

    // 12 authorized connections whose 2 s tokens are due after 1 s.
    let mock = oauth::MockServer::start(json!({"rewrites": [
        {"grant_type": "authorization_code", "set": {"expires_in": 2}}]}))
    .await;
    let first = service_app(&table, &key, &side).await;
    let org = OrgId::parse(ORG).unwrap();
    let p = Principal::organization(org.clone());
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "client"},
        "clientSecret": {"type": "password", "default": "client-secret"}}});
    first.service.put_definition(&p, "idp", &def).await.unwrap();
    let mut ids: Vec<ConnectionId> = Vec::new();
    for i in 0..12 {
        let created =
            first.service.create_connection(&p, &json!({"definition": "idp", "customer": format!("c-{i}")})).await;
        let id = created.unwrap().id;
        let started = first.service.authorize(&p, id.as_str()).await.unwrap();
        first.service.callback(&query(&mock.authorize(&started.authorize_url).await)).await;
        ids.push(id);
    }
    common::eventually(Duration::from_secs(20), "every token is due", || async {
        let due = first.store.due_connections(0, time::OffsetDateTime::now_utc(), None, 100).await.unwrap().len();
        let mut all = due;
        for shard in 1..first.store.due_shards() {
            all += first.store.due_connections(shard, time::OffsetDateTime::now_utc(), None, 100).await.unwrap().len();
        }
        all == ids.len()
    })
    .await;

    // A fresh process (no data key cached): every refresh needs KMS, which hangs.
    let app = service_app(&table, &key, &side).await;
    let frozen = moto::freeze(side.pid());
    let deadline = Duration::from_secs(8);
    let (summary, took) = timed(app.service.refresh_sweep(Instant::now() + deadline)).await;
    let summary = summary.expect("the index answers: the sweep itself succeeds");
    eprintln!("sweep while KMS hangs: {summary:?} in {took:?}");
    assert!(took < deadline + OPERATION_TIMEOUT + Duration::from_secs(4), "the sweep ran {took:?}");
    assert_eq!((summary.refreshed, summary.dropped), (0, 0), "{summary:?}");
    assert!(summary.failed >= 2, "gave up on a hung refresh and moved on to the next: {summary:?}");
    assert_eq!(summary.failed + summary.skipped, summary.due, "{summary:?}");
    let left = ids.len() - summary.due + summary.skipped;
    assert!(left > 0, "the deadline ended the sweep before it reached every connection: {summary:?}");

    // The token-lookup function: a lookup that needs a refresh (its token expired) fails
    // `Unavailable` within seconds.
    let payload = json!({"org": ORG, "connection_id": ids[0].as_str(), "min_valid_seconds": 60});
    let (looked, took) = timed(latchkey::lambda::handle_lookup(&app.service, payload.clone())).await;
    let diagnostic = looked.expect_err("no key, no token");
    assert_eq!(diagnostic.error_type, "Unavailable", "{diagnostic:?}");
    assert!(took < BOUND, "the lookup took {took:?}");
    frozen.thaw();
    // KMS answers again: so does the very next lookup (no backoff was left behind).
    let found =
        latchkey::lambda::handle_lookup(&app.service, payload.clone()).await.expect("a lookup after KMS is back");
    assert!(found["token"]["access_token"].is_string(), "{found}");

    // DynamoDB hangs: the sweep cannot read its index and says so within seconds, and so does
    // a lookup.
    let frozen = moto::freeze(moto::pid());
    let (swept, took) = timed(app.service.refresh_sweep(Instant::now() + Duration::from_secs(60))).await;
    let e = swept.expect_err("the index cannot be read");
    assert_eq!(e.error_type(), "Unavailable");
    let problem = latchkey::http::problem::Problem::from(e);
    assert_eq!((problem.status, problem.kind), (503, latchkey::http::problem::types::UNAVAILABLE));
    assert!(took < BOUND, "the sweep took {took:?} to give up");
    let (looked, took) = timed(latchkey::lambda::handle_lookup(&app.service, payload.clone())).await;
    assert_eq!(looked.expect_err("no store").error_type, "Unavailable");
    assert!(took < BOUND, "the lookup took {took:?}");
    frozen.thaw();
    let found: Value = latchkey::lambda::handle_lookup(&app.service, payload).await.expect("DynamoDB is back");
    assert_eq!(found["connection_id"], ids[0].as_str());
}

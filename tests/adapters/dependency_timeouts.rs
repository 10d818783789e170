//! A hung AWS dependency must not hang the sweep or the token-lookup function (issue 12, item
//! 10). The dependency is moto stopped with SIGSTOP: its socket still accepts connections,
//! nothing answers. DynamoDB and KMS/EventBridge are two moto servers of the test's own, so
//! each can hang while the other answers and the other tests of this binary go on.
//!
//! The sweep gives up on each connection whose refresh hangs and ends by its deadline; a lookup
//! through the `token-lookup` handler fails with `errorType` `Unavailable` within seconds, and
//! succeeds as soon as the dependency answers again. (`latchkey serve`'s 503 answers are in the
//! api binary, `tests/api/dependency_timeouts.rs`.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use latchkey::adapters::aws::OPERATION_TIMEOUT;
use latchkey::config::Components;
use latchkey::domain::{ConnectionId, OrgId, Principal};
use latchkey::service::ServiceOptions;
use serde_json::{Value, json};
use support::moto::{self, Moto};
use support::{eventually, oauth};

const ORG: &str = "acme";

/// What a caller may wait at most while a dependency hangs: one AWS call's operation timeout
/// (5 s) and change.
const BOUND: Duration = Duration::from_secs(10);

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// The aws backend over DynamoDB in `dynamodb` and KMS and EventBridge in `side`, with
/// the timeouts `latchkey serve` and the functions use, refreshing 4 connections at a time.
async fn service_app(table: &str, key: &str, dynamodb: &Moto, side: &Moto) -> Components {
    let timeouts = latchkey::adapters::aws::timeout_config();
    let main = moto::sdk_config_for(dynamodb.endpoint()).await.to_builder().timeout_config(timeouts.clone()).build();
    let other = moto::sdk_config_for(side.endpoint()).await.to_builder().timeout_config(timeouts).build();
    Components::aws(
        aws_sdk_dynamodb::Client::new(&main),
        aws_sdk_kms::Client::new(&other),
        aws_sdk_eventbridge::Client::new(&other),
        table,
        key,
        "default",
        ServiceOptions {
            public_url: Some("http://127.0.0.1:9".to_owned()),
            allow_loopback_providers: true,
            refresh: latchkey::service::RefreshPolicy { concurrency: 4, ..Default::default() },
            ..ServiceOptions::default()
        },
    )
}

fn query(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[tokio::test]
async fn the_sweep_gives_up_on_hung_refreshes_and_ends_by_its_deadline() {
    let dynamodb = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let side = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let table = moto::unique("latchkey-hung");
    let main = moto::sdk_config_for(dynamodb.endpoint()).await;
    latchkey::adapters::aws::schema::bootstrap(&aws_sdk_dynamodb::Client::new(&main), &table).await.unwrap();
    let key = moto::create_kms_key(&moto::sdk_config_for(side.endpoint()).await).await;

    // 12 authorized connections whose 2 s tokens are due after 1 s.
    let mock = oauth::MockServer::start(json!({"rewrites": [
        {"grant_type": "authorization_code", "set": {"expires_in": 2}}]}))
    .await;
    let first = service_app(&table, &key, &dynamodb, &side).await;
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
        first.service.callback(&query(&mock.authorize(&started.authorize_url).await), &Default::default()).await;
        ids.push(id);
    }
    eventually(Duration::from_secs(20), "every token is due", || async {
        let due = first.store.due_connections(0, time::OffsetDateTime::now_utc(), None, 100).await.unwrap().len();
        let mut all = due;
        for shard in 1..first.store.due_shards() {
            all += first.store.due_connections(shard, time::OffsetDateTime::now_utc(), None, 100).await.unwrap().len();
        }
        all == ids.len()
    })
    .await;

    // A fresh process (no data key cached): every refresh needs KMS, which hangs.
    let app = service_app(&table, &key, &dynamodb, &side).await;
    let frozen = moto::freeze(side.pid());
    let deadline = Duration::from_secs(8);
    let (summary, took) = timed(app.service.refresh_sweep(Instant::now() + deadline)).await;
    let summary = summary.expect("the index answers: the sweep itself succeeds");
    eprintln!("sweep while KMS hangs: {summary:?} in {took:?}");
    assert!(took < deadline + OPERATION_TIMEOUT + Duration::from_secs(4), "the sweep ran {took:?}");
    assert_eq!(summary.refreshed, 0, "{summary:?}");
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
    let frozen = moto::freeze(dynamodb.pid());
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

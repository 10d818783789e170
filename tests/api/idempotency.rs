//! `Idempotency-Key` on `POST /v1/connections` (SPEC section 10): a retry with the same key and
//! body gets the first response again (same status, same bytes) and creates nothing; another
//! body is 422; concurrent requests with one key create one connection (the others are replays
//! or 409 "being processed"); a failed request frees its key; keys are scoped by organization,
//! customer and route; malformed keys are 400; neither the key nor the body's secrets are
//! stored. `tests/run.sh` runs this module on the aws backend too.

use latchkey::domain::idempotency::request_hash;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use crate::harness::{Reply, TestApp, contains_bytes, random_hex};

const ORG: &str = "acme";

async fn setup() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "region": {"type": "string"}}});
    app.put_definition(&org, "acme-api", &def).await.assert_status(StatusCode::CREATED);
    (app, org)
}

/// `POST /v1/connections` with the raw JSON `body` and `Idempotency-Key` values `keys` (one
/// header line each).
async fn post(app: &TestApp, token: &str, keys: &[HeaderValue], body: &str) -> Reply {
    let mut req = app
        .client
        .post(app.url("/v1/connections"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for k in keys {
        req = req.header("idempotency-key", k.clone());
    }
    let res = req.send().await.expect("send the request");
    let (status, headers) = (res.status(), res.headers().clone());
    let text = res.text().await.expect("read the body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, text, body }
}

fn key(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

async fn count(app: &TestApp, token: &str) -> usize {
    let listed = app.list_connections(token, "limit=200").await;
    listed.assert_status(StatusCode::OK);
    listed.body["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_gets_the_first_response_and_creates_nothing() {
    let (app, org) = setup().await;
    let secret = format!("sk_live_{}", random_hex());
    let k = format!("order-{}", random_hex());
    let first_body = format!(
        r#"{{"definition": "acme-api", "customer": "c-1", "values": {{"apiKey": "{secret}", "region": "eu"}},
            "tags": {{"env": "prod"}}}}"#
    );
    let first = post(&app, &org, &[key(&k)], &first_body).await;
    first.assert_status(StatusCode::CREATED);
    assert_eq!(first.body["values"]["apiKey"], json!({"set": true}), "{}", first.text);
    assert!(!first.text.contains(&secret));
    assert_eq!(first.header("idempotent-replayed"), None);

    // The same body with its keys in another order and other spacing is the same request.
    let retry_body = format!(
        r#"{{"tags":{{"env":"prod"}},"values":{{"region":"eu","apiKey":"{secret}"}},"customer":"c-1","definition":"acme-api"}}"#
    );
    for _ in 0..2 {
        let again = post(&app, &org, &[key(&k)], &retry_body).await;
        again.assert_status(StatusCode::CREATED);
        assert_eq!(again.text, first.text, "byte for byte the first response");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        for h in ["etag", "location", "content-type"] {
            assert_eq!(again.header(h), first.header(h), "{h}");
        }
    }
    assert_eq!(count(&app, &org).await, 1, "one connection");
    let logs = app.connection_logs(&org, first.body["id"].as_str().unwrap()).await;
    assert_eq!(logs.body.as_array().unwrap().iter().filter(|l| l["type"] == "created").count(), 1);

    // The stored response is a read (`{"set": true}`): neither the secret nor the key is stored
    // in clear; the connection's id is (a positive control of the search).
    let stored = app.stored_data().await;
    let id = first.body["id"].as_str().unwrap();
    assert!(stored.iter().any(|(_, bytes)| contains_bytes(bytes, id.as_bytes())), "the search sees stored data");
    for (place, bytes) in &stored {
        assert!(!contains_bytes(bytes, secret.as_bytes()), "the secret is in clear in {place}");
        assert!(!contains_bytes(bytes, k.as_bytes()), "the key is in clear in {place}");
    }
}

/// The body's hash is stored sealed: a plain SHA-256 of a body with a weak secret (a short
/// basic-auth password) would let a reader of the store test guesses of it offline. A retry
/// still opens it and matches.
#[tokio::test]
async fn the_stored_record_holds_no_plain_hash_of_the_body() {
    let (app, org) = setup().await;
    let k = format!("weak-{}", random_hex());
    let body = r#"{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "hunter2"}}"#;
    let first = post(&app, &org, &[key(&k)], body).await;
    first.assert_status(StatusCode::CREATED);
    let plain = request_hash(&serde_json::from_str(body).unwrap());
    let stored = app.stored_data().await;
    let id = first.body["id"].as_str().unwrap();
    assert!(stored.iter().any(|(_, bytes)| contains_bytes(bytes, id.as_bytes())), "the search sees stored data");
    for (place, bytes) in &stored {
        assert!(!contains_bytes(bytes, plain.as_bytes()), "the body's plain SHA-256 is in {place}");
    }
    let again = post(&app, &org, &[key(&k)], body).await;
    again.assert_status(StatusCode::CREATED);
    assert_eq!((again.text.as_str(), again.header("idempotent-replayed")), (first.text.as_str(), Some("true")));
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_422_naming_idempotency() {
    let (app, org) = setup().await;
    let k = key(&random_hex());
    let body = |region: &str| {
        format!(r#"{{"definition": "acme-api", "customer": "c-1", "values": {{"apiKey": "k", "region": "{region}"}}}}"#)
    };
    post(&app, &org, std::slice::from_ref(&k), &body("eu")).await.assert_status(StatusCode::CREATED);
    let other = post(&app, &org, std::slice::from_ref(&k), &body("us")).await;
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem_type(), "urn:latchkey:problem:idempotency-key-reused");
    assert_eq!(count(&app, &org).await, 1);
    // The first body still gets its answer.
    post(&app, &org, &[k], &body("eu")).await.assert_status(StatusCode::CREATED);
    assert_eq!(count(&app, &org).await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_connection() {
    let (app, org) = setup().await;
    let k = key(&random_hex());
    let body = r#"{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"}}"#;
    let replies =
        futures_util::future::join_all((0..8).map(|_| post(&app, &org, std::slice::from_ref(&k), body))).await;
    let created: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::CREATED).collect();
    assert!(!created.is_empty(), "one of them ran");
    assert!(created.iter().all(|r| r.text == created[0].text), "every 201 is the same connection");
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        r.assert_problem(StatusCode::CONFLICT);
        assert_eq!(r.problem_type(), "urn:latchkey:problem:idempotency-in-progress");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(count(&app, &org).await, 1, "exactly one connection");
    // Once the first is done, a retry is a replay.
    let retry = post(&app, &org, &[k], body).await;
    retry.assert_status(StatusCode::CREATED);
    assert_eq!(retry.text, created[0].text);
}

#[tokio::test]
async fn a_failed_request_frees_its_key() {
    let (app, org) = setup().await;
    let k = key(&random_hex());
    let missing = r#"{"definition": "acme-api", "customer": "c-1", "values": {}}"#;
    for _ in 0..2 {
        let refused = post(&app, &org, std::slice::from_ref(&k), missing).await;
        refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.problem_type(), "urn:latchkey:problem:validation", "ran again, not a reuse");
    }
    // The corrected request is the first one to succeed with the key: it runs.
    let fixed = r#"{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"}}"#;
    let created = post(&app, &org, std::slice::from_ref(&k), fixed).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.header("idempotent-replayed"), None);
    assert_eq!(post(&app, &org, &[k], fixed).await.header("idempotent-replayed"), Some("true"));
    assert_eq!(count(&app, &org).await, 1);
}

#[tokio::test]
async fn keys_are_scoped_by_organization_and_customer() {
    let (app, org) = setup().await;
    let k = key(&random_hex());
    let body = r#"{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"}}"#;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let by_org = post(&app, &org, std::slice::from_ref(&k), body).await;
    let by_customer = post(&app, &customer, std::slice::from_ref(&k), body).await;
    by_org.assert_status(StatusCode::CREATED);
    by_customer.assert_status(StatusCode::CREATED);
    assert_ne!(by_org.body["id"], by_customer.body["id"], "a customer's key is its own");
    assert_eq!(by_customer.header("idempotent-replayed"), None);

    let other = app.token("globex", None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&other, "acme-api", &def).await.assert_status(StatusCode::CREATED);
    let elsewhere = post(&app, &other, &[k], body).await;
    elsewhere.assert_status(StatusCode::CREATED);
    assert_eq!(elsewhere.header("idempotent-replayed"), None, "another organization's key is its own");
    assert_eq!(count(&app, &org).await, 2);
}

#[tokio::test]
async fn malformed_keys_are_400_and_create_nothing() {
    let (app, org) = setup().await;
    let body = r#"{"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"}}"#;
    let bad = [
        vec![HeaderValue::from_static("")],
        vec![key(&"k".repeat(256))],
        vec![HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()],
        vec![HeaderValue::from_bytes(b"tab\there").unwrap()],
        vec![key("one"), key("two")],
    ];
    for keys in &bad {
        let refused = post(&app, &org, keys, body).await;
        refused.assert_problem(StatusCode::BAD_REQUEST);
        assert!(refused.body["detail"].as_str().unwrap().contains("Idempotency-Key"), "{}", refused.text);
    }
    assert_eq!(count(&app, &org).await, 0);
    post(&app, &org, &[key(&"k".repeat(255))], body).await.assert_status(StatusCode::CREATED);
    post(&app, &org, &[key("a b ~!")], body).await.assert_status(StatusCode::CREATED);
}

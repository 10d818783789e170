//! End-to-end tests of `latchkey serve`, black box: the real binary on a loopback port, driven
//! over HTTP, with tokens from `latchkey token` (SPEC sections 3, 4, 5, 7). On the embedded
//! backend by default, on the aws one (DynamoDB, KMS, EventBridge in moto) with
//! `LATCHKEY_TEST_BACKEND=aws`; through the router in-process with
//! `LATCHKEY_TEST_TRANSPORT=in-process` (see the harness, tests/api/harness/).

mod connections;
mod customers;
mod definitions;
mod lookup;
mod secrets;
mod serving;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Api, Reply, TestApp};

const ORG: &str = "acme";
const OTHER_ORG: &str = "globex";

/// A connection id of the right shape that was never created.
const UNKNOWN_ID: &str = "con_00000000000000000000000000";

/// An API-key definition with one input of each kind the tests need.
fn acme_definition() -> Value {
    json!({
        "label": "Acme API",
        "description": "The Acme REST API",
        "auth": "api_key",
        "inputs": {
            "apiKey": {"label": "API Key", "type": "password", "required": true},
            "endpoint": {"type": "url", "default": "https://api.acme.com"},
            "retries": {"type": "number"},
            "sandbox": {"type": "boolean", "visibility": "embedded"},
            "plan": {"type": "string", "visibility": "organization", "default": "gold"},
            "notes": {"type": "text"}
        }
    })
}

fn acme_connection(customer: &str, api_key: &str) -> Value {
    json!({"definition": "acme", "customer": customer, "values": {"apiKey": api_key}})
}

/// A server with the `acme` definition, and an organization token of `acme`.
async fn spawn_with_acme() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "acme", &acme_definition()).await.assert_status(StatusCode::CREATED);
    (app, org)
}

/// Creates a connection and returns its id.
async fn connect(api: &Api, token: &str, body: &Value) -> String {
    let reply = api.create_connection(token, body).await;
    reply.assert_status(StatusCode::CREATED);
    reply.body["id"].as_str().expect("an id").to_owned()
}

fn item_ids(reply: &Reply) -> Vec<String> {
    reply.body["items"].as_array().expect("items").iter().map(|c| c["id"].as_str().expect("an id").to_owned()).collect()
}

fn log_types(reply: &Reply) -> Vec<String> {
    reply.body.as_array().expect("a JSON array").iter().map(|e| e["type"].as_str().expect("type").to_owned()).collect()
}

//! End-to-end tests of `latchkey serve`, black box: the real binary on a loopback port, driven
//! over HTTP, with tokens from `latchkey token` (SPEC sections 3, 4, 5, 7). On the embedded
//! backend by default, on the aws one (DynamoDB, KMS, EventBridge in moto) with
//! `LATCHKEY_TEST_BACKEND=aws`; through the router in-process with
//! `LATCHKEY_TEST_TRANSPORT=in-process` (see tests/common/mod.rs).

mod common;

use std::collections::BTreeSet;

use common::{
    Api, Backend, Reply, TestApp, contains_bytes, files_under, mint_token, random_hex, random_secret, raw_exchange,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

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

// ---------------------------------------------------------------------------------------------
// Serving (section 3)

#[tokio::test]
async fn healthz_answers_200_without_a_token() {
    let app = TestApp::spawn().await;
    app.health().await.assert_status(StatusCode::OK);
}

#[tokio::test]
async fn openapi_document_is_served() {
    let app = TestApp::spawn().await;
    let reply = app.request(Method::GET, "/openapi.json", None, None).await;
    reply.assert_status(StatusCode::OK);
    assert!(reply.header("content-type").is_some_and(|c| c.starts_with("application/json")));
    assert!(reply.body["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "{}", reply.text);
}

#[tokio::test]
async fn openapi_document_describes_the_api_routes() {
    let app = TestApp::spawn().await;
    let reply = app.request(Method::GET, "/openapi.json", None, None).await;
    let paths = &reply.body["paths"];
    for path in [
        "/v1/definitions",
        "/v1/definitions/{key}",
        "/v1/connections",
        "/v1/connections/{id}",
        "/v1/connections/{id}/logs",
        "/v1/connections/{id}/token",
    ] {
        assert!(paths.get(path).is_some(), "{path} is missing from the OpenAPI document");
    }
}

#[tokio::test]
async fn serve_listens_on_loopback_and_stops_cleanly_on_sigterm() {
    if common::in_process() {
        // About the binary's signal handling; the in-process run has no process to signal.
        return;
    }
    let mut app = TestApp::spawn().await;
    assert!(app.address.starts_with("http://127.0.0.1:"));
    let status = app.stop().await.expect("the server exited");
    assert!(status.success(), "exit status {status}");
    assert!(app.logs().contains("latchkey serve stopped"), "logs:\n{}", app.logs());
}

#[tokio::test]
async fn master_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    if common::aws_backend() {
        // About the embedded backend's local master key; the aws backend's key is in KMS.
        return;
    }
    let app = TestApp::spawn().await;
    let key = app.data_dir.join("master.key");
    let mode = std::fs::metadata(&key).expect("the master key exists").permissions().mode();
    assert_eq!(mode & 0o077, 0, "master.key has mode {mode:o}");
}

// ---------------------------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn requests_without_a_valid_bearer_token_are_401() {
    let (app, org) = spawn_with_acme().await;
    let valid_payload = org.split('.').nth(1).expect("a JWT payload");
    let foreign = mint_token(&random_secret(), ORG, None, &["runtime"]).await;
    let other = app.token(OTHER_ORG, None, &[]).await;
    let spliced = {
        // The payload of one valid token under the signature of another.
        let parts: Vec<&str> = other.split('.').collect();
        format!("{}.{valid_payload}.{}", parts[0], parts[2])
    };
    // {"alg":"none","typ":"JWT"}
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{valid_payload}.");

    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let before = app.get_connection(&org, &id).await.body;
    let routes = [
        (Method::GET, "/v1/definitions".to_owned()),
        (Method::GET, "/v1/definitions/acme".to_owned()),
        (Method::PUT, "/v1/definitions/acme".to_owned()),
        (Method::DELETE, "/v1/definitions/acme".to_owned()),
        (Method::GET, "/v1/connections".to_owned()),
        (Method::POST, "/v1/connections".to_owned()),
        (Method::GET, format!("/v1/connections/{id}")),
        (Method::PATCH, format!("/v1/connections/{id}")),
        (Method::DELETE, format!("/v1/connections/{id}")),
        (Method::GET, format!("/v1/connections/{id}/logs")),
        (Method::POST, format!("/v1/connections/{id}/token")),
    ];
    let bad_headers = [
        None,
        Some("Bearer".to_owned()),
        Some("Bearer not-a-jwt".to_owned()),
        Some(format!("Bearer {foreign}")),
        Some(format!("Bearer {spliced}")),
        Some(format!("Bearer {unsigned}")),
        Some("Basic YWNtZTpzZWNyZXQ=".to_owned()),
    ];
    for (method, path) in &routes {
        for header in &bad_headers {
            let mut req = app.client.request(method.clone(), app.url(path)).json(&acme_definition());
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let res = req.send().await.expect("send");
            assert_eq!(res.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
            let text = res.text().await.expect("body");
            let problem: Value = serde_json::from_str(&text).expect("problem+json");
            assert_eq!(problem["status"], 401, "{method} {path} with {header:?}: {text}");
            assert_eq!(problem["type"], "urn:latchkey:problem:unauthorized");
        }
    }
    // None of those changed anything.
    assert_eq!(app.get_definition(&org, "acme").await.body["version"], 1);
    assert_eq!(app.get_connection(&org, &id).await.body, before);
    assert_eq!(app.list_connections(&org, "").await.body["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn tokens_from_latchkey_token_are_accepted() {
    let (app, org) = spawn_with_acme().await;
    app.list_definitions(&org).await.assert_status(StatusCode::OK);
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    app.list_connections(&customer, "").await.assert_status(StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Definitions

#[tokio::test]
async fn definition_put_creates_then_replaces() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;

    let created = app.put_definition(&org, "acme", &acme_definition()).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["key"], "acme");
    assert_eq!(created.body["label"], "Acme API");
    assert_eq!(created.body["auth"], "api_key");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.body["inputs"]["apiKey"]["required"], true);
    assert_eq!(created.body["inputs"]["endpoint"]["visibility"], "customer", "visibility defaults to customer");

    let mut changed = acme_definition();
    changed["label"] = json!("Acme API v2");
    let replaced = app.put_definition(&org, "acme", &changed).await;
    replaced.assert_status(StatusCode::OK);
    assert_eq!(replaced.body["version"], 2);
    assert_eq!(replaced.body["created_at"], created.body["created_at"]);

    let read = app.get_definition(&org, "acme").await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body["label"], "Acme API v2");

    let list = app.list_definitions(&org).await;
    list.assert_status(StatusCode::OK);
    let keys: Vec<_> = list.body["items"].as_array().expect("items").iter().map(|d| d["key"].clone()).collect();
    assert_eq!(keys, vec![json!("acme")]);
}

#[tokio::test]
async fn deleted_definition_is_gone() {
    let (app, org) = spawn_with_acme().await;
    app.delete_definition(&org, "acme").await.assert_status(StatusCode::NO_CONTENT);
    app.get_definition(&org, "acme").await.assert_problem(StatusCode::NOT_FOUND);
    app.delete_definition(&org, "acme").await.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(app.list_definitions(&org).await.body["items"], json!([]));
}

#[tokio::test]
async fn definition_in_use_cannot_be_deleted() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;

    let refused = app.delete_definition(&org, "acme").await;
    refused.assert_problem(StatusCode::CONFLICT);
    app.get_definition(&org, "acme").await.assert_status(StatusCode::OK);

    app.delete_connection(&org, &id).await.assert_status(StatusCode::NO_CONTENT);
    app.delete_definition(&org, "acme").await.assert_status(StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn customers_cannot_manage_definitions() {
    let (app, _org) = spawn_with_acme().await;
    let customer = app.token(ORG, Some("c-1"), &["runtime"]).await;
    app.put_definition(&customer, "acme", &acme_definition()).await.assert_problem(StatusCode::FORBIDDEN);
    app.put_definition(&customer, "new", &acme_definition()).await.assert_problem(StatusCode::FORBIDDEN);
    app.get_definition(&customer, "acme").await.assert_problem(StatusCode::FORBIDDEN);
    app.list_definitions(&customer).await.assert_problem(StatusCode::FORBIDDEN);
    app.delete_definition(&customer, "acme").await.assert_problem(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn definitions_of_another_organization_are_invisible() {
    let (app, _org) = spawn_with_acme().await;
    let other = app.token(OTHER_ORG, None, &[]).await;
    app.get_definition(&other, "acme").await.assert_problem(StatusCode::NOT_FOUND);
    app.delete_definition(&other, "acme").await.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(app.list_definitions(&other).await.body["items"], json!([]));
    // The same key is free in the other organization.
    app.put_definition(&other, "acme", &acme_definition()).await.assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn definition_validation_names_each_bad_field() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;

    let bad = json!({
        "auth": "oauth3",
        "colour": "red",
        "inputs": {
            "a": {"type": "blob"},
            "b": {"type": "string", "visibility": "public"},
            "c": {"type": "number", "default": "three"}
        },
        "redirects": {"success_url": "http://app.example.com/done"}
    });
    let reply = app.put_definition(&org, "acme", &bad).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:validation");
    assert_eq!(
        reply.error_fields(),
        ["auth", "colour", "inputs.a.type", "inputs.b.visibility", "inputs.c.default", "redirects.success_url"]
    );
    for error in reply.body["errors"].as_array().expect("errors") {
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }

    let mut with_redirects = acme_definition();
    with_redirects["redirects"] =
        json!({"success_url": "http://localhost:3000/done", "failure_url": "https://app.example.com/failed"});
    let reply = app.put_definition(&org, "redirecting", &with_redirects).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["redirects"], with_redirects["redirects"], "https, or http on localhost");

    let reply = app.put_definition(&org, "acme", &json!({"label": "no auth"})).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["auth"]);

    let reply = app.put_definition(&org, "Not_A_Key", &acme_definition()).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["key"]);

    app.get_definition(&org, "acme").await.assert_problem(StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// Connections: create, read, validate

#[tokio::test]
async fn connection_create_returns_201_with_etag_and_location() {
    let (app, org) = spawn_with_acme().await;
    let reply = app.create_connection(&org, &acme_connection("c-1", "k")).await;
    reply.assert_status(StatusCode::CREATED);
    let id = reply.body["id"].as_str().expect("an id");
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(reply.header("location"), Some(format!("/v1/connections/{id}").as_str()));
    assert_eq!(reply.body["definition"], "acme");
    assert_eq!(reply.body["scope"], "customer");
    assert_eq!(reply.body["customer"], "c-1");
    assert_eq!(reply.body["status"], "configured");
    assert_eq!(reply.body["error"], Value::Null);

    let read = app.get_connection(&org, id).await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.header("etag"), Some("\"1\""));
    assert_eq!(read.body, reply.body);
}

#[tokio::test]
async fn connection_values_are_validated_and_each_error_names_its_field() {
    let (app, org) = spawn_with_acme().await;
    let body = json!({
        "definition": "acme",
        "customer": "c-1",
        "values": {"endpoint": "not a url", "retries": "3", "sandbox": "yes", "notes": 7, "nope": 1}
    });
    let reply = app.create_connection(&org, &body).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:validation");
    assert_eq!(
        reply.error_fields(),
        ["values.apiKey", "values.endpoint", "values.nope", "values.notes", "values.retries", "values.sandbox"]
    );
    assert_eq!(app.list_connections(&org, "").await.body["items"], json!([]), "nothing was created");

    let good = json!({
        "definition": "acme",
        "customer": "c-1",
        "values": {"apiKey": "k", "endpoint": "https://eu.acme.com", "retries": 3, "sandbox": true, "notes": "hi"}
    });
    let reply = app.create_connection(&org, &good).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["values"]["retries"], 3);
    assert_eq!(reply.body["values"]["sandbox"], true);
    let id = reply.body["id"].as_str().expect("an id");

    let reply = app.patch_connection(&org, id, &json!({"values": {"retries": "many", "extra": 1}}), None).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["values.extra", "values.retries"]);
    assert_eq!(app.get_connection(&org, id).await.body["values"]["retries"], 3, "a refused PATCH changes nothing");
}

#[tokio::test]
async fn connection_defaults_are_applied_and_null_resets_to_them() {
    let (app, org) = spawn_with_acme().await;
    let reply = app.create_connection(&org, &acme_connection("c-1", "k")).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["values"]["endpoint"], "https://api.acme.com");
    assert_eq!(reply.body["values"]["plan"], "gold");
    let id = reply.body["id"].as_str().expect("an id");

    let reply = app.patch_connection(&org, id, &json!({"values": {"endpoint": "https://eu.acme.com"}}), None).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["values"]["endpoint"], "https://eu.acme.com");

    let reply = app.patch_connection(&org, id, &json!({"values": {"endpoint": null}}), None).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["values"]["endpoint"], "https://api.acme.com");
}

#[tokio::test]
async fn connection_shape_is_validated() {
    let (app, org) = spawn_with_acme().await;
    let values = json!({"apiKey": "k"});
    let cases = [
        (json!({"definition": "acme", "values": values}), "customer"),
        (json!({"definition": "acme", "scope": "instance", "customer": "c-1", "values": values}), "instance_id"),
        (json!({"definition": "acme", "scope": "galaxy", "customer": "c-1", "values": values}), "scope"),
        (json!({"definition": "nope", "customer": "c-1", "values": values}), "definition"),
        (json!({"customer": "c-1", "values": values}), "definition"),
        (json!({"definition": "acme", "customer": "c-1", "colour": "red", "values": values}), "colour"),
        (json!({"definition": "acme", "customer": "c#1", "values": values}), "customer"),
    ];
    for (body, field) in cases {
        let reply = app.create_connection(&org, &body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(reply.error_fields().contains(&field.to_owned()), "{body} should name {field}: {}", reply.text);
    }

    let instance = json!({"definition": "acme", "customer": "c-1", "instance_id": "inst-9", "values": values});
    let reply = app.create_connection(&org, &instance).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["scope"], "instance", "an instance_id implies instance scope");
    assert_eq!(reply.body["instance_id"], "inst-9");

    let reply =
        app.create_connection(&org, &json!({"definition": "acme", "scope": "organization", "values": values})).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["customer"], Value::Null);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let requests = [
        (Method::PUT, "/v1/definitions/acme".to_owned(), &org),
        (Method::POST, "/v1/connections".to_owned(), &org),
        (Method::PATCH, format!("/v1/connections/{id}"), &org),
        (Method::POST, format!("/v1/connections/{id}/token"), &runtime),
    ];
    for (method, path, token) in requests {
        for body in [&b"{\"label\": "[..], b"not json", b"{\"a\": 1,}"] {
            let reply = app.request_raw(method.clone(), &path, token, body.to_vec()).await;
            reply.assert_problem(StatusCode::BAD_REQUEST);
            assert_eq!(reply.problem_type(), "urn:latchkey:problem:malformed-request", "{method} {path}");
        }
    }
    app.request_raw(Method::PUT, "/v1/definitions/acme", &org, Vec::new())
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let oversized = serde_json::to_vec(&json!({"label": "a".repeat(65 * 1024)})).expect("json");
    let requests = [
        (Method::PUT, "/v1/definitions/acme".to_owned(), &org),
        (Method::POST, "/v1/connections".to_owned(), &org),
        (Method::PATCH, format!("/v1/connections/{id}"), &org),
        (Method::POST, format!("/v1/connections/{id}/token"), &runtime),
    ];
    for (method, path, token) in requests {
        let reply = app.request_raw(method.clone(), &path, token, oversized.clone()).await;
        reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(reply.problem_type(), "urn:latchkey:problem:payload-too-large", "{method} {path}");
    }
    // Just under the limit, the body is read and judged on its content.
    let under = serde_json::to_vec(&json!({"label": "a".repeat(60 * 1024)})).expect("json");
    let reply = app.request_raw(Method::PATCH, &format!("/v1/connections/{id}"), &org, under).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["label"]);
}

/// After refusing a body unread, the server closes the connection. Unless the 413 says so
/// (`Connection: close`), a keep-alive client sends its next request into the closed connection
/// and gets no answer: reqwest's pool does, intermittently.
#[tokio::test]
async fn a_413_either_says_connection_close_or_keeps_the_connection_usable() {
    let (app, org) = spawn_with_acme().await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let body = serde_json::to_vec(&json!({"label": "a".repeat(65 * 1024)})).expect("json");
    let head = format!(
        "PUT /v1/definitions/acme HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {org}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let response = raw_exchange(&mut socket, &[head.as_bytes(), &body].concat()).await.expect("a response");
    assert!(response.starts_with("http/1.1 413"), "{response}");
    if response.lines().any(|l| l.trim() == "connection: close") {
        return;
    }
    let next = raw_exchange(&mut socket, b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    assert!(
        next.as_deref().is_some_and(|r| r.starts_with("http/1.1 200")),
        "the kept-alive connection was closed after the 413: {next:?}"
    );
}

/// Without a Content-Length the limit still holds: the body is cut off at 64 KiB.
#[tokio::test]
async fn chunked_bodies_over_64_kib_are_413() {
    let (app, org) = spawn_with_acme().await;
    let mut request = format!(
        "PUT /v1/definitions/acme HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {org}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    let body = serde_json::to_vec(&json!({"label": "a".repeat(65 * 1024)})).expect("json");
    for chunk in body.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.expect("connect");
    let response = raw_exchange(&mut socket, &request).await.expect("a response");
    assert!(response.starts_with("http/1.1 413"), "{response}");
    assert!(response.contains("content-type: application/problem+json"), "{response}");
    assert_eq!(app.get_definition(&org, "acme").await.body["version"], 1, "nothing was stored");
}

// ---------------------------------------------------------------------------------------------
// Customers

#[tokio::test]
async fn customers_create_their_own_connections_only() {
    let (app, _org) = spawn_with_acme().await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;

    let reply = app.create_connection(&customer, &json!({"definition": "acme", "values": {"apiKey": "k"}})).await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["customer"], "c-1");
    assert_eq!(reply.body["scope"], "customer");

    app.create_connection(&customer, &acme_connection("c-1", "k")).await.assert_status(StatusCode::CREATED);
    app.create_connection(&customer, &acme_connection("c-2", "k")).await.assert_problem(StatusCode::FORBIDDEN);
    let org_scoped = json!({"definition": "acme", "scope": "organization", "values": {"apiKey": "k"}});
    app.create_connection(&customer, &org_scoped).await.assert_problem(StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn customers_cannot_set_or_see_organization_inputs_nor_see_embedded_ones() {
    let (app, org) = spawn_with_acme().await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;

    let reply = app
        .create_connection(&customer, &json!({"definition": "acme", "values": {"apiKey": "k", "plan": "free"}}))
        .await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["values.plan"]);
    assert!(reply.text.contains("unknown"), "{}", reply.text);

    let body = json!({"definition": "acme", "values": {"apiKey": "k", "sandbox": true}});
    let created = app.create_connection(&customer, &body).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("an id").to_owned();

    let patched = app.patch_connection(&customer, &id, &json!({"label": "mine"}), None).await;
    patched.assert_status(StatusCode::OK);
    let listed = app.list_connections(&customer, "").await;
    let customer_reads =
        [&created.body, &app.get_connection(&customer, &id).await.body, &patched.body, &listed.body["items"][0]];
    for read in customer_reads {
        let names: BTreeSet<&str> = read["values"].as_object().expect("values").keys().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from(["apiKey", "endpoint"]), "a customer sees customer inputs only: {read}");
    }

    let reply = app.patch_connection(&customer, &id, &json!({"values": {"plan": "free"}}), None).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["values.plan"]);

    let org_view = app.get_connection(&org, &id).await;
    assert_eq!(org_view.body["values"]["sandbox"], true);
    assert_eq!(org_view.body["values"]["plan"], "gold");
}

#[tokio::test]
async fn customers_use_but_cannot_change_organization_scoped_connections() {
    let (app, org) = spawn_with_acme().await;
    let body = json!({"definition": "acme", "scope": "organization", "customer": "c-1", "values": {"apiKey": "k"}});
    let id = connect(&app, &org, &body).await;
    let customer = app.token(ORG, Some("c-1"), &["runtime"]).await;

    app.get_connection(&customer, &id).await.assert_status(StatusCode::OK);
    app.patch_connection(&customer, &id, &json!({"label": "mine"}), None).await.assert_problem(StatusCode::FORBIDDEN);
    app.delete_connection(&customer, &id).await.assert_problem(StatusCode::FORBIDDEN);
    app.lookup(&customer, &id, &json!({})).await.assert_status(StatusCode::OK);

    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["label"], Value::Null);
    app.patch_connection(&org, &id, &json!({"label": "managed"}), None).await.assert_status(StatusCode::OK);
    app.delete_connection(&org, &id).await.assert_status(StatusCode::NO_CONTENT);
}

// ---------------------------------------------------------------------------------------------
// Secrets in reads

#[tokio::test]
async fn password_values_and_defaults_read_as_set() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let mut definition = acme_definition();
    definition["inputs"]["fallbackKey"] = json!({"type": "password", "default": "default-secret"});
    let put = app.put_definition(&org, "acme", &definition).await;
    put.assert_status(StatusCode::CREATED);

    let set = json!({"set": true});
    for read in
        [&put.body, &app.get_definition(&org, "acme").await.body, &app.list_definitions(&org).await.body["items"][0]]
    {
        assert_eq!(read["inputs"]["fallbackKey"]["default"], set, "{read}");
    }

    let created = app.create_connection(&org, &acme_connection("c-1", "the-api-key")).await;
    let id = created.body["id"].as_str().expect("an id").to_owned();
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let patched = app.patch_connection(&org, &id, &json!({"label": "x"}), None).await;
    let reads = [
        created.body.clone(),
        patched.body.clone(),
        app.get_connection(&org, &id).await.body,
        app.get_connection(&customer, &id).await.body,
        app.list_connections(&org, "").await.body["items"][0].clone(),
        app.list_connections(&customer, "").await.body["items"][0].clone(),
    ];
    for read in &reads {
        assert_eq!(read["values"]["apiKey"], set, "{read}");
        assert_eq!(read["values"]["fallbackKey"], set, "{read}");
    }
}

/// An input the organization turns into a `password` holds a secret from then on, whatever it
/// held before: reads must stop showing it.
#[tokio::test]
async fn values_of_an_input_that_became_a_password_are_no_longer_shown() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let before = json!({"auth": "custom", "inputs": {"token": {"type": "string"}}});
    app.put_definition(&org, "custom", &before).await.assert_status(StatusCode::CREATED);
    let body = json!({"definition": "custom", "customer": "c-1", "values": {"token": "tok_now_secret"}});
    let id = connect(&app, &org, &body).await;

    let after = json!({"auth": "custom", "inputs": {"token": {"type": "password"}}});
    app.put_definition(&org, "custom", &after).await.assert_status(StatusCode::OK);
    let reads = [
        app.get_connection(&org, &id).await,
        app.list_connections(&org, "").await,
        app.patch_connection(&org, &id, &json!({"label": "touched"}), None).await,
    ];
    for read in &reads {
        assert!(!read.text.contains("tok_now_secret"), "a password value was read: {}", read.text);
    }
    assert_eq!(reads[0].body["values"]["token"], json!({"set": true}));
    // The value was sealed, not lost: the runtime still gets it.
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, &id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["fields"]["token"], "tok_now_secret");
}

/// SPEC section 7: a planted secret appears in no read, no log and no file, and only the runtime
/// lookup returns it.
#[tokio::test]
async fn canary_secrets_never_leak_but_the_lookup_returns_them() {
    let value_canary = format!("sk_live_CANARY_{}", random_hex());
    let default_canary = format!("sk_live_CANARY_{}", random_hex());
    let patched_canary = format!("sk_live_CANARY_{}", random_hex());
    let canaries = [&value_canary, &default_canary, &patched_canary];

    let mut app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let mut definition = acme_definition();
    definition["inputs"]["clientSecret"] =
        json!({"type": "password", "visibility": "organization", "default": default_canary});

    let mut replies = vec![app.put_definition(&org, "acme", &definition).await];
    let created = app.create_connection(&org, &acme_connection("c-1", &value_canary)).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().expect("an id").to_owned();
    replies.push(created);

    let lookup = app.lookup(&runtime, &id, &json!({"min_valid_seconds": 60})).await;
    lookup.assert_status(StatusCode::OK);
    assert_eq!(lookup.body["fields"]["apiKey"], json!(value_canary));
    assert_eq!(lookup.body["fields"]["clientSecret"], json!(default_canary));

    // Errors must not echo what was sent either.
    replies.push(app.patch_connection(&org, &id, &json!({"values": {"retries": value_canary}}), None).await);
    replies.push(app.patch_connection(&org, &id, &json!({"values": {"nope": value_canary}}), None).await);
    // A plain value to prove the scans below do see the stored data.
    let marker = format!("label-{}", random_hex());
    let patch = json!({"label": marker, "values": {"apiKey": patched_canary}});
    replies.push(app.patch_connection(&org, &id, &patch, None).await);
    let lookup = app.lookup(&runtime, &id, &json!({})).await;
    assert_eq!(lookup.body["fields"]["apiKey"], json!(patched_canary));
    replies.push(app.put_definition(&org, "acme", &definition).await);
    for read in [
        app.get_definition(&org, "acme").await,
        app.list_definitions(&org).await,
        app.get_connection(&org, &id).await,
        app.get_connection(&customer, &id).await,
        app.list_connections(&org, "").await,
        app.list_connections(&customer, "").await,
        app.connection_logs(&org, &id).await,
        app.lookup(&runtime, &id, &json!({"action": "report_error", "message": "401 from Acme"})).await,
        app.get_connection(&org, &id).await,
    ] {
        replies.push(read);
    }
    for reply in &replies {
        for canary in canaries {
            assert!(!reply.text.contains(canary.as_str()), "a read leaked a secret: {}", reply.text);
        }
    }

    if !common::aws_backend() {
        // Fresh SQLite writes sit in the write-ahead log: the scan below must cover it. (The aws
        // backend's store is the DynamoDB table, scanned whole.)
        let files = files_under(&app.data_dir);
        assert!(files.iter().any(|f| f.to_string_lossy().ends_with("-wal")), "expected a live WAL: {files:?}");
    }
    assert_no_canary_stored(&app.backend, &canaries, &marker, "while serving").await;

    app.stop().await;
    assert_no_canary_stored(&app.backend, &canaries, &marker, "after stopping").await;
    let logs = app.logs();
    // Latchkey's own request lines prove the capture (the AWS SDK's trace output, which printed
    // whole items, is capped: see telemetry.rs).
    assert!(logs.contains("/v1/connections/{id}"), "the logs were captured:\n{logs}");
    for canary in canaries {
        assert!(!logs.contains(canary.as_str()), "the logs leaked a secret:\n{logs}");
    }
}

/// Asserts that no canary is in what `backend` stored (the data directory's files, or the
/// DynamoDB table's items), and that `marker`, a plain value, is: proof the scan sees the data.
async fn assert_no_canary_stored(backend: &Backend, canaries: &[&String], marker: &str, when: &str) {
    let stored = backend.stored_data().await;
    for (place, bytes) in &stored {
        for canary in canaries {
            assert!(!contains_bytes(bytes, canary.as_bytes()), "{place} holds a secret in clear ({when})");
        }
    }
    let holds_marker = stored.iter().any(|(_, bytes)| contains_bytes(bytes, marker.as_bytes()));
    let places: Vec<&str> = stored.iter().map(|(place, _)| place.as_str()).collect();
    assert!(holds_marker, "the scan does not see the stored connection ({when}); it read {places:?}");
}

// ---------------------------------------------------------------------------------------------
// Updates, If-Match, delete

#[tokio::test]
async fn patch_with_a_stale_if_match_is_412_and_changes_nothing() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;

    let reply = app.patch_connection(&org, &id, &json!({"label": "late"}), Some("\"7\"")).await;
    reply.assert_problem(StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:precondition-failed");
    app.patch_connection(&org, &id, &json!({"label": "late"}), Some("garbage"))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["version"], 1);
    assert_eq!(read.body["label"], Value::Null);

    let reply = app.patch_connection(&org, &id, &json!({"label": "first"}), Some("\"1\"")).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    assert_eq!(reply.body["label"], "first");

    app.patch_connection(&org, &id, &json!({"label": "again"}), Some("\"1\""))
        .await
        .assert_problem(StatusCode::PRECONDITION_FAILED);
    let reply = app.patch_connection(&org, &id, &json!({"label": "no precondition"}), None).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["version"], 3);
}

#[tokio::test]
async fn concurrent_patches_with_the_same_if_match_let_exactly_one_win() {
    const WRITERS: usize = 8;
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let etag = app.get_connection(&org, &id).await.header("etag").expect("an ETag").to_owned();

    let mut writers = tokio::task::JoinSet::new();
    for n in 0..WRITERS {
        let (api, org, id, etag) = (app.api.clone(), org.clone(), id.clone(), etag.clone());
        writers.spawn(async move {
            let body = json!({"label": format!("writer {n}"), "values": {"retries": n}});
            (n, api.patch_connection(&org, &id, &body, Some(&etag)).await)
        });
    }
    let mut winners = Vec::new();
    let mut losers = 0;
    while let Some(joined) = writers.join_next().await {
        let (n, reply) = joined.expect("a writer task");
        match reply.status {
            StatusCode::OK => winners.push(n),
            StatusCode::PRECONDITION_FAILED => losers += 1,
            other => panic!("writer {n} got {other}: {}", reply.text),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(losers, WRITERS - 1);

    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["version"], 2);
    assert_eq!(read.body["label"], format!("writer {}", winners[0]));
    assert_eq!(read.body["values"]["retries"], winners[0]);
}

#[tokio::test]
async fn deleted_connection_is_gone_everywhere() {
    let (app, org) = spawn_with_acme().await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let kept = connect(&app, &org, &acme_connection("c-1", "k")).await;

    app.delete_connection(&org, &id).await.assert_status(StatusCode::NO_CONTENT);
    app.get_connection(&org, &id).await.assert_problem(StatusCode::NOT_FOUND);
    app.patch_connection(&org, &id, &json!({"label": "x"}), None).await.assert_problem(StatusCode::NOT_FOUND);
    app.delete_connection(&org, &id).await.assert_problem(StatusCode::NOT_FOUND);
    app.connection_logs(&org, &id).await.assert_problem(StatusCode::NOT_FOUND);
    app.lookup(&runtime, &id, &json!({})).await.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(item_ids(&app.list_connections(&org, "").await), vec![kept]);
}

// ---------------------------------------------------------------------------------------------
// Listing

#[tokio::test]
async fn paging_with_limit_and_cursor_visits_each_connection_once() {
    let (app, org) = spawn_with_acme().await;
    let mut created = BTreeSet::new();
    for n in 0..7 {
        created.insert(connect(&app, &org, &acme_connection(&format!("c-{}", n % 2), "k")).await);
    }

    let mut seen = Vec::new();
    let mut page_sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=3&cursor={c}"),
            None => "limit=3".to_owned(),
        };
        let page = app.list_connections(&org, &query).await;
        page.assert_status(StatusCode::OK);
        let ids = item_ids(&page);
        page_sizes.push(ids.len());
        seen.extend(ids);
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => {
                assert_eq!(page.body["next_cursor"], Value::Null);
                break;
            }
        }
        assert!(page_sizes.len() <= 7, "paging does not end");
    }
    assert_eq!(page_sizes, [3, 3, 1]);
    assert_eq!(seen.len(), created.len(), "a connection was visited twice: {seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), created);

    for (query, field) in [("limit=0", "limit"), ("limit=many", "limit"), ("cursor=abc", "cursor")] {
        let reply = app.list_connections(&org, query).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), [field], "{query}");
    }
}

#[tokio::test]
async fn listing_filters_by_customer_definition_and_status() {
    let (app, org) = spawn_with_acme().await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let beta = json!({"auth": "basic", "inputs": {"username": {"type": "string"}, "password": {"type": "password"}}});
    app.put_definition(&org, "beta", &beta).await.assert_status(StatusCode::CREATED);

    let a1 = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let a2 = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let a3 = connect(&app, &org, &acme_connection("c-2", "k")).await;
    let b1 = connect(&app, &org, &json!({"definition": "beta", "customer": "c-1", "values": {}})).await;
    app.lookup(&runtime, &a2, &json!({})).await.assert_status(StatusCode::OK);

    let ids = |reply: Reply| item_ids(&reply).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        ids(app.list_connections(&org, "customer=c-1").await),
        BTreeSet::from([a1.clone(), a2.clone(), b1.clone()])
    );
    assert_eq!(ids(app.list_connections(&org, "definition=beta").await), BTreeSet::from([b1.clone()]));
    assert_eq!(ids(app.list_connections(&org, "status=active").await), BTreeSet::from([a2.clone()]));
    assert_eq!(
        ids(app.list_connections(&org, "customer=c-1&definition=acme&status=configured").await),
        BTreeSet::from([a1.clone()])
    );
    assert_eq!(ids(app.list_connections(&org, "").await), BTreeSet::from([a1, a2, a3, b1]));

    let reply = app.list_connections(&org, "status=green").await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["status"]);
}

// ---------------------------------------------------------------------------------------------
// Tenant isolation

#[tokio::test]
async fn other_tenants_get_404_on_every_connection_route() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let before = app.get_connection(&org, &id).await;

    let intruders = [
        ("another organization", app.token(OTHER_ORG, None, &["runtime"]).await),
        ("the same customer id in another organization", app.token(OTHER_ORG, Some("c-1"), &["runtime"]).await),
        ("another customer", app.token(ORG, Some("c-2"), &["runtime"]).await),
    ];
    for (who, token) in &intruders {
        // Indistinguishable from a connection that does not exist.
        let absent = app.get_connection(token, UNKNOWN_ID).await;
        absent.assert_problem(StatusCode::NOT_FOUND);
        let replies = [
            ("GET", app.get_connection(token, &id).await),
            ("PATCH", app.patch_connection(token, &id, &json!({"label": "mine now"}), None).await),
            ("PATCH If-Match", app.patch_connection(token, &id, &json!({"label": "x"}), Some("\"1\"")).await),
            ("DELETE", app.delete_connection(token, &id).await),
            ("logs", app.connection_logs(token, &id).await),
            ("token", app.lookup(token, &id, &json!({})).await),
            ("report_error", app.lookup(token, &id, &json!({"action": "report_error", "message": "x"})).await),
        ];
        for (route, reply) in replies {
            reply.assert_problem(StatusCode::NOT_FOUND);
            assert_eq!(reply.body, absent.body, "{who}, {route}");
        }
        assert_eq!(app.list_connections(token, "").await.body["items"], json!([]), "{who}");
    }

    let after = app.get_connection(&org, &id).await;
    assert_eq!(after.body, before.body, "nothing changed");
    assert_eq!(log_types(&app.connection_logs(&org, &id).await), ["created"]);
}

#[tokio::test]
async fn customers_list_only_their_own_connections() {
    let (app, org) = spawn_with_acme().await;
    let c1 = app.token(ORG, Some("c-1"), &[]).await;
    let c2 = app.token(ORG, Some("c-2"), &[]).await;
    let mine = connect(&app, &c1, &json!({"definition": "acme", "values": {"apiKey": "k"}})).await;
    let theirs = connect(&app, &c2, &json!({"definition": "acme", "values": {"apiKey": "k"}})).await;
    let by_org = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let unowned =
        connect(&app, &org, &json!({"definition": "acme", "scope": "organization", "values": {"apiKey": "k"}})).await;

    let ids = |reply: Reply| item_ids(&reply).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(ids(app.list_connections(&c1, "").await), BTreeSet::from([mine.clone(), by_org.clone()]));
    assert_eq!(ids(app.list_connections(&c2, "").await), BTreeSet::from([theirs.clone()]));
    assert_eq!(ids(app.list_connections(&c2, "customer=c-1").await), BTreeSet::new());
    assert_eq!(ids(app.list_connections(&org, "").await), BTreeSet::from([mine, theirs, by_org, unowned]));
}

// ---------------------------------------------------------------------------------------------
// Token lookup, error reports and logs (section 5)

#[tokio::test]
async fn lookup_needs_the_runtime_role() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    for token in [org.clone(), app.token(ORG, Some("c-1"), &[]).await] {
        let reply = app.lookup(&token, &id, &json!({})).await;
        reply.assert_problem(StatusCode::FORBIDDEN);
        assert_eq!(reply.problem_type(), "urn:latchkey:problem:forbidden");
    }
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "configured", "a refused lookup is no use");
}

#[tokio::test]
async fn lookup_returns_decrypted_fields_and_marks_the_connection_active() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "sk_test_123")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;

    let reply = app.lookup(&runtime, &id, &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(
        reply.body,
        json!({
            "connection_id": id,
            "definition": "acme",
            "status": "active",
            "fields": {"apiKey": "sk_test_123", "endpoint": "https://api.acme.com", "plan": "gold"},
            "token": null
        })
    );
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "active");

    // Without a body, with min_valid_seconds, and as the customer's own runtime.
    let empty = app.client.post(app.url(&format!("/v1/connections/{id}/token"))).bearer_auth(&runtime).send().await;
    assert_eq!(empty.expect("send").status(), StatusCode::OK);
    app.lookup(&runtime, &id, &json!({"min_valid_seconds": 60})).await.assert_status(StatusCode::OK);
    let customer_runtime = app.token(ORG, Some("c-1"), &["runtime"]).await;
    let reply = app.lookup(&customer_runtime, &id, &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["fields"]["apiKey"], "sk_test_123");
}

#[tokio::test]
async fn lookup_request_is_validated() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "k")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    for (body, field) in [
        (json!({"org": OTHER_ORG}), "org"),
        (json!({"connection_id": UNKNOWN_ID}), "connection_id"),
        (json!({"action": "explode"}), "action"),
        (json!({"action": "report_error"}), "message"),
        (json!({"action": "report_error", "message": "   "}), "message"),
    ] {
        let reply = app.lookup(&runtime, &id, &body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), [field], "{body}");
    }
    app.lookup(&runtime, UNKNOWN_ID, &json!({})).await.assert_problem(StatusCode::NOT_FOUND);
    app.lookup(&runtime, "not-an-id", &json!({})).await.assert_problem(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn reported_error_turns_the_connection_red_until_its_values_are_patched() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "old-key")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &id, &json!({})).await.assert_status(StatusCode::OK);

    let report = json!({"action": "report_error", "message": "Acme answered 401"});
    let reply = app.lookup(&runtime, &id, &report).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["status"], "error");

    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["status"], "error");
    let error = &read.body["error"];
    assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()), "{error}");
    assert_eq!(error["message"], "Acme answered 401");
    assert!(error["at"].is_string(), "{error}");

    let refused = app.lookup(&runtime, &id, &json!({})).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:connection-error");
    assert!(!refused.text.contains("old-key"));

    let fixed = app.patch_connection(&org, &id, &json!({"values": {"apiKey": "new-key"}}), None).await;
    fixed.assert_status(StatusCode::OK);
    assert_eq!(fixed.body["status"], "configured");
    assert_eq!(fixed.body["error"], Value::Null);

    let reply = app.lookup(&runtime, &id, &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["status"], "active");
    assert_eq!(reply.body["fields"]["apiKey"], "new-key");
}

#[tokio::test]
async fn lookup_of_a_pending_oauth_connection_fails_with_the_pending_problem() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let oauth = json!({
        "auth": "oauth2_authorization_code",
        "inputs": {
            "authorizeUrl": {"type": "url", "default": "https://auth.example.com/authorize"},
            "tokenUrl": {"type": "url", "default": "https://auth.example.com/token"},
            "clientId": {"type": "string", "default": "client-1"}
        }
    });
    app.put_definition(&org, "slackish", &oauth).await.assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "slackish", "customer": "c-1"})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "pending");
    let id = created.body["id"].as_str().expect("an id");

    let runtime = app.token(ORG, None, &["runtime"]).await;
    let reply = app.lookup(&runtime, id, &json!({})).await;
    reply.assert_problem(StatusCode::CONFLICT);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:connection-pending");

    // Credentials never handed out cannot have failed: a report is refused and changes nothing.
    let report = app.lookup(&runtime, id, &json!({"action": "report_error", "message": "401"})).await;
    assert_eq!(report.problem_type(), "urn:latchkey:problem:connection-pending");
    assert_eq!(app.get_connection(&org, id).await.body["status"], "pending");
}

/// The OAuth settings decide where the client secret goes: a customer must not be able to point
/// `tokenUrl` elsewhere, even when the organization declared the input without a visibility.
#[tokio::test]
async fn customers_cannot_set_declared_oauth_settings() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let oauth = json!({
        "auth": "oauth2_authorization_code",
        "inputs": {
            "authorizeUrl": {"type": "url", "default": "https://auth.example.com/authorize"},
            "tokenUrl": {"type": "url", "default": "https://auth.example.com/token"},
            "clientId": {"type": "string", "default": "client-1"}
        }
    });
    let def = app.put_definition(&org, "slackish", &oauth).await;
    def.assert_status(StatusCode::CREATED);
    assert_eq!(def.body["inputs"]["tokenUrl"]["visibility"], "organization");
    let evil = json!({"definition": "slackish", "values": {"tokenUrl": "https://evil.example/token"}});
    let reply = app.create_connection(&customer, &evil).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), ["values.tokenUrl"]);
}

#[tokio::test]
async fn logs_show_the_history_newest_first() {
    let (app, org) = spawn_with_acme().await;
    let id = connect(&app, &org, &acme_connection("c-1", "sk_log_secret")).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;

    assert_eq!(log_types(&app.connection_logs(&org, &id).await), ["created"]);
    app.patch_connection(&org, &id, &json!({"values": {"retries": 2}}), None).await.assert_status(StatusCode::OK);
    app.lookup(&runtime, &id, &json!({})).await.assert_status(StatusCode::OK);
    app.lookup(&runtime, &id, &json!({"action": "report_error", "message": "timeout"}))
        .await
        .assert_status(StatusCode::OK);

    let logs = app.connection_logs(&org, &id).await;
    logs.assert_status(StatusCode::OK);
    assert_eq!(log_types(&logs), ["error_reported", "used", "updated", "created"]);
    for entry in logs.body.as_array().expect("a JSON array") {
        assert!(entry["at"].is_string() && entry["message"].is_string(), "{entry}");
    }
    assert!(!logs.text.contains("sk_log_secret"));

    let customer = app.token(ORG, Some("c-1"), &[]).await;
    assert_eq!(app.connection_logs(&customer, &id).await.body, logs.body, "the customer sees its history");
}

// ---------------------------------------------------------------------------------------------
// Durability

/// Creates a definition and a connection holding `secret`; returns the connection id.
async fn seed(app: &TestApp, org: &str, secret: &str) -> String {
    let mut definition = acme_definition();
    definition["inputs"]["clientSecret"] = json!({"type": "password", "visibility": "organization", "default": secret});
    app.put_definition(org, "acme", &definition).await.assert_status(StatusCode::CREATED);
    connect(app, org, &acme_connection("c-1", secret)).await
}

/// On the aws backend: a new server on the same table and KMS key.
#[tokio::test]
async fn data_survives_a_restart_on_the_same_data_dir() {
    let backend = Backend::fresh().await;
    let secret = random_secret();
    let canary = format!("sk_live_CANARY_{}", random_hex());

    let mut first = TestApp::spawn_with(&backend, &secret).await;
    let org = first.token(ORG, None, &[]).await;
    let runtime = first.token(ORG, None, &["runtime"]).await;
    let id = seed(&first, &org, &canary).await;
    first.patch_connection(&org, &id, &json!({"label": "before restart"}), None).await.assert_status(StatusCode::OK);
    let definition = first.get_definition(&org, "acme").await.body;
    let connection = first.get_connection(&org, &id).await.body;
    let status = first.stop().await.expect("the server exited");
    assert!(status.success(), "exit status {status}");

    let second = TestApp::spawn_with(&backend, &secret).await;
    assert_eq!(second.get_definition(&org, "acme").await.body, definition);
    assert_eq!(second.get_connection(&org, &id).await.body, connection);
    let reply = second.lookup(&runtime, &id, &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["fields"]["apiKey"], json!(canary));
    assert_eq!(reply.body["fields"]["clientSecret"], json!(canary));
}

#[tokio::test]
async fn data_survives_a_killed_server() {
    let backend = Backend::fresh().await;
    let secret = random_secret();

    let mut first = TestApp::spawn_with(&backend, &secret).await;
    let org = first.token(ORG, None, &[]).await;
    let runtime = first.token(ORG, None, &["runtime"]).await;
    let id = seed(&first, &org, "sk_killed").await;
    first
        .patch_connection(&org, &id, &json!({"values": {"apiKey": "sk_latest"}}), None)
        .await
        .assert_status(StatusCode::OK);
    first.kill().await;

    let second = TestApp::spawn_with(&backend, &secret).await;
    assert_eq!(second.get_connection(&org, &id).await.body["version"], 2);
    let reply = second.lookup(&runtime, &id, &json!({})).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["fields"]["apiKey"], "sk_latest");
    assert_eq!(log_types(&second.connection_logs(&org, &id).await), ["used", "updated", "created"]);
}

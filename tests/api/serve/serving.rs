//! Serving and authentication (SPEC section 3): health, the OpenAPI document, the binary's
//! listening and stopping, bearer tokens, and data that survives restarts and crashes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ORG, OTHER_ORG, acme_connection, acme_definition, connect, log_types, spawn_with_acme};
use crate::harness::{Backend, TestApp, mint_token, random_hex, random_secret};

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
    // About the binary's signal handling: the binary under either transport.
    let mut app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    assert!(app.address.starts_with("http://127.0.0.1:"));
    let status = app.stop().await.expect("the server exited");
    assert!(status.success(), "exit status {status}");
    assert!(app.logs().contains("latchkey serve stopped"), "logs:\n{}", app.logs());
}

#[tokio::test]
async fn master_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    // About the embedded backend's local master key (the aws backend's key is in KMS): the
    // embedded backend under either backend setting.
    let app = TestApp::spawn_with(&Backend::fresh_embedded(), &random_secret()).await;
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

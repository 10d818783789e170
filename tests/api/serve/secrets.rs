//! Secrets in reads: password values never read back, canary secrets never stored in clear or
//! logged, but returned by the lookup.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ORG, acme_connection, acme_definition, connect};
use crate::harness::{Backend, TestApp, aws_backend, contains_bytes, files_under, random_hex};

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

    if !aws_backend() {
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

/// The secrets of the other ways to authenticate: a service account's private key (JWT bearer,
/// set on the connection) and the device code an RFC 8628 provider issued (sealed on the
/// connection, sent at each poll) appear in no read, no log line and no stored byte in clear.
#[tokio::test]
async fn service_account_keys_and_device_codes_never_leak() {
    use std::time::Duration;

    use crate::harness::{eventually, random_secret};
    use support::oauth::OidcServer;

    const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
    let (private, public) = crate::jwt_bearer::key_pair("RS256");
    // A line of the key's base64 body: what a leak would show, whatever escaped its newlines.
    let key_canary = private.lines().nth(2).expect("a PEM body").to_owned();
    let mut app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")],
    )
    .await;
    let oidc = OidcServer::start(json!({
        "redirect_uris": ["http://127.0.0.1:9/unused"], "device_flow": true, "device_interval": 1,
        "jwt_bearer": {"issuer": "svc@acme.example", "public_keys": {"k-1": public}}}))
    .await;
    let org = app.token(ORG, None, &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let client = |extra: Value| {
        let mut inputs = json!({
            "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
            "clientId": {"type": "string", "default": oidc.client.client_id},
            "clientSecret": {"type": "password", "default": oidc.client.client_secret},
            "scopes": {"type": "string", "default": "api:read"}});
        inputs.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        inputs
    };
    let mut replies = Vec::new();

    // A service account whose key is the connection's value.
    let svc = json!({"auth": "oauth2_jwt_bearer", "inputs": client(json!({
        "issuer": {"type": "string", "default": "svc@acme.example"},
        "privateKey": {"type": "password"},
        "algorithm": {"type": "string", "default": "RS256"},
        "keyId": {"type": "string", "default": "k-1"}}))});
    replies.push(app.put_definition(&org, "svc", &svc).await);
    let marker = format!("label-{}", random_hex());
    let body = json!({"definition": "svc", "customer": "c-1", "label": marker, "values": {"privateKey": private}});
    let created = app.create_connection(&org, &body).await;
    assert_eq!(created.body["status"], "configured", "{}", created.text);
    let svc_id = created.body["id"].as_str().unwrap().to_owned();
    replies.push(created);
    let found = app.lookup(&runtime, &svc_id, &json!({"min_valid_seconds": 60})).await;
    found.assert_status(StatusCode::OK);
    replies.push(found);

    // A device authorization, polled while pending and then approved.
    let device = json!({"auth": "oauth2_device_code", "inputs": client(json!({
        "deviceAuthorizationUrl": {"type": "url", "default": oidc.device_authorization_endpoint()}}))});
    replies.push(app.put_definition(&org, "device", &device).await);
    let created = app.create_connection(&org, &json!({"definition": "device", "customer": "c-2"})).await;
    let device_id = created.body["id"].as_str().unwrap().to_owned();
    replies.push(created);
    let started = app.request(Method::POST, &format!("/v1/connections/{device_id}/authorize"), Some(&org), None).await;
    started.assert_status(StatusCode::OK);
    let user_code = started.body["user_code"].as_str().unwrap().to_owned();
    replies.push(started);
    let events = || async { oidc.stats().await["events"].as_array().unwrap().clone() };
    let device_code = events().await.iter().find_map(|e| e["device_code"].as_str().map(str::to_owned));
    let device_code = device_code.expect("the provider's device authorization event names the code");
    eventually(Duration::from_secs(20), "a poll while pending", || async {
        events().await.iter().any(|e| e["grant_type"] == DEVICE_GRANT)
    })
    .await;
    oidc.approve_device(&user_code).await;
    eventually(Duration::from_secs(30), "the device connection configured", || async {
        app.get_connection(&org, &device_id).await.body["status"] == "configured"
    })
    .await;

    for id in [&svc_id, &device_id] {
        replies.push(app.get_connection(&org, id).await);
        replies.push(app.connection_logs(&org, id).await);
        replies.push(app.lookup(&runtime, id, &json!({})).await);
    }
    replies.push(app.list_connections(&org, "").await);
    replies.push(app.list_definitions(&org).await);
    let canaries = [&key_canary, &device_code];
    for reply in &replies {
        for canary in canaries {
            assert!(!reply.text.contains(canary.as_str()), "a reply leaked a secret: {}", reply.text);
        }
    }
    assert_no_canary_stored(&app.backend, &canaries, &marker, "while serving").await;
    app.stop().await;
    assert_no_canary_stored(&app.backend, &canaries, &marker, "after stopping").await;
    let logs = app.logs();
    assert!(logs.contains("/v1/connections/{id}"), "the logs were captured:\n{logs}");
    for canary in canaries {
        assert!(!logs.contains(canary.as_str()), "the logs leaked a secret:\n{logs}");
    }
}

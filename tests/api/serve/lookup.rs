//! The token lookup (SPEC section 5), error reports and connection logs.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ORG, OTHER_ORG, UNKNOWN_ID, acme_connection, connect, log_types, spawn_with_acme};
use crate::harness::TestApp;

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

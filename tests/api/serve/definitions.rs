//! Definitions: create, replace, delete, who may manage them, and validation.

use reqwest::StatusCode;
use serde_json::json;

use super::{ORG, OTHER_ORG, acme_connection, acme_definition, connect, spawn_with_acme};
use crate::harness::TestApp;

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

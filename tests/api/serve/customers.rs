//! Customers and tenants: what a customer user may create, set and see, and that other
//! organizations get 404 everywhere.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{ORG, OTHER_ORG, UNKNOWN_ID, acme_connection, connect, item_ids, log_types, spawn_with_acme};
use crate::harness::Reply;

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

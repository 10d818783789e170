//! Connection tags (SPEC section 10): set on create, merged by PATCH (`null` removes one),
//! validated naming `tags.<key>`, shown in reads and events, and filtered on by
//! `GET /v1/connections?tag=key:value` (repeatable, every one must match) with the other
//! filters and paging. `tests/run.sh` runs this module on the aws backend too.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::moto;

use crate::harness::{Backend, TestApp, random_hex, random_secret};

const ORG: &str = "acme";

async fn setup() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&org, "acme-api", &def).await.assert_status(StatusCode::CREATED);
    (app, org)
}

/// Creates a connection of `customer` with `tags`; its id.
async fn create(app: &TestApp, token: &str, customer: &str, tags: Value) -> String {
    let body = json!({"definition": "acme-api", "customer": customer, "values": {"apiKey": "k"}, "tags": tags});
    let created = app.create_connection(token, &body).await;
    created.assert_status(StatusCode::CREATED);
    created.body["id"].as_str().unwrap().to_owned()
}

fn ids(of: &[&String]) -> Vec<String> {
    of.iter().map(|s| (*s).clone()).collect()
}

/// Every id the listing with `query` gives, following cursors; asserts that no page with a
/// cursor is short.
async fn list_all(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{query}&limit={limit}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = app.list_connections(token, &q).await;
        page.assert_status(StatusCode::OK);
        let items = page.body["items"].as_array().unwrap();
        ids.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), limit, "a page with a cursor is full: {}", page.text);
                cursor = Some(next.to_owned());
            }
            None => return ids,
        }
    }
}

#[tokio::test]
async fn tags_are_set_on_create_shown_in_reads_and_merged_by_patch() {
    let (app, org) = setup().await;
    let id = create(&app, &org, "c-1", json!({"env": "prod", "team": "billing", "cost.center": "4:2"})).await;
    let read = app.get_connection(&org, &id).await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body["tags"], json!({"env": "prod", "team": "billing", "cost.center": "4:2"}));

    // PATCH merges like `values`: a string sets, null removes, the rest stays.
    let patched = app.patch_connection(&org, &id, &json!({"tags": {"team": null, "tier": "gold"}}), None).await;
    patched.assert_status(StatusCode::OK);
    assert_eq!(patched.body["tags"], json!({"env": "prod", "tier": "gold", "cost.center": "4:2"}));
    let relabeled = app.patch_connection(&org, &id, &json!({"label": "renamed"}), None).await;
    assert_eq!(relabeled.body["tags"], patched.body["tags"], "a PATCH without tags keeps them");
    let listed = app.list_connections(&org, "customer=c-1").await;
    assert_eq!(listed.body["items"][0]["tags"], patched.body["tags"]);

    // Removing every tag leaves `{}`; a connection created without tags has `{}` too.
    let cleared =
        app.patch_connection(&org, &id, &json!({"tags": {"env": null, "tier": null, "cost.center": null}}), None).await;
    assert_eq!(cleared.body["tags"], json!({}));
    let plain = app
        .create_connection(
            &org,
            &json!({"definition": "acme-api", "customer": "c-1",
        "values": {"apiKey": "k"}}),
        )
        .await;
    assert_eq!(plain.body["tags"], json!({}), "{}", plain.text);
}

#[tokio::test]
async fn bad_tags_are_422_naming_each_tag_and_change_nothing() {
    let (app, org) = setup().await;
    let bad = json!({"Env": "x", "ok": "fine", "n": 3, "long": "v".repeat(257), "a b": "x"});
    let refused = app
        .create_connection(
            &org,
            &json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"},
            "tags": bad}),
        )
        .await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["tags.Env", "tags.a b", "tags.long", "tags.n"]);
    let many: serde_json::Map<String, Value> = (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let refused = app
        .create_connection(
            &org,
            &json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"},
            "tags": many}),
        )
        .await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["tags"]);
    let not_an_object = app
        .create_connection(
            &org,
            &json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"},
            "tags": ["env"]}),
        )
        .await;
    assert_eq!(not_an_object.error_fields(), ["tags"]);
    assert!(list_all(&app, &org, "customer=c-1", 10).await.is_empty(), "nothing was created");

    // Twenty is the most after the merge: removing one makes room for another.
    let twenty: serde_json::Map<String, Value> = (0..20).map(|i| (format!("k{i}"), json!("v"))).collect();
    let id = create(&app, &org, "c-1", Value::Object(twenty)).await;
    let over = app.patch_connection(&org, &id, &json!({"tags": {"k20": "v"}}), None).await;
    over.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(over.error_fields(), ["tags"]);
    let bad_patch = app.patch_connection(&org, &id, &json!({"tags": {"UPPER": null, "k1": 1}}), None).await;
    assert_eq!(bad_patch.error_fields(), ["tags.UPPER", "tags.k1"]);
    let read = app.get_connection(&org, &id).await;
    assert_eq!((read.body["version"].as_u64(), read.body["tags"].as_object().unwrap().len()), (Some(1), 20));
    let swapped = app.patch_connection(&org, &id, &json!({"tags": {"k0": null, "k20": "v"}}), None).await;
    swapped.assert_status(StatusCode::OK);
    assert!(swapped.body["tags"]["k20"].is_string() && swapped.body["tags"]["k0"].is_null());
}

#[tokio::test]
async fn listing_by_tag_needs_every_tag_and_pages_with_the_other_filters() {
    let (app, org) = setup().await;
    // Oldest first; then a dozen newer ones that match nothing, which a page must read past.
    let a = create(&app, &org, "c-1", json!({"env": "prod", "team": "a b:c"})).await;
    let b = create(&app, &org, "c-2", json!({"env": "prod", "team": "a b:c"})).await;
    let c = create(&app, &org, "c-1", json!({"env": "prod"})).await;
    let d = create(&app, &org, "c-1", json!({"env": "dev", "team": "a b:c"})).await;
    for i in 0..12 {
        create(&app, &org, "c-1", json!({"n": i.to_string()})).await;
    }
    let env_prod = "tag=env%3Aprod";
    let both = "tag=env%3Aprod&tag=team%3Aa%20b%3Ac";
    for limit in [1, 2, 50] {
        assert_eq!(list_all(&app, &org, env_prod, limit).await, ids(&[&c, &b, &a]), "limit {limit}");
        assert_eq!(list_all(&app, &org, both, limit).await, ids(&[&b, &a]), "every tag must match, limit {limit}");
    }
    assert_eq!(list_all(&app, &org, "tag=team%3Aa%20b%3Ac", 1).await, ids(&[&d, &b, &a]));
    assert_eq!(list_all(&app, &org, &format!("{both}&customer=c-1"), 1).await, ids(&[&a]), "with the customer");
    assert_eq!(list_all(&app, &org, &format!("{env_prod}&definition=acme-api"), 1).await, ids(&[&c, &b, &a]));
    assert!(list_all(&app, &org, &format!("{env_prod}&status=error"), 1).await.is_empty(), "with the status");
    assert!(list_all(&app, &org, "tag=env%3APROD", 1).await.is_empty(), "values match exactly");
    assert!(list_all(&app, &org, "tag=env%3A", 1).await.is_empty(), "an empty value is not any value");

    // Customers filter only among their own.
    let customer = app.token(ORG, Some("c-2"), &[]).await;
    assert_eq!(list_all(&app, &customer, env_prod, 1).await, ids(&[&b]));
    // A tag change moves a connection out of the filter.
    app.patch_connection(&org, &c, &json!({"tags": {"env": "staging"}}), None).await.assert_status(StatusCode::OK);
    assert_eq!(list_all(&app, &org, env_prod, 1).await, ids(&[&b, &a]));
}

#[tokio::test]
async fn a_malformed_tag_parameter_is_a_validation_problem_naming_tag() {
    let (app, org) = setup().await;
    for query in ["tag=env", "tag=Env%3Aprod", "tag=%3Aprod", "tag=env%3Aprod&tag=bad", "tag="] {
        let refused = app.list_connections(&org, query).await;
        refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.error_fields(), ["tag"], "{query}: {}", refused.text);
    }
    let long = format!("tag=env%3A{}", "v".repeat(257));
    assert_eq!(app.list_connections(&org, &long).await.error_fields(), ["tag"]);
}

/// Every connection event's detail carries the tags as they are after the change: on the aws
/// backend, read from EventBridge through an SQS queue (whatever `LATCHKEY_TEST_BACKEND` says).
#[tokio::test]
async fn connection_events_carry_the_tags() {
    let backend = Backend::fresh_aws().await;
    let endpoint = backend.aws().unwrap().endpoint.clone();
    let config = moto::sdk_config_for(&endpoint).await;
    // An organization of its own: the rule on the shared `default` bus matches only its events.
    let org_id = format!("acme-{}", &random_hex()[..12]);
    let (queue, _rule) = moto::sqs_queue_for_org_events(&config, "default", &org_id).await;
    let app = TestApp::spawn_with(&backend, &random_secret()).await;
    let org = app.token(&org_id, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&org, "acme-api", &def).await.assert_status(StatusCode::CREATED);

    let id = create(&app, &org, "c-1", json!({"env": "prod"})).await;
    app.patch_connection(&org, &id, &json!({"tags": {"env": null, "team": "a"}}), None)
        .await
        .assert_status(StatusCode::OK);
    app.delete_connection(&org, &id).await.assert_status(StatusCode::NO_CONTENT);

    // Drain until the three connection events are in, or 20 s have passed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut mine: Vec<Value> = Vec::new();
    while mine.len() < 3 && Instant::now() < deadline {
        let got = moto::receive_all(&config, &queue, 1).await;
        mine.extend(got.into_iter().filter(|e| e["detail"]["connection_id"] == id.as_str()));
    }
    let seen: Vec<(String, Value)> =
        mine.iter().map(|e| (e["detail-type"].as_str().unwrap().to_owned(), e["detail"]["tags"].clone())).collect();
    let kinds: BTreeSet<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains("Connection Created") && kinds.contains("Connection Updated"), "{seen:?}");
    for (kind, tags) in &seen {
        let expected = if kind == "Connection Created" { json!({"env": "prod"}) } else { json!({"team": "a"}) };
        assert_eq!(tags, &expected, "{kind}");
    }
    assert!(kinds.contains("Connection Deleted"), "{seen:?}");
}

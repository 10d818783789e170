//! Connections: create, read and validate; updates with If-Match, delete; listing and paging.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ORG, acme_connection, connect, item_ids, spawn_with_acme};
use crate::harness::{Reply, raw_exchange};

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

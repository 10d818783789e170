//! Isolation and secrecy through `latchkey serve` (issue 12, "What to build beyond the fixes"):
//!
//! - Every operation of the OpenAPI document the server itself serves (`GET /openapi.json`, read
//!   at run time: a route added to the document is walked without editing this file) is called
//!   by principals foreign to a planted API-key connection, a planted authorized OAuth connection
//!   and their definitions: another customer, another organization, and the runtime principals of
//!   both. None of them gets a 2xx about the planted data, sees a secret or a planted label, tells
//!   a planted id from one that never existed, or changes anything: the owner's reads, the
//!   connections' logs and the lookups are the same afterwards, and the provider got no call.
//! - A canary in every kind of secret Latchkey holds (API key, basic password, client secret,
//!   access and refresh tokens, PKCE verifier; and the single-use authorization code and state)
//!   never appears in the server's log at `RUST_LOG=trace`, in an error body, a read, a redirect,
//!   or a connection's log, through create, read, list, lookup, refresh, a refused refresh,
//!   `report_error`, disconnect (with a refused revocation) and delete.
//!
//! They run through the binary on either backend (`LATCHKEY_TEST_BACKEND=aws` for moto); the
//! in-process transport serves no OAuth redirect URI (the harness sets no public URL), so there
//! they return at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::{Backend, Reply, TestApp, eventually, random_hex, random_secret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::quirks::{QuirkServer, query_param};

const ORG: &str = "acme";
/// The customer the planted connections belong to.
const OWNER: &str = "c-1";
const SUCCESS: &str = "http://localhost:3000/connected";
const FAILURE: &str = "http://localhost:3000/failed";

/// Operations any authenticated caller may use whatever its organization: they hold no
/// organization's data. (Public operations are those the document marks `security: []`.)
const ORG_INDEPENDENT: &[&str] = &["/v1/providers"];

/// A browser that does not follow redirects, so that the test sees where Latchkey sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// A code-exchange or refresh answer carrying exactly these tokens.
fn token_answer(access: &str, refresh: &str) -> Value {
    json!({"json": {"access_token": access, "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": refresh, "scope": "read"}})
}

/// An authorization-code definition against `q`, every app setting the organization's.
fn oauth_definition(q: &QuirkServer, label: &str, client_secret: &str) -> Value {
    let org = |kind: &str, default: &str| json!({"type": kind, "visibility": "organization", "default": default});
    json!({"label": label, "auth": "oauth2_authorization_code",
        "redirects": {"success_url": SUCCESS, "failure_url": FAILURE},
        "inputs": {
            "authorizeUrl": org("url", &q.authorize_endpoint()),
            "tokenUrl": org("url", &q.token_endpoint()),
            "revokeUrl": org("url", &q.revoke_endpoint()),
            "clientId": org("string", "isolation-client"),
            "clientSecret": org("password", client_secret),
            "scopes": org("string", "read")}})
}

async fn created_id(app: &TestApp, token: &str, body: &Value) -> String {
    let created = app.create_connection(token, body).await;
    created.assert_status(StatusCode::CREATED);
    created.body["id"].as_str().expect("an id").to_owned()
}

/// What one authorization through the scripted provider showed.
struct Authorization {
    /// The authorize answer (it carries the state, by design).
    reply: Reply,
    state: String,
    code: String,
    /// Where the callback sent the browser, and the callback's whole answer.
    location: String,
    callback: String,
}

/// Authorizes connection `id` at `q` as the user's browser would.
async fn authorize(app: &TestApp, org: &str, q: &QuirkServer, id: &str) -> Authorization {
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(org), None).await;
    reply.assert_status(StatusCode::OK);
    let url = reply.body["authorize_url"].as_str().expect("authorize_url").to_owned();
    assert!(url.starts_with(q.url()), "the browser goes to the provider: {url}");
    let state = query_param(&url, "state").expect("a state");
    let back = q.authorize(&url).await;
    assert!(back.starts_with(&format!("{}/v1/oauth/callback", app.address)), "{back}");
    let code = query_param(&back, "code").expect("a code");
    let done = browser().get(&back).send().await.expect("GET the callback");
    assert_eq!(done.status(), StatusCode::FOUND, "the callback redirects");
    let location = done.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned();
    let mut callback: String = done.headers().iter().map(|(k, v)| format!("{k}: {v:?}\n")).collect();
    callback.push_str(&done.text().await.unwrap_or_default());
    Authorization { reply, state, code, location, callback }
}

/// Keeps `reply` as `what` for the final search.
fn keep(seen: &mut Vec<(String, String)>, what: &str, reply: &Reply) {
    seen.push((what.to_owned(), transcript(reply)));
}

/// A reply as text: status, every header, the body.
fn transcript(reply: &Reply) -> String {
    let headers: String =
        reply.headers.iter().map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes()))).collect();
    format!("{}\n{headers}\n{}", reply.status, reply.text)
}

// ---------------------------------------------------------------------------------------------
// The walk of the OpenAPI document
// ---------------------------------------------------------------------------------------------

/// One documented operation.
#[derive(Debug)]
struct Operation {
    method: Method,
    template: String,
    /// `security: []`: no bearer token needed.
    public: bool,
    /// A read of a collection (GET, no path parameter, an `items` list in its 200 answer).
    list: bool,
    /// The request bodies to send: the examples of its JSON body, `{}` when it documents none;
    /// `[None]` for an operation without a body.
    bodies: Vec<Option<Value>>,
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("a non-local $ref: {r}"));
            resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("$ref {r} does not resolve")))
        }
        None => v,
    }
}

/// The examples of a JSON request body: the media type's `example`/`examples`, else the
/// schema's; `{}` when there are none.
fn body_examples(doc: &Value, request_body: &Value) -> Vec<Option<Value>> {
    let media = &resolve(doc, request_body)["content"]["application/json"];
    let schema = resolve(doc, &media["schema"]);
    let mut found: Vec<Value> = Vec::new();
    if let Some(e) = media.get("example") {
        found.push(e.clone());
    }
    if let Some(map) = media["examples"].as_object() {
        found.extend(map.values().map(|e| resolve(doc, e)["value"].clone()));
    }
    if found.is_empty() {
        if let Some(e) = schema.get("example") {
            found.push(e.clone());
        }
        found.extend(schema["examples"].as_array().into_iter().flatten().cloned());
    }
    if found.is_empty() {
        found.push(json!({}));
    }
    found.into_iter().map(Some).collect()
}

/// Every operation of the document, in its order.
fn operations(doc: &Value) -> Vec<Operation> {
    let mut ops = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("`paths`") {
        for (method, op) in item.as_object().expect("a path item") {
            let method = match method.as_str() {
                "parameters" | "summary" | "description" | "servers" => continue,
                "get" => Method::GET,
                "put" => Method::PUT,
                "post" => Method::POST,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                other => panic!("{other} {template}: a method this walk does not send yet; extend it"),
            };
            let public = op["security"].as_array().is_some_and(Vec::is_empty);
            let ok_schema =
                resolve(doc, &resolve(doc, &op["responses"]["200"])["content"]["application/json"]["schema"]);
            let list =
                method == Method::GET && !template.contains('{') && ok_schema["properties"]["items"]["type"] == "array";
            let bodies = match op.get("requestBody") {
                Some(b) => body_examples(doc, b),
                None => vec![None],
            };
            ops.push(Operation { method, template: template.clone(), public, list, bodies });
        }
    }
    ops
}

/// What the walk plants and compares.
struct Planted {
    /// Connection ids (API key, OAuth) and definition keys (the same order).
    ids: Vec<String>,
    keys: Vec<String>,
    /// The owner organization's webhook (subscribed to `Connection Created`) and its delivery
    /// of each planted connection's creation.
    webhook: String,
    deliveries: Vec<String>,
    /// In both labels: planted data that is not a secret, but no foreigner may see.
    marker: String,
    secrets: Vec<String>,
}

/// A delivery id that never existed (the form of `latchkey::domain::delivery_id`).
const GHOST_DELIVERY: &str = "msg_aaaaaaaaaaaaaaaaaaaaaaaaaa";

/// The concrete requests of `op` for the planted data: one per planted id or key in its path,
/// each paired with the same request for an id or key that never existed (a twin).
fn expand(op: &Operation, planted: &Planted, ghost_id: &str, ghost_key: &str) -> Vec<(String, String)> {
    let names: Vec<&str> = op.template.split('{').skip(1).filter_map(|s| s.split('}').next()).collect();
    if op.template.starts_with("/v1/webhooks/") {
        let hook = |t: &str, id: &str| t.replace("{id}", id);
        return match names.as_slice() {
            ["id"] => vec![(hook(&op.template, &planted.webhook), hook(&op.template, ghost_key))],
            // The owner's webhook with one of its deliveries, against the same webhook with a
            // delivery that never existed.
            ["id", "delivery_id"] => planted
                .deliveries
                .iter()
                .map(|d| {
                    let t = hook(&op.template, &planted.webhook);
                    (t.replace("{delivery_id}", d), t.replace("{delivery_id}", GHOST_DELIVERY))
                })
                .collect(),
            other => panic!("{} {}: path parameters {other:?} this walk cannot fill yet", op.method, op.template),
        };
    }
    match names.as_slice() {
        [] => vec![(op.template.clone(), op.template.clone())],
        ["id"] => planted
            .ids
            .iter()
            .map(|id| (op.template.replace("{id}", id), op.template.replace("{id}", ghost_id)))
            .collect(),
        ["key"] => planted
            .keys
            .iter()
            .map(|k| (op.template.replace("{key}", k), op.template.replace("{key}", ghost_key)))
            .collect(),
        other => {
            panic!("{} {}: path parameters {other:?} this walk cannot fill yet; extend it", op.method, op.template)
        }
    }
}

/// The body to send: the example, aimed at the planted data (its definition, its customer).
fn aimed(example: &Value, definition: &str) -> Value {
    let mut body = example.clone();
    if let Some(obj) = body.as_object_mut() {
        if obj.contains_key("definition") {
            obj.insert("definition".into(), json!(definition));
        }
        if obj.contains_key("customer") {
            obj.insert("customer".into(), json!(OWNER));
        }
    }
    body
}

/// A refusal with `value` (the planted id or key, or its twin) written as `{}`, for comparing a
/// planted target's refusal with a twin's.
fn refusal_shape(reply: &Reply, value: &str) -> (StatusCode, String) {
    (reply.status, reply.text.replace(value, "{}"))
}

/// Whether a foreigner may get this 2xx: a list without the planted data, or, for another
/// organization (`created`: what it has created so far in this walk, updated here), its own
/// creation in its own namespace (a definition under the same key, a connection of such a
/// definition) and the reads and deletes of what it created.
fn success_allowed(
    op: &Operation,
    key: Option<&str>,
    definition: &str,
    reply: &Reply,
    created: Option<&mut BTreeSet<String>>,
    planted: &Planted,
) -> bool {
    let mut none = BTreeSet::new();
    let other_org = created.is_some();
    let mine = created.unwrap_or(&mut none);
    if op.list {
        // Ours: a planted id, or a planted key that the foreigner has not taken for itself (the
        // labels are searched for on the whole answer).
        let items = reply.body["items"].as_array().cloned().unwrap_or_default();
        return !items.iter().any(|i| {
            planted.ids.iter().any(|p| i["id"] == json!(p))
                || planted.keys.iter().any(|p| i["key"] == json!(p) && !mine.contains(p))
                || (i["id"] == json!(planted.webhook) && !mine.contains(&planted.webhook))
        });
    }
    if !other_org {
        return false;
    }
    match (&op.method, key) {
        (&Method::PUT, Some(key)) => {
            // 201: it did not find ours. 200: it replaced its own.
            let ok = reply.status == StatusCode::CREATED || mine.contains(key);
            mine.insert(key.to_owned());
            ok
        }
        (&Method::POST, None) if op.template == "/v1/connections" => {
            let id = reply.body["id"].as_str().unwrap_or_default().to_owned();
            let ok = mine.contains(definition) && !planted.ids.contains(&id);
            mine.insert(id);
            ok
        }
        // A lookup by selector names no id: its answer says which connection it found, and only
        // one the foreigner created itself may answer.
        (&Method::POST, None) if op.template == "/v1/token" => {
            let id = reply.body["connection_id"].as_str().unwrap_or_default();
            mine.contains(id) && !planted.ids.iter().any(|p| p == id)
        }
        _ => key.is_some_and(|k| mine.contains(k)),
    }
}

/// The owner's view of the planted data: every read of it, with its ETag.
async fn owner_view(app: &TestApp, org: &str, planted: &Planted) -> BTreeMap<String, String> {
    let mut view = BTreeMap::new();
    for id in &planted.ids {
        let read = app.get_connection(org, id).await;
        read.assert_status(StatusCode::OK);
        view.insert(format!("GET connection {id}"), format!("{:?} {}", read.header("etag"), read.text));
        let logs = app.connection_logs(org, id).await;
        logs.assert_status(StatusCode::OK);
        view.insert(format!("GET logs {id}"), logs.text);
    }
    for key in &planted.keys {
        let read = app.get_definition(org, key).await;
        read.assert_status(StatusCode::OK);
        view.insert(format!("GET definition {key}"), read.text);
    }
    view.insert("GET definitions".into(), app.list_definitions(org).await.text);
    for path in [format!("/v1/webhooks/{}", planted.webhook), format!("/v1/webhooks/{}/deliveries", planted.webhook)] {
        let read = app.get(&path, org).await;
        read.assert_status(StatusCode::OK);
        view.insert(format!("GET {path}"), read.text);
    }
    view.insert(
        format!("GET connections of {OWNER}"),
        app.list_connections(org, &format!("customer={OWNER}")).await.text,
    );
    view
}

/// The owner's lookups of the planted connections.
async fn owner_lookups(app: &TestApp, runtime: &str, planted: &Planted) -> Vec<Value> {
    let mut found = Vec::new();
    for id in &planted.ids {
        let reply = app.lookup(runtime, id, &json!({"min_valid_seconds": 0})).await;
        reply.assert_status(StatusCode::OK);
        found.push(reply.body);
    }
    found
}

#[tokio::test]
async fn foreign_principals_reach_nothing_planted_on_any_documented_route() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let backend = Backend::fresh().await;
    let app = TestApp::spawn_binary(&backend, &random_secret()).await;
    // On the aws backend, the organization's events reach its webhook as webhook-deliver takes them.
    // An organization of this test's own: on the aws backend its events (and no other test's)
    // reach its webhook, as webhook-deliver takes them from the bus.
    let owner = format!("acme-{}", &random_hex()[..12]);
    let _pump = crate::webhooks::pump_for(&backend, &owner).await;
    let org = app.token(&owner, None, &[]).await;
    let runtime = app.token(&owner, None, &["runtime"]).await;
    let marker = format!("planted-{}", random_hex());
    let api_key = format!("sk_live_planted_{}", random_hex());
    let client_secret = format!("cs_planted_{}", random_hex());
    let access = format!("at_planted_{}", random_hex());
    let refresh = format!("rt_planted_{}", random_hex());
    let q = QuirkServer::start(json!({"token": {"authorization_code": token_answer(&access, &refresh)}})).await;

    // Planted: an API-key connection and an authorized OAuth connection of customer c-1.
    let api_def = json!({"label": marker, "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "endpoint": {"type": "url", "default": "https://api.acme.com"}}});
    app.put_definition(&org, "planted-api", &api_def).await.assert_status(StatusCode::CREATED);
    app.put_definition(&org, "planted-oauth", &oauth_definition(&q, &marker, &client_secret))
        .await
        .assert_status(StatusCode::CREATED);
    // The owner's webhook, at a receiver that takes every delivery at once (so the deliveries
    // stay as they are during the walk).
    let receiver = crate::webhooks::receiver::Receiver::start(&[]).await;
    let webhook = "planted-hook".to_owned();
    app.request(
        Method::PUT,
        &format!("/v1/webhooks/{webhook}"),
        Some(&org),
        Some(&json!({"url": receiver.url, "events": ["Connection Created"], "enabled": true})),
    )
    .await
    .assert_status(StatusCode::CREATED);
    let api_id = created_id(
        &app,
        &org,
        &json!({"definition": "planted-api", "customer": OWNER, "label": marker,
        "values": {"apiKey": api_key}}),
    )
    .await;
    let oauth_id =
        created_id(&app, &org, &json!({"definition": "planted-oauth", "customer": OWNER, "label": marker})).await;
    let authorized = authorize(&app, &org, &q, &oauth_id).await;
    assert!(authorized.location.starts_with(SUCCESS), "authorized: {}", authorized.location);
    receiver.wait_for(2).await;
    let deliveries_path = format!("/v1/webhooks/{webhook}/deliveries");
    let delivered = || async {
        let items = app.get(&deliveries_path, &org).await.body["items"].as_array().cloned().unwrap_or_default();
        (items.len() == 2 && items.iter().all(|d| d["status"] == "delivered")).then_some(items)
    };
    eventually(Duration::from_secs(30), "both creations delivered", || async { delivered().await.is_some() }).await;
    let delivered = delivered().await.expect("delivered");
    let planted = Planted {
        ids: vec![api_id, oauth_id],
        keys: vec!["planted-api".into(), "planted-oauth".into()],
        webhook,
        deliveries: delivered.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect(),
        marker,
        secrets: vec![api_key.clone(), client_secret, access.clone(), refresh],
    };

    // The lookups work (positive control), and turn both connections active before the walk.
    let lookups = owner_lookups(&app, &runtime, &planted).await;
    assert_eq!(lookups[0]["fields"]["apiKey"], json!(api_key));
    assert_eq!(lookups[1]["token"]["access_token"], json!(access));
    let before = owner_view(&app, &org, &planted).await;
    let provider_calls = q.total_calls().await;

    // The document the server serves, walked as it says.
    let doc = app.request(Method::GET, "/openapi.json", None, None).await;
    doc.assert_status(StatusCode::OK);
    let ops = operations(&doc.body);
    assert!(ops.len() >= 17, "the document lists {} operations", ops.len());
    let documented: BTreeSet<(String, String)> =
        ops.iter().map(|o| (o.method.to_string(), o.template.clone())).collect();

    // The owner reaches every planted target that can be read (positive control: the walk's
    // paths name real data).
    // (Public operations are not the bearer's: the connect page's `{id}` is a session's.)
    for op in ops.iter().filter(|o| o.method == Method::GET && o.template.contains('{') && !o.public) {
        for (path, _) in expand(op, &planted, "-", "-") {
            app.get(&path, &org).await.assert_status(StatusCode::OK);
        }
    }

    let foreigners = [
        ("another customer (c-2)", owner.as_str(), app.token(&owner, Some("c-2"), &[]).await),
        ("another customer's runtime (c-2)", owner.as_str(), app.token(&owner, Some("c-2"), &["runtime"]).await),
        ("another organization (other)", "other", app.token("other", None, &[]).await),
        ("another organization's runtime (other)", "other", app.token("other", None, &["runtime"]).await),
    ];
    // What a foreign organization created in its own namespace during the walk (a definition
    // under the same key is its own, not ours): org -> keys and connection ids.
    let mut own: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let ghost_id = "con_00000000000000000000000000";
    let ghost_key = format!("ghost-{}", random_hex());
    let mut walked: BTreeSet<(String, String)> = BTreeSet::new();
    let mut requests = 0;
    let mut failures: Vec<String> = Vec::new();

    for (who, who_org, token) in &foreigners {
        for op in &ops {
            for (path, twin_path) in expand(op, &planted, ghost_id, &ghost_key) {
                for body in &op.bodies {
                    let definitions: Vec<&str> = match body {
                        Some(b) if b.get("definition").is_some() => planted.keys.iter().map(String::as_str).collect(),
                        _ => vec![""],
                    };
                    for definition in definitions {
                        let body = body.as_ref().map(|b| aimed(b, definition));
                        // A key that the foreign organization has taken for itself in this walk
                        // names its own definition: no twin to compare with.
                        // A webhook's id is chosen by its organization like a definition's key.
                        let key = path
                            .strip_prefix("/v1/definitions/")
                            .or_else(|| path.strip_prefix("/v1/webhooks/").and_then(|p| p.split('/').next()));
                        let theirs = *who_org != owner
                            && key.is_some_and(|k| own.get(*who_org).is_some_and(|mine| mine.contains(k)));
                        let what = format!(
                            "{who}: {} {path} {}",
                            op.method,
                            body.as_ref().map_or(String::new(), Value::to_string)
                        );
                        let reply = app.request(op.method.clone(), &path, Some(token), body.as_ref()).await;
                        requests += 1;
                        walked.insert((op.method.to_string(), op.template.clone()));
                        let text = transcript(&reply);
                        for secret in &planted.secrets {
                            if text.contains(secret.as_str()) {
                                failures.push(format!("{what}: a planted secret in the answer:\n{text}"));
                            }
                        }
                        if text.contains(&planted.marker) {
                            failures.push(format!("{what}: planted data in the answer:\n{text}"));
                        }
                        if reply.status.is_server_error() {
                            failures.push(format!("{what}: {text}"));
                        }
                        if !reply.status.is_success() || op.public || ORG_INDEPENDENT.contains(&op.template.as_str()) {
                            // Refused (or public): a planted target is refused exactly like one
                            // that never existed.
                            if path != twin_path && !theirs {
                                let twin = app.request(op.method.clone(), &twin_path, Some(token), body.as_ref()).await;
                                let value = path.rsplit('/').find(|s| {
                                    planted
                                        .ids
                                        .iter()
                                        .chain(&planted.keys)
                                        .chain(&planted.deliveries)
                                        .chain([&planted.webhook])
                                        .any(|p| p == s)
                                });
                                let ghost = twin_path
                                    .rsplit('/')
                                    .find(|s| *s == ghost_id || *s == ghost_key || *s == GHOST_DELIVERY);
                                let (Some(value), Some(ghost)) = (value, ghost) else { panic!("{path} / {twin_path}") };
                                if refusal_shape(&reply, value) != refusal_shape(&twin, ghost) {
                                    failures.push(format!(
                                        "{what}: tells a planted target from a missing one:\n{text}\nvs {twin_path}:\n{}",
                                        transcript(&twin)
                                    ));
                                }
                            }
                            continue;
                        }
                        let created = (*who_org != owner).then(|| own.entry(*who_org).or_default());
                        let allowed = success_allowed(op, key, definition, &reply, created, &planted);
                        if !allowed {
                            failures.push(format!("{what}: a 2xx about planted data:\n{text}"));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} findings:\n\n{}", failures.len(), failures.join("\n\n"));
    assert_eq!(walked, documented, "every documented operation was walked");
    assert!(requests >= 4 * documented.len(), "{requests} requests");

    // Nothing changed: the owner's reads (versions and logs included), the lookups, and the
    // provider heard nothing (no refresh, no revocation).
    let after = owner_view(&app, &org, &planted).await;
    for (what, seen) in &before {
        assert_eq!(Some(seen), after.get(what), "{what} changed");
    }
    assert_eq!(owner_lookups(&app, &runtime, &planted).await, lookups, "the lookups changed");
    assert_eq!(q.total_calls().await, provider_calls, "a foreign request reached the provider");
}

// ---------------------------------------------------------------------------------------------
// Canaries
// ---------------------------------------------------------------------------------------------

/// A plain lookup of `id`.
async fn lookup(app: &TestApp, runtime: &str, id: &str) -> Reply {
    app.lookup(runtime, id, &json!({"min_valid_seconds": 0})).await
}

/// Where each of `secrets` (anywhere) and `flow_secrets` (anywhere but an authorize answer,
/// which carries its state by design) occurs in `seen`, with an excerpt.
fn leaks(seen: &[(String, String)], secrets: &[&String], flow_secrets: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (place, text) in seen {
        let flow = flow_secrets.iter().filter(|_| !place.starts_with("authorize "));
        for secret in secrets.iter().copied().chain(flow) {
            if let Some(at) = text.find(secret.as_str()) {
                let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                let excerpt: String = text[from..].chars().take(400).collect();
                found.push(format!("{place}: {}…\n  …{excerpt}…", &secret[..secret.len().min(24)]));
            }
        }
    }
    found
}

/// A distinctive secret: `CANARY`, what it is, 128 random bits.
fn canary(what: &str) -> String {
    format!("CANARY{what}{}", random_hex())
}

#[tokio::test]
async fn canaries_in_every_kind_of_secret_never_reach_logs_errors_or_reads() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    // The sweep every second: on the aws backend it is what runs revocations.
    let env = [("LATCHKEY_REFRESH_INTERVAL_SECS", "1")];
    let mut app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let org = app.token(ORG, None, &[]).await;
    let customer = app.token(ORG, Some(OWNER), &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;

    let api_key = canary("apikey");
    let password = canary("password");
    let client_secret = canary("clientsecret");
    let cc_secret = canary("ccsecret");
    let (access_a, refresh_a) = (canary("accessA"), canary("refreshA"));
    let (access_a2, refresh_a2) = (canary("accessA2"), canary("refreshA2"));
    let (access_b, refresh_b) = (canary("accessB"), canary("refreshB"));
    let cc_access = canary("ccaccess");
    let q = QuirkServer::start(json!({"token": {
        "authorization_code": [token_answer(&access_a, &refresh_a), token_answer(&access_b, &refresh_b)],
        "refresh_token": [token_answer(&access_a2, &refresh_a2)],
        "client_credentials": {"json": {"access_token": cc_access, "token_type": "Bearer", "expires_in": 3600}},
    }}))
    .await;
    // Every answer Latchkey gives, but the lookups (which hand the secrets out by design): (what,
    // transcript).
    let mut seen: Vec<(String, String)> = Vec::new();

    // Definitions: the secrets in defaults, and invalid ones that carry them.
    let org_input = |kind: &str, default: &str| json!({"type": kind, "visibility": "organization", "default": default});
    let defs = [
        ("c-api", json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}})),
        (
            "c-basic",
            json!({"auth": "basic", "inputs": {"username": {"type": "string", "required": true},
            "password": {"type": "password", "required": true}}}),
        ),
        ("c-oauth", oauth_definition(&q, "Canary OAuth", &client_secret)),
        (
            "c-cc",
            json!({"auth": "oauth2_client_credentials", "inputs": {
            "tokenUrl": org_input("url", &q.token_endpoint()),
            "clientId": org_input("string", "cc-client"),
            "clientSecret": org_input("password", &cc_secret)}}),
        ),
    ];
    for (key, def) in &defs {
        let put = app.put_definition(&org, key, def).await;
        put.assert_status(StatusCode::CREATED);
        keep(&mut seen, &format!("PUT definition {key}"), &put);
    }
    for (why, def) in [
        (
            "a secret as the default of a number",
            json!({"auth": "api_key", "inputs": {
            "apiKey": {"type": "number", "default": client_secret}}}),
        ),
        (
            "an unknown member beside a secret",
            json!({"auth": "api_key", "inputs": {
            "apiKey": {"type": "password", "default": client_secret, "bogus": api_key}}}),
        ),
        (
            "a secret as a URL",
            json!({"auth": "oauth2_client_credentials", "inputs": {
            "tokenUrl": org_input("url", &client_secret), "clientId": org_input("string", "x")}}),
        ),
    ] {
        let put = app.put_definition(&org, "c-bad", &def).await;
        put.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        keep(&mut seen, &format!("PUT definition: {why}"), &put);
    }

    // Connections of each kind, and invalid creations and patches that carry secrets. The
    // API-key connection's label is no secret, but Latchkey never logs one: in the server's log
    // it would mean that a dependency wrote out what it sent or received (a body dump).
    let label = format!("label-{}", random_hex());
    let api = created_id(
        &app,
        &org,
        &json!({"definition": "c-api", "customer": OWNER, "label": label, "values": {"apiKey": api_key}}),
    )
    .await;
    let basic = created_id(
        &app,
        &customer,
        &json!({"definition": "c-basic",
        "values": {"username": "someone", "password": password}}),
    )
    .await;
    let oauth_a = created_id(&app, &org, &json!({"definition": "c-oauth", "customer": OWNER})).await;
    let oauth_b = created_id(&app, &org, &json!({"definition": "c-oauth", "customer": OWNER})).await;
    let cc = created_id(&app, &org, &json!({"definition": "c-cc", "scope": "organization"})).await;
    for (why, body) in [
        (
            "an unknown input",
            json!({"definition": "c-api", "customer": OWNER, "values": {"apiKey": api_key, "nope": password}}),
        ),
        (
            "a wrong type",
            json!({"definition": "c-basic", "customer": OWNER, "values": {"username": password, "password": 7}}),
        ),
        ("another customer's", json!({"definition": "c-api", "customer": "c-2", "values": {"apiKey": api_key}})),
    ] {
        let token = if why == "another customer's" { &customer } else { &org };
        let created = app.create_connection(token, &body).await;
        assert!(created.status.is_client_error(), "{why}: {}", created.text);
        keep(&mut seen, &format!("POST connection: {why}"), &created);
    }
    let patched =
        app.patch_connection(&org, &basic, &json!({"values": {"password": 42, "other": password}}), None).await;
    patched.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    keep(&mut seen, "PATCH: invalid values", &patched);
    let patched = app.patch_connection(&org, &api, &json!({"values": {"apiKey": api_key}}), Some("\"99\"")).await;
    patched.assert_problem(StatusCode::PRECONDITION_FAILED);
    keep(&mut seen, "PATCH: stale If-Match", &patched);

    // Two authorizations (their codes, states and PKCE verifiers are secrets too).
    let mut flow_secrets: Vec<String> = Vec::new();
    for id in [&oauth_a, &oauth_b] {
        let done = authorize(&app, &org, &q, id).await;
        assert!(done.location.starts_with(SUCCESS), "{}", done.location);
        seen.push((format!("authorize {id}"), transcript(&done.reply)));
        seen.push((format!("callback {id}"), done.callback.clone()));
        flow_secrets.extend([done.code, done.state]);
    }
    let exchanges = q.token_requests("authorization_code").await;
    assert_eq!(exchanges.len(), 2, "{exchanges:?}");
    for exchange in &exchanges {
        let verifier = exchange["form"]["code_verifier"].as_str().expect("PKCE: a code_verifier was sent");
        assert!(verifier.len() >= 43, "{verifier}");
        flow_secrets.push(verifier.to_owned());
        // The client secret really travelled (Basic auth by default).
        assert_eq!(exchange["basic"]["password"], json!(client_secret), "{exchange}");
    }

    // Lookups: every secret comes back (positive control); these answers are not kept.
    let found = lookup(&app, &runtime, &api).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["fields"]["apiKey"], json!(api_key));
    let found = lookup(&app, &runtime, &basic).await;
    assert_eq!(found.body["fields"]["password"], json!(password), "{}", found.text);
    let found = lookup(&app, &runtime, &oauth_a).await;
    assert_eq!(found.body["token"]["access_token"], json!(access_a), "{}", found.text);
    let found = lookup(&app, &runtime, &cc).await;
    assert_eq!(found.body["token"]["access_token"], json!(cc_access), "{}", found.text);

    // A refresh, then a refused one whose refusal echoes the refresh token it was sent.
    let refreshed = app.request(Method::POST, &format!("/v1/connections/{oauth_a}/refresh"), Some(&org), None).await;
    refreshed.assert_status(StatusCode::OK);
    keep(&mut seen, "refresh", &refreshed);
    assert_eq!(lookup(&app, &runtime, &oauth_a).await.body["token"]["access_token"], json!(access_a2));
    assert_eq!(q.token_requests("refresh_token").await[0]["form"]["refresh_token"], json!(refresh_a));
    // From here on the provider refuses everything, and its refusals quote what it was sent (as
    // careless providers do): Latchkey must not pass that text on.
    // (A refused code exchange that does so: see the next test.)
    let echo = format!("refresh token {refresh_a2} is revoked; client secret {client_secret}");
    let revoke_echo = format!("token {refresh_b} unknown");
    q.set_config(json!({
        "token": {"refresh_token": {"status": 400, "json": {"error": "invalid_grant", "error_description": echo}}},
        "revoke": {"status": 400, "json": {"error": "unsupported_token_type", "error_description": revoke_echo}},
    }))
    .await;
    let refused = app.request(Method::POST, &format!("/v1/connections/{oauth_a}/refresh"), Some(&org), None).await;
    assert!(refused.status.is_client_error() || refused.status == StatusCode::BAD_GATEWAY, "{}", refused.text);
    keep(&mut seen, "refused refresh", &refused);
    assert_eq!(q.token_calls("refresh_token").await, 2, "the refused refresh reached the provider");
    let red = lookup(&app, &runtime, &oauth_a).await;
    red.assert_problem(StatusCode::CONFLICT);
    keep(&mut seen, "lookup of a refused grant", &red);

    // report_error, and the lookups it refuses; a lookup body that carries a secret.
    let reported = app.lookup(&runtime, &api, &json!({"action": "report_error", "message": "Acme answered 401"})).await;
    reported.assert_status(StatusCode::OK);
    keep(&mut seen, "report_error", &reported);
    let red = lookup(&app, &runtime, &api).await;
    red.assert_problem(StatusCode::CONFLICT);
    keep(&mut seen, "lookup of a reported connection", &red);
    let odd = app.lookup(&runtime, &basic, &json!({"connection_id": password})).await;
    odd.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    keep(&mut seen, "lookup with a secret in the body", &odd);

    // Reads of everything, by the organization and by the customer.
    for id in [&api, &basic, &oauth_a, &oauth_b, &cc] {
        keep(&mut seen, &format!("GET {id}"), &app.get_connection(&org, id).await);
        keep(&mut seen, &format!("GET {id} as the customer"), &app.get_connection(&customer, id).await);
    }
    for (key, _) in &defs {
        keep(&mut seen, &format!("GET definition {key}"), &app.get_definition(&org, key).await);
    }
    keep(&mut seen, "list definitions", &app.list_definitions(&org).await);
    keep(&mut seen, "list connections", &app.list_connections(&org, "").await);
    keep(&mut seen, "list connections as the customer", &app.list_connections(&customer, "").await);

    // Disconnect B: its tokens are revoked at the provider, which refuses and echoes the token.
    let disconnected =
        app.request(Method::POST, &format!("/v1/connections/{oauth_b}/disconnect"), Some(&org), None).await;
    disconnected.assert_status(StatusCode::OK);
    keep(&mut seen, "disconnect", &disconnected);
    // Run at once on the embedded backend (on the disconnect event), by the sweep on aws.
    eventually(Duration::from_secs(20), "the revocation of B reaches the provider", || async {
        let all = q.requests().await;
        all["revoke"].as_array().is_some_and(|r| r.iter().any(|r| r["form"]["token"] == json!(refresh_b)))
    })
    .await;
    eventually(Duration::from_secs(20), "B's log says the revocation was refused", || async {
        app.connection_logs(&org, &oauth_b)
            .await
            .body
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["type"] == "revoke_failed"))
    })
    .await;
    // Every connection's log: each tells its story (positive control), without a secret.
    let ids = [&api, &basic, &oauth_a, &oauth_b, &cc];
    let mut told = BTreeSet::new();
    for id in ids {
        let logs = app.connection_logs(&org, id).await;
        logs.assert_status(StatusCode::OK);
        told.extend(logs.body.as_array().into_iter().flatten().filter_map(|e| e["type"].as_str().map(str::to_owned)));
        keep(&mut seen, &format!("logs of {id}"), &logs);
    }
    for kind in ["created", "authorized", "refreshed", "refresh_failed", "error_reported", "disconnected"] {
        assert!(told.contains(kind), "no {kind} in the connection logs: {told:?}");
    }

    // Delete the others (A is red: whatever tokens it still holds are revoked too).
    for id in [&api, &basic, &cc, &oauth_a] {
        let deleted = app.delete_connection(&org, id).await;
        deleted.assert_status(StatusCode::NO_CONTENT);
        keep(&mut seen, &format!("DELETE {id}"), &deleted);
    }
    keep(&mut seen, "read after delete", &app.get_connection(&org, &api).await);
    keep(&mut seen, "logs of B at the end", &app.connection_logs(&org, &oauth_b).await);

    app.stop().await;
    let server_log = app.logs();
    assert!(server_log.contains("TRACE") || server_log.contains("trace"), "the log is at trace level");
    if let Some(at) = server_log.find(&label) {
        let line = server_log[..at].rsplit('\n').next().unwrap_or_default();
        panic!("the server's log holds a connection's label, so bodies are logged: {}…", &line[..line.len().min(600)]);
    }
    seen.push(("the server's log".into(), server_log));

    let secrets = [
        &api_key,
        &password,
        &client_secret,
        &cc_secret,
        &access_a,
        &refresh_a,
        &access_a2,
        &refresh_a2,
        &access_b,
        &refresh_b,
        &cc_access,
    ];
    let secrets: Vec<&String> = secrets.into_iter().collect();
    let leaks = leaks(&seen, &secrets, &flow_secrets);
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n\n"));
}

/// A provider that refuses a code exchange may quote what it was sent (here, the client secret)
/// in its `error_description`: Latchkey must pass none of it on, not to the failure redirect (the
/// customer's browser, then the organization's page), not to the callback's answer, not to the
/// connection's log (which customers read), not to its own log.
#[tokio::test]
async fn a_refused_code_exchange_passes_on_none_of_the_secrets_it_was_sent() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let mut app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let org = app.token(ORG, None, &[]).await;
    let client_secret = canary("clientsecret");
    let echo = format!("invalid_client_secret {client_secret} for client isolation-client");
    let q = QuirkServer::start(json!({"token": {"authorization_code":
        {"status": 400, "json": {"error": "invalid_grant", "error_description": echo}}}}))
    .await;
    app.put_definition(&org, "c-oauth", &oauth_definition(&q, "Canary OAuth", &client_secret))
        .await
        .assert_status(StatusCode::CREATED);
    let id = created_id(&app, &org, &json!({"definition": "c-oauth", "customer": OWNER})).await;
    let failed = authorize(&app, &org, &q, &id).await;
    assert!(failed.location.starts_with(FAILURE), "{}", failed.location);
    // The client secret and the verifier really went to the provider (positive control).
    let exchange = &q.token_requests("authorization_code").await[0];
    assert_eq!(exchange["basic"]["password"], json!(client_secret), "{exchange}");
    let verifier = exchange["form"]["code_verifier"].as_str().expect("a code_verifier").to_owned();
    let logs = app.connection_logs(&org, &id).await;
    assert!(logs.text.contains("authorize_failed"), "{}", logs.text);
    let mut seen = vec![
        ("the failure redirect".to_owned(), failed.location.clone()),
        ("the callback's answer".to_owned(), failed.callback.clone()),
        ("the connection's log".to_owned(), transcript(&logs)),
        ("the connection".to_owned(), transcript(&app.get_connection(&org, &id).await)),
    ];
    app.stop().await;
    seen.push(("the server's log".into(), app.logs()));
    let leaks = leaks(&seen, &[&client_secret], &[failed.code, failed.state, verifier]);
    assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n\n"));
}

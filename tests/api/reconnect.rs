//! Reconnect in place (SPEC section 10): authorizing a connection that was authorized before
//! keeps its id and values and replaces its tokens and granted scopes; an answer without a
//! refresh token keeps the one still held (never one a disconnect removed); red reasons are
//! cleared and the refresh is scheduled again; `Connection Reconnected` and a `reconnected` log
//! line say so. Against oidc-provider (a real grant whose second consent brings no refresh
//! token) and the scripted provider `tests/oauth/quirks.mjs`, on either backend
//! (`LATCHKEY_TEST_BACKEND=aws`). The [`Lab`] and [`EventTap`] here serve `rt_lifetime` too.

use std::sync::Mutex;
use std::time::Duration;

use aws_config::SdkConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::moto;
use support::oauth::OidcServer;
use support::quirks::{QuirkServer, query_param};

use crate::harness::{Backend, Reply, TestApp, eventually, random_hex, random_secret};

pub(crate) const SUCCESS: &str = "http://localhost:3000/connected";
pub(crate) const FAILURE: &str = "http://localhost:3000/failed";

/// A browser that does not follow redirects, so the test sees where Latchkey sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// The events Latchkey published, on either backend: on the embedded one its `event published`
/// log lines, on the aws one an SQS queue behind an EventBridge rule on moto's shared `default`
/// bus that only matches the tap's own organization (created before the server publishes
/// anything), so concurrent tests' events never reach it.
pub(crate) struct EventTap {
    queue: Option<(SdkConfig, String)>,
    /// `(detail-type, detail)` of every event received from the queue so far.
    received: Mutex<Vec<(String, Value)>>,
}

impl EventTap {
    /// A tap for the events about organization `org` on `backend`.
    pub(crate) async fn on(backend: &Backend, org: &str) -> Self {
        let queue = match backend.aws() {
            Some(aws) => {
                let config = moto::sdk_config_for(&aws.endpoint).await;
                let (url, _rule) = moto::sqs_queue_for_org_events(&config, "default", org).await;
                Some((config, url))
            }
            None => None,
        };
        EventTap { queue, received: Mutex::new(Vec::new()) }
    }

    /// The detail-types of the events about connection `id` published so far, in order (the
    /// queue drained first).
    pub(crate) async fn types(&self, app: &TestApp, id: &str) -> Vec<String> {
        match &self.queue {
            Some((config, url)) => {
                let events = moto::receive_all(config, url, 0).await;
                let mut received = self.received.lock().unwrap();
                for event in events {
                    let kind = event["detail-type"].as_str().unwrap_or_default().to_owned();
                    received.push((kind, event["detail"].clone()));
                }
                received.iter().filter(|(_, d)| d["connection_id"] == id).map(|(k, _)| k.clone()).collect()
            }
            None => app
                .logs()
                .lines()
                .filter(|l| l.contains("event published") && l.contains(id))
                .filter_map(|l| l.split("event=\"").nth(1).and_then(|rest| rest.split('"').next()))
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Waits (up to 20 s) until the detail-types about `id` satisfy `done`, and returns them:
    /// the server publishes after it answers, so a test polls rather than reads once.
    pub(crate) async fn types_when(
        &self,
        app: &TestApp,
        id: &str,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        eventually(Duration::from_secs(20), what, || async { done(&self.types(app, id).await) }).await;
        self.types(app, id).await
    }

    /// How many events of `kind` about `id` were published so far.
    pub(crate) async fn count(&self, app: &TestApp, id: &str, kind: &str) -> usize {
        self.types(app, id).await.iter().filter(|k| *k == kind).count()
    }

    /// How many events of `kind` about `id` were published, once there are at least `least`
    /// (waited for up to 20 s; an assertion of an exact count then catches any extra).
    pub(crate) async fn count_at_least(&self, app: &TestApp, id: &str, kind: &str, least: usize) -> usize {
        let what = format!("{least} {kind} event(s) about {id}");
        eventually(Duration::from_secs(20), &what, || async { self.count(app, id, kind).await >= least }).await;
        self.count(app, id, kind).await
    }

    /// The detail of the last event of `kind` about `id` (aws backend only: the log line of
    /// the embedded one names the type, not every member).
    pub(crate) fn detail(&self, id: &str, kind: &str) -> Option<Value> {
        let received = self.received.lock().unwrap();
        received.iter().rev().find(|(k, d)| k == kind && d["connection_id"] == id).map(|(_, d)| d.clone())
    }
}

/// One `latchkey serve` (the binary: its sweep runs) on a fresh backend, an organization user
/// and a runtime principal, and what the events said.
pub(crate) struct Lab {
    pub app: TestApp,
    /// Kept for the server's life (its data directory, or its table and key).
    _backend: Backend,
    pub org: String,
    pub runtime: String,
    pub events: EventTap,
}

impl Lab {
    /// A server with the settings `env` (on top of the backend's).
    pub(crate) async fn start(env: &[(&str, &str)]) -> Self {
        let backend = Backend::fresh().await;
        // An organization of its own, so that the event tap's rule matches only this lab's events.
        let org_id = format!("acme-{}", &random_hex()[..12]);
        let events = EventTap::on(&backend, &org_id).await;
        let app = TestApp::spawn_binary_with_env(&backend, &random_secret(), env).await;
        let org = app.token(&org_id, None, &[]).await;
        let runtime = app.token(&org_id, None, &["runtime"]).await;
        Lab { app, _backend: backend, org, runtime, events }
    }

    /// Defines `key`: an authorization-code definition at these endpoints, app settings read
    /// from the definition, a customer input `region`, success and failure redirects, and
    /// `oauth` as its quirks block.
    pub(crate) async fn define(
        &self,
        key: &str,
        endpoints: (&str, &str),
        client: (&str, &str),
        scopes: &str,
        oauth: Value,
    ) {
        let org = |kind: &str, default: &str| json!({"type": kind, "visibility": "organization", "default": default});
        let def = json!({"label": "Reconnecting provider", "auth": "oauth2_authorization_code",
            "inputs": {
                "authorizeUrl": org("url", endpoints.0),
                "tokenUrl": org("url", endpoints.1),
                "clientId": org("string", client.0),
                "clientSecret": org("password", client.1),
                "scopes": org("string", scopes),
                "region": {"type": "string", "visibility": "customer"}},
            "redirects": {"success_url": SUCCESS, "failure_url": FAILURE},
            "oauth": oauth});
        let put = self.app.put_definition(&self.org, key, &def).await;
        assert!(put.status.is_success(), "PUT definition {key}: {}", put.text);
    }

    /// A new connection of `key` with `region` = `eu` and a label.
    pub(crate) async fn create(&self, key: &str) -> String {
        let body = json!({"definition": key, "customer": "c-1", "label": "Reconnect me", "values": {"region": "eu"}});
        let created = self.app.create_connection(&self.org, &body).await;
        created.assert_status(StatusCode::CREATED);
        created.body["id"].as_str().expect("an id").to_owned()
    }

    /// Runs an authorization of `id`, `drive` playing the user's browser at the provider (it
    /// gets the authorize URL and returns the provider's redirect back); returns where the
    /// callback sends the browser.
    pub(crate) async fn authorize<F, Fut>(&self, id: &str, drive: F) -> String
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let reply =
            self.app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&self.org), None).await;
        reply.assert_status(StatusCode::OK);
        let back = drive(reply.body["authorize_url"].as_str().expect("authorize_url").to_owned()).await;
        assert!(back.starts_with(&format!("{}/v1/oauth/callback", self.app.address)), "{back}");
        let done = browser().get(&back).send().await.expect("GET the callback");
        assert_eq!(done.status(), StatusCode::FOUND, "the callback redirects");
        done.headers().get("location").and_then(|l| l.to_str().ok()).expect("a Location").to_owned()
    }

    /// An authorization of `id` at the scripted provider `q`.
    pub(crate) async fn authorize_at(&self, q: &QuirkServer, id: &str) -> String {
        self.authorize(id, |url| async move { q.authorize(&url).await }).await
    }

    pub(crate) async fn read(&self, id: &str) -> Value {
        let read = self.app.get_connection(&self.org, id).await;
        read.assert_status(StatusCode::OK);
        read.body
    }

    pub(crate) async fn lookup(&self, id: &str) -> Reply {
        self.app.lookup(&self.runtime, id, &json!({"min_valid_seconds": 0})).await
    }

    pub(crate) async fn force_refresh(&self, id: &str) -> Reply {
        self.app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&self.org), None).await
    }

    /// The messages of the connection's log lines of type `kind`, newest first.
    pub(crate) async fn messages(&self, id: &str, kind: &str) -> Vec<String> {
        let logs = self.app.connection_logs(&self.org, id).await;
        logs.assert_status(StatusCode::OK);
        let lines = logs.body.as_array().expect("a list of log lines");
        lines
            .iter()
            .filter(|l| l["type"] == kind)
            .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A scripted answer (`{"json": ...}`): a token answer with a fresh access token, `scope`,
/// and `extra` members.
pub(crate) fn answer(scope: &str, extra: Value) -> Value {
    let mut body =
        json!({"access_token": "{{access_token}}", "token_type": "Bearer", "expires_in": 3600, "scope": scope});
    body.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    json!({"json": body})
}

/// What the `n`th token request of `grant` at `q` was answered with (`issued.access_token`...)
/// or sent (`form.refresh_token`).
pub(crate) async fn token_request(q: &QuirkServer, grant: &str, n: usize) -> Value {
    let requests = q.token_requests(grant).await;
    requests.get(n).cloned().unwrap_or_else(|| panic!("no {grant} request {n}: {requests:?}"))
}

/// The scripted provider with plain answers, and definition `key` against it.
async fn scripted(lab: &Lab, key: &str, scopes: &str, oauth: Value) -> QuirkServer {
    let q = QuirkServer::start(json!({})).await;
    lab.define(key, (&q.authorize_endpoint(), &q.token_endpoint()), ("quirk-client", "quirk-secret"), scopes, oauth)
        .await;
    q
}

fn assert_same_connection(before: &Value, after: &Value) {
    for member in ["id", "definition", "customer", "label", "created_at"] {
        assert_eq!(before[member], after[member], "a reconnect keeps {member}: {before} -> {after}");
    }
    // The connection's own value (app settings show the definition's current ones).
    assert_eq!(after["values"]["region"], "eu", "a reconnect keeps the values: {after}");
}

/// The case: a provider that sends a refresh token only on first consent. The second
/// authorization's answer has none; the connection keeps its id, values and the first refresh
/// token, which the next refresh sends. `Connection Authorized` then `Connection Reconnected`.
#[tokio::test]
async fn a_reconnect_keeps_the_id_values_and_the_refresh_token_an_answer_lacks() {
    let lab = Lab::start(&[]).await;
    let q = scripted(&lab, "scripted", "read write", json!({})).await;
    let id = lab.create("scripted").await;
    let location = lab.authorize_at(&q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    let first = lab.read(&id).await;
    let first_refresh = token_request(&q, "authorization_code", 0).await["issued"]["refresh_token"].clone();
    assert!(first_refresh.is_string(), "the first consent brought a refresh token");

    q.set_config(json!({"token": {"authorization_code": answer("read write", json!({}))}})).await;
    let location = lab.authorize_at(&q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    assert_eq!(query_param(&location, "connection_id").as_deref(), Some(id.as_str()), "the same connection");
    let second = lab.read(&id).await;
    assert_same_connection(&first, &second);
    assert_eq!(second["status"], "configured");
    assert!(second["version"].as_u64() > first["version"].as_u64());
    let listed = lab.app.list_connections(&lab.org, "").await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1), "no second connection: {}", listed.text);

    // The lookup hands out the new access token; the refresh sends the first refresh token.
    let found = lab.lookup(&id).await;
    found.assert_status(StatusCode::OK);
    let second_access = token_request(&q, "authorization_code", 1).await["issued"]["access_token"].clone();
    assert_eq!(found.body["token"]["access_token"], second_access);
    assert_eq!(found.body["fields"]["region"], "eu");
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refresh = token_request(&q, "refresh_token", 0).await;
    assert_eq!(refresh["form"]["refresh_token"], first_refresh, "the kept refresh token was sent");

    let reconnected = lab.messages(&id, "reconnected").await;
    assert_eq!(reconnected.len(), 1, "{reconnected:?}");
    assert!(reconnected[0].contains("kept") && reconnected[0].contains("was configured"), "{reconnected:?}");
    assert_eq!(lab.messages(&id, "authorized").await.len(), 2);
    let app = &lab.app;
    let types = lab
        .events
        .types_when(app, &id, "Authorized twice and Reconnected once", |t| {
            let n = |kind: &str| t.iter().filter(|k| *k == kind).count();
            n("Connection Authorized") >= 2 && n("Connection Reconnected") >= 1
        })
        .await;
    let authorized: Vec<usize> =
        types.iter().enumerate().filter(|(_, t)| *t == "Connection Authorized").map(|(i, _)| i).collect();
    let reconnects: Vec<usize> =
        types.iter().enumerate().filter(|(_, t)| *t == "Connection Reconnected").map(|(i, _)| i).collect();
    assert_eq!((authorized.len(), reconnects.len()), (2, 1), "{types:?}");
    assert!(authorized[1] < reconnects[0], "Authorized, then Reconnected: {types:?}");
    // No token in a read, a log line or an event.
    let secret = first_refresh.as_str().unwrap();
    for text in [lab.app.connection_logs(&lab.org, &id).await.text, lab.read(&id).await.to_string(), lab.app.logs()] {
        assert!(!text.contains(secret), "the refresh token leaked: {text}");
    }
}

/// A red connection reconnected with a new refresh token: green again, the red reason gone,
/// back in the refresh schedule (the sweep refreshes its short-lived token), refreshed with the
/// new refresh token; the granted scopes are the new grant's.
#[tokio::test]
async fn a_reconnect_clears_red_replaces_the_tokens_and_is_refreshed_on_schedule() {
    let lab = Lab::start(&[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")]).await;
    let q = scripted(&lab, "scripted", "read write", json!({})).await;
    let id = lab.create("scripted").await;
    assert!(lab.authorize_at(&q, &id).await.starts_with(SUCCESS));
    q.set_config(json!({"token": {"refresh_token": {"status": 400, "json": {"error": "invalid_grant"}}}})).await;
    lab.force_refresh(&id).await;
    let red = lab.read(&id).await;
    assert_eq!(
        (red["status"].as_str(), red["error"]["code"].as_str()),
        (Some("error"), Some("grant_refused")),
        "{red}"
    );

    // The new consent grants more scopes and a refresh token; its access token is short-lived.
    let refreshed = answer("read write admin", json!({"refresh_token": "{{refresh_token}}"}));
    q.set_config(json!({"token": {
        "authorization_code": answer("read write admin", json!({"refresh_token": "{{refresh_token}}", "expires_in": 4})),
        "refresh_token": refreshed}}))
    .await;
    let location = lab.authorize_at(&q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    let green = lab.read(&id).await;
    assert_same_connection(&red, &green);
    assert_eq!(green["status"], "configured");
    assert!(green["error"].is_null(), "the red reason is cleared: {green}");
    let found = lab.lookup(&id).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["token"]["scopes"], json!(["read", "write", "admin"]), "the new grant's scopes");

    // Back in the due index: the sweep refreshes it, with the new refresh token.
    let new_refresh = token_request(&q, "authorization_code", 1).await["issued"]["refresh_token"].clone();
    eventually(Duration::from_secs(20), "a refresh by the sweep after the reconnect", || async {
        q.token_requests("refresh_token").await.iter().any(|r| r["status"] == 200)
    })
    .await;
    let requests = q.token_requests("refresh_token").await;
    let sent = requests.iter().find(|r| r["status"] == 200).unwrap();
    assert_eq!(sent["form"]["refresh_token"], new_refresh, "{requests:?}");
    assert!(lab.messages(&id, "reconnected").await[0].contains("was error: grant_refused"));
    let app = &lab.app;
    assert_eq!(lab.events.count_at_least(app, &id, "Connection Reconnected", 1).await, 1);
}

/// A reconnect granting fewer scopes than the definition requires turns the connection red
/// `scopes_missing`, naming the missing ones (the failure redirect too); the connection is the
/// same, and a later complete grant makes it green.
#[tokio::test]
async fn a_reconnect_granting_fewer_scopes_turns_red_naming_them() {
    let lab = Lab::start(&[]).await;
    let q = scripted(&lab, "scripted", "read write", json!({"required_scopes": ["read", "write"]})).await;
    let id = lab.create("scripted").await;
    assert!(lab.authorize_at(&q, &id).await.starts_with(SUCCESS));
    let green = lab.read(&id).await;

    q.set_config(
        json!({"token": {"authorization_code": answer("read", json!({"refresh_token": "{{refresh_token}}"}))}}),
    )
    .await;
    let location = lab.authorize_at(&q, &id).await;
    assert!(location.starts_with(FAILURE), "{location}");
    assert_eq!(query_param(&location, "error").as_deref(), Some("scopes_missing"));
    assert!(query_param(&location, "error_description").unwrap_or_default().contains("write"), "{location}");
    let red = lab.read(&id).await;
    assert_same_connection(&green, &red);
    assert_eq!((red["status"].as_str(), red["error"]["code"].as_str()), (Some("error"), Some("scopes_missing")));
    let message = red["error"]["message"].as_str().unwrap();
    assert!(message.contains("write") && !message.contains("read,"), "names the missing scope only: {message}");
    let found = lab.lookup(&id).await;
    found.assert_problem(StatusCode::CONFLICT);
    assert_eq!(found.problem_type(), "urn:latchkey:problem:connection-error");
    let app = &lab.app;
    let expected = ["Connection Authorized", "Connection Reconnected", "Connection Error"].map(String::from);
    let types = lab.events.types_when(app, &id, "Authorized, Reconnected, Error", |t| t.ends_with(&expected)).await;
    assert!(types.ends_with(&expected), "{types:?}");

    q.set_config(json!({})).await;
    assert!(lab.authorize_at(&q, &id).await.starts_with(SUCCESS));
    let again = lab.read(&id).await;
    assert_eq!(again["status"], "configured", "{again}");
    assert!(again["error"].is_null());
}

/// A disconnect removes the tokens (and revokes them): a reconnect whose answer has no refresh
/// token never brings the old one back. The connection has none, and no refresh is attempted.
#[tokio::test]
async fn a_disconnected_connection_never_gets_its_old_refresh_token_back() {
    let lab = Lab::start(&[]).await;
    let q = scripted(&lab, "scripted", "read", json!({})).await;
    let id = lab.create("scripted").await;
    assert!(lab.authorize_at(&q, &id).await.starts_with(SUCCESS));
    let disconnected =
        lab.app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&lab.org), None).await;
    assert!(disconnected.status.is_success(), "{}", disconnected.text);

    q.set_config(json!({"token": {"authorization_code": answer("read", json!({}))}})).await;
    assert!(lab.authorize_at(&q, &id).await.starts_with(SUCCESS));
    let read = lab.read(&id).await;
    assert_eq!(read["status"], "configured");
    assert!(read["refresh_token_expires_at"].is_null());
    lab.lookup(&id).await.assert_status(StatusCode::OK);
    lab.force_refresh(&id).await;
    assert_eq!(q.token_calls("refresh_token").await, 0, "no refresh token to send, the old one least of all");
    let reconnected = lab.messages(&id, "reconnected").await;
    assert!(
        reconnected[0].contains("was disconnected") && reconnected[0].contains("no refresh token"),
        "{reconnected:?}"
    );
}

/// Against oidc-provider, which (like Google without `prompt=consent`) issues a refresh token
/// only for a grant with `offline_access`: the second consent, without it, answers no refresh
/// token; the connection keeps the first grant's, and the provider accepts it.
#[tokio::test]
async fn a_reconnect_at_oidc_provider_keeps_the_first_grants_refresh_token() {
    let lab = Lab::start(&[]).await;
    let oidc = OidcServer::start(json!({"redirect_uris": [format!("{}/v1/oauth/callback", lab.app.address)],
        "issue_refresh_token": "offline_access", "rotate_refresh_token": true}))
    .await;
    let endpoints = (oidc.authorize_endpoint(), oidc.token_endpoint());
    let client = (oidc.client.client_id.as_str(), oidc.client.client_secret.as_str());
    let consent = json!({"authorization_params": {"prompt": "consent"}});
    lab.define("idp", (&endpoints.0, &endpoints.1), client, "openid offline_access api:read", consent.clone()).await;
    let id = lab.create("idp").await;
    let server = &oidc;
    let location = lab.authorize(&id, |url| async move { server.login_and_consent(&url).await }).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    let first = lab.read(&id).await;
    let first_access = lab.lookup(&id).await.body["token"]["access_token"].as_str().unwrap().to_owned();

    // The organization drops offline_access: the next consent brings no refresh token.
    lab.define("idp", (&endpoints.0, &endpoints.1), client, "openid api:read", consent).await;
    let location = lab.authorize(&id, |url| async move { server.login_and_consent(&url).await }).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    let second = lab.read(&id).await;
    assert_same_connection(&first, &second);
    let found = lab.lookup(&id).await;
    found.assert_status(StatusCode::OK);
    let second_access = found.body["token"]["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second_access, first_access, "the new grant's access token");
    assert_eq!(found.body["token"]["scopes"], json!(["openid", "api:read"]), "the new grant's scopes");
    let reconnected = lab.messages(&id, "reconnected").await;
    assert!(reconnected[0].contains("kept"), "{reconnected:?}");

    // The kept refresh token is the first grant's, and oidc-provider takes it.
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let stats = oidc.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["reused_refresh_tokens"], 0, "{stats}");
    let refreshed = lab.lookup(&id).await.body["token"]["access_token"].as_str().unwrap().to_owned();
    assert_eq!(oidc.introspect(&refreshed).await["active"], true);
    assert_ne!(lab.read(&id).await["status"], "error", "oidc-provider took the kept refresh token");
    let app = &lab.app;
    assert_eq!(lab.events.count_at_least(app, &id, "Connection Reconnected", 1).await, 1);
}

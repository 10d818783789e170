//! Credential verification (SPEC section 10): a definition's `verify` request, sent to a
//! provider on loopback (an axum server of this test that accepts one API key and refuses
//! others, and can be made to fail or to vanish) at create and values PATCH (refused or
//! unverifiable credentials are never stored), on demand, and by the sweep, which turns a
//! connection whose key was revoked red `credentials_rejected`. No key ever appears in an
//! answer, a log line or an error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, aws_backend, eventually, random_hex, random_secret};

const ORG: &str = "acme";
const KEY_PATH: &str = "/v1/me";
const TOKEN_PATH: &str = "/oauth/token";

/// What the test provider does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 for the accepted key, 401 for any other.
    Normal,
    /// 503 whatever the key.
    Down,
}

#[derive(Debug)]
struct ProviderState {
    accepted: String,
    mode: Mode,
    /// The `Authorization` header and `account` query of every request, in order.
    seen: Vec<(String, Option<String>)>,
    /// While set, each request is held before it is answered: `arrived` is notified when one
    /// is, and it is answered once the test notifies `release`.
    hold: Option<Hold>,
    /// Access tokens issued by `POST /oauth/token` (a refresh): each one becomes the accepted key.
    issued: u32,
}

/// A provider's answer held until the test lets it go ([`Provider::hold`]).
#[derive(Debug, Clone)]
struct Hold {
    arrived: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

/// A provider's "who am I" endpoint on loopback: `GET /v1/me?account=..` with
/// `Authorization: Bearer <key>`.
struct Provider {
    base: String,
    state: Arc<Mutex<ProviderState>>,
    server: tokio::task::JoinHandle<()>,
}

impl Provider {
    async fn start(accepted: &str) -> Self {
        let state = Arc::new(Mutex::new(ProviderState {
            accepted: accepted.to_owned(),
            mode: Mode::Normal,
            seen: Vec::new(),
            hold: None,
            issued: 0,
        }));
        async fn me(
            State(state): State<Arc<Mutex<ProviderState>>>,
            Query(q): Query<std::collections::HashMap<String, String>>,
            headers: HeaderMap,
        ) -> (AxumStatus, &'static str) {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let hold = {
                let mut s = state.lock().unwrap();
                s.seen.push((auth.clone(), q.get("account").cloned()));
                s.hold.clone()
            };
            if let Some(hold) = hold {
                hold.arrived.notify_one();
                hold.release.notified().await;
            }
            let s = state.lock().unwrap();
            match s.mode {
                Mode::Down => (AxumStatus::SERVICE_UNAVAILABLE, "maintenance"),
                Mode::Normal if auth == format!("Bearer {}", s.accepted) => (AxumStatus::OK, r#"{"id":"me"}"#),
                Mode::Normal => (AxumStatus::UNAUTHORIZED, r#"{"error":"invalid key, echo-this-body"}"#),
            }
        }
        /// A token endpoint that refreshes any refresh token: a new access token for an hour,
        /// which from then on is the one `me` accepts.
        async fn token(State(state): State<Arc<Mutex<ProviderState>>>) -> axum::Json<Value> {
            let mut s = state.lock().unwrap();
            s.issued += 1;
            s.accepted = format!("fresh-access-{}-{}", s.issued, random_hex());
            axum::Json(json!({"access_token": s.accepted, "token_type": "Bearer", "expires_in": 3600,
                              "refresh_token": format!("rt-{}", s.issued)}))
        }
        let router = axum::Router::new()
            .route(KEY_PATH, axum::routing::get(me))
            .route(TOKEN_PATH, axum::routing::post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { base, state, server }
    }

    fn accept_only(&self, key: &str) {
        self.state.lock().unwrap().accepted = key.to_owned();
    }

    fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// From now on every request waits for the test: the returned [`Hold`] says when one
    /// arrived and lets it be answered.
    fn hold(&self) -> Hold {
        let hold =
            Hold { arrived: Arc::new(tokio::sync::Notify::new()), release: Arc::new(tokio::sync::Notify::new()) };
        self.state.lock().unwrap().hold = Some(hold.clone());
        hold
    }

    fn refreshes(&self) -> u32 {
        self.state.lock().unwrap().issued
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    fn last_seen(&self) -> (String, Option<String>) {
        self.state.lock().unwrap().seen.last().cloned().expect("a request reached the provider")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An API-key definition verified at `base` (a URL with a path template from the `account`
/// input).
fn definition(base: &str) -> Value {
    json!({"auth": "api_key", "inputs": {
            "apiKey": {"type": "password", "required": true},
            "account": {"type": "string", "required": true}},
        "verify": {"method": "GET", "url": format!("{base}{KEY_PATH}?account={{{{account}}}}"),
                   "headers": {"Authorization": "Bearer {{apiKey}}"}, "expect_status": [200]}})
}

async fn define(app: &TestApp, key: &str, def: &Value) {
    let org = app.token(ORG, None, &[]).await;
    let put = app.put_definition(&org, key, def).await;
    assert!(put.status.is_success(), "{}", put.text);
}

async fn create(app: &TestApp, key: &str, api_key: &str) -> crate::harness::Reply {
    let org = app.token(ORG, None, &[]).await;
    app.create_connection(
        &org,
        &json!({"definition": key, "customer": "c-1", "values": {"apiKey": api_key, "account": "a&b=c"}}),
    )
    .await
}

async fn count_connections(app: &TestApp) -> usize {
    let org = app.token(ORG, None, &[]).await;
    let list = app.list_connections(&org, "").await;
    list.assert_status(StatusCode::OK);
    list.body["items"].as_array().unwrap().len()
}

async fn verify_now(app: &TestApp, token: &str, id: &str) -> crate::harness::Reply {
    app.request(Method::POST, &format!("/v1/connections/{id}/verify"), Some(token), None).await
}

async fn log_types(app: &TestApp, id: &str) -> Vec<String> {
    let org = app.token(ORG, None, &[]).await;
    let logs = app.connection_logs(&org, id).await;
    logs.assert_status(StatusCode::OK);
    logs.body.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

fn key() -> String {
    format!("sk_live_{}", random_hex())
}

#[tokio::test]
async fn a_verify_block_is_checked_when_defined_and_shown_in_reads() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let bad = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password"}},
        "verify": {"method": "GET", "url": "http://api.acme.example/{{nope}}",
                   "headers": {"X-Key": "{{apiKey}}", "Host": "evil.example"}, "expect_status": [401]}});
    let put = app.put_definition(&org, "acme", &bad).await;
    put.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let fields = put.error_fields();
    for f in ["verify.url", "verify.headers.Host", "verify.expect_status"] {
        assert!(fields.contains(&f.to_owned()), "{f}: {}", put.text);
    }
    let templated_host = json!({"auth": "api_key", "inputs": {"sub": {"type": "string"}},
        "verify": {"method": "GET", "url": "https://{{sub}}.acme.example/me"}});
    app.put_definition(&org, "acme", &templated_host).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let oauth_only = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password"}},
        "verify": {"method": "GET", "url": "https://api.acme.example/me", "headers": {"Authorization": "Bearer {{access_token}}"}}});
    app.put_definition(&org, "acme", &oauth_only).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    // The outbound policy of provider endpoints: no private address.
    let private = app.put_definition(&org, "acme", &definition("https://10.0.0.1")).await;
    private.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(private.error_fields(), vec!["verify.url".to_owned()], "{}", private.text);

    let def = definition("https://api.acme.example");
    define(&app, "acme", &def).await;
    let read = app.get_definition(&org, "acme").await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body["verify"], def["verify"]);
}

#[tokio::test]
async fn create_stores_only_credentials_the_provider_accepts() {
    let provider = Provider::start("placeholder").await;
    let app = TestApp::spawn().await;
    define(&app, "acme", &definition(&provider.base)).await;
    let good = key();
    provider.accept_only(&good);

    let bad = key();
    let refused = create(&app, "acme", &bad).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:credentials-rejected");
    assert_eq!(refused.body["provider_status"], 401);
    assert!(!refused.text.contains(&bad) && !refused.text.contains("echo-this-body"), "{}", refused.text);
    assert_eq!(count_connections(&app).await, 0, "nothing stored");
    let (auth, account) = provider.last_seen();
    assert_eq!(auth, format!("Bearer {bad}"));
    assert_eq!(account.as_deref(), Some("a&b=c"), "the value went into the query as one value");

    let created = create(&app, "acme", &good).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured");
    let id = created.body["id"].as_str().unwrap();
    assert!(log_types(&app, id).await.contains(&"verified".to_owned()));
    assert_eq!(count_connections(&app).await, 1);
    let logs = app.logs();
    assert!(!logs.contains(&good) && !logs.contains(&bad), "no key in the server's logs");
}

#[tokio::test]
async fn create_while_the_provider_cannot_answer_is_502_and_stores_nothing() {
    let provider = Provider::start("k").await;
    let app = TestApp::spawn().await;
    define(&app, "acme", &definition(&provider.base)).await;
    provider.set_mode(Mode::Down);
    let down = create(&app, "acme", "k").await;
    down.assert_problem(StatusCode::BAD_GATEWAY);
    assert_eq!(down.problem_type(), "urn:latchkey:problem:verification-unavailable");
    assert!(!down.text.contains("maintenance"), "the provider's body is never echoed: {}", down.text);

    // A port nobody listens on: the connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    define(&app, "gone", &definition(&closed)).await;
    let unreachable = create(&app, "gone", "k").await;
    unreachable.assert_problem(StatusCode::BAD_GATEWAY);
    assert_eq!(unreachable.problem_type(), "urn:latchkey:problem:verification-unavailable");
    assert_eq!(count_connections(&app).await, 0);
}

/// The per-origin breaker holds back only the sweep: once the provider answers again, a
/// create goes through at once, however many failed before.
#[tokio::test]
async fn a_create_after_an_outage_is_not_held_back_by_the_breaker() {
    let provider = Provider::start("k").await;
    let app = TestApp::spawn().await;
    define(&app, "acme", &definition(&provider.base)).await;
    provider.set_mode(Mode::Down);
    for _ in 0..5 {
        create(&app, "acme", "k").await.assert_problem(StatusCode::BAD_GATEWAY);
    }
    provider.set_mode(Mode::Normal);
    let before = provider.requests();
    create(&app, "acme", "k").await.assert_status(StatusCode::CREATED);
    assert_eq!(provider.requests(), before + 1, "the create's check reached the provider");
}

#[tokio::test]
async fn a_patch_with_a_refused_key_keeps_the_old_values() {
    let old = key();
    let provider = Provider::start(&old).await;
    let app = TestApp::spawn().await;
    define(&app, "acme", &definition(&provider.base)).await;
    let created = create(&app, "acme", &old).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    let org = app.token(ORG, None, &[]).await;

    let patched = app.patch_connection(&org, id, &json!({"values": {"apiKey": key()}}), None).await;
    patched.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(patched.problem_type(), "urn:latchkey:problem:credentials-rejected");
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["fields"]["apiKey"], old.as_str(), "the old key is kept");

    let new = key();
    provider.accept_only(&new);
    app.patch_connection(&org, id, &json!({"values": {"apiKey": new}}), None).await.assert_status(StatusCode::OK);
    let found = app.lookup(&runtime, id, &json!({})).await;
    assert_eq!(found.body["fields"]["apiKey"], new.as_str());
}

#[tokio::test]
async fn on_demand_verification_answers_and_turns_a_revoked_key_red_and_back() {
    let good = key();
    let provider = Provider::start(&good).await;
    let app = TestApp::spawn().await;
    define(&app, "acme", &definition(&provider.base)).await;
    let id = create(&app, "acme", &good).await.body["id"].as_str().unwrap().to_owned();
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let other = app.token(ORG, Some("c-2"), &[]).await;

    let ok = verify_now(&app, &customer, &id).await;
    ok.assert_status(StatusCode::OK);
    assert_eq!((ok.body["ok"].clone(), ok.body["status"].clone()), (json!(true), json!(200)), "{}", ok.text);
    assert!(ok.body["checked_at"].is_string());
    verify_now(&app, &other, &id).await.assert_problem(StatusCode::NOT_FOUND);

    provider.accept_only("revoked-elsewhere");
    let org = app.token(ORG, None, &[]).await;
    let refused = verify_now(&app, &org, &id).await;
    refused.assert_status(StatusCode::OK);
    assert_eq!((refused.body["ok"].clone(), refused.body["status"].clone()), (json!(false), json!(401)));
    let conn = app.get_connection(&org, &id).await;
    assert_eq!(conn.body["status"], "error");
    assert_eq!(conn.body["error"]["code"], "credentials_rejected");
    assert!(log_types(&app, &id).await.contains(&"verify_failed".to_owned()));
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, &id, &json!({})).await.assert_problem(StatusCode::CONFLICT);

    provider.set_mode(Mode::Down);
    let down = verify_now(&app, &org, &id).await;
    down.assert_problem(StatusCode::BAD_GATEWAY);
    provider.set_mode(Mode::Normal);
    provider.accept_only(&good);
    let back = verify_now(&app, &org, &id).await;
    assert_eq!(back.body["ok"], true, "{}", back.text);
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "configured");

    // A definition without a verify request has nothing to run.
    define(&app, "plain", &json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password"}}})).await;
    let plain = app
        .create_connection(&org, &json!({"definition": "plain", "customer": "c-1", "values": {"apiKey": "x"}}))
        .await;
    verify_now(&app, &org, plain.body["id"].as_str().unwrap()).await.assert_problem(StatusCode::CONFLICT);
}

/// The sweep verifies each connection every `LATCHKEY_VERIFY_INTERVAL_SECS`: a key revoked at
/// the provider turns the connection red `credentials_rejected`, with its log line and event.
#[tokio::test]
async fn the_periodic_check_turns_a_revoked_key_red() {
    let good = key();
    let provider = Provider::start(&good).await;
    let env = [("LATCHKEY_REFRESH_INTERVAL_SECS", "1"), ("LATCHKEY_VERIFY_INTERVAL_SECS", "1")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    define(&app, "acme", &definition(&provider.base)).await;
    let id = create(&app, "acme", &good).await.body["id"].as_str().unwrap().to_owned();
    let org = app.token(ORG, None, &[]).await;

    // Verified again by the sweep while the key is good: still yellow.
    let before = provider.requests();
    eventually(Duration::from_secs(20), "a periodic verification", || async { provider.requests() > before + 1 }).await;
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "configured");

    provider.accept_only("someone-revoked-the-key");
    eventually(Duration::from_secs(20), "the connection turns red", || async {
        app.get_connection(&org, &id).await.body["status"] == "error"
    })
    .await;
    let conn = app.get_connection(&org, &id).await;
    assert_eq!(conn.body["error"]["code"], "credentials_rejected", "{}", conn.text);
    assert!(log_types(&app, &id).await.contains(&"verify_failed".to_owned()));
    if !aws_backend() {
        assert!(app.logs().contains("Connection Error"), "the event is published");
    }
    // Red connections are not verified again until someone acts.
    app.sweeps_run(2).await;
    let after_red = provider.requests();
    app.sweeps_run(2).await;
    assert_eq!(provider.requests(), after_red, "no more requests for a red connection");
    assert!(!app.logs().contains(&good));
}

/// An OAuth definition whose token endpoint and verify request are `base`'s.
fn oauth_definition(base: &str) -> Value {
    json!({"auth": "oauth2_authorization_code", "inputs": {
            "authorizeUrl": {"type": "url", "default": format!("{base}/oauth/authorize")},
            "tokenUrl": {"type": "url", "default": format!("{base}{TOKEN_PATH}")},
            "clientId": {"type": "string", "default": "client"},
            "clientSecret": {"type": "password", "default": "client-secret"}},
        "verify": {"method": "GET", "url": format!("{base}{KEY_PATH}"),
                   "headers": {"Authorization": "Bearer {{access_token}}"}}})
}

/// An OAuth connection is verified with a fresh access token: an expired one is refreshed
/// first, and one the provider refuses is renewed once and tried again, before a refusal
/// counts. Neither turns the connection red.
#[tokio::test]
async fn oauth_connections_are_verified_with_a_fresh_access_token() {
    let provider = Provider::start("nothing-issued-yet").await;
    let app = TestApp::spawn().await;
    define(&app, "idp", &oauth_definition(&provider.base)).await;
    let org = app.token(ORG, None, &[]).await;
    let import = |tokens: Value| {
        let (app, org) = (&app, &org);
        async move {
            let created =
                app.create_connection(org, &json!({"definition": "idp", "customer": "c-1", "tokens": tokens})).await;
            created.assert_status(StatusCode::CREATED);
            created.body["id"].as_str().unwrap().to_owned()
        }
    };

    let expired = import(json!({"access_token": "stale-access", "refresh_token": "rt-imported",
                                "expires_at": "2020-01-01T00:00:00Z"}))
    .await;
    let before = provider.requests();
    let answer = verify_now(&app, &org, &expired).await;
    answer.assert_status(StatusCode::OK);
    assert_eq!(answer.body["ok"], true, "{}", answer.text);
    assert_eq!(provider.refreshes(), 1, "refreshed before the check");
    assert_eq!(provider.requests(), before + 1, "one check, never sent with the stale token");
    assert!(provider.last_seen().0.starts_with("Bearer fresh-access-1-"), "never the stale token");
    assert_eq!(app.get_connection(&org, &expired).await.body["status"], "configured");

    // Valid by its expiry, but revoked at the provider after the import: renewed once, then
    // accepted.
    provider.accept_only("revoked-access");
    let revoked = import(json!({"access_token": "revoked-access", "refresh_token": "rt-imported",
                                "expires_in": 3600}))
    .await;
    provider.accept_only("someone-revoked-it");
    let answer = verify_now(&app, &org, &revoked).await;
    assert_eq!(answer.body["ok"], true, "{}", answer.text);
    assert_eq!(provider.refreshes(), 2, "one refresh after the refusal");
    let conn = app.get_connection(&org, &revoked).await;
    assert_eq!(conn.body["status"], "configured", "{}", conn.text);
    assert!(!app.logs().contains("stale-access") && !app.logs().contains("fresh-access-"));
}

/// An imported grant's live access token is checked at create like values: refused, 422
/// `credentials-rejected`; no answer, 502; nothing stored either way.
#[tokio::test]
async fn an_imported_token_the_provider_refuses_is_never_stored() {
    let provider = Provider::start("the-live-token").await;
    let app = TestApp::spawn().await;
    define(&app, "idp", &oauth_definition(&provider.base)).await;
    let org = app.token(ORG, None, &[]).await;
    let import = |access_token: &str| {
        let body = json!({"definition": "idp", "customer": "c-1",
                          "tokens": {"access_token": access_token, "refresh_token": "rt", "expires_in": 3600}});
        let (app, org) = (&app, &org);
        async move { app.create_connection(org, &body).await }
    };

    let refused = import("a-revoked-token").await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:credentials-rejected");
    assert!(!refused.text.contains("a-revoked-token"), "{}", refused.text);
    assert_eq!(provider.last_seen().0, "Bearer a-revoked-token");
    provider.set_mode(Mode::Down);
    let down = import("the-live-token").await;
    down.assert_problem(StatusCode::BAD_GATEWAY);
    assert_eq!(down.problem_type(), "urn:latchkey:problem:verification-unavailable");
    assert_eq!(count_connections(&app).await, 0, "nothing stored");

    provider.set_mode(Mode::Normal);
    let created = import("the-live-token").await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured");
    assert_eq!(provider.refreshes(), 0, "checked with the imported token itself");
}

/// A verification answered after the connection changed is not applied to it: a slow 401
/// that outlives a disconnect leaves the connection disconnected, not red, and announces
/// nothing.
#[tokio::test]
async fn a_refusal_that_arrives_after_a_disconnect_is_not_applied() {
    let good = key();
    let provider = Provider::start(&good).await;
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    define(&app, "acme", &definition(&provider.base)).await;
    let id = create(&app, "acme", &good).await.body["id"].as_str().unwrap().to_owned();
    let org = app.token(ORG, None, &[]).await;

    provider.accept_only("someone-revoked-the-key");
    let hold = provider.hold();
    let disconnect_meanwhile = async {
        hold.arrived.notified().await;
        let path = format!("/v1/connections/{id}/disconnect");
        app.request(Method::POST, &path, Some(&org), None).await.assert_status(StatusCode::OK);
        hold.release.notify_one();
    };
    let (answer, ()) = tokio::join!(verify_now(&app, &org, &id), disconnect_meanwhile);
    answer.assert_status(StatusCode::OK);
    assert_eq!(answer.body["status"], 401, "the provider's answer is still reported: {}", answer.text);

    let conn = app.get_connection(&org, &id).await;
    assert_eq!(conn.body["status"], "disconnected", "{}", conn.text);
    assert!(conn.body["error"].is_null(), "{}", conn.text);
    assert!(!log_types(&app, &id).await.contains(&"verify_failed".to_owned()), "no result written");
    if !aws_backend() {
        assert!(!app.logs().contains("Connection Error"), "no event for a result that was not applied");
    }
}

/// Connections created before their definition had a verify request are scheduled when it
/// gains one, and the sweep verifies them.
#[tokio::test]
async fn a_definition_that_gains_a_verify_request_schedules_its_connections() {
    let good = key();
    let provider = Provider::start(&good).await;
    let env = [("LATCHKEY_REFRESH_INTERVAL_SECS", "1"), ("LATCHKEY_VERIFY_INTERVAL_SECS", "1")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let mut def = definition(&provider.base);
    let verify = def.as_object_mut().unwrap().remove("verify").unwrap();
    define(&app, "acme", &def).await;
    let id = create(&app, "acme", "revoked-before-verification").await.body["id"].as_str().unwrap().to_owned();
    assert_eq!(provider.requests(), 0, "nothing to verify yet");

    def["verify"] = verify;
    define(&app, "acme", &def).await;
    let org = app.token(ORG, None, &[]).await;
    eventually(Duration::from_secs(20), "the old connection is verified and turns red", || async {
        app.get_connection(&org, &id).await.body["status"] == "error"
    })
    .await;
    assert_eq!(app.get_connection(&org, &id).await.body["error"]["code"], "credentials_rejected");
}

/// The connections-api Lambda handler serves the sample `verify-connection.json`.
#[tokio::test]
async fn the_lambda_handler_serves_the_verify_sample() {
    use http_body_util::BodyExt;
    use latchkey::config::Components;
    use latchkey::http::Surface;
    use latchkey::http::auth::Verifier;
    use latchkey::service::ServiceOptions;
    use secrecy::SecretString;
    use tower::ServiceExt;

    const SAMPLE_ID: &str = "con_01kahzz7v4m3n2q0000000000a";
    let good = key();
    let provider = Provider::start(&good).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let router = latchkey::http::router_for(
        Surface::ConnectionsApi,
        app.router_state(
            Verifier::hs256(&SecretString::from("latchkey-events-dev-secret-not-for-production")).unwrap(),
        ),
    );
    let service = &app.service;
    let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse(ORG).unwrap());
    service.put_definition(&p, "acme", &definition(&provider.base)).await.unwrap();
    let conn = service
        .create_connection(
            &p,
            &json!({"definition": "acme", "customer": "c-1", "values": {"apiKey": good, "account": "x"}}),
        )
        .await
        .unwrap();

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/connections-api/verify-connection.json");
    let raw = std::fs::read_to_string(path).unwrap().replace(SAMPLE_ID, conn.id.as_str());
    let req = lambda_http::request::from_str(&raw).expect("a valid API Gateway event");
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!((body["ok"].clone(), body["status"].clone()), (json!(true), json!(200)), "{body}");
}

//! The Lambda handlers, in-process over the embedded adapters, fed the sample payloads in
//! `events/`: what `cargo lambda invoke NAME --data-file events/...` sends.

use std::path::Path;

use http_body_util::BodyExt;
use latchkey::config::App;
use latchkey::http::auth::Verifier;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

/// The secret the sample events' tokens are signed with (see events/README.md).
const EVENTS_SECRET: &str = "latchkey-events-dev-secret-not-for-production";

fn event(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Api {
    router: axum::Router,
    app: App,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = App::embedded(dir.path()).unwrap();
        let router = latchkey::http::router(app.http_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET))));
        Self { router, app, _dir: dir }
    }

    /// Sends an API Gateway HTTP API (payload 2.0) event through the router, as lambda_http does.
    async fn send(&self, name: &str) -> (u16, Option<String>, Value) {
        let req = lambda_http::request::from_str(&event(name)).expect("a valid API Gateway event");
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, ct, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn connections_api_serves_the_sample_events() {
    let api = Api::new();
    assert_eq!(api.send("connections-api/healthz.json").await.0, 200);

    let (status, ct, body) = api.send("connections-api/unauthenticated.json").await;
    assert_eq!((status, ct.as_deref()), (401, Some("application/problem+json")));
    assert_eq!(body["status"], 401);

    let (status, _, def) = api.send("connections-api/put-definition.json").await;
    assert_eq!(status, 201, "{def}");
    assert_eq!(def["key"], "acme-api");

    let (status, _, conn) = api.send("connections-api/create-connection.json").await;
    assert_eq!(status, 201, "{conn}");
    assert_eq!(conn["customer"], "c-1");
    assert_eq!(conn["values"]["apiKey"], json!({"set": true}));
    assert_eq!(conn["values"]["endpoint"], "https://api.acme.example");

    let (status, _, page) = api.send("connections-api/list-connections.json").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    assert!(!page.to_string().contains("sk_test_sample_value"), "reads never return a password value");
}

#[tokio::test]
async fn connections_api_trusts_api_gateway_authorizer_claims_when_no_secret_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let app = App::embedded(dir.path()).unwrap();
    let deployed = latchkey::http::router(app.http_state(Verifier::ApiGatewayClaims));
    let send = |name: &str| {
        let router = deployed.clone();
        let req = lambda_http::request::from_str(&event(name)).expect("a valid API Gateway event");
        async move { router.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(send("connections-api/list-connections-jwt-authorizer.json").await, 200);
    // No authorizer claims: refused, and a bearer token alone is not trusted in this mode.
    assert_eq!(send("connections-api/unauthenticated.json").await, 401);
    assert_eq!(send("connections-api/list-connections.json").await, 401);
}

#[tokio::test]
async fn oauth_callback_refuses_a_state_it_never_issued() {
    // The samples' state was never issued by this deployment: a 400 page, nothing cached.
    let dir = tempfile::tempdir().unwrap();
    let app = App::embedded(dir.path()).unwrap();
    let deployed = latchkey::http::router(app.http_state(Verifier::ApiGatewayClaims));
    for name in ["oauth-callback/callback.json", "oauth-callback/denied.json"] {
        let req = lambda_http::request::from_str(&event(name)).expect("a valid API Gateway event");
        let res = deployed.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), 400, "{name}");
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("invalid, expired or was already used"), "{page}");
        assert!(!page.contains("SplxlOBeZQQYbYS6WxSbIA"), "the code is not echoed");
    }
}

#[tokio::test]
async fn token_refresh_sweeps_on_the_scheduled_event() {
    let api = Api::new();
    let _scheduled: Value = serde_json::from_str(&event("token-refresh/scheduled.json")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let summary = latchkey::lambda::handle_refresh(&api.app.service, deadline).await.unwrap();
    // Nothing is due on a fresh backend: a real, empty sweep.
    assert_eq!(summary, json!({"due": 0, "refreshed": 0, "failed": 0, "skipped": 0, "revocations": 0}));
}

#[tokio::test]
async fn token_revoke_handles_the_sample_event_and_its_replay() {
    let api = Api::new();
    let sample: Value = serde_json::from_str(&event("token-revoke/connection-disconnected.json")).unwrap();
    // No job for that connection on a fresh backend: nothing to do, however often it arrives.
    for _ in 0..2 {
        let done = latchkey::lambda::handle_revoke(&api.app.service, sample.clone()).await.unwrap();
        assert_eq!(done["jobs"], 0, "{done}");
    }
}

/// The sample lookup payload, pointed at a connection that exists.
fn lookup_payload(name: &str, id: &str) -> Value {
    let mut v: Value = serde_json::from_str(&event(name)).unwrap();
    v["connection_id"] = json!(id);
    v
}

#[tokio::test]
async fn token_lookup_serves_the_sample_events() {
    let api = Api::new();
    api.send("connections-api/put-definition.json").await;
    let (_, _, conn) = api.send("connections-api/create-connection.json").await;
    let id = conn["id"].as_str().unwrap();
    let service = &api.app.service;

    let found = latchkey::lambda::handle_lookup(service, lookup_payload("token-lookup/lookup.json", id)).await.unwrap();
    assert_eq!(found["fields"]["apiKey"], "sk_test_sample_value");
    assert_eq!(found["fields"]["endpoint"], "https://api.acme.example");
    assert_eq!(found["status"], "active");
    assert_eq!(found["token"], Value::Null);

    let reported =
        latchkey::lambda::handle_lookup(service, lookup_payload("token-lookup/report-error.json", id)).await.unwrap();
    assert_eq!(reported["status"], "error");
    assert_eq!(reported["error"]["message"], "Acme answered 401 Unauthorized");

    let red =
        latchkey::lambda::handle_lookup(service, lookup_payload("token-lookup/lookup.json", id)).await.unwrap_err();
    assert_eq!(red.error_type, "ConnectionError");
    assert!(!red.error_message.contains("sk_test_sample_value"));
}

#[tokio::test]
async fn token_lookup_failures_have_stable_error_types() {
    let api = Api::new();
    let service = &api.app.service;
    let unknown: Value = serde_json::from_str(&event("token-lookup/unknown-connection.json")).unwrap();
    let err = latchkey::lambda::handle_lookup(service, unknown).await.unwrap_err();
    assert_eq!(err.error_type, "ConnectionNotFound");

    for bad in [json!({"connection_id": "con_01kahzz7v4m3n2q0000000000a"}), json!({"org": "acme"}), json!([1, 2])] {
        let err = latchkey::lambda::handle_lookup(service, bad.clone()).await.unwrap_err();
        assert_eq!(err.error_type, "InvalidRequest", "{bad}");
    }
    let other_org = json!({"org": "umbrella", "connection_id": "con_01kahzz7v4m3n2q0000000000a"});
    assert_eq!(latchkey::lambda::handle_lookup(service, other_org).await.unwrap_err().error_type, "ConnectionNotFound");
}

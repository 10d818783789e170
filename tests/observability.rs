//! Every log line written while Latchkey handles an HTTP request or a Lambda invocation carries
//! that request's ids in its span (`span` of the JSON line, telemetry::json_subscriber):
//! `request_id` always, `org` and `connection_id` once known. And the EventBridge functions read
//! typed events: every sample in `events/` is one, a wrong detail is refused with a clear error.

use std::path::Path;

use axum::body::Body;
use http::Request;
use lambda_http::lambda_runtime::LambdaEvent;
use latchkey::config::Components;
use latchkey::http::Surface;
use latchkey::http::auth::Verifier;
use latchkey::lambda::{ConnectionEvent, TokenRefreshEvent};
use latchkey::telemetry::Captured;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::lambda_context;
use tower::ServiceExt;

/// The secret the sample events' tokens are signed with (events/README.md).
const EVENTS_SECRET: &str = "latchkey-events-dev-secret-not-for-production";
/// The connection id in the samples; the tests put a real one in its place.
const SAMPLE_ID: &str = "con_01kahzz7v4m3n2q0000000000a";
/// The request id of every sample API Gateway event that carries it: replaced per request.
const SAMPLE_REQUEST_IDS: [&str; 2] = ["JKJaXmPLvHcESHA=", "zNRv9reV4mnBJw="];

fn event(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn samples(function: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(function);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let name = format!("{function}/{}", e.unwrap().file_name().into_string().unwrap());
            let raw = event(&name);
            (name, raw)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "samples of {function}");
    out
}

/// The JSON log lines of everything this thread runs from now on (tests run on a current-thread
/// runtime, so the handlers' lines are this thread's).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let guard =
        tracing::subscriber::set_default(latchkey::telemetry::json_subscriber("info".parse().unwrap(), logs.clone()));
    (logs, guard)
}

/// The lines written since `from` whose span has `request_id`.
fn lines_of(logs: &Captured, from: usize, request_id: &str) -> Vec<Value> {
    logs.lines().into_iter().skip(from).filter(|l| l["span"]["request_id"] == request_id).collect()
}

fn line<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines.iter().find(|l| l["message"] == message).unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

/// A [`latchkey::lambda::MessageVisibility`] for a tick, which hands no message back.
struct NoHandBack;

#[async_trait::async_trait]
impl latchkey::lambda::MessageVisibility for NoHandBack {
    async fn delay(&self, _: &str, _: &str, _: std::time::Duration) -> Result<(), latchkey::lambda::VisibilityError> {
        panic!("a tick hands no message back")
    }
}

struct Api {
    router: axum::Router,
    app: Components,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = Components::embedded(dir.path(), Default::default()).unwrap();
        let verifier = Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap();
        let router = latchkey::http::router_for(Surface::ConnectionsApi, app.router_state(verifier));
        Self { router, app, _dir: dir }
    }

    /// Sends a sample API Gateway event with its connection id replaced by `id` and its request
    /// id by `request_id`: status, the `x-request-id` header, body.
    async fn send(&self, name: &str, id: &str, request_id: &str) -> (u16, Option<String>, Value) {
        let mut raw = event(name).replace(SAMPLE_ID, id);
        for sample in SAMPLE_REQUEST_IDS {
            raw = raw.replace(sample, request_id);
        }
        assert!(raw.contains(request_id), "{name} has a request id");
        let req = lambda_http::request::from_str(&raw).expect("an API Gateway event");
        self.exchange(req.map(|body| Body::from(body.to_vec()))).await
    }

    async fn exchange(&self, req: Request<Body>) -> (u16, Option<String>, Value) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let header = res.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        (status, header, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn http_request_lines_carry_the_request_id_org_and_connection_id() {
    let api = Api::new();
    let (logs, _guard) = capture();
    let (status, header, _) = api.send("connections-api/put-definition.json", SAMPLE_ID, "req-define").await;
    assert_eq!((status, header.as_deref()), (201, Some("req-define")), "API Gateway's request id is echoed");

    // The created connection's id is known only once it is created: the request line has it.
    let from = logs.lines().len();
    let (status, _, created) = api.send("connections-api/create-connection.json", SAMPLE_ID, "req-create").await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let lines = lines_of(&logs, from, "req-create");
    let request = line(&lines, "request");
    assert_eq!(request["span"]["org"], "acme", "{request}");
    assert_eq!(request["span"]["connection_id"], id, "{request}");
    assert_eq!(request["span"]["route"], "/v1/connections", "the route template: {request}");
    assert_eq!(request["status"], 201, "{request}");

    // A route with the id: every line written inside, the event sink's included, carries all three.
    let from = logs.lines().len();
    let (status, header, _) = api.send("connections-api/disconnect-connection.json", id, "req-disconnect").await;
    assert_eq!((status, header.as_deref()), (200, Some("req-disconnect")));
    let lines = lines_of(&logs, from, "req-disconnect");
    assert_eq!(lines.len(), logs.lines().len() - from, "every line of the request carries its id: {lines:#?}");
    for message in ["event published", "request"] {
        let l = line(&lines, message);
        assert_eq!((&l["span"]["org"], &l["span"]["connection_id"]), (&json!("acme"), &json!(id)), "{l}");
        assert_eq!(l["span"]["route"], "/v1/connections/{id}/disconnect", "{l}");
    }

    // Outside API Gateway the id is generated, and still echoed; the raw path is never logged.
    let from = logs.lines().len();
    let token = serde_json::from_str::<Value>(&event("connections-api/get-connection.json")).unwrap()["headers"]
        ["authorization"]
        .as_str()
        .unwrap()
        .to_owned();
    let req = Request::get(format!("/v1/connections/{id}?customer=c-secretive"))
        .header("authorization", &token)
        .body(Body::empty())
        .unwrap();
    let (status, header, _) = api.exchange(req).await;
    assert_eq!(status, 200);
    let generated = header.expect("a generated x-request-id");
    let lines = lines_of(&logs, from, &generated);
    let request = line(&lines, "request");
    assert_eq!((&request["span"]["org"], &request["span"]["connection_id"]), (&json!("acme"), &json!(id)));
    let everything = logs.lines().iter().map(Value::to_string).collect::<String>();
    assert!(!everything.contains("c-secretive"), "no query string in the logs");
    assert!(!everything.contains(token.trim_start_matches("Bearer ")), "no bearer token in the logs");
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_request_still_has_its_request_id_but_no_org() {
    let api = Api::new();
    let (logs, _guard) = capture();
    let (status, header, _) = api.send("connections-api/unauthenticated.json", SAMPLE_ID, "req-anonymous").await;
    assert_eq!((status, header.as_deref()), (401, Some("req-anonymous")));
    let lines = lines_of(&logs, 0, "req-anonymous");
    let request = line(&lines, "request");
    assert!(request["span"].get("org").is_none(), "nobody was authenticated: {request}");
}

#[tokio::test(flavor = "current_thread")]
async fn lambda_invocation_lines_carry_the_request_id_org_and_connection_id() {
    let api = Api::new();
    let service = &api.app.service;
    api.send("connections-api/put-definition.json", SAMPLE_ID, "req-define").await;
    let (_, _, created) = api.send("connections-api/create-connection.json", SAMPLE_ID, "req-create").await;
    let id = created["id"].as_str().unwrap();
    let (logs, _guard) = capture();

    // token-lookup: the error report publishes an event, inside the invocation.
    let mut report: Value = serde_json::from_str(&event("token-lookup/report-error.json")).unwrap();
    report["connection_id"] = json!(id);
    let invocation = LambdaEvent::new(report, lambda_context("inv-lookup"));
    latchkey::lambda::lookup_invocation(service, None, invocation).await.unwrap();
    let lines = lines_of(&logs, 0, "inv-lookup");
    let published = line(&lines, "event published");
    assert_eq!(published["span"]["name"], "invocation", "{published}");
    assert_eq!((&published["span"]["org"], &published["span"]["connection_id"]), (&json!("acme"), &json!(id)));
    assert!(!logs.lines().iter().any(|l| l.to_string().contains("401 Unauthorized")), "no payload in the logs");

    // token-revoke: the sample event, typed.
    let from = logs.lines().len();
    let sample: ConnectionEvent = serde_json::from_str(&event("token-revoke/connection-disconnected.json")).unwrap();
    let invocation = LambdaEvent::new(sample, lambda_context("inv-revoke"));
    let done = latchkey::lambda::revoke_invocation(service, invocation).await.unwrap();
    assert_eq!(done["jobs"], 0, "{done}");
    let lines = lines_of(&logs, from, "inv-revoke");
    let summary = line(&lines, "revocation jobs run");
    assert_eq!((&summary["span"]["org"], &summary["span"]["connection_id"]), (&json!("acme"), &json!(SAMPLE_ID)));

    // token-refresh: the sweep's summary line (what the refresh-failure alarm reads) too.
    let from = logs.lines().len();
    let scheduled: TokenRefreshEvent = serde_json::from_str(&event("token-refresh/scheduled.json")).unwrap();
    let invocation = LambdaEvent::new(scheduled, lambda_context("inv-refresh"));
    let visibility = NoHandBack;
    let ports = latchkey::lambda::RefreshPorts { queue: None, visibility: &visibility, keys: &api.app.keys };
    latchkey::lambda::refresh_invocation(service, ports, invocation).await.unwrap();
    let lines = lines_of(&logs, from, "inv-refresh");
    let sweep = line(&lines, "refresh sweep");
    assert!(sweep["failed"].is_u64(), "the metric filter's field stays at the top level: {sweep}");
}

/// Every sample of the EventBridge functions is their typed event (token-refresh's: its schedule,
/// or a batch of its refresh queue); a detail of the wrong shape is an error that names the
/// member, as the runtime reports it, never a panic.
#[test]
fn eventbridge_samples_are_typed_events_and_a_wrong_detail_is_named() {
    for (name, raw) in samples("token-refresh") {
        match serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{name}: {e}")) {
            TokenRefreshEvent::Schedule(e) => {
                assert_eq!((e.source.as_str(), e.detail_type.as_str()), ("aws.events", "Scheduled Event"), "{name}");
            }
            TokenRefreshEvent::Queue(batch) => {
                assert!(!batch.records.is_empty(), "{name}");
                for record in &batch.records {
                    let body = record.body.as_deref().unwrap_or_else(|| panic!("{name}: a record without a body"));
                    let message =
                        latchkey::service::RefreshMessage::parse(body).unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert!(!message.entries.is_empty(), "{name}: {body}");
                }
            }
            TokenRefreshEvent::Rotate(r) => assert!(!r.rotate_branch_keys.orgs.is_empty(), "{name}"),
        }
    }
    for (name, raw) in samples("token-revoke") {
        let e: ConnectionEvent = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(e.source, "latchkey", "{name}");
        assert_eq!((e.detail.org.as_str(), e.detail.connection_id.as_str()), ("acme", SAMPLE_ID), "{name}");
    }

    let sample: Value = serde_json::from_str(&event("token-revoke/connection-disconnected.json")).unwrap();
    let with_detail = |detail: Value| {
        let mut e = sample.clone();
        e["detail"] = detail;
        serde_json::from_value::<ConnectionEvent>(e).map(|_| ()).unwrap_err().to_string()
    };
    let missing = with_detail(json!({"org": "acme"}));
    assert!(missing.contains("missing field `connection_id`"), "{missing}");
    let malformed = with_detail(json!({"org": "acme", "connection_id": "con_123"}));
    assert!(malformed.contains("must be a connection id"), "{malformed}");
    let not_an_object = with_detail(json!("acme"));
    assert!(not_an_object.contains("invalid type"), "{not_an_object}");
    let no_envelope = serde_json::from_value::<ConnectionEvent>(json!({"detail": {"org": "acme"}})).unwrap_err();
    assert!(no_envelope.to_string().contains("missing field"), "{no_envelope}");
}

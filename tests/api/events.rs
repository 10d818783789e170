//! SPEC section 11's events and audit line. A connection that loses working credentials for good
//! announces `Connection Expired` with its reason (`grant_refused`, `client_rejected`,
//! `scopes_missing` at a refresh against the scripted provider `tests/oauth/quirks.mjs`;
//! `token_expired` at a lookup; `credentials_rejected` at a verification or a caller's report);
//! a refresh that works after failures announces `Refresh Recovered`; no event carries a token or
//! a client secret. Every credential read writes one `audit = "credentials_read"` log line (over
//! HTTP with the answer's `x-request-id`, through `token-lookup` with the invocation's id), and
//! none for a read that fails or a report. `events/samples/` holds one event of each type with
//! the members Latchkey writes. Either backend (`LATCHKEY_TEST_BACKEND=aws`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use lambda_http::lambda_runtime::LambdaEvent;
use latchkey::domain::{Event, EventType, OrgId, WebhookId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::lambda_context;
use support::quirks::QuirkServer;

use crate::harness::{mint_token, random_hex};
use crate::reconnect::{Lab, SUCCESS, answer};

const TOKEN_REFRESHED: &str = "Token Refreshed";
const REFRESH_FAILED: &str = "Token Refresh Failed";
const RECOVERED: &str = "Refresh Recovered";
const CONNECTION_ERROR: &str = "Connection Error";
const EXPIRED: &str = "Connection Expired";
const DISCONNECTED: &str = "Connection Disconnected";

/// The `reason` of the last event of `kind` about `id`: from the event's detail on the aws
/// backend, from its `event published` line on the embedded one. Call after the tap has seen
/// the event (`types_when`).
async fn reason(lab: &Lab, id: &str, kind: &str) -> Option<String> {
    if lab.app.backend.aws().is_some() {
        lab.events.types(&lab.app, id).await;
        let detail = lab.events.detail(id, kind).unwrap_or_else(|| panic!("no {kind} detail about {id}"));
        return detail.get("reason").and_then(Value::as_str).map(str::to_owned);
    }
    let logs = lab.app.logs();
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains("event published") && l.contains(id) && l.contains(&format!("event=\"{kind}\"")))
        .unwrap_or_else(|| panic!("no {kind} line about {id}:\n{logs}"));
    line.split("reason=\"").nth(1).and_then(|rest| rest.split('"').next()).map(str::to_owned)
}

/// Asserts that no event about `id` (the aws backend's details; the embedded backend's event
/// lines, and its whole log) holds any of `secrets`.
async fn assert_no_secret_in_events(lab: &Lab, id: &str, secrets: &[String]) {
    assert!(!secrets.is_empty() && secrets.iter().all(|s| s.len() >= 8), "real needles: {secrets:?}");
    let mut seen = Vec::new();
    if lab.app.backend.aws().is_some() {
        for kind in lab.events.types(&lab.app, id).await {
            seen.push(lab.events.detail(id, &kind).expect("the detail of a received event").to_string());
        }
    } else {
        seen.push(lab.app.logs());
    }
    assert!(!seen.is_empty());
    for text in &seen {
        for secret in secrets {
            assert!(!text.contains(secret.as_str()), "a secret in an event: {text}");
        }
    }
}

/// Every token the scripted provider issued so far (any grant).
async fn issued_tokens(q: &QuirkServer) -> Vec<String> {
    let mut tokens = Vec::new();
    for grant in ["authorization_code", "refresh_token"] {
        for request in q.token_requests(grant).await {
            for member in ["access_token", "refresh_token"] {
                if let Some(t) = request["issued"][member].as_str() {
                    tokens.push(t.to_owned());
                }
            }
        }
    }
    tokens
}

/// A definition `key` at the scripted provider `q` (`scopes` asked, `oauth` its quirks block)
/// with a fresh client secret, returned; and an authorized connection of it.
async fn authorized(lab: &Lab, q: &QuirkServer, key: &str, scopes: &str, oauth: Value) -> (String, String) {
    let secret = format!("client-secret-{}", random_hex());
    lab.define(key, (&q.authorize_endpoint(), &q.token_endpoint()), ("quirk-client", &secret), scopes, oauth).await;
    let id = lab.create(key).await;
    let location = lab.authorize_at(q, &id).await;
    assert!(location.starts_with(SUCCESS), "{location}");
    (id, secret)
}

/// A refresh refused for good turns the connection red and says why three times: `Token Refresh
/// Failed` and `Connection Error` with the class, `Connection Expired` with the reason. A grant
/// that shrinks below the required scopes does the same without a failed refresh.
#[tokio::test]
async fn refusals_at_refresh_expire_the_connection_with_their_reason() {
    let lab = Lab::start(&[]).await;
    let rows = [
        ("grant", json!({"status": 400, "json": {"error": "invalid_grant"}}), "read", json!({}), "grant_refused"),
        ("client", json!({"status": 401, "json": {"error": "invalid_client"}}), "read", json!({}), "client_rejected"),
        (
            "scopes",
            answer("read", json!({"refresh_token": "{{refresh_token}}"})),
            "read admin",
            json!({"required_scopes": ["admin"]}),
            "scopes_missing",
        ),
    ];
    for (key, refused, scopes, oauth, class) in rows {
        let q = QuirkServer::start(json!({"token": {"refresh_token": [refused]}})).await;
        let (id, client_secret) = authorized(&lab, &q, key, scopes, oauth).await;
        lab.force_refresh(&id).await;
        let types = lab.events.types_when(&lab.app, &id, EXPIRED, |t| t.iter().any(|k| k == EXPIRED)).await;
        assert_eq!(lab.read(&id).await["error"]["code"], class, "{key}");
        assert_eq!(reason(&lab, &id, EXPIRED).await.as_deref(), Some(class), "{key}: {types:?}");
        assert_eq!(reason(&lab, &id, CONNECTION_ERROR).await.as_deref(), Some(class), "{key}");
        if class == "scopes_missing" {
            // The refresh worked; what it brought is not enough.
            assert!(types.iter().any(|k| k == TOKEN_REFRESHED), "{key}: {types:?}");
            assert!(!types.iter().any(|k| k == REFRESH_FAILED || k == RECOVERED), "{key}: {types:?}");
        } else {
            assert_eq!(reason(&lab, &id, REFRESH_FAILED).await.as_deref(), Some(class), "{key}");
        }
        for kind in [EXPIRED, CONNECTION_ERROR] {
            assert_eq!(lab.events.count(&lab.app, &id, kind).await, 1, "{key}: once: {types:?}");
        }
        if let Some(detail) = lab.events.detail(&id, EXPIRED) {
            // The sample shows what the bus carries: the same members.
            let sample = sample_detail("connection-expired.json");
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
            assert_eq!(keys(&detail), keys(&sample), "{key}: {detail}");
        }
        let mut secrets = issued_tokens(&q).await;
        secrets.push(client_secret);
        assert_no_secret_in_events(&lab, &id, &secrets).await;
    }
}

/// The `detail` of `events/samples/{name}`.
fn sample_detail(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/samples").join(name);
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    sample["detail"].clone()
}

/// An access token that expired with nothing to renew it: the lookup that finds it turns the
/// connection red, `Connection Expired` `token_expired`.
#[tokio::test]
async fn an_expired_token_nothing_renews_expires_the_connection() {
    let lab = Lab::start(&[]).await;
    let short = json!({"json": {"access_token": "{{access_token}}", "token_type": "Bearer", "expires_in": 2}});
    let q = QuirkServer::start(json!({"token": {"authorization_code": [short]}})).await;
    let (id, _) = authorized(&lab, &q, "short", "read", json!({})).await;
    crate::harness::eventually(std::time::Duration::from_secs(10), "the lookup answers token-expired", || async {
        lab.lookup(&id).await.status == StatusCode::CONFLICT
    })
    .await;
    lab.events.types_when(&lab.app, &id, EXPIRED, |t| t.iter().any(|k| k == EXPIRED)).await;
    assert_eq!(reason(&lab, &id, EXPIRED).await.as_deref(), Some("token_expired"));
    assert_eq!(reason(&lab, &id, CONNECTION_ERROR).await.as_deref(), Some("token_expired"));
    lab.lookup(&id).await.assert_problem(StatusCode::CONFLICT);
    assert_eq!(lab.events.count(&lab.app, &id, EXPIRED).await, 1, "announced once");
}

/// The verify provider of the credential tests: `GET /v1/me` answers the status it is told.
struct VerifyProvider {
    base: String,
    status: Arc<AtomicU16>,
    server: tokio::task::JoinHandle<()>,
}

impl VerifyProvider {
    async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let answer = status.clone();
        let router = axum::Router::new().route(
            "/v1/me",
            axum::routing::get(move || {
                let code = answer.load(Ordering::SeqCst);
                async move { axum::http::StatusCode::from_u16(code).unwrap() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { base, status, server }
    }

    /// An API-key definition verified here.
    fn definition(&self) -> Value {
        json!({"auth": "api_key",
            "inputs": {"apiKey": {"type": "password", "required": true}},
            "verify": {"method": "GET", "url": format!("{}/v1/me", self.base),
                       "headers": {"Authorization": "Bearer {{apiKey}}"}, "expect_status": [200]}})
    }
}

impl Drop for VerifyProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Defines `key` verified at `provider` and creates a connection of it for `c-1` with the API
/// key `api_key`; its id.
async fn api_key_connection(lab: &Lab, provider: &VerifyProvider, key: &str, api_key: &str) -> String {
    let put = lab.app.put_definition(&lab.org, key, &provider.definition()).await;
    assert!(put.status.is_success(), "{}", put.text);
    let body = json!({"definition": key, "customer": "c-1", "values": {"apiKey": api_key}});
    let created = lab.app.create_connection(&lab.org, &body).await;
    created.assert_status(StatusCode::CREATED);
    created.body["id"].as_str().unwrap().to_owned()
}

/// The provider refuses a key it accepted (a verification answers 401), or the integration
/// reports that it did: `Connection Expired` `credentials_rejected` either way, and `Connection
/// Error` with the class (`credentials_rejected`, `reported`).
#[tokio::test]
async fn refused_credentials_expire_the_connection_credentials_rejected() {
    let lab = Lab::start(&[]).await;
    let provider = VerifyProvider::start().await;
    let api_key = format!("sk_live_{}", random_hex());
    let verified = api_key_connection(&lab, &provider, "verified", &api_key).await;
    provider.status.store(401, Ordering::SeqCst);
    let path = format!("/v1/connections/{verified}/verify");
    let refused = lab.app.request(Method::POST, &path, Some(&lab.org), None).await;
    refused.assert_status(StatusCode::OK);
    assert_eq!(refused.body["ok"], false, "{}", refused.text);
    lab.events.types_when(&lab.app, &verified, EXPIRED, |t| t.iter().any(|k| k == EXPIRED)).await;
    assert_eq!(reason(&lab, &verified, EXPIRED).await.as_deref(), Some("credentials_rejected"));
    assert_eq!(reason(&lab, &verified, CONNECTION_ERROR).await.as_deref(), Some("credentials_rejected"));

    provider.status.store(200, Ordering::SeqCst);
    let reported = api_key_connection(&lab, &provider, "reported", &api_key).await;
    let body = json!({"action": "report_error", "message": "the API answered 401"});
    lab.app.lookup(&lab.runtime, &reported, &body).await.assert_status(StatusCode::OK);
    lab.events.types_when(&lab.app, &reported, EXPIRED, |t| t.iter().any(|k| k == EXPIRED)).await;
    assert_eq!(reason(&lab, &reported, EXPIRED).await.as_deref(), Some("credentials_rejected"));
    assert_eq!(reason(&lab, &reported, CONNECTION_ERROR).await.as_deref(), Some("reported"));
    // Reported again while red: the record takes the new message, no event repeats. The
    // disconnect after it is a marker: once its event is in, one of the report would be too.
    let again = json!({"action": "report_error", "message": "the API answered 401 again"});
    lab.app.lookup(&lab.runtime, &reported, &again).await.assert_status(StatusCode::OK);
    assert_eq!(lab.read(&reported).await["error"]["message"], "the API answered 401 again");
    let path = format!("/v1/connections/{reported}/disconnect");
    lab.app.request(Method::POST, &path, Some(&lab.org), None).await.assert_status(StatusCode::OK);
    let types = lab.events.types_when(&lab.app, &reported, DISCONNECTED, |t| t.iter().any(|k| k == DISCONNECTED)).await;
    assert_eq!(types.iter().filter(|k| *k == EXPIRED).count(), 1, "announced once: {types:?}");
    assert_eq!(types.iter().filter(|k| *k == CONNECTION_ERROR).count(), 1, "announced once: {types:?}");
    for id in [&verified, &reported] {
        assert_no_secret_in_events(&lab, id, std::slice::from_ref(&api_key)).await;
    }
}

/// A refresh that fails (503: tokens kept, `Token Refresh Failed` `provider_unavailable`) and
/// then works announces `Refresh Recovered` after `Token Refreshed`, once: the next good refresh
/// recovers from nothing.
#[tokio::test]
async fn a_refresh_that_works_after_failures_announces_refresh_recovered() {
    let lab = Lab::start(&[]).await;
    let outage = json!({"status": 503, "json": {"error": "temporarily_unavailable"}});
    let fresh = answer("read", json!({"refresh_token": "{{refresh_token}}"}));
    let q = QuirkServer::start(json!({"token": {"refresh_token": [outage, fresh]}})).await;
    let (id, client_secret) = authorized(&lab, &q, "flaky", "read", json!({})).await;

    lab.force_refresh(&id).await;
    lab.events.types_when(&lab.app, &id, REFRESH_FAILED, |t| t.iter().any(|k| k == REFRESH_FAILED)).await;
    assert_eq!(reason(&lab, &id, REFRESH_FAILED).await.as_deref(), Some("provider_unavailable"));
    assert_eq!(lab.events.count(&lab.app, &id, RECOVERED).await, 0, "not recovered yet");

    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    lab.events.count_at_least(&lab.app, &id, RECOVERED, 1).await;
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    lab.events.count_at_least(&lab.app, &id, TOKEN_REFRESHED, 2).await;
    let types = lab.events.types(&lab.app, &id).await;
    assert_eq!(types.iter().filter(|k| *k == RECOVERED).count(), 1, "once: {types:?}");
    assert!(!types.iter().any(|k| k == EXPIRED || k == CONNECTION_ERROR), "{types:?}");
    if lab.app.backend.aws().is_none() {
        // One process, so the log's order is the emit order.
        let refreshed = types.iter().position(|k| k == TOKEN_REFRESHED).unwrap();
        assert!(types.iter().position(|k| k == RECOVERED).unwrap() > refreshed, "{types:?}");
    }
    assert_eq!(lab.read(&id).await["status"], "configured");
    let mut secrets = issued_tokens(&q).await;
    secrets.push(client_secret);
    assert_no_secret_in_events(&lab, &id, &secrets).await;
}

/// The JSON log lines of `logs` that are audit lines.
fn audit_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["audit"] == "credentials_read")
        .collect()
}

/// Over HTTP: one audit line per lookup that hands credentials out (by id, by selector; an
/// organization's runtime token and a customer's), naming the connection, who read and the
/// request's `x-request-id`; none for a failed lookup or a report; never the key.
#[tokio::test]
async fn every_http_lookup_writes_one_audit_line_without_a_secret() {
    let lab = Lab::start(&[("LATCHKEY_LOG_FORMAT", "json")]).await;
    let provider = VerifyProvider::start().await;
    let api_key = format!("sk_live_{}", random_hex());
    let id = api_key_connection(&lab, &provider, "audited", &api_key).await;
    let customer = lab.app.token(&org_of(&lab).await, Some("c-1"), &["runtime"]).await;

    let mut request_ids = Vec::new();
    for token in [&lab.runtime, &customer] {
        let found = lab.app.lookup(token, &id, &json!({})).await;
        found.assert_status(StatusCode::OK);
        assert_eq!(found.body["fields"]["apiKey"], api_key.as_str(), "the read itself works");
        request_ids.push(found.header("x-request-id").expect("a request id").to_owned());
    }
    let by_selector = lab
        .app
        .request(
            Method::POST,
            "/v1/token",
            Some(&lab.runtime),
            Some(&json!({"definition": "audited", "customer": "c-1"})),
        )
        .await;
    by_selector.assert_status(StatusCode::OK);
    request_ids.push(by_selector.header("x-request-id").unwrap().to_owned());
    // Reads that hand nothing out, and a report: no audit line.
    let unknown = "con_01kahzz7v4m3n2q0000000000z";
    lab.app.lookup(&lab.runtime, unknown, &json!({})).await.assert_problem(StatusCode::NOT_FOUND);
    let report = json!({"action": "report_error", "message": "the API answered 401"});
    lab.app.lookup(&lab.runtime, &id, &report).await.assert_status(StatusCode::OK);
    lab.app.lookup(&lab.runtime, &id, &json!({})).await.assert_problem(StatusCode::CONFLICT);

    crate::harness::eventually(std::time::Duration::from_secs(10), "three audit lines", || async {
        audit_lines(&lab.app.logs()).len() >= 3
    })
    .await;
    let logs = lab.app.logs();
    let lines = audit_lines(&logs);
    assert_eq!(lines.len(), 3, "one per read handed out: {lines:?}");
    let org = org_of(&lab).await;
    for ((line, request_id), principal) in
        lines.iter().zip(&request_ids).zip(["runtime", "customer_runtime", "runtime"])
    {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["org"], org.as_str(), "{line}");
        assert_eq!(line["connection_id"], id.as_str(), "{line}");
        assert_eq!(line["customer"], "c-1", "{line}");
        assert_eq!(line["definition"], "audited", "{line}");
        assert_eq!(line["principal"], principal, "{line}");
        assert_eq!(line["channel"], "http", "{line}");
        assert_eq!(line["request_id"], request_id.as_str(), "the answer's x-request-id: {line}");
    }
    assert!(!logs.contains(&api_key), "no key in any log line");
}

/// A request's lines are written together when it is answered (`telemetry::gathering`): with
/// 24 lookups at once, each audit line is followed at once by its own request's `request` line,
/// never by a line of another request.
#[tokio::test]
async fn concurrent_lookups_write_each_requests_lines_together() {
    let lab = Lab::start(&[("LATCHKEY_LOG_FORMAT", "json")]).await;
    let provider = VerifyProvider::start().await;
    let id = api_key_connection(&lab, &provider, "gathered", &format!("sk_live_{}", random_hex())).await;
    let body = json!({});
    let answers = futures_util::future::join_all((0..24).map(|_| lab.app.lookup(&lab.runtime, &id, &body))).await;
    let request_ids: BTreeSet<String> = answers
        .iter()
        .map(|a| {
            a.assert_status(StatusCode::OK);
            a.header("x-request-id").expect("a request id").to_owned()
        })
        .collect();
    let ours = |logs: &str| -> Vec<Value> {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["span"]["request_id"].as_str().is_some_and(|r| request_ids.contains(r)))
            .collect()
    };
    crate::harness::eventually(std::time::Duration::from_secs(10), "every request line", || async {
        ours(&lab.app.logs()).iter().filter(|l| l["message"] == "request").count() == request_ids.len()
    })
    .await;
    let lines = ours(&lab.app.logs());
    let audits: Vec<usize> = (0..lines.len()).filter(|&i| lines[i]["audit"] == "credentials_read").collect();
    assert_eq!(audits.len(), request_ids.len(), "one audit line per lookup");
    for i in audits {
        let (audit, next) = (&lines[i], lines.get(i + 1).expect("a line after the audit line"));
        assert_eq!(next["message"], "request", "the audit line's request ends right after it: {next}");
        assert_eq!(next["span"]["request_id"], audit["request_id"], "the same request: {audit} then {next}");
    }
}

/// At `RUST_LOG=warn` (the stack's `LogLevel=warn`) `latchkey serve` drops its `info` lines,
/// the request lines included, but never the audit line of a credential read (SPEC section 11;
/// its target `latchkey::audit` is kept by every filter).
#[tokio::test]
async fn the_audit_line_is_written_at_rust_log_warn() {
    let lab = Lab::start(&[("LATCHKEY_LOG_FORMAT", "json"), ("RUST_LOG", "warn")]).await;
    let provider = VerifyProvider::start().await;
    let api_key = format!("sk_live_{}", random_hex());
    let id = api_key_connection(&lab, &provider, "audited-warn", &api_key).await;
    let found = lab.app.lookup(&lab.runtime, &id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    let request_id = found.header("x-request-id").expect("a request id").to_owned();
    let logs = lab.app.logs();
    let audits = audit_lines(&logs);
    assert_eq!(audits.len(), 1, "{logs}");
    assert_eq!(audits[0]["request_id"], request_id.as_str());
    assert_eq!(audits[0]["target"], "latchkey::audit");
    assert!(!logs.contains(&api_key), "the key is never logged");
    let requests =
        logs.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|l| l["message"] == "request");
    assert_eq!(requests.count(), 0, "RUST_LOG=warn applies: no request line (info)\n{logs}");
}

/// The organization id of `lab` (its tokens name it; reads show it nowhere else).
async fn org_of(lab: &Lab) -> String {
    let payload = lab.runtime.split('.').nth(1).expect("a JWT");
    let claims = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).expect("base64url");
    serde_json::from_slice::<Value>(&claims).expect("JSON claims")["org"].as_str().expect("an org claim").to_owned()
}

/// Through `token-lookup`: the audit line names the invocation's request id, the channel
/// `lambda` and who read (`iam` without token checking, the runtime token's kind with it).
#[tokio::test(flavor = "current_thread")]
async fn a_lambda_lookup_writes_its_audit_line_with_the_invocation_id() {
    use latchkey::config::Components;
    use latchkey::http::auth::Verifier;

    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), latchkey::service::ServiceOptions::default()).unwrap();
    let service = &app.service;
    let org = OrgId::parse("acme").unwrap();
    let p = latchkey::domain::Principal::organization(org.clone());
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    service.put_definition(&p, "acme-api", &def).await.unwrap();
    let api_key = format!("sk_live_{}", random_hex());
    let body = json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": api_key}});
    let id = service.create_connection(&p, &body).await.unwrap().id.to_string();

    let logs = latchkey::telemetry::Captured::default();
    let _guard =
        tracing::subscriber::set_default(latchkey::telemetry::json_subscriber("info".parse().unwrap(), logs.clone()));
    let payload = json!({"org": "acme", "connection_id": id});
    latchkey::lambda::lookup_invocation(service, None, LambdaEvent::new(payload.clone(), lambda_context("inv-iam")))
        .await
        .unwrap();
    let secret = random_hex() + &random_hex();
    let verifier = Verifier::hs256(&secret.clone().into()).unwrap();
    let mut with_token = payload.clone();
    with_token["token"] = json!(mint_token(&secret, "acme", Some("c-1"), &["runtime"]).await);
    latchkey::lambda::lookup_invocation(
        service,
        Some(&verifier),
        LambdaEvent::new(with_token, lambda_context("inv-token")),
    )
    .await
    .unwrap();
    let unknown = json!({"org": "acme", "connection_id": "con_01kahzz7v4m3n2q0000000000z"});
    latchkey::lambda::lookup_invocation(service, None, LambdaEvent::new(unknown, lambda_context("inv-unknown")))
        .await
        .unwrap_err();

    let lines: Vec<Value> = logs.lines().into_iter().filter(|l| l["audit"] == "credentials_read").collect();
    let seen: Vec<_> = lines.iter().map(|l| (l["request_id"].clone(), l["principal"].clone())).collect();
    assert_eq!(seen, [(json!("inv-iam"), json!("iam")), (json!("inv-token"), json!("customer_runtime"))]);
    for line in &lines {
        assert_eq!(
            (&line["org"], &line["connection_id"], &line["customer"]),
            (&json!("acme"), &json!(id), &json!("c-1"))
        );
        assert_eq!((&line["channel"], &line["span"]["request_id"]), (&json!("lambda"), &line["request_id"]), "{line}");
    }
    let everything: String = logs.lines().iter().map(Value::to_string).collect();
    assert!(!everything.contains(&api_key), "no key in any log line");
}

/// The members a connection event's detail always has, and those it may have.
const CONNECTION_MEMBERS: [&str; 8] =
    ["event_id", "occurred_at", "org", "customer", "connection_id", "definition", "status", "tags"];
const OPTIONAL_MEMBERS: [&str; 9] = [
    "reason",
    "user",
    "refresh_token_expires_at",
    "instance_id",
    "instance_name",
    "integration_id",
    "integration_name",
    "config_variable_key",
    "config_variable_name",
];

/// `events/samples/`: one EventBridge event per type Latchkey publishes, as the bus delivers
/// it, its detail of exactly the members Latchkey writes; token-revoke reads the disconnect and
/// delete samples.
#[test]
fn the_samples_show_every_event_type_with_its_members() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/samples");
    let mut files: BTreeSet<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for kind in EventType::ALL {
        let name = format!("{}.json", kind.detail_type().to_lowercase().replace(' ', "-"));
        assert!(files.remove(&name), "a sample of {}: {name}", kind.detail_type());
        let raw = std::fs::read_to_string(dir.join(&name)).unwrap();
        let sample: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!((&sample["source"], &sample["detail-type"]), (&json!("latchkey"), &json!(kind.detail_type())));
        let detail = sample["detail"].as_object().unwrap_or_else(|| panic!("{name}: a detail"));
        let members: BTreeSet<&str> = detail.keys().map(String::as_str).collect();
        if matches!(kind, EventType::WebhookDisabled) {
            let made = Event::webhook_disabled(
                &OrgId::parse("acme").unwrap(),
                &WebhookId::parse("billing-alerts").unwrap(),
                "deliveries_failing",
            );
            let made = serde_json::to_value(made).unwrap();
            let expected: BTreeSet<&str> = made.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(members, expected, "{name}");
            continue;
        }
        for member in CONNECTION_MEMBERS {
            assert!(members.contains(member), "{name}: {member}");
        }
        for member in &members {
            assert!(CONNECTION_MEMBERS.contains(member) || OPTIONAL_MEMBERS.contains(member), "{name}: {member}?");
        }
        let reasoned =
            matches!(kind, EventType::ConnectionExpired | EventType::ConnectionError | EventType::TokenRefreshFailed);
        assert_eq!(members.contains("reason"), reasoned, "{name}");
        if matches!(kind, EventType::ConnectionDisconnected | EventType::ConnectionDeleted) {
            let typed: latchkey::lambda::ConnectionEvent =
                serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{name}: token-revoke reads it: {e}"));
            assert_eq!(typed.detail.org.as_str(), "acme");
        }
    }
    assert!(files.is_empty(), "samples of no event type: {files:?}");
}

//! The Lambda handlers, in-process over the embedded adapters, fed the sample payloads in
//! `events/`: what `cargo lambda invoke NAME --data-file events/...` sends.

use std::path::Path;

use std::collections::BTreeSet;

use http_body_util::BodyExt;
use latchkey::config::Components;
use latchkey::http::Surface;
use latchkey::http::auth::Verifier;
use latchkey::service::ServiceOptions;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::oauth::OidcServer;
use tower::ServiceExt;

/// The secret the sample events' tokens are signed with (see events/README.md).
const EVENTS_SECRET: &str = "latchkey-events-dev-secret-not-for-production";

fn event(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Api {
    router: axum::Router,
    app: Components,
    _dir: tempfile::TempDir,
}

impl Api {
    /// The functions as deployed with `PublicUrl` set to `https://latchkey.acme.example` (a custom
    /// domain) in front of the samples' API Gateway domain.
    fn new() -> Self {
        Self::with_public_url("https://latchkey.acme.example")
    }

    /// The functions as deployed with `PublicUrl` set to `public_url`.
    fn with_public_url(public_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = ServiceOptions { public_url: Some(public_url.into()), ..ServiceOptions::default() };
        let app = Components::embedded(dir.path(), options).unwrap();
        let router = latchkey::http::router_for(
            Surface::ConnectionsApi,
            app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap()),
        );
        Self { router, app, _dir: dir }
    }

    /// Sends a sample with the placeholder connection id replaced by `id`.
    async fn send_for(&self, name: &str, id: &str) -> (u16, Value) {
        let (status, _, body) = self.exchange(&event(name).replace(SAMPLE_ID, id)).await;
        (status, body)
    }

    /// Sends an API Gateway HTTP API (payload 2.0) event through the router, as lambda_http does.
    async fn send(&self, name: &str) -> (u16, Option<String>, Value) {
        self.exchange(&event(name)).await
    }

    async fn exchange(&self, raw: &str) -> (u16, Option<String>, Value) {
        let req = lambda_http::request::from_str(raw).expect("a valid API Gateway event");
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let ct = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, ct, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// The connection id in the samples of routes with `{id}`; the tests put a real one in its place.
const SAMPLE_ID: &str = "con_01kahzz7v4m3n2q0000000000a";

/// The samples of a function's folder, by file name, with their `routeKey`.
fn samples(function: &str) -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(function);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let path = format!("{function}/{name}");
        let raw = event(&path);
        // The input type of the HTTP functions: an API Gateway HTTP API (payload 2.0) request.
        let req = lambda_http::request::from_str(&raw).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            matches!(
                req.extensions().get::<lambda_http::request::RequestContext>(),
                Some(lambda_http::request::RequestContext::ApiGatewayV2(_))
            ),
            "{path}: an HTTP API payload 2.0 event"
        );
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(v["routeKey"], v["requestContext"]["routeKey"], "{path}");
        out.push((path, v["routeKey"].as_str().unwrap().to_owned()));
    }
    out.sort();
    out
}

/// Every operation of the OpenAPI document has a sample event in the folder of the function API
/// Gateway routes it to (infra/template.yaml), and that function's router serves it while the
/// other's does not.
#[tokio::test]
async fn every_http_route_has_a_sample_for_the_function_that_serves_it() {
    let openapi: Value = serde_json::from_str(latchkey::http::OPENAPI_JSON).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "patch", "delete"].contains(&method.as_str()) {
                documented.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let api = samples("connections-api");
    let callback = samples("oauth-callback");
    let covered: BTreeSet<String> = api.iter().chain(&callback).map(|(_, r)| r.clone()).collect();
    assert_eq!(covered, documented, "one sample or more per route, and no sample of an unknown route");
    assert!(callback.iter().all(|(_, r)| r == "GET /v1/oauth/callback"));
    assert!(api.iter().all(|(_, r)| r != "GET /v1/oauth/callback"));

    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let state = || app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap());
    let status = |router: axum::Router, path: &str| {
        let req = lambda_http::request::from_str(&event(path)).unwrap();
        async move { router.oneshot(req).await.unwrap().status().as_u16() }
    };
    let connections_api = latchkey::http::router_for(Surface::ConnectionsApi, state());
    let oauth_callback = latchkey::http::router_for(Surface::OauthCallback, state());
    for (path, _) in &callback {
        assert_eq!(status(connections_api.clone(), path).await, 404, "{path}: not served by connections-api");
        assert_eq!(status(oauth_callback.clone(), path).await, 400, "{path}: an unknown state");
    }
    for (path, route) in &api {
        if route != "GET /healthz" {
            assert_eq!(status(oauth_callback.clone(), path).await, 404, "{path}: not served by oauth-callback");
        }
    }
}

/// The connections-api samples of every route, in the order a user would send them.
#[tokio::test]
async fn connections_api_serves_a_sample_of_every_route() {
    let api = Api::new();
    let ok = |(status, body): (u16, Value), expected: u16, what: &str| {
        assert_eq!(status, expected, "{what}: {body}");
        body
    };
    let none = SAMPLE_ID;
    ok(api.send_for("connections-api/healthz.json", none).await, 200, "healthz");
    ok(api.send_for("connections-api/get-openapi.json", none).await, 200, "openapi");
    ok(api.send_for("connections-api/list-providers.json", none).await, 200, "providers");
    let api_keys = ok(api.send_for("connections-api/list-providers-by-auth.json", none).await, 200, "by auth");
    let api_keys = api_keys["items"].as_array().unwrap();
    assert!(!api_keys.is_empty() && api_keys.iter().all(|p| p["auth"] == "api_key"), "{api_keys:?}");
    ok(api.send_for("connections-api/put-definition.json", none).await, 201, "PUT definition");
    ok(api.send_for("connections-api/list-definitions.json", none).await, 200, "definitions");
    ok(api.send_for("connections-api/get-definition.json", none).await, 200, "definition");
    // A webhook endpoint `ops`: its signing secret is shown on creation and never again.
    let hook = ok(api.send_for("connections-api/put-webhook.json", none).await, 201, "PUT webhook");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{hook}");
    assert_eq!(hook["events"], json!(["Connection Created", "Token Refresh Failed"]));
    let read = ok(api.send_for("connections-api/get-webhook.json", none).await, 200, "GET webhook");
    assert_eq!((read["id"].as_str(), read["enabled"].as_bool()), (Some("ops"), Some(true)), "{read}");
    assert!(read.get("secret").is_none() && !read.to_string().contains(&secret), "{read}");
    let hooks = ok(api.send_for("connections-api/list-webhooks.json", none).await, 200, "GET webhooks");
    let ids: Vec<&Value> = hooks["items"].as_array().unwrap().iter().map(|h| &h["id"]).collect();
    assert_eq!(ids, [&json!("ops")]);
    assert!(!hooks.to_string().contains(&secret), "{hooks}");
    let rotated = ok(api.send_for("connections-api/rotate-webhook-secret.json", none).await, 200, "rotate");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret, "{rotated}");
    assert!(rotated["previous_secret_expires_at"].is_string(), "{rotated}");

    let conn = ok(api.send_for("connections-api/create-connection.json", none).await, 201, "POST connection");
    let id = conn["id"].as_str().unwrap();
    // The embedded backend queues the connection's `Connection Created` for `ops` (no worker
    // sends it here).
    let deliveries = ok(api.send_for("connections-api/list-webhook-deliveries.json", none).await, 200, "deliveries");
    let deliveries = deliveries["items"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0]["event_type"], "Connection Created");
    assert_eq!(deliveries[0]["status"], "pending");
    assert_eq!(deliveries[0]["payload"]["data"]["connection_id"], id);
    // The sample names a delivery that does not exist.
    ok(api.send_for("connections-api/retry-webhook-delivery.json", none).await, 404, "retry unknown delivery");
    ok(api.send_for("connections-api/get-connection.json", id).await, 200, "GET connection");
    ok(api.send_for("connections-api/list-connections.json", id).await, 200, "GET connections");
    let patched = ok(api.send_for("connections-api/update-connection.json", id).await, 200, "PATCH");
    assert_eq!(patched["label"], "Acme production");
    let token = ok(api.send_for("connections-api/connection-token.json", id).await, 200, "token");
    assert_eq!(token["fields"]["apiKey"], "sk_test_sample_value");
    // The same connection by selector: customer c-1's reusable `acme-api` connection.
    let selected = ok(api.send_for("connections-api/lookup-by-selector.json", none).await, 200, "token by selector");
    assert_eq!(selected["connection_id"], id);
    ok(api.send_for("connections-api/connection-logs.json", id).await, 200, "logs");
    // An API-key connection has no tokens to refresh.
    ok(api.send_for("connections-api/refresh-connection.json", id).await, 409, "refresh");
    // The sample definition has no verify request (tests/api/verify.rs runs one that has).
    ok(api.send_for("connections-api/verify-connection.json", id).await, 409, "verify");

    ok(api.send_for("connections-api/put-oauth-definition.json", none).await, 201, "PUT OAuth definition");
    let oauth = ok(api.send_for("connections-api/create-oauth-connection.json", none).await, 201, "POST connection");
    let started = ok(
        api.send_for("connections-api/authorize-connection.json", oauth["id"].as_str().unwrap()).await,
        200,
        "authorize",
    );
    let authorize_url = started["authorize_url"].as_str().unwrap();
    assert!(authorize_url.starts_with("https://auth.acme.example/oauth/authorize?"));
    // The configured public URL, not the API Gateway domain the request came through.
    assert_eq!(
        support::oauth::query_param(authorize_url, "redirect_uri").as_deref(),
        Some("https://latchkey.acme.example/v1/oauth/callback")
    );
    // Tokens imported from another platform: the connection is usable at once.
    let imported = ok(api.send_for("connections-api/import-connection.json", none).await, 201, "POST with tokens");
    assert_eq!(imported["status"], "configured");
    let imported_id = imported["id"].as_str().unwrap();
    let token = ok(api.send_for("connections-api/connection-token.json", imported_id).await, 200, "imported token");
    assert_eq!(token["token"]["access_token"], "sample-imported-access-token-not-real");

    let cut = ok(api.send_for("connections-api/disconnect-connection.json", id).await, 200, "disconnect");
    assert_eq!(cut["status"], "disconnected");
    ok(api.send_for("connections-api/delete-connection.json", id).await, 204, "DELETE connection");
    ok(api.send_for("connections-api/delete-definition.json", none).await, 204, "DELETE definition");
    ok(api.send_for("connections-api/delete-webhook.json", none).await, 204, "DELETE webhook");
    ok(api.send_for("connections-api/get-webhook.json", none).await, 404, "deleted webhook");
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

/// The claims of API Gateway's JWT authorizer never authenticate on their own: whoever may invoke
/// the function directly can write them (`forged-authorizer-claims.json`: a victim's org, the
/// runtime role, no bearer token). A deployment with nothing to verify tokens with refuses
/// everything; one with a verifier accepts the authorizer sample for its bearer token.
#[tokio::test]
async fn connections_api_never_trusts_authorizer_claims_alone() {
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let send = |router: &axum::Router, name: &str| {
        let router = router.clone();
        let req = lambda_http::request::from_str(&event(name)).expect("a valid API Gateway event");
        async move { router.oneshot(req).await.unwrap().status().as_u16() }
    };
    // What `connections-api` builds from a configuration with no issuer and no secret.
    let config = latchkey::config::Settings::from_vars(latchkey::config::BackendKind::Aws, |_| None).unwrap();
    let unconfigured = latchkey::lambda::http_router(&app, &config, Surface::ConnectionsApi).unwrap();
    for name in [
        "connections-api/forged-authorizer-claims.json",
        "connections-api/list-connections-jwt-authorizer.json",
        "connections-api/list-connections.json",
        "connections-api/unauthenticated.json",
    ] {
        assert_eq!(send(&unconfigured, name).await, 401, "{name}");
    }
    assert_eq!(send(&unconfigured, "connections-api/healthz.json").await, 200);

    let api = Api::new();
    assert_eq!(send(&api.router, "connections-api/forged-authorizer-claims.json").await, 401);
    assert_eq!(send(&api.router, "connections-api/list-connections-jwt-authorizer.json").await, 200);
    // The same bearer token with claims of another organization: refused.
    let other = event("connections-api/list-connections-jwt-authorizer.json")
        .replace("\"org\": \"acme\"", "\"org\": \"umbrella\"");
    let req = lambda_http::request::from_str(&other).unwrap();
    assert_eq!(api.router.clone().oneshot(req).await.unwrap().status().as_u16(), 401);
}

/// The API Gateway domain of the samples (`requestContext.domainName`).
const SAMPLE_DOMAIN: &str = "abc123.execute-api.eu-west-1.amazonaws.com";

/// A sample with its JSON `body` replaced by `body` (and the connection id placeholder by `id`).
fn with_body(name: &str, id: &str, body: &Value) -> String {
    let mut v: Value = serde_json::from_str(&event(name).replace(SAMPLE_ID, id)).unwrap();
    v["body"] = json!(body.to_string());
    v.to_string()
}

/// The callback sample carrying the query of `url`, the provider's redirect to the callback.
fn callback_event(url: &str) -> String {
    callback_sample_with("oauth-callback/callback.json", url)
}

/// The callback sample `name` with its query replaced by that of `url`.
fn callback_sample_with(name: &str, url: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    let mut v: Value = serde_json::from_str(&event(name)).unwrap();
    v["rawQueryString"] = json!(url.query().unwrap_or_default());
    v["queryStringParameters"] = url.query_pairs().map(|(k, v)| (k.into_owned(), json!(v))).collect();
    v.to_string()
}

/// Deployed without `LATCHKEY_PUBLIC_URL` (the template's default), the functions take the
/// public URL from API Gateway's `requestContext.domainName`: authorize redirects to
/// `https://{domainName}/v1/oauth/callback`, and the callback function exchanges the code with
/// that same redirect URI (oidc-provider refuses any other, RFC 6749 section 4.1.3).
#[tokio::test]
async fn without_a_public_url_the_redirect_uri_is_the_api_gateway_domain() {
    let redirect_uri = format!("https://{SAMPLE_DOMAIN}/v1/oauth/callback");
    let oidc = OidcServer::start(json!({"redirect_uris": [redirect_uri]})).await;
    let dir = tempfile::tempdir().unwrap();
    let app =
        Components::embedded(dir.path(), ServiceOptions { public_url: None, ..ServiceOptions::default() }).unwrap();
    let state = || app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap());
    let connections_api = latchkey::http::router_for(Surface::ConnectionsApi, state());
    let oauth_callback = latchkey::http::router_for(Surface::OauthCallback, state());
    let send = |router: &axum::Router, raw: String| {
        let req = lambda_http::request::from_str(&raw).expect("a valid API Gateway event");
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };

    let definition = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": oidc.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
        "clientId": {"type": "string", "default": oidc.client.client_id},
        "clientSecret": {"type": "password", "default": oidc.client.client_secret},
        "scopes": {"type": "string", "default": "openid offline_access api:read"}}});
    let (status, body) =
        send(&connections_api, with_body("connections-api/put-oauth-definition.json", SAMPLE_ID, &definition)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(&connections_api, event("connections-api/create-oauth-connection.json")).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();

    let (status, body) =
        send(&connections_api, event("connections-api/authorize-connection.json").replace(SAMPLE_ID, &id)).await;
    assert_eq!(status, 200, "{body}");
    let authorize_url = serde_json::from_str::<Value>(&body).unwrap()["authorize_url"].as_str().unwrap().to_owned();
    assert_eq!(support::oauth::query_param(&authorize_url, "redirect_uri").as_deref(), Some(redirect_uri.as_str()));

    let back = oidc.login_and_consent(&authorize_url).await;
    assert!(back.starts_with(&format!("{redirect_uri}?")), "{back}");
    let (status, page) = send(&oauth_callback, callback_event(&back)).await;
    assert_eq!(status, 200, "the code exchange with the same redirect URI succeeds: {page}");
    assert!(page.contains("The connection is authorized"), "{page}");
    assert_eq!(oidc.stats().await["token_requests"]["authorization_code"], 1);
    let (status, body) =
        send(&connections_api, event("connections-api/get-connection.json").replace(SAMPLE_ID, &id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], "configured", "{body}");

    // Outside API Gateway (no request context) and with no configured URL: no redirect URI.
    let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse("acme").unwrap());
    let refused = app.service.authorize(&p, &id).await.unwrap_err();
    assert!(matches!(refused, latchkey::service::ServiceError::Unexpected(_)), "{refused:?}");
}

#[tokio::test]
async fn oauth_callback_refuses_a_state_it_never_issued() {
    // The samples' state was never issued by this deployment: a 400 page, nothing cached.
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let deployed = latchkey::http::router_for(Surface::OauthCallback, app.router_state(Verifier::refuse_all()));
    for name in ["oauth-callback/callback.json", "oauth-callback/denied.json", "oauth-callback/oauth1-callback.json"] {
        let req = lambda_http::request::from_str(&event(name)).expect("a valid API Gateway event");
        let res = deployed.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), 400, "{name}");
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert_eq!(res.headers()["referrer-policy"], "no-referrer");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("invalid, expired or was already used"), "{page}");
        assert!(!page.contains("SplxlOBeZQQYbYS6WxSbIA"), "the code is not echoed");
        assert!(!page.contains("sample-verifier-not-real"), "nor an OAuth 1.0a verifier");
    }
}

#[tokio::test]
async fn token_refresh_sweeps_on_the_scheduled_event() {
    let api = Api::new();
    let _scheduled: Value = serde_json::from_str(&event("token-refresh/scheduled.json")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let summary = latchkey::lambda::handle_refresh(&api.app.service, deadline).await.unwrap();
    // Nothing is due on a fresh backend: a real, empty sweep.
    assert_eq!(
        summary,
        json!({"due": 0, "refreshed": 0, "failed": 0, "skipped": 0, "revocations": 0, "verified": 0, "device_polls": 0})
    );
}

/// Every sample of `token-refresh` as its handler reads it (one function, three inputs): the
/// schedule's tick (no queue configured: the inline sweep's summary), a batch of the refresh
/// queue, whose entry names no connection of this deployment (nothing to refresh, nothing handed
/// back), and an operator's rotation of `acme`'s branch key (answered with its new version: v1
/// from none, then v2).
#[tokio::test]
async fn token_refresh_handles_every_sample() {
    use latchkey::lambda::{RefreshPorts, TokenRefreshEvent, TokenRefreshResponse, handle_token_refresh};
    let api = Api::new();
    let visibility = Visibility::default();
    let ports = RefreshPorts { queue: None, visibility: &visibility, keys: &api.app.keys };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/token-refresh");
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["queue-batch.json", "rotate-branch-keys.json", "scheduled.json"]);
    let mut rotations = 0;
    for name in names.iter().chain([&"rotate-branch-keys.json".to_owned()]) {
        let event: TokenRefreshEvent = serde_json::from_str(&event(&format!("token-refresh/{name}"))).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let answer = handle_token_refresh(&api.app.service, ports, event, deadline).await.unwrap();
        let answer = match (name.as_str(), answer) {
            ("queue-batch.json", a @ TokenRefreshResponse::Queue(_)) => a,
            ("rotate-branch-keys.json", a @ TokenRefreshResponse::Rotated(_)) => a,
            ("scheduled.json", a @ TokenRefreshResponse::Tick(_)) => a,
            (name, a) => panic!("{name}: {a:?}"),
        };
        let expected = match name.as_str() {
            "scheduled.json" => json!({"due": 0, "refreshed": 0, "failed": 0, "skipped": 0, "revocations": 0,
                "verified": 0, "device_polls": 0}),
            "rotate-branch-keys.json" => {
                rotations += 1;
                json!({"rotated": {"acme": rotations}})
            }
            _ => json!({"batchItemFailures": []}),
        };
        assert_eq!(serde_json::to_value(&answer).unwrap(), expected, "{name}");
    }
    assert_eq!(rotations, 2);
    assert!(visibility.0.lock().unwrap().is_empty(), "nothing handed back");
}

#[tokio::test]
async fn token_revoke_handles_the_sample_event_and_its_replay() {
    let api = Api::new();
    let sample: latchkey::lambda::ConnectionEvent =
        serde_json::from_str(&event("token-revoke/connection-disconnected.json")).unwrap();
    // No job for that connection on a fresh backend: nothing to do, however often it arrives.
    for _ in 0..2 {
        let done = latchkey::lambda::handle_revoke(&api.app.service, &sample).await.unwrap();
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

/// `lookup-by-selector.json` names no connection id: its selector (instance `inst-9`, user
/// `u-42`, neither of which has a connection of its own) resolves to customer `c-1`'s reusable
/// connection, and to nothing once it is gone.
#[tokio::test]
async fn token_lookup_serves_the_selector_sample() {
    let api = Api::new();
    api.send("connections-api/put-definition.json").await;
    let (_, _, conn) = api.send("connections-api/create-connection.json").await;
    let service = &api.app.service;
    let sample: Value = serde_json::from_str(&event("token-lookup/lookup-by-selector.json")).unwrap();
    assert!(sample.get("connection_id").is_none(), "a selector, not an id");

    let found = latchkey::lambda::handle_lookup(service, sample.clone()).await.unwrap();
    assert_eq!(found["connection_id"], conn["id"]);
    assert_eq!(found["fields"]["apiKey"], "sk_test_sample_value");

    let (status, _) = api.send_for("connections-api/delete-connection.json", conn["id"].as_str().unwrap()).await;
    assert_eq!(status, 204);
    let gone = latchkey::lambda::handle_lookup(service, sample).await.unwrap_err();
    assert_eq!(gone.error_type, "ConnectionNotFound");
}

#[tokio::test]
async fn token_lookup_failures_have_stable_error_types() {
    let api = Api::new();
    let service = &api.app.service;
    let unknown: Value = serde_json::from_str(&event("token-lookup/unknown-connection.json")).unwrap();
    let err = latchkey::lambda::handle_lookup(service, unknown).await.unwrap_err();
    assert_eq!(err.error_type, "ConnectionNotFound");

    for bad in [json!({"connection_id": "con_01kahzz7v4m3n2q0000000000a"}), json!({"org": "acme"}), json!([1, 2])]
        .into_iter()
        // The members in order, as serde alone would read an array: still not a lookup.
        .chain([json!(["acme", "con_01kahzz7v4m3n2q0000000000a"])])
    {
        let err = latchkey::lambda::handle_lookup(service, bad.clone()).await.unwrap_err();
        assert_eq!(err.error_type, "InvalidRequest", "{bad}");
    }
    let other_org = json!({"org": "umbrella", "connection_id": "con_01kahzz7v4m3n2q0000000000a"});
    assert_eq!(latchkey::lambda::handle_lookup(service, other_org).await.unwrap_err().error_type, "ConnectionNotFound");
}

/// The `Idempotency-Key` sample sent twice, as a client retrying through API Gateway would: one
/// connection, the second answer byte for byte the first; then the listing-by-tag sample finds
/// it and not an untagged one.
#[tokio::test]
async fn connections_api_replays_the_idempotent_sample_and_lists_by_tag() {
    let api = Api::new();
    assert_eq!(api.send("connections-api/put-definition.json").await.0, 201);
    let create = || async {
        let raw = event("connections-api/create-connection-idempotent.json");
        let res = api.router.clone().oneshot(lambda_http::request::from_str(&raw).unwrap()).await.unwrap();
        let replayed = res.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
        let status = res.status().as_u16();
        (status, replayed, res.into_body().collect().await.unwrap().to_bytes())
    };
    let (status, replayed, first) = create().await;
    assert_eq!((status, replayed), (201, None), "{first:?}");
    let (status, replayed, again) = create().await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);
    let created: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(created["tags"], json!({"env": "prod", "team": "billing"}));
    assert_eq!(created["values"]["apiKey"], json!({"set": true}));

    assert_eq!(api.send("connections-api/create-connection.json").await.0, 201, "an untagged one");
    let (status, _, page) = api.send("connections-api/list-connections-by-tag.json").await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&Value> = page["items"].as_array().unwrap().iter().map(|c| &c["id"]).collect();
    assert_eq!(ids, [&created["id"]]);
}

/// The device flow (RFC 8628) as deployed: the connections-api samples define an
/// `oauth2_device_code` definition and connection and start the authorization, and the
/// token-refresh function's sweep (no long-running invocation) polls the token endpoint until
/// the user has approved the code.
#[tokio::test]
async fn a_device_flow_is_started_by_connections_api_and_completed_by_token_refresh() {
    let oidc = OidcServer::start(json!({"redirect_uris": ["http://127.0.0.1:9/unused"], "device_flow": true,
        "device_interval": 1}))
    .await;
    let api = Api::new();
    let definition = json!({"label": "Acme (device flow)", "auth": "oauth2_device_code", "inputs": {
        "deviceAuthorizationUrl": {"type": "url", "default": oidc.device_authorization_endpoint()},
        "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
        "clientId": {"type": "string", "default": oidc.client.client_id},
        "clientSecret": {"type": "password", "default": oidc.client.client_secret},
        "scopes": {"type": "string", "default": "openid offline_access api:read"}}});
    let (status, _, body) =
        api.exchange(&with_body("connections-api/put-device-definition.json", SAMPLE_ID, &definition)).await;
    assert_eq!(status, 201, "{body}");
    let (status, _, conn) = api.send("connections-api/create-device-connection.json").await;
    assert_eq!((status, conn["status"].as_str()), (201, Some("pending")), "{conn}");
    let id = conn["id"].as_str().unwrap();
    let (status, started) = api.send_for("connections-api/authorize-connection.json", id).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["verification_uri"], format!("{}/device", oidc.issuer), "{started}");
    oidc.approve_device(started["user_code"].as_str().unwrap()).await;

    let scheduled: Value = serde_json::from_str(&event("token-refresh/scheduled.json")).unwrap();
    assert_eq!(scheduled["detail-type"], "Scheduled Event");
    support::eventually(std::time::Duration::from_secs(20), "the sweep completes the device flow", || async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        latchkey::lambda::handle_refresh(&api.app.service, deadline).await.unwrap();
        api.send_for("connections-api/get-connection.json", id).await.1["status"] == "configured"
    })
    .await;
    let (status, found) = api.send_for("connections-api/connection-token.json", id).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(oidc.introspect(found["token"]["access_token"].as_str().unwrap()).await["active"], true);
}

/// OAuth 1.0a (RFC 5849) as deployed: the connections-api samples define an `oauth1`
/// definition (the sample's, its URLs and consumer pointed at the oauthlib test provider) and a
/// connection and start the authorization; the oauth-callback function takes the provider's
/// redirect (`oauth_token` and `oauth_verifier`, no state) in the shape of `oauth1-callback.json`;
/// token-lookup then hands out the `oauth1` member an execution signs with, which the client
/// crate reads whole. The sample callback itself names a request token never issued: refused
/// like an unknown state (`oauth_callback_refuses_a_state_it_never_issued`).
#[tokio::test]
async fn an_oauth1_authorization_runs_through_connections_api_oauth_callback_and_token_lookup() {
    let provider = support::oauth1::server();
    let key = format!("consumer{}", crate::harness::random_hex());
    let secret = format!("s&c+r%t {}", crate::harness::random_hex());
    provider.register(&key, &secret, None).await;
    // The test provider sends browsers back to loopback callbacks only; nothing listens there:
    // the redirect's query becomes the callback function's event.
    let public_url = "http://127.0.0.1:9";
    let api = Api::with_public_url(public_url);
    let callback_router = latchkey::http::router_for(
        Surface::OauthCallback,
        api.app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap()),
    );
    let callback = |raw: String| {
        let req = lambda_http::request::from_str(&raw).expect("a valid API Gateway event");
        let router = callback_router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };

    // The sample as written is a valid definition; then its endpoints and consumer are the
    // provider's.
    let (status, _, sample) = api.send("connections-api/put-oauth1-definition.json").await;
    assert_eq!((status, sample["auth"].as_str()), (201, Some("oauth1")), "{sample}");
    let raw: Value = serde_json::from_str(&event("connections-api/put-oauth1-definition.json")).unwrap();
    let mut definition: Value = serde_json::from_str(raw["body"].as_str().unwrap()).unwrap();
    let inputs = &mut definition["inputs"];
    inputs["requestTokenUrl"]["default"] = json!(provider.request_token_endpoint());
    inputs["authorizeUrl"]["default"] = json!(provider.authorize_endpoint());
    inputs["accessTokenUrl"]["default"] = json!(provider.access_token_endpoint());
    inputs["consumerKey"]["default"] = json!(key);
    inputs["consumerSecret"]["default"] = json!(secret);
    let (status, _, body) =
        api.exchange(&with_body("connections-api/put-oauth1-definition.json", SAMPLE_ID, &definition)).await;
    assert_eq!(status, 200, "replaced: {body}");
    let (status, _, conn) = api.send("connections-api/create-oauth1-connection.json").await;
    assert_eq!((status, conn["status"].as_str()), (201, Some("pending")), "{conn}");
    let id = conn["id"].as_str().unwrap();

    let (status, started) = api.send_for("connections-api/authorize-connection.json", id).await;
    assert_eq!(status, 200, "{started}");
    let authorize_url = started["authorize_url"].as_str().unwrap();
    assert!(authorize_url.starts_with(&provider.authorize_endpoint()) && authorize_url.contains("oauth_token="));
    let back = provider.approve(authorize_url).await;
    // The configured public URL, as for OAuth 2.0.
    assert!(back.starts_with(&format!("{public_url}/v1/oauth/callback?")), "{back}");
    let redirect = callback_sample_with("oauth-callback/oauth1-callback.json", &back);
    let (status, page) = callback(redirect.clone()).await;
    assert_eq!(status, 200, "the verifier is exchanged: {page}");
    assert!(page.contains("The connection is authorized"), "{page}");
    assert_eq!(provider.access_tokens_issued(&key).await, 1);
    let (status, page) = callback(redirect).await;
    assert_eq!(status, 400, "a replayed callback: {page}");
    assert!(page.contains("invalid, expired or was already used"), "{page}");
    assert_eq!(provider.access_tokens_issued(&key).await, 1, "a replay exchanges nothing");

    let found = latchkey::lambda::handle_lookup(&api.app.service, lookup_payload("token-lookup/lookup.json", id))
        .await
        .unwrap();
    let oauth1 = &found["oauth1"];
    assert_eq!(oauth1["consumerKey"], key.as_str(), "{oauth1}");
    assert_eq!(oauth1["consumerSecret"], secret.as_str());
    assert_eq!(oauth1["signatureMethod"], "HMAC-SHA1");
    assert!(oauth1.get("privateKey").is_none(), "no RSA key for HMAC-SHA1");
    assert_eq!(oauth1["token"], found["token"]["access_token"]);
    assert_eq!(found["token"]["token_type"], "OAuth1");
    assert!(found["fields"].get("consumerSecret").is_none(), "{}", found["fields"]);
    let token_secret = oauth1["tokenSecret"].as_str().unwrap();
    assert!(!token_secret.is_empty());
    // What `LambdaClient::lookup` reads from that answer: every signing member.
    let read: latchkey_client::Credentials = serde_json::from_value(found.clone()).unwrap();
    let read = read.oauth1.expect("the client keeps the oauth1 member");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&read.token_secret), token_secret);
    assert_eq!(secrecy::ExposeSecret::expose_secret(&read.consumer_secret), secret);
}

/// Deployed, API Gateway hands every authorized route to connections-api through its one
/// catch-all route (`ANY /v1/{proxy+}`, infra/template.yaml): the request then carries that
/// `routeKey` and a `proxy` path parameter rather than the operation's. The router goes by the
/// path alone, so every GET sample answers the same either way.
#[tokio::test]
async fn connections_api_serves_the_samples_as_the_v1_catch_all_passes_them() {
    let api = Api::new();
    assert_eq!(api.send("connections-api/put-definition.json").await.0, 201);
    assert_eq!(api.send("connections-api/put-webhook.json").await.0, 201);
    let (_, _, conn) = api.send("connections-api/create-connection.json").await;
    let id = conn["id"].as_str().unwrap();
    let mut compared = 0;
    for (path, route) in samples("connections-api") {
        let Some(rest) = route.strip_prefix("GET /v1/") else { continue };
        let raw = event(&path).replace(SAMPLE_ID, id);
        let mut deployed: Value = serde_json::from_str(&raw).unwrap();
        let proxy = deployed["rawPath"].as_str().unwrap().strip_prefix("/v1/").unwrap().to_owned();
        deployed["routeKey"] = json!("ANY /v1/{proxy+}");
        deployed["requestContext"]["routeKey"] = json!("ANY /v1/{proxy+}");
        deployed["pathParameters"] = json!({"proxy": proxy});
        let (status, _, body) = api.exchange(&raw).await;
        let (deployed_status, _, deployed_body) = api.exchange(&deployed.to_string()).await;
        assert_eq!((deployed_status, &deployed_body), (status, &body), "{path} ({rest})");
        assert_ne!(status, 404, "{path}: {body}");
        compared += 1;
    }
    assert!(compared >= 5, "{compared} GET samples");
}

/// [`latchkey::lambda::MessageVisibility`] that records what it was asked.
#[derive(Default)]
struct Visibility(std::sync::Mutex<Vec<(String, String, std::time::Duration)>>);

#[async_trait::async_trait]
impl latchkey::lambda::MessageVisibility for Visibility {
    async fn delay(
        &self,
        queue_arn: &str,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> Result<(), latchkey::lambda::VisibilityError> {
        self.0.lock().unwrap().push((queue_arn.to_owned(), receipt_handle.to_owned(), delay));
        Ok(())
    }
}

/// webhook-deliver as the runtime invokes it: `raw` read as its event (a queue batch or the
/// schedule) and handled, with 20 s before the invocation's deadline.
async fn deliver(
    service: &latchkey::service::Service,
    visibility: &Visibility,
    raw: &str,
) -> latchkey::lambda::WebhookDeliverResponse {
    let event: latchkey::lambda::WebhookDeliverEvent = serde_json::from_str(raw).expect("a webhook-deliver event");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    latchkey::lambda::handle_webhook_deliver(service, visibility, event, deadline).await.expect("never fails here")
}

/// `raw` with the sample's event time (`detail.occurred_at` and the envelope's `time`) made now:
/// an event reaches only the endpoints that existed when it occurred.
fn occurred_now(raw: &str) -> String {
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    let sample_time = "2026-11-22T10:00:00Z";
    assert!(raw.contains(sample_time), "the sample's event time");
    raw.replace(sample_time, &now)
}

/// The `messageId`s a queue batch's answer hands back.
fn failed_ids(response: &latchkey::lambda::WebhookDeliverResponse) -> Vec<String> {
    let latchkey::lambda::WebhookDeliverResponse::Queue(batch) = response else {
        panic!("a batch's answer: {response:?}")
    };
    batch.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect()
}

/// `webhook-deliver`'s samples. The queue batch (one `Connection Created` envelope, as the rule
/// queues it): nothing to do without a webhook; with one whose endpoint answers 500, the message
/// is handed back (a batch item failure) and its visibility moved to the next attempt, the
/// redelivery once it is due delivers under the same verified `webhook-id`, and one more finds
/// the delivery settled. An unreadable body is handed back as is. The schedule: the sweep
/// delivers a delivery whose message was never seen again (gone to the dead-letter queue).
#[tokio::test]
async fn webhook_deliver_handles_the_sample_events() {
    use support::webhook_receiver::Receiver;
    let dir = tempfile::tempdir().unwrap();
    let options = ServiceOptions {
        allow_loopback_providers: true,
        webhook_retry_schedule: vec![std::time::Duration::from_secs(1)],
        ..ServiceOptions::default()
    };
    let app = Components::embedded(dir.path(), options).unwrap();
    let router = latchkey::http::router_for(
        Surface::ConnectionsApi,
        app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap()),
    );
    let raw = event("webhook-deliver/connection-created.json");
    let sample: latchkey::lambda::SqsEvent = serde_json::from_str(&raw).unwrap();
    let message_id = sample.records[0].message_id.clone().unwrap();
    let envelope: Value = serde_json::from_str(sample.records[0].body.as_deref().unwrap()).unwrap();
    assert_eq!((envelope["source"].as_str(), envelope["detail"]["org"].as_str()), (Some("latchkey"), Some("acme")));
    let visibility = Visibility::default();
    let service = &app.service;

    let done = deliver(service, &visibility, &raw).await;
    assert!(failed_ids(&done).is_empty(), "no webhook: nothing pending");

    let authorization: Value = serde_json::from_str(&event("connections-api/put-definition.json")).unwrap();
    let authorization = authorization["headers"]["authorization"].as_str().unwrap().to_owned();
    let put_webhook = |id: &'static str, url: String| {
        let req = http::Request::builder()
            .method("PUT")
            .uri(format!("/v1/webhooks/{id}"))
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"url": url, "events": ["Connection Created"], "enabled": true}).to_string(),
            ))
            .unwrap();
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            assert_eq!(res.status().as_u16(), 201);
            let created: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
            created["secret"].as_str().unwrap().to_owned()
        }
    };
    let (url, endpoint) = Receiver::start(&[500]).await;
    let secret = put_webhook("hook-1", url).await;
    let raw = occurred_now(&raw);
    let fresh: latchkey::lambda::SqsEvent = serde_json::from_str(&raw).unwrap();
    let envelope: Value = serde_json::from_str(fresh.records[0].body.as_deref().unwrap()).unwrap();

    // 500: handed back, visible again when the next attempt (1 s) is due.
    let done = deliver(service, &visibility, &raw).await;
    assert_eq!(failed_ids(&done), std::slice::from_ref(&message_id));
    assert_eq!(endpoint.requests().len(), 1);
    let asked = visibility.0.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (arn, handle, delay) = &asked[0];
    assert_eq!(Some(arn), sample.records[0].event_source_arn.as_ref());
    assert_eq!(Some(handle), sample.records[0].receipt_handle.as_ref());
    assert!(*delay <= std::time::Duration::from_secs(1), "{delay:?}");

    // Delivered once due, under the same id.
    support::eventually(std::time::Duration::from_secs(10), "the second attempt", || async {
        failed_ids(&deliver(service, &visibility, &raw).await).is_empty()
    })
    .await;
    let got = endpoint.requests();
    assert_eq!(got.iter().map(|(status, _, _)| *status).collect::<Vec<_>>(), [500, 200], "one request per attempt");
    let org = latchkey::domain::OrgId::parse("acme").unwrap();
    let delivery_id = |hook: &str, event_id: &str| {
        latchkey::domain::delivery_id(&org, &latchkey::domain::WebhookId::parse(hook).unwrap(), event_id)
    };
    let event_id = envelope["detail"]["event_id"].as_str().unwrap();
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    for (_, headers, body) in &got {
        verifier.verify(body, headers).expect("a Standard Webhooks signature");
        assert_eq!(headers["webhook-id"], delivery_id("hook-1", event_id).as_str());
        let body: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(body["type"], "Connection Created");
        assert_eq!(body["data"], envelope["detail"]);
    }

    // A redelivery of a settled message: nothing sent, nothing handed back.
    let done = deliver(service, &visibility, &raw).await;
    assert!(failed_ids(&done).is_empty());
    assert_eq!(endpoint.requests().len(), 2);

    // Not an envelope: handed back for the redrive policy, its visibility left alone.
    let asked = visibility.0.lock().unwrap().len();
    let mut bad = sample.clone();
    bad.records[0].body = Some("not an event".into());
    let bad = serde_json::to_string(&bad).unwrap();
    assert_eq!(failed_ids(&deliver(service, &visibility, &bad).await), std::slice::from_ref(&message_id));
    assert_eq!(visibility.0.lock().unwrap().len(), asked);

    // Another event whose second endpoint answers 500; its message is never seen again (it went
    // to the dead-letter queue): the scheduled sweep delivers it once due, under the same id.
    let (url, second) = Receiver::start(&[500]).await;
    let second_secret = put_webhook("hook-2", url).await;
    let other_event = "01KAHZZ7V4M3N2Q0EVENT00002";
    let other = occurred_now(&event("webhook-deliver/connection-created.json"))
        .replace("01KAHZZ7V4M3N2Q0EVENT00001", other_event);
    assert_eq!(failed_ids(&deliver(service, &visibility, &other).await), [message_id]);
    assert_eq!(second.requests().len(), 1);
    let schedule = event("webhook-deliver/scheduled.json");
    support::eventually(std::time::Duration::from_secs(10), "the sweep's attempt", || async {
        let swept = deliver(service, &visibility, &schedule).await;
        let latchkey::lambda::WebhookDeliverResponse::Sweep(summary) = swept else { panic!("a sweep: {swept:?}") };
        summary.attempted > 0
    })
    .await;
    let got = second.requests();
    assert_eq!(got.iter().map(|(status, _, _)| *status).collect::<Vec<_>>(), [500, 200]);
    let verifier = standardwebhooks::Webhook::new(&second_secret).unwrap();
    for (_, headers, body) in &got {
        verifier.verify(body, headers).expect("a Standard Webhooks signature");
        assert_eq!(headers["webhook-id"], delivery_id("hook-2", other_event).as_str());
    }
    assert_eq!(endpoint.requests().len(), 3, "hook-1 got the other event once, from its message");
    // Nothing left to sweep.
    let swept = deliver(service, &visibility, &schedule).await;
    assert_eq!(serde_json::to_value(&swept).unwrap(), json!({"attempted": 0}));
}

//! The OAuth 2.0 flows through `latchkey serve`, against real OAuth servers on loopback:
//! oidc-provider (strict: PKCE, `iss`, introspection) driven through its login and consent pages,
//! and oauth2-mock-server for client credentials, token-response quirks and fault injection.

use crate::harness::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::oauth::{MockServer, OidcServer, query_param};

const ORG: &str = "acme";
const SUCCESS: &str = "http://localhost:3000/connected";
const FAILURE: &str = "http://localhost:3000/failed";

fn callback_uri(app: &TestApp) -> String {
    format!("{}/v1/oauth/callback", app.address)
}

/// A browser that does not follow redirects, so the test sees where Latchkey sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

struct Visit {
    status: StatusCode,
    location: Option<String>,
    cache_control: Option<String>,
    referrer_policy: Option<String>,
    body: String,
}

async fn visit(url: &str) -> Visit {
    let res = browser().get(url).send().await.expect("GET the callback");
    let header = |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Visit {
        status: res.status(),
        location: header("location"),
        cache_control: header("cache-control"),
        referrer_policy: header("referrer-policy"),
        body: res.text().await.unwrap_or_default(),
    }
}

/// An app and an oidc-provider that knows the app's callback.
async fn with_oidc(config: Value) -> (TestApp, OidcServer, String) {
    let app = TestApp::spawn().await;
    let mut config = config;
    config["redirect_uris"] = json!([callback_uri(&app)]);
    let oidc = OidcServer::start(config).await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({
        "label": "Strict IdP", "auth": "oauth2_authorization_code",
        "inputs": {
            "authorizeUrl": {"type": "url", "default": oidc.authorize_endpoint()},
            "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
            "issuer": {"type": "url", "default": oidc.issuer},
            "clientId": {"type": "string", "default": oidc.client.client_id},
            "clientSecret": {"type": "password", "default": oidc.client.client_secret},
            "scopes": {"type": "string", "default": "openid offline_access api:read"}
        },
        "redirects": {"success_url": SUCCESS, "failure_url": FAILURE}
    });
    app.put_definition(&org, "idp", &def).await.assert_status(StatusCode::CREATED);
    (app, oidc, org)
}

async fn create(app: &TestApp, org: &str, definition: &str) -> String {
    let body = json!({"definition": definition, "scope": "instance", "customer": "c-1", "instance_id": "inst-9"});
    let created = app.create_connection(org, &body).await;
    created.assert_status(StatusCode::CREATED);
    created.body["id"].as_str().expect("an id").to_owned()
}

async fn authorize(app: &TestApp, token: &str, id: &str) -> String {
    let reply = app.request(reqwest::Method::POST, &format!("/v1/connections/{id}/authorize"), Some(token), None).await;
    reply.assert_status(StatusCode::OK);
    reply.body["authorize_url"].as_str().expect("authorize_url").to_owned()
}

#[tokio::test]
async fn the_authorization_code_flow_connects_against_a_strict_provider() {
    let (app, oidc, org) = with_oidc(json!({})).await;
    let id = create(&app, &org, "idp").await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;

    // The customer starts it (it is their instance connection).
    let url = authorize(&app, &customer, &id).await;
    assert_eq!(query_param(&url, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&url, "code_challenge").map(|c| c.len()), Some(43));
    let state = query_param(&url, "state").expect("a state");
    assert!(state.len() >= 43, "at least 256 bits of state: {state}");
    assert_eq!(query_param(&url, "redirect_uri"), Some(callback_uri(&app)));

    let back = oidc.login_and_consent(&url).await;
    assert!(back.starts_with(&callback_uri(&app)), "{back}");
    assert_eq!(query_param(&back, "iss").as_deref(), Some(oidc.issuer.as_str()), "the provider sends iss");
    let done = visit(&back).await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.body);
    let location = done.location.expect("a redirect");
    assert!(location.starts_with(SUCCESS), "{location}");
    for (k, v) in
        [("connection_id", id.as_str()), ("definition", "idp"), ("customer", "c-1"), ("instance_id", "inst-9")]
    {
        assert_eq!(query_param(&location, k).as_deref(), Some(v), "{k} in {location}");
    }
    assert_eq!(done.cache_control.as_deref(), Some("no-store"));
    assert_eq!(done.referrer_policy.as_deref(), Some("no-referrer"));
    assert_eq!(oidc.stats().await["token_requests"]["authorization_code"], 1, "exactly one code exchange");

    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["status"], "configured");
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, &id, &json!({"min_valid_seconds": 60})).await;
    found.assert_status(StatusCode::OK);
    let access = found.body["token"]["access_token"].as_str().expect("an access token").to_owned();
    assert_eq!(found.body["token"]["token_type"], "Bearer");
    assert!(found.body["token"]["expires_at"].is_string());
    assert_eq!(oidc.introspect(&access).await["active"], true, "the provider calls the token active");
    assert!(!found.text.contains("refresh_token"), "the refresh token is never returned");
    assert!(!found.text.contains(&oidc.client.client_secret), "nor the client secret");
    assert_eq!(found.body["status"], "active");

    let logs = app.connection_logs(&org, &id).await.text;
    for kind in ["authorize_started", "authorized", "used"] {
        assert!(logs.contains(kind), "{kind} in {logs}");
    }
    let code = query_param(&back, "code").expect("a code");
    let captured = app.logs();
    for secret in [access.as_str(), code.as_str(), state.as_str(), oidc.client.client_secret.as_str()] {
        assert!(!captured.contains(secret), "a secret reached the logs");
        assert!(!logs.contains(secret), "a secret reached the connection log");
    }
}

#[tokio::test]
async fn a_replayed_unknown_or_mismatched_response_changes_nothing() {
    let (app, oidc, org) = with_oidc(json!({})).await;
    let id = create(&app, &org, "idp").await;
    let url = authorize(&app, &org, &id).await;
    let back = oidc.login_and_consent(&url).await;

    // RFC 9207: the response claims another issuer: refused, the code never exchanged.
    let forged = back.replace(&format!("iss={}", urlencode(&oidc.issuer)), "iss=https%3A%2F%2Fevil.example");
    assert_ne!(forged, back);
    let refused = visit(&forged).await;
    assert_eq!(refused.status, StatusCode::FOUND);
    let location = refused.location.expect("a redirect");
    assert!(location.starts_with(FAILURE), "{location}");
    assert_eq!(query_param(&location, "error").as_deref(), Some("invalid_request"));
    assert_eq!(oidc.stats().await["token_requests"]["authorization_code"], 0);

    // The state was consumed by that attempt: the genuine response is now a replay.
    let replay = visit(&back).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.body.contains("invalid, expired or was already used"), "{}", replay.body);
    let unknown = visit(&format!("{}?code=x&state=never-issued", callback_uri(&app))).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.cache_control.as_deref(), Some("no-store"));

    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["status"], "pending");
    assert_eq!(oidc.stats().await["token_requests"]["authorization_code"], 0);
    assert!(app.connection_logs(&org, &id).await.text.contains("authorize_failed"));
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

#[tokio::test]
async fn a_denied_consent_goes_to_the_failure_redirect() {
    let (app, oidc, org) = with_oidc(json!({})).await;
    let id = create(&app, &org, "idp").await;
    let url = authorize(&app, &org, &id).await;
    let back = oidc.deny_consent(&url).await;
    let denied = visit(&back).await;
    assert_eq!(denied.status, StatusCode::FOUND);
    let location = denied.location.expect("a redirect");
    assert!(location.starts_with(FAILURE), "{location}");
    assert_eq!(query_param(&location, "error").as_deref(), Some("access_denied"));
    assert!(query_param(&location, "error_description").is_some());
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "pending");
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let lookup = app.lookup(&runtime, &id, &json!({})).await;
    assert_eq!(lookup.problem_type(), "urn:latchkey:problem:connection-pending");
}

#[tokio::test]
async fn without_redirects_the_callback_answers_with_a_small_page() {
    let app = TestApp::spawn().await;
    let mock = MockServer::start(json!({})).await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"}}});
    app.put_definition(&org, "mock", &def).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "mock").await;
    let back = mock.authorize(&authorize(&app, &org, &id).await).await;
    let page = visit(&back).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("authorized"), "{}", page.body);
    assert!(!page.body.contains("<script") && !page.body.contains("http"), "no third-party resources");
}

/// Token-response quirks of real providers: the token one object down (Slack's shape, named by
/// the definition's `token_path` over the catalog entry), `expires_in` as a string, and values
/// captured from the response (Salesforce's `instance_url`, from the catalog).
#[tokio::test]
async fn provider_quirks_are_read_and_captured_values_returned() {
    let app = TestApp::spawn().await;
    let mock = MockServer::start(json!({"rewrites": [
        {"set": {"expires_in": "7200", "instance_url": "https://acme.my.salesforce.com"}},
        {"nest": {"under": "authed_user", "fields": ["access_token", "expires_in"]}}]}))
    .await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"provider": "salesforce", "oauth": {"token_path": "authed_user"}, "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"}}});
    app.put_definition(&org, "sf", &def).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "sf").await;
    let back = mock.authorize(&authorize(&app, &org, &id).await).await;
    assert_eq!(visit(&back).await.status, StatusCode::OK);
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, &id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    assert!(found.body["token"]["access_token"].as_str().is_some_and(|t| !t.is_empty()), "{}", found.text);
    assert!(found.body["token"]["expires_at"].is_string(), "expires_in as a string is understood");
    assert_eq!(found.body["fields"]["instance_url"], "https://acme.my.salesforce.com");
}

#[tokio::test]
async fn client_credentials_tokens_are_fetched_once_and_reused() {
    let app = TestApp::spawn().await;
    let mock = MockServer::start(json!({})).await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "oauth2_client_credentials", "inputs": {
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "svc"},
        "clientSecret": {"type": "password", "default": "svc-secret"}}});
    app.put_definition(&org, "svc", &def).await.assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "svc", "scope": "organization"})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured", "nothing to authorize");
    let id = created.body["id"].as_str().unwrap().to_owned();
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let first = app.lookup(&runtime, &id, &json!({"min_valid_seconds": 60})).await;
    first.assert_status(StatusCode::OK);
    let second = app.lookup(&runtime, &id, &json!({"min_valid_seconds": 60})).await;
    assert_eq!(first.body["token"]["access_token"], second.body["token"]["access_token"]);
    assert_eq!(mock.stats().await["token_requests"]["client_credentials"], 1, "cached sealed until it expires");
    assert!(!first.text.contains("svc-secret"));
}

#[tokio::test]
async fn refused_client_credentials_turn_the_connection_red() {
    let app = TestApp::spawn().await;
    let mock = MockServer::start(json!({"faults": [{"grant_type": "client_credentials", "status": 401,
        "body": {"error": "invalid_client"}}]}))
    .await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "oauth2_client_credentials", "inputs": {
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "svc"}}});
    app.put_definition(&org, "svc", &def).await.assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "svc", "scope": "organization"})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let refused = app.lookup(&runtime, &id, &json!({})).await;
    // Refused for good: the connection is red, and the lookup says so.
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:connection-error");
    let read = app.get_connection(&org, &id).await;
    assert_eq!(read.body["status"], "error");
    assert_eq!(read.body["error"]["code"], "client_rejected", "the organization's to fix");
    assert_eq!(read.body["error"]["provider_code"], "invalid_client");
}

#[tokio::test]
async fn customer_supplied_provider_urls_may_not_reach_private_networks() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "visibility": "customer", "default": "https://auth.example.com/authorize"},
        "tokenUrl": {"type": "url", "visibility": "customer", "default": "https://auth.example.com/token"},
        "revokeUrl": {"type": "url", "visibility": "customer"},
        "clientId": {"type": "string", "default": "cid"}}});
    app.put_definition(&org, "byo", &def).await.assert_status(StatusCode::CREATED);
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    // Literal private addresses of endpoints Latchkey calls are refused as soon as they are set;
    // the authorize URL is only ever opened by the user's browser.
    let body = json!({"definition": "byo", "values": {"tokenUrl": "https://10.1.2.3/token",
        "revokeUrl": "https://[::ffff:169.254.169.254]/revoke",
        "authorizeUrl": "https://169.254.169.254/authorize"}});
    let created = app.create_connection(&customer, &body).await;
    created.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let mut fields = created.error_fields();
    fields.sort();
    assert_eq!(fields, ["values.revokeUrl", "values.tokenUrl"]);
    let created = app.create_connection(&customer, &json!({"definition": "byo"})).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    let patch =
        app.patch_connection(&customer, id, &json!({"values": {"tokenUrl": "https://192.168.0.1/token"}}), None).await;
    patch.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(patch.error_fields(), ["values.tokenUrl"]);
}

#[tokio::test]
async fn only_authorization_code_connections_are_authorized() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"key": {"type": "password"}}});
    app.put_definition(&org, "k", &def).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "k").await;
    let reply = app.request(reqwest::Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    reply.assert_problem(StatusCode::CONFLICT);
    let other = app.token("umbrella", None, &[]).await;
    let reply =
        app.request(reqwest::Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&other), None).await;
    reply.assert_problem(StatusCode::NOT_FOUND);
}

/// QuickBooks sends the company id as a callback parameter: captured and returned as a field.
#[tokio::test]
async fn values_captured_from_the_callback_are_returned_by_lookups() {
    let app = TestApp::spawn().await;
    let mock = MockServer::start(json!({})).await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"provider": "quickbooks", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"}}});
    app.put_definition(&org, "qbo", &def).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "qbo").await;
    let back = mock.authorize(&authorize(&app, &org, &id).await).await;
    assert_eq!(visit(&format!("{back}&realmId=9130350000000000")).await.status, StatusCode::OK);
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, &id, &json!({})).await;
    assert_eq!(found.body["fields"]["realmId"], "9130350000000000", "{}", found.text);
}

#[tokio::test]
async fn redirect_urls_must_be_https_except_on_loopback() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    for (url, ok) in [
        ("https://app.example.com/done", true),
        ("http://localhost:3000/done", true),
        ("http://127.0.0.1/done", true),
        ("http://app.example.com/done", false),
        ("ftp://app.example.com/done", false),
    ] {
        let def = json!({"auth": "oauth2_authorization_code", "redirects": {"success_url": url, "failure_url": url}});
        let reply = app.put_definition(&org, "r", &def).await;
        if ok {
            assert!(reply.status.is_success(), "{url}: {}", reply.text);
        } else {
            reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(reply.error_fields(), ["redirects.failure_url", "redirects.success_url"], "{url}");
        }
    }
}

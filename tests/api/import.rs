//! Token import (SPEC section 10): an organization moving from another platform creates OAuth
//! connections with the tokens it already holds. Grants obtained from oidc-provider are imported
//! and then refreshed at the provider; a grant without a stated lifetime is refreshed daily,
//! never at once; the validation; customers cannot import; no token in reads, logs or storage.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::oauth::{MockServer, OidcServer, pkce_s256, pkce_verifier, query_param};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use latchkey::service::ServiceOptions;

use crate::harness::{Backend, ShiftedClock, TestApp, contains_bytes, eventually, random_hex, random_secret};

const ORG: &str = "acme";
/// A redirect URI registered at oidc-provider; the test reads the code from the redirect and
/// never follows it.
const REDIRECT_URI: &str = "http://127.0.0.1:9/imported-from-elsewhere";

/// A grant as another platform would hold it: obtained from `oidc` by the code flow with PKCE,
/// without Latchkey. The token answer as the provider gave it.
async fn grant_from(oidc: &OidcServer) -> Value {
    let verifier = pkce_verifier();
    let mut authorize = reqwest::Url::parse(&oidc.authorize_endpoint()).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &oidc.client.client_id)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", "openid offline_access api:read")
        .append_pair("prompt", "consent")
        .append_pair("state", &random_hex())
        .append_pair("code_challenge", &pkce_s256(&verifier))
        .append_pair("code_challenge_method", "S256");
    let back = oidc.login_and_consent(authorize.as_str()).await;
    let code = query_param(&back, "code").unwrap_or_else(|| panic!("no code in {back}"));
    let (status, answer) = oidc
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["refresh_token"].is_string(), "a refresh token to import: {answer}");
    answer
}

async fn start_oidc() -> OidcServer {
    OidcServer::start(json!({"redirect_uris": [REDIRECT_URI], "rotate_refresh_token": true})).await
}

/// An authorization-code definition `key` at these endpoints, with the client `client`.
fn oauth_definition(authorize: String, token: String, client: (&str, &str), extra: Value) -> Value {
    let mut def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": authorize},
        "tokenUrl": {"type": "url", "default": token},
        "clientId": {"type": "string", "default": client.0},
        "clientSecret": {"type": "password", "default": client.1},
        "scopes": {"type": "string", "default": "openid offline_access api:read"}}});
    if let Some(extra) = extra.as_object() {
        for (k, v) in extra {
            def[k] = v.clone();
        }
    }
    def
}

async fn define(app: &TestApp, key: &str, def: &Value) {
    let org = app.token(ORG, None, &[]).await;
    let put = app.put_definition(&org, key, def).await;
    assert!(put.status.is_success(), "{}", put.text);
}

async fn import(app: &TestApp, key: &str, tokens: Value) -> crate::harness::Reply {
    let org = app.token(ORG, None, &[]).await;
    app.create_connection(&org, &json!({"definition": key, "customer": "c-1", "tokens": tokens})).await
}

async fn lookup(app: &TestApp, id: &str, min_valid: u64) -> crate::harness::Reply {
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let found = app.lookup(&runtime, id, &json!({"min_valid_seconds": min_valid})).await;
    found.assert_status(StatusCode::OK);
    found
}

fn refreshes(stats: &Value) -> u64 {
    stats["token_requests"]["refresh_token"].as_u64().unwrap_or(0)
}

fn rfc3339(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// The message of the connection's `created` log line.
async fn created_line(app: &TestApp, id: &str) -> String {
    let org = app.token(ORG, None, &[]).await;
    let logs = app.connection_logs(&org, id).await;
    logs.assert_status(StatusCode::OK);
    let entries = logs.body.as_array().expect("a list of log entries");
    let created = entries.iter().find(|e| e["type"] == "created").unwrap_or_else(|| panic!("{}", logs.text));
    created["message"].as_str().unwrap().to_owned()
}

/// The time after `label ` in a log line.
fn time_after(line: &str, label: &str) -> OffsetDateTime {
    let rest = line.split(label).nth(1).unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    rfc3339(rest.split([';', ')']).next().unwrap().trim())
}

/// How many sweeps the server has logged so far.
fn sweeps(app: &TestApp) -> usize {
    app.logs().matches("refresh sweep").count()
}

/// A grant obtained from oidc-provider elsewhere is imported, looked up as it is, refreshed at
/// the provider (its rotated refresh token kept), and never shown: not in reads, errors, logs,
/// events or storage.
#[tokio::test]
async fn an_imported_grant_is_looked_up_and_refreshed_at_the_provider() {
    let oidc = start_oidc().await;
    let mut app = TestApp::spawn().await;
    let def = oauth_definition(
        oidc.authorize_endpoint(),
        oidc.token_endpoint(),
        (&oidc.client.client_id, &oidc.client.client_secret),
        json!({}),
    );
    define(&app, "idp", &def).await;
    let grant = grant_from(&oidc).await;
    let (access, refresh) = (grant["access_token"].as_str().unwrap(), grant["refresh_token"].as_str().unwrap());

    let marker = format!("imported-{}", random_hex());
    let org = app.token(ORG, None, &[]).await;
    let body = json!({"definition": "idp", "customer": "c-1", "label": marker, "tokens": {
        "access_token": access, "refresh_token": refresh, "expires_in": grant["expires_in"],
        "scopes": grant["scope"], "token_type": grant["token_type"]}});
    let created = app.create_connection(&org, &body).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured", "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let mut replies = vec![created];

    // The imported token is handed out as it is: no refresh needed yet.
    let found = lookup(&app, &id, 60).await;
    assert_eq!(found.body["token"]["access_token"], access);
    assert_eq!(found.body["token"]["token_type"], "Bearer");
    let scopes: Vec<&str> =
        found.body["token"]["scopes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(scopes.contains(&"offline_access") && scopes.contains(&"openid"), "granted scopes recorded: {scopes:?}");
    let expires = rfc3339(found.body["token"]["expires_at"].as_str().unwrap());
    assert!(expires > OffsetDateTime::now_utc(), "{expires}");
    assert_eq!(refreshes(&oidc.stats().await), 0);

    // A forced refresh goes to oidc-provider with the imported refresh token.
    let forced = app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&org), None).await;
    forced.assert_status(StatusCode::OK);
    let fresh = lookup(&app, &id, 60).await;
    let new_access = fresh.body["token"]["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_access, access, "a new access token after the refresh");
    assert_eq!(oidc.introspect(&new_access).await["active"], true);
    let stats = oidc.stats().await;
    assert_eq!(refreshes(&stats), 1, "{stats}");
    assert_eq!(stats["reused_refresh_tokens"], 0, "{stats}");
    // The rotated refresh token was stored: a second refresh works and reuses nothing.
    let again = app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&org), None).await;
    again.assert_status(StatusCode::OK);
    let stats = oidc.stats().await;
    assert_eq!((refreshes(&stats), stats["reused_refresh_tokens"].as_u64()), (2, Some(0)), "{stats}");

    let line = created_line(&app, &id).await;
    assert!(line.contains("imported tokens") && line.contains("api:read"), "{line}");
    for read in [
        app.get_connection(&org, &id).await,
        app.list_connections(&org, "").await,
        app.connection_logs(&org, &id).await,
        // An error must not echo the tokens it was sent either.
        import(&app, "idp", json!({"access_token": access, "refresh_token": refresh, "expires_in": "soon"})).await,
    ] {
        replies.push(read);
    }
    for reply in &replies {
        for secret in [access, refresh] {
            assert!(!reply.text.contains(secret), "a reply leaked an imported token: {}", reply.text);
        }
    }
    for (place, bytes) in app.stored_data().await {
        for secret in [access, refresh, new_access.as_str()] {
            assert!(!contains_bytes(&bytes, secret.as_bytes()), "{place} holds a token in clear");
        }
    }
    app.stop().await;
    let logs = app.logs();
    // The event line proves the capture: events go to the log in `latchkey serve`.
    assert!(logs.contains(&id), "the logs were captured:\n{logs}");
    for secret in [access, refresh, new_access.as_str()] {
        assert!(!logs.contains(secret), "the logs or events leaked a token:\n{logs}");
    }
}

/// A token imported without a lifetime is due within a day, not at once: the sweeps right after
/// the import leave it alone; after a refresh whose answer again states no lifetime, the next
/// sweeps leave it alone too.
#[tokio::test]
async fn a_token_without_expiry_is_refreshed_daily_never_at_once() {
    let mock =
        MockServer::start(json!({"rewrites": [{"grant_type": "refresh_token", "set": {"expires_in": null}}]})).await;
    let app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")],
    )
    .await;
    define(&app, "mock", &oauth_definition(mock.authorize_endpoint(), mock.token_endpoint(), ("cid", "cs"), json!({})))
        .await;
    let before = OffsetDateTime::now_utc();
    let created = import(&app, "mock", json!({"access_token": "at-no-expiry", "refresh_token": "rt-no-expiry"})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured");
    let id = created.body["id"].as_str().unwrap().to_owned();

    let line = created_line(&app, &id).await;
    assert!(line.contains("expires never"), "{line}");
    let due = time_after(&line, "next refresh ");
    assert!(due <= OffsetDateTime::now_utc() + Duration::from_secs(24 * 3600), "due within a day: {line}");
    assert!(due >= before + Duration::from_secs(12 * 3600), "not due at once: {line}");
    let found = lookup(&app, &id, 3600).await;
    assert!(found.body["token"]["expires_at"].is_null(), "{}", found.text);
    assert_eq!(found.body["token"]["access_token"], "at-no-expiry");

    let seen = sweeps(&app);
    eventually(Duration::from_secs(30), "three sweeps", || async { sweeps(&app) >= seen + 3 }).await;
    assert_eq!(refreshes(&mock.stats().await), 0, "a token of unknown lifetime is not refreshed at once");

    let org = app.token(ORG, None, &[]).await;
    let forced = app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&org), None).await;
    forced.assert_status(StatusCode::OK);
    assert_eq!(refreshes(&mock.stats().await), 1);
    let found = lookup(&app, &id, 3600).await;
    assert_ne!(found.body["token"]["access_token"], "at-no-expiry");
    assert!(found.body["token"]["expires_at"].is_null(), "the refresh answer stated no lifetime: {}", found.text);
    let seen = sweeps(&app);
    eventually(Duration::from_secs(30), "three more sweeps", || async { sweeps(&app) >= seen + 3 }).await;
    assert_eq!(refreshes(&mock.stats().await), 1, "after a refresh without expiry, not refreshed again at once");
}

/// An access token that has already expired is taken with a refresh token, and refreshed by the
/// next sweep.
#[tokio::test]
async fn an_expired_import_is_refreshed_by_the_next_sweep() {
    let oidc = start_oidc().await;
    let app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")],
    )
    .await;
    let client = (oidc.client.client_id.as_str(), oidc.client.client_secret.as_str());
    define(&app, "idp", &oauth_definition(oidc.authorize_endpoint(), oidc.token_endpoint(), client, json!({}))).await;
    let grant = grant_from(&oidc).await;
    let created = import(
        &app,
        "idp",
        json!({"access_token": grant["access_token"], "refresh_token": grant["refresh_token"],
               "expires_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured");
    eventually(Duration::from_secs(30), "a refresh by the sweep", || async { refreshes(&oidc.stats().await) >= 1 })
        .await;
    let found = lookup(&app, created.body["id"].as_str().unwrap(), 60).await;
    assert_ne!(found.body["token"]["access_token"], grant["access_token"]);
    assert!(rfc3339(found.body["token"]["expires_at"].as_str().unwrap()) > OffsetDateTime::now_utc());
}

/// Granted scopes are recorded as given (an array or a string) and checked against the
/// definition's `required_scopes`: a grant lacking one is created red `scopes_missing`, as an
/// authorization lacking it would be.
#[tokio::test]
async fn granted_scopes_are_recorded_and_required_ones_checked() {
    let app = TestApp::spawn().await;
    let def = oauth_definition(
        "https://auth.acme.example/authorize".into(),
        "https://auth.acme.example/token".into(),
        ("cid", "cs"),
        json!({"oauth": {"required_scopes": ["write"]}}),
    );
    define(&app, "acme", &def).await;
    let lacking = import(&app, "acme", json!({"access_token": "a1", "scopes": "read", "expires_in": 3600})).await;
    lacking.assert_status(StatusCode::CREATED);
    assert_eq!(lacking.body["status"], "error", "{}", lacking.text);
    assert_eq!(lacking.body["error"]["code"], "scopes_missing");
    assert!(lacking.body["error"]["message"].as_str().unwrap().contains("write"), "{}", lacking.text);

    let granted =
        import(&app, "acme", json!({"access_token": "a2", "scopes": ["write read", "admin"], "token_type": "bearer"}))
            .await;
    granted.assert_status(StatusCode::CREATED);
    assert_eq!(granted.body["status"], "configured", "{}", granted.text);
    let found = lookup(&app, granted.body["id"].as_str().unwrap(), 60).await;
    assert_eq!(found.body["token"]["scopes"], json!(["write", "read", "admin"]));
    assert_eq!(found.body["token"]["token_type"], "Bearer");
    assert!(found.body["token"]["expires_at"].is_null());
}

/// Every bad import is a 422 naming the member and creates nothing; a customer user cannot
/// import at all (403); and no error repeats a token.
#[tokio::test]
async fn bad_imports_are_refused_and_create_nothing() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let oauth = oauth_definition(
        "https://auth.acme.example/authorize".into(),
        "https://auth.acme.example/token".into(),
        ("cid", "cs"),
        json!({}),
    );
    define(&app, "acme", &oauth).await;
    define(&app, "keys", &json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password"}}})).await;
    let mut incomplete = oauth.clone();
    incomplete["inputs"].as_object_mut().unwrap().remove("clientId");
    define(&app, "no-client", &incomplete).await;

    let secret = format!("CANARY{}", random_hex());
    let cases = [
        ("acme", json!({"refresh_token": secret}), "tokens.access_token"),
        ("acme", json!({"access_token": ""}), "tokens.access_token"),
        ("acme", json!({"access_token": "x".repeat(8193)}), "tokens.access_token"),
        ("acme", json!({"access_token": format!("{secret}\n")}), "tokens.access_token"),
        ("acme", json!({"access_token": secret, "id_token": secret}), "tokens.id_token"),
        ("acme", json!({"access_token": secret, "expires_in": 60, "expires_at": "2099-01-01T00:00:00Z"}), "tokens"),
        ("acme", json!({"access_token": secret, "expires_in": 0}), "tokens.expires_in"),
        ("acme", json!({"access_token": secret, "expires_in": -60}), "tokens.expires_in"),
        ("acme", json!({"access_token": secret, "expires_in": "3600"}), "tokens.expires_in"),
        ("acme", json!({"access_token": secret, "expires_at": "tomorrow"}), "tokens.expires_at"),
        ("acme", json!({"access_token": secret, "expires_at": "2020-01-01T00:00:00Z"}), "tokens.expires_at"),
        ("acme", json!({"access_token": secret, "refresh_token": ""}), "tokens.refresh_token"),
        ("acme", json!({"access_token": secret, "scopes": [1, 2]}), "tokens.scopes"),
        ("acme", json!({"access_token": secret, "token_type": "Bearer token"}), "tokens.token_type"),
        ("acme", json!(secret), "tokens"),
        ("keys", json!({"access_token": secret}), "tokens"),
        ("no-client", json!({"access_token": secret, "refresh_token": secret}), "values.clientId"),
    ];
    for (key, tokens, field) in cases {
        let reply = import(&app, key, tokens.clone()).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(reply.error_fields().contains(&field.to_owned()), "{tokens}: expected {field}: {}", reply.text);
        assert!(!reply.text.contains(&secret), "an error repeated a token: {}", reply.text);
    }

    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let body = json!({"definition": "acme", "tokens": {"access_token": secret, "expires_in": 3600}});
    let refused = app.create_connection(&customer, &body).await;
    refused.assert_problem(StatusCode::FORBIDDEN);
    assert!(!refused.text.contains(&secret), "{}", refused.text);

    let listed = app.list_connections(&org, "").await;
    assert_eq!(listed.body["items"], json!([]), "nothing was created: {}", listed.text);
}

/// The daily refresh of a token imported without a lifetime, on the service's own clock moved
/// forward (in process, embedded store): a sweep right after the import refreshes nothing; a day
/// later one sweep refreshes it exactly once, and another sweep right away does not again (the
/// answer states no lifetime either: never a storm); a day after that it is refreshed again.
/// Counted as token requests at the mock provider.
#[tokio::test]
async fn an_import_without_expiry_is_refreshed_once_a_day_on_a_moved_clock() {
    use latchkey::domain::{OrgId, Principal};

    let dir = tempfile::tempdir().unwrap();
    let options = ServiceOptions { public_url: Some("http://127.0.0.1:9".to_owned()), ..ServiceOptions::default() };
    let clock = std::sync::Arc::new(ShiftedClock::default());
    let app = latchkey::config::Components::embedded_with_clock(dir.path(), options, clock.clone()).unwrap();
    let mock =
        MockServer::start(json!({"rewrites": [{"grant_type": "refresh_token", "set": {"expires_in": null}}]})).await;
    let p = Principal::organization(OrgId::parse(ORG).unwrap());
    let def = oauth_definition(mock.authorize_endpoint(), mock.token_endpoint(), ("cid", "cs"), json!({}));
    app.service.put_definition(&p, "mock", &def).await.unwrap();
    let body = json!({"definition": "mock", "customer": "c-1",
        "tokens": {"access_token": "at-daily", "refresh_token": "rt-daily"}});
    app.service.create_connection(&p, &body).await.unwrap();
    let sweep = || async {
        let summary = app.service.refresh_sweep(std::time::Instant::now() + Duration::from_secs(30)).await.unwrap();
        assert_eq!(summary.failed, 0, "{summary:?}");
        refreshes(&mock.stats().await)
    };
    // A day and a second: the due index files a due time under the next whole second.
    const DAY: Duration = Duration::from_secs(24 * 3600 + 1);

    assert_eq!(sweep().await, 0, "not refreshed at once");
    clock.advance(DAY);
    assert_eq!(sweep().await, 1, "due within a day: one refresh");
    assert_eq!(sweep().await, 1, "the refreshed token is not due again at once");
    clock.advance(DAY);
    assert_eq!(sweep().await, 2, "and the next day, once more");
    assert_eq!(sweep().await, 2, "never a storm");
}

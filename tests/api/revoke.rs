//! Disconnect, delete and revocation (RFC 7009) through `latchkey serve`, against oidc-provider
//! (whose introspection tells whether a token still works).

use std::time::Duration;

use crate::harness::{Backend, TestApp, contains_bytes, eventually, files_under, random_secret};
use latchkey::service::ServiceOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::oauth::OidcServer;

const ORG: &str = "acme";

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// Defines a connection against `oidc` (with `revoke_url`), authorizes it, and returns its id and
/// the access token a lookup hands out.
async fn connected(app: &TestApp, oidc: &OidcServer, revoke_url: &str) -> (String, String) {
    connected_as(app, oidc, "idp", "c-1", revoke_url).await
}

/// [`connected`] under definition `key`, for `customer`.
async fn connected_as(
    app: &TestApp,
    oidc: &OidcServer,
    key: &str,
    customer: &str,
    revoke_url: &str,
) -> (String, String) {
    connected_in(app, oidc, ORG, key, customer, revoke_url).await
}

/// [`connected_as`] in organization `org_id`.
async fn connected_in(
    app: &TestApp,
    oidc: &OidcServer,
    org_id: &str,
    key: &str,
    customer: &str,
    revoke_url: &str,
) -> (String, String) {
    let org = app.token(org_id, None, &[]).await;
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": oidc.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
        "revokeUrl": {"type": "url", "default": revoke_url},
        "clientId": {"type": "string", "default": oidc.client.client_id},
        "clientSecret": {"type": "password", "default": oidc.client.client_secret},
        "scopes": {"type": "string", "default": "openid offline_access api:read"}}});
    let put = app.put_definition(&org, key, &def).await;
    assert!(put.status.is_success(), "{}", put.text);
    let created = app.create_connection(&org, &json!({"definition": key, "customer": customer})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let token = authorize_in(app, oidc, org_id, &id).await;
    (id, token)
}

async fn authorize(app: &TestApp, oidc: &OidcServer, id: &str) -> String {
    authorize_in(app, oidc, ORG, id).await
}

async fn authorize_in(app: &TestApp, oidc: &OidcServer, org_id: &str, id: &str) -> String {
    let org = app.token(org_id, None, &[]).await;
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    reply.assert_status(StatusCode::OK);
    let back = oidc.login_and_consent(reply.body["authorize_url"].as_str().unwrap()).await;
    let done = browser().get(&back).send().await.unwrap();
    assert!(done.status().is_success(), "callback: {}", done.status());
    let runtime = app.token(org_id, None, &["runtime"]).await;
    let found = app.lookup(&runtime, id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    found.body["token"]["access_token"].as_str().unwrap().to_owned()
}

/// A service whose OAuth redirect URI is `http://127.0.0.1:9/v1/oauth/callback` (nothing listens
/// there: the tests play the browser and hand the callback to the service themselves).
fn callback_on_port_9() -> ServiceOptions {
    ServiceOptions { public_url: Some("http://127.0.0.1:9".to_owned()), ..ServiceOptions::default() }
}

async fn lookup(app: &TestApp, id: &str) -> crate::harness::Reply {
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, id, &json!({})).await
}

async fn start_oidc(app: &TestApp) -> OidcServer {
    OidcServer::start(json!({"redirect_uris": [format!("{}/v1/oauth/callback", app.address)]})).await
}

#[tokio::test]
async fn disconnect_cuts_access_at_once_revokes_at_the_provider_and_can_be_undone() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let oidc = start_oidc(&app).await;
    let (id, token) = connected(&app, &oidc, &oidc.revocation_endpoint()).await;
    assert_eq!(oidc.introspect(&token).await["active"], true);

    let org = app.token(ORG, None, &[]).await;
    let cut = app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None).await;
    cut.assert_status(StatusCode::OK);
    assert_eq!(cut.body["status"], "disconnected");
    // At once: the lookup fails with a clear problem.
    let refused = lookup(&app, &id).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:connection-disconnected");
    // Within seconds: the provider calls the token dead.
    eventually(Duration::from_secs(10), "the provider revoked the token", || async {
        oidc.introspect(&token).await["active"] == false
    })
    .await;
    assert!(oidc.stats().await["revocations"].as_u64().unwrap_or(0) >= 1);
    eventually(Duration::from_secs(5), "the revoked log line", || async {
        app.connection_logs(&org, &id).await.text.contains("\"revoked\"")
    })
    .await;
    let logs = app.connection_logs(&org, &id).await.text;
    assert!(logs.contains("disconnected"), "{logs}");
    assert!(!app.logs().contains(&token) && !logs.contains(&token), "no token in the logs");

    // Disconnecting again is harmless; authorizing again works like the first time.
    app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
        .await
        .assert_status(StatusCode::OK);
    let again = authorize(&app, &oidc, &id).await;
    assert_ne!(again, token);
    assert_eq!(oidc.introspect(&again).await["active"], true);
}

#[tokio::test]
async fn delete_revokes_too_and_the_connection_is_gone() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let oidc = start_oidc(&app).await;
    let (id, token) = connected(&app, &oidc, &oidc.revocation_endpoint()).await;
    let org = app.token(ORG, None, &[]).await;
    app.delete_connection(&org, &id).await.assert_status(StatusCode::NO_CONTENT);
    lookup(&app, &id).await.assert_problem(StatusCode::NOT_FOUND);
    eventually(Duration::from_secs(10), "the provider revoked the token", || async {
        oidc.introspect(&token).await["active"] == false
    })
    .await;
}

/// With the provider unreachable, access is still cut at once, the failure is logged, the job
/// waits (sealed) for a retry, and nothing secret is stored in clear meanwhile.
#[tokio::test]
async fn with_the_provider_down_access_is_cut_and_revocation_retried_later() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let oidc = start_oidc(&app).await;
    let (id, token) = connected(&app, &oidc, &format!("http://127.0.0.1:{closed}/revoke")).await;
    let org = app.token(ORG, None, &[]).await;
    app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(lookup(&app, &id).await.problem_type(), "urn:latchkey:problem:connection-disconnected");
    eventually(Duration::from_secs(10), "revoke_failed", || async {
        app.connection_logs(&org, &id).await.text.contains("revoke_failed")
    })
    .await;
    let logs = app.connection_logs(&org, &id).await.text;
    assert!(logs.contains("retrying in"), "{logs}");
    // The token was not revoked (the provider was never reached) and sits sealed in the job.
    assert_eq!(oidc.introspect(&token).await["active"], true);
    for f in files_under(&app.data_dir) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(!contains_bytes(&bytes, token.as_bytes()), "{} holds the token in clear", f.display());
    }
}

/// `latchkey serve`'s revoker runs disconnects side by side: one whose revocation endpoint
/// never answers (each call held until the 15 s provider call timeout) does not keep the next
/// disconnect's tokens alive meanwhile. One event after another, the second waited for it.
#[tokio::test]
async fn a_held_revocation_does_not_keep_serves_revoker_from_the_next_disconnect() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let oidc = start_oidc(&app).await;
    // Connections wait in its backlog, accepted by the kernel and never answered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_url = format!("http://{}/revoke", hole.local_addr().unwrap());
    let (held, _) = connected_as(&app, &oidc, "idp-held", "c-held", &held_url).await;
    let (next, token) = connected_as(&app, &oidc, "idp", "c-next", &oidc.revocation_endpoint()).await;

    let org = app.token(ORG, None, &[]).await;
    for id in [&held, &next] {
        app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
            .await
            .assert_status(StatusCode::OK);
    }
    eventually(Duration::from_secs(10), "the next disconnect's token revoked while the first is held", || async {
        oidc.introspect(&token).await["active"] == false
    })
    .await;
    drop(hole);
}

/// `latchkey serve`'s revoker shares its places among organizations: 17 disconnects of one
/// organization whose revocation endpoint never answers (more than the revoker's 16 places),
/// then one of another organization, whose token is revoked meanwhile (the held ones take 12
/// places at most). With the places given in arrival order, the held ones took all 16 for the
/// provider call timeout (15 s) and more.
/// The sweep, which would also revoke it, runs once an hour here.
#[tokio::test]
async fn one_organizations_held_revocations_leave_serves_revoker_to_the_others() {
    let app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "3600")],
    )
    .await;
    let oidc = start_oidc(&app).await;
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_url = format!("http://{}/revoke", hole.local_addr().unwrap());
    let mut held = Vec::new();
    for i in 0..17 {
        held.push(connected_as(&app, &oidc, "idp-held", &format!("c-held-{i}"), &held_url).await.0);
    }
    let (other, token) = connected_in(&app, &oidc, "globex", "idp", "c-other", &oidc.revocation_endpoint()).await;

    let org = app.token(ORG, None, &[]).await;
    for id in &held {
        app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
            .await
            .assert_status(StatusCode::OK);
    }
    let globex = app.token("globex", None, &[]).await;
    app.request(Method::POST, &format!("/v1/connections/{other}/disconnect"), Some(&globex), None)
        .await
        .assert_status(StatusCode::OK);
    eventually(
        Duration::from_secs(10),
        "the other organization's token revoked while the first one's are held",
        || async { oidc.introspect(&token).await["active"] == false },
    )
    .await;
    drop(hole);
}

/// A duplicate or replayed revoke event does no harm: the job runs once.
#[tokio::test]
async fn a_replayed_revoke_event_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = latchkey::config::Components::embedded(dir.path(), callback_on_port_9()).unwrap();
    let service = &app.service;
    let oidc = OidcServer::start(json!({"redirect_uris": ["http://127.0.0.1:9/v1/oauth/callback"]})).await;
    let p = latchkey::domain::Principal::organization(latchkey::domain::OrgId::parse(ORG).unwrap());
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": oidc.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
        "revokeUrl": {"type": "url", "default": oidc.revocation_endpoint()},
        "clientId": {"type": "string", "default": oidc.client.client_id},
        "clientSecret": {"type": "password", "default": oidc.client.client_secret},
        "scopes": {"type": "string", "default": "openid offline_access api:read"}}});
    service.put_definition(&p, "idp", &def).await.unwrap();
    let conn = service.create_connection(&p, &json!({"definition": "idp", "customer": "c-1"})).await.unwrap();
    let started = service.authorize(&p, conn.id.as_str()).await.unwrap();
    let back = oidc.login_and_consent(&started.authorize_url).await;
    let params: std::collections::BTreeMap<String, String> =
        reqwest::Url::parse(&back).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    service.callback(&params, &Default::default()).await;
    service.disconnect(&p, conn.id.as_str()).await.unwrap();

    let event = json!({"source": "latchkey", "detail-type": "Connection Disconnected",
        "detail": {"org": ORG, "connection_id": conn.id.as_str(), "definition": "idp", "status": "disconnected"}});
    let event: latchkey::lambda::ConnectionEvent = serde_json::from_value(event).unwrap();
    let first = latchkey::lambda::handle_revoke(service, &event).await.unwrap();
    assert_eq!((first["jobs"].as_u64(), first["revoked"].as_u64()), (Some(1), Some(1)), "{first}");
    let replay = latchkey::lambda::handle_revoke(service, &event).await.unwrap();
    assert_eq!(replay["jobs"], 0, "{replay}");
    assert_eq!(
        oidc.stats().await["revocations"].as_u64(),
        Some(2),
        "refresh then access token, once: {}",
        oidc.stats().await
    );
    // An event without the connection never reaches the handler: the runtime refuses it.
    let bad = serde_json::from_value::<latchkey::lambda::ConnectionEvent>(
        json!({"source": "latchkey", "detail-type": "Connection Disconnected", "detail": {}}),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("missing field `org`"), "{bad}");
    let _: Value = first;
}

/// An API-key connection: disconnect removes the key (reads no longer show it set, lookups fail);
/// a new key brings it back.
#[tokio::test]
async fn an_api_key_connection_is_disconnected_and_reconfigured() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&org, "k", &def).await.assert_status(StatusCode::CREATED);
    let created =
        app.create_connection(&org, &json!({"definition": "k", "customer": "c-1", "values": {"apiKey": "sk_1"}})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    lookup(&app, &id).await.assert_status(StatusCode::OK);
    let cut = app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None).await;
    cut.assert_status(StatusCode::OK);
    assert_eq!(cut.body["values"].get("apiKey"), None, "the key is gone");
    assert_eq!(lookup(&app, &id).await.problem_type(), "urn:latchkey:problem:connection-disconnected");
    let back = app.patch_connection(&org, &id, &json!({"values": {"apiKey": "sk_2"}}), None).await;
    back.assert_status(StatusCode::OK);
    assert_eq!(back.body["status"], "configured");
    assert_eq!(lookup(&app, &id).await.body["fields"]["apiKey"], "sk_2");
    // Customers may disconnect their own; others learn nothing.
    let other = app.token("umbrella", None, &[]).await;
    let hidden = app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&other), None).await;
    hidden.assert_problem(StatusCode::NOT_FOUND);
}

/// The provider is down at first (503), then back: the job is retried by the sweep and succeeds
/// within its attempts.
#[tokio::test]
async fn a_revocation_that_failed_succeeds_once_the_provider_is_back() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")],
    )
    .await;
    let mock = support::oauth::MockServer::start(json!({"revoke_faults": [{"times": 2, "status": 503}]})).await;
    let org = app.token(ORG, None, &[]).await;
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "revokeUrl": {"type": "url", "default": mock.revocation_endpoint()},
        "clientId": {"type": "string", "default": "cid"}}});
    app.put_definition(&org, "m", &def).await.assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "m", "customer": "c-1"})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    let back = mock.authorize(reply.body["authorize_url"].as_str().unwrap()).await;
    assert!(browser().get(&back).send().await.unwrap().status().is_success());
    app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
        .await
        .assert_status(StatusCode::OK);
    assert_eq!(lookup(&app, &id).await.problem_type(), "urn:latchkey:problem:connection-disconnected");
    // First attempt (the event) and its retry fail; a later sweep succeeds.
    eventually(Duration::from_secs(30), "a successful revocation", || async {
        mock.stats().await["revocations"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let stats = mock.stats().await;
    assert_eq!(stats["revoke_faults_served"], 2, "{stats}");
    eventually(Duration::from_secs(5), "the revoked log line", || async {
        app.connection_logs(&org, &id).await.text.contains("\"revoked\"")
    })
    .await;
    let logs = app.connection_logs(&org, &id).await.text;
    assert!(logs.contains("revoke_failed"), "{logs}");
}

/// An authorization that began before a disconnect cannot put tokens back afterwards.
#[tokio::test]
async fn an_authorization_begun_before_a_disconnect_cannot_reconnect() {
    let app = TestApp::spawn().await;
    let oidc = start_oidc(&app).await;
    let (id, _) = connected(&app, &oidc, &oidc.revocation_endpoint()).await;
    let org = app.token(ORG, None, &[]).await;
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    let url = reply.body["authorize_url"].as_str().unwrap().to_owned();
    app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None)
        .await
        .assert_status(StatusCode::OK);
    let back = oidc.login_and_consent(&url).await;
    let late = browser().get(&back).send().await.unwrap();
    assert_eq!(late.status(), StatusCode::BAD_REQUEST, "refused (no failure redirect configured)");
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "disconnected");
    assert_eq!(lookup(&app, &id).await.problem_type(), "urn:latchkey:problem:connection-disconnected");
}

/// The sweep starts no revocation after its deadline (the Lambda's end is near): the job stays
/// due, and the next sweep runs it.
#[tokio::test]
async fn the_sweep_starts_no_revocation_after_its_deadline() {
    use latchkey::domain::{ConnectionId, OrgId, Principal};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let app = latchkey::config::Components::embedded(dir.path(), callback_on_port_9()).unwrap();
    let mock = support::oauth::MockServer::start(json!({})).await;
    let org = OrgId::parse(ORG).unwrap();
    let p = Principal::organization(org.clone());
    let def = json!({"auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "revokeUrl": {"type": "url", "default": mock.revocation_endpoint()},
        "clientId": {"type": "string", "default": "cid"}}});
    app.service.put_definition(&p, "idp", &def).await.unwrap();
    let conn = app.service.create_connection(&p, &json!({"definition": "idp", "customer": "c-1"})).await.unwrap();
    let started = app.service.authorize(&p, conn.id.as_str()).await.unwrap();
    let back = reqwest::Url::parse(&mock.authorize(&started.authorize_url).await).unwrap();
    let params = back.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    app.service.callback(&params, &Default::default()).await;
    app.service.disconnect(&p, conn.id.as_str()).await.unwrap();
    let id = ConnectionId::parse(conn.id.as_str()).unwrap();
    assert_eq!(app.store.revocations_of(&org, &id).await.unwrap().len(), 1, "a job, due now");

    let late = app.service.revoke_due(Instant::now()).await.unwrap();
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(app.store.revocations_of(&org, &id).await.unwrap().len(), 1, "still due");
    assert_eq!(mock.stats().await["revocations"], 0);

    let next = app.service.revoke_due(Instant::now() + Duration::from_secs(10)).await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(app.store.revocations_of(&org, &id).await.unwrap().is_empty(), "done");
    assert!(mock.stats().await["revocations"].as_u64() >= Some(1), "revoked at the provider");
}

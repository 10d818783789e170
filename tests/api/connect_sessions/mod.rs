//! Connect sessions (SPEC section 9): `POST /v1/connect/sessions` makes a one-time link for one
//! customer, valid 30 minutes, stored hashed; the first GET trades it for the page's cookie and
//! a second is refused; the request is checked field by field and never tells one
//! organization or customer about another's; `Idempotency-Key` gives the same link again
//! (stored sealed); an OAuth authorization started from the page needs the page's cookie at the
//! callback, and ends at the session's redirect with its context, or back on the page. The
//! page's own use cases (what it shows, its forms) act as the customer. Over HTTP through the
//! harness (both transports; `tests/run.sh` runs the module on the aws backend too), the service
//! in process for the clock and the callback, and the Lambda samples. The callback's cases are
//! in `callback`, the page's use cases in `page`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use latchkey::config::Components;
use latchkey::domain::{ConnectSession, OrgId, Principal};
use latchkey::service::{ServiceError, ServiceOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::oauth::MockServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt;

use crate::harness::{Reply, ShiftedClock, TestApp, contains_bytes, random_hex};

mod callback;
mod page;

const ORG: &str = "acme";
const PUBLIC_URL: &str = "http://127.0.0.1:9";

fn api_key_definition() -> Value {
    json!({"label": "Acme", "description": "Acme's REST API", "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "label": "API key", "required": true},
        "region": {"type": "string", "label": "Region", "default": "eu"},
        "tenant": {"type": "string", "label": "Tenant", "visibility": "organization", "default": "t-secret-ish"},
        "hint": {"type": "string", "label": "Hint", "visibility": "embedded"}}})
}

async fn setup() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "acme-api", &api_key_definition()).await.assert_status(StatusCode::CREATED);
    (app, org)
}

async fn create_session(app: &TestApp, token: &str, body: &Value) -> Reply {
    app.request(reqwest::Method::POST, "/v1/connect/sessions", Some(token), Some(body)).await
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The session id and link secret of a link URL.
fn link_parts(url: &str) -> (String, String) {
    let link = support::oauth::query_param(url, "session").unwrap_or_else(|| panic!("no session in {url}"));
    let (id, secret) = link.split_once('.').unwrap();
    (id.to_owned(), secret.to_owned())
}

#[tokio::test]
async fn an_organization_user_gets_a_link_that_works_once_for_thirty_minutes() {
    let (app, org) = setup().await;
    let before = OffsetDateTime::now_utc();
    let created = create_session(&app, &org, &json!({"customer": "c-1", "definitions": ["acme-api"]})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let url = created.body["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/connect?session=", app.address)), "{url}");
    let expires = OffsetDateTime::parse(created.body["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let ttl = expires - before;
    assert!(ttl > time::Duration::minutes(29) && ttl <= time::Duration::minutes(31), "{ttl}");
    let (id, secret) = link_parts(url);
    assert_eq!(secret.len(), 43, "32 random bytes, base64url");

    let client = no_redirects();
    let first = client.get(url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.ends_with(&format!("/connect/{id}")), "{location}");
    assert!(!location.contains(&secret), "the secret leaves the URL");
    let cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    let prefix = format!("latchkey_connect_{id}=");
    assert!(cookie.starts_with(&prefix), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let browser = cookie[prefix.len()..].split(';').next().unwrap().to_owned();

    let again = client.get(url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN, "a link works once");
    assert!(again.headers().get("set-cookie").is_none());
    let page = client
        .get(app.url(&format!("/connect/{id}")))
        .header("cookie", format!("latchkey_connect_{id}={browser}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the browser that traded the link has the page");

    // Only hashes are stored: neither the link's secret nor the browser's; the session's id is
    // (the search's positive control).
    let stored = app.stored_data().await;
    assert!(stored.iter().any(|(_, bytes)| contains_bytes(bytes, id.as_bytes())), "the search sees stored data");
    for (place, bytes) in &stored {
        assert!(!contains_bytes(bytes, secret.as_bytes()), "the link secret is in clear in {place}");
        assert!(!contains_bytes(bytes, browser.as_bytes()), "the browser secret is in clear in {place}");
    }
    for line in app.logs().lines() {
        assert!(!line.contains(&secret) && !line.contains(&browser), "a secret in the log: {line}");
    }
}

#[tokio::test]
async fn the_request_is_checked_field_by_field() {
    let (app, org) = setup().await;
    let other_customers = app
        .create_connection(&org, &json!({"definition": "acme-api", "customer": "c-2", "values": {"apiKey": "k"}}))
        .await;
    other_customers.assert_status(StatusCode::CREATED);
    let organizations = app
        .create_connection(
            &org,
            &json!({"definition": "acme-api", "scope": "organization", "customer": "c-1", "values": {"apiKey": "k"}}),
        )
        .await;
    organizations.assert_status(StatusCode::CREATED);

    for (body, fields) in [
        (json!({}), vec!["customer"]),
        (json!({"customer": "c#1"}), vec!["customer"]),
        (json!({"customer": "c-1", "definitions": ["acme-api", "nope"]}), vec!["definitions[1]"]),
        (json!({"customer": "c-1", "connection_id": other_customers.body["id"]}), vec!["connection_id"]),
        (json!({"customer": "c-1", "connection_id": organizations.body["id"]}), vec!["connection_id"]),
        (json!({"customer": "c-1", "parent_origin": "https://app.example.com/path"}), vec!["parent_origin"]),
        (json!({"customer": "c-1", "parent_origin": "http://app.example.com"}), vec!["parent_origin"]),
        (
            json!({"customer": "c-1", "redirects": {"success_url": "http://evil.example/"}}),
            vec!["redirects.success_url"],
        ),
        (
            json!({"customer": "c-1", "instance": {"id": "i#1", "name": "n".repeat(201)}}),
            vec!["instance.id", "instance.name"],
        ),
        (json!({"customer": "c-1", "surprise": true}), vec!["surprise"]),
    ] {
        let refused = create_session(&app, &org, &body).await;
        refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.error_fields(), fields, "{body}: {}", refused.text);
    }
    let ok = create_session(
        &app,
        &org,
        &json!({"customer": "c-1", "definitions": ["acme-api"], "instance": {"id": "i-1", "name": "Main"},
            "integration": {"id": "int-1", "name": "Sync"}, "config_variable": {"key": "acme", "name": "Acme"},
            "redirects": {"success_url": "https://app.example.com/done"}, "parent_origin": "http://localhost:3000"}),
    )
    .await;
    ok.assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn customers_cannot_create_sessions_and_organizations_learn_nothing_of_each_other() {
    let (app, org) = setup().await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    create_session(&app, &customer, &json!({"customer": "c-1"})).await.assert_problem(StatusCode::FORBIDDEN);
    create_session(&app, "not-a-token", &json!({"customer": "c-1"})).await.assert_problem(StatusCode::UNAUTHORIZED);

    let theirs = app
        .create_connection(&org, &json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "k"}}))
        .await;
    theirs.assert_status(StatusCode::CREATED);
    let umbrella = app.token("umbrella", None, &[]).await;
    // Another organization naming acme's definition and connection: as if neither existed.
    let named = create_session(
        &app,
        &umbrella,
        &json!({"customer": "c-1", "definitions": ["acme-api"], "connection_id": theirs.body["id"]}),
    )
    .await;
    let unknown = create_session(
        &app,
        &umbrella,
        &json!({"customer": "c-1", "definitions": ["acme-api"],
            "connection_id": latchkey::domain::ConnectionId::generate().as_str()}),
    )
    .await;
    named.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(named.error_fields(), ["connection_id", "definitions[0]"]);
    assert_eq!(named.body["errors"], unknown.body["errors"], "an existing connection of another org reads as unknown");
}

#[tokio::test]
async fn an_idempotency_key_gives_the_same_link_again_and_stores_it_sealed() {
    let (app, org) = setup().await;
    let k = format!("session-{}", random_hex());
    let post = |body: Value, key: String| {
        let app = &app;
        let org = &org;
        async move {
            let res = app
                .client
                .post(app.url("/v1/connect/sessions"))
                .bearer_auth(org)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let (status, replayed) = (res.status(), res.headers().get("idempotent-replayed").cloned());
            (status, replayed, res.text().await.unwrap())
        }
    };
    let body = json!({"customer": "c-1", "definitions": ["acme-api"]});
    let (status, replayed, first) = post(body.clone(), k.clone()).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, None), "{first}");
    let (status, replayed, again) = post(body.clone(), k.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed.as_ref().map(|v| v.to_str().unwrap()), Some("true"));
    assert_eq!(again, first, "the same link, byte for byte");
    let (status, _, reused) = post(json!({"customer": "c-2"}), k.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{reused}");
    assert!(reused.contains("idempotency-key-reused"), "{reused}");
    let (status, _, customer_try) = post(body.clone(), format!("other-{}", random_hex())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(customer_try, first, "another key, another session");

    let url = serde_json::from_str::<Value>(&first).unwrap()["url"].as_str().unwrap().to_owned();
    let (id, secret) = link_parts(&url);
    let stored = app.stored_data().await;
    assert!(stored.iter().any(|(_, bytes)| contains_bytes(bytes, id.as_bytes())), "the search sees stored data");
    for (place, bytes) in &stored {
        assert!(!contains_bytes(bytes, secret.as_bytes()), "the link secret is in clear in {place}");
    }
    // The replayed link is the one session: it still works once.
    let client = no_redirects();
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

/// The service in process on the embedded backend, on a clock the test moves.
fn service_on(clock: Arc<ShiftedClock>) -> (Components, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = ServiceOptions { public_url: Some(PUBLIC_URL.to_owned()), ..ServiceOptions::default() };
    let app = Components::embedded_with_clock(dir.path(), options, clock).unwrap();
    (app, dir)
}

fn org() -> Principal {
    Principal::organization(OrgId::parse(ORG).unwrap())
}

/// A session for `body`, opened: the session and its browser secret.
async fn opened(app: &Components, body: Value) -> (ConnectSession, secrecy::SecretString) {
    let link = app.service.create_connect_session(&org(), &body, Some(PUBLIC_URL)).await.unwrap();
    let param = support::oauth::query_param(&link.url, "session").unwrap();
    app.service.open_connect_link(&param).await.unwrap()
}

#[tokio::test]
async fn links_and_sessions_expire_after_thirty_minutes() {
    let clock = Arc::new(ShiftedClock::default());
    let (app, _dir) = service_on(clock.clone());
    app.service.put_definition(&org(), "acme-api", &api_key_definition()).await.unwrap();
    let body = json!({"customer": "c-1"});
    let unused = app.service.create_connect_session(&org(), &body, Some(PUBLIC_URL)).await.unwrap();
    let (session, browser) = opened(&app, body.clone()).await;
    assert!(app.service.connect_session(&session.id, &browser).await.is_ok());
    let wrong = latchkey::domain::connect::new_secret();
    assert!(matches!(app.service.connect_session(&session.id, &wrong).await, Err(ServiceError::NotFound)));
    let (id, secret) = link_parts(&unused.url);
    for bad in [format!("{id}.{}", random_hex()), format!("{id}x.{secret}"), String::new(), id.clone()] {
        assert!(matches!(app.service.open_connect_link(&bad).await, Err(ServiceError::NotFound)), "{bad}");
    }

    clock.advance(Duration::from_secs(29 * 60));
    assert!(app.service.connect_session(&session.id, &browser).await.is_ok(), "29 minutes on");
    clock.advance(Duration::from_secs(61));
    assert!(matches!(app.service.connect_session(&session.id, &browser).await, Err(ServiceError::NotFound)));
    let late = app.service.open_connect_link(&format!("{id}.{secret}")).await;
    assert!(matches!(late, Err(ServiceError::NotFound)), "an expired link is refused");
}

/// An OAuth definition on `mock`, with redirects.
fn oauth_definition(mock: &MockServer) -> Value {
    json!({"label": "Mock", "auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"},
        "clientSecret": {"type": "password", "default": "cs"}},
        "redirects": {"success_url": "https://definition.example/ok", "failure_url": "https://definition.example/ko"}})
}

/// The Lambda samples: `connections-api` answers `create-connect-session.json` with a link on
/// the configured public URL, and the `Idempotency-Key` sample sent twice with the same bytes.
#[tokio::test]
async fn connections_api_serves_the_connect_session_samples() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        ServiceOptions { public_url: Some("https://latchkey.acme.example".into()), ..ServiceOptions::default() };
    let app = Components::embedded(dir.path(), options).unwrap();
    let verifier = latchkey::http::auth::Verifier::hs256(&secrecy::SecretString::from(
        "latchkey-events-dev-secret-not-for-production",
    ))
    .unwrap();
    let router = latchkey::http::router_for(latchkey::http::Surface::ConnectionsApi, app.router_state(verifier));
    let send = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/connections-api").join(name);
        let req = lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let router = router.clone();
        async move {
            let res = router.oneshot(req).await.unwrap();
            let replayed = res.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap().to_owned());
            let status = res.status().as_u16();
            (status, replayed, res.into_body().collect().await.unwrap().to_bytes())
        }
    };
    assert_eq!(send("put-definition.json").await.0, 201);
    let (status, _, body) = send("create-connect-session.json").await;
    assert_eq!(status, 201, "{body:?}");
    let link: Value = serde_json::from_slice(&body).unwrap();
    assert!(link["url"].as_str().unwrap().starts_with("https://latchkey.acme.example/connect?session="), "{link}");

    let (status, replayed, first) = send("create-connect-session-idempotent.json").await;
    assert_eq!((status, replayed), (201, None));
    let (status, replayed, again) = send("create-connect-session-idempotent.json").await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);
    assert_ne!(first, body, "another key, another session");
}

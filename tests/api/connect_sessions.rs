//! Connect sessions (SPEC section 9): `POST /v1/connect/sessions` makes a one-time link for one
//! customer, valid 30 minutes, stored hashed; the first GET trades it for the page's cookie and
//! a second is refused; the request is checked field by field and never tells one
//! organization or customer about another's; `Idempotency-Key` gives the same link again
//! (stored sealed); an OAuth authorization started from the page needs the page's cookie at the
//! callback, and ends at the session's redirect with its context, or back on the page. The
//! page's own use cases (what it shows, its forms) act as the customer. Over HTTP through the
//! harness (both transports; `tests/run.sh` runs the module on the aws backend too), the service
//! in process for the clock and the callback, and the Lambda samples.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use latchkey::config::Components;
use latchkey::domain::{ConnectSession, OrgId, Principal};
use latchkey::service::{CallbackOutcome, ServiceError, ServiceOptions};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use support::oauth::MockServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt;

use crate::harness::{Reply, ShiftedClock, TestApp, contains_bytes, random_hex};

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

fn oauth_definition(mock: &MockServer) -> Value {
    json!({"label": "Mock", "auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"},
        "clientSecret": {"type": "password", "default": "cs"}},
        "redirects": {"success_url": "https://definition.example/ok", "failure_url": "https://definition.example/ko"}})
}

fn params_of(url: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(url).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

#[tokio::test]
async fn an_authorization_from_the_page_needs_the_pages_cookie_at_the_callback() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    let mock = MockServer::start(json!({})).await;
    app.service.put_definition(&org(), "mock", &oauth_definition(&mock)).await.unwrap();
    let mut events = app.events.as_ref().unwrap().subscribe();
    let (session, browser) = opened(
        &app,
        json!({"customer": "c-1", "definitions": ["mock"], "instance": {"id": "inst-1", "name": "Main"},
            "integration": {"id": "int-1", "name": "Sync"}, "config_variable": {"key": "acme", "name": "Acme account"},
            "redirects": {"success_url": "https://app.example.com/connected?tab=1"}}),
    )
    .await;
    let started = app.service.connect_authorize(&session, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    let back = mock.authorize(&started.authorize_url).await;
    let cookie_name = session.cookie_name();

    // From another browser (no cookie, or another session's): refused, nothing changes.
    let refused = app.service.callback(&params_of(&back), &BTreeMap::from([(cookie_name.clone(), random_hex())])).await;
    let CallbackOutcome::Page { status: 400, title, message } = refused else { panic!("{refused:?}") };
    assert_eq!(title, "Authorization refused");
    assert!(message.contains("another browser"), "{message}");
    assert_eq!(mock.stats().await["token_requests"]["authorization_code"], 0, "no code was exchanged");
    let page = app.service.connect_page(&session).await.unwrap();
    let pending = &page.definitions[0].connections;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status, latchkey::domain::Status::Pending);
    let id = pending[0].id.clone();

    // The same browser: reconnects that connection, back to the session's redirect with its
    // context.
    let started = app.service.connect_authorize(&session, "mock", Some(&id), Some(PUBLIC_URL)).await.unwrap();
    let back = mock.authorize(&started.authorize_url).await;
    let cookies = BTreeMap::from([(cookie_name, browser.expose_secret().to_owned())]);
    let done = app.service.callback(&params_of(&back), &cookies).await;
    let CallbackOutcome::Redirect(to) = done else { panic!("{done:?}") };
    assert!(to.starts_with("https://app.example.com/connected?tab=1&"), "{to}");
    let got = params_of(&to);
    for (k, v) in [
        ("connection_id", id.as_str()),
        ("definition", "mock"),
        ("customer", "c-1"),
        ("instance_id", "inst-1"),
        ("instance_name", "Main"),
        ("integration_id", "int-1"),
        ("integration_name", "Sync"),
        ("config_variable_key", "acme"),
        ("config_variable_name", "Acme account"),
    ] {
        assert_eq!(got.get(k).map(String::as_str), Some(v), "{k} in {to}");
    }
    let view = app.service.get_connection(&org(), &id).await.unwrap();
    assert_eq!(view.status, latchkey::domain::Status::Configured);
    assert_eq!(view.instance_id.as_ref().map(|i| i.as_str()), Some("inst-1"), "scope instance for the session's");

    // Every event about it carries the context, flat.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(serde_json::to_value(&e).unwrap());
    }
    assert!(seen.len() >= 2, "created and authorized: {seen:?}");
    for e in &seen {
        assert_eq!(e["instance_id"], "inst-1", "{e}");
        assert_eq!(e["integration_name"], "Sync", "{e}");
        assert_eq!(e["config_variable_key"], "acme", "{e}");
    }
}

#[tokio::test]
async fn without_a_redirect_the_callback_returns_to_the_page() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    let mock = MockServer::start(json!({})).await;
    let mut def = oauth_definition(&mock);
    def.as_object_mut().unwrap().remove("redirects");
    app.service.put_definition(&org(), "mock", &def).await.unwrap();
    let (session, browser) = opened(&app, json!({"customer": "c-1"})).await;
    let cookies = BTreeMap::from([(session.cookie_name(), browser.expose_secret().to_owned())]);

    let unconfigured = app.service.connect_authorize(&session, "mock", None, None).await;
    assert!(matches!(unconfigured, Err(ServiceError::Unexpected(_))), "{unconfigured:?}");
    assert!(app.service.connect_page(&session).await.unwrap().definitions[0].connections.is_empty(), "nothing created");
    let started = app.service.connect_authorize(&session, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    let back = mock.authorize(&started.authorize_url).await;
    let CallbackOutcome::Redirect(to) = app.service.callback(&params_of(&back), &cookies).await else { panic!() };
    let id = &app.service.connect_page(&session).await.unwrap().definitions[0].connections[0].id;
    assert_eq!(to, format!("{PUBLIC_URL}/connect/{}?connected={id}", session.id));

    let started = app.service.connect_authorize(&session, "mock", Some(id), Some(PUBLIC_URL)).await.unwrap();
    let denied = format!(
        "{}&error=access_denied&error_description=The+user+said+no",
        mock.authorize(&started.authorize_url).await
    );
    let mut params = params_of(&denied);
    params.remove("code");
    let CallbackOutcome::Redirect(to) = app.service.callback(&params, &cookies).await else { panic!() };
    assert_eq!(
        to,
        format!("{PUBLIC_URL}/connect/{}?error=access_denied&error_description=The+user+said+no", session.id)
    );
}

#[tokio::test]
async fn the_page_shows_what_the_customer_may_see_and_acts_as_the_customer() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    app.service.put_definition(&org(), "acme-api", &api_key_definition()).await.unwrap();
    let mut other = api_key_definition();
    other["label"] = json!("Other");
    app.service.put_definition(&org(), "other", &other).await.unwrap();
    let create = |customer: &str, scope: &str| json!({"definition": "acme-api", "customer": customer, "scope": scope, "values": {"apiKey": "sk_live_planted"}});
    let managed = app.service.create_connection(&org(), &create("c-1", "organization")).await.unwrap();
    let theirs = app.service.create_connection(&org(), &create("c-2", "customer")).await.unwrap();

    let (session, _) = opened(
        &app,
        json!({"customer": "c-1", "definitions": ["acme-api"], "instance": {"id": "inst-7"}, "integration": {"name": "Sync"}}),
    )
    .await;
    let page = app.service.connect_page(&session).await.unwrap();
    assert_eq!(page.definitions.len(), 1, "only the session's definitions");
    let def = &page.definitions[0];
    assert_eq!((def.label.as_str(), def.description.as_deref(), def.oauth), ("Acme", Some("Acme's REST API"), false));
    let inputs: Vec<&str> = def.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["apiKey", "region"], "never organization or embedded inputs");
    assert!(def.inputs[0].default.is_none() && def.inputs[0].required);
    assert_eq!(def.inputs[1].default, Some(json!("eu")));
    assert_eq!(def.connections.len(), 1, "the customer's own: {:?}", def.connections);
    assert_eq!((def.connections[0].id.as_str(), def.connections[0].editable), (managed.id.as_str(), false));
    let shown = serde_json::to_string(&page).unwrap();
    for hidden in ["sk_live_planted", "t-secret-ish", theirs.id.as_str(), "\"set\""] {
        assert!(!shown.contains(hidden), "{hidden} in {shown}");
    }

    // A form: validation errors name values.<input>; then a new connection with the context.
    let values = |v: Value| -> Map<String, Value> { v.as_object().unwrap().clone() };
    let bad = app.service.connect_with_values(&session, "acme-api", None, values(json!({"region": "us"}))).await;
    let Err(ServiceError::Invalid(errors)) = bad else { panic!("{bad:?}") };
    assert_eq!(errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["values.apiKey"]);
    let forbidden = app
        .service
        .connect_with_values(&session, "acme-api", None, values(json!({"apiKey": "k", "tenant": "x"})))
        .await;
    assert!(matches!(forbidden, Err(ServiceError::Invalid(_))), "{forbidden:?}");
    let made =
        app.service.connect_with_values(&session, "acme-api", None, values(json!({"apiKey": "k1"}))).await.unwrap();
    assert_eq!(made.customer.as_ref().map(|c| c.as_str()), Some("c-1"));
    assert_eq!(made.instance_id.as_ref().map(|i| i.as_str()), Some("inst-7"));
    let context = serde_json::to_value(&made.connect_context).unwrap();
    assert_eq!(context, json!({"instance_id": "inst-7", "integration_name": "Sync"}));

    // Outside the session: another definition, another customer's connection, the managed one.
    for (definition, id) in [("other", None), ("acme-api", Some(theirs.id.as_str()))] {
        let refused = app.service.connect_with_values(&session, definition, id, values(json!({"apiKey": "k"}))).await;
        assert!(matches!(refused, Err(ServiceError::NotFound)), "{definition} {id:?}: {refused:?}");
    }
    let refused = app.service.connect_disconnect(&session, theirs.id.as_str()).await;
    assert!(matches!(refused, Err(ServiceError::NotFound)), "{refused:?}");
    let refused = app.service.connect_disconnect(&session, managed.id.as_str()).await;
    assert!(matches!(refused, Err(ServiceError::Forbidden(_))), "{refused:?}");
    assert!(matches!(
        app.service.connect_authorize(&session, "acme-api", None, Some(PUBLIC_URL)).await,
        Err(ServiceError::Conflict(_))
    ));

    // Disconnect, then connect it again in place: same id, configured.
    let cut = app.service.connect_disconnect(&session, made.id.as_str()).await.unwrap();
    assert_eq!(cut.status, latchkey::domain::Status::Disconnected);
    let back = app
        .service
        .connect_with_values(&session, "acme-api", Some(made.id.as_str()), values(json!({"apiKey": "k2"})))
        .await
        .unwrap();
    assert_eq!((back.id.as_str(), back.status), (made.id.as_str(), latchkey::domain::Status::Configured));
    let page = app.service.connect_page(&session).await.unwrap();
    let shown = page.definitions[0].connections.iter().find(|c| c.id == made.id.as_str()).unwrap();
    assert!(!shown.logs.is_empty() && shown.logs.len() <= 10, "{:?}", shown.logs);
    assert!(shown.editable);
}

#[tokio::test]
async fn a_red_connection_is_reconnected_in_place_from_a_session_naming_it() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    app.service.put_definition(&org(), "acme-api", &api_key_definition()).await.unwrap();
    let body = json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "old"}});
    let red = app.service.create_connection(&org(), &body).await.unwrap();
    let other = app.service.create_connection(&org(), &body).await.unwrap();
    let report = latchkey::service::LookupRequest {
        connection_id: Some(red.id.to_string()),
        action: Some("report_error".into()),
        message: Some("Acme answered 401".into()),
        ..Default::default()
    };
    app.service.report_error(&OrgId::parse(ORG).unwrap(), None, &report).await.unwrap();
    assert_eq!(
        app.service.get_connection(&org(), red.id.as_str()).await.unwrap().status,
        latchkey::domain::Status::Error
    );

    let (session, _) = opened(&app, json!({"customer": "c-1", "connection_id": red.id.as_str()})).await;
    let page = app.service.connect_page(&session).await.unwrap();
    let ids: Vec<&str> = page.definitions.iter().flat_map(|d| d.connections.iter().map(|c| c.id.as_str())).collect();
    assert_eq!(ids, [red.id.as_str()], "only the session's connection");
    assert_eq!(page.definitions[0].connections[0].error.as_ref().unwrap().message, "Acme answered 401");

    let values: Map<String, Value> = json!({"apiKey": "new"}).as_object().unwrap().clone();
    let refused = app.service.connect_with_values(&session, "acme-api", Some(other.id.as_str()), values.clone()).await;
    assert!(matches!(refused, Err(ServiceError::NotFound)), "another connection than the session's");
    let fixed = app.service.connect_with_values(&session, "acme-api", None, values).await.unwrap();
    assert_eq!((fixed.id.as_str(), fixed.status), (red.id.as_str(), latchkey::domain::Status::Configured));
    assert!(fixed.error.is_none());
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

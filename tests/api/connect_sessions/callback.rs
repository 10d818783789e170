//! An OAuth authorization started from the page: the callback needs the page's cookie (and a
//! refused callback spends the state), returns to the session's redirect with its context, or
//! to the page, or (the session expired meanwhile) to a page of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use latchkey::service::{CallbackOutcome, ServiceError};
use secrecy::ExposeSecret;
use serde_json::json;
use support::oauth::MockServer;

use super::{PUBLIC_URL, oauth_definition, opened, org, service_on};
use crate::harness::{ShiftedClock, random_hex};

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
    let cookie_name = session.cookie_name();
    let cookies = BTreeMap::from([(cookie_name.clone(), browser.expose_secret().to_owned())]);
    // Another session of the same customer, opened in another browser.
    let (other, other_browser) = opened(&app, json!({"customer": "c-1", "definitions": ["mock"]})).await;
    let other_secret = other_browser.expose_secret().to_owned();

    // From another browser: no cookie at all, only the other session's, the other session's
    // value under this session's name, a made-up value. Each is refused and nothing changes;
    // the refused state is spent, so the page's own browser cannot use it afterwards either
    // (whoever forwarded the link gains nothing, and the customer starts again from the page).
    for (what, jar) in [
        ("no cookie", BTreeMap::new()),
        ("the other session's cookie", BTreeMap::from([(other.cookie_name(), other_secret.clone())])),
        ("the other session's value", BTreeMap::from([(cookie_name.clone(), other_secret.clone())])),
        ("a made-up value", BTreeMap::from([(cookie_name.clone(), random_hex())])),
    ] {
        let started = app.service.connect_authorize(&session, "mock", None, Some(PUBLIC_URL)).await.unwrap();
        let back = mock.authorize(&started.authorize_url).await;
        let refused = app.service.callback(&params_of(&back), &jar).await;
        let CallbackOutcome::Page { status: 400, title, message } = refused else { panic!("{what}: {refused:?}") };
        assert_eq!(title, "Authorization refused", "{what}");
        assert!(message.contains("another browser"), "{what}: {message}");
        let late = app.service.callback(&params_of(&back), &cookies).await;
        let CallbackOutcome::Page { status: 400, title, message } = late else { panic!("{what}: {late:?}") };
        assert_eq!(title, "Authorization failed", "{what}");
        assert!(message.contains("already used"), "{what}: {message}");
    }
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
async fn after_the_session_expired_the_callback_answers_a_page_of_its_own() {
    let clock = Arc::new(ShiftedClock::default());
    let (app, _dir) = service_on(clock.clone());
    let mock = MockServer::start(json!({})).await;
    let mut def = oauth_definition(&mock);
    def.as_object_mut().unwrap().remove("redirects");
    app.service.put_definition(&org(), "mock", &def).await.unwrap();
    let (session, browser) = opened(&app, json!({"customer": "c-1"})).await;
    let cookies = BTreeMap::from([(session.cookie_name(), browser.expose_secret().to_owned())]);

    clock.advance(std::time::Duration::from_secs(25 * 60));
    let denied = app.service.connect_authorize(&session, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    let granted = app.service.connect_authorize(&session, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    let denied = mock.authorize(&denied.authorize_url).await;
    let granted = mock.authorize(&granted.authorize_url).await;
    clock.advance(std::time::Duration::from_secs(6 * 60));

    let mut params = params_of(&format!("{denied}&error=access_denied"));
    params.remove("code");
    let failed = app.service.callback(&params, &cookies).await;
    let CallbackOutcome::Page { status: 400, title: "Authorization failed", message } = failed else {
        panic!("{failed:?}")
    };
    assert!(message.starts_with("access_denied"), "{message}");
    let done = app.service.callback(&params_of(&granted), &cookies).await;
    let CallbackOutcome::Page { status: 200, title: "Authorization completed successfully", .. } = done else {
        panic!("not a redirect to the expired session's page: {done:?}")
    };
    let page_gone = app.service.connect_session(&session.id, &browser).await;
    assert!(matches!(page_gone, Err(ServiceError::NotFound)), "{page_gone:?}");
}

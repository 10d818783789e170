//! The page's use cases in process, as the session's customer: what it shows, its forms, the
//! Connect button (reusing a pending connection), the session's context written onto the
//! connections it changes, and everything outside the session refused with nothing changed.

use std::sync::Arc;

use latchkey::domain::OrgId;
use latchkey::service::ServiceError;
use serde_json::{Map, Value, json};

use super::{ORG, PUBLIC_URL, api_key_definition, oauth_definition, opened, org, service_on};
use crate::harness::ShiftedClock;

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

/// The events published since `events` subscribed, with their kind.
fn drain(
    events: &mut tokio::sync::broadcast::Receiver<latchkey::domain::Event>,
) -> Vec<(latchkey::domain::EventType, Value)> {
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.kind, serde_json::to_value(&e).unwrap()));
    }
    seen
}

/// Connect pressed again and again (each authorization abandoned or denied) reuses the
/// customer's pending connection, one per instance the session names; one completed, the next
/// Connect starts a new one.
#[tokio::test]
async fn connect_reuses_the_customers_pending_connection_of_the_sessions_instance() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    let mock = support::oauth::MockServer::start(json!({})).await;
    app.service.put_definition(&org(), "mock", &oauth_definition(&mock)).await.unwrap();
    let pending = |app: &latchkey::config::Components| {
        let service = app.service.clone();
        async move {
            let all = service.list_connections(&org(), &Default::default()).await.unwrap().items;
            let mut ids: Vec<(String, Option<String>)> = all
                .iter()
                .filter(|c| c.status == latchkey::domain::Status::Pending)
                .map(|c| (c.id.to_string(), c.instance_id.as_ref().map(|i| i.to_string())))
                .collect();
            ids.sort();
            ids
        }
    };
    let (customer_wide, _) = opened(&app, json!({"customer": "c-1", "definitions": ["mock"]})).await;
    let (instance, browser) =
        opened(&app, json!({"customer": "c-1", "definitions": ["mock"], "instance": {"id": "inst-1"}})).await;
    for s in [&customer_wide, &instance, &customer_wide, &instance, &instance] {
        app.service.connect_authorize(s, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    }
    let found = pending(&app).await;
    assert_eq!(found.len(), 2, "one per scope: {found:?}");
    assert_eq!(found.iter().filter(|(_, i)| i.as_deref() == Some("inst-1")).count(), 1, "{found:?}");

    // Completed, that one is no longer pending: the next Connect starts another.
    let started = app.service.connect_authorize(&instance, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    let back = mock.authorize(&started.authorize_url).await;
    let params =
        reqwest::Url::parse(&back).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let cookies = [(instance.cookie_name(), secrecy::ExposeSecret::expose_secret(&browser).to_owned())].into();
    app.service.callback(&params, &cookies).await;
    assert_eq!(pending(&app).await.len(), 1, "the instance's is authorized");
    app.service.connect_authorize(&instance, "mock", None, Some(PUBLIC_URL)).await.unwrap();
    assert_eq!(pending(&app).await.len(), 2, "a new pending connection for the instance");
}

/// A connection the page did not create (made over the API, without a context), reconnected or
/// updated through a session that names a context: the context is written onto it, and the
/// events about it from then on carry it.
#[tokio::test]
async fn a_reconnect_or_update_through_the_page_carries_the_sessions_context() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    let mock = support::oauth::MockServer::start(json!({})).await;
    let mut oauth = oauth_definition(&mock);
    oauth.as_object_mut().unwrap().remove("redirects");
    app.service.put_definition(&org(), "mock", &oauth).await.unwrap();
    app.service.put_definition(&org(), "acme-api", &api_key_definition()).await.unwrap();
    let keyed = app
        .service
        .create_connection(&org(), &json!({"definition": "acme-api", "customer": "c-1", "values": {"apiKey": "old"}}))
        .await
        .unwrap();
    let authorized =
        app.service.create_connection(&org(), &json!({"definition": "mock", "customer": "c-1"})).await.unwrap();
    assert!(keyed.connect_context.is_none() && authorized.connect_context.is_none());
    let context =
        json!({"integration": {"id": "int-1", "name": "Sync"}, "config_variable": {"key": "acme", "name": "Acme"}});
    let mut body = json!({"customer": "c-1", "definitions": ["mock", "acme-api"]});
    body.as_object_mut().unwrap().extend(context.as_object().unwrap().clone());
    let (session, browser) = opened(&app, body).await;
    let mut events = app.events.as_ref().unwrap().subscribe();

    let values: Map<String, Value> = json!({"apiKey": "new"}).as_object().unwrap().clone();
    let updated = app.service.connect_with_values(&session, "acme-api", Some(keyed.id.as_str()), values).await.unwrap();
    assert_eq!(updated.id, keyed.id);
    let started =
        app.service.connect_authorize(&session, "mock", Some(authorized.id.as_str()), Some(PUBLIC_URL)).await.unwrap();
    let back = mock.authorize(&started.authorize_url).await;
    let params =
        reqwest::Url::parse(&back).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let cookies = [(session.cookie_name(), secrecy::ExposeSecret::expose_secret(&browser).to_owned())].into();
    app.service.callback(&params, &cookies).await;

    let seen = drain(&mut events);
    use latchkey::domain::EventType::{ConnectionAuthorized, ConnectionUpdated};
    for (kind, id) in [(ConnectionUpdated, &keyed.id), (ConnectionAuthorized, &authorized.id)] {
        let event = seen
            .iter()
            .find(|(k, e)| k.detail_type() == kind.detail_type() && e["connection_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {kind:?} event about {id}: {seen:?}"))
            .1
            .clone();
        for (k, v) in [
            ("integration_id", "int-1"),
            ("integration_name", "Sync"),
            ("config_variable_key", "acme"),
            ("config_variable_name", "Acme"),
        ] {
            assert_eq!(event[k], v, "{k} in {event}");
        }
    }
    for id in [&keyed.id, &authorized.id] {
        let read = app.service.get_connection(&org(), id.as_str()).await.unwrap();
        let got = serde_json::to_value(&read.connect_context).unwrap();
        assert_eq!(got["integration_name"], "Sync", "{got}");
    }
}

/// Another customer's real connection, or a definition (or a connection of one) outside the
/// session's list: the Connect button, the form and Disconnect all refuse it as not found, and
/// nothing changes.
#[tokio::test]
async fn connections_and_definitions_outside_the_session_are_refused_and_left_alone() {
    let (app, _dir) = service_on(Arc::new(ShiftedClock::default()));
    let mock = support::oauth::MockServer::start(json!({})).await;
    app.service.put_definition(&org(), "mock", &oauth_definition(&mock)).await.unwrap();
    app.service.put_definition(&org(), "acme-api", &api_key_definition()).await.unwrap();
    let create = |customer: &str, definition: &str| {
        let mut body = json!({"definition": definition, "customer": customer});
        if definition == "acme-api" {
            body["values"] = json!({"apiKey": "k"});
        }
        body
    };
    let mut made = Vec::new();
    for (customer, definition) in [("c-2", "mock"), ("c-2", "acme-api"), ("c-1", "mock"), ("c-1", "acme-api")] {
        made.push(app.service.create_connection(&org(), &create(customer, definition)).await.unwrap());
    }
    let [their_oauth, their_keyed, my_oauth, my_keyed] = [&made[0], &made[1], &made[2], &made[3]];
    let snapshot = |app: &latchkey::config::Components| {
        let service = app.service.clone();
        async move {
            let all = service.list_connections(&org(), &Default::default()).await.unwrap().items;
            all.iter().map(|c| (c.id.to_string(), c.version, c.status)).collect::<Vec<_>>()
        }
    };
    let before = snapshot(&app).await;
    let values = || json!({"apiKey": "k2"}).as_object().unwrap().clone();

    let (oauth_only, _) = opened(&app, json!({"customer": "c-1", "definitions": ["mock"]})).await;
    let (keyed_only, _) = opened(&app, json!({"customer": "c-1", "definitions": ["acme-api"]})).await;
    let not_found = |what: &str, r: Result<String, ServiceError>| {
        assert!(matches!(r, Err(ServiceError::NotFound)), "{what}: {r:?}");
    };
    let s = &app.service;
    let url = |r: Result<latchkey::service::connect::PageAuthorization, ServiceError>| r.map(|a| a.authorize_url);
    let id = |r: Result<latchkey::service::ConnectionView, ServiceError>| r.map(|v| v.id.to_string());
    let (theirs, mine) = (Some(their_oauth.id.as_str()), Some(my_oauth.id.as_str()));
    not_found(
        "authorize another customer's",
        url(s.connect_authorize(&oauth_only, "mock", theirs, Some(PUBLIC_URL)).await),
    );
    not_found(
        "authorize a definition outside the list",
        url(s.connect_authorize(&keyed_only, "mock", None, Some(PUBLIC_URL)).await),
    );
    not_found(
        "authorize own connection of a definition outside",
        url(s.connect_authorize(&keyed_only, "mock", mine, Some(PUBLIC_URL)).await),
    );
    let (theirs, mine) = (Some(their_keyed.id.as_str()), Some(my_keyed.id.as_str()));
    not_found(
        "values on another customer's",
        id(s.connect_with_values(&keyed_only, "acme-api", theirs, values()).await),
    );
    not_found(
        "values for a definition outside the list",
        id(s.connect_with_values(&oauth_only, "acme-api", None, values()).await),
    );
    not_found(
        "values on own connection of a definition outside",
        id(s.connect_with_values(&oauth_only, "acme-api", mine, values()).await),
    );
    not_found("disconnect another customer's", id(s.connect_disconnect(&keyed_only, their_keyed.id.as_str()).await));
    not_found(
        "disconnect another customer's OAuth",
        id(s.connect_disconnect(&oauth_only, their_oauth.id.as_str()).await),
    );
    not_found(
        "disconnect own connection of a definition outside",
        id(s.connect_disconnect(&oauth_only, my_keyed.id.as_str()).await),
    );

    assert_eq!(snapshot(&app).await, before, "nothing changed, nothing created");
    assert_eq!(mock.stats().await["authorize_requests"], 0);
}

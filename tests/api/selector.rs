//! Lookup by selector (SPEC section 10): an execution names `{"definition", "customer",
//! "instance_id"?, "user"?}` instead of a connection id, over HTTP (`POST /v1/token`) and in the
//! `token-lookup` Lambda payload, on the backend `LATCHKEY_TEST_BACKEND` names. The order: the
//! instance's connection, the user's, the customer's reusable one, the organization's for that
//! customer; the first that exists answers, with its problem if unusable.

use latchkey::config::Components;
use latchkey::http::auth::Verifier;
use latchkey::service::ServiceOptions;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, Reply, TestApp, random_secret};

const ORG: &str = "acme";
const DEFINITION: &str = "acme-api";

fn definition() -> Value {
    json!({"label": "Acme API", "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "endpoint": {"type": "url", "default": "https://api.acme.com"}}})
}

/// A server with the `acme-api` definition in `ORG` (and in `umbrella`, for isolation), and
/// the secret its tokens are signed with.
async fn spawn() -> (TestApp, String) {
    let secret = random_secret();
    let app = TestApp::spawn_with(&Backend::fresh().await, &secret).await;
    for org in [ORG, "umbrella"] {
        let token = app.token(org, None, &[]).await;
        app.put_definition(&token, DEFINITION, &definition()).await.assert_status(StatusCode::CREATED);
    }
    (app, secret)
}

/// Creates a connection of `acme-api` in `org` whose API key is `key`; `extra` adds members
/// (`scope`, `customer`, `instance_id`, `user`). Returns its id.
async fn create(app: &TestApp, org: &str, key: &str, extra: Value) -> String {
    let token = app.token(org, None, &[]).await;
    let mut body = json!({"definition": DEFINITION, "values": {"apiKey": key}});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    let reply = app.create_connection(&token, &body).await;
    reply.assert_status(StatusCode::CREATED);
    reply.body["id"].as_str().expect("an id").to_owned()
}

/// `POST /v1/token` with `body`, as `token`.
async fn select(app: &TestApp, token: &str, body: &Value) -> Reply {
    app.request(Method::POST, "/v1/token", Some(token), Some(body)).await
}

/// The API key the selector's lookup answers with (asserting success).
async fn selected_key(app: &TestApp, token: &str, body: &Value) -> String {
    let reply = select(app, token, body).await;
    reply.assert_status(StatusCode::OK);
    reply.body["fields"]["apiKey"].as_str().expect("an apiKey").to_owned()
}

async fn delete(app: &TestApp, id: &str) {
    let org = app.token(ORG, None, &[]).await;
    app.delete_connection(&org, id).await.assert_status(StatusCode::NO_CONTENT);
}

/// The four kinds of connection of customer `c-1`, their API keys naming them; the ids in
/// resolution order.
async fn four_kinds(app: &TestApp) -> [String; 4] {
    // Created in the reverse of the order they win in: creation order never decides between
    // tiers.
    let organization = create(app, ORG, "key-organization", json!({"scope": "organization", "customer": "c-1"})).await;
    let customer = create(app, ORG, "key-customer", json!({"scope": "customer", "customer": "c-1"})).await;
    let user = create(app, ORG, "key-user", json!({"scope": "customer", "customer": "c-1", "user": "u-1"})).await;
    let instance = create(app, ORG, "key-instance", json!({"customer": "c-1", "instance_id": "inst-9"})).await;
    [instance, user, customer, organization]
}

fn full_selector() -> Value {
    json!({"definition": DEFINITION, "customer": "c-1", "instance_id": "inst-9", "user": "u-1"})
}

#[tokio::test]
async fn the_instance_then_the_user_then_the_customer_then_the_organization_connection_answers() {
    let (app, _) = spawn().await;
    let ids = four_kinds(&app).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    for (i, expected) in ["key-instance", "key-user", "key-customer", "key-organization"].into_iter().enumerate() {
        let reply = select(&app, &runtime, &full_selector()).await;
        reply.assert_status(StatusCode::OK);
        assert_eq!(reply.body["fields"]["apiKey"], expected, "with the first {i} removed");
        assert_eq!(reply.body["connection_id"], ids[i].as_str());
        assert_eq!(reply.body["definition"], DEFINITION);
        // The answer is a lookup: the connection chosen is now in use.
        assert_eq!(reply.body["status"], "active");
        delete(&app, &ids[i]).await;
    }
    let none = select(&app, &runtime, &full_selector()).await;
    none.assert_problem(StatusCode::NOT_FOUND);
    assert_eq!(none.problem_type(), "urn:latchkey:problem:not-found");
}

#[tokio::test]
async fn without_an_instance_or_a_user_the_reusable_connections_answer() {
    let (app, _) = spawn().await;
    let ids = four_kinds(&app).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let bare = json!({"definition": DEFINITION, "customer": "c-1"});
    // Neither the instance's nor the user's own connection is the customer's reusable one.
    assert_eq!(selected_key(&app, &runtime, &bare).await, "key-customer");
    let other_instance = json!({"definition": DEFINITION, "customer": "c-1", "instance_id": "inst-8"});
    assert_eq!(selected_key(&app, &runtime, &other_instance).await, "key-customer");
    let other_user = json!({"definition": DEFINITION, "customer": "c-1", "user": "u-2"});
    assert_eq!(selected_key(&app, &runtime, &other_user).await, "key-customer");
    delete(&app, &ids[2]).await;
    assert_eq!(selected_key(&app, &runtime, &bare).await, "key-organization");
}

#[tokio::test]
async fn each_user_finds_their_own_connection_and_reads_and_listings_show_it() {
    let (app, _) = spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let first = create(&app, ORG, "key-u1", json!({"customer": "c-1", "user": "u-1"})).await;
    let second = create(&app, ORG, "key-u2", json!({"customer": "c-1", "user": "u-2"})).await;
    // A customer's own token may create its user's connection too.
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let reply = app
        .create_connection(&customer, &json!({"definition": DEFINITION, "user": "u-3", "values": {"apiKey": "key-u3"}}))
        .await;
    reply.assert_status(StatusCode::CREATED);
    assert_eq!(reply.body["user"], "u-3");

    let runtime = app.token(ORG, None, &["runtime"]).await;
    for (user, key) in [("u-1", "key-u1"), ("u-2", "key-u2"), ("u-3", "key-u3")] {
        let selector = json!({"definition": DEFINITION, "customer": "c-1", "user": user});
        assert_eq!(selected_key(&app, &runtime, &selector).await, key);
    }
    // Only users' connections exist: a selector naming no user (or an unknown one) finds none.
    for selector in [
        json!({"definition": DEFINITION, "customer": "c-1"}),
        json!({"definition": DEFINITION, "customer": "c-1", "user": "u-9"}),
    ] {
        select(&app, &runtime, &selector).await.assert_problem(StatusCode::NOT_FOUND);
    }

    let read = app.get_connection(&org, &first).await;
    assert_eq!(read.body["user"], "u-1");
    let listed = app.list_connections(&org, "user=u-2").await;
    listed.assert_status(StatusCode::OK);
    let ids: Vec<_> = listed.body["items"].as_array().unwrap().iter().map(|c| c["id"].clone()).collect();
    assert_eq!(ids, [json!(second)]);
    let listed = app.list_connections(&org, "user=u-1&customer=c-1").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    app.list_connections(&org, "user=a%23b").await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // A user belongs to a customer; a malformed one is refused like any id.
    for (body, field) in [
        (json!({"definition": DEFINITION, "scope": "organization", "user": "u-1", "values": {"apiKey": "k"}}), "user"),
        (json!({"definition": DEFINITION, "customer": "c-1", "user": "u#1", "values": {"apiKey": "k"}}), "user"),
        (json!({"definition": DEFINITION, "customer": "c-1", "user": 7, "values": {"apiKey": "k"}}), "user"),
    ] {
        let reply = app.create_connection(&org, &body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), [field], "{body}");
    }
}

#[tokio::test]
async fn a_broken_first_choice_answers_with_its_problem_and_is_not_replaced() {
    let (app, _) = spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let customer = create(&app, ORG, "key-customer", json!({"customer": "c-1"})).await;
    let instance = create(&app, ORG, "key-instance", json!({"customer": "c-1", "instance_id": "inst-9"})).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let by_instance = json!({"definition": DEFINITION, "customer": "c-1", "instance_id": "inst-9"});

    let cut = app.request(Method::POST, &format!("/v1/connections/{instance}/disconnect"), Some(&org), None).await;
    cut.assert_status(StatusCode::OK);
    let reply = select(&app, &runtime, &by_instance).await;
    reply.assert_problem(StatusCode::CONFLICT);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:connection-disconnected");
    assert!(!reply.text.contains("key-customer"), "the customer's connection is not handed out instead");
    delete(&app, &instance).await;

    // report_error by selector: the connection it resolves to turns red, and then answers red.
    let report = json!({"action": "report_error", "definition": DEFINITION, "customer": "c-1",
                        "instance_id": "inst-9", "message": "Acme answered 401"});
    let reply = select(&app, &runtime, &report).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["connection_id"], customer.as_str());
    assert_eq!(reply.body["status"], "error");
    assert_eq!(app.get_connection(&org, &customer).await.body["error"]["message"], "Acme answered 401");
    let reply =
        select(&app, &runtime, &json!({"definition": DEFINITION, "customer": "c-1", "min_valid_seconds": 60})).await;
    reply.assert_problem(StatusCode::CONFLICT);
    assert_eq!(reply.problem_type(), "urn:latchkey:problem:connection-error");
}

#[tokio::test]
async fn of_two_reusable_connections_the_oldest_answers() {
    let (app, _) = spawn().await;
    let first = create(&app, ORG, "key-first", json!({"customer": "c-1"})).await;
    create(&app, ORG, "key-second", json!({"customer": "c-1"})).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let selector = json!({"definition": DEFINITION, "customer": "c-1"});
    assert_eq!(selected_key(&app, &runtime, &selector).await, "key-first");
    delete(&app, &first).await;
    assert_eq!(selected_key(&app, &runtime, &selector).await, "key-second");
}

#[tokio::test]
async fn a_customer_token_selects_only_its_own_customers_connections() {
    let (app, _) = spawn().await;
    create(&app, ORG, "key-c1", json!({"customer": "c-1"})).await;
    create(&app, ORG, "key-c2", json!({"customer": "c-2"})).await;
    let own = app.token(ORG, Some("c-1"), &["runtime"]).await;
    // The token names the customer: the body may leave it out.
    assert_eq!(selected_key(&app, &own, &json!({"definition": DEFINITION})).await, "key-c1");
    assert_eq!(selected_key(&app, &own, &json!({"definition": DEFINITION, "customer": "c-1"})).await, "key-c1");
    // Another customer's connection exists, but not for this token: 404, never 403.
    let other = json!({"definition": DEFINITION, "customer": "c-2"});
    let reply = select(&app, &own, &other).await;
    reply.assert_problem(StatusCode::NOT_FOUND);
    assert!(!reply.text.contains("key-c2"));
    let report = json!({"action": "report_error", "definition": DEFINITION, "customer": "c-2", "message": "x"});
    select(&app, &own, &report).await.assert_problem(StatusCode::NOT_FOUND);
    // An organization's runtime token reaches every customer.
    let runtime = app.token(ORG, None, &["runtime"]).await;
    assert_eq!(selected_key(&app, &runtime, &other).await, "key-c2");
    // Only the runtime role looks credentials up.
    for token in [app.token(ORG, None, &[]).await, app.token(ORG, Some("c-1"), &[]).await] {
        select(&app, &token, &other).await.assert_problem(StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn another_organizations_connection_is_never_selected() {
    let (app, _) = spawn().await;
    create(&app, "umbrella", "key-umbrella", json!({"customer": "c-1"})).await;
    create(&app, "umbrella", "key-umbrella-org", json!({"scope": "organization", "customer": "c-1"})).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let reply = select(&app, &runtime, &json!({"definition": DEFINITION, "customer": "c-1"})).await;
    reply.assert_problem(StatusCode::NOT_FOUND);
    assert!(!reply.text.contains("key-umbrella"));
    let theirs = app.token("umbrella", None, &["runtime"]).await;
    assert_eq!(
        selected_key(&app, &theirs, &json!({"definition": DEFINITION, "customer": "c-1"})).await,
        "key-umbrella"
    );
}

#[tokio::test]
async fn selectors_are_validated_and_match_nothing_else() {
    let (app, _) = spawn().await;
    let id = create(&app, ORG, "key-customer", json!({"customer": "c-1"})).await;
    // An organization connection for no customer is no customer's: named by id only.
    create(&app, ORG, "key-org-wide", json!({"scope": "organization"})).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    for (body, field) in [
        (json!({"customer": "c-1"}), "definition"),
        (json!({"definition": DEFINITION}), "customer"),
        (json!({"definition": "Not A Key", "customer": "c-1"}), "definition"),
        (json!({"definition": DEFINITION, "customer": "c-1", "instance_id": "a#b"}), "instance_id"),
        (json!({"definition": DEFINITION, "customer": "c-1", "connection_id": id}), "connection_id"),
        (json!({}), "connection_id"),
        (json!({"definition": DEFINITION, "customer": "c-1", "org": ORG}), "org"),
    ] {
        let reply = select(&app, &runtime, &body).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), [field], "{body}");
    }
    for body in
        [json!({"definition": "beta-api", "customer": "c-1"}), json!({"definition": DEFINITION, "customer": "c-9"})]
    {
        select(&app, &runtime, &body).await.assert_problem(StatusCode::NOT_FOUND);
    }
    // The id route refuses a selector beside its id; `POST /v1/token` takes an id alone too.
    let both = json!({"definition": DEFINITION, "customer": "c-1"});
    app.lookup(&runtime, &id, &both).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let by_id = select(&app, &runtime, &json!({"connection_id": id})).await;
    by_id.assert_status(StatusCode::OK);
    assert_eq!(by_id.body["fields"]["apiKey"], "key-customer");
}

/// The service over the backend `app` runs on, as the `token-lookup` function builds it.
async fn lookup_function(app: &TestApp) -> Components {
    match app.backend.aws() {
        None => Components::embedded(app.backend.data_dir(), ServiceOptions::default()).expect("the embedded backend"),
        Some(aws) => {
            let config = support::moto::sdk_config_for(&aws.endpoint).await;
            Components::aws(
                aws_sdk_dynamodb::Client::new(&config),
                aws_sdk_kms::Client::new(&config),
                aws_sdk_eventbridge::Client::new(&config),
                &aws.table,
                &aws.kms_key_id,
                "default",
                ServiceOptions::default(),
            )
        }
    }
}

#[tokio::test]
async fn the_token_lookup_payload_selects_in_the_same_order() {
    let (app, secret) = spawn().await;
    let ids = four_kinds(&app).await;
    let function = lookup_function(&app).await;
    let service = &function.service;
    let payload = || {
        let mut v = full_selector();
        v["org"] = json!(ORG);
        v
    };
    for (i, expected) in ["key-instance", "key-user", "key-customer", "key-organization"].into_iter().enumerate() {
        let found = latchkey::lambda::handle_lookup(service, payload()).await.expect("a lookup");
        assert_eq!(found["fields"]["apiKey"], expected);
        assert_eq!(found["connection_id"], ids[i].as_str());
        delete(&app, &ids[i]).await;
    }
    let err = latchkey::lambda::handle_lookup(service, payload()).await.unwrap_err();
    assert_eq!(err.error_type, "ConnectionNotFound");
    let mut other_org = payload();
    other_org["org"] = json!("umbrella");
    let err = latchkey::lambda::handle_lookup(service, other_org).await.unwrap_err();
    assert_eq!(err.error_type, "ConnectionNotFound");
    let err = latchkey::lambda::handle_lookup(service, json!({"org": ORG, "customer": "c-1"})).await.unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");

    // With LATCHKEY_LOOKUP_AUTH=token a customer's runtime token restricts the selector.
    create(&app, ORG, "key-c2", json!({"customer": "c-2"})).await;
    let verifier = Verifier::hs256(&secret.clone().into()).expect("a verifier");
    let token = app.token(ORG, Some("c-1"), &["runtime"]).await;
    let restricted = json!({"org": ORG, "definition": DEFINITION, "customer": "c-2", "token": token});
    let err = latchkey::lambda::handle_lookup_with(service, Some(&verifier), restricted).await.unwrap_err();
    assert_eq!(err.error_type, "ConnectionNotFound");
    let token = app.token(ORG, Some("c-2"), &["runtime"]).await;
    let own = json!({"definition": DEFINITION, "token": token});
    let found = latchkey::lambda::handle_lookup_with(service, Some(&verifier), own).await.expect("its own");
    assert_eq!(found["fields"]["apiKey"], "key-c2");

    // report_error by selector.
    let report = json!({"action": "report_error", "org": ORG, "definition": DEFINITION, "customer": "c-2",
                        "message": "Acme answered 401"});
    let reported = latchkey::lambda::handle_lookup(service, report).await.expect("reported");
    assert_eq!(reported["status"], "error");
}

#[tokio::test]
async fn the_rust_client_looks_up_and_reports_by_selector() {
    use latchkey_client::{Client, ErrorKind, Selector};
    use secrecy::ExposeSecret;

    let (app, _) = spawn().await;
    let ids = four_kinds(&app).await;
    let client = Client::new(&app.url(""), app.token(ORG, None, &["runtime"]).await.into()).expect("a client");
    let full = Selector::new(DEFINITION, "c-1").instance("inst-9").user("u-1");
    let creds = client.lookup_by_selector(&full, Some(60)).await.expect("the instance's connection");
    assert_eq!(creds.connection_id, ids[0]);
    assert_eq!(creds.fields.secret("apiKey").expect("apiKey").expose_secret(), "key-instance");
    let bare = Selector::new(DEFINITION, "c-1");
    assert_eq!(client.lookup_by_selector(&bare, None).await.expect("reusable").connection_id, ids[2]);

    let reported = client.report_error_by_selector(&bare, "Acme answered 401").await.expect("reported");
    assert_eq!(reported.connection_id, ids[2]);
    let err = client.lookup_by_selector(&bare, None).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::ConnectionError));

    // A customer-bound token: its own customer implied, another's not found.
    let own = Client::new(&app.url(""), app.token(ORG, Some("c-1"), &["runtime"]).await.into()).unwrap();
    let creds = own.lookup_by_selector(&Selector::own_customer(DEFINITION).user("u-1"), None).await.unwrap();
    assert_eq!(creds.connection_id, ids[1]);
    let err = own.lookup_by_selector(&Selector::new(DEFINITION, "c-2"), None).await.unwrap_err();
    assert_eq!(err.kind(), Some(&ErrorKind::NotFound));
}

/// A lookup's body is a JSON object, over both routes: an array, which serde alone would read
/// as the members in order (`org`, `connection_id`, `definition`, `customer`...), is refused
/// (it looked the connection up before); a member given twice keeps its last value; an empty
/// body is `{}` by id, and refused by `POST /v1/token`.
#[tokio::test]
async fn a_lookup_body_is_an_object_and_reads_as_json_does() {
    let (app, _) = spawn().await;
    let id = create(&app, ORG, "key-customer", json!({"customer": "c-1"})).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let by_id = format!("/v1/connections/{id}/token");

    for (path, body) in [
        (by_id.as_str(), json!([null, id])),
        ("/v1/token", json!([null, null, DEFINITION, "c-1"])),
        ("/v1/token", json!([null, id])),
    ] {
        let reply = app.request(Method::POST, path, Some(&runtime), Some(&body)).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!reply.text.contains("key-customer"), "{path} {body}: {}", reply.text);
    }
    let twice = format!(r#"{{"definition": "{DEFINITION}", "customer": "c-9", "customer": "c-1"}}"#);
    let reply = app.request_raw(Method::POST, "/v1/token", &runtime, twice.into_bytes()).await;
    reply.assert_status(StatusCode::OK);
    assert_eq!(reply.body["fields"]["apiKey"], "key-customer", "the last of a member given twice");
    let reply = app.request_raw(Method::POST, &by_id, &runtime, b" \n".to_vec()).await;
    reply.assert_status(StatusCode::OK);
    let reply = app.request_raw(Method::POST, "/v1/token", &runtime, Vec::new()).await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
}

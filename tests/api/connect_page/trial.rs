//! What a new user's trial of the connect page found, over HTTP as a browser without JavaScript:
//! a session lists and acts on only the connections its instance may use (its instance's and the
//! customer's reusable ones), each row telling its instance and creation apart; a disconnected
//! API-key connection's form asks for the wiped key again; the activity log reads as sentences,
//! not internal messages; Disconnect asks first and says "Disconnected" after; and the wording
//! of a bad `parent_origin` and of a lookup on a disconnected API-key connection.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Browser;
use crate::harness::TestApp;

const ORG: &str = "acme";
const CUSTOMER: &str = "c-1";

fn api_key_definition() -> Value {
    json!({
        "label": "Acme",
        "auth": "api_key",
        "inputs": {
            "apiKey": {"type": "password", "label": "API key", "required": true, "visibility": "customer"},
            "region": {"type": "string", "label": "Region", "visibility": "customer"}
        }
    })
}

async fn setup(app: &TestApp) -> String {
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "acme-api", &api_key_definition()).await.assert_status(StatusCode::CREATED);
    org
}

/// An OAuth definition whose authorizations are only started, never completed.
fn oauth_definition() -> Value {
    json!({"label": "Cloud", "auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": "https://auth.cloud.example/authorize"},
        "tokenUrl": {"type": "url", "default": "https://auth.cloud.example/token"},
        "clientId": {"type": "string", "default": "cid"},
        "clientSecret": {"type": "password", "default": "cs"}}})
}

async fn link(app: &TestApp, org: &str, body: Value) -> String {
    let reply = app.request(Method::POST, "/v1/connect/sessions", Some(org), Some(&body)).await;
    reply.assert_status(StatusCode::CREATED);
    reply.body["url"].as_str().unwrap().to_owned()
}

/// A connection of the customer made over the API with `extra` (scope, instance, label).
async fn connection(app: &TestApp, org: &str, extra: Value) -> (String, u64) {
    let mut body = json!({"definition": "acme-api", "customer": CUSTOMER, "values": {"apiKey": "sk_test_1"}});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let reply = app.create_connection(org, &body).await;
    reply.assert_status(StatusCode::CREATED);
    (reply.body["id"].as_str().unwrap().to_owned(), reply.body["version"].as_u64().unwrap())
}

#[tokio::test]
async fn a_session_offers_only_the_connections_its_instance_may_use() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let (nine, nine_version) = connection(&app, &org, json!({"scope": "instance", "instance_id": "inst-9"})).await;
    let (ten, _) = connection(&app, &org, json!({"scope": "instance", "instance_id": "inst-10"})).await;
    let (reusable, _) = connection(&app, &org, json!({"scope": "customer", "label": "Shared key"})).await;
    let (managed, _) = connection(&app, &org, json!({"scope": "organization"})).await;
    app.put_definition(&org, "cloud", &oauth_definition()).await.assert_status(StatusCode::CREATED);
    let pending = json!({"definition": "cloud", "customer": CUSTOMER, "scope": "instance", "instance_id": "inst-9"});
    let reply = app.create_connection(&org, &pending).await;
    reply.assert_status(StatusCode::CREATED);
    let (nine_oauth, oauth_version) = (reply.body["id"].as_str().unwrap().to_owned(), reply.body["version"].clone());

    let session = json!({"customer": CUSTOMER, "instance": {"id": "inst-10", "name": "Shop ten"}});
    let mut browser = Browser::new(&app);
    let (id, page) = browser.open(&link(&app, &org, session).await).await;
    for shown in [&ten, &reusable, &managed] {
        assert!(page.html.contains(&format!("data-connection-id=\"{shown}\"")), "{shown}: {}", page.html);
    }
    for hidden in [&nine, &nine_oauth] {
        assert!(!page.html.contains(hidden.as_str()), "inst-9's connection on inst-10's page: {}", page.html);
    }
    // Rows are told apart: the instance of a bound one, the label or the creation date.
    assert!(page.row(&ten).contains("Instance <strong>inst-10</strong>"), "{}", page.row(&ten));
    assert!(page.row(&reusable).contains("Shared key") && !page.row(&reusable).contains("Instance "));
    assert!(page.row(&managed).contains("Created <time datetime=\""), "{}", page.row(&managed));

    // Every action refuses inst-9's connection as an unknown one, and changes nothing.
    let csrf = page.csrf();
    let tries: [(&str, Vec<(&str, &str)>); 3] = [
        ("disconnect", vec![("csrf", &csrf), ("connection_id", &nine)]),
        (
            "values",
            vec![("csrf", &csrf), ("definition", "acme-api"), ("connection_id", &nine), ("value.apiKey", "sk_x")],
        ),
        ("authorize", vec![("csrf", &csrf), ("definition", "cloud"), ("connection_id", &nine_oauth)]),
    ];
    for (action, fields) in tries {
        let refused = browser.post(&format!("/connect/{id}/{action}"), &fields).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{action}: {}", refused.html);
        assert!(!refused.html.contains(&nine) && !refused.html.contains(&nine_oauth), "{action}: {}", refused.html);
    }
    let after = app.get_connection(&org, &nine).await;
    assert_eq!(after.body["version"].as_u64(), Some(nine_version), "{}", after.body);
    assert_ne!(after.body["status"], "disconnected");
    assert_eq!(app.get_connection(&org, &nine_oauth).await.body["version"], oauth_version);

    // A session naming no instance offers the reusable ones only.
    let mut other = Browser::new(&app);
    let (other_id, page) = other.open(&link(&app, &org, json!({"customer": CUSTOMER})).await).await;
    assert!(page.html.contains(&reusable) && page.html.contains(&managed), "{}", page.html);
    assert!(!page.html.contains(&nine) && !page.html.contains(&ten), "{}", page.html);
    let csrf = page.csrf();
    let refused =
        other.post(&format!("/connect/{other_id}/disconnect"), &[("csrf", &csrf), ("connection_id", &ten)]).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.html);
    assert_eq!(app.get_connection(&org, &ten).await.body["status"], "configured");
}

/// A session naming a connection offers that one, whatever its instance; one naming another
/// instance than the connection's is refused at creation.
#[tokio::test]
async fn a_session_naming_a_connection_reaches_it_unless_it_names_another_instance() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let (nine, _) = connection(&app, &org, json!({"scope": "instance", "instance_id": "inst-9"})).await;

    let body = json!({"customer": CUSTOMER, "connection_id": nine, "instance": {"id": "inst-10"}});
    let refused = app.request(Method::POST, "/v1/connect/sessions", Some(&org), Some(&body)).await;
    refused.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["connection_id"], "{}", refused.body);

    // The first session writes its context (the instance's name) onto the connection it updates.
    for (named, shown) in [(json!({"id": "inst-9", "name": "Shop nine"}), "inst-9"), (Value::Null, "Shop nine")] {
        let mut body = json!({"customer": CUSTOMER, "connection_id": nine});
        if !named.is_null() {
            body["instance"] = named;
        }
        let mut browser = Browser::new(&app);
        let (id, page) = browser.open(&link(&app, &org, body).await).await;
        assert!(page.row(&nine).contains(&format!("Instance <strong>{shown}</strong>")), "{}", page.html);
        let fields = [("csrf", page.csrf()), ("definition", "acme-api".into()), ("value.apiKey", "sk_test_9".into())];
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let saved = browser.post(&format!("/connect/{id}/values"), &fields).await;
        assert_eq!(saved.location(), format!("/connect/{id}?connected={nine}"), "{}", saved.html);
    }
}

#[tokio::test]
async fn disconnect_asks_first_says_so_after_and_the_wiped_key_is_required_again() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let (cid, _) = connection(&app, &org, json!({"label": "Acme prod"})).await;
    let mut browser = Browser::new(&app);
    let (id, page) = browser.open(&link(&app, &org, json!({"customer": CUSTOMER})).await).await;
    let row = page.row(&cid);
    assert!(row.contains("data-action=\"disconnect\" data-confirm=\"Disconnect Acme prod?"), "{row}");
    // The key is held: blank keeps it.
    assert!(row.contains("Leave blank to keep the current value."), "{row}");
    // The log reads as sentences, the time apart from the text.
    assert!(row.contains("UTC</time> <span class=\"log-type\">Connection created</span>"), "{row}");

    let cut =
        browser.post(&format!("/connect/{id}/disconnect"), &[("csrf", &page.csrf()), ("connection_id", &cid)]).await;
    assert_eq!(cut.status, StatusCode::SEE_OTHER, "{}", cut.html);
    assert_eq!(cut.location(), format!("/connect/{id}?disconnected={cid}"));
    let after = browser.get(cut.location()).await;
    assert!(after.html.contains("<div class=\"banner success\" role=\"status\">Disconnected</div>"), "{}", after.html);
    let row = after.row(&cid);
    assert!(row.contains("<span class=\"log-type\">Disconnected</span>"), "{row}");
    assert!(!row.contains("credentials removed") && !row.contains("revokeUrl") && !row.contains("none held"), "{row}");
    // The key was wiped: the update form marks it required and promises nothing about blank.
    assert!(!row.contains("Leave blank to keep the current value."), "{row}");
    let field = format!("id=\"c-{cid}-apiKey\" name=\"value.apiKey\" autocomplete=\"new-password\" required");
    assert!(row.contains(&field), "{row}");
    assert!(row.contains("API key<span class=\"required\""), "{row}");

    // A banner only for a connection the page shows, disconnected.
    let forged = browser.get(&format!("/connect/{id}?disconnected=con_01kahzz7v4m3n2q0000000000a")).await;
    assert!(!forged.html.contains("banner success"), "{}", forged.html);

    // Blank is refused, a new key brings it back under the same id.
    let csrf = after.csrf();
    let fields = [("csrf", csrf.as_str()), ("definition", "acme-api"), ("connection_id", cid.as_str())];
    let blank = browser.post(&format!("/connect/{id}/values"), &fields).await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", blank.html);
    let with_key = [fields[0], fields[1], fields[2], ("value.apiKey", "sk_test_2")];
    let saved = browser.post(&format!("/connect/{id}/values"), &with_key).await;
    assert_eq!(saved.location(), format!("/connect/{id}?connected={cid}"), "{}", saved.html);
}

#[tokio::test]
async fn wording_of_a_bad_parent_origin_and_of_a_disconnected_api_key_lookup() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let body = json!({"customer": CUSTOMER, "parent_origin": "notaurl"});
    let refused = app.request(Method::POST, "/v1/connect/sessions", Some(&org), Some(&body)).await;
    refused.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.body.to_string().contains("must be an origin such as https://app.example.com"), "{}", refused.body);

    let (cid, _) = connection(&app, &org, json!({})).await;
    app.request(Method::POST, &format!("/v1/connections/{cid}/disconnect"), Some(&org), None)
        .await
        .assert_status(StatusCode::OK);
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let lookup = app.lookup(&runtime, &cid, &json!({})).await;
    lookup.assert_status(StatusCode::CONFLICT);
    let detail = lookup.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("connect it again"), "{}", lookup.body);
}

//! The built-in provider catalog through `latchkey serve`: `GET /v1/providers`, and definitions
//! that name a provider instead of spelling out its OAuth endpoints.

use crate::harness::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ORG: &str = "acme";

async fn catalog_entry(app: &TestApp, token: &str, key: &str) -> Value {
    let reply = app.get("/v1/providers", token).await;
    reply.assert_status(StatusCode::OK);
    reply.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["key"] == key))
        .cloned()
        .unwrap_or_else(|| panic!("{key} is in the catalog"))
}

#[tokio::test]
async fn the_catalog_is_listed_for_any_authenticated_caller() {
    let app = TestApp::spawn().await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let reply = app.get("/v1/providers", &customer).await;
    reply.assert_status(StatusCode::OK);
    let items = reply.body["items"].as_array().expect("items");
    assert!(items.len() >= 100, "{} providers", items.len());
    for p in items {
        if p["auth"].as_str().is_some_and(|a| a.starts_with("oauth2_")) {
            assert!(p["token_url"].as_str().is_some_and(|u| u.starts_with("https://")), "{p}");
        }
        assert!(p["docs_url"].as_str().is_some_and(|u| u.starts_with("https://")), "{p}");
    }
    app.request(Method::GET, "/v1/providers", None, None).await.assert_problem(StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_definition_naming_a_provider_gets_its_endpoints_and_the_org_may_override_them() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let github = catalog_entry(&app, &org, "github").await;

    let body = json!({"label": "GitHub", "provider": "github", "inputs": {
        "clientId": {"type": "string", "default": "Iv1.abc"},
        "clientSecret": {"type": "password", "default": "gh_client_secret"}}});
    let def = app.put_definition(&org, "gh", &body).await;
    def.assert_status(StatusCode::CREATED);
    let inputs = &def.body["inputs"];
    assert_eq!(def.body["provider"], "github");
    assert_eq!(def.body["auth"], github["auth"], "auth comes from the provider");
    assert_eq!(inputs["authorizeUrl"]["default"], github["authorize_url"]);
    assert_eq!(inputs["tokenUrl"]["default"], github["token_url"]);
    assert_eq!(inputs["pkce"]["default"], github["pkce"]);
    assert_eq!(inputs["clientAuth"]["default"], github["client_auth"]);
    assert_eq!(inputs["tokenUrl"]["visibility"], "organization");
    assert_eq!(inputs["clientSecret"]["default"], json!({"set": true}));

    let mut own = body.clone();
    own["inputs"]["tokenUrl"] =
        json!({"type": "url", "default": "https://github.example.com/login/oauth/access_token"});
    let replaced = app.put_definition(&org, "gh", &own).await;
    replaced.assert_status(StatusCode::OK);
    assert_eq!(replaced.body["inputs"]["tokenUrl"]["default"], "https://github.example.com/login/oauth/access_token");
}

#[tokio::test]
async fn a_provider_that_contradicts_the_auth_kind_or_is_unknown_is_refused() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let unknown = app.put_definition(&org, "x", &json!({"provider": "myspace"})).await;
    unknown.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error_fields(), ["provider"]);
    let contradiction = app.put_definition(&org, "x", &json!({"provider": "github", "auth": "api_key"})).await;
    contradiction.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(contradiction.error_fields(), ["auth"]);
    assert_eq!(app.get_definition(&org, "x").await.status, StatusCode::NOT_FOUND, "nothing was stored");
}

#[tokio::test]
async fn per_tenant_providers_ask_the_customer_for_their_url_parameter() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let shopify = catalog_entry(&app, &org, "shopify").await;
    let params: Vec<&str> =
        shopify["url_params"].as_array().expect("url_params").iter().filter_map(Value::as_str).collect();
    assert!(!params.is_empty());

    let def = app
        .put_definition(
            &org,
            "shop",
            &json!({"provider": "shopify", "inputs": {"clientId": {"type": "string", "default": "id"}}}),
        )
        .await;
    def.assert_status(StatusCode::CREATED);
    for p in &params {
        let input = &def.body["inputs"][p];
        assert_eq!((input["type"].as_str(), input["visibility"].as_str()), (Some("string"), Some("customer")), "{p}");
        assert_eq!(input["required"], true);
    }
    // The templated URL is resolved per connection, so it is no default of the definition.
    assert_eq!(def.body["inputs"]["authorizeUrl"]["default"], Value::Null);

    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let missing = app.create_connection(&customer, &json!({"definition": "shop"})).await;
    missing.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing.error_fields(), params.iter().map(|p| format!("values.{p}")).collect::<Vec<_>>());
}

//! The larger catalog through `latchkey serve`: `GET /v1/providers?auth=KIND`, and definitions
//! naming an API-key or basic-auth provider, which get its inputs and its `verify` request.
//! (Each entry of `shared/providers.json` is checked by the unit tests of `catalog.rs`.)

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::TestApp;

const ORG: &str = "acme";

fn keys(reply_body: &Value) -> BTreeSet<String> {
    reply_body["items"].as_array().expect("items").iter().map(|p| p["key"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn providers_are_filtered_by_auth_kind_and_the_kinds_partition_the_catalog() {
    let app = TestApp::spawn().await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let all = app.get("/v1/providers", &customer).await;
    all.assert_status(StatusCode::OK);
    let all_keys = keys(&all.body);
    assert!(all_keys.len() >= 100, "{} providers", all_keys.len());

    let mut seen = BTreeSet::new();
    for kind in [
        "api_key",
        "basic",
        "oauth2_authorization_code",
        "oauth2_client_credentials",
        "oauth2_device_code",
        "oauth2_jwt_bearer",
        "oauth1",
        "custom",
    ] {
        let reply = app.get(&format!("/v1/providers?auth={kind}"), &customer).await;
        reply.assert_status(StatusCode::OK);
        let items = reply.body["items"].as_array().expect("items");
        assert!(items.iter().all(|p| p["auth"] == kind), "{kind}: {items:?}");
        if kind != "custom" {
            assert!(!items.is_empty(), "{kind}: some providers");
        }
        for p in items {
            assert!(seen.insert(p["key"].as_str().unwrap().to_owned()), "{p}: in one kind only");
            if kind == "api_key" || kind == "basic" {
                // A verify request, or a description of why none accepts every valid key.
                let verified = p["verify"]["url"].as_str().is_some_and(|u| u.starts_with("https://"));
                let why = p["description"].as_str().is_some_and(|d| d.starts_with("No verify request: "));
                assert!(verified != why, "{p}");
                assert!(p["inputs"].as_object().is_some_and(|i| !i.is_empty()), "{p}");
                assert!(p.get("token_url").is_none(), "{p}: no OAuth member");
            } else if kind == "oauth1" {
                for url in ["request_token_url", "authorize_url", "access_token_url"] {
                    assert!(p[url].as_str().is_some_and(|u| u.starts_with("https://")), "{p}: {url}");
                }
            } else if kind != "custom" {
                assert!(p["token_url"].as_str().is_some_and(|u| u.starts_with("https://")), "{p}");
            }
        }
    }
    assert_eq!(seen, all_keys, "every provider is of one of the kinds");
    let empty = app.get("/v1/providers?auth=", &customer).await;
    assert_eq!(keys(&empty.body), all_keys, "an empty filter lists every provider");
}

#[tokio::test]
async fn an_unknown_auth_kind_is_a_validation_problem_naming_auth() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    for bad in ["oauth2", "API_KEY", "basic,api_key"] {
        let reply = app.get(&format!("/v1/providers?auth={bad}"), &org).await;
        reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_fields(), ["auth"], "{bad}");
    }
}

#[tokio::test]
async fn a_definition_naming_an_api_key_provider_gets_its_inputs_and_verify_request() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let listed = app.get("/v1/providers?auth=api_key", &org).await;
    let anthropic = listed.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["key"] == "anthropic"))
        .cloned()
        .expect("anthropic is an api_key provider");
    assert!(anthropic["verify"]["url"].is_string(), "{anthropic}");

    let def = app.put_definition(&org, "llm", &json!({"label": "Anthropic", "provider": "anthropic"})).await;
    def.assert_status(StatusCode::CREATED);
    assert_eq!(def.body["auth"], "api_key", "auth comes from the provider");
    assert_eq!(def.body["verify"], anthropic["verify"], "the catalog's verify request");
    let input = &def.body["inputs"]["apiKey"];
    assert_eq!((input["type"].as_str(), input["required"].as_bool()), (Some("password"), Some(true)), "{input}");

    // The organization's own input of that name wins, and `verify: null` turns checking off.
    let own = json!({"provider": "anthropic", "verify": null,
                     "inputs": {"apiKey": {"label": "Project key", "type": "password", "required": false}}});
    let replaced = app.put_definition(&org, "llm", &own).await;
    replaced.assert_status(StatusCode::OK);
    assert_eq!(replaced.body["inputs"]["apiKey"]["label"], "Project key");
    assert!(replaced.body.get("verify").is_none_or(Value::is_null), "{}", replaced.body);

    // A connection of it is validated against the provider's inputs.
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let unknown = app.create_connection(&customer, &json!({"definition": "llm", "values": {"token": "x"}})).await;
    unknown.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error_fields(), ["values.token"]);
}

#[tokio::test]
async fn an_entry_without_a_verify_request_says_why_and_its_connections_are_stored_unchecked() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let listed = app.get("/v1/providers?auth=api_key", &org).await;
    let openai = listed.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["key"] == "openai"))
        .cloned()
        .expect("openai is an api_key provider");
    assert!(openai.get("verify").is_none(), "{openai}");
    assert!(openai["description"].as_str().is_some_and(|d| d.contains("restricted")), "{openai}");

    let def = app.put_definition(&org, "llm", &json!({"provider": "openai"})).await;
    def.assert_status(StatusCode::CREATED);
    assert!(def.body.get("verify").is_none_or(Value::is_null), "{}", def.body);
    // No provider is called: the connection is stored as given.
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let created =
        app.create_connection(&customer, &json!({"definition": "llm", "values": {"apiKey": "sk-proj-x"}})).await;
    created.assert_status(StatusCode::CREATED);
}

#[tokio::test]
async fn a_basic_auth_provider_carries_its_basic_credentials_template() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let def = app.put_definition(&org, "sms", &json!({"provider": "twilio"})).await;
    def.assert_status(StatusCode::CREATED);
    assert_eq!(def.body["auth"], "basic");
    assert_eq!(def.body["verify"]["basic"], json!({"username": "{{accountSid}}", "password": "{{authToken}}"}));
    assert_eq!(def.body["inputs"]["accountSid"]["type"], "string");
    assert_eq!(def.body["inputs"]["authToken"]["type"], "password");

    // A verify request naming an input the definition lacks is refused, whoever wrote it.
    let bad = app
        .put_definition(
            &org,
            "sms",
            &json!({"provider": "twilio", "verify": {"method": "GET", "url": "https://api.twilio.com/x",
                    "basic": {"username": "{{accountId}}"}}}),
        )
        .await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.error_fields(), ["verify.basic.username"]);
}

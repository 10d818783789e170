//! The OpenAPI document served at `GET /openapi.json` (`shared/openapi.json`) against the router:
//! it parses, documents every route the router serves and nothing else, and its `$ref`s resolve.

use std::collections::BTreeSet;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use latchkey::config::Components;
use latchkey::http::auth::Verifier;
use latchkey::http::{OPENAPI_JSON, router};
use latchkey::service::ServiceOptions;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

/// Every route of `latchkey::http::router`, copied by hand from `shared/src/http/mod.rs`.
/// Adding a route there without documenting it (and listing it here) fails these tests.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/providers"),
    ("GET", "/v1/definitions"),
    ("GET", "/v1/definitions/{key}"),
    ("PUT", "/v1/definitions/{key}"),
    ("DELETE", "/v1/definitions/{key}"),
    ("GET", "/v1/connections"),
    ("POST", "/v1/connections"),
    ("GET", "/v1/connections/{id}"),
    ("PATCH", "/v1/connections/{id}"),
    ("DELETE", "/v1/connections/{id}"),
    ("GET", "/v1/connections/{id}/logs"),
    ("POST", "/v1/connections/{id}/token"),
    ("POST", "/v1/token"),
    ("POST", "/v1/connections/{id}/authorize"),
    ("POST", "/v1/connections/{id}/refresh"),
    ("POST", "/v1/connections/{id}/verify"),
    ("POST", "/v1/connections/{id}/disconnect"),
    ("POST", "/v1/connect/sessions"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{id}"),
    ("PUT", "/v1/webhooks/{id}"),
    ("DELETE", "/v1/webhooks/{id}"),
    ("POST", "/v1/webhooks/{id}/rotate-secret"),
    ("GET", "/v1/webhooks/{id}/deliveries"),
    ("POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/retry"),
    ("GET", "/v1/oauth/callback"),
    ("GET", "/connect"),
    ("GET", "/connect/{id}"),
    ("POST", "/connect/{id}/values"),
    ("POST", "/connect/{id}/authorize"),
    ("POST", "/connect/{id}/disconnect"),
    ("GET", "/connect/assets/connect.css"),
    ("GET", "/connect/assets/connect.js"),
];

/// The operation keys of an OpenAPI path item.
const OPERATIONS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("shared/openapi.json is valid JSON")
}

/// The document's operations as (METHOD, path template).
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().unwrap_or_else(|| panic!("path item {path} is an object"));
        for method in OPERATIONS.iter().filter(|m| item.contains_key(**m)) {
            ops.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    ops
}

fn routes() -> BTreeSet<(String, String)> {
    ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect()
}

/// Every `$ref` string anywhere under `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// A concrete path for a template: placeholders get syntactically valid identifiers.
fn concrete(template: &str) -> String {
    template
        .replace("{key}", "acme-api")
        .replace("{id}", &format!("con_{}", "0".repeat(26)))
        .replace("{delivery_id}", &format!("msg_{}", "a".repeat(26)))
}

#[test]
fn the_document_is_openapi_3() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("`openapi` is a string");
    assert!(version.starts_with("3."), "openapi version {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = document();
    let documented = documented(&doc);
    let routes = routes();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&routes).collect();
    assert!(undocumented.is_empty(), "routes missing from shared/openapi.json: {undocumented:?}");
    assert!(unserved.is_empty(), "documented operations the router does not serve: {unserved:?}");
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty(), "the document uses components");
    for r in found {
        assert!(r.starts_with("#/components/"), "{r} is not a local component reference");
        assert!(doc.pointer(&r[1..]).is_some_and(Value::is_object), "{r} does not resolve");
    }
}

/// The hand-written list against the live router: every listed route answers (without a token:
/// served for the operations the document marks `security: []`, 401 for the others), every
/// other method on a documented path is 405, and `/openapi.json` serves this very document.
#[tokio::test]
async fn the_router_serves_exactly_the_documented_operations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = Components::embedded(dir.path(), ServiceOptions::default()).expect("embedded backend");
    let verifier = Verifier::hs256(&SecretString::from("openapi-test-secret-of-at-least-32-bytes".to_owned()))
        .expect("a secret of 32 bytes or more");
    let api = router(app.router_state(verifier));
    let doc = document();
    let routes = routes();

    let templates: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    for template in templates {
        for method in [Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            let req = Request::builder()
                .method(method.clone())
                .uri(concrete(template))
                .body(Body::from("{}"))
                .expect("request");
            let status = api.clone().oneshot(req).await.expect("infallible").status();
            let key = (method.as_str().to_owned(), template.to_owned());
            if !routes.contains(&key) {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {template} is served but not listed");
                continue;
            }
            let public = doc["paths"][template][method.as_str().to_ascii_lowercase()]["security"]
                .as_array()
                .is_some_and(Vec::is_empty);
            if public {
                // Served without a token (the callback answers 400 to a request without state).
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {template} without a token: {status}"
                );
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {template} without a token");
            }
        }
    }

    let req = Request::get("/openapi.json").body(Body::empty()).expect("request");
    let res = api.oneshot(req).await.expect("infallible");
    assert_eq!(res.headers()[http::header::CONTENT_TYPE], "application/json");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, OPENAPI_JSON.as_bytes());
}

//! `oauth2_jwt_bearer` connections (SPEC section 12, RFC 7523 section 2.1) through `latchkey
//! serve`, against oidc-provider with the JWT bearer grant registered (`tests/oauth/oidc.mjs`,
//! `jwt_bearer`): it verifies each assertion's signature by its `kid`, issuer, audience, lifetime
//! and `jti` (a reused one is refused). Keys are made per test with `openssl genpkey`.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::oauth::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, OidcServer};

use crate::harness::{Backend, Reply, TestApp, eventually, random_secret};

const ORG: &str = "acme";
const ISSUER: &str = "svc-reports@acme.iam.example";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Just past half the life of the 10 s tokens of [`server`]: from then on a lookup that wants the
/// token valid for 60 s needs a new one (a token issued a moment ago is never renewed).
const TOKEN_PAST_HALF_LIFE: Duration = Duration::from_millis(5200);

/// A fresh key pair for `algorithm` (`RS256`: RSA 2048, `ES256`: P-256), as PEM: (private
/// PKCS#8, public SPKI).
pub(crate) fn key_pair(algorithm: &str) -> (String, String) {
    let params: &[&str] = match algorithm {
        "RS256" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ES256" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        other => panic!("no key for {other}"),
    };
    let generated = Command::new("openssl").arg("genpkey").args(params).output().expect("run openssl genpkey");
    assert!(generated.status.success(), "openssl genpkey: {}", String::from_utf8_lossy(&generated.stderr));
    let private = String::from_utf8(generated.stdout).unwrap();
    let mut child = Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl pkey");
    child.stdin.take().unwrap().write_all(private.as_bytes()).unwrap();
    let public = child.wait_with_output().unwrap();
    assert!(public.status.success());
    (private, String::from_utf8(public.stdout).unwrap())
}

/// oidc-provider accepting assertions of [`ISSUER`] signed by `keys` (kid -> public PEM), with
/// access tokens of `ttl` seconds.
async fn server(keys: Value, ttl: u64) -> OidcServer {
    OidcServer::start(json!({
        "redirect_uris": ["http://127.0.0.1:9/cb"],
        "access_token_ttl": ttl,
        "jwt_bearer": {"issuer": ISSUER, "public_keys": keys},
    }))
    .await
}

/// A JWT bearer definition against `oidc`, the key an organization default (the audience is
/// the token URL, the subject the issuer).
fn definition(oidc: &OidcServer, private: &str, algorithm: &str, kid: &str) -> Value {
    json!({"label": "Acme reports (service account)", "auth": "oauth2_jwt_bearer", "inputs": {
        "tokenUrl": {"type": "url", "default": oidc.token_endpoint()},
        "revokeUrl": {"type": "url", "default": oidc.revocation_endpoint()},
        "clientId": {"type": "string", "default": DEFAULT_CLIENT_ID},
        "clientSecret": {"type": "password", "default": DEFAULT_CLIENT_SECRET},
        "scopes": {"type": "string", "default": "api:read"},
        "issuer": {"type": "string", "default": ISSUER},
        "privateKey": {"type": "password", "default": private},
        "algorithm": {"type": "string", "default": algorithm},
        "keyId": {"type": "string", "default": kid}}})
}

/// The JWT bearer token requests the server saw, in order.
async fn assertions(oidc: &OidcServer) -> Vec<Value> {
    let stats = oidc.stats().await;
    stats["events"].as_array().unwrap().iter().filter(|e| e["grant_type"] == GRANT).cloned().collect()
}

/// Defines `svc` and creates an organization-scoped connection of it.
async fn connect(app: &TestApp, def: &Value) -> Reply {
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "svc", def).await.assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "svc", "scope": "organization"})).await;
    created.assert_status(StatusCode::CREATED);
    created
}

async fn lookup(app: &TestApp, id: &str, min_valid: u64) -> Reply {
    let runtime = app.token(ORG, None, &["runtime"]).await;
    app.lookup(&runtime, id, &json!({"min_valid_seconds": min_valid})).await
}

#[tokio::test]
async fn a_service_account_connection_gets_its_token_at_connect_and_lookups_return_it() {
    let app = TestApp::spawn().await;
    let (private, public) = key_pair("RS256");
    let oidc = server(json!({"rs-1": public}), 3600).await;
    let created = connect(&app, &definition(&oidc, &private, "RS256", "rs-1")).await;
    assert_eq!(created.body["status"], "configured", "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let seen = assertions(&oidc).await;
    assert_eq!(seen.len(), 1, "one token request at connect: {seen:?}");
    assert_eq!((seen[0]["status"].as_u64(), &seen[0]["assertion"]["kid"]), (Some(200), &json!("rs-1")));
    assert_eq!(seen[0]["assertion"]["alg"], "RS256");
    assert_eq!(seen[0]["assertion"]["sub"], ISSUER, "the subject defaults to the issuer");
    assert!(seen[0]["assertion"]["lifetime"].as_i64().is_some_and(|l| l > 0 && l <= 300), "{seen:?}");

    let found = lookup(&app, &id, 60).await;
    found.assert_status(StatusCode::OK);
    let token = found.body["token"]["access_token"].as_str().unwrap().to_owned();
    assert_eq!(found.body["token"]["token_type"], "Bearer");
    assert_eq!(found.body["token"]["scopes"], json!(["api:read"]));
    assert_eq!(oidc.introspect(&token).await["active"], true, "the token the server issued");
    let again = lookup(&app, &id, 60).await;
    assert_eq!(again.body["token"]["access_token"], token.as_str());
    assert_eq!(assertions(&oidc).await.len(), 1, "reused while it is valid");
    assert_eq!(lookup(&app, &id, 0).await.body["status"], "active");

    // The key is a secret: never read back, never in a lookup's fields.
    let org = app.token(ORG, None, &[]).await;
    let read = app.get_definition(&org, "svc").await;
    assert_eq!(read.body["inputs"]["privateKey"]["default"], json!({"set": true}), "{}", read.text);
    for reply in [&created, &found, &read] {
        assert!(!reply.text.contains("PRIVATE KEY"), "{}", reply.text);
    }
}

#[tokio::test]
async fn an_expiring_token_is_renewed_once_with_a_new_assertion_under_concurrent_lookups() {
    let app = TestApp::spawn().await;
    let (private, public) = key_pair("ES256");
    let oidc = server(json!({"ec-1": public}), 10).await;
    let created = connect(&app, &definition(&oidc, &private, "ES256", "ec-1")).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let first = lookup(&app, &id, 0).await.body["token"]["access_token"].clone();
    // Time passing is the behaviour: the token ages on the real clock the server and the
    // provider share (assertions carry real `iat`/`exp`, checked by the provider).
    tokio::time::sleep(TOKEN_PAST_HALF_LIFE).await;
    let replies = futures_util::future::join_all((0..16).map(|_| lookup(&app, &id, 60))).await;
    let tokens: BTreeSet<String> = replies
        .iter()
        .map(|r| {
            r.assert_status(StatusCode::OK);
            r.body["token"]["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "every caller gets the same new token: {tokens:?}");
    assert!(!tokens.contains(first.as_str().unwrap()), "a new token, not the expiring one");
    let seen = assertions(&oidc).await;
    assert_eq!(seen.len(), 2, "exactly one provider call for the sixteen lookups: {seen:?}");
    assert!(seen.iter().all(|e| e["status"] == 200 && e["assertion"]["alg"] == "ES256"), "{seen:?}");
    let jtis: BTreeSet<&str> = seen.iter().map(|e| e["assertion"]["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), 2, "a new assertion (new jti) each time: {seen:?}");
}

#[tokio::test]
async fn the_sweep_renews_tokens_before_they_expire() {
    // About what `latchkey serve` runs (its sweep): the binary under either transport.
    let app = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_REFRESH_INTERVAL_SECS", "1")],
    )
    .await;
    let (private, public) = key_pair("RS256");
    // A 6 s token is due 3 s after it was issued (half its lifetime).
    let oidc = server(json!({"rs-1": public}), 6).await;
    connect(&app, &definition(&oidc, &private, "RS256", "rs-1")).await;
    eventually(Duration::from_secs(20), "a renewal by the sweep", || async { assertions(&oidc).await.len() >= 2 })
        .await;
    let seen = assertions(&oidc).await;
    assert!(seen.iter().all(|e| e["status"] == 200), "every assertion accepted (no jti reused): {seen:?}");
}

#[tokio::test]
async fn an_assertion_the_provider_refuses_turns_the_connection_red_until_the_key_is_fixed() {
    let app = TestApp::spawn().await;
    let (good, good_public) = key_pair("RS256");
    let (wrong, _) = key_pair("RS256");
    // The server knows kid rs-1 by another key than the one signing: the signature fails.
    let oidc = server(json!({"rs-1": good_public}), 3600).await;
    let created = connect(&app, &definition(&oidc, &wrong, "RS256", "rs-1")).await;
    assert_eq!(created.body["status"], "error", "{}", created.text);
    assert_eq!(created.body["error"]["code"], "client_rejected", "the organization's key to fix");
    assert_eq!(created.body["error"]["provider_code"], "invalid_grant");
    let id = created.body["id"].as_str().unwrap();
    let refused = lookup(&app, id, 0).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:connection-error");
    assert_eq!(assertions(&oidc).await.len(), 1, "no further tries until someone acts");

    // The organization puts the right key on the definition: the connection is re-armed.
    let org = app.token(ORG, None, &[]).await;
    let fixed = app.put_definition(&org, "svc", &definition(&oidc, &good, "RS256", "rs-1")).await;
    assert!(fixed.status.is_success(), "{}", fixed.text);
    assert_eq!(app.get_connection(&org, id).await.body["status"], "configured");
    let found = lookup(&app, id, 0).await;
    found.assert_status(StatusCode::OK);
    assert!(found.body["token"]["access_token"].is_string());
    let seen = assertions(&oidc).await;
    assert_eq!((seen.len(), &seen[1]["status"]), (2, &json!(200)), "{seen:?}");
}

#[tokio::test]
async fn keys_that_do_not_parse_for_their_algorithm_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let (rsa, _) = key_pair("RS256");
    let oidc = server(json!({}), 3600).await;
    let refused = app.put_definition(&org, "svc", &definition(&oidc, &rsa, "ES256", "k")).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["inputs.privateKey.default"]);
    let bad_alg = app.put_definition(&org, "svc", &definition(&oidc, &rsa, "HS256", "k")).await;
    assert_eq!(bad_alg.error_fields(), ["inputs.algorithm.default"]);

    // A key the connection sets itself is checked when it is written too.
    let mut def = definition(&oidc, &rsa, "RS256", "k");
    def["inputs"]["privateKey"] = json!({"type": "password", "visibility": "embedded"});
    app.put_definition(&org, "svc", &def).await.assert_status(StatusCode::CREATED);
    let garbage = "-----BEGIN PRIVATE KEY-----\nbm90LWEta2V5LXBsYW50ZWQ=\n-----END PRIVATE KEY-----\n";
    let body = json!({"definition": "svc", "scope": "organization", "values": {"privateKey": garbage}});
    let created = app.create_connection(&org, &body).await;
    created.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(created.error_fields(), ["values.privateKey"]);
    for reply in [&refused, &created] {
        assert!(!reply.text.contains("bm90LWEta2V5") && !reply.text.contains("MII"), "{}", reply.text);
    }
    assert!(assertions(&oidc).await.is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_new_algorithm_is_checked_against_the_key_it_keeps() {
    let app = TestApp::spawn().await;
    let org = app.token(ORG, None, &[]).await;
    let (rsa, _) = key_pair("RS256");
    let (ec, ec_public) = key_pair("ES256");
    let oidc = server(json!({"ec-1": ec_public}), 3600).await;
    app.put_definition(&org, "svc", &definition(&oidc, &rsa, "RS256", "k")).await.assert_status(StatusCode::CREATED);

    // A re-PUT that keeps the stored RSA key cannot switch to ES256.
    let mut kept = definition(&oidc, &rsa, "ES256", "k");
    kept["inputs"]["privateKey"]["default"] = json!({"set": true});
    let refused = app.put_definition(&org, "svc", &kept).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), ["inputs.algorithm.default"]);
    // Keeping the key and its algorithm is fine; so is a new key with the new algorithm.
    kept["inputs"]["algorithm"]["default"] = json!("RS256");
    app.put_definition(&org, "svc", &kept).await.assert_status(StatusCode::OK);

    // A connection that inherits the definition's key cannot switch either.
    let created = app.create_connection(&org, &json!({"definition": "svc", "scope": "organization"})).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    let es256 = json!({"values": {"algorithm": "ES256"}});
    let inherited = app.patch_connection(&org, id, &es256, None).await;
    inherited.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(inherited.error_fields(), ["values.algorithm"]);

    // Nor one that keeps a key of its own; sending a key that fits is accepted.
    let mut own = definition(&oidc, &rsa, "RS256", "ec-1");
    own["inputs"]["privateKey"] = json!({"type": "password", "visibility": "embedded"});
    app.put_definition(&org, "own", &own).await.assert_status(StatusCode::CREATED);
    let body = json!({"definition": "own", "scope": "organization", "values": {"privateKey": rsa}});
    let created = app.create_connection(&org, &body).await;
    created.assert_status(StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap();
    let kept_own = app.patch_connection(&org, id, &es256, None).await;
    kept_own.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(kept_own.error_fields(), ["values.algorithm"]);
    let both = json!({"values": {"algorithm": "ES256", "privateKey": ec}});
    app.patch_connection(&org, id, &both, None).await.assert_status(StatusCode::OK);
    for reply in [&refused, &inherited, &kept_own] {
        assert!(!reply.text.contains("PRIVATE KEY") && !reply.text.contains("MII"), "{}", reply.text);
    }
}

#[tokio::test]
async fn disconnect_drops_the_token_and_revokes_it() {
    // The binary's revoker sends the revocation (under either transport).
    let app = TestApp::spawn_binary(&Backend::fresh().await, &random_secret()).await;
    let (private, public) = key_pair("ES256");
    let oidc = server(json!({"ec-1": public}), 3600).await;
    let created = connect(&app, &definition(&oidc, &private, "ES256", "ec-1")).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let token = lookup(&app, &id, 0).await.body["token"]["access_token"].as_str().unwrap().to_owned();
    let org = app.token(ORG, None, &[]).await;
    let cut = app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None).await;
    cut.assert_status(StatusCode::OK);
    assert_eq!(cut.body["status"], "disconnected");
    let refused = lookup(&app, &id, 0).await;
    refused.assert_problem(StatusCode::CONFLICT);
    assert_eq!(refused.problem_type(), "urn:latchkey:problem:connection-disconnected");
    // The binary revokes by itself over the embedded backend; on AWS the `token-revoke` function
    // does, on the `Connection Disconnected` event (tests/api/lambda_handlers.rs runs it).
    if !crate::harness::aws_backend() {
        eventually(Duration::from_secs(20), "the token revoked at the provider", || async {
            oidc.introspect(&token).await["active"] == false
        })
        .await;
    }
}

/// A browser without JavaScript: follows no redirect, keeps cookies by name.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Browser {
    async fn send(&mut self, req: reqwest::RequestBuilder) -> (StatusCode, String, String) {
        let cookie: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let res = req.header(COOKIE, cookie.join("; ")).send().await.unwrap();
        for set in res.headers().get_all(SET_COOKIE) {
            let (name, value) = set.to_str().unwrap().split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.retain(|(k, _)| k != name.trim());
            self.cookies.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let location = res.headers().get(LOCATION).map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
        (res.status(), location, res.text().await.unwrap())
    }
}

#[tokio::test]
async fn the_connect_page_shows_a_form_and_connecting_through_it_obtains_a_token() {
    let app = TestApp::spawn().await;
    let (private, public) = key_pair("RS256");
    let oidc = server(json!({"rs-1": public}), 3600).await;
    let org = app.token(ORG, None, &[]).await;
    // The customer names the account the service account acts for (RFC 7523 `sub`).
    let mut def = definition(&oidc, &private, "RS256", "rs-1");
    def["inputs"]["subject"] = json!({"type": "string", "label": "Your account", "visibility": "customer"});
    app.put_definition(&org, "svc", &def).await.assert_status(StatusCode::CREATED);
    let session = json!({"customer": "c-1", "definitions": ["svc"]});
    let link = app.request(Method::POST, "/v1/connect/sessions", Some(&org), Some(&session)).await;
    link.assert_status(StatusCode::CREATED);

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap();
    let mut browser = Browser { client, base: app.url(""), cookies: Vec::new() };
    let (status, to, _) = browser.send(browser.client.get(link.body["url"].as_str().unwrap())).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _, html) = browser.send(browser.client.get(format!("{}{to}", browser.base))).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("form class=\"values-form\" id=\"new-svc\""), "a form, not a redirect: {html}");
    assert!(html.contains("name=\"value.subject\""), "{html}");
    assert!(!html.contains("privateKey") && !html.contains("PRIVATE KEY"), "organization settings stay off the page");
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = html[at..at + html[at..].find('"').unwrap()].to_owned();

    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", csrf.as_str()), ("definition", "svc"), ("value.subject", "user-42@acme.example")])
        .finish();
    let post = browser
        .client
        .post(format!("{}{to}/values", browser.base))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form);
    let (status, done, html) = browser.send(post).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let cid = done.split("connected=").nth(1).unwrap_or_else(|| panic!("{done}")).to_owned();
    let seen = assertions(&oidc).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["assertion"]["sub"], "user-42@acme.example", "the customer's subject was asserted");
    let found = lookup(&app, &cid, 60).await;
    found.assert_status(StatusCode::OK);
    assert!(found.body["token"]["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(assertions(&oidc).await.len(), 1, "the token obtained at connect is the one looked up");
}

/// The Lambda sample (`events/connections-api/put-jwt-bearer-definition.json`) through the
/// connections-api handler's router, as `cargo lambda invoke` sends it.
#[tokio::test]
async fn the_lambda_sample_defines_a_service_account_whose_key_is_never_read_back() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/connections-api/put-jwt-bearer-definition.json");
    let raw = std::fs::read_to_string(path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = latchkey::config::Components::embedded(dir.path(), latchkey::service::ServiceOptions::default()).unwrap();
    let secret = secrecy::SecretString::from("latchkey-events-dev-secret-not-for-production");
    let router = latchkey::http::router_for(
        latchkey::http::Surface::ConnectionsApi,
        app.router_state(latchkey::http::auth::Verifier::hs256(&secret).unwrap()),
    );
    let req = lambda_http::request::from_str(&raw).expect("an API Gateway event");
    let res = router.oneshot(req).await.unwrap();
    let status = res.status();
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["auth"], "oauth2_jwt_bearer");
    assert_eq!(body["inputs"]["privateKey"]["default"], json!({"set": true}));
    assert_eq!(body["inputs"]["algorithm"]["default"], "ES256");
    assert!(!body.to_string().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_private_key_set_on_the_connection_is_never_returned_by_a_lookup() {
    let app = TestApp::spawn().await;
    let (private, public) = key_pair("RS256");
    let oidc = server(json!({"rs-1": public}), 3600).await;
    // One connection per service account: the key is the connection's own, not a default.
    let mut def = definition(&oidc, &private, "RS256", "rs-1");
    def["inputs"]["privateKey"] = json!({"type": "password", "required": true});
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "svc", &def).await.assert_status(StatusCode::CREATED);
    let created = app
        .create_connection(
            &org,
            &json!({"definition": "svc", "scope": "organization", "values": {"privateKey": private}}),
        )
        .await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "configured", "{}", created.text);
    let id = created.body["id"].as_str().unwrap();
    let found = lookup(&app, id, 60).await;
    found.assert_status(StatusCode::OK);
    assert!(found.body["token"]["access_token"].is_string(), "{}", found.text);
    assert!(!found.text.contains("PRIVATE KEY"), "the key stays inside Latchkey: {}", found.text);
    assert!(found.body["fields"]["secret"].get("privateKey").is_none(), "{}", found.text);
}

//! Every caller's bearer token is verified by Latchkey itself (issue 12, items 2 and 3): RS256 and
//! ES256 tokens against a JWKS issuer (a small OpenID Connect discovery + JWK Set server on
//! loopback, in this process), HS256 only with a local secret of 32 bytes or more; nothing is
//! trusted because API Gateway's authorizer claims say so; `token-lookup` can require a runtime
//! token in its payload.
//!
//! Through the real `latchkey serve` binary (whatever `LATCHKEY_TEST_TRANSPORT` says: the
//! in-process transport ignores the issuer settings), through the `connections-api` router as
//! the function builds it from its configuration, fed API Gateway payload 2.0 events, and through
//! the `token-lookup` handler. Keys are fixed test keys (`tests/api/jwt/`, never used
//! elsewhere).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::harness::{Backend, TestApp, random_secret};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey::config::{BackendKind, Components, Settings};
use latchkey::http::Surface;
use latchkey::http::auth::Verifier;
use latchkey::service::ServiceOptions;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

const AUDIENCE: &str = "latchkey-api";
const ORG: &str = "acme";
/// The secret the sample events' HS256 tokens are signed with (events/README.md).
const EVENTS_SECRET: &str = "latchkey-events-dev-secret-not-for-production";

// --- Keys and tokens --------------------------------------------------------------------------

/// A signing key of the test issuer, and its public JWK as the issuer publishes it.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("a public JWK of the test key");
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Self { kid: kid.to_owned(), alg, encoding, jwk: serde_json::to_value(jwk).unwrap() }
    }

    /// RS256, 2048 bits (PKCS#1 DER).
    fn rsa(kid: &str) -> Self {
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(include_bytes!("jwt/rsa-a.der")))
    }

    /// Another RS256 key: the issuer's next key, or nobody's.
    fn rsa_b(kid: &str) -> Self {
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(include_bytes!("jwt/rsa-b.der")))
    }

    /// ES256, P-256 (PKCS#8 DER).
    fn ec(kid: &str) -> Self {
        Self::new(kid, Algorithm::ES256, EncodingKey::from_ec_der(include_bytes!("jwt/ec-a.der")))
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a test token")
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// The claims of a valid token of `issuer`, with `extra` on top (`null` removes a claim).
fn claims(issuer: &str, extra: Value) -> Value {
    let mut c = json!({"iss": issuer, "aud": AUDIENCE, "org": ORG, "sub": "user-42", "iat": now(), "exp": now() + 600});
    for (k, v) in extra.as_object().expect("an object") {
        match v {
            Value::Null if k != "customer" => {
                c.as_object_mut().unwrap().remove(k);
            }
            v => c[k] = v.clone(),
        }
    }
    c
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`, RFC 7519 §6).
fn unsecured(claims: &Value) -> String {
    format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
}

/// An HS256 token signed with `secret`.
fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Tokens every verifier configured with the test issuer must refuse, by name; `rsa` is the
/// issuer's RS256 key (whose public JWK an attacker knows).
fn refused_tokens(issuer: &str, rsa: &TestKey) -> Vec<(&'static str, String)> {
    let valid = claims(issuer, json!({}));
    vec![
        ("alg none", unsecured(&valid)),
        // Algorithm confusion: the issuer's public key used as an HMAC secret.
        ("HS256 with the issuer's public key", hs256(rsa.jwk.to_string().as_bytes(), &valid)),
        ("HS256 with another secret", hs256(&[7u8; 48], &valid)),
        ("wrong issuer", rsa.sign(&claims("https://evil.example/", json!({})))),
        ("wrong audience", rsa.sign(&claims(issuer, json!({"aud": "someone-else"})))),
        ("no audience", rsa.sign(&claims(issuer, json!({"aud": null})))),
        ("no issuer", rsa.sign(&claims(issuer, json!({"iss": null})))),
        ("expired", rsa.sign(&claims(issuer, json!({"exp": now() - 300})))),
        ("no exp", rsa.sign(&claims(issuer, json!({"exp": null})))),
        ("not yet valid", rsa.sign(&claims(issuer, json!({"nbf": now() + 300})))),
        ("customer null", rsa.sign(&claims(issuer, json!({"customer": null})))),
        ("roles not a list", rsa.sign(&claims(issuer, json!({"roles": "runtime"})))),
        ("no org", rsa.sign(&claims(issuer, json!({"org": null})))),
        ("malformed", "not-a-jwt".to_owned()),
        ("malformed parts", "a.b.c".to_owned()),
        ("tampered", {
            let t = rsa.sign(&valid);
            let (head, sig) = t.rsplit_once('.').unwrap();
            let forged = claims(issuer, json!({"org": "umbrella"}));
            let head = head.split('.').next().unwrap();
            format!("{head}.{}.{sig}", b64url(forged.to_string().as_bytes()))
        }),
    ]
}

// --- The test issuer --------------------------------------------------------------------------

/// An OpenID Connect issuer on loopback: `/.well-known/openid-configuration` and its JWK Set,
/// counting the fetches of the set.
struct TestIssuer {
    url: String,
    published: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks.json"), "id_token_signing_alg_values_supported": ["RS256", "ES256"]});
        let (keys, fetches) = (published.clone(), jwks_fetches.clone());
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || {
                    let d = discovery.clone();
                    async move { axum::Json(d) }
                }),
            )
            .route(
                "/jwks.json",
                axum::routing::get(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let set = json!({"keys": keys.lock().unwrap().clone()});
                    async move { axum::Json(set) }
                }),
            );
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, published, jwks_fetches, server }
    }

    fn publish(&self, key: &TestKey) {
        self.published.lock().unwrap().push(key.jwk.clone());
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// --- latchkey serve ---------------------------------------------------------------------------

#[tokio::test]
async fn latchkey_serve_verifies_rs256_and_es256_tokens_of_the_issuer() {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&rsa, &ec]).await;
    let env = [("LATCHKEY_JWT_ISSUER", issuer.url.as_str()), ("LATCHKEY_JWT_AUDIENCE", "other-api, latchkey-api")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;

    // The organization (RS256) defines, its customer (ES256) connects, the runtime looks up.
    let org = rsa.sign(&claims(&issuer.url, json!({})));
    let definition = json!({"label": "Acme", "auth": "api_key",
        "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&org, "acme-api", &definition).await.assert_status(StatusCode::CREATED);
    assert_eq!(issuer.fetches(), 1, "the key set is fetched once, on the first token");
    let customer = ec.sign(&claims(&issuer.url, json!({"customer": "c-1"})));
    let created =
        app.create_connection(&customer, &json!({"definition": "acme-api", "values": {"apiKey": "sk_jwks_1"}})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["customer"], "c-1");
    let id = created.body["id"].as_str().unwrap();
    let runtime = rsa.sign(&claims(&issuer.url, json!({"roles": ["runtime"]})));
    let found = app.lookup(&runtime, id, &json!({})).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["fields"]["apiKey"], "sk_jwks_1");
    // `latchkey serve` keeps accepting its own HS256 tokens.
    app.list_definitions(&app.token(ORG, None, &[]).await).await.assert_status(StatusCode::OK);

    for (what, token) in refused_tokens(&issuer.url, &rsa) {
        let refused = app.list_definitions(&token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{what}: {}", refused.text);
        refused.assert_problem(StatusCode::UNAUTHORIZED);
    }
    assert_eq!(issuer.fetches(), 1, "known keys are not fetched again");

    // A key the set lacks: one refetch, then refused; another right after: no refetch.
    let stranger = TestKey::rsa_b("rsa-unknown");
    app.list_definitions(&stranger.sign(&claims(&issuer.url, json!({}))))
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(issuer.fetches(), 2, "one refetch for an unknown kid");
    let another = TestKey::rsa_b("rsa-unknown-2");
    app.list_definitions(&another.sign(&claims(&issuer.url, json!({})))).await.assert_problem(StatusCode::UNAUTHORIZED);
    assert_eq!(issuer.fetches(), 2, "unknown kids do not make every request refetch");
    app.list_definitions(&org).await.assert_status(StatusCode::OK);
}

/// `LATCHKEY_JWT_SECRET` under 32 bytes, or an issuer that is neither https nor loopback, stop
/// `latchkey serve` at start with a message naming the variable; the generated secret is long
/// enough.
#[tokio::test]
async fn latchkey_serve_refuses_a_short_secret_and_generates_a_long_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(crate::harness::BIN);
        cmd.args(args)
            .env_clear()
            .env("LATCHKEY_DATA_DIR", dir.path())
            .env("LATCHKEY_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null());
        async move { cmd.output().await.expect("run latchkey") }
    };
    let out = run(&["serve"], &[("LATCHKEY_JWT_SECRET", "too-short-secret")]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a short secret is refused at start");
    assert!(stderr.contains("LATCHKEY_JWT_SECRET") && stderr.contains("at least 32 bytes"), "{stderr}");
    assert!(!stderr.contains("too-short-secret"), "the secret is not echoed: {stderr}");

    let out =
        run(&["serve"], &[("LATCHKEY_JWT_ISSUER", "http://idp.example.com"), ("LATCHKEY_JWT_AUDIENCE", AUDIENCE)])
            .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("LATCHKEY_JWT_ISSUER"), "{stderr}");
    let out = run(&["serve"], &[("LATCHKEY_JWT_ISSUER", "https://idp.example.com/")]).await;
    assert!(!out.status.success(), "an issuer without an audience is refused");

    // The secret `latchkey serve` generates when none is set (`latchkey token` never generates).
    let data = dir.path().to_string_lossy().into_owned();
    let config = latchkey::config::Settings::from_vars(latchkey::config::BackendKind::Embedded, |name| {
        (name == "LATCHKEY_DATA_DIR").then(|| data.clone())
    })
    .unwrap();
    config.jwt_secret_or_generate().unwrap();
    let generated = std::fs::read_to_string(dir.path().join(latchkey::config::JWT_SECRET_FILE)).unwrap();
    assert!(generated.trim().len() >= 32, "the generated secret has {} bytes", generated.trim().len());
}

// --- The connections-api function -------------------------------------------------------------

fn sample(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `GET /v1/connections` as API Gateway passes it on: the bearer token (if any) and the
/// authorizer's claims (none when empty), as strings.
fn list_event(token: Option<&str>, authorizer: &[(&str, &str)]) -> String {
    let mut event: Value =
        serde_json::from_str(&sample("connections-api/list-connections-jwt-authorizer.json")).unwrap();
    let headers = event["headers"].as_object_mut().unwrap();
    headers.remove("authorization");
    if let Some(t) = token {
        headers.insert("authorization".into(), json!(format!("Bearer {t}")));
    }
    let context = event["requestContext"].as_object_mut().unwrap();
    context.remove("authorizer");
    if !authorizer.is_empty() {
        let claims: HashMap<&str, &str> = authorizer.iter().copied().collect();
        context.insert("authorizer".into(), json!({"jwt": {"claims": claims, "scopes": null}}));
    }
    event.to_string()
}

/// What `connections-api` builds from its environment.
fn function_config(vars: &[(&str, &str)]) -> Settings {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Settings::from_vars(BackendKind::Aws, |name| vars.get(name).cloned()).expect("a valid configuration")
}

async fn status(router: &axum::Router, event: &str) -> u16 {
    let req = lambda_http::request::from_str(event).expect("a valid API Gateway event");
    router.clone().oneshot(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn connections_api_verifies_bearer_tokens_against_the_issuer() {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&rsa, &ec]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    // As deployed: the issuer and audience of the template's JwtIssuer/JwtAudience, no secret.
    let config = function_config(&[("LATCHKEY_JWT_ISSUER", &issuer.url), ("LATCHKEY_JWT_AUDIENCE", AUDIENCE)]);
    let router = latchkey::lambda::http_router(&app, &config, Surface::ConnectionsApi).unwrap();

    let org_token = rsa.sign(&claims(&issuer.url, json!({})));
    let customer_token = ec.sign(&claims(&issuer.url, json!({"customer": "c-1"})));
    // With the claims API Gateway's authorizer adds, and without (a direct invoke).
    assert_eq!(status(&router, &list_event(Some(&org_token), &[("org", ORG)])).await, 200);
    assert_eq!(status(&router, &list_event(Some(&org_token), &[])).await, 200);
    let c1 = [("org", ORG), ("customer", "c-1"), ("iss", issuer.url.as_str())];
    assert_eq!(status(&router, &list_event(Some(&customer_token), &c1)).await, 200);
    assert_eq!(issuer.fetches(), 1);

    // The issue's attack: a hand-written event with a victim's claims and the runtime role.
    assert_eq!(status(&router, &sample("connections-api/forged-authorizer-claims.json")).await, 401);
    let victim = [("org", ORG), ("roles", "[runtime]")];
    assert_eq!(status(&router, &list_event(None, &victim)).await, 401);
    // Claims that disagree with the verified token: refused, never preferred.
    let umbrella = [("org", "umbrella")];
    assert_eq!(status(&router, &list_event(Some(&org_token), &umbrella)).await, 401);
    assert_eq!(status(&router, &list_event(Some(&customer_token), &[("org", ORG)])).await, 401);
    // HS256, even with the events' secret: no secret is configured here (algorithm confusion).
    let hs = hs256(EVENTS_SECRET.as_bytes(), &json!({"org": ORG, "exp": now() + 600}));
    assert_eq!(status(&router, &list_event(Some(&hs), &[("org", ORG)])).await, 401);
    for (what, token) in refused_tokens(&issuer.url, &rsa) {
        assert_eq!(status(&router, &list_event(Some(&token), &[("org", ORG)])).await, 401, "{what}");
    }
    assert_eq!(issuer.fetches(), 1);

    // The issuer rotates: a token of its new key refetches the set once and passes; an
    // unknown kid right after does not refetch.
    let next = TestKey::rsa_b("rsa-2");
    issuer.publish(&next);
    let rotated = next.sign(&claims(&issuer.url, json!({})));
    assert_eq!(status(&router, &list_event(Some(&rotated), &[])).await, 200);
    assert_eq!(issuer.fetches(), 2);
    let unknown = TestKey::rsa_b("rsa-3").sign(&claims(&issuer.url, json!({})));
    assert_eq!(status(&router, &list_event(Some(&unknown), &[])).await, 401);
    assert_eq!(issuer.fetches(), 2, "refetches for unknown kids are rate-limited");
}

#[tokio::test]
async fn a_function_without_an_issuer_or_secret_refuses_every_token() {
    let rsa = TestKey::rsa("rsa-1");
    let issuer = TestIssuer::start(&[&rsa]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let router = latchkey::lambda::http_router(&app, &function_config(&[]), Surface::ConnectionsApi).unwrap();
    let token = rsa.sign(&claims(&issuer.url, json!({})));
    let hs = hs256(EVENTS_SECRET.as_bytes(), &json!({"org": ORG, "exp": now() + 600}));
    for t in [&token, &hs] {
        assert_eq!(status(&router, &list_event(Some(t), &[("org", ORG)])).await, 401);
    }
    assert_eq!(status(&router, &sample("connections-api/healthz.json")).await, 200);
    assert_eq!(issuer.fetches(), 0);
}

/// An issuer that cannot be reached: 503 (the token is neither accepted nor called invalid).
#[tokio::test]
async fn an_unreachable_issuer_answers_503() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let config = function_config(&[("LATCHKEY_JWT_ISSUER", &url), ("LATCHKEY_JWT_AUDIENCE", AUDIENCE)]);
    let router = latchkey::lambda::http_router(&app, &config, Surface::ConnectionsApi).unwrap();
    let token = TestKey::rsa("rsa-1").sign(&claims(&url, json!({})));
    let req = lambda_http::request::from_str(&list_event(Some(&token), &[])).unwrap();
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["type"], "urn:latchkey:problem:unavailable");
}

// --- The token-lookup function ----------------------------------------------------------------

/// A connection of customer `c-1` of `acme`, made with the sample events.
async fn planted_connection(app: &Components) -> String {
    let router = latchkey::http::router_for(
        Surface::ConnectionsApi,
        app.router_state(Verifier::hs256(&SecretString::from(EVENTS_SECRET)).unwrap()),
    );
    for name in ["connections-api/put-definition.json", "connections-api/create-connection.json"] {
        let req = lambda_http::request::from_str(&sample(name)).unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status().as_u16(), 201, "{name}");
        if name.ends_with("create-connection.json") {
            let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
            return body["id"].as_str().unwrap().to_owned();
        }
    }
    unreachable!()
}

#[tokio::test]
async fn token_lookup_in_token_mode_requires_a_runtime_token_of_the_payloads_org() {
    let rsa = TestKey::rsa("rsa-1");
    let ec = TestKey::ec("ec-1");
    let issuer = TestIssuer::start(&[&rsa, &ec]).await;
    let dir = tempfile::tempdir().unwrap();
    let app = Components::embedded(dir.path(), ServiceOptions::default()).unwrap();
    let id = planted_connection(&app).await;
    let config = function_config(&[
        ("LATCHKEY_LOOKUP_AUTH", "token"),
        ("LATCHKEY_JWT_ISSUER", &issuer.url),
        ("LATCHKEY_JWT_AUDIENCE", AUDIENCE),
    ]);
    let verifier = latchkey::lambda::lookup_verifier(&config).unwrap().expect("token mode has a verifier");
    let lookup = |payload: Value| {
        let (service, verifier) = (app.service.clone(), &verifier);
        async move { latchkey::lambda::handle_lookup_with(&service, Some(verifier), payload).await }
    };
    let runtime = |extra: Value| {
        let mut c = claims(&issuer.url, json!({"roles": ["runtime"]}));
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        rsa.sign(&c)
    };
    let error = |r: Result<Value, lambda_http::lambda_runtime::Diagnostic>| r.expect_err("refused").error_type;

    let found = lookup(json!({"org": ORG, "connection_id": id, "token": runtime(json!({}))})).await.unwrap();
    assert_eq!(found["fields"]["apiKey"], "sk_test_sample_value");
    // The org may be left to the token; a customer's runtime token reaches its own connections.
    let es = ec.sign(&claims(&issuer.url, json!({"roles": ["runtime"], "customer": "c-1"})));
    assert!(lookup(json!({"connection_id": id, "token": es})).await.is_ok());

    assert_eq!(error(lookup(json!({"org": ORG, "connection_id": id})).await), "Unauthorized", "no token");
    for (what, token) in refused_tokens(&issuer.url, &rsa) {
        let r = lookup(json!({"org": ORG, "connection_id": id, "token": token})).await;
        assert_eq!(error(r), "Unauthorized", "{what}");
    }
    let other_org = runtime(json!({"org": "umbrella"}));
    assert_eq!(error(lookup(json!({"org": ORG, "connection_id": id, "token": other_org})).await), "Forbidden");
    let no_role = rsa.sign(&claims(&issuer.url, json!({})));
    assert_eq!(error(lookup(json!({"org": ORG, "connection_id": id, "token": no_role})).await), "Forbidden");
    let other_customer = runtime(json!({"customer": "c-2"}));
    let r = lookup(json!({"org": ORG, "connection_id": id, "token": other_customer})).await;
    assert_eq!(error(r), "ConnectionNotFound", "a customer's token reaches only that customer's connections");
    // report_error is authorized the same way.
    let report = json!({"action": "report_error", "org": "umbrella", "connection_id": id, "message": "401",
        "token": runtime(json!({"org": "umbrella"}))});
    assert_eq!(error(lookup(report).await), "ConnectionNotFound");

    // IAM mode (the default) accepts the field and ignores it.
    let iam = latchkey::lambda::handle_lookup(
        &app.service,
        json!({"org": ORG, "connection_id": id, "token": "not-even-a-jwt"}),
    )
    .await;
    assert_eq!(iam.unwrap()["fields"]["apiKey"], "sk_test_sample_value");
    assert!(latchkey::lambda::lookup_verifier(&function_config(&[])).unwrap().is_none(), "iam by default");
    // Token mode with nothing to verify tokens with does not start.
    let nothing = function_config(&[("LATCHKEY_LOOKUP_AUTH", "token")]);
    assert!(latchkey::lambda::lookup_verifier(&nothing).is_err());
}

// --- Deployment and documentation ---------------------------------------------------------------

/// The deployed functions get the issuer and audience the API Gateway authorizer checks, and the
/// lookup mode, from the template's parameters.
#[test]
fn the_template_passes_the_issuer_audience_and_lookup_mode_to_the_functions() {
    let template: serde_yaml::Value =
        serde_yaml::from_str(include_str!("../../infra/template.yaml")).expect("infra/template.yaml is YAML");
    let env = &template["Globals"]["Function"]["Environment"]["Variables"];
    let tagged = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::Tagged(t) => format!("{} {}", t.tag, serde_yaml::to_string(&t.value).unwrap().trim()),
        other => format!("{other:?}"),
    };
    assert_eq!(tagged(&env["LATCHKEY_JWT_ISSUER"]), "!Ref JwtIssuer");
    assert_eq!(tagged(&env["LATCHKEY_JWT_AUDIENCE"]), "!Join - ','\n- !Ref JwtAudience");
    assert_eq!(tagged(&env["LATCHKEY_LOOKUP_AUTH"]), "!Ref LookupAuth");
    assert!(env.get("LATCHKEY_JWT_SECRET").is_none());
    let lookup = &template["Parameters"]["LookupAuth"];
    assert_eq!(lookup["Default"], "iam");
    assert_eq!(lookup["AllowedValues"], serde_yaml::from_str::<serde_yaml::Value>("[iam, token]").unwrap());
}

/// The OpenAPI document says which tokens the API accepts.
#[test]
fn the_openapi_security_scheme_describes_the_accepted_tokens() {
    let doc: Value = serde_json::from_str(latchkey::http::OPENAPI_JSON).unwrap();
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")));
    let description = scheme["description"].as_str().unwrap();
    for needle in ["RS256", "ES256", "JWKS", "LATCHKEY_JWT_ISSUER", "HS256", "32 bytes", "nbf", "customer"] {
        assert!(description.contains(needle), "the scheme's description names {needle}");
    }
}

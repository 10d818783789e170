//! `oauth1` connections (SPEC section 12, RFC 5849 OAuth 1.0a three-legged) through `latchkey
//! serve`, against an OAuth 1.0a provider built on oauthlib's provider endpoints
//! (`tests/oauth/oauth1_server.py`): it checks every signature (HMAC-SHA1, HMAC-SHA256, RSA-SHA1,
//! PLAINTEXT), the callback and verifier, and the signed requests an execution makes with what a
//! lookup returns. Those requests are signed here with `oauth1-request`, the crate Latchkey uses.

use oauth1_request::signature_method::{Sign, SignatureMethod};
use oauth1_request::{Builder, Credentials, HmacSha1};
use reqwest::{Method, StatusCode};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};
use support::oauth1::{Oauth1Server, percent_encode, server};

use crate::harness::{Backend, TestApp, random_hex, random_secret};

const ORG: &str = "acme";
const CUSTOMER: &str = "c-1";

/// A browser that does not follow redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// A consumer registered at the provider for `method`: (key, secret, private key PEM of RSA-SHA1).
async fn consumer(provider: &Oauth1Server, method: &str) -> (String, String, Option<String>) {
    let key = format!("consumer{}", random_hex());
    // Every character RFC 5849's encoding (section 3.6) treats differently from a form's.
    let secret = format!("s&c+r%t ~/{}", random_hex());
    let (private, public) = if method == "RSA-SHA1" {
        let (private, public) = crate::jwt_bearer::key_pair("RS256");
        (Some(private), Some(public))
    } else {
        (None, None)
    };
    provider.register(&key, &secret, public.as_deref()).await;
    (key, secret, private)
}

/// An `oauth1` definition against `provider`, its consumer settings organization defaults. The
/// request token URL has a query (signed as request parameters, section 3.4.1.3.1) whose name
/// and values are encoded, `+` for a space among them.
fn definition(provider: &Oauth1Server, method: &str, key: &str, secret: &str, private: Option<&str>) -> Value {
    let request_token = format!("{}?x%40y=a+b&scope=r%20w", provider.request_token_endpoint());
    let mut inputs = json!({
        "requestTokenUrl": {"type": "url", "default": request_token},
        "authorizeUrl": {"type": "url", "default": provider.authorize_endpoint()},
        "accessTokenUrl": {"type": "url", "default": provider.access_token_endpoint()},
        "consumerKey": {"type": "string", "default": key},
        "consumerSecret": {"type": "password", "default": secret},
        "signatureMethod": {"type": "string", "default": method},
    });
    if let Some(pem) = private {
        inputs["privateKey"] = json!({"type": "password", "default": pem});
    }
    json!({"label": "Legacy API", "auth": "oauth1", "inputs": inputs})
}

/// A pending connection of definition `def` for [`CUSTOMER`]: its id.
async fn pending(app: &TestApp, org: &str, def: &str) -> String {
    let created =
        app.create_connection(org, &json!({"definition": def, "scope": "customer", "customer": CUSTOMER})).await;
    created.assert_status(StatusCode::CREATED);
    assert_eq!(created.body["status"], "pending", "{}", created.text);
    created.body["id"].as_str().unwrap().to_owned()
}

/// `POST /v1/connections/{id}/authorize`, then the user approves at the provider: the callback
/// URL the provider sends the browser back to.
async fn authorize_and_approve(app: &TestApp, provider: &Oauth1Server, org: &str, id: &str) -> String {
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(org), None).await;
    reply.assert_status(StatusCode::OK);
    let url = reply.body["authorize_url"].as_str().expect("authorize_url");
    assert!(url.starts_with(&provider.authorize_endpoint()), "{url}");
    assert!(url.contains("oauth_token="), "{url}");
    let back = provider.approve(url).await;
    assert!(back.starts_with(&format!("{}/v1/oauth/callback?", app.address)), "{back}");
    assert!(back.contains("oauth_verifier="), "{back}");
    back
}

/// The browser arriving at Latchkey's callback: (status, body).
async fn visit(url: &str) -> (StatusCode, String) {
    let res = browser().get(url).send().await.unwrap();
    (res.status(), res.text().await.unwrap_or_default())
}

/// An authorized connection of a fresh consumer signing with `method`, its definition at the
/// consumer's defaults.
struct Authorized {
    id: String,
    key: String,
    secret: String,
    /// The callback URL the provider sent the browser back to (already visited).
    callback: String,
}

/// Defines a fresh consumer of `method`, creates a connection and authorizes it: the four setup
/// steps of every test of a working connection.
async fn authorized_connection(app: &TestApp, provider: &Oauth1Server, org: &str, method: &str) -> Authorized {
    let (key, secret, private) = consumer(provider, method).await;
    let def = format!("legacy-{}-{}", method.to_lowercase(), &random_hex()[..8]);
    let put = app.put_definition(org, &def, &definition(provider, method, &key, &secret, private.as_deref())).await;
    put.assert_status(StatusCode::CREATED);
    let id = pending(app, org, &def).await;
    let callback = authorize_and_approve(app, provider, org, &id).await;
    let (status, page) = visit(&callback).await;
    assert_eq!(status, StatusCode::OK, "{method}: {page}");
    Authorized { id, key, secret, callback }
}

/// The methods `oauth1-request` lacks (HMAC-SHA256, RSA-SHA1) or writes unencoded into the
/// header (PLAINTEXT), through its `SignatureMethod` trait: what an execution writes in a few
/// lines, as Latchkey itself does.
#[derive(Clone)]
enum Execution {
    HmacSha256,
    Plaintext,
    RsaSha1(Box<RsaPrivateKey>),
}

/// [`Execution`] with its key, collecting the signature base string.
struct ExecutionSign {
    method: Execution,
    /// `consumer_secret&token_secret`, encoded (HMAC's key, PLAINTEXT's signature).
    key: String,
    base: String,
}

impl SignatureMethod for Execution {
    type Sign = ExecutionSign;

    fn sign_with(self, client_secret: &str, token_secret: Option<&str>) -> ExecutionSign {
        let key = format!("{}&{}", percent_encode(client_secret), percent_encode(token_secret.unwrap_or_default()));
        ExecutionSign { method: self, key, base: String::new() }
    }
}

impl Sign for ExecutionSign {
    type Signature = String;

    fn get_signature_method_name(&self) -> &'static str {
        match self.method {
            Execution::HmacSha256 => "HMAC-SHA256",
            Execution::Plaintext => "PLAINTEXT",
            Execution::RsaSha1(_) => "RSA-SHA1",
        }
    }
    fn request_method(&mut self, method: &str) {
        self.base.push_str(&format!("{method}&"));
    }
    fn uri<T: std::fmt::Display>(&mut self, uri: T) {
        self.base.push_str(&format!("{uri}&"));
    }
    fn parameter<V: std::fmt::Display>(&mut self, key: &str, value: V) {
        self.base.push_str(&format!("{key}%3D{value}"));
    }
    fn delimiter(&mut self) {
        self.base.push_str("%26");
    }
    fn end(self) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        match self.method {
            Execution::HmacSha256 => {
                use hmac::Mac;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.as_bytes()).unwrap();
                mac.update(self.base.as_bytes());
                percent_encode(&STANDARD.encode(mac.finalize().into_bytes()))
            }
            Execution::Plaintext => percent_encode(&self.key),
            Execution::RsaSha1(key) => {
                use rsa::signature::{SignatureEncoding, Signer};
                let signature = rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(*key).sign(self.base.as_bytes());
                percent_encode(&STANDARD.encode(signature.to_vec()))
            }
        }
    }
}

/// The `Authorization` header of `GET uri` signed with a lookup's `oauth1` member.
fn sign_get(uri: &str, creds: &Value) -> String {
    let s = |k: &str| creds[k].as_str().unwrap_or_else(|| panic!("lookup oauth1.{k}: {creds}"));
    let token = oauth1_request::Token::new(
        Credentials::new(s("consumerKey"), s("consumerSecret")),
        Credentials::new(s("token"), s("tokenSecret")),
    );
    let ours = |method| Builder::<_, _, &str>::with_token(token, method).get(uri, &());
    match s("signatureMethod") {
        "HMAC-SHA1" => Builder::<_, _, &str>::with_token(token, HmacSha1::new()).get(uri, &()),
        "HMAC-SHA256" => ours(Execution::HmacSha256),
        "PLAINTEXT" => ours(Execution::Plaintext),
        "RSA-SHA1" => {
            let key = RsaPrivateKey::from_pkcs8_pem(s("privateKey")).expect("the lookup's privateKey parses");
            ours(Execution::RsaSha1(Box::new(key)))
        }
        other => panic!("signature method {other}"),
    }
}

/// `GET` the provider's protected resource with `authorization`: (status, body).
async fn resource(provider: &Oauth1Server, authorization: &str) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .get(provider.resource_endpoint())
        .header(reqwest::header::AUTHORIZATION, authorization)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_signature_method_authorizes_and_its_lookup_signs_requests_the_provider_accepts() {
    let app = TestApp::spawn().await;
    let provider = server();
    let org = app.token(ORG, None, &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    for method in ["HMAC-SHA1", "HMAC-SHA256", "RSA-SHA1", "PLAINTEXT"] {
        let Authorized { id, key, secret, .. } = authorized_connection(&app, provider, &org, method).await;
        let read = app.get_connection(&org, &id).await;
        assert_eq!(read.body["status"], "configured", "{method}: {}", read.text);

        let looked = app.lookup(&runtime, &id, &json!({})).await;
        looked.assert_status(StatusCode::OK);
        let creds = &looked.body["oauth1"];
        assert_eq!(creds["consumerKey"], key.as_str(), "{method}");
        let rsa = method == "RSA-SHA1";
        assert_eq!(creds["consumerSecret"], if rsa { "" } else { secret.as_str() }, "{method}");
        assert_eq!(creds["signatureMethod"], method);
        assert_eq!(creds["privateKey"].is_string(), rsa, "{method}: the RSA key only for RSA-SHA1");
        assert_eq!(looked.body["token"]["access_token"], creds["token"], "{method}");
        assert_eq!(looked.body["token"]["token_type"], "OAuth1");
        assert!(looked.body["token"]["expires_at"].is_null(), "OAuth 1.0a tokens do not expire");
        assert!(looked.body["fields"].get("consumerSecret").is_none(), "{method}: {}", looked.body["fields"]);

        let (status, answer) = resource(provider, &sign_get(&provider.resource_endpoint(), creds)).await;
        assert_eq!(status, StatusCode::OK, "{method}: the provider accepts the execution's signature: {answer}");
        assert_eq!(answer["token"], creds["token"]);
        assert_eq!(answer["method"], method);
        assert_eq!(app.get_connection(&org, &id).await.body["status"], "active", "{method}");
    }
    // The token secret matters: a request signed with another is refused.
    let Authorized { id, .. } = authorized_connection(&app, provider, &org, "HMAC-SHA1").await;
    let mut creds = app.lookup(&runtime, &id, &json!({})).await.body["oauth1"].clone();
    creds["tokenSecret"] = json!("not-the-token-secret");
    let (status, _) = resource(provider, &sign_get(&provider.resource_endpoint(), &creds)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let provider = server();
    let org = app.token(ORG, None, &[]).await;
    let Authorized { id, key, callback, .. } = authorized_connection(&app, provider, &org, "HMAC-SHA256").await;
    let before = app.get_connection(&org, &id).await.body;
    let issued = provider.access_tokens_issued(&key).await;
    assert_eq!(issued, 1);

    let (status, page) = visit(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("invalid, expired or was already used"), "{page}");
    // A verifier for a request token Latchkey never issued is refused the same way.
    let forged = format!("{}/v1/oauth/callback?oauth_token=never-issued&oauth_verifier=x", app.address);
    assert_eq!(visit(&forged).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(app.get_connection(&org, &id).await.body, before, "nothing changed");
    assert_eq!(provider.access_tokens_issued(&key).await, issued, "the provider was not asked again");
}

/// The JSON log lines of `app` that are audit lines about connection `id`.
fn audit_lines(app: &TestApp, id: &str) -> Vec<Value> {
    app.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["audit"] == "credentials_read" && l["connection_id"] == id)
        .collect()
}

#[tokio::test]
async fn disconnect_deletes_the_tokens_and_says_the_provider_keeps_the_grant() {
    let env = [("LATCHKEY_LOG_FORMAT", "json")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let provider = server();
    let org = app.token(ORG, None, &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let Authorized { id, secret, .. } = authorized_connection(&app, provider, &org, "HMAC-SHA1").await;
    let creds = app.lookup(&runtime, &id, &json!({})).await.body["oauth1"].clone();
    // The lookup's audit line, like any credential read's, and no secret in any line.
    crate::harness::eventually(std::time::Duration::from_secs(10), "the lookup's audit line", || async {
        !audit_lines(&app, &id).is_empty()
    })
    .await;
    let audit = audit_lines(&app, &id);
    assert_eq!(
        (audit.len(), &audit[0]["principal"], &audit[0]["channel"], &audit[0]["customer"]),
        (1, &json!("runtime"), &json!("http"), &json!(CUSTOMER)),
        "{audit:?}"
    );
    let logs = app.logs();
    for secret in [secret.as_str(), creds["token"].as_str().unwrap(), creds["tokenSecret"].as_str().unwrap()] {
        assert!(!logs.contains(secret), "no consumer secret, token or token secret in the logs");
    }
    // Nothing is ever refreshed: no refresh token, no expiry.
    let forced = app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&org), None).await;
    forced.assert_problem(StatusCode::CONFLICT);

    let cut = app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&org), None).await;
    cut.assert_status(StatusCode::OK);
    assert_eq!(cut.body["status"], "disconnected");
    let refused = app.lookup(&runtime, &id, &json!({})).await;
    assert!(refused.problem_type().ends_with("disconnected"), "{}", refused.text);
    let logs = app.connection_logs(&org, &id).await;
    let entries = logs.body.as_array().expect("a list of log entries");
    let deleted = entries.iter().find(|e| e["message"].as_str().is_some_and(|m| m.contains("no standard revocation")));
    assert_eq!(deleted.map(|e| &e["type"]), Some(&json!("disconnected")), "not `revoked`: {}", logs.text);
    // RFC 5849 has no revocation: the provider still honours the token until the user revokes
    // it there, which is what the log line and the README say.
    assert_eq!(resource(provider, &sign_get(&provider.resource_endpoint(), &creds)).await.0, StatusCode::OK);
    // It can be authorized again, in place.
    visit(&authorize_and_approve(&app, provider, &org, &id).await).await;
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "configured");
}

#[tokio::test]
async fn a_wrong_consumer_secret_is_a_clear_error_and_nothing_is_pending() {
    let app = TestApp::spawn().await;
    let provider = server();
    let org = app.token(ORG, None, &[]).await;
    let (key, _, _) = consumer(provider, "HMAC-SHA1").await;
    let put =
        app.put_definition(&org, "legacy", &definition(provider, "HMAC-SHA1", &key, "not-the-secret", None)).await;
    put.assert_status(StatusCode::CREATED);
    let id = pending(&app, &org, "legacy").await;
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    reply.assert_problem(StatusCode::BAD_GATEWAY);
    assert!(reply.body["detail"].as_str().unwrap().contains("consumer_rejected"), "{}", reply.text);
    assert!(!reply.text.contains("not-the-secret"));
    let logs = app.connection_logs(&org, &id).await.text;
    assert!(logs.contains("check consumerKey, consumerSecret"), "{logs}");
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "pending");
}

#[tokio::test]
async fn definitions_and_values_are_checked_field_by_field() {
    let app = TestApp::spawn().await;
    let provider = server();
    let org = app.token(ORG, None, &[]).await;
    let mut body = definition(provider, "HMAC-SHA512", "k", "s", None);
    body["inputs"]["requestTokenUrl"]["default"] = json!("http://legacy.example.com/request_token");
    let bad = app.put_definition(&org, "legacy", &body).await;
    bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let fields = bad.error_fields();
    assert!(fields.contains(&"inputs.signatureMethod.default".to_owned()), "{fields:?}");
    assert!(fields.contains(&"inputs.requestTokenUrl.default".to_owned()), "{fields:?}");

    let pem = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleQ==\n-----END PRIVATE KEY-----\n";
    let rsa = app.put_definition(&org, "legacy", &definition(provider, "RSA-SHA1", "k", "", Some(pem))).await;
    rsa.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(rsa.error_fields(), vec!["inputs.privateKey.default".to_owned()]);
    assert!(!rsa.text.contains("c2VjcmV0"));

    // The well-known inputs are added, organization-only, with HMAC-SHA1 by default.
    let minimal = json!({"auth": "oauth1", "inputs": {
        "requestTokenUrl": {"type": "url", "default": provider.request_token_endpoint()},
        "authorizeUrl": {"type": "url", "default": provider.authorize_endpoint()},
        "accessTokenUrl": {"type": "url", "default": provider.access_token_endpoint()}}});
    let ok = app.put_definition(&org, "legacy", &minimal).await;
    ok.assert_status(StatusCode::CREATED);
    assert_eq!(ok.body["inputs"]["signatureMethod"]["default"], "HMAC-SHA1", "{}", ok.text);
    assert_eq!(ok.body["inputs"]["consumerSecret"]["type"], "password");
    assert_eq!(ok.body["inputs"]["consumerKey"]["visibility"], "organization");
    // Without a consumer key there is no connection: the field is named.
    let body = json!({"definition": "legacy", "scope": "customer", "customer": CUSTOMER});
    let reply = app.create_connection(&org, &body).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["values.consumerKey".to_owned()], "{}", reply.text);
    // A connection's own signature method is checked when it is written.
    let body = json!({"definition": "legacy", "scope": "customer", "customer": CUSTOMER,
                      "values": {"consumerKey": "k", "signatureMethod": "RSA-SHA512"}});
    let reply = app.create_connection(&org, &body).await;
    reply.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["values.signatureMethod".to_owned()], "{}", reply.text);
}

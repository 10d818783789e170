//! Real providers bend RFC 6749 (SPEC section 8): a table of provider behaviours, played by the
//! scripted provider `tests/oauth/quirks.mjs`, against `latchkey serve`. Each test is one kind of
//! behaviour; each of its rows asserts the connection's status and `error`, the connection's log,
//! the lookup, and how many calls reached the provider.
//!
//! Servers run with the refresh sweep every second, so "no further provider calls" covers the
//! sweep too (the in-process transport has no sweep: there it covers lookups and forced
//! refreshes). `LATCHKEY_TEST_BACKEND=aws` runs the same table on the aws backend.

use std::time::Duration;

use crate::harness::{Backend, Reply, TestApp, eventually, random_hex, random_secret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::quirks::{QuirkServer, query_param};

const ORG: &str = "acme";
const SUCCESS: &str = "http://localhost:3000/connected";
const FAILURE: &str = "http://localhost:3000/failed";
const CLIENT_ID: &str = "quirk-client";
const CLIENT_SECRET: &str = "quirk-client-secret";

const CONNECTION_ERROR: &str = "urn:latchkey:problem:connection-error";
const CONNECTION_PENDING: &str = "urn:latchkey:problem:connection-pending";
const TOKEN_EXPIRED: &str = "urn:latchkey:problem:token-expired";

/// What the connection's message says for each class (contract: "names who must act").
const CUSTOMER_MUST_AUTHORIZE: &str = "the customer must authorize the connection again";
const ORGANIZATION_MUST_UPDATE: &str = "the organization must update the definition";
const UNREADABLE: &str = "could not read the provider's answer";

/// A browser that does not follow redirects, so the test sees where Latchkey sends it.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// A plain token answer with fresh tokens, plus `extra` members (a `null` removes one).
fn token_answer(extra: Value) -> Value {
    let mut body = json!({"access_token": "{{access_token}}", "token_type": "Bearer", "expires_in": 3600,
        "refresh_token": "{{refresh_token}}", "scope": "read"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

/// The client secret a recorded token or revoke request carried (Basic auth, else the form).
fn sent_secret(request: &Value) -> Option<String> {
    request["basic"]["password"].as_str().or_else(|| request["form"]["client_secret"].as_str()).map(str::to_owned)
}

/// A definition against one quirk server. Every app setting is an organization input, so a
/// connection reads it from the definition unless it sets it itself.
#[derive(Clone)]
struct Def {
    auth: &'static str,
    authorize: String,
    token: String,
    revoke: String,
    scopes: String,
    secret: String,
    oauth: Option<Value>,
}

impl Def {
    fn of(q: &QuirkServer) -> Self {
        Def {
            auth: "oauth2_authorization_code",
            authorize: q.authorize_endpoint(),
            token: q.token_endpoint(),
            revoke: q.revoke_endpoint(),
            scopes: "read".to_owned(),
            secret: CLIENT_SECRET.to_owned(),
            oauth: None,
        }
    }

    fn json(&self) -> Value {
        let org = |kind: &str, default: &str| json!({"type": kind, "visibility": "organization", "default": default});
        let mut inputs = json!({
            "tokenUrl": org("url", &self.token),
            "clientId": org("string", CLIENT_ID),
            "clientSecret": org("password", &self.secret),
            "scopes": org("string", &self.scopes),
        });
        let mut def = json!({"label": "Quirky provider", "auth": self.auth});
        if self.auth == "oauth2_authorization_code" {
            inputs["authorizeUrl"] = org("url", &self.authorize);
            inputs["revokeUrl"] = org("url", &self.revoke);
            def["redirects"] = json!({"success_url": SUCCESS, "failure_url": FAILURE});
        }
        def["inputs"] = inputs;
        if let Some(oauth) = &self.oauth {
            def["oauth"] = oauth.clone();
        }
        def
    }
}

/// One server, an organization user (no runtime role) and a runtime principal.
struct Lab {
    app: TestApp,
    org: String,
    runtime: String,
}

async fn lab() -> Lab {
    let env = [("LATCHKEY_REFRESH_INTERVAL_SECS", "1")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let org = app.token(ORG, None, &[]).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    Lab { app, org, runtime }
}

impl Lab {
    async fn define(&self, key: &str, def: &Def) {
        let put = self.app.put_definition(&self.org, key, &def.json()).await;
        assert!(put.status.is_success(), "PUT definition {key}: {}", put.text);
    }

    /// A quirk server scripted by `config`, and definition `key` against it (shaped by `shape`).
    async fn provider(&self, key: &str, config: Value, shape: impl FnOnce(&mut Def)) -> QuirkServer {
        let q = QuirkServer::start(config).await;
        let mut def = Def::of(&q);
        shape(&mut def);
        self.define(key, &def).await;
        q
    }

    async fn create(&self, key: &str) -> String {
        let created = self.app.create_connection(&self.org, &json!({"definition": key, "customer": "c-1"})).await;
        created.assert_status(StatusCode::CREATED);
        created.body["id"].as_str().expect("an id").to_owned()
    }

    /// Runs an authorization of `id` at `q` as the user's browser would, and returns where the
    /// callback sends the browser (the success or failure redirect).
    async fn authorization(&self, q: &QuirkServer, id: &str) -> String {
        let reply =
            self.app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&self.org), None).await;
        reply.assert_status(StatusCode::OK);
        let url = reply.body["authorize_url"].as_str().expect("authorize_url");
        let back = q.authorize(url).await;
        assert!(back.starts_with(&format!("{}/v1/oauth/callback", self.app.address)), "{back}");
        let done = browser().get(&back).send().await.expect("GET the callback");
        let status = done.status();
        let location = done.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
        let body = done.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::FOUND, "the callback redirects: {body}");
        location.expect("a Location")
    }

    /// A new connection of `key`, authorized at `q` (the callback went to the success redirect).
    async fn authorized(&self, q: &QuirkServer, key: &str) -> String {
        let id = self.create(key).await;
        let location = self.authorization(q, &id).await;
        assert!(location.starts_with(SUCCESS), "authorized: {location}");
        assert_eq!(self.read(&id).await["status"], "configured");
        id
    }

    async fn read(&self, id: &str) -> Value {
        let read = self.app.get_connection(&self.org, id).await;
        read.assert_status(StatusCode::OK);
        read.body
    }

    async fn lookup(&self, id: &str, min_valid: u64) -> Reply {
        self.app.lookup(&self.runtime, id, &json!({"min_valid_seconds": min_valid})).await
    }

    /// The access token a lookup hands out, if it answers 200.
    async fn token_of(&self, id: &str) -> Option<String> {
        let found = self.lookup(id, 0).await;
        (found.status == StatusCode::OK)
            .then(|| found.body["token"]["access_token"].as_str().unwrap_or_default().to_owned())
    }

    /// `POST /v1/connections/{id}/disconnect` as the organization.
    async fn disconnect(&self, id: &str) -> Reply {
        self.app.request(Method::POST, &format!("/v1/connections/{id}/disconnect"), Some(&self.org), None).await
    }

    /// `POST /v1/connections/{id}/refresh` as the organization.
    async fn force_refresh(&self, id: &str) -> Reply {
        self.app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&self.org), None).await
    }

    /// The messages of the connection's log lines of type `kind`.
    async fn messages(&self, id: &str, kind: &str) -> Vec<String> {
        let logs = self.app.connection_logs(&self.org, id).await;
        logs.assert_status(StatusCode::OK);
        logs.body
            .as_array()
            .expect("a list of log lines")
            .iter()
            .filter(|l| l["type"] == kind)
            .map(|l| l["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Asserts a `refresh_failed` line whose message contains every one of `needles`.
    async fn assert_refresh_failed(&self, id: &str, row: &str, needles: &[&str]) -> String {
        let failed = self.messages(id, "refresh_failed").await;
        failed
            .iter()
            .find(|m| needles.iter().all(|n| m.contains(n)))
            .unwrap_or_else(|| panic!("{row}: a refresh_failed line naming {needles:?}; got {failed:?}"))
            .clone()
    }

    /// Asserts the connection is red with `class` (and the provider's code, or none), that its
    /// lookup answers 409 connection-error, and returns the error's message.
    async fn assert_red(&self, id: &str, row: &str, class: &str, provider_code: Option<&str>) -> String {
        let read = self.read(id).await;
        assert_eq!(read["status"], "error", "{row}: {read}");
        let error = &read["error"];
        assert_eq!(error["code"], class, "{row}: {read}");
        match provider_code {
            Some(code) => assert_eq!(error["provider_code"], code, "{row}: {read}"),
            None => assert!(error["provider_code"].is_null(), "{row}: no provider code to keep: {read}"),
        }
        assert!(error["at"].is_string(), "{row}: {read}");
        let found = self.lookup(id, 0).await;
        found.assert_problem(StatusCode::CONFLICT);
        assert_eq!(found.problem_type(), CONNECTION_ERROR, "{row}: {}", found.text);
        error["message"].as_str().unwrap_or_else(|| panic!("{row}: a message: {read}")).to_owned()
    }

    /// Asserts a failed authorization: the failure redirect with `error=code`, the connection
    /// still pending (its lookup says so), an `authorize_failed` line naming the code. Returns
    /// the redirect's `error_description`.
    async fn assert_authorization_failed(&self, id: &str, row: &str, location: &str, code: &str) -> String {
        assert!(location.starts_with(FAILURE), "{row}: the failure redirect: {location}");
        assert_eq!(query_param(location, "error").as_deref(), Some(code), "{row}: {location}");
        let description = query_param(location, "error_description").unwrap_or_default();
        assert!(!description.is_empty(), "{row}: an error_description: {location}");
        let read = self.read(id).await;
        assert_eq!(read["status"], "pending", "{row}: {read}");
        let found = self.lookup(id, 0).await;
        found.assert_problem(StatusCode::CONFLICT);
        assert_eq!(found.problem_type(), CONNECTION_PENDING, "{row}: {}", found.text);
        let failed = self.messages(id, "authorize_failed").await;
        assert!(failed.iter().any(|m| m.contains(code)), "{row}: an authorize_failed line naming {code}: {failed:?}");
        description
    }
}

/// The tokens issued by the `n`th recorded token request of `grant`.
async fn issued(q: &QuirkServer, grant: &str, n: usize, name: &str) -> String {
    let requests = q.token_requests(grant).await;
    requests
        .get(n)
        .and_then(|r| r["issued"][name].as_str())
        .unwrap_or_else(|| panic!("no {name} issued by {grant} request {n}: {requests:?}"))
        .to_owned()
}

/// One refusal row: a connection authorized with plain answers whose forced refresh gets
/// `answer`: red with `class`, the log names the class and the provider's code, and no further
/// forced refresh or lookup calls the provider. Returns the server and the error message.
async fn refused_refresh(
    lab: &Lab,
    key: &str,
    row: &str,
    answer: Value,
    class: &str,
    provider_code: Option<&str>,
) -> (QuirkServer, String) {
    let q = lab.provider(key, json!({"token": {"refresh_token": [answer]}}), |_| {}).await;
    let id = lab.authorized(&q, key).await;
    lab.lookup(&id, 0).await.assert_status(StatusCode::OK);
    lab.force_refresh(&id).await;
    assert_eq!(q.token_calls("refresh_token").await, 1, "{row}: one refresh");
    let message = lab.assert_red(&id, row, class, provider_code).await;
    let mut needles = vec![class];
    needles.extend(provider_code);
    lab.assert_refresh_failed(&id, row, &needles).await;
    // Out of the due index, and red: nothing reaches the provider any more.
    lab.force_refresh(&id).await.assert_problem(StatusCode::CONFLICT);
    lab.lookup(&id, 86_400).await.assert_problem(StatusCode::CONFLICT);
    assert_eq!(q.token_calls("refresh_token").await, 1, "{row}: no further refresh calls");
    (q, message)
}

#[tokio::test]
async fn refresh_refused_inside_a_200_turns_the_connection_red_grant_refused() {
    let lab = lab().await;
    let rows = [
        (
            "200 with an error member",
            json!({"status": 200, "json": {"error": "bad_refresh_token", "error_description": "Invalid refresh token"}}),
            "bad_refresh_token",
        ),
        (
            "200 ok:false",
            json!({"status": 200, "json": {"ok": false, "error": "invalid_refresh_token"}}),
            "invalid_refresh_token",
        ),
        (
            "200 ok:false token_revoked",
            json!({"status": 200, "json": {"ok": false, "error": "token_revoked"}}),
            "token_revoked",
        ),
    ];
    let mut servers = Vec::new();
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let (q, message) = refused_refresh(&lab, &format!("r{i}"), row, answer, "grant_refused", Some(code)).await;
        assert!(message.contains(CUSTOMER_MUST_AUTHORIZE), "{row}: {message}");
        servers.push(q);
    }
    lab.app.sweeps_run(2).await;
    for q in &servers {
        assert_eq!(q.token_calls("refresh_token").await, 1, "the sweep leaves red connections alone");
    }
}

#[tokio::test]
async fn refresh_refused_with_a_4xx_in_the_providers_own_shape_turns_the_connection_red_grant_refused() {
    let lab = lab().await;
    let rows = [
        (
            "400 invalid_grant",
            json!({"status": 400, "json": {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}}),
            Some("invalid_grant"),
        ),
        (
            "401 with an unreadable HTML body",
            json!({"status": 401, "content_type": "text/html", "raw": "<html><body><h1>401 Unauthorized</h1></body></html>"}),
            None,
        ),
        ("400 JSON without an error member", json!({"status": 400, "json": {"message": "Bad Request"}}), None),
    ];
    let mut servers = Vec::new();
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let (q, message) = refused_refresh(&lab, &format!("r{i}"), row, answer, "grant_refused", code).await;
        assert!(message.contains(CUSTOMER_MUST_AUTHORIZE), "{row}: {message}");
        servers.push(q);
    }
    lab.app.sweeps_run(2).await;
    for q in &servers {
        assert_eq!(q.token_calls("refresh_token").await, 1, "the sweep leaves red connections alone");
    }
}

#[tokio::test]
async fn client_refusals_turn_the_connection_red_client_rejected_and_tell_the_organization() {
    let lab = lab().await;
    let rows = [
        ("401 invalid_client", json!({"status": 401, "json": {"error": "invalid_client"}}), "invalid_client"),
        (
            "400 incorrect_client_credentials",
            json!({"status": 400, "json": {"error": "incorrect_client_credentials"}}),
            "incorrect_client_credentials",
        ),
        (
            "400 unauthorized_client",
            json!({"status": 400, "json": {"error": "unauthorized_client"}}),
            "unauthorized_client",
        ),
        ("200 bad_client_secret", json!({"status": 200, "json": {"error": "bad_client_secret"}}), "bad_client_secret"),
    ];
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let (_q, message) = refused_refresh(&lab, &format!("r{i}"), row, answer, "client_rejected", Some(code)).await;
        assert!(message.contains(ORGANIZATION_MUST_UPDATE), "{row}: {message}");
        assert!(message.contains("organization"), "{row}: names the organization: {message}");
        assert!(!message.to_lowercase().contains("authorize"), "{row}: never tells anyone to authorize: {message}");
    }
}

#[tokio::test]
async fn client_credentials_refusals_turn_the_connection_red_client_rejected() {
    let lab = lab().await;
    let rows = [
        ("400 invalid_request", json!({"status": 400, "json": {"error": "invalid_request"}}), "invalid_request"),
        (
            "400 unsupported_grant_type",
            json!({"status": 400, "json": {"error": "unsupported_grant_type"}}),
            "unsupported_grant_type",
        ),
        ("200 invalid_client_id", json!({"status": 200, "json": {"error": "invalid_client_id"}}), "invalid_client_id"),
    ];
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let key = format!("cc{i}");
        let q = lab
            .provider(&key, json!({"token": {"client_credentials": [answer]}}), |d| {
                d.auth = "oauth2_client_credentials"
            })
            .await;
        let created = lab.app.create_connection(&lab.org, &json!({"definition": key, "scope": "organization"})).await;
        created.assert_status(StatusCode::CREATED);
        assert_eq!(created.body["status"], "configured");
        let id = created.body["id"].as_str().unwrap().to_owned();
        let refused = lab.lookup(&id, 60).await;
        refused.assert_problem(StatusCode::CONFLICT);
        assert_eq!(refused.problem_type(), CONNECTION_ERROR, "{row}: {}", refused.text);
        let message = lab.assert_red(&id, row, "client_rejected", Some(code)).await;
        assert!(message.contains(ORGANIZATION_MUST_UPDATE), "{row}: {message}");
        assert!(!message.to_lowercase().contains("authorize"), "{row}: {message}");
        lab.assert_refresh_failed(&id, row, &["client_rejected", code]).await;
        lab.lookup(&id, 60).await.assert_problem(StatusCode::CONFLICT);
        assert_eq!(q.token_calls("client_credentials").await, 1, "{row}: one call, none after the refusal");
    }
}

#[tokio::test]
async fn a_client_rejected_connection_recovers_when_the_organization_updates_the_definition() {
    let lab = lab().await;
    let rejected = json!({"status": 401, "json": {"error": "invalid_client"}});
    let config = json!({"token": {"refresh_token": [rejected, {"json": token_answer(json!({}))}]}});
    let q = lab.provider("app", config, |_| {}).await;
    let id = lab.authorized(&q, "app").await;
    lab.lookup(&id, 0).await.assert_status(StatusCode::OK);
    lab.force_refresh(&id).await;
    lab.assert_red(&id, "invalid_client", "client_rejected", Some("invalid_client")).await;

    // The organization fixes its app settings: the connection is re-armed, then refreshed.
    let mut fixed = Def::of(&q);
    fixed.secret = format!("rotated-{}", random_hex());
    lab.define("app", &fixed).await;
    // The contract says "back to configured/active as before": either is accepted here.
    let read = lab.read(&id).await;
    assert!(read["status"] == "configured" || read["status"] == "active", "re-armed: {read}");
    assert!(read["error"].is_null(), "error cleared: {read}");
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refreshes = q.token_requests("refresh_token").await;
    assert!(refreshes.len() >= 2, "{refreshes:?}");
    let last = refreshes.last().unwrap();
    assert_eq!(sent_secret(last).as_deref(), Some(fixed.secret.as_str()), "the new secret: {last}");
    assert_eq!(last["status"], 200);
    let found = lab.lookup(&id, 0).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["token"]["access_token"], last["issued"]["access_token"], "{}", found.text);
    assert!(lab.read(&id).await["error"].is_null());
}

#[tokio::test]
async fn outages_rate_limits_and_unreadable_refresh_answers_keep_the_tokens() {
    let lab = lab().await;
    let html = |status: u16, retry: Option<&str>| {
        let mut answer =
            json!({"status": status, "content_type": "text/html", "raw": "<html><body>oops</body></html>"});
        if let Some(r) = retry {
            answer["headers"] = json!({"Retry-After": r});
        }
        answer
    };
    let rows = [
        ("503 temporarily_unavailable", json!({"status": 503, "json": {"error": "temporarily_unavailable"}}), None),
        ("503 HTML", html(503, None), None),
        (
            "429 with Retry-After",
            json!({"status": 429, "headers": {"Retry-After": "120"}, "json": {"message": "Too Many Requests"}}),
            None,
        ),
        ("400 unreadable with Retry-After", html(400, Some("30")), None),
        ("200 slow_down", json!({"status": 200, "json": {"error": "slow_down"}}), None),
        ("200 server_error", json!({"status": 200, "json": {"error": "server_error"}}), None),
        ("200 unreadable", html(200, None), Some("unreadable")),
    ];
    for (i, (row, answer, unreadable)) in rows.into_iter().enumerate() {
        let key = format!("t{i}");
        let q = lab.provider(&key, json!({"token": {"refresh_token": [answer]}}), |_| {}).await;
        let id = lab.authorized(&q, &key).await;
        let first = lab.lookup(&id, 0).await;
        first.assert_status(StatusCode::OK);
        let token = first.body["token"]["access_token"].clone();
        let status = lab.read(&id).await["status"].clone();
        lab.force_refresh(&id).await;
        assert_eq!(q.token_calls("refresh_token").await, 1, "{row}");

        let read = lab.read(&id).await;
        assert_eq!(read["status"], status, "{row}: status unchanged: {read}");
        assert!(read["error"].is_null(), "{row}: no error: {read}");
        let line = lab.assert_refresh_failed(&id, row, &["tokens kept"]).await;
        assert!(!line.contains("refused"), "{row}: never reported as refused: {line}");
        if unreadable.is_some() {
            assert!(line.contains("unreadable_answer") || line.contains(UNREADABLE), "{row}: {line}");
        }
        let found = lab.lookup(&id, 0).await;
        found.assert_status(StatusCode::OK);
        assert_eq!(found.body["token"]["access_token"], token, "{row}: the old, valid token");
        assert_eq!(q.token_calls("refresh_token").await, 1, "{row}: backing off");

        // The provider is back: the next forced refresh succeeds.
        q.set_config(json!({})).await;
        lab.force_refresh(&id).await.assert_status(StatusCode::OK);
        assert_eq!(q.token_calls("refresh_token").await, 2, "{row}");
        let found = lab.lookup(&id, 0).await;
        assert_eq!(found.body["token"]["access_token"], issued(&q, "refresh_token", 1, "access_token").await, "{row}");
        assert!(lab.read(&id).await["error"].is_null(), "{row}");
    }
}

#[tokio::test]
async fn code_exchange_refusals_go_to_the_failure_redirect_and_leave_the_connection_pending() {
    let lab = lab().await;
    let rows = [
        ("200 ok:false", json!({"status": 200, "json": {"ok": false, "error": "invalid_code"}}), "invalid_code"),
        (
            "200 with an error member",
            json!({"status": 200, "json": {"error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired."}}),
            "bad_verification_code",
        ),
        (
            "200 form-encoded error",
            json!({"status": 200, "content_type": "application/x-www-form-urlencoded",
                "raw": "error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired."}),
            "bad_verification_code",
        ),
        ("400 invalid_grant", json!({"status": 400, "json": {"error": "invalid_grant"}}), "invalid_grant"),
    ];
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let key = format!("c{i}");
        let q = lab.provider(&key, json!({"token": {"authorization_code": [answer]}}), |_| {}).await;
        let id = lab.create(&key).await;
        let location = lab.authorization(&q, &id).await;
        lab.assert_authorization_failed(&id, row, &location, code).await;
        assert_eq!(q.token_calls("authorization_code").await, 1, "{row}");
        assert_eq!(q.token_calls("refresh_token").await, 0, "{row}");
    }
}

#[tokio::test]
async fn unreadable_code_exchange_answers_fail_as_server_error_never_as_refused() {
    let lab = lab().await;
    let rows = [
        ("200 HTML", json!({"status": 200, "content_type": "text/html", "raw": "<html>oops</html>"})),
        ("200 broken JSON", json!({"status": 200, "content_type": "application/json", "raw": "{\"access_token\": "})),
        ("200 JSON without a token", json!({"status": 200, "json": {"token_type": "Bearer"}})),
    ];
    for (i, (row, answer)) in rows.into_iter().enumerate() {
        let key = format!("u{i}");
        let q = lab.provider(&key, json!({"token": {"authorization_code": [answer]}}), |_| {}).await;
        let id = lab.create(&key).await;
        let location = lab.authorization(&q, &id).await;
        let description = lab.assert_authorization_failed(&id, row, &location, "server_error").await;
        assert!(description.contains(UNREADABLE), "{row}: {description}");
        assert!(!description.contains("refused"), "{row}: {description}");
        for line in lab.messages(&id, "authorize_failed").await {
            assert!(!line.contains("refused"), "{row}: never reported as refused: {line}");
        }
        assert_eq!(q.token_calls("authorization_code").await, 1, "{row}");
    }
}

#[tokio::test]
async fn json_token_answers_are_read_whatever_their_content_type() {
    let lab = lab().await;
    for (i, content_type) in ["text/plain; charset=utf-8", "text/javascript", "text/html"].into_iter().enumerate() {
        let key = format!("ct{i}");
        let answer = json!({"status": 200, "content_type": content_type, "json": token_answer(json!({}))});
        let q = lab.provider(&key, json!({"token": {"authorization_code": [answer]}}), |_| {}).await;
        let id = lab.authorized(&q, &key).await;
        let found = lab.lookup(&id, 60).await;
        found.assert_status(StatusCode::OK);
        let token = &found.body["token"];
        assert_eq!(token["access_token"], issued(&q, "authorization_code", 0, "access_token").await, "{content_type}");
        assert_eq!(token["token_type"], "Bearer", "{content_type}");
        assert!(token["expires_at"].is_string(), "{content_type}: {}", found.text);
        assert_eq!(token["scopes"], json!(["read"]), "{content_type}");
        assert_eq!(q.token_calls("authorization_code").await, 1, "{content_type}");
        assert_eq!(q.token_calls("refresh_token").await, 0, "{content_type}");
    }
}

#[tokio::test]
async fn form_encoded_token_answers_are_read_with_their_scopes() {
    let lab = lab().await;
    let answer = json!({"status": 200, "content_type": "application/x-www-form-urlencoded",
        "raw": "access_token={{access_token}}&token_type=bearer&scope=repo%2Cgist"});
    let q =
        lab.provider("gh", json!({"token": {"authorization_code": [answer]}}), |d| d.scopes = "repo gist".into()).await;
    let id = lab.authorized(&q, "gh").await;
    let found = lab.lookup(&id, 60).await;
    found.assert_status(StatusCode::OK);
    let token = &found.body["token"];
    assert_eq!(token["access_token"], issued(&q, "authorization_code", 0, "access_token").await);
    assert!(token["token_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("bearer")), "{}", found.text);
    assert_eq!(token["scopes"], json!(["repo", "gist"]));
    assert!(token["expires_at"].is_null(), "no expires_in: unknown lifetime: {}", found.text);
    assert_eq!(q.token_calls("authorization_code").await, 1);
    assert_eq!(q.token_calls("refresh_token").await, 0, "nothing to refresh with");
}

#[tokio::test]
async fn created_201_answers_are_successes_and_the_rotated_refresh_token_is_sent_next() {
    let lab = lab().await;
    let created = json!({"status": 201, "json": token_answer(json!({}))});
    let config = json!({"token": {"authorization_code": [created], "refresh_token": [created]}});
    let q = lab.provider("rot", config, |_| {}).await;
    let id = lab.authorized(&q, "rot").await;
    let first = issued(&q, "authorization_code", 0, "refresh_token").await;

    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refreshes = q.token_requests("refresh_token").await;
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0]["form"]["refresh_token"], first.as_str(), "the grant's refresh token");
    let rotated = issued(&q, "refresh_token", 0, "refresh_token").await;

    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refreshes = q.token_requests("refresh_token").await;
    assert_eq!(refreshes.len(), 2);
    assert_eq!(refreshes[1]["form"]["refresh_token"], rotated.as_str(), "the NEW refresh token");

    let found = lab.lookup(&id, 60).await;
    found.assert_status(StatusCode::OK);
    assert_eq!(found.body["token"]["access_token"], issued(&q, "refresh_token", 1, "access_token").await);
    let read = lab.read(&id).await;
    assert!(read["error"].is_null() && read["status"] != "error", "{read}");
    assert_eq!(lab.messages(&id, "refreshed").await.len(), 2);
    assert!(lab.messages(&id, "refresh_failed").await.is_empty());
}

#[tokio::test]
async fn granted_scopes_are_read_from_arrays_and_separated_strings() {
    let lab = lab().await;
    let rows = [
        ("a JSON array", json!(["a", "b"]), json!(["a", "b"])),
        ("a comma string", json!("a,b"), json!(["a", "b"])),
        ("a space string", json!("a b"), json!(["a", "b"])),
        ("a comma and space string", json!("a, b"), json!(["a", "b"])),
        ("nothing: the requested scopes", Value::Null, json!(["x", "y"])),
    ];
    for (i, (row, scope, expected)) in rows.into_iter().enumerate() {
        let key = format!("s{i}");
        let answer = json!({"json": token_answer(json!({"scope": scope}))});
        let q =
            lab.provider(&key, json!({"token": {"authorization_code": [answer]}}), |d| d.scopes = "x y".into()).await;
        let id = lab.authorized(&q, &key).await;
        let found = lab.lookup(&id, 0).await;
        found.assert_status(StatusCode::OK);
        assert_eq!(found.body["token"]["scopes"], expected, "{row}: {}", found.text);
        assert_eq!(q.token_calls("authorization_code").await, 1, "{row}");
    }
}

#[tokio::test]
async fn scope_separator_joins_the_requested_scopes() {
    let lab = lab().await;
    let comma = Some(json!({"scope_separator": ","}));
    let rows = [
        ("space-separated input", "read activity:read_all", comma.clone(), "read,activity:read_all"),
        ("comma-separated input", "read,activity:read_all", comma.clone(), "read,activity:read_all"),
        ("no separator: a space", "read activity:read_all", None, "read activity:read_all"),
    ];
    for (i, (row, scopes, oauth, expected)) in rows.into_iter().enumerate() {
        let key = format!("sep{i}");
        let q = lab
            .provider(&key, json!({}), |d| {
                d.scopes = scopes.into();
                d.oauth = oauth;
            })
            .await;
        lab.authorized(&q, &key).await;
        let requests = q.requests().await;
        assert_eq!(requests["authorize"][0]["query"]["scope"], expected, "{row}: {requests}");
    }

    // The client-credentials request joins them the same way.
    let q = lab
        .provider("cc", json!({}), |d| {
            d.auth = "oauth2_client_credentials";
            d.scopes = "read activity:read_all".into();
            d.oauth = comma;
        })
        .await;
    let created = lab.app.create_connection(&lab.org, &json!({"definition": "cc", "scope": "organization"})).await;
    let id = created.body["id"].as_str().expect("an id");
    lab.lookup(id, 60).await.assert_status(StatusCode::OK);
    let requests = q.token_requests("client_credentials").await;
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["form"]["scope"], "read,activity:read_all", "{requests:?}");
}

#[tokio::test]
async fn scope_param_names_the_authorize_parameter_carrying_the_scopes() {
    let lab = lab().await;
    let q = lab
        .provider("slack", json!({}), |d| {
            d.scopes = "chat:write users:read".into();
            d.oauth = Some(json!({"scope_param": "user_scope", "scope_separator": ","}));
        })
        .await;
    let id = lab.authorized(&q, "slack").await;
    let requests = q.requests().await;
    let query = &requests["authorize"][0]["query"];
    assert_eq!(query["user_scope"], "chat:write,users:read", "{query}");
    assert!(query.get("scope").is_none(), "no `scope` parameter: {query}");
    // The default answer grants what was asked in `user_scope`.
    let found = lab.lookup(&id, 0).await;
    assert_eq!(found.body["token"]["scopes"], json!(["chat:write", "users:read"]), "{}", found.text);
}

#[tokio::test]
async fn token_path_reads_the_token_from_that_object_and_never_stores_another() {
    let lab = lab().await;
    let oauth = json!({"token_path": "authed_user", "scope_param": "user_scope", "scope_separator": ","});
    let bot = format!("xoxb-bot-{}", random_hex());

    // Only a bot token at the top level: the authorization fails, nothing is stored.
    let bot_only = json!({"json": {"ok": true, "access_token": bot, "token_type": "bot", "scope": "chat:write",
        "bot_user_id": "U0BOT", "team": {"id": "T1"}}});
    let q = lab
        .provider("bot-only", json!({"token": {"authorization_code": [bot_only]}}), |d| d.oauth = Some(oauth.clone()))
        .await;
    let id = lab.create("bot-only").await;
    let location = lab.authorization(&q, &id).await;
    lab.assert_authorization_failed(&id, "no authed_user", &location, "invalid_token_response").await;
    assert_eq!(q.token_calls("authorization_code").await, 1);

    // Bot and user tokens: the user's (authed_user) is the connection's.
    let both = json!({"json": {"ok": true, "access_token": bot, "token_type": "bot", "scope": "chat:write,channels:read",
        "bot_user_id": "U0BOT",
        "authed_user": {"id": "U1", "access_token": "{{access_token}}", "token_type": "user",
            "scope": "search:read,users:read", "expires_in": 43200, "refresh_token": "{{refresh_token}}"}}});
    let refreshed = json!({"json": {"ok": true, "access_token": "{{access_token}}", "token_type": "user",
        "scope": "search:read,users:read", "expires_in": 43200, "refresh_token": "{{refresh_token}}"}});
    let config = json!({"token": {"authorization_code": [both], "refresh_token": [refreshed]}});
    let q = lab.provider("both", config, |d| d.oauth = Some(oauth.clone())).await;
    let id = lab.authorized(&q, "both").await;
    let found = lab.lookup(&id, 60).await;
    found.assert_status(StatusCode::OK);
    let token = &found.body["token"];
    assert_eq!(token["access_token"], issued(&q, "authorization_code", 0, "access_token").await, "{}", found.text);
    assert_ne!(token["access_token"], bot.as_str());
    assert_eq!(token["token_type"], "user");
    assert_eq!(token["scopes"], json!(["search:read", "users:read"]));
    assert!(token["expires_at"].is_string(), "the user's expires_in: {}", found.text);
    assert!(!found.text.contains(&bot), "the bot token is not handed out: {}", found.text);

    // A refresh answer without the object: the top level is read; the user's refresh token was sent.
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refreshes = q.token_requests("refresh_token").await;
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0]["form"]["refresh_token"], issued(&q, "authorization_code", 0, "refresh_token").await);
    let found = lab.lookup(&id, 0).await;
    assert_eq!(found.body["token"]["access_token"], issued(&q, "refresh_token", 0, "access_token").await);
}

#[tokio::test]
async fn captured_token_and_callback_values_are_returned_by_lookups() {
    let lab = lab().await;
    let answer = json!({"json": token_answer(json!({"id_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.",
        "api_domain": "https://www.zohoapis.eu", "team": {"id": "T0123", "name": "Acme"}}))});
    let config = json!({"token": {"authorization_code": [answer]},
        "callback_params": {"accounts-server": "https://accounts.zoho.eu", "location": "eu"}});
    let q = lab
        .provider("zoho", config, |d| {
            d.oauth = Some(json!({"capture": {"token": ["id_token", "api_domain", "team.id"],
                "callback": ["accounts-server"]}}));
        })
        .await;
    let id = lab.authorized(&q, "zoho").await;
    let found = lab.lookup(&id, 0).await;
    found.assert_status(StatusCode::OK);
    let fields = &found.body["fields"];
    assert_eq!(fields["id_token"], "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "{}", found.text);
    assert_eq!(fields["api_domain"], "https://www.zohoapis.eu");
    assert_eq!(fields["team.id"], "T0123", "a dotted path keeps its dotted name");
    assert_eq!(fields["accounts-server"], "https://accounts.zoho.eu");
    assert!(fields.get("location").is_none(), "only what is captured: {fields}");
}

#[tokio::test]
async fn authorization_and_token_params_are_sent_with_every_request() {
    let lab = lab().await;
    let q = lab
        .provider("params", json!({}), |d| {
            d.oauth = Some(json!({"authorization_params": {"access_type": "offline", "prompt": "consent"},
                "token_params": {"expires_in": "86400"}}));
        })
        .await;
    let id = lab.authorized(&q, "params").await;
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let requests = q.requests().await;
    let query = &requests["authorize"][0]["query"];
    assert_eq!(
        (&query["access_type"], &query["prompt"], &query["scope"]),
        (&json!("offline"), &json!("consent"), &json!("read"))
    );
    for grant in ["authorization_code", "refresh_token"] {
        let sent = q.token_requests(grant).await;
        assert_eq!(sent.len(), 1, "{grant}");
        assert_eq!(sent[0]["form"]["expires_in"], "86400", "{grant}: {}", sent[0]);
        assert_eq!(sent_secret(&sent[0]).as_deref(), Some(CLIENT_SECRET), "{grant}");
    }
}

#[tokio::test]
async fn the_oauth_block_is_validated_and_returned_as_sent() {
    let lab = lab().await;
    let q = QuirkServer::start(json!({})).await;
    let mut def = Def::of(&q);
    def.oauth = Some(json!({"scope_separator": ",", "token_paht": "authed_user"}));
    let refused = lab.app.put_definition(&lab.org, "typo", &def.json()).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.error_fields().contains(&"oauth.token_paht".to_owned()), "{}", refused.text);

    let block = json!({"scope_separator": ",", "scope_param": "user_scope",
        "authorization_params": {"access_type": "offline"}, "token_params": {"expires_in": "86400"},
        "token_path": "authed_user", "capture": {"token": ["id_token", "api_domain"], "callback": ["accounts-server"]},
        "required_scopes": ["read"]});
    def.oauth = Some(block.clone());
    lab.define("full", &def).await;
    let read = lab.app.get_definition(&lab.org, "full").await;
    read.assert_status(StatusCode::OK);
    assert_eq!(read.body["oauth"], block, "{}", read.text);
    assert_eq!(q.total_calls().await, 0, "defining calls no provider");
}

#[tokio::test]
async fn a_client_secret_rotated_on_the_definition_reaches_the_next_refresh() {
    let lab = lab().await;
    let q = lab.provider("app", json!({}), |_| {}).await;
    let id = lab.authorized(&q, "app").await;
    let exchange = q.token_requests("authorization_code").await;
    assert_eq!(sent_secret(&exchange[0]).as_deref(), Some(CLIENT_SECRET));

    let mut rotated = Def::of(&q);
    rotated.secret = format!("rotated-{}", random_hex());
    lab.define("app", &rotated).await;
    lab.force_refresh(&id).await.assert_status(StatusCode::OK);
    let refreshes = q.token_requests("refresh_token").await;
    assert_eq!(refreshes.len(), 1);
    assert_eq!(sent_secret(&refreshes[0]).as_deref(), Some(rotated.secret.as_str()), "{}", refreshes[0]);
    assert_eq!(lab.read(&id).await["status"], "configured");
    assert!(lab.token_of(&id).await.is_some());
}

#[tokio::test]
async fn a_changed_token_endpoint_origin_gets_no_tokens_and_requires_reauthorization() {
    let lab = lab().await;
    for (i, via_definition) in [false, true].into_iter().enumerate() {
        let row =
            if via_definition { "the definition's tokenUrl default" } else { "PATCH of the connection's tokenUrl" };
        let key = format!("o{i}");
        let q = lab.provider(&key, json!({}), |_| {}).await;
        let other = QuirkServer::start(json!({})).await;
        assert_ne!(q.url(), other.url());
        let id = lab.authorized(&q, &key).await;
        lab.lookup(&id, 0).await.assert_status(StatusCode::OK);
        if via_definition {
            let mut moved = Def::of(&q);
            moved.token = other.token_endpoint();
            lab.define(&key, &moved).await;
        } else {
            let values = json!({"values": {"tokenUrl": other.token_endpoint()}});
            let patched = lab.app.patch_connection(&lab.org, &id, &values, None).await;
            assert!(patched.status.is_success(), "{row}: {}", patched.text);
        }
        lab.force_refresh(&id).await;
        lab.lookup(&id, 86_400).await;
        assert_eq!(other.total_calls().await, 0, "{row}: nothing reaches the new origin");
        assert_eq!(q.token_calls("refresh_token").await, 0, "{row}: nor the old one");
        lab.assert_red(&id, row, "reauthorization_required", None).await;
        lab.assert_refresh_failed(&id, row, &["reauthorization_required"]).await;
        lab.force_refresh(&id).await.assert_problem(StatusCode::CONFLICT);
        assert_eq!(other.total_calls().await, 0, "{row}");
    }
}

#[tokio::test]
async fn a_revoke_url_on_another_origin_gets_no_token() {
    // About what `latchkey serve` runs (its sweep, revoker, processes): the binary under
    // either transport.
    let lab = lab().await;
    let q = lab.provider("rev", json!({}), |_| {}).await;
    let other = QuirkServer::start(json!({})).await;
    let kept = lab.authorized(&q, "rev").await;
    let moved = lab.authorized(&q, "rev").await;
    let tokens_of = |n: usize| {
        let q = &q;
        async move {
            [
                issued(q, "authorization_code", n, "access_token").await,
                issued(q, "authorization_code", n, "refresh_token").await,
            ]
        }
    };
    let (kept_tokens, moved_tokens) = (tokens_of(0).await, tokens_of(1).await);

    // Control: the grant's own revoke endpoint gets the token.
    lab.disconnect(&kept).await.assert_status(StatusCode::OK);
    eventually(Duration::from_secs(10), "the revocation at the grant's origin", || async {
        let requests = q.requests().await;
        requests["revoke"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| kept_tokens.iter().any(|t| r["form"]["token"] == t.as_str()))
    })
    .await;

    let values = json!({"values": {"revokeUrl": other.revoke_endpoint()}});
    let patched = lab.app.patch_connection(&lab.org, &moved, &values, None).await;
    assert!(patched.status.is_success(), "{}", patched.text);
    lab.disconnect(&moved).await.assert_status(StatusCode::OK);
    eventually(Duration::from_secs(10), "a revoke_failed line", || async {
        !lab.messages(&moved, "revoke_failed").await.is_empty()
    })
    .await;
    assert_eq!(other.total_calls().await, 0, "no token to another origin");
    let requests = q.requests().await;
    for r in requests["revoke"].as_array().into_iter().flatten() {
        assert!(!moved_tokens.iter().any(|t| r["form"]["token"] == t.as_str()), "{r}");
    }
}

#[tokio::test]
async fn an_unknown_lifetime_never_makes_lookups_call_the_provider() {
    let lab = lab().await;
    let rows = [
        ("expires_in 0", json!(0)),
        ("expires_in null", Value::Null),
        ("expires_in negative", json!(-60)),
        ("expires_in unparseable", json!("soon")),
        ("expires_in absent", json!("absent")),
    ];
    let mut servers = Vec::new();
    for (i, (row, expires_in)) in rows.into_iter().enumerate() {
        let key = format!("l{i}");
        let mut body = token_answer(json!({}));
        if expires_in == "absent" {
            body.as_object_mut().unwrap().remove("expires_in");
        } else {
            body["expires_in"] = expires_in;
        }
        let q = lab.provider(&key, json!({"token": {"authorization_code": [{"json": body}]}}), |_| {}).await;
        let id = lab.authorized(&q, &key).await;
        let token = issued(&q, "authorization_code", 0, "access_token").await;
        for min_valid in [60, 60, 3600, 86_400] {
            let found = lab.lookup(&id, min_valid).await;
            found.assert_status(StatusCode::OK);
            assert_eq!(found.body["token"]["access_token"], token.as_str(), "{row}");
            assert!(found.body["token"]["expires_at"].is_null(), "{row}: unknown lifetime: {}", found.text);
        }
        assert_eq!(q.token_calls("refresh_token").await, 0, "{row}: no refresh storm");
        servers.push((row, q));
    }
    lab.app.sweeps_run(2).await;
    for (row, q) in &servers {
        assert_eq!(q.token_calls("refresh_token").await, 0, "{row}: the sweep refreshes at most daily");
    }
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_token_is_token_expired() {
    let lab = lab().await;
    // Two seconds rather than one, so that the first lookup sees it valid on a busy machine.
    let answer = json!({"json": {"access_token": "{{access_token}}", "token_type": "Bearer", "expires_in": 2}});
    let q = lab.provider("short", json!({"token": {"authorization_code": [answer]}}), |_| {}).await;
    let id = lab.authorized(&q, "short").await;
    lab.lookup(&id, 0).await.assert_status(StatusCode::OK);
    eventually(Duration::from_secs(10), "the lookup answers token-expired", || async {
        let found = lab.lookup(&id, 0).await;
        match found.status {
            StatusCode::OK => false,
            StatusCode::CONFLICT if found.problem_type() == TOKEN_EXPIRED => true,
            other => panic!("never another answer than the token or token-expired: {other} {}", found.text),
        }
    })
    .await;
    let read = lab.read(&id).await;
    assert_eq!(read["status"], "error", "{read}");
    assert_eq!(read["error"]["code"], "token_expired", "{read}");
    lab.lookup(&id, 0).await.assert_problem(StatusCode::CONFLICT);
    assert_eq!(q.token_calls("refresh_token").await, 0, "nothing to refresh with");
    assert_eq!(q.token_calls("authorization_code").await, 1);
}

#[tokio::test]
async fn granted_scopes_lacking_a_required_scope_turn_the_connection_red_scopes_missing() {
    let lab = lab().await;
    let required = |d: &mut Def| {
        d.scopes = "read admin".into();
        d.oauth = Some(json!({"required_scopes": ["admin"]}));
    };
    // At refresh: the grant shrank, or the provider refuses the scope.
    let rows = [
        ("refresh grants only read", json!({"json": token_answer(json!({"scope": "read"}))}), None),
        (
            "refresh refused invalid_scope",
            json!({"status": 400, "json": {"error": "invalid_scope"}}),
            Some("invalid_scope"),
        ),
    ];
    for (i, (row, answer, code)) in rows.into_iter().enumerate() {
        let key = format!("rs{i}");
        let q = lab.provider(&key, json!({"token": {"refresh_token": [answer]}}), required).await;
        let id = lab.authorized(&q, &key).await;
        let found = lab.lookup(&id, 0).await;
        assert_eq!(found.body["token"]["scopes"], json!(["read", "admin"]), "{row}: {}", found.text);
        lab.force_refresh(&id).await;
        let message = lab.assert_red(&id, row, "scopes_missing", code).await;
        if code.is_none() {
            assert!(message.contains("admin"), "{row}: names the missing scope: {message}");
        }
        let mut needles = vec!["scopes_missing"];
        needles.extend(code);
        lab.assert_refresh_failed(&id, row, &needles).await;
        lab.lookup(&id, 86_400).await.assert_problem(StatusCode::CONFLICT);
        assert_eq!(q.token_calls("refresh_token").await, 1, "{row}");
    }

    // At the callback: the failure redirect says scopes_missing and names the scope.
    let answer = json!({"json": token_answer(json!({"scope": "read"}))});
    let q = lab.provider("cb", json!({"token": {"authorization_code": [answer]}}), required).await;
    let id = lab.create("cb").await;
    let location = lab.authorization(&q, &id).await;
    assert!(location.starts_with(FAILURE), "{location}");
    assert_eq!(query_param(&location, "error").as_deref(), Some("scopes_missing"));
    let description = query_param(&location, "error_description").unwrap_or_default();
    assert!(description.contains("admin"), "names the missing scope: {description}");
    let read = lab.read(&id).await;
    match read["status"].as_str() {
        Some("pending") => {}
        Some("error") => assert_eq!(read["error"]["code"], "scopes_missing", "{read}"),
        _ => panic!("neither pending nor red: {read}"),
    }
    assert_ne!(lab.lookup(&id, 0).await.status, StatusCode::OK, "no token handed out");
    assert_eq!(q.token_calls("authorization_code").await, 1);
}

/// Distinctive client secret and refresh token, planted where only Latchkey and the provider
/// know them: no refusal path writes them to the server's log or into any answer.
#[tokio::test]
async fn refusal_paths_never_leak_the_client_secret_or_the_refresh_token() {
    let mut lab = lab().await;
    let secret = format!("canary-secret-{}", random_hex());
    let refresh = format!("canary-refresh-{}", random_hex());
    let code_answer = |scope: &str| json!({"json": token_answer(json!({"refresh_token": refresh, "scope": scope}))});
    let planted = |d: &mut Def| d.secret = secret.clone();
    // (where, what Latchkey answered there)
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut servers = Vec::new();

    // Refresh refusals of every class, an unreadable answer, an outage, a shrunk grant.
    let rows = [
        ("grant_refused in a 200", json!({"status": 200, "json": {"error": "bad_refresh_token"}})),
        ("grant_refused ok:false", json!({"status": 200, "json": {"ok": false, "error": "invalid_refresh_token"}})),
        ("grant_refused 400", json!({"status": 400, "json": {"error": "invalid_grant"}})),
        ("client_rejected", json!({"status": 401, "json": {"error": "invalid_client"}})),
        ("unreadable 401", json!({"status": 401, "content_type": "text/html", "raw": "<html>Unauthorized</html>"})),
        ("unreadable 200", json!({"status": 200, "content_type": "text/html", "raw": "<html>oops</html>"})),
        ("transient 503", json!({"status": 503, "headers": {"Retry-After": "60"}, "json": {"error": "server_error"}})),
        ("scopes_missing", json!({"json": token_answer(json!({"scope": "read"}))})),
    ];
    for (i, (row, answer)) in rows.into_iter().enumerate() {
        let key = format!("k{i}");
        let config = json!({"token": {"authorization_code": [code_answer("read admin")], "refresh_token": [answer]}});
        let q = lab
            .provider(&key, config, |d| {
                planted(d);
                d.scopes = "read admin".into();
                d.oauth = Some(json!({"required_scopes": ["admin"]}));
            })
            .await;
        let id = lab.authorized(&q, &key).await;
        let replies = [
            ("forced refresh", lab.force_refresh(&id).await),
            ("forced refresh again", lab.force_refresh(&id).await),
            ("lookup", lab.lookup(&id, 86_400).await),
            ("read", lab.app.get_connection(&lab.org, &id).await),
            ("log", lab.app.connection_logs(&lab.org, &id).await),
        ];
        seen.extend(replies.into_iter().map(|(what, reply)| (format!("{row}: {what}"), reply.text)));
        // Positive control: the canaries really travelled.
        let sent = q.token_requests("refresh_token").await;
        assert_eq!(sent[0]["form"]["refresh_token"], refresh.as_str(), "{row}");
        assert_eq!(sent_secret(&sent[0]).as_deref(), Some(secret.as_str()), "{row}");
        servers.push(q);
    }

    // The token endpoint moved to another origin.
    let q = lab.provider("moved", json!({"token": {"authorization_code": [code_answer("read")]}}), planted).await;
    let other = QuirkServer::start(json!({})).await;
    let id = lab.authorized(&q, "moved").await;
    let values = json!({"values": {"tokenUrl": other.token_endpoint()}});
    let replies = [
        ("patch", lab.app.patch_connection(&lab.org, &id, &values, None).await),
        ("forced refresh", lab.force_refresh(&id).await),
        ("lookup", lab.lookup(&id, 86_400).await),
        ("read", lab.app.get_connection(&lab.org, &id).await),
        ("log", lab.app.connection_logs(&lab.org, &id).await),
    ];
    seen.extend(replies.into_iter().map(|(what, reply)| (format!("moved: {what}"), reply.text)));
    assert_eq!(other.total_calls().await, 0, "nothing reached the other origin");

    // Code exchanges refused, unreadable, or refusing the client.
    let rows = [
        ("code refused", json!({"status": 200, "json": {"ok": false, "error": "invalid_code"}})),
        ("code unreadable", json!({"status": 200, "content_type": "text/html", "raw": "<html>oops</html>"})),
        ("code client_rejected", json!({"status": 401, "json": {"error": "invalid_client"}})),
    ];
    for (i, (row, answer)) in rows.into_iter().enumerate() {
        let key = format!("x{i}");
        let q = lab.provider(&key, json!({"token": {"authorization_code": [answer]}}), planted).await;
        let id = lab.create(&key).await;
        let location = lab.authorization(&q, &id).await;
        assert!(location.starts_with(FAILURE), "{row}: {location}");
        seen.push((format!("{row}: redirect"), location));
        seen.push((format!("{row}: log"), lab.app.connection_logs(&lab.org, &id).await.text));
        let sent = q.token_requests("authorization_code").await;
        assert_eq!(sent_secret(&sent[0]).as_deref(), Some(secret.as_str()), "{row}");
        servers.push(q);
    }
    seen.push(("definition".into(), lab.app.get_definition(&lab.org, "x0").await.text));

    lab.app.stop().await;
    let logs = lab.app.logs();
    assert!(!logs.is_empty(), "the server's log was captured");
    seen.push(("the server's log".into(), logs));
    for (place, text) in &seen {
        assert!(!text.contains(&secret), "the client secret leaked into {place}");
        assert!(!text.contains(&refresh), "the refresh token leaked into {place}");
    }
}

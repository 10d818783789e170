//! Security and state integrity through `latchkey serve` (issue "Security and state integrity"):
//! one outbound policy for every provider URL whoever set it, no proxies, reduced callback
//! text, private data files, `no-store` on answers, a callback that HEAD does not spend,
//! organization inputs that customers do not learn of, and a bound on a connection's values.
//! Runs on the embedded backend through the binary (`tests/run.sh` runs it once, as it is).

use std::os::unix::fs::PermissionsExt;

use crate::harness::{Backend, TestApp, files_under, random_secret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::quirks::{QuirkServer, query_param};

const ORG: &str = "acme";
const FAILURE: &str = "http://localhost:3000/failed";

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().unwrap()
}

/// An authorization-code definition whose app settings are all the organization's.
fn oauth_def(token_url: &str, authorize_url: &str) -> Value {
    json!({"auth": "oauth2_authorization_code",
        "redirects": {"success_url": "http://localhost:3000/ok", "failure_url": FAILURE},
        "inputs": {
            "authorizeUrl": {"type": "url", "default": authorize_url},
            "tokenUrl": {"type": "url", "default": token_url},
            "clientId": {"type": "string", "default": "cid"},
            "clientSecret": {"type": "password", "default": "csecret"}}})
}

/// [`oauth_def`] against a quirk server, with its revocation endpoint.
fn quirk_def(q: &QuirkServer) -> Value {
    let mut def = oauth_def(&q.token_endpoint(), &q.authorize_endpoint());
    def["inputs"]["revokeUrl"] = json!({"type": "url", "default": q.revoke_endpoint()});
    def
}

async fn org_token(app: &TestApp) -> String {
    app.token(ORG, None, &[]).await
}

async fn create(app: &TestApp, org: &str, key: &str) -> String {
    let created = app.create_connection(org, &json!({"definition": key, "customer": "c-1"})).await;
    created.assert_status(StatusCode::CREATED);
    created.body["id"].as_str().unwrap().to_owned()
}

/// Authorizes `id` at `q`; the callback's redirect target.
async fn authorize(app: &TestApp, org: &str, q: &QuirkServer, id: &str) -> String {
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(org), None).await;
    reply.assert_status(StatusCode::OK);
    let back = q.authorize(reply.body["authorize_url"].as_str().unwrap()).await;
    let done = browser().get(&back).send().await.unwrap();
    done.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn provider_urls_the_organization_sets_follow_the_outbound_policy_too() {
    // The aws default: no loopback providers.
    let env = [("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "false")];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let org = org_token(&app).await;
    for (url, why) in [
        ("http://127.0.0.1:9/token", "loopback"),
        ("http://localhost:9/token", "loopback"),
        ("https://10.0.0.7/token", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local (cloud metadata)"),
        ("https://[::ffff:127.0.0.1]/token", "an IPv4-mapped loopback"),
        ("https://[64:ff9b::a9fe:a9fe]/token", "NAT64 of the metadata address"),
        ("https://[fd12::1]/token", "IPv6 unique-local"),
    ] {
        let put = app.put_definition(&org, "d", &oauth_def(url, "https://idp.example.com/authorize")).await;
        put.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(put.error_fields(), vec!["inputs.tokenUrl.default".to_owned()], "{why}: {}", put.text);
    }
    // A name is resolved at each call (it may not resolve yet when it is written).
    app.put_definition(
        &org,
        "named",
        &oauth_def("https://idp.example.com:9/token", "https://idp.example.com/authorize"),
    )
    .await
    .assert_status(StatusCode::CREATED);
    // A connection that names one itself is refused the same way.
    let put = app
        .put_definition(
            &org,
            "open",
            &json!({"auth": "oauth2_client_credentials", "inputs": {
        "tokenUrl": {"type": "url", "visibility": "customer", "default": "https://idp.example.com/token"},
        "clientId": {"type": "string", "default": "cid"}}}),
        )
        .await;
    put.assert_status(StatusCode::CREATED);
    let created = app
        .create_connection(
            &org,
            &json!({"definition": "open", "scope": "organization",
            "values": {"tokenUrl": "https://192.168.1.1/token"}}),
        )
        .await;
    created.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(created.error_fields(), vec!["values.tokenUrl".to_owned()]);
}

#[tokio::test]
async fn a_provider_name_resolving_to_a_private_address_is_never_called() {
    let app = TestApp::spawn().await;
    let org = org_token(&app).await;
    let q = QuirkServer::start(json!({})).await;
    // The token endpoint is this machine's own name on the quirk server's port: not loopback by
    // its spelling, so only resolution can tell (it resolves through /etc/hosts to a loopback or
    // private address); were the policy to let it through, the code exchange would reach the
    // provider and succeed.
    let port = reqwest::Url::parse(q.url()).unwrap().port().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the machine's name").trim().to_owned();
    let resolved: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap_or_else(|e| panic!("this test needs the machine's name {host:?} to resolve (/etc/hosts): {e}"))
        .collect();
    assert!(
        resolved.iter().any(|a| a.ip().is_loopback() || matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.is_private())),
        "{host} resolves to {resolved:?}"
    );
    let mut def = quirk_def(&q);
    def["inputs"]["tokenUrl"]["default"] = json!(format!("http://{host}:{port}/token"));
    let put = app.put_definition(&org, "idp", &def).await;
    put.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(put.error_fields(), ["inputs.tokenUrl.default"], "plain http is for loopback written as such");
    def["inputs"]["tokenUrl"]["default"] = json!(format!("https://{host}:{port}/token"));
    app.put_definition(&org, "idp", &def).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "idp").await;
    let location = authorize(&app, &org, &q, &id).await;
    assert!(location.starts_with(FAILURE), "{location}");
    assert_eq!(query_param(&location, "error").as_deref(), Some("server_error"));
    assert!(query_param(&location, "error_description").is_some_and(|d| d.contains("not allowed")), "{location}");
    assert_eq!(q.token_calls("authorization_code").await, 0, "nothing was sent");
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "pending");
    // Nor are tokens sent there by a refresh: the connection is red, the provider untouched.
    let authorized = create(&app, &org, "idp").await;
    let mut back = quirk_def(&q);
    app.put_definition(&org, "idp", &back).await.assert_status(StatusCode::OK);
    assert!(authorize(&app, &org, &q, &authorized).await.starts_with("http://localhost:3000/ok"));
    q.set_config(json!({"token": {"refresh_token": [{"status": 200, "json": {"access_token": "{{access_token}}",
        "refresh_token": "{{refresh_token}}", "expires_in": 3600}}]}}))
        .await;
    back["inputs"]["tokenUrl"]["default"] = json!(format!("https://{host}:{port}/token"));
    app.put_definition(&org, "idp", &back).await.assert_status(StatusCode::OK);
    let before = q.total_calls().await;
    let refreshed = app.request(Method::POST, &format!("/v1/connections/{authorized}/refresh"), Some(&org), None).await;
    assert!(refreshed.status.is_client_error(), "{}", refreshed.text);
    assert_eq!(app.get_connection(&org, &authorized).await.body["status"], "error");
    assert_eq!(q.total_calls().await, before, "nothing was sent");
}

#[tokio::test]
async fn proxies_from_the_environment_are_not_used_for_provider_calls() {
    // A "proxy" that accepts and never answers: a request sent through it would time out.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("https_proxy", proxy_url.as_str()),
        ("NO_PROXY", ""),
    ];
    let app = TestApp::spawn_binary_with_env(&Backend::fresh().await, &random_secret(), &env).await;
    let org = org_token(&app).await;
    let q = QuirkServer::start(json!({})).await;
    app.put_definition(&org, "idp", &quirk_def(&q)).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "idp").await;
    assert!(authorize(&app, &org, &q, &id).await.starts_with("http://localhost:3000/ok"));
    assert_eq!(q.token_calls("authorization_code").await, 1, "the code went straight to the provider");
    proxy.set_nonblocking(true).unwrap();
    assert!(proxy.accept().is_err(), "nothing reached the proxy");
}

/// A server, its organization token, a quirk provider, a connection of a definition against it,
/// and the authorize URL of an authorization just started.
async fn started_authorization() -> (TestApp, String, QuirkServer, String, String) {
    let app = TestApp::spawn().await;
    let org = org_token(&app).await;
    let q = QuirkServer::start(json!({})).await;
    app.put_definition(&org, "idp", &quirk_def(&q)).await.assert_status(StatusCode::CREATED);
    let id = create(&app, &org, "idp").await;
    let reply = app.request(Method::POST, &format!("/v1/connections/{id}/authorize"), Some(&org), None).await;
    reply.assert_status(StatusCode::OK);
    let url = reply.body["authorize_url"].as_str().expect("authorize_url").to_owned();
    (app, org, q, id, url)
}

#[tokio::test]
async fn the_callback_passes_on_only_reduced_provider_text() {
    let (app, _org, _provider, _id, authorize_url) = started_authorization().await;
    let state = query_param(&authorize_url, "state").unwrap();
    let attack = format!(
        "<script>alert(1)</script> Visit https://evil.example/login?x=1 {}",
        "and a very long story ".repeat(40)
    );
    let mut callback = reqwest::Url::parse(&format!("{}/v1/oauth/callback", app.address)).unwrap();
    callback
        .query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("error", "access_denied<img src=x>")
        .append_pair("error_description", &attack);
    let done = browser().get(callback.as_str()).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::FOUND);
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(FAILURE), "{location}");
    let error = query_param(&location, "error").unwrap();
    assert_eq!(error, "access_deniedimgsrcx", "codes keep [A-Za-z0-9_.-] only");
    let description = query_param(&location, "error_description").unwrap();
    assert!(description.len() <= 120, "{description}");
    for bad in ['<', '>', '/', '?', '=', '"'] {
        assert!(!description.contains(bad), "{bad:?} in {description}");
    }
}

#[tokio::test]
async fn a_head_request_does_not_spend_the_state() {
    let (app, org, q, id, authorize_url) = started_authorization().await;
    let back = q.authorize(&authorize_url).await;
    let head = browser().head(&back).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(q.token_calls("authorization_code").await, 0, "a prefetcher spent nothing");
    let done = browser().get(&back).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::FOUND);
    assert!(done.headers()["location"].to_str().unwrap().starts_with("http://localhost:3000/ok"));
    assert_eq!(app.get_connection(&org, &id).await.body["status"], "configured");
}

#[tokio::test]
async fn answers_carrying_credentials_are_never_cached() {
    let app = TestApp::spawn().await;
    let org = org_token(&app).await;
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let def = json!({"auth": "api_key", "inputs": {"apiKey": {"type": "password", "required": true}}});
    app.put_definition(&org, "k", &def).await.assert_status(StatusCode::CREATED);
    let created =
        app.create_connection(&org, &json!({"definition": "k", "customer": "c-1", "values": {"apiKey": "sk"}})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let lookup = app.lookup(&runtime, &id, &json!({})).await;
    lookup.assert_status(StatusCode::OK);
    assert_eq!(lookup.header("cache-control"), Some("no-store"));
    let q = QuirkServer::start(json!({})).await;
    app.put_definition(&org, "idp", &quirk_def(&q)).await.assert_status(StatusCode::CREATED);
    let oauth_id = create(&app, &org, "idp").await;
    let authorize = app.request(Method::POST, &format!("/v1/connections/{oauth_id}/authorize"), Some(&org), None).await;
    authorize.assert_status(StatusCode::OK);
    assert_eq!(authorize.header("cache-control"), Some("no-store"));
    for reply in [app.get_connection(&org, &id).await, app.list_connections(&org, "").await] {
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
}

#[tokio::test]
async fn customers_do_not_learn_the_names_of_organization_inputs() {
    let app = TestApp::spawn().await;
    let org = org_token(&app).await;
    let customer = app.token(ORG, Some("c-1"), &[]).await;
    let def = json!({"auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "required": true},
        "partnerSigningKey": {"type": "password", "required": true, "visibility": "organization"}}});
    app.put_definition(&org, "k", &def).await.assert_status(StatusCode::CREATED);
    let refused = app.create_connection(&customer, &json!({"definition": "k", "values": {}})).await;
    refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!refused.text.contains("partnerSigningKey"), "{}", refused.text);
    assert!(refused.error_fields().contains(&"values.apiKey".to_owned()));
    let org_refused = app.create_connection(&org, &json!({"definition": "k", "customer": "c-1"})).await;
    assert!(org_refused.error_fields().contains(&"values.partnerSigningKey".to_owned()), "the organization is told");
}

#[tokio::test]
async fn the_values_of_a_connection_are_bounded_in_total_and_refused_early() {
    let app = TestApp::spawn().await;
    let org = org_token(&app).await;
    let inputs: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("note{i}"), json!({"type": "text"}))).collect();
    app.put_definition(&org, "notes", &json!({"auth": "custom", "inputs": inputs}))
        .await
        .assert_status(StatusCode::CREATED);
    let created = app.create_connection(&org, &json!({"definition": "notes", "customer": "c-1"})).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let chunk = "x".repeat(20_000);
    let mut refused = None;
    for i in 0..8 {
        let patch = app.patch_connection(&org, &id, &json!({"values": {format!("note{i}"): chunk}}), None).await;
        if patch.status != StatusCode::OK {
            refused = Some((i, patch));
            break;
        }
    }
    let (i, patch) = refused.expect("accumulated values are refused");
    assert_eq!(i, 3, "three 20 KB values fit in 64 KiB, a fourth does not");
    patch.assert_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(patch.error_fields(), vec!["values".to_owned()]);
    let read = app.get_connection(&org, &id).await;
    assert!(read.body["values"].get("note3").is_none(), "nothing of the refused change was kept");
}

#[tokio::test]
async fn the_data_directory_and_its_files_are_private_whatever_they_were() {
    let backend = Backend::fresh().await;
    let dir = backend.data_dir().to_owned();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("latchkey.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let app = TestApp::spawn_with(&backend, &random_secret()).await;
    let org = org_token(&app).await;
    app.put_definition(&org, "k", &json!({"auth": "api_key"})).await.assert_status(StatusCode::CREATED);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let files = files_under(&dir);
    assert!(files.iter().any(|f| f.ends_with("latchkey.db-wal")), "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

/// A quirk provider whose refresh answers `answer` (and whose other grants answer as usual), an
/// authorized connection against it, and the organization's token.
async fn authorized_against(app: &TestApp, refresh: Value) -> (QuirkServer, String, String) {
    let org = org_token(app).await;
    let q = QuirkServer::start(json!({"token": {"refresh_token": [refresh]}})).await;
    app.put_definition(&org, "idp", &quirk_def(&q)).await.assert_status(StatusCode::CREATED);
    let id = create(app, &org, "idp").await;
    assert!(authorize(app, &org, &q, &id).await.starts_with("http://localhost:3000/ok"));
    (q, org, id)
}

#[tokio::test]
async fn new_values_do_not_revive_a_dead_grant_and_a_report_keeps_the_providers_reason() {
    let app = TestApp::spawn().await;
    let (q, org, id) = authorized_against(&app, json!({"status": 400, "json": {"error": "invalid_grant"}})).await;
    app.request(Method::POST, &format!("/v1/connections/{id}/refresh"), Some(&org), None).await;
    assert_eq!(app.get_connection(&org, &id).await.body["error"]["code"], "grant_refused");
    // A report from an integration does not replace what the provider said.
    let runtime = app.token(ORG, None, &["runtime"]).await;
    let reported = app.lookup(&runtime, &id, &json!({"action": "report_error", "message": "Acme answered 401"})).await;
    reported.assert_status(StatusCode::OK);
    assert_eq!(reported.body["error"]["code"], "grant_refused");
    // Changing a value is no new authorization: the grant stays dead, nothing is sent.
    let patched =
        app.patch_connection(&org, &id, &json!({"label": "renamed", "values": {"scopes": "read"}}), None).await;
    patched.assert_status(StatusCode::OK);
    assert_eq!(patched.body["status"], "error");
    assert_eq!(patched.body["error"]["code"], "grant_refused");
    let lookup = app.lookup(&runtime, &id, &json!({})).await;
    assert_eq!(lookup.problem_type(), "urn:latchkey:problem:connection-error");
    assert_eq!(q.token_calls("refresh_token").await, 1);
}

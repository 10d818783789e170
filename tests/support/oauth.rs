//! Real OAuth 2.0 servers on loopback for the tests: [`OidcServer`] runs `tests/oauth/oidc.mjs`
//! (oidc-provider: strict, PKCE, refresh-token rotation with reuse detection, revocation,
//! introspection, login and consent pages) and [`MockServer`] runs `tests/oauth/mock.mjs`
//! (oauth2-mock-server: no login, lenient, with fault injection and reshaped token responses).
//! Both scripts document their configuration JSON at the top; `tests/run.sh` installs them with
//! `npm ci --prefix tests/oauth`.
//!
//! Every test starts its own server,
//! which lives until the value is dropped; the server's stdin is a pipe held by that value, so it
//! also exits when the test binary does, however it ends. Its stderr goes to the test's captured
//! output (shown when the test fails).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{RequestBuilder, StatusCode, Url, redirect};
use serde_json::Value;
use tokio::sync::oneshot;

/// How long a server may take to print its ready line (about a second; CI may be busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many redirects and form posts [`OidcServer::login_and_consent`] follows before giving up.
const MAX_HOPS: usize = 12;

/// The account the devInteractions login page signs in (any name works there).
pub const TEST_USER: &str = "latchkey-test-user";

/// The client [`OidcServer`] registers unless its configuration names another.
pub const DEFAULT_CLIENT_ID: &str = "latchkey-test";
/// The secret of [`DEFAULT_CLIENT_ID`] unless the configuration names another.
pub const DEFAULT_CLIENT_SECRET: &str = "latchkey-test-secret";

/// A node server started from `tests/oauth/`, killed and reaped on drop.
pub(crate) struct NodeProcess {
    /// `http://127.0.0.1:PORT`, from the script's ready line.
    pub(crate) url: String,
    /// `/.well-known/openid-configuration`.
    discovery: Value,
    // Never written to: holding the write end open keeps the server alive.
    stdin: Option<ChildStdin>,
    child: Child,
}

impl NodeProcess {
    pub(crate) async fn start(name: &str, config: &Value) -> Self {
        let dir = crate::repo_root().join("tests/oauth");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir() && dir.join("node_modules/oauth2-mock-server").is_dir(),
            "{} is missing: the OAuth test servers are not installed. Run bash tests/run.sh or npm ci --prefix tests/oauth",
            dir.join("node_modules").display()
        );
        let script = dir.join(format!("{name}.mjs"));
        let mut child = Command::new("node")
            .arg(&script)
            .arg(config.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `node {}` (is Node.js 20+ on PATH?): {e}", script.display()));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // Threads spawned by a test inherit its output capture, so this shows only if it fails.
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
            }
        });

        // Read on a thread so a hung start is a timeout instead of a test that never ends.
        let prefix = format!("{name} listening on ");
        let (tx, rx) = oneshot::channel::<Result<String, Vec<String>>>();
        let ready = prefix.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let mut seen = Vec::new();
            for line in lines.by_ref() {
                if let Some(url) = line.strip_prefix(&ready) {
                    let _ = tx.send(Ok(url.trim().to_owned()));
                    // Keep draining, so a stray write never blocks or kills the server.
                    lines.for_each(drop);
                    return;
                }
                seen.push(line);
            }
            let _ = tx.send(Err(seen));
        });

        let mut process = NodeProcess { url: String::new(), discovery: Value::Null, stdin: Some(stdin), child };
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(Ok(url))) => process.url = url,
            Ok(Ok(Err(stdout))) => {
                let status = process.child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!(
                    "{name}.mjs exited ({status}) before it was ready; its stderr is above, its stdout was {stdout:?}"
                )
            }
            Ok(Err(_)) => panic!("{name}.mjs: the stdout reader stopped"),
            // `process` is dropped here, which kills the server.
            Err(_) => panic!("{name}.mjs did not print `{prefix}URL` within {START_TIMEOUT:?}"),
        }
        let discovery_url = format!("{}/.well-known/openid-configuration", process.url);
        process.discovery = get_json(&discovery_url).await;
        process
    }

    pub(crate) fn endpoint(&self, key: &str) -> String {
        self.discovery[key]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no {key} in its discovery document: {}", self.url, self.discovery))
            .to_owned()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that never follows redirects: the tests look at every hop.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(redirect::Policy::none()).build().expect("reqwest client")
}

pub(crate) async fn get_json(url: &str) -> Value {
    let response = http().get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(status.is_success(), "GET {url}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Status and JSON body (`Value::Null` when empty or not JSON) of a response.
pub(crate) async fn status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = response.text().await.expect("read the response body");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// How the test client authenticates at the token, revocation and introspection endpoints.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
    /// `client_secret_basic` or `client_secret_post`.
    pub auth_method: String,
}

impl ClientCredentials {
    /// Adds the credentials to a form POST: a Basic header, or form fields (merged into `form`).
    fn apply(&self, request: RequestBuilder, form: &[(&str, &str)]) -> RequestBuilder {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let request = if self.auth_method == "client_secret_post" {
            fields.push(("client_id", &self.client_id));
            fields.push(("client_secret", &self.client_secret));
            request
        } else {
            request.basic_auth(&self.client_id, Some(&self.client_secret))
        };
        request.form(&fields)
    }
}

/// An oidc-provider (`tests/oauth/oidc.mjs`) with one confidential client; see that file for the
/// configuration keys (only `redirect_uris` is required).
pub struct OidcServer {
    /// `http://127.0.0.1:PORT`, the `iss` of its tokens and authorization responses.
    pub issuer: String,
    /// The registered client (from the configuration, or the defaults).
    pub client: ClientCredentials,
    /// The client's registered redirect URIs.
    pub redirect_uris: Vec<String>,
    process: NodeProcess,
}

impl OidcServer {
    /// Starts a provider configured by `config` (e.g. `json!({"redirect_uris": [cb],
    /// "access_token_ttl": 5})`) and waits until it answers.
    pub async fn start(config: Value) -> Self {
        let redirect_uris: Vec<String> = config["redirect_uris"]
            .as_array()
            .expect("the oidc configuration needs `redirect_uris`, an array of URLs")
            .iter()
            .map(|u| u.as_str().expect("redirect_uris are strings").to_owned())
            .collect();
        let string = |key: &str, default: &str| config[key].as_str().unwrap_or(default).to_owned();
        let client = ClientCredentials {
            client_id: string("client_id", DEFAULT_CLIENT_ID),
            client_secret: string("client_secret", DEFAULT_CLIENT_SECRET),
            auth_method: string("token_endpoint_auth_method", "client_secret_basic"),
        };
        let process = NodeProcess::start("oidc", &config).await;
        OidcServer { issuer: process.url.clone(), client, redirect_uris, process }
    }

    pub fn authorize_endpoint(&self) -> String {
        self.process.endpoint("authorization_endpoint")
    }

    pub fn token_endpoint(&self) -> String {
        self.process.endpoint("token_endpoint")
    }

    pub fn revocation_endpoint(&self) -> String {
        self.process.endpoint("revocation_endpoint")
    }

    pub fn introspection_endpoint(&self) -> String {
        self.process.endpoint("introspection_endpoint")
    }

    /// Counters and events of `GET /__stats`: `token_requests.{authorization_code, refresh_token,
    /// client_credentials}`, `token_errors`, `reused_refresh_tokens`, `revocations`,
    /// `introspections`, `events` (see `tests/oauth/oidc.mjs`).
    pub async fn stats(&self) -> Value {
        get_json(&format!("{}/__stats", self.issuer)).await
    }

    /// A token request as the registered client: status and JSON body, errors included.
    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let request = self.client.apply(http().post(self.token_endpoint()), form);
        status_and_json(request.send().await.expect("POST to the token endpoint")).await
    }

    /// RFC 7662 introspection of `token` as the registered client; `{"active": false}` for a
    /// token that is unknown, expired or revoked.
    pub async fn introspect(&self, token: &str) -> Value {
        let request = self.client.apply(http().post(self.introspection_endpoint()), &[("token", token)]);
        let (status, body) = status_and_json(request.send().await.expect("POST to the introspection endpoint")).await;
        assert_eq!(status, StatusCode::OK, "introspection failed: {body}");
        body
    }

    /// RFC 7009 revocation of `token` as the registered client. Revoking a refresh token revokes
    /// its whole grant; revoking an access token revokes only that token.
    pub async fn revoke(&self, token: &str) -> StatusCode {
        let request = self.client.apply(http().post(self.revocation_endpoint()), &[("token", token)]);
        request.send().await.expect("POST to the revocation endpoint").status()
    }

    /// Plays the user at the provider: follows `authorize_url` through the login page (as
    /// [`TEST_USER`]) and the consent page, and returns the URL the provider finally redirects to
    /// (the client's redirect URI with `code`, `state` and `iss`) without requesting it.
    ///
    /// Each call is a new browser (fresh cookies), so it always logs in. If the provider rejects
    /// the request with a redirect to the client (e.g. `error=invalid_scope`), that redirect is
    /// returned as it is.
    pub async fn login_and_consent(&self, authorize_url: &str) -> String {
        self.drive(authorize_url, true).await
    }

    /// Like [`Self::login_and_consent`], but the user logs in and then cancels at the consent
    /// page: returns the redirect to the client carrying `error=access_denied`.
    pub async fn deny_consent(&self, authorize_url: &str) -> String {
        self.drive(authorize_url, false).await
    }

    /// The device authorization endpoint (`device_flow` in the configuration).
    pub fn device_authorization_endpoint(&self) -> String {
        self.process.endpoint("device_authorization_endpoint")
    }

    /// Plays the user of an RFC 8628 device flow at the provider's user page (`/device`): enters
    /// `user_code`, confirms it, logs in (as [`TEST_USER`]) and consents. Panics unless the
    /// provider ends on its "Sign-in Success" page.
    pub async fn approve_device(&self, user_code: &str) {
        self.drive_device(user_code, true).await;
    }

    /// Like [`Self::approve_device`], but the user aborts at the confirmation: the provider marks
    /// the device code `access_denied`. Panics unless the provider says it was interrupted.
    pub async fn deny_device(&self, user_code: &str) {
        self.drive_device(user_code, false).await;
    }

    async fn drive_device(&self, user_code: &str, approve: bool) {
        let client = http();
        let mut jar = CookieJar::default();
        let mut url = Url::parse(&format!("{}/device", self.issuer)).expect("device page URL");
        let mut form: Option<Vec<(String, String)>> = None;
        let mut trail = Vec::new();
        for _ in 0..MAX_HOPS {
            trail.push(url.to_string());
            let body = match hop(&client, &mut jar, &url, form.take(), &trail).await {
                Hop::Redirect(next) => {
                    url = next;
                    continue;
                }
                Hop::Page(body) => body,
            };
            let xsrf = || {
                let start = body.find(r#"name="xsrf" value=""#).map(|i| i + r#"name="xsrf" value=""#.len());
                let start = start.unwrap_or_else(|| panic!("{url}: no xsrf field:\n{body}"));
                body[start..].split('"').next().unwrap_or_default().to_owned()
            };
            if body.contains("Sign-in Success") {
                assert!(approve, "the provider approved a code the user aborted");
                return;
            } else if body.contains("The Sign-in request was interrupted") {
                assert!(!approve, "the provider says interrupted:\n{body}\nafter {trail:#?}");
                return;
            } else if body.contains("op.deviceConfirmForm") {
                let choice = if approve { "confirm" } else { "abort" };
                form = Some(owned(&[("xsrf", &xsrf()), ("user_code", user_code), (choice, "yes")]));
            } else if body.contains("op.deviceInputForm") {
                form = Some(owned(&[("xsrf", &xsrf()), ("user_code", user_code)]));
            } else if body.contains(r#"name="prompt" value="login""#) {
                form = Some(owned(&[("prompt", "login"), ("login", TEST_USER), ("password", "test-password")]));
            } else if body.contains(r#"name="prompt" value="consent""#) {
                form = Some(owned(&[("prompt", "consent")]));
            } else {
                panic!("{url}: not a page of the device flow:\n{body}\nafter {trail:#?}");
            }
        }
        panic!("the device flow did not end after {MAX_HOPS} steps: {trail:#?}")
    }

    async fn drive(&self, authorize_url: &str, consent: bool) -> String {
        let client = http();
        let mut jar = CookieJar::default();
        let mut url = Url::parse(authorize_url).unwrap_or_else(|e| panic!("bad authorize URL {authorize_url}: {e}"));
        let mut form: Option<Vec<(String, String)>> = None;
        let mut trail = Vec::new();
        for _ in 0..MAX_HOPS {
            trail.push(url.to_string());
            let body = match hop(&client, &mut jar, &url, form.take(), &trail).await {
                Hop::Redirect(next) if !next.as_str().starts_with(&format!("{}/", self.issuer)) => {
                    return next.to_string();
                }
                Hop::Redirect(next) => {
                    url = next;
                    continue;
                }
                Hop::Page(body) => body,
            };
            // The devInteractions pages: a login form, then a consent form.
            if body.contains(r#"name="prompt" value="login""#) {
                form = Some(owned(&[("prompt", "login"), ("login", TEST_USER), ("password", "test-password")]));
            } else if body.contains(r#"name="prompt" value="consent""#) {
                if consent {
                    form = Some(owned(&[("prompt", "consent")]));
                } else {
                    url = url.join(&format!("{}/abort", url.path())).expect("abort URL");
                }
            } else {
                panic!("{url}: neither a login nor a consent page:\n{body}\nafter {trail:#?}");
            }
        }
        panic!("no redirect to the client after {MAX_HOPS} steps: {trail:#?}")
    }
}

/// An oauth2-mock-server (`tests/oauth/mock.mjs`): `/authorize` redirects straight back with a
/// code, any client and any code or refresh token is accepted. See that file for the
/// configuration (`faults`, `rewrites`).
pub struct MockServer {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    process: NodeProcess,
}

impl MockServer {
    /// Starts a mock configured by `config` (`json!({})` for plain answers).
    pub async fn start(config: Value) -> Self {
        let process = NodeProcess::start("mock", &config).await;
        MockServer { issuer: process.url.clone(), process }
    }

    /// The base URL, `http://127.0.0.1:PORT` (same as [`Self::issuer`]).
    pub fn url(&self) -> &str {
        &self.issuer
    }

    pub fn authorize_endpoint(&self) -> String {
        self.process.endpoint("authorization_endpoint")
    }

    pub fn token_endpoint(&self) -> String {
        self.process.endpoint("token_endpoint")
    }

    pub fn revocation_endpoint(&self) -> String {
        self.process.endpoint("revocation_endpoint")
    }

    /// Replaces the whole configuration (`faults`, `rewrites`) of the running mock.
    pub async fn configure(&self, config: Value) {
        let url = format!("{}/__config", self.issuer);
        let response = http().put(&url).json(&config).send().await.unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        let (status, body) = status_and_json(response).await;
        assert_eq!(status, StatusCode::OK, "PUT {url}: {body}");
    }

    /// Counters and events of `GET /__stats`: `token_requests.{authorization_code, refresh_token,
    /// client_credentials}`, `faults_served`, `authorize_requests`, `revocations`,
    /// `introspections`, `events` (see `tests/oauth/mock.mjs`).
    pub async fn stats(&self) -> Value {
        get_json(&format!("{}/__stats", self.issuer)).await
    }

    /// Requests `authorize_url` and returns where the mock redirects (the redirect URI with
    /// `code` and `state`), without requesting it.
    pub async fn authorize(&self, authorize_url: &str) -> String {
        let response = http().get(authorize_url).send().await.unwrap_or_else(|e| panic!("GET {authorize_url}: {e}"));
        let status = response.status();
        match response.headers().get(LOCATION).and_then(|l| l.to_str().ok()) {
            Some(location) if status.is_redirection() => location.to_owned(),
            _ => panic!("GET {authorize_url}: {status} {}", response.text().await.unwrap_or_default()),
        }
    }

    /// A token request (form fields as given, no client authentication): status and JSON body
    /// (`Value::Null` for a body that is not JSON).
    pub async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = http().post(self.token_endpoint()).form(form).send().await.expect("POST to the token endpoint");
        status_and_json(response).await
    }
}

/// A PKCE code verifier (64 characters of the unreserved set), different on every call.
pub fn pkce_verifier() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut out = String::with_capacity(64);
    while out.len() < 64 {
        // RandomState is seeded from the OS; the counter separates calls.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut bits = hasher.finish();
        for _ in 0..10 {
            out.push(ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char);
            bits /= ALPHABET.len() as u64;
        }
    }
    out.truncate(64);
    out
}

/// The S256 code challenge of `verifier`: BASE64URL(SHA-256(verifier)) without padding.
///
/// Computed by node's crypto module, which the harness needs anyway, because the root package has
/// no SHA-256 among its dev-dependencies.
pub fn pkce_s256(verifier: &str) -> String {
    // Through the environment: a verifier may start with `-`, which node would read as an option.
    let script = "process.stdout.write(require('node:crypto').createHash('sha256').update(process.env.PKCE_VERIFIER).digest('base64url'))";
    let output = Command::new("node")
        .args(["-e", script])
        .env("PKCE_VERIFIER", verifier)
        .output()
        .expect("run node for SHA-256");
    assert!(output.status.success(), "node: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("base64url is ASCII")
}

/// The value of query parameter `name` in `url`, if present.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = Url::parse(url).unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// Just enough of a browser's cookie store for one loopback host: cookies are kept per name and
/// path (oidc-provider scopes its interaction cookies to `/interaction/UID` and `/auth/UID`).
#[derive(Default)]
struct CookieJar {
    /// (name, path, value)
    cookies: Vec<(String, String, String)>,
}

impl CookieJar {
    fn store(&mut self, url: &Url, response: &reqwest::Response) {
        for header in response.headers().get_all(SET_COOKIE) {
            let Ok(header) = header.to_str() else { continue };
            let mut parts = header.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|p| p.split_once('=')) else { continue };
            let mut path = default_path(url.path());
            let mut expired = value.is_empty();
            for attribute in parts {
                let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
                match key.to_ascii_lowercase().as_str() {
                    "path" if val.starts_with('/') => path = val.to_owned(),
                    "max-age" => expired |= val.parse::<i64>().is_ok_and(|s| s <= 0),
                    "expires" => expired |= val.contains("1970"),
                    _ => {}
                }
            }
            self.cookies.retain(|(n, p, _)| !(n == name && *p == path));
            if !expired {
                self.cookies.push((name.to_owned(), path, value.to_owned()));
            }
        }
    }

    /// The `Cookie` header for a request to `url`, longest paths first.
    fn header_for(&self, url: &Url) -> Option<String> {
        let request_path = url.path();
        let mut matching: Vec<_> =
            self.cookies.iter().filter(|(_, path, _)| path_matches(request_path, path)).collect();
        matching.sort_by_key(|(_, path, _)| std::cmp::Reverse(path.len()));
        let header: Vec<String> = matching.iter().map(|(name, _, value)| format!("{name}={value}")).collect();
        (!header.is_empty()).then(|| header.join("; "))
    }
}

/// RFC 6265 §5.1.4: the directory of the request path.
fn default_path(request_path: &str) -> String {
    match request_path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => request_path[..i].to_owned(),
    }
}

/// RFC 6265 §5.1.4 path-match.
fn path_matches(request_path: &str, cookie_path: &str) -> bool {
    request_path == cookie_path
        || (request_path.starts_with(cookie_path)
            && (cookie_path.ends_with('/') || request_path[cookie_path.len()..].starts_with('/')))
}

/// Owned form fields, as [`hop`] posts them.
fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Where one step of a browser through the provider's pages led.
enum Hop {
    /// A redirect, to this absolute URL.
    Redirect(Url),
    /// A 2xx page's body.
    Page(String),
}

/// One step of a browser through the provider's pages: GET `url` (or POST `form` to it) with
/// the cookies `jar` holds for it, keeping those it sets. Panics, naming `trail`, on a failure
/// answer or a redirect without a usable `Location`.
async fn hop(
    client: &reqwest::Client,
    jar: &mut CookieJar,
    url: &Url,
    form: Option<Vec<(String, String)>>,
    trail: &[String],
) -> Hop {
    let request = match form {
        Some(fields) => client.post(url.clone()).form(&fields),
        None => client.get(url.clone()),
    };
    let request = match jar.header_for(url) {
        Some(cookies) => request.header(COOKIE, cookies),
        None => request,
    };
    let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    jar.store(url, &response);
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_else(|| panic!("{url}: {status} without a Location"));
        return Hop::Redirect(url.join(location).unwrap_or_else(|e| panic!("{url}: bad Location {location}: {e}")));
    }
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {body}\nafter {trail:#?}");
    Hop::Page(body)
}

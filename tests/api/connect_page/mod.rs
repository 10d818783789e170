//! The hosted connect page over HTTP (SPEC section 9), as a browser without JavaScript sees it:
//! its headers (CSP with the configured `frame-ancestors`, `no-store`, `no-referrer`,
//! `nosniff`), the one-time link traded for an HttpOnly SameSite=Lax cookie, refused links and
//! forms (CSRF), the API-key form with a field error then success, disconnect, and what the HTML
//! never holds (a password value, an organization-only input, unescaped markup). The real
//! browser flows (OAuth, popups, frames) are `tests/browser/`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, random_hex, random_secret};

mod oauth;
mod oauth1;
mod samples;
mod trial;

const ORG: &str = "acme";
const CUSTOMER: &str = "c-1";
/// A password value planted through the form: it must never come back in any page.
const PLANTED: &str = "sk_live_planted_secret_value_7f3a";
/// The default of an organization-only input: never on the page, nor its name or label.
const ORG_ONLY: &str = "org-only-default-value-91c2";

/// An API-key definition with a customer password, string and number input and an
/// organization-only one, labelled with markup that must come out escaped.
fn api_key_definition() -> Value {
    json!({
        "label": "<script>alert(1)</script> Acme & \"Co\"",
        "description": "Your Acme API key, from <b>Settings</b>.",
        "auth": "api_key",
        "inputs": {
            "apiKey": {"type": "password", "label": "API key", "required": true, "visibility": "customer"},
            "region": {"type": "string", "label": "Region", "required": true, "visibility": "customer",
                       "default": "eu"},
            "limit": {"type": "number", "label": "Rate limit", "visibility": "customer"},
            "partnerToken": {"type": "string", "label": "Partner token (internal)", "visibility": "organization",
                             "default": ORG_ONLY}
        }
    })
}

/// A browser that follows no redirect (the test reads each one) and keeps its cookies by name.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

/// One answer, read to the end.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    html: String,
}

impl Page {
    fn header(&self, name: reqwest::header::HeaderName) -> &str {
        self.headers.get(&name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    fn location(&self) -> &str {
        self.header(LOCATION)
    }

    /// The `li.connection` of `id`, from its opening tag to the next row's (or the list's end).
    fn row(&self, id: &str) -> &str {
        let start = self
            .html
            .find(&format!("data-connection-id=\"{id}\""))
            .unwrap_or_else(|| panic!("no row {id} in {}", self.html));
        let rest = &self.html[start..];
        let end = rest[1..].find("<li class=\"connection\"").map_or(rest.len(), |e| e + 1);
        &rest[..end]
    }

    /// The value of the first `name="csrf"` hidden input.
    fn csrf(&self) -> String {
        let at = self.html.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf in {}", self.html));
        let rest = &self.html[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    /// Asserts the headers every connect page answer carries.
    fn assert_page_headers(&self, frame_ancestors: &str) {
        assert_eq!(self.header(CACHE_CONTROL), "no-store", "{self:?}");
        assert_eq!(self.header(reqwest::header::REFERRER_POLICY), "no-referrer");
        assert_eq!(self.header(reqwest::header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let csp = self.header(CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "base-uri 'none'",
            &format!("frame-ancestors {frame_ancestors}"),
        ] {
            assert!(csp.split("; ").any(|d| d == directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Browser { client, base: app.url(""), cookies: BTreeMap::new() }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let mut req = req;
        if !self.cookies.is_empty() {
            let header: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(COOKIE, header.join("; "));
        }
        let res = req.send().await.expect("send");
        for set in res.headers().get_all(SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.insert(name.trim().to_owned(), value.trim().to_owned());
        }
        let status = res.status();
        let headers = res.headers().clone();
        Page { status, headers, html: res.text().await.unwrap() }
    }

    /// GET an absolute URL (a link) or a path of the app.
    async fn get(&mut self, url: &str) -> Page {
        let url = if url.starts_with("http") { url.to_owned() } else { format!("{}{url}", self.base) };
        let req = self.client.get(url);
        self.send(req).await
    }

    /// POSTs `fields` as a browser's form does.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        self.send(req).await
    }

    /// Opens a connect link: the page after the trade's redirect.
    async fn open(&mut self, link: &str) -> (String, Page) {
        let traded = self.get(link).await;
        assert_eq!(traded.status, StatusCode::SEE_OTHER, "{}", traded.html);
        let to = traded.location().to_owned();
        let id = to.strip_prefix("/connect/").unwrap_or_else(|| panic!("redirected to {to}")).to_owned();
        let page = self.get(&to).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        (id, page)
    }
}

/// A server with the API-key definition `acme-api`, and an organization user's token.
async fn setup(app: &TestApp) -> String {
    let org = app.token(ORG, None, &[]).await;
    app.put_definition(&org, "acme-api", &api_key_definition()).await.assert_status(StatusCode::CREATED);
    org
}

/// A new connect link for the customer.
async fn link(app: &TestApp, org: &str, body: Value) -> String {
    let reply = app.request(Method::POST, "/v1/connect/sessions", Some(org), Some(&body)).await;
    reply.assert_status(StatusCode::CREATED);
    reply.body["url"].as_str().unwrap().to_owned()
}

fn session_body() -> Value {
    json!({"customer": CUSTOMER, "definitions": ["acme-api"]})
}

#[tokio::test]
async fn the_link_is_traded_once_for_an_http_only_lax_cookie_and_a_url_without_the_secret() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let link = link(&app, &org, session_body()).await;
    assert!(link.starts_with(&app.url("/connect?session=")), "{link}");
    let secret = link.rsplit('.').next().unwrap().to_owned();

    let mut browser = Browser::new(&app);
    let traded = browser.get(&link).await;
    assert_eq!(traded.status, StatusCode::SEE_OTHER);
    traded.assert_page_headers("'none'");
    let to = traded.location();
    let id = to.strip_prefix("/connect/").unwrap();
    assert!(!to.contains(&secret) && !to.contains('?'), "the page's URL holds no secret: {to}");
    let cookie = traded.header(SET_COOKIE);
    assert!(cookie.starts_with(&format!("latchkey_connect_{id}=")), "{cookie}");
    let attributes: Vec<&str> = cookie.split("; ").skip(1).collect();
    for wanted in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} in {cookie}");
    }
    assert!(!attributes.contains(&"Secure"), "plain http on loopback: a Secure cookie would be dropped: {cookie}");
    let max_age: i64 = attributes.iter().find_map(|a| a.strip_prefix("Max-Age=")).unwrap().parse().unwrap();
    assert!((2300..=2400).contains(&max_age), "the session's 30 minutes + an OAuth state's 10: {max_age}");
    assert!(!cookie.contains(&secret), "the cookie is a new secret, not the link's");

    let page = browser.get(to).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert!(page.header(CONTENT_TYPE).starts_with("text/html"));
    page.assert_page_headers("'none'");
    assert!(page.html.contains(&format!("data-session=\"{id}\"")));
    assert!(page.html.contains("section class=\"definition\" data-definition=\"acme-api\""), "{}", page.html);
    assert!(page.html.contains("<meta name=\"viewport\""));
    assert!(!page.html.contains("<script>") && !page.html.contains(" style="), "no inline script or style");

    // The link again, in this browser or another: refused, and the session stays this browser's.
    for mut who in [Browser::new(&app), browser] {
        let again = who.get(&link).await;
        assert_eq!(again.status, StatusCode::FORBIDDEN);
        assert!(again.html.contains("<h1>This connect link is no longer valid</h1>"), "{}", again.html);
        again.assert_page_headers("'none'");
        assert!(again.header(SET_COOKIE).is_empty());
    }

    // The page without the cookie, with another value, or for another id: refused.
    let mut stranger = Browser::new(&app);
    assert_eq!(stranger.get(&format!("/connect/{id}")).await.status, StatusCode::FORBIDDEN);
    stranger.cookies.insert(format!("latchkey_connect_{id}"), random_hex());
    assert_eq!(stranger.get(&format!("/connect/{id}")).await.status, StatusCode::FORBIDDEN);
    for bad in ["/connect", "/connect?session=nope", &format!("/connect?session={id}.{}", random_hex())] {
        let refused = stranger.get(bad).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{bad}");
        assert!(refused.html.contains("This connect link is no longer valid"));
    }
}

#[tokio::test]
async fn frame_ancestors_come_from_the_setting() {
    let default = TestApp::spawn().await;
    Browser::new(&default).get("/connect").await.assert_page_headers("'none'");

    let framed = TestApp::spawn_binary_with_env(
        &Backend::fresh().await,
        &random_secret(),
        &[("LATCHKEY_CONNECT_FRAME_ANCESTORS", "'self'  https://app.example.com")],
    )
    .await;
    let mut browser = Browser::new(&framed);
    browser.get("/connect").await.assert_page_headers("'self' https://app.example.com");
    let org = setup(&framed).await;
    let (_, page) = browser.open(&link(&framed, &org, session_body()).await).await;
    page.assert_page_headers("'self' https://app.example.com");
}

#[tokio::test]
async fn the_assets_are_served_with_their_types() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    for (path, kind, sample) in [
        ("/connect/assets/connect.css", "text/css", "section.definition"),
        ("/connect/assets/connect.js", "text/javascript", "latchkey:connected"),
    ] {
        let asset = browser.get(path).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert!(asset.header(CONTENT_TYPE).starts_with(kind), "{path}: {:?}", asset.headers);
        assert_eq!(asset.header(reqwest::header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert!(asset.html.contains(sample), "{path}");
        assert!(!asset.html.contains("http://") && !asset.html.contains("https://"), "{path}: no outside request");
    }
}

/// The API-key form over plain HTTP: a number that is not one and a missing required value
/// come back as a 422 page with each error next to its field, the entered non-secret value
/// kept and the password not; the corrected form creates the customer's connection, 303 to the
/// page's success banner.
#[tokio::test]
async fn the_api_key_form_shows_field_errors_then_connects() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let mut browser = Browser::new(&app);
    let (id, page) = browser.open(&link(&app, &org, session_body()).await).await;
    let csrf = page.csrf();
    assert!(page.html.contains("form class=\"values-form\" id=\"new-acme-api\""), "{}", page.html);
    for input in ["apiKey", "region", "limit"] {
        assert!(page.html.contains(&format!("<label for=\"new-acme-api-{input}\">")), "a label for {input}");
    }
    assert!(page.html.contains("value=\"eu\""), "the region's default");

    let values = format!("/connect/{id}/values");
    let wrong = browser
        .post(
            &values,
            &[
                ("csrf", &csrf),
                ("definition", "acme-api"),
                ("value.apiKey", PLANTED),
                ("value.region", "us-west-7"),
                ("value.limit", "lots"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", wrong.html);
    wrong.assert_page_headers("'none'");
    assert!(wrong.html.contains("class=\"banner error\" role=\"alert\""), "{}", wrong.html);
    assert!(
        wrong
            .html
            .contains("class=\"field-error\" id=\"new-acme-api-limit-error\" data-field=\"limit\">must be a number<"),
        "{}",
        wrong.html
    );
    assert!(wrong.html.contains("value=\"us-west-7\""), "the entered region is kept");
    assert!(!wrong.html.contains(PLANTED), "the password typed is never sent back");

    // The service's own validation: the required API key missing.
    let missing = browser
        .post(&values, &[("csrf", &csrf), ("definition", "acme-api"), ("value.region", "eu"), ("value.limit", "5")])
        .await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", missing.html);
    assert!(missing.html.contains("data-field=\"apiKey\""), "{}", missing.html);
    let listed = app.list_connections(&org, "").await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(0), "nothing created: {}", listed.body);

    let done = browser
        .post(
            &values,
            &[
                ("csrf", &csrf),
                ("definition", "acme-api"),
                ("value.apiKey", PLANTED),
                ("value.region", "us"),
                ("value.limit", "12"),
                ("value.partnerToken", "set-by-the-customer"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.html);
    let prefix = format!("/connect/{id}?connected=");
    let cid = done.location().strip_prefix(&prefix).unwrap_or_else(|| panic!("{}", done.location())).to_owned();
    let created = app.get_connection(&org, &cid).await;
    created.assert_status(StatusCode::OK);
    assert_eq!(created.body["customer"], CUSTOMER);
    assert_eq!(created.body["values"]["region"], "us");
    assert_eq!(created.body["values"]["limit"], 12);
    assert_eq!(created.body["values"]["apiKey"], json!({"set": true}));
    assert_ne!(created.body["values"]["partnerToken"], "set-by-the-customer", "organization-only: not the page's");

    let shown = browser.get(done.location()).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.html.contains("<div class=\"banner success\" role=\"status\">Connected successfully</div>"));
    assert!(shown.html.contains(&format!("data-connected=\"{cid}\"")));
    assert!(shown.html.contains(&format!("data-connection-id=\"{cid}\" data-status=\"configured\"")), "{}", shown.html);
    assert!(shown.html.contains(">Configured</span>"), "the status in words, not colour only");
    assert!(shown.html.contains("details class=\"logs\""));
    for page in [&page, &wrong, &missing, &shown] {
        assert!(!page.html.contains(PLANTED), "no password value");
        for hidden in [ORG_ONLY, "partnerToken", "Partner token"] {
            assert!(!page.html.contains(hidden), "{hidden}: organization-only inputs never reach the page");
        }
    }
    // A connected id that is not one of the page's gets no banner.
    let other = browser.get(&format!("/connect/{id}?connected=con_01kahzz7v4m3n2q0000000000a")).await;
    assert!(!other.html.contains("banner success") && other.html.contains("data-connected=\"\""));
}

#[tokio::test]
async fn labels_and_descriptions_are_escaped() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let mut browser = Browser::new(&app);
    let (id, page) = browser.open(&link(&app, &org, session_body()).await).await;
    assert!(page.html.contains("&lt;script&gt;alert(1)&lt;/script&gt; Acme &amp; &quot;Co&quot;"), "{}", page.html);
    assert!(page.html.contains("from &lt;b&gt;Settings&lt;/b&gt;."));
    assert!(!page.html.contains("<script>alert") && !page.html.contains("<b>Settings"));

    // A failed authorization's banner (the callback sends the browser back with the provider's
    // words): escaped too.
    let failed = browser.get(&format!("/connect/{id}?error=access_denied&error_description=%3Cb%3ENo%3C%2Fb%3E")).await;
    assert_eq!(failed.status, StatusCode::OK);
    assert!(
        failed.html.contains(
            "<div class=\"banner error\" role=\"alert\">The authorization did not complete: &lt;b&gt;No&lt;/b&gt;</div>"
        ),
        "{}",
        failed.html
    );
}

/// A form without the page's token, or with another session's, is refused and changes nothing.
#[tokio::test]
async fn forms_without_the_sessions_csrf_token_are_refused() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let mut browser = Browser::new(&app);
    let (first, page) = browser.open(&link(&app, &org, session_body()).await).await;
    let (second, other) = browser.open(&link(&app, &org, session_body()).await).await;
    assert_ne!(first, second);
    let (mine, theirs) = (page.csrf(), other.csrf());
    assert_ne!(mine, theirs);

    let form = |csrf: Option<&str>| {
        let mut fields = vec![("definition", "acme-api"), ("value.apiKey", "k"), ("value.region", "eu")];
        fields.extend(csrf.map(|c| ("csrf", c)));
        fields.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect::<Vec<_>>()
    };
    for (what, fields) in
        [("no token", form(None)), ("another session's", form(Some(&theirs))), ("made up", form(Some("00")))]
    {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let refused = browser.post(&format!("/connect/{first}/values"), &fields).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{what}: {}", refused.html);
        refused.assert_page_headers("'none'");
    }
    let listed = app.list_connections(&org, "").await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(0), "{}", listed.body);

    // Made with the page's token, the same form works; disconnect needs the token too.
    let done = browser
        .post(
            &format!("/connect/{first}/values"),
            &[("csrf", &mine), ("definition", "acme-api"), ("value.apiKey", "k"), ("value.region", "eu")],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.html);
    let cid = done.location().rsplit('=').next().unwrap().to_owned();
    let refused = browser.post(&format!("/connect/{first}/disconnect"), &[("connection_id", &cid)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refused =
        browser.post(&format!("/connect/{first}/disconnect"), &[("csrf", &theirs), ("connection_id", &cid)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get_connection(&org, &cid).await.body["status"], "configured");

    // Without the cookie, the right token is no use either.
    let mut stranger = Browser::new(&app);
    let refused =
        stranger.post(&format!("/connect/{first}/disconnect"), &[("csrf", &mine), ("connection_id", &cid)]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.html.contains("This connect link is no longer valid"));
}

#[tokio::test]
async fn disconnect_from_the_page() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let mut browser = Browser::new(&app);
    let (id, page) = browser.open(&link(&app, &org, session_body()).await).await;
    let csrf = page.csrf();
    let done = browser
        .post(
            &format!("/connect/{id}/values"),
            &[("csrf", &csrf), ("definition", "acme-api"), ("value.apiKey", PLANTED), ("value.region", "eu")],
        )
        .await;
    let cid = done.location().rsplit('=').next().unwrap().to_owned();
    let shown = browser.get(&format!("/connect/{id}")).await;
    assert!(shown.html.contains("data-action=\"disconnect\""), "{}", shown.html);

    let cut = browser.post(&format!("/connect/{id}/disconnect"), &[("csrf", &csrf), ("connection_id", &cid)]).await;
    assert_eq!(cut.status, StatusCode::SEE_OTHER, "{}", cut.html);
    assert_eq!(cut.location(), format!("/connect/{id}?disconnected={cid}"));
    assert_eq!(app.get_connection(&org, &cid).await.body["status"], "disconnected");
    let after = browser.get(cut.location()).await;
    assert!(after.html.contains(&format!("data-connection-id=\"{cid}\" data-status=\"disconnected\"")));
    assert!(after.html.contains(">Disconnected</span>"));
    assert!(!after.html.contains(PLANTED));

    // Another customer's connection (or none) is not this page's to disconnect.
    let missing =
        browser.post(&format!("/connect/{id}/disconnect"), &[("csrf", &csrf), ("connection_id", "con_nope")]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.html);
    assert!(missing.html.contains("class=\"banner error\""));
}

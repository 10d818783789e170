//! The Connect button of an OAuth definition over HTTP: its answer is a page of this origin
//! ("Continue to {label}") linking to the provider, so every page's CSP keeps `form-action
//! 'self'`; pressing it again reuses the pending connection; the authorization completes back on
//! the page. On a moved clock: the cookie outlives the session by an OAuth state's lifetime, so a
//! Connect pressed in the session's last minutes completes after the session expired (a plain
//! success page, not a redirect to an expired page). And a form error about an input the page
//! does not show never names it.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, REFERRER_POLICY};
use serde_json::{Value, json};
use support::oauth::MockServer;
use tower::ServiceExt;

use super::{Browser, CUSTOMER, ORG, Page, link, setup};
use crate::harness::{ShiftedClock, TestApp};

fn oauth_definition(mock: &MockServer) -> Value {
    json!({"label": "Mock <Cloud>", "auth": "oauth2_authorization_code", "inputs": {
        "authorizeUrl": {"type": "url", "default": mock.authorize_endpoint()},
        "tokenUrl": {"type": "url", "default": mock.token_endpoint()},
        "clientId": {"type": "string", "default": "cid"},
        "clientSecret": {"type": "password", "default": "cs"}}})
}

/// The `href` of the continue page's `a[data-continue]` link, unescaped.
fn continue_link(html: &str) -> String {
    let at = html.find("<a class=\"continue\" href=\"").unwrap_or_else(|| panic!("no continue link in {html}"));
    let rest = &html[at + "<a class=\"continue\" href=\"".len()..];
    let href = &rest[..rest.find('"').unwrap()];
    assert!(rest.contains("data-continue"), "{html}");
    href.replace("&amp;", "&")
}

/// Presses the Connect button of `mock` on session `id`'s page.
async fn press(browser: &mut Browser, id: &str, csrf: &str) -> Page {
    browser.post(&format!("/connect/{id}/authorize"), &[("csrf", csrf), ("definition", "mock")]).await
}

fn form_action(page: &Page) -> String {
    let csp = page.header(CONTENT_SECURITY_POLICY);
    csp.split("; ").find(|d| d.starts_with("form-action")).unwrap_or_else(|| panic!("{csp}")).to_owned()
}

#[tokio::test]
async fn the_connect_button_answers_a_page_of_this_origin_that_goes_on_to_the_provider() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let mock = MockServer::start(json!({})).await;
    app.put_definition(&org, "mock", &oauth_definition(&mock)).await.assert_status(StatusCode::CREATED);
    let mut browser = Browser::new(&app);
    let (id, page) =
        browser.open(&link(&app, &org, json!({"customer": CUSTOMER, "definitions": ["mock"]})).await).await;
    assert_eq!(form_action(&page), "form-action 'self'", "no provider origin in the page's policy");
    let csrf = page.csrf();

    let first = press(&mut browser, &id, &csrf).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.html);
    assert!(first.headers.get(LOCATION).is_none());
    first.assert_page_headers("'none'");
    assert_eq!(first.header(REFERRER_POLICY), "no-referrer");
    assert_eq!(form_action(&first), "form-action 'self'");
    assert!(first.html.contains("<h1>Continue to Mock &lt;Cloud&gt;</h1>"), "{}", first.html);
    assert!(first.html.contains("<script src=\"/connect/assets/connect.js\""), "connect.js follows the link");
    assert!(!first.html.contains("<script>"), "no inline script");
    let authorize_url = continue_link(&first.html);
    assert!(authorize_url.starts_with(&format!("{}?", mock.authorize_endpoint())), "{authorize_url}");

    // Pressed again (the first authorization abandoned): the same pending connection.
    let again = press(&mut browser, &id, &csrf).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.html);
    let listed = app.list_connections(&org, "").await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one pending connection, not one per press: {}", listed.body);
    assert_eq!(items[0]["status"], "pending");
    let cid = items[0]["id"].as_str().unwrap().to_owned();

    // The provider sends the browser back: the page, with its success banner.
    let back = mock.authorize(&continue_link(&again.html)).await;
    let done = browser.get(&back).await;
    assert!(done.status.is_redirection(), "{}: {}", done.status, done.html);
    assert_eq!(done.location(), format!("{}/connect/{id}?connected={cid}", app.url("")));
    let shown = browser.get(done.location()).await;
    assert!(shown.html.contains("role=\"status\">Authorization completed successfully</div>"), "{}", shown.html);
    assert_eq!(app.get_connection(&org, &cid).await.body["status"], "configured");
}

#[tokio::test]
async fn an_error_about_an_input_the_page_does_not_show_never_names_it() {
    let app = TestApp::spawn().await;
    let org = setup(&app).await;
    let definition = json!({"label": "Beta", "auth": "api_key", "inputs": {
        "apiKey": {"type": "password", "label": "API key", "required": true},
        "tenantSecretName": {"type": "string", "label": "Tenant (internal)", "required": true,
                             "visibility": "embedded"}}});
    app.put_definition(&org, "beta", &definition).await.assert_status(StatusCode::CREATED);
    let mut browser = Browser::new(&app);
    let (id, page) =
        browser.open(&link(&app, &org, json!({"customer": CUSTOMER, "definitions": ["beta"]})).await).await;
    let refused = browser
        .post(
            &format!("/connect/{id}/values"),
            &[("csrf", &page.csrf()), ("definition", "beta"), ("value.apiKey", "k")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.html);
    assert!(
        refused.html.contains("This connection cannot be saved: the organization&#39;s settings for it are incomplete")
            || refused
                .html
                .contains("This connection cannot be saved: the organization's settings for it are incomplete"),
        "{}",
        refused.html
    );
    for hidden in ["tenantSecretName", "Tenant (internal)"] {
        assert!(!refused.html.contains(hidden), "{hidden} in {}", refused.html);
    }
    assert_eq!(app.list_connections(&org, "").await.body["items"].as_array().map(Vec::len), Some(0));
}

/// A request to the router in this process: status, `Set-Cookie` (its first pair and its
/// `Max-Age`), `Location` and body.
struct Answer {
    status: StatusCode,
    cookie: Option<(String, i64)>,
    location: Option<String>,
    html: String,
}

async fn call(router: &axum::Router, method: &str, path: &str, cookie: Option<&str>, form: Option<String>) -> Answer {
    let mut req = axum::http::Request::builder().method(method).uri(path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let body = match form {
        Some(f) => {
            req = req.header("content-type", "application/x-www-form-urlencoded");
            axum::body::Body::from(f)
        }
        None => axum::body::Body::empty(),
    };
    let res = router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let cookie = header("set-cookie").map(|c| {
        let pair = c.split(';').next().unwrap().to_owned();
        let max_age = c.split("; ").find_map(|a| a.strip_prefix("Max-Age=")).unwrap().parse().unwrap();
        (pair, max_age)
    });
    let (status, location) = (res.status(), header("location"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer { status, cookie, location, html: String::from_utf8_lossy(&body).into_owned() }
}

/// Connect pressed with 5 minutes of the session left, the provider answering 9 minutes later
/// (the session gone, the state's 10 minutes not): the cookie is still there (Max-Age = the
/// session's 30 minutes + 10), the callback completes the authorization and, with no redirect
/// to send the browser to, says so on a page of its own instead of sending it to a page that
/// would only say the link is no longer valid.
#[tokio::test]
async fn a_connect_pressed_in_the_sessions_last_minutes_completes_after_it_expired() {
    use latchkey::domain::{OrgId, Principal};

    let public = "http://127.0.0.1:9";
    let dir = tempfile::tempdir().unwrap();
    let options = latchkey::service::ServiceOptions {
        public_url: Some(public.to_owned()),
        ..latchkey::service::ServiceOptions::default()
    };
    let clock = Arc::new(ShiftedClock::default());
    let app = latchkey::config::Components::embedded_with_clock(dir.path(), options, clock.clone()).unwrap();
    let router = latchkey::http::router(app.router_state(latchkey::http::auth::Verifier::refuse_all()));
    let p = Principal::organization(OrgId::parse(ORG).unwrap());
    let mock = MockServer::start(json!({})).await;
    app.service.put_definition(&p, "mock", &oauth_definition(&mock)).await.unwrap();
    let body = json!({"customer": CUSTOMER, "definitions": ["mock"]});
    let url = app.service.create_connect_session(&p, &body, Some(public)).await.unwrap().url;
    let traded = call(&router, "GET", url.strip_prefix(public).unwrap(), None, None).await;
    assert_eq!(traded.status, StatusCode::SEE_OTHER, "{}", traded.html);
    let (cookie, max_age) = traded.cookie.unwrap();
    assert!((2390..=2400).contains(&max_age), "the session's 30 minutes + a state's 10: {max_age}");
    let page_path = traded.location.unwrap();
    let page = call(&router, "GET", &page_path, Some(&cookie), None).await;
    let csrf = Page { status: page.status, headers: Default::default(), html: page.html }.csrf();

    clock.advance(Duration::from_secs(25 * 60));
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("csrf", csrf.as_str()), ("definition", "mock")])
        .finish();
    let pressed = call(&router, "POST", &format!("{page_path}/authorize"), Some(&cookie), Some(form)).await;
    assert_eq!(pressed.status, StatusCode::OK, "{}", pressed.html);
    let back = mock.authorize(&continue_link(&pressed.html)).await;

    clock.advance(Duration::from_secs(9 * 60));
    assert!(i64::from(34 * 60) < max_age, "the browser still sends the cookie 34 minutes on");
    assert_eq!(call(&router, "GET", &page_path, Some(&cookie), None).await.status, StatusCode::FORBIDDEN);
    let callback = back.strip_prefix(public).unwrap();
    let done = call(&router, "GET", callback, Some(&cookie), None).await;
    assert_eq!((done.status, done.location), (StatusCode::OK, None), "{}", done.html);
    assert!(done.html.contains("Authorization completed successfully"), "{}", done.html);
    let listed = app.service.list_connections(&p, &Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].status, latchkey::domain::Status::Configured);
}

//! The connect page served by the router in this process: on a clock the test moves (an expired
//! session), and as the `connections-api` Lambda function gets it (the `connect-page*` samples).

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ORG, Page, api_key_definition, session_body};
use crate::harness::ShiftedClock;

/// An expired session: its link, and its page in the browser that traded it, are refused (the
/// service's clock moved past the 30 minutes; the router served in this process).
#[tokio::test]
async fn an_expired_session_is_refused() {
    use latchkey::domain::{OrgId, Principal};

    let dir = tempfile::tempdir().unwrap();
    let options = latchkey::service::ServiceOptions {
        public_url: Some("http://127.0.0.1:9".to_owned()),
        ..latchkey::service::ServiceOptions::default()
    };
    let clock = Arc::new(ShiftedClock::default());
    let app = latchkey::config::Components::embedded_with_clock(dir.path(), options, clock.clone()).unwrap();
    let router = latchkey::http::router(app.router_state(latchkey::http::auth::Verifier::refuse_all()));
    let p = Principal::organization(OrgId::parse(ORG).unwrap());
    app.service.put_definition(&p, "acme-api", &api_key_definition()).await.unwrap();
    let get = |path: String, cookie: Option<String>| {
        let router = router.clone();
        async move {
            let mut req = axum::http::Request::get(path);
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let res = router.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
            let status = res.status();
            let cookie =
                res.headers().get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, cookie, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let path_of = |url: &str| url.strip_prefix("http://127.0.0.1:9").unwrap().to_owned();

    let traded = app.service.create_connect_session(&p, &session_body(), Some("http://127.0.0.1:9")).await.unwrap();
    let unused = app.service.create_connect_session(&p, &session_body(), Some("http://127.0.0.1:9")).await.unwrap();
    let (status, cookie, _) = get(path_of(&traded.url), None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let id = traded.url.split("session=").nth(1).unwrap().split('.').next().unwrap().to_owned();
    assert_eq!(get(format!("/connect/{id}"), cookie.clone()).await.0, StatusCode::OK);

    clock.advance(Duration::from_secs(31 * 60));
    let (status, _, html) = get(format!("/connect/{id}"), cookie).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("<h1>This connect link is no longer valid</h1>"));
    let (status, set, html) = get(path_of(&unused.url), None).await;
    assert_eq!((status, set), (StatusCode::FORBIDDEN, None));
    assert!(html.contains("<h1>This connect link is no longer valid</h1>"));
}

/// The secret the sample events' tokens are signed with (events/README.md).
const EVENTS_SECRET: &str = "latchkey-events-dev-secret-not-for-production";
/// The session id in the `connect-page*` samples; the test puts a real one in its place.
const SAMPLE_SESSION: &str = "01KAHZZ7V4M3N2Q0SAMPLE0000";

/// A sample event of `events/connections-api/` with each `(from, to)` replaced, in its body
/// (base64 when `isBase64Encoded`, as API Gateway sends a form) too.
fn sample(name: &str, replace: &[(&str, &str)]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("events/connections-api").join(name);
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let encoded = event["isBase64Encoded"] == true;
    if let Some(body) = event["body"].as_str().filter(|_| encoded) {
        event["body"] = json!(String::from_utf8(b64.decode(body).unwrap()).unwrap());
    }
    let mut raw = event.to_string();
    for (from, to) in replace {
        raw = raw.replace(from, to);
    }
    let mut event: Value = serde_json::from_str(&raw).unwrap();
    if let Some(body) = event["body"].as_str().filter(|_| encoded) {
        event["body"] = json!(b64.encode(body));
    }
    event.to_string()
}

/// The `connect-page*` samples through the `connections-api` router as lambda_http hands them
/// over: API Gateway's `cookies` array arrives as the `Cookie` header the page reads (the
/// answer's `Set-Cookie` goes back as the response's `cookies`, lambda_http's
/// `LambdaResponse::from_response`), and a base64 form body is decoded.
#[tokio::test]
async fn the_connect_page_samples_run_on_the_connections_api_function() {
    use latchkey::domain::{OrgId, Principal};
    use latchkey::http::Surface;

    let dir = tempfile::tempdir().unwrap();
    let public = "https://latchkey.acme.example";
    let options = latchkey::service::ServiceOptions {
        public_url: Some(public.into()),
        ..latchkey::service::ServiceOptions::default()
    };
    let app = latchkey::config::Components::embedded(dir.path(), options).unwrap();
    let verifier = latchkey::http::auth::Verifier::hs256(&secrecy::SecretString::from(EVENTS_SECRET)).unwrap();
    let router = latchkey::http::router_for(Surface::ConnectionsApi, app.router_state(verifier));
    let send = |raw: String| {
        let router = router.clone();
        async move {
            let req = lambda_http::request::from_str(&raw).expect("a valid API Gateway event");
            let res = router.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let header =
                |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let (location, cookie, kind) = (header("location"), header("set-cookie"), header("content-type"));
            let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            (status, location, cookie, kind, body)
        }
    };
    for name in ["put-definition.json", "put-oauth-definition.json"] {
        assert_eq!(send(sample(name, &[])).await.0, 201, "{name}");
    }
    let p = Principal::organization(OrgId::parse("acme").unwrap());
    let body = json!({"customer": "c-1", "definitions": ["acme-api", "acme-oauth"]});
    let link = app.service.create_connect_session(&p, &body, Some(public)).await.unwrap().url;
    let link = link.split("session=").nth(1).unwrap().to_owned();
    let id = link.split('.').next().unwrap().to_owned();

    let (status, location, cookie, _, _) = send(sample("connect-page-open-link.json", &[("SAMPLE_LINK", &link)])).await;
    assert_eq!((status, location.as_str()), (303, format!("/connect/{id}").as_str()));
    assert!(cookie.contains("; Secure"), "https public URL: {cookie}");
    let secret = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    let ours = [(SAMPLE_SESSION, id.as_str()), ("SAMPLE_BROWSER_SECRET", secret.as_str())];

    let (status, _, _, kind, html) = send(sample("connect-page.json", &ours)).await;
    assert_eq!(status, 200, "{html}");
    assert!(kind.starts_with("text/html"));
    let csrf = Page { status: StatusCode::OK, headers: Default::default(), html }.csrf();
    let ours = [ours[0], ours[1], ("SAMPLE_CSRF", csrf.as_str())];

    let (status, location, _, _, html) = send(sample("connect-page-values.json", &ours)).await;
    assert_eq!(status, 303, "{html}");
    let cid = location.split("connected=").nth(1).unwrap_or_else(|| panic!("{location}")).to_owned();
    let (status, location, _, kind, html) = send(sample("connect-page-authorize.json", &ours)).await;
    assert_eq!((status, location.as_str()), (200, ""), "{html}");
    assert!(kind.starts_with("text/html"));
    assert!(html.contains("href=\"https://auth.acme.example/oauth/authorize?"), "{html}");
    let cut = [ours[0], ours[1], ours[2], ("con_01kahzz7v4m3n2q0000000000a", cid.as_str())];
    let (status, location, _, _, html) = send(sample("connect-page-disconnect.json", &cut)).await;
    assert_eq!((status, location), (303, format!("/connect/{id}?disconnected={cid}")), "{html}");
    assert_eq!(app.service.get_connection(&p, &cid).await.unwrap().status, latchkey::domain::Status::Disconnected);

    for (name, kind) in [("connect-page-css.json", "text/css"), ("connect-page-js.json", "text/javascript")] {
        let (status, _, _, got, _) = send(sample(name, &[])).await;
        assert_eq!(status, 200, "{name}");
        assert!(got.starts_with(kind), "{name}: {got}");
    }
    // Without the cookie, the page is refused.
    let mut stranger: Value = serde_json::from_str(&sample("connect-page.json", &ours)).unwrap();
    stranger.as_object_mut().unwrap().remove("cookies");
    assert_eq!(send(stranger.to_string()).await.0, 403);
}

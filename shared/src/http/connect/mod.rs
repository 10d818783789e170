//! The hosted connect page (SPEC section 9): public routes (no bearer token) under `/connect`,
//! server-rendered HTML and two embedded assets. A browser proves its session with the HttpOnly
//! cookie it got by trading the link ([`headers::session_cookie`]), and each form post with the
//! page's CSRF token (bound to that cookie's secret). The page acts as the session's customer
//! through the service; nothing here decides what the customer may see or change.
//!
//! Routes: `GET /connect?session={id}.{secret}` (trade, 303), `GET /connect/{id}` (the page),
//! `POST /connect/{id}/values|disconnect` (forms, 303 on success), `POST /connect/{id}/authorize`
//! (200: a page of this origin that goes on to the provider, so `form-action` stays `'self'`),
//! `GET /connect/assets/connect.css|connect.js`.

mod form;
pub mod headers;
mod view;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::routing::post;
use secrecy::SecretString;

use self::form::{Form, FormInput, TooLarge};
pub use self::headers::{FrameAncestorsError, parse_frame_ancestors, request_cookies};
use self::view::{Banner, FormState, PageView};
use super::problem::Problem;
use super::{PublicUrl, RouterState};
use crate::domain::{ConnectSession, FieldError, InputType};
use crate::service::{ConnectPage, ServiceError};

/// The page's stylesheet and script, inside the binary.
const CONNECT_CSS: &str = include_str!("../../../assets/connect/connect.css");
const CONNECT_JS: &str = include_str!("../../../assets/connect/connect.js");

/// The `/connect` routes (mounted by `latchkey serve` and the `connections-api` function).
pub fn routes() -> Router<RouterState> {
    Router::new()
        .route("/connect", get(open_link))
        .route("/connect/{id}", get(show_page))
        .route("/connect/{id}/values", post(save_values))
        .route("/connect/{id}/authorize", post(authorize))
        .route("/connect/{id}/disconnect", post(disconnect))
        .route("/connect/assets/connect.css", get(|| async { asset("text/css; charset=utf-8", CONNECT_CSS) }))
        .route("/connect/assets/connect.js", get(|| async { asset("text/javascript; charset=utf-8", CONNECT_JS) }))
}

/// An embedded asset: the same for every session, so it may be cached (a short while: a new
/// release changes it under the same path).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut res = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    res
}

/// An HTML answer with the page headers, framed only by the configured ancestors.
fn html_response(s: &RouterState, status: StatusCode, html: String) -> Response {
    let csp = headers::content_security_policy(s.service.connect_frame_ancestors());
    let mut res = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    headers::set_page_headers(&mut res, &csp);
    res
}

/// A page saying only `title` and `text`.
fn message(s: &RouterState, status: StatusCode, title: &str, text: &str) -> Response {
    html_response(s, status, view::message_page(title, text))
}

/// 403 "This connect link is no longer valid": a link used before, expired, unknown or
/// malformed, or a browser without the session's cookie.
fn invalid_link(s: &RouterState) -> Response {
    message(s, StatusCode::FORBIDDEN, view::INVALID_LINK_TITLE, view::INVALID_LINK_TEXT)
}

/// A failure with no page to show it on: its status and safe message.
fn failure(s: &RouterState, e: ServiceError) -> Response {
    let problem = Problem::from(e);
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    message(s, status, "Something went wrong", &problem.detail)
}

/// A 303 to `to`, a path of this origin, with the page headers.
fn see_other(s: &RouterState, to: &str) -> Response {
    let Ok(location) = HeaderValue::from_str(to) else {
        return message(s, StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", "an internal error occurred");
    };
    let mut res = StatusCode::SEE_OTHER.into_response();
    res.headers_mut().insert(header::LOCATION, location);
    let csp = headers::content_security_policy(s.service.connect_frame_ancestors());
    headers::set_page_headers(&mut res, &csp);
    res
}

/// `GET /connect?session={id}.{secret}`: trades the one-time link for the session cookie and
/// sends the browser to the page, whose URL holds no secret (a shared screen or history
/// reveals nothing usable). Refused (used, expired, unknown, malformed): 403.
async fn open_link(
    State(s): State<RouterState>,
    method: Method,
    PublicUrl(public_url): PublicUrl,
    RawQuery(query): RawQuery,
) -> Response {
    // axum answers HEAD with the GET handler; a link prefetcher's HEAD must not spend the link.
    if method == Method::HEAD {
        let mut res = StatusCode::METHOD_NOT_ALLOWED.into_response();
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return res;
    }
    let link = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "session")
        .map(|(_, v)| v.into_owned());
    let Some(link) = link else {
        return invalid_link(&s);
    };
    match s.service.open_connect_link(&link).await {
        Ok((session, secret)) => {
            let max_age = s.service.connect_cookie_max_age(&session);
            let cookie = headers::session_cookie(&session.id, &secret, max_age, public_url.as_deref());
            let mut res = see_other(&s, &format!("/connect/{}", session.id));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(ServiceError::NotFound | ServiceError::Invalid(_)) => invalid_link(&s),
        Err(e) => failure(&s, e),
    }
}

/// A browser that holds a live session's cookie: the session and its browser secret.
struct Browser {
    session: ConnectSession,
    secret: SecretString,
}

/// The session whose page this is, if this browser holds its cookie; else the 403 page (or the
/// failure that kept it from being read).
async fn session_of(s: &RouterState, id: &str, headers: &HeaderMap) -> Result<Browser, Response> {
    let Some(secret) = headers::browser_secret(headers, id) else {
        return Err(invalid_link(s));
    };
    match s.service.connect_session(id, &secret).await {
        Ok(session) => Ok(Browser { session, secret }),
        Err(ServiceError::NotFound | ServiceError::Invalid(_)) => Err(invalid_link(s)),
        Err(e) => Err(failure(s, e)),
    }
}

/// What one render of the page adds to the session's page: its status, banner, the connection
/// that just succeeded, and the form that came back with errors.
struct Screen<'a> {
    status: StatusCode,
    banner: Option<Banner>,
    connected: Option<&'a str>,
    form: Option<&'a FormState>,
}

impl Screen<'_> {
    fn error(status: StatusCode, text: String) -> Self {
        Screen { status, banner: Some(Banner::Error(text)), connected: None, form: None }
    }
}

/// The page of `b`'s session as `screen` says.
fn render(s: &RouterState, b: &Browser, page: &ConnectPage, screen: Screen<'_>) -> Response {
    let csrf = b.session.csrf_token(&b.secret);
    let html = view::page(&PageView {
        session_id: &b.session.id,
        reconnect: b.session.connection_id.as_ref().map(|c| c.as_str()),
        page,
        csrf: &csrf,
        banner: screen.banner,
        connected: screen.connected,
        form: screen.form,
    });
    html_response(s, screen.status, html)
}

/// `GET /connect/{id}[?connected={cid}][?error={code}&error_description={text}]`: the page, with
/// the banner of a connection that just succeeded (the OAuth callback and the forms send the
/// browser here) or of an authorization that failed.
async fn show_page(
    State(s): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let b = match session_of(&s, &id, &headers).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let page = match s.service.connect_page(&b.session).await {
        Ok(page) => page,
        Err(e) => return failure(&s, e),
    };
    let (mut connected, mut error, mut description, mut disconnected) = (None, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "connected" => connected = Some(v.into_owned()),
            "disconnected" => disconnected = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    // Only a connection this page shows: the query is anyone's to write.
    let done = connected.as_deref().and_then(|cid| {
        page.definitions
            .iter()
            .find_map(|d| d.connections.iter().find(|c| c.id == cid).map(|c| (d.oauth, c.id.as_str())))
    });
    let banner = match (done, error) {
        (Some((true, _)), _) => Some(Banner::Success("Authorization completed successfully".to_owned())),
        (Some((false, _)), _) => Some(Banner::Success("Connected successfully".to_owned())),
        (None, Some(code)) => Some(Banner::Error(authorization_failed(&code, description.as_deref()))),
        (None, None) => disconnected_banner(&page, disconnected.as_deref()),
    };
    let screen = Screen { status: StatusCode::OK, banner, connected: done.map(|(_, cid)| cid), form: None };
    render(&s, &b, &page, screen)
}

/// The banner after the Disconnect button (`?disconnected={cid}`): only for a connection this
/// page shows, now disconnected (the query is anyone's to write).
fn disconnected_banner(page: &ConnectPage, cid: Option<&str>) -> Option<Banner> {
    let cid = cid?;
    let shown = page.definitions.iter().flat_map(|d| &d.connections).find(|c| c.id == cid)?;
    (shown.status == crate::domain::Status::Disconnected).then(|| Banner::Success("Disconnected".to_owned()))
}

/// The error banner of a failed authorization: the provider's description (shortened) or code.
fn authorization_failed(code: &str, description: Option<&str>) -> String {
    let why: String = description.filter(|d| !d.trim().is_empty()).unwrap_or(code).chars().take(300).collect();
    format!("The authorization did not complete: {why}")
}

/// A posted form and its session, checked: the cookie's session, and the form's `csrf` token
/// bound to it. A form from another page, site or session changes nothing: 403.
async fn posted(
    s: &RouterState,
    id: &str,
    headers: &HeaderMap,
    form: Result<Form, TooLarge>,
) -> Result<(Browser, Form), Response> {
    let b = session_of(s, id, headers).await?;
    let Ok(form) = form else {
        return Err(message(
            s,
            StatusCode::PAYLOAD_TOO_LARGE,
            "This form is too large",
            "Go back, shorten what you entered and try again.",
        ));
    };
    if !b.session.csrf_matches(&b.secret, form.get("csrf").unwrap_or_default()) {
        return Err(message(
            s,
            StatusCode::FORBIDDEN,
            "This form could not be verified",
            "It was not sent from this connect page. Go back to the page, reload it and try again.",
        ));
    }
    Ok((b, form))
}

/// The status and safe message of a failure (logged when it is internal).
fn status_and_message(e: ServiceError) -> (StatusCode, String) {
    let problem = Problem::from(e);
    (StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), problem.detail)
}

/// The page after the form `state` failed with `e`: field errors next to their fields
/// (`Invalid` errors naming `values.<input>`, besides those already in `state`), anything else
/// in the banner, the entered non-secret values kept. Its status is the failure's (422 for a
/// validation failure).
fn form_failed(s: &RouterState, b: &Browser, page: &ConnectPage, mut state: FormState, e: ServiceError) -> Response {
    let (status, banner) = match e {
        ServiceError::Invalid(errors) => {
            let mut other = Vec::new();
            for err in errors {
                match err.field.strip_prefix("values.").filter(|f| !f.is_empty()) {
                    Some(input) => {
                        let input = input.split(['.', '[']).next().unwrap_or(input).to_owned();
                        state.errors.entry(input).or_insert(err.message);
                    }
                    None => other.push(err.message),
                }
            }
            // An input the form does not show (organization or embedded) is the organization's
            // to set: the banner says so, never naming it.
            let shown: Vec<&str> = page
                .definitions
                .iter()
                .filter(|d| d.key == state.definition)
                .flat_map(|d| d.inputs.iter().map(|i| i.name.as_str()))
                .collect();
            let before = state.errors.len();
            state.errors.retain(|k, _| shown.contains(&k.as_str()));
            if state.errors.len() < before {
                other.push(HIDDEN_INPUT_ERROR.to_owned());
            }
            let mut text = "Please correct the fields marked below.".to_owned();
            if !other.is_empty() {
                text = format!("{text} {}", other.join("; "));
            }
            (StatusCode::UNPROCESSABLE_ENTITY, text)
        }
        e => status_and_message(e),
    };
    let screen = Screen { form: Some(&state), ..Screen::error(status, banner) };
    render(s, b, page, screen)
}

/// The banner of an error about an input the page does not show.
const HIDDEN_INPUT_ERROR: &str = "This connection cannot be saved: the organization's settings for it are incomplete";

/// `POST /connect/{id}/values` (`csrf`, `definition`, `connection_id`?, `value.{input}`...):
/// creates a connection of an api_key/basic/custom/client-credentials definition, or updates
/// one (blank password inputs keep their value). 303 to the page with its success banner;
/// invalid: 422, the page with each error next to its field.
async fn save_values(
    State(s): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form, TooLarge>,
) -> Response {
    let (b, form) = match posted(&s, &id, &headers, form).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    let definition = form.get("definition").unwrap_or_default().to_owned();
    let connection_id = form.get("connection_id").map(str::to_owned);
    let inputs = match s.service.connect_form_inputs(&b.session, &definition).await {
        Ok(inputs) => inputs,
        Err(ServiceError::NotFound | ServiceError::Conflict(_)) => {
            let e = ServiceError::Invalid(vec![FieldError::new(
                "definition",
                "is not a service this page connects with a form",
            )]);
            return values_failed(&s, &b, FormState::default(), e).await;
        }
        Err(e) => return failure(&s, e),
    };
    // What was typed comes back on an error, but never a secret.
    let kept = inputs
        .iter()
        .filter(|i| i.kind != InputType::Password)
        .filter_map(|i| form.raw_value(&i.name).map(|v| (i.name.clone(), v.to_owned())))
        .collect();
    let mut state = FormState { definition, connection_id, values: kept, errors: Default::default() };
    let values = match form::values(&form, inputs.iter().map(|i| FormInput { name: &i.name, kind: i.kind })) {
        Ok(values) => values,
        Err(errors) => {
            state.errors = errors;
            return values_failed(&s, &b, state, ServiceError::Invalid(Vec::new())).await;
        }
    };
    match s.service.connect_with_values(&b.session, &state.definition, state.connection_id.as_deref(), values).await {
        Ok(view) => see_other(&s, &format!("/connect/{}?connected={}", b.session.id, view.id.as_str())),
        Err(e) => values_failed(&s, &b, state, e).await,
    }
}

/// The page after the values form `state` failed with `e` ([`form_failed`]): only then is the
/// whole page read.
async fn values_failed(s: &RouterState, b: &Browser, state: FormState, e: ServiceError) -> Response {
    match s.service.connect_page(&b.session).await {
        Ok(page) => form_failed(s, b, &page, state, e),
        Err(read) => failure(s, read),
    }
}

/// `POST /connect/{id}/authorize` (`csrf`, `definition`, `connection_id`?): the Connect button
/// of an OAuth definition. 200: "Continue to {label}", a page of this origin linking to the
/// provider's authorize URL (its state bound to this browser), which connect.js follows at once.
/// A 303 there would need the provider's origin in the page's CSP `form-action` (browsers check
/// a form's redirects too), and a connection's own authorize URL is known only now.
/// A device-flow definition answers a page with the user code and the verification links
/// instead (RFC 8628: the customer approves anywhere; reloading the page shows the status).
async fn authorize(
    State(s): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    PublicUrl(public_url): PublicUrl,
    form: Result<Form, TooLarge>,
) -> Response {
    let (b, form) = match posted(&s, &id, &headers, form).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    let definition = form.get("definition").unwrap_or_default();
    let connection_id = form.get("connection_id");
    match s.service.connect_authorize(&b.session, definition, connection_id, public_url.as_deref()).await {
        Ok(started) => match &started.device {
            Some(device) => html_response(&s, StatusCode::OK, view::device_page(&id, &started.label, device)),
            None => html_response(&s, StatusCode::OK, view::continue_page(&started.label, &started.authorize_url)),
        },
        Err(e) => page_with_error(&s, &b, e).await,
    }
}

/// `POST /connect/{id}/disconnect` (`csrf`, `connection_id`): disconnects one of the customer's
/// connections; 303 back to the page, whose banner says "Disconnected".
async fn disconnect(
    State(s): State<RouterState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: Result<Form, TooLarge>,
) -> Response {
    let (b, form) = match posted(&s, &id, &headers, form).await {
        Ok(found) => found,
        Err(res) => return res,
    };
    let connection_id = form.get("connection_id").unwrap_or_default();
    match s.service.connect_disconnect(&b.session, connection_id).await {
        Ok(view) => see_other(&s, &format!("/connect/{}?disconnected={}", b.session.id, view.id.as_str())),
        Err(e) => page_with_error(&s, &b, e).await,
    }
}

/// The page with `e` in its error banner, as `e`'s status.
async fn page_with_error(s: &RouterState, b: &Browser, e: ServiceError) -> Response {
    let page = match s.service.connect_page(&b.session).await {
        Ok(page) => page,
        Err(_) => return failure(s, e),
    };
    let (status, text) = status_and_message(e);
    let text = match status {
        StatusCode::NOT_FOUND => "That connection or service is not available on this page.".to_owned(),
        _ => text,
    };
    render(s, b, &page, Screen::error(status, text))
}

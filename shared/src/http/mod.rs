//! The HTTP API: one axum router, mounted by `latchkey serve` and by the `connections-api`
//! Lambda alike. Handlers translate HTTP to service calls and back; no business logic here.

pub mod auth;
pub mod connect;
mod connect_sessions;
pub mod idempotency;
mod lookup;
pub mod problem;
mod providers;
mod selector;
mod trace;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use self::auth::Verifier;
use self::problem::{Problem, types};
pub use self::trace::REQUEST_ID_HEADER;
pub(crate) use self::trace::RequestId;
use self::trace::trace_request;
use crate::domain::{FieldError, Principal};
use crate::service::{CallbackOutcome, ConnectionView, ListQuery, Service};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI 3 document of this API, served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// What every handler can reach.
#[derive(Clone)]
pub struct RouterState {
    pub service: Arc<Service>,
    pub verifier: Arc<Verifier>,
}

/// Which routes a router mounts. `latchkey serve` mounts them all; each HTTP Lambda mounts only
/// the routes API Gateway sends it, so a function's role needs only what those routes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Every route.
    All,
    /// The `connections-api` function: every route but the OAuth callback.
    ConnectionsApi,
    /// The `oauth-callback` function: the public `GET /v1/oauth/callback` (and `/healthz`).
    OauthCallback,
}

/// The whole API.
pub fn router(state: RouterState) -> Router {
    router_for(Surface::All, state)
}

/// The routes of `surface`; any other path is a 404 problem.
pub fn router_for(surface: Surface, state: RouterState) -> Router {
    let mut routes = Router::new().route("/healthz", get(healthz));
    if surface != Surface::OauthCallback {
        routes = routes
            .route("/openapi.json", get(openapi))
            .route("/v1/providers", get(providers::list_providers))
            .route("/v1/definitions", get(list_definitions))
            .route("/v1/definitions/{key}", get(get_definition).put(put_definition).delete(delete_definition))
            .route("/v1/connections", get(list_connections).post(create_connection))
            .route("/v1/connections/{id}", get(get_connection).patch(update_connection).delete(delete_connection))
            .route("/v1/connections/{id}/logs", get(connection_logs))
            .route("/v1/connections/{id}/token", post(lookup::token_lookup))
            .route("/v1/token", post(selector::selector_lookup))
            .route("/v1/connections/{id}/authorize", post(authorize))
            .route("/v1/connections/{id}/refresh", post(force_refresh))
            .route("/v1/connections/{id}/verify", post(verify_connection))
            .route("/v1/connections/{id}/disconnect", post(disconnect))
            .route("/v1/connect/sessions", post(connect_sessions::create))
            .merge(webhooks::routes())
            .merge(connect::routes());
    }
    if surface != Surface::ConnectionsApi {
        routes = routes.route("/v1/oauth/callback", get(oauth_callback));
    }
    routes
        .fallback(|| async { Problem::not_found() })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                types::METHOD,
                "Method Not Allowed",
                "this route does not accept that method",
            )
        })
        .layer(middleware::from_fn(no_store))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// `Cache-Control: no-store` on every API answer (`/v1/...`) that does not set its own: they
/// carry credentials (lookups), authorize URLs with their state, or one principal's data, and no
/// cache between Latchkey and its caller may keep them.
async fn no_store(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/v1/");
    let mut res = next.run(req).await;
    if api && !res.headers().contains_key(header::CACHE_CONTROL) {
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The public origin of the API as this request reached it, the base of the OAuth redirect URI
/// (`https://auth.example.com`, no trailing `/`): the configured `LATCHKEY_PUBLIC_URL` when
/// set; else, only behind API Gateway (a Lambda function), `https://{requestContext.domainName}`,
/// the domain API Gateway was called at (its execute-api domain or a custom domain; the
/// template's stage is `$default`, so no stage prefix); else `None`. Never the `Host` header:
/// a client writes that, while the request context is API Gateway's (or, for whoever may invoke
/// the function directly, theirs, checked to be a DNS name).
pub struct PublicUrl(pub Option<String>);

impl FromRequestParts<RouterState> for PublicUrl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &RouterState) -> Result<Self, Self::Rejection> {
        let configured = state.service.public_url().map(str::to_owned);
        Ok(PublicUrl(configured.or_else(|| gateway_origin(parts))))
    }
}

/// `https://{requestContext.domainName}` of an API Gateway HTTP API request, when the domain is
/// a DNS name (labels of letters, digits and `-`, at most 253 characters).
fn gateway_origin(parts: &Parts) -> Option<String> {
    let Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) =
        parts.extensions.get::<lambda_http::request::RequestContext>()
    else {
        return None;
    };
    let domain = ctx.domain_name.as_deref()?;
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (domain.len() <= 253 && domain.split('.').all(label)).then(|| format!("https://{}", domain.to_ascii_lowercase()))
}

/// Reads a body of at most [`MAX_BODY_BYTES`], unparsed; `None` when it is empty or only
/// whitespace. Oversized is 413 (problem+json, the connection closed).
async fn read_body(req: Request) -> Result<Option<axum::body::Bytes>, Problem> {
    let too_large = || Problem {
        close_connection: true,
        ..Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            types::TOO_LARGE,
            "Payload Too Large",
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    Ok((!bytes.iter().all(u8::is_ascii_whitespace)).then_some(bytes))
}

/// `bytes` as JSON; malformed is 400 naming the line and column (never the text).
fn parse_json(bytes: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::malformed(format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()))
    })
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]; `None` when it is empty.
async fn read_json(req: Request) -> Result<Option<Value>, Problem> {
    read_body(req).await?.map(|bytes| parse_json(&bytes)).transpose()
}

/// A JSON body of at most [`MAX_BODY_BYTES`], parsed into a `Value` so that the service can
/// name every bad field. Oversized is 413, malformed is 400, both as problem+json.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Problem;

    async fn from_request(req: Request, _: &S) -> Result<Self, Problem> {
        read_json(req).await?.map(JsonBody).ok_or_else(|| Problem::malformed("a JSON body is required"))
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

async fn put_definition(
    State(s): State<RouterState>,
    p: Principal,
    Path(key): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let (view, created) = s.service.put_definition(&p, &key, &body).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(view)).into_response())
}

async fn get_definition(
    State(s): State<RouterState>,
    p: Principal,
    Path(key): Path<String>,
) -> Result<Response, Problem> {
    Ok(axum::Json(s.service.get_definition(&p, &key).await?).into_response())
}

async fn list_definitions(State(s): State<RouterState>, p: Principal) -> Result<Response, Problem> {
    Ok(axum::Json(json!({"items": s.service.list_definitions(&p).await?})).into_response())
}

async fn delete_definition(
    State(s): State<RouterState>,
    p: Principal,
    Path(key): Path<String>,
) -> Result<StatusCode, Problem> {
    s.service.delete_definition(&p, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A connection with its version as a strong ETag, for `If-Match`.
fn with_etag(status: StatusCode, view: ConnectionView) -> Response {
    // A created connection's id is known only now: the request's span records it. Other
    // answers name the id in their path, which the span recorded already (recording it again
    // would print it twice on text lines).
    if status == StatusCode::CREATED {
        tracing::Span::current().record("connection_id", view.id.as_str());
    }
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version)).ok();
    let location = HeaderValue::from_str(&format!("/v1/connections/{}", view.id)).ok();
    let mut res = (status, axum::Json(view)).into_response();
    if let Some(etag) = etag {
        res.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Some(location) = location
    {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res
}

async fn create_connection(
    State(s): State<RouterState>,
    p: Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    if let Some(key) = idempotency::key(&headers)? {
        return idempotency::create_connection(&s.service, &p, &key, &body).await;
    }
    Ok(with_etag(StatusCode::CREATED, s.service.create_connection(&p, &body).await?))
}

async fn get_connection(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(with_etag(StatusCode::OK, s.service.get_connection(&p, &id).await?))
}

async fn list_connections(
    State(s): State<RouterState>,
    p: Principal,
    RawQuery(raw): RawQuery,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(mut q) = q.map_err(|_| Problem::malformed("the query string is malformed"))?;
    // `tag` repeats, which the struct cannot hold: every one, in order.
    q.tag = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.into_owned())
        .collect();
    Ok(axum::Json(s.service.list_connections(&p, &q).await?).into_response())
}

/// `If-Match: "3"` (or `W/"3"`, or `3`); `*` means any version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = v.to_str().unwrap_or_default().trim();
    if raw == "*" {
        return Ok(None);
    }
    raw.trim_start_matches("W/").trim_matches('"').parse::<u64>().map(Some).map_err(|_| {
        Problem::new(
            StatusCode::PRECONDITION_FAILED,
            types::PRECONDITION,
            "Precondition Failed",
            "If-Match must be an ETag returned by this API",
        )
    })
}

async fn update_connection(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let expected = if_match(&headers)?;
    Ok(with_etag(StatusCode::OK, s.service.update_connection(&p, &id, &body, expected).await?))
}

async fn delete_connection(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    s.service.delete_connection(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogsQuery {
    limit: Option<usize>,
}

async fn connection_logs(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(|_| Problem::validation(vec![FieldError::new("limit", "must be an integer")]))?;
    Ok(axum::Json(s.service.connection_logs(&p, &id, q.limit.unwrap_or(100)).await?).into_response())
}

/// `POST /v1/connections/{id}/authorize`: the URL to send the user's browser to, redirecting
/// back to the API's [`PublicUrl`]; for a device-flow connection, the code to show the user.
async fn authorize(
    State(s): State<RouterState>,
    p: Principal,
    PublicUrl(public_url): PublicUrl,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(axum::Json(s.service.start_authorization(&p, &id, public_url.as_deref()).await?).into_response())
}

/// `POST /v1/connections/{id}/refresh`: refresh now (organization users).
async fn force_refresh(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(with_etag(StatusCode::OK, s.service.force_refresh(&p, &id).await?))
}

/// `POST /v1/connections/{id}/verify`: runs the definition's verify request now
/// (organization users and the connection's customer) → `{"ok", "status", "checked_at"}`.
async fn verify_connection(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    Ok(axum::Json(s.service.verify_connection(&p, &id).await?).into_response())
}

/// `POST /v1/connections/{id}/disconnect`.
async fn disconnect(State(s): State<RouterState>, p: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(with_etag(StatusCode::OK, s.service.disconnect(&p, &id).await?))
}

fn escape_html(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// `GET /v1/oauth/callback` (public: the provider sends the user's browser here). Never cached,
/// never leaks its URL (code, state) through a Referer.
async fn oauth_callback(
    State(s): State<RouterState>,
    method: axum::http::Method,
    headers: HeaderMap,
    Query(params): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    // axum answers HEAD with the GET handler; a link prefetcher's HEAD must not spend the state.
    if method == axum::http::Method::HEAD {
        let mut res = StatusCode::METHOD_NOT_ALLOWED.into_response();
        res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return res;
    }
    // A state started from the connect page is honoured only with that page's session cookie.
    let cookies = connect::request_cookies(&headers);
    let mut res = match s.service.callback(&params, &cookies).await {
        CallbackOutcome::Redirect(to) => {
            let mut res = StatusCode::FOUND.into_response();
            if let Ok(v) = HeaderValue::from_str(&to) {
                res.headers_mut().insert(header::LOCATION, v);
            }
            res
        }
        CallbackOutcome::Page { status, title, message } => {
            let html = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
                 <meta name=\"viewport\" content=\"width=device-width\"></head>\
                 <body style=\"font-family:sans-serif;max-width:32rem;margin:4rem auto\"><h1>{t}</h1><p>{m}</p></body></html>",
                t = escape_html(title),
                m = escape_html(&message)
            );
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (code, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_from(domain: Option<&str>) -> Parts {
        let mut ctx = aws_lambda_events::apigw::ApiGatewayV2httpRequestContext::default();
        ctx.domain_name = domain.map(str::to_owned);
        let mut req = axum::http::Request::new(());
        req.extensions_mut().insert(lambda_http::request::RequestContext::ApiGatewayV2(ctx));
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("evil.example"));
        req.into_parts().0
    }

    #[test]
    fn the_gateway_origin_is_the_request_contexts_dns_name_never_the_host_header() {
        assert_eq!(
            gateway_origin(&parts_from(Some("Abc123.execute-api.eu-west-1.amazonaws.com"))).as_deref(),
            Some("https://abc123.execute-api.eu-west-1.amazonaws.com")
        );
        assert_eq!(gateway_origin(&parts_from(Some("auth.example.com"))).as_deref(), Some("https://auth.example.com"));
        for bad in ["evil.example/x", "evil.example:8443", "user@evil.example", "", "a..b", "-a.example", "a b"] {
            assert_eq!(gateway_origin(&parts_from(Some(bad))), None, "{bad}");
        }
        assert_eq!(gateway_origin(&parts_from(None)), None);
        let outside = axum::http::Request::new(()).into_parts().0;
        assert_eq!(gateway_origin(&outside), None, "no request context: not behind API Gateway");
    }
}

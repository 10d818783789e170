//! One span and one `request` line per HTTP request, its id echoed as `x-request-id`, and its
//! lines written together when it is answered (README "Logs").

use std::time::Instant;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

use crate::domain::ConnectionId;

/// The response header that gives the caller the request's id, the one its log lines carry.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of a request: API Gateway's (`requestContext.requestId`, also in its
/// `apigw-requestid` header) when the function runs behind it, else a new ULID. API Gateway's is
/// used only when it is 1-128 printable ASCII characters: whoever may invoke the function
/// directly writes the context, and the id goes into a response header.
fn request_id(req: &Request) -> String {
    let gateway = match req.extensions().get::<lambda_http::request::RequestContext>() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.as_deref(),
        _ => None,
    };
    gateway
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| ulid::Ulid::new().to_string(), str::to_owned)
}

/// The id of the request being answered (see [`request_id`]), an extension every handler can
/// take (`axum::Extension<RequestId>`): the token lookups name it in their audit line.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

/// One span per request, so that every line written while handling it carries its ids:
/// `request_id` (see [`request_id`], echoed as [`REQUEST_ID_HEADER`]), `method`, `route` (the
/// matched template, `/v1/connections/{id}`, never the raw path or query), `connection_id` (the
/// path's `{id}` when it is a valid connection id) and `org`, recorded by the [`Principal`]
/// extractor once the bearer token is verified. Then one line when it is answered: status and
/// latency. Never a body, header or query string. The request's lines are written in one piece
/// when it is answered ([`crate::telemetry::gathering`]).
pub(super) async fn trace_request(
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(&req);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        route = route.as_deref().unwrap_or("-"),
        org = Empty,
        connection_id = Empty,
    );
    let connection = params.ok().and_then(|params| {
        params.iter().find(|(name, _)| *name == "id").and_then(|(_, id)| ConnectionId::parse(id).ok())
    });
    if let Some(id) = connection {
        span.record("connection_id", id.as_str());
    }
    let answered = async move {
        let mut res = next.run(req).await;
        tracing::info!(status = res.status().as_u16(), ms = started.elapsed().as_millis() as u64, "request");
        if let Ok(id) = HeaderValue::from_str(&request_id) {
            res.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        res
    };
    // The request's lines (its audit line among them) are written together, before the answer
    // is returned to be sent.
    crate::telemetry::gathering(answered.instrument(span)).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::Path;
    use axum::middleware;
    use axum::routing::get;

    use super::*;

    /// Each write of the log, as written.
    #[derive(Default)]
    struct Writes(std::sync::Mutex<Vec<String>>);

    impl crate::telemetry::Destination for Writes {
        fn write_lines(&self, lines: &[u8]) -> std::io::Result<()> {
            self.0.lock().unwrap().push(String::from_utf8_lossy(lines).into_owned());
            Ok(())
        }
    }

    /// Two requests forced to interleave (each logs, then waits for the other to have logged):
    /// each request's lines still come out together, its own `request` line last, and before
    /// its answer is returned.
    #[tokio::test]
    async fn a_requests_lines_are_written_together_when_it_is_answered() {
        use tower::ServiceExt;

        let writes = Arc::new(Writes::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(crate::telemetry::Lines::new(writes.clone()))
            .with_ansi(false)
            .without_time()
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let both = Arc::new(tokio::sync::Barrier::new(2));
        let app = Router::new()
            .route(
                "/{name}",
                get(move |Path(name): Path<String>| async move {
                    tracing::info!(%name, "first");
                    both.wait().await;
                    tracing::info!(%name, "second");
                    name
                }),
            )
            .layer(middleware::from_fn(trace_request));
        let call = |name: &'static str| {
            let (app, writes) = (app.clone(), writes.clone());
            async move {
                let req = axum::http::Request::get(format!("/{name}")).body(axum::body::Body::empty()).unwrap();
                let res = app.oneshot(req).await.unwrap();
                let id = res.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
                let written = writes.0.lock().unwrap().concat();
                assert!(written.contains(&format!("name={name}")), "written before the answer: {written}");
                id
            }
        };
        let (a, b) = tokio::join!(call("a"), call("b"));
        let writes = writes.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 2, "one write per request: {writes:#?}");
        for (id, name) in [(a, "a"), (b, "b")] {
            let w = writes.iter().find(|w| w.contains(&id)).expect("the request's write");
            let lines: Vec<&str> = w.lines().collect();
            assert_eq!(lines.len(), 3, "{w}");
            assert!(lines[0].ends_with(&format!("first name={name}")), "{w}");
            assert!(lines[1].ends_with(&format!("second name={name}")), "{w}");
            assert!(lines[2].contains("status=200"), "{w}");
        }
    }
}

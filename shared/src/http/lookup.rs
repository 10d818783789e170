//! Token lookup over HTTP by id (`POST /v1/connections/{id}/token`), and what the selector's
//! route (`POST /v1/token`, [`super::selector`]) shares with it: the body, read straight into a
//! [`LookupRequest`], and the lookup or error report it asks for.

use axum::extract::{FromRequest, Path, Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::problem::Problem;
use super::{RequestId, RouterState, parse_json, read_body};
use crate::domain::{FieldError, Principal};
use crate::service::LookupRequest;

/// A token lookup's body (`POST /v1/connections/{id}/token`, `POST /v1/token`), read like
/// [`super::JsonBody`] (oversized 413, malformed 400) but parsed straight into a [`LookupRequest`]
/// when it is one: the hot path builds no `Value` on the way. A body that is JSON but not a
/// lookup is kept as its `Value`, for [`lookup_request`] to say what is wrong (and to read
/// what `Value` reads: a member given twice keeps its last value).
pub(super) enum LookupBody {
    /// No body, or only whitespace.
    Empty,
    /// A lookup, parsed.
    Parsed(LookupRequest),
    /// JSON that does not parse as a lookup as it stands.
    Other(Value),
}

impl<S: Send + Sync> FromRequest<S> for LookupBody {
    type Rejection = Problem;

    async fn from_request(req: Request, _: &S) -> Result<Self, Problem> {
        let Some(bytes) = read_body(req).await? else {
            return Ok(Self::Empty);
        };
        // An object only: serde would also read a JSON array as the members in order.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
            && let Ok(parsed) = serde_json::from_slice::<LookupRequest>(&bytes)
        {
            return Ok(Self::Parsed(parsed));
        }
        parse_json(&bytes).map(Self::Other)
    }
}

/// Token lookup over HTTP, for principals with the `runtime` role. The body is the Lambda
/// payload without `org` (the token says which organization); it may be empty.
pub(super) async fn token_lookup(
    State(s): State<RouterState>,
    p: Principal,
    axum::Extension(request): axum::Extension<RequestId>,
    Path(id): Path<String>,
    body: LookupBody,
) -> Result<Response, Problem> {
    if !p.is_runtime() {
        return Err(Problem::forbidden("token lookup needs the runtime role"));
    }
    let mut req =
        lookup_request(body, "expected {connection_id?, min_valid_seconds?, action?, message?} with the right types")?;
    if req.connection_id.as_deref().is_some_and(|c| c != id) {
        return Err(Problem::validation(vec![FieldError::new("connection_id", "must match the path")]));
    }
    req.connection_id = Some(id);
    answer_lookup(&s, &p, &req, request).await
}

/// A token lookup's HTTP body as the Lambda payload it mirrors (an empty body is `{}`),
/// `expected` saying its shape when it does not parse (serde's own message could quote a value
/// of the body: never sent back). `org` and `token` are refused: they come from the bearer
/// token.
pub(super) fn lookup_request(body: LookupBody, expected: &'static str) -> Result<LookupRequest, Problem> {
    let req = match body {
        LookupBody::Empty => LookupRequest::default(),
        LookupBody::Parsed(req) => req,
        LookupBody::Other(value) => {
            LookupRequest::from_json(value).ok_or_else(|| Problem::validation(vec![FieldError::new("", expected)]))?
        }
    };
    if req.org.is_some() {
        return Err(Problem::validation(vec![FieldError::new("org", "comes from the bearer token, not the body")]));
    }
    if req.token.is_some() {
        return Err(Problem::validation(vec![FieldError::new(
            "token",
            "goes in the Authorization header, not the body",
        )]));
    }
    Ok(req)
}

/// Runs a parsed token lookup's `action`: the lookup (default) or `report_error`. A lookup's
/// audit line names `request` and the principal's kind.
pub(super) async fn answer_lookup(
    s: &RouterState,
    p: &Principal,
    req: &LookupRequest,
    request: RequestId,
) -> Result<Response, Problem> {
    match req.action.as_deref() {
        None | Some("lookup") => {
            let origin = crate::service::ReadOrigin::http(crate::service::PrincipalKind::of(p), request.0);
            Ok(axum::Json(s.service.lookup(&p.org, p.customer.as_ref(), req, &origin).await?).into_response())
        }
        Some("report_error") => {
            Ok(axum::Json(s.service.report_error(&p.org, p.customer.as_ref(), req).await?).into_response())
        }
        Some(_) => Err(Problem::validation(vec![FieldError::new("action", "must be lookup or report_error")])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_BODY_BYTES;
    use crate::http::problem::types;

    /// A token lookup's body through its extractor and [`lookup_request`], as the handler
    /// takes it.
    async fn lookup_body(body: &str) -> Result<LookupRequest, Problem> {
        let req = axum::http::Request::post("/").body(axum::body::Body::from(body.to_owned())).unwrap();
        lookup_request(LookupBody::from_request(req, &()).await?, "expected a lookup")
    }

    /// The body parsed straight into a lookup reads what the `Value` it replaced read, and
    /// everything else is refused as before: a member twice keeps its last value, the wrong
    /// shape is 422 without quoting the body (an array too, which serde alone would read as the
    /// members in order), bad JSON 400, an oversized body 413.
    #[tokio::test]
    async fn a_lookup_body_reads_as_its_json_value_did() {
        for empty in ["", "  \n", "\t"] {
            let req = lookup_body(empty).await.unwrap();
            assert!(req.connection_id.is_none() && req.min_valid_seconds.is_none() && req.action.is_none());
        }
        let req = lookup_body(r#"{"min_valid_seconds": 60, "connection_id": "con_1", "action": null}"#).await.unwrap();
        assert_eq!((req.min_valid_seconds, req.connection_id.as_deref(), req.action), (Some(60), Some("con_1"), None));
        let spaced = lookup_body(" \r\n {\"min_valid_seconds\": 5} \n").await.unwrap();
        assert_eq!(spaced.min_valid_seconds, Some(5), "whitespace around the object");
        let twice = lookup_body(r#"{"min_valid_seconds": 1, "min_valid_seconds": 2}"#).await.unwrap();
        assert_eq!(twice.min_valid_seconds, Some(2), "the last of a member given twice, as a JSON Value keeps it");

        for (body, field) in [
            (r#"{"org": "umbrella"}"#, "org"),
            (r#"{"token": "eyJ-not-here"}"#, "token"),
            (r#"{"min_valid_seconds": "sk_live_secret"}"#, ""),
            (r#"{"min_valid_seconds": -1}"#, ""),
            (r#"{"apiKey": "sk_live_secret"}"#, ""),
            (r#"["sk_live_secret"]"#, ""),
            (r#"[null, "con_1"]"#, ""),
            (r#""con_1""#, ""),
            ("null", ""),
        ] {
            let problem = lookup_body(body).await.unwrap_err();
            assert_eq!(problem.status, 422, "{body}");
            let text = serde_json::to_string(&problem).unwrap();
            assert!(text.contains(&format!(r#""field":"{field}""#)), "{body}: {text}");
            assert!(!text.contains("sk_live_secret") && !text.contains("eyJ"), "never quotes the body: {text}");
        }
        for malformed in [r#"{"min_valid_seconds": 60"#, "\u{feff}{}", "{} {}", " {"] {
            let problem = lookup_body(malformed).await.unwrap_err();
            assert_eq!((problem.status, problem.kind), (400, types::MALFORMED), "{malformed:?}: {}", problem.detail);
        }
        let oversized = lookup_body(&format!(r#"{{"message": "{}"}}"#, "x".repeat(MAX_BODY_BYTES))).await.unwrap_err();
        assert_eq!(oversized.status, 413);
    }
}

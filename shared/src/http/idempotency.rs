//! The `Idempotency-Key` header on creating routes (SPEC section 10; the service's side is
//! [`crate::service::idempotency`]). The first response and every replay of it are built by
//! [`respond`] from the stored response, so a retry gets the same status and byte-identical
//! body (plus `Idempotent-Replayed: true`).

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::problem::{Problem, types};
use crate::domain::{IdempotencyKey, Principal, StoredResponse};
use crate::service::idempotency::routes;
use crate::service::{IdempotencyError, Idempotent, Service, ServiceError};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set to `true` on a response given again for a retried key.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's key, if it sent one; 400 when it is not 1-255 printable ASCII characters.
pub fn key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Problem::malformed("send one Idempotency-Key header"));
    }
    IdempotencyKey::parse(first.as_bytes()).map(Some).map_err(|e| Problem::malformed(e.to_string()))
}

impl From<IdempotencyError> for Problem {
    fn from(e: IdempotencyError) -> Self {
        match e {
            IdempotencyError::Reused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                types::IDEMPOTENCY_KEY_REUSED,
                "Idempotency Key Reused",
                "this Idempotency-Key was used with another request body in the last 24 hours",
            ),
            IdempotencyError::InProgress => Problem {
                retry_after: Some(1),
                ..Problem::new(
                    StatusCode::CONFLICT,
                    types::IDEMPOTENCY_IN_PROGRESS,
                    "Conflict",
                    "a request with this Idempotency-Key is being processed; retry shortly",
                )
            },
            IdempotencyError::Service(e) => e.into(),
        }
    }
}

/// The HTTP response of a stored one: its status and body, the connection's ETag and (for a
/// 201) Location, and `Idempotent-Replayed: true` when it is given again.
fn respond(outcome: Idempotent) -> Response {
    let Idempotent { response, replayed } = outcome;
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
    let read: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    let mut res = (status, [(header::CONTENT_TYPE, "application/json")], response.body).into_response();
    let h = res.headers_mut();
    if let Some(id) = read["id"].as_str() {
        tracing::Span::current().record("connection_id", id);
        if status == StatusCode::CREATED
            && let Ok(location) = HeaderValue::from_str(&format!("/v1/connections/{id}"))
        {
            h.insert(header::LOCATION, location);
        }
    }
    if let Some(version) = read["version"].as_u64()
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\""))
    {
        h.insert(header::ETAG, etag);
    }
    if replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// `POST /v1/connections` with an `Idempotency-Key`.
pub async fn create_connection(
    service: &Service,
    p: &Principal,
    key: &IdempotencyKey,
    body: &Value,
) -> Result<Response, Problem> {
    let outcome = service
        .idempotent(p, routes::CREATE_CONNECTION, key, body, || async {
            let view = service.create_connection(p, body).await?;
            let body = serde_json::to_string(&view).map_err(ServiceError::unexpected)?;
            Ok(StoredResponse { status: StatusCode::CREATED.as_u16(), body })
        })
        .await?;
    Ok(respond(outcome))
}

/// `POST /v1/connect/sessions` with an `Idempotency-Key`: a retry gets the same link (stored
/// sealed, [`Service::idempotent_sealed`]).
pub async fn create_connect_session(
    service: &Service,
    p: &Principal,
    key: &IdempotencyKey,
    body: &Value,
    public_url: Option<&str>,
) -> Result<Response, Problem> {
    let outcome = service
        .idempotent_sealed(p, routes::CREATE_CONNECT_SESSION, key, body, || async {
            let link = service.create_connect_session(p, body, public_url).await?;
            let body = serde_json::to_string(&link).map_err(ServiceError::unexpected)?;
            Ok(StoredResponse { status: StatusCode::CREATED.as_u16(), body })
        })
        .await?;
    Ok(respond(outcome))
}

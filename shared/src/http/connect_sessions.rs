//! `POST /v1/connect/sessions` (SPEC section 9): organization users create a connect session
//! and get its one-time link. The page the link opens is [`super::connect`]'s.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::{JsonBody, PublicUrl, RouterState, idempotency};
use crate::domain::Principal;

/// `POST /v1/connect/sessions` → 201 `{"url", "expires_at"}`; the link's base is the API's
/// [`PublicUrl`]. `Idempotency-Key` honoured: a retry gets the same link.
pub(super) async fn create(
    State(s): State<RouterState>,
    p: Principal,
    PublicUrl(public_url): PublicUrl,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    if let Some(key) = idempotency::key(&headers)? {
        return idempotency::create_connect_session(&s.service, &p, &key, &body, public_url.as_deref()).await;
    }
    let link = s.service.create_connect_session(&p, &body, public_url.as_deref()).await?;
    Ok((StatusCode::CREATED, axum::Json(link)).into_response())
}

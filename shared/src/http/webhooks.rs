//! The webhook routes (SPEC section 11), for organization users: configure endpoints, rotate
//! their secret, read their deliveries and retry one. Another organization's webhook is a 404.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::problem::Problem;
use super::{JsonBody, RouterState};
use crate::domain::Principal;
use crate::service::webhooks::DeliveriesQuery;

/// The routes, mounted by [`super::router_for`].
pub(super) fn routes() -> Router<RouterState> {
    Router::new()
        .route("/v1/webhooks", get(list))
        .route("/v1/webhooks/{id}", get(read).put(put).delete(delete))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery_id}/retry", post(retry))
}

/// `PUT /v1/webhooks/{id}`: 201 with the view and its `secret` (shown this once) on creation,
/// 200 with the view on replacement.
async fn put(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let (view, secret) = s.service.put_webhook(&p, &id, &body).await?;
    Ok(match secret {
        Some(secret) => {
            let mut body = serde_json::to_value(&view).unwrap_or(Value::Null);
            body["secret"] = Value::String(secrecy::ExposeSecret::expose_secret(&secret).to_owned());
            (StatusCode::CREATED, Json(body)).into_response()
        }
        None => Json(view).into_response(),
    })
}

async fn read(State(s): State<RouterState>, p: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(Json(s.service.get_webhook(&p, &id).await?).into_response())
}

async fn list(State(s): State<RouterState>, p: Principal) -> Result<Response, Problem> {
    Ok(Json(json!({"items": s.service.list_webhooks(&p).await?})).into_response())
}

async fn delete(State(s): State<RouterState>, p: Principal, Path(id): Path<String>) -> Result<StatusCode, Problem> {
    s.service.delete_webhook(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/{id}/rotate-secret`: `{"secret", "previous_secret_expires_at"}`.
async fn rotate(State(s): State<RouterState>, p: Principal, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(Json(s.service.rotate_webhook_secret(&p, &id).await?).into_response())
}

/// `GET /v1/webhooks/{id}/deliveries[?limit=N&status=pending|delivered|failed&cursor=…]`:
/// `{"items": [delivery…], "next_cursor"}`, newest first.
async fn deliveries(
    State(s): State<RouterState>,
    p: Principal,
    Path(id): Path<String>,
    q: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(|_| Problem::malformed("the query string is malformed"))?;
    Ok(Json(s.service.list_webhook_deliveries(&p, &id, &q).await?).into_response())
}

/// `POST /v1/webhooks/{id}/deliveries/{delivery_id}/retry`: one attempt now; the delivery
/// afterwards. 409 `webhook-disabled` ([`super::problem::types::WEBHOOK_DISABLED`]) when the
/// endpoint is disabled.
async fn retry(
    State(s): State<RouterState>,
    p: Principal,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    Ok(Json(s.service.retry_delivery(&p, &id, &delivery_id).await?).into_response())
}

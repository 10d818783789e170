//! `POST /v1/token`: token lookup by selector over HTTP (SPEC section 10), for principals with
//! the `runtime` role. The body is the `token-lookup` Lambda payload without `org` and `token`:
//! `{"definition", "customer"?, "instance_id"?, "user"?, "min_valid_seconds"?}` (or
//! `{"connection_id", ...}`), with `"action": "report_error"` and `"message"` to report instead.

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::{JsonBody, RouterState};
use crate::domain::{FieldError, Principal};
use crate::service::LookupRequest;

/// The lookup's answer (as `POST /v1/connections/{id}/token`'s) of the connection the selector
/// resolves to. A token bound to a customer finds only that customer's connections (`customer`
/// may then be left out); another customer's selector is 404, like one that matches nothing.
///
/// # Errors
/// 403 without the runtime role; 422 naming each bad member (`org`, `token`, `definition`,
/// `customer`...); 404 when nothing is selected; the lookup's problems otherwise
/// (`connection-pending`, `connection-disconnected`, `connection-error`, `token-expired`...).
pub(super) async fn selector_lookup(
    State(s): State<RouterState>,
    p: Principal,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    if !p.is_runtime() {
        return Err(Problem::forbidden("token lookup needs the runtime role"));
    }
    let req: LookupRequest = serde_json::from_value(body)
        // serde's message could quote a value of the body: keep it out of the response.
        .map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "",
                "expected {definition, customer?, instance_id?, user?, min_valid_seconds?, action?, message?} \
                 or {connection_id, ...} with the right types",
            )])
        })?;
    if req.org.is_some() {
        return Err(Problem::validation(vec![FieldError::new("org", "comes from the bearer token, not the body")]));
    }
    if req.token.is_some() {
        return Err(Problem::validation(vec![FieldError::new(
            "token",
            "goes in the Authorization header, not the body",
        )]));
    }
    match req.action.as_deref() {
        None | Some("lookup") => {
            Ok(axum::Json(s.service.lookup(&p.org, p.customer.as_ref(), &req).await?).into_response())
        }
        Some("report_error") => {
            Ok(axum::Json(s.service.report_error(&p.org, p.customer.as_ref(), &req).await?).into_response())
        }
        Some(_) => Err(Problem::validation(vec![FieldError::new("action", "must be lookup or report_error")])),
    }
}

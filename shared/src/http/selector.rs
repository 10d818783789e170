//! `POST /v1/token`: token lookup by selector over HTTP (SPEC section 10), for principals with
//! the `runtime` role. The body is the `token-lookup` Lambda payload without `org` and `token`:
//! `{"definition", "customer"?, "instance_id"?, "user"?, "min_valid_seconds"?}` (or
//! `{"connection_id", ...}`), with `"action": "report_error"` and `"message"` to report instead.

use axum::extract::State;
use axum::response::Response;

use super::RouterState;
use super::lookup::LookupBody;
use super::problem::Problem;
use crate::domain::Principal;

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
    axum::Extension(request): axum::Extension<super::RequestId>,
    body: LookupBody,
) -> Result<Response, Problem> {
    if matches!(body, LookupBody::Empty) {
        return Err(Problem::malformed("a JSON body is required"));
    }
    if !p.is_runtime() {
        return Err(Problem::forbidden("token lookup needs the runtime role"));
    }
    let req = super::lookup::lookup_request(
        body,
        "expected {definition, customer?, instance_id?, user?, min_valid_seconds?, action?, message?} \
         or {connection_id, ...} with the right types",
    )?;
    super::lookup::answer_lookup(&s, &p, &req, request).await
}

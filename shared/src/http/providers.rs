//! `GET /v1/providers[?auth=KIND]`: the built-in provider catalog ([`crate::catalog`]), all of
//! it or the providers of one auth kind. Any authenticated caller may read it.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use strum::VariantNames;

use super::problem::Problem;
use crate::catalog;
use crate::domain::{AuthKind, FieldError, Principal, Provider};

#[derive(Deserialize)]
pub(super) struct ProvidersQuery {
    /// `api_key`, `basic`, `oauth2_authorization_code`, `oauth2_client_credentials` or
    /// `custom`; empty or absent lists every provider.
    auth: Option<String>,
}

/// `{"items": [provider...]}` in catalog order (by key).
///
/// # Errors
/// 422 naming `auth` when it is no auth kind; 400 for a query string that does not parse.
pub(super) async fn list_providers(
    _: Principal,
    q: Result<Query<ProvidersQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(|_| Problem::malformed("the query string is malformed"))?;
    let items: Vec<&Provider> = match q.auth.as_deref().filter(|s| !s.is_empty()) {
        None => catalog::providers().iter().collect(),
        Some(s) => {
            let auth = AuthKind::parse(s).ok_or_else(|| {
                Problem::validation(vec![FieldError::new(
                    "auth",
                    format!("must be one of {}", AuthKind::VARIANTS.join(", ")),
                )])
            })?;
            catalog::providers_by_auth(auth).collect()
        }
    };
    Ok(axum::Json(json!({"items": items})).into_response())
}

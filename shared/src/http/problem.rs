//! RFC 9457 problem details. Every error response of the API is one of these, and its text is
//! chosen here: never an inner error's message, which could carry a provider's or backend's
//! words.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::crypto::CryptoError;
use crate::domain::FieldError;
use crate::ports::StoreError;
use crate::service::{ServiceError, Unusable};

/// The `type` URIs, stable for clients to branch on.
pub mod types {
    pub const VALIDATION: &str = "urn:latchkey:problem:validation";
    pub const MALFORMED: &str = "urn:latchkey:problem:malformed-request";
    pub const TOO_LARGE: &str = "urn:latchkey:problem:payload-too-large";
    pub const UNAUTHORIZED: &str = "urn:latchkey:problem:unauthorized";
    pub const FORBIDDEN: &str = "urn:latchkey:problem:forbidden";
    pub const NOT_FOUND: &str = "urn:latchkey:problem:not-found";
    pub const METHOD: &str = "urn:latchkey:problem:method-not-allowed";
    pub const CONFLICT: &str = "urn:latchkey:problem:conflict";
    pub const PRECONDITION: &str = "urn:latchkey:problem:precondition-failed";
    pub const PENDING: &str = "urn:latchkey:problem:connection-pending";
    pub const DISCONNECTED: &str = "urn:latchkey:problem:connection-disconnected";
    pub const ERRORED: &str = "urn:latchkey:problem:connection-error";
    pub const TOKEN_EXPIRED: &str = "urn:latchkey:problem:token-expired";
    pub const INTERNAL: &str = "urn:latchkey:problem:internal";
    pub const PROVIDER: &str = "urn:latchkey:problem:provider-error";
    /// A dependency (DynamoDB, KMS) did not answer in time or could not be reached: retry
    /// after `Retry-After` seconds.
    pub const UNAVAILABLE: &str = "urn:latchkey:problem:unavailable";
}

/// The `Retry-After` (seconds) of an `unavailable` problem: a dependency that timed out is
/// retried soon, since service resumes with the dependency's first answer.
pub const RETRY_AFTER_SECS: u32 = 2;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Answer with `Connection: close`: the request body was not read to its end, so the
    /// connection cannot carry another request.
    #[serde(skip)]
    pub close_connection: bool,
    /// `Retry-After` in seconds, for problems worth retrying as they are.
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
            close_connection: false,
            retry_after: None,
        }
    }

    /// 503: a dependency did not answer in time (or throttled past the retries); the same request
    /// may succeed after `Retry-After`.
    pub fn unavailable() -> Self {
        Self {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                types::UNAVAILABLE,
                "Service Unavailable",
                "a storage or key service did not answer in time; retry shortly",
            )
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, types::NOT_FOUND, "Not Found", "no such resource")
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).filter(|f| !f.is_empty()).collect();
        let detail = if fields.is_empty() {
            "the request is invalid".to_owned()
        } else {
            format!("invalid fields: {}", fields.join(", "))
        };
        Self {
            errors: Some(errors),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, types::VALIDATION, "Validation Failed", detail)
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, types::MALFORMED, "Bad Request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, types::UNAUTHORIZED, "Unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, types::FORBIDDEN, "Forbidden", detail)
    }

    /// A stable, machine-friendly name of the problem, the Lambda `errorType`.
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            types::VALIDATION | types::MALFORMED | types::TOO_LARGE => "InvalidRequest",
            types::UNAUTHORIZED => "Unauthorized",
            types::FORBIDDEN => "Forbidden",
            types::NOT_FOUND => "ConnectionNotFound",
            types::CONFLICT => "Conflict",
            types::PRECONDITION => "PreconditionFailed",
            types::PENDING => "ConnectionPending",
            types::DISCONNECTED => "ConnectionDisconnected",
            types::ERRORED => "ConnectionError",
            types::TOKEN_EXPIRED => "TokenExpired",
            types::PROVIDER => "ProviderError",
            types::UNAVAILABLE => "Unavailable",
            _ => "InternalError",
        }
    }
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound => Self::not_found(),
            ServiceError::Forbidden(why) => Self::forbidden(why),
            ServiceError::Invalid(errors) => Self::validation(errors),
            ServiceError::Conflict(why) => Self::new(StatusCode::CONFLICT, types::CONFLICT, "Conflict", why),
            ServiceError::PreconditionFailed => Self::new(
                StatusCode::PRECONDITION_FAILED,
                types::PRECONDITION,
                "Precondition Failed",
                "the connection's version does not match If-Match; read it again",
            ),
            ServiceError::Unusable(Unusable::Pending) => Self::new(
                StatusCode::CONFLICT,
                types::PENDING,
                "Connection Pending",
                "the connection is not authorized yet",
            ),
            ServiceError::Unusable(Unusable::Disconnected) => Self::new(
                StatusCode::CONFLICT,
                types::DISCONNECTED,
                "Connection Disconnected",
                "the connection was disconnected; authorize it again",
            ),
            ServiceError::Unusable(Unusable::Error) => Self::new(
                StatusCode::CONFLICT,
                types::ERRORED,
                "Connection Error",
                "the connection is in error; reconfigure or re-authorize it",
            ),
            ServiceError::Unusable(Unusable::TokenExpired) => Self::new(
                StatusCode::CONFLICT,
                types::TOKEN_EXPIRED,
                "Token Expired",
                "the access token expired and cannot be renewed; the customer must authorize the connection again",
            ),
            ServiceError::Provider(code) => Self::new(
                StatusCode::BAD_GATEWAY,
                types::PROVIDER,
                "Provider Error",
                format!("the provider's token endpoint failed ({code})"),
            ),
            e @ (ServiceError::Store(StoreError::Unavailable(_))
            | ServiceError::Crypto(CryptoError::Unavailable(_))) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "a dependency is unavailable");
                Self::unavailable()
            }
            e @ (ServiceError::Store(_) | ServiceError::Crypto(_)) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    types::INTERNAL,
                    "Internal Server Error",
                    "an internal error occurred",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut res = (status, body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.close_connection {
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_that_did_not_answer_is_a_503_with_retry_after_and_type_unavailable() {
        for e in [
            ServiceError::Store(StoreError::Unavailable("timed out".into())),
            ServiceError::Crypto(CryptoError::Unavailable("timed out".into())),
        ] {
            let p = Problem::from(e);
            assert_eq!((p.status, p.kind, p.error_type()), (503, types::UNAVAILABLE, "Unavailable"));
            assert!(!p.detail.contains("timed out"), "no inner error text: {}", p.detail);
            let res = p.into_response();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(res.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS.to_string().as_str());
        }
        // Any other backend failure stays a 500 without Retry-After.
        let res = Problem::from(ServiceError::Store(StoreError::Backend("broken".into()))).into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(res.headers().get(header::RETRY_AFTER).is_none());
    }
}

//! RFC 9457 problem details. Every error response of the API is one of these, and its text is
//! chosen here: never an inner error's message, which could carry a provider's or backend's
//! words.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;
use crate::service::{ServiceError, Unusable, invalid_summary};

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
    /// The provider refused the credentials of a verify request (`provider_status` says how).
    pub const CREDENTIALS_REJECTED: &str = "urn:latchkey:problem:credentials-rejected";
    /// A verify request got no usable answer from the provider.
    pub const VERIFICATION_UNAVAILABLE: &str = "urn:latchkey:problem:verification-unavailable";
    /// A dependency (DynamoDB, KMS) did not answer in time or could not be reached: retry
    /// after `Retry-After` seconds.
    pub const UNAVAILABLE: &str = "urn:latchkey:problem:unavailable";
    /// An `Idempotency-Key` sent again with another body (422).
    pub const IDEMPOTENCY_KEY_REUSED: &str = "urn:latchkey:problem:idempotency-key-reused";
    /// An `Idempotency-Key` whose first request is still running (409; retry after
    /// `Retry-After`).
    pub const IDEMPOTENCY_IN_PROGRESS: &str = "urn:latchkey:problem:idempotency-in-progress";
    /// A delivery retry on a disabled webhook endpoint (409): enable it with PUT first.
    pub const WEBHOOK_DISABLED: &str = "urn:latchkey:problem:webhook-disabled";
}

/// The `Retry-After` (seconds) of an `unavailable` problem: a dependency that timed out is
/// retried soon, since service resumes with the dependency's first answer.
pub const RETRY_AFTER_SECS: u32 = 2;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// `credentials-rejected` only: the HTTP status the provider answered the verify request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<u16>,
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
            provider_status: None,
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
        let detail = invalid_summary(&errors);
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
}

impl From<ServiceError> for Problem {
    /// The problem of a service failure: its `type` and status here, its `detail` the service's
    /// [`ServiceError::public_message`] (the same words the Lambda diagnostic carries).
    fn from(e: ServiceError) -> Self {
        e.log_if_internal();
        let detail = e.public_message();
        let (status, kind, title) = match e {
            ServiceError::Invalid(errors) => return Self::validation(errors),
            e if e.is_unavailable() => return Self::unavailable(),
            ServiceError::NotFound => (StatusCode::NOT_FOUND, types::NOT_FOUND, "Not Found"),
            ServiceError::Forbidden(_) => (StatusCode::FORBIDDEN, types::FORBIDDEN, "Forbidden"),
            ServiceError::Conflict(_) => (StatusCode::CONFLICT, types::CONFLICT, "Conflict"),
            ServiceError::WebhookDisabled => (StatusCode::CONFLICT, types::WEBHOOK_DISABLED, "Webhook Disabled"),
            ServiceError::PreconditionFailed => {
                (StatusCode::PRECONDITION_FAILED, types::PRECONDITION, "Precondition Failed")
            }
            ServiceError::Unusable(Unusable::Pending) => (StatusCode::CONFLICT, types::PENDING, "Connection Pending"),
            ServiceError::Unusable(Unusable::Disconnected) => {
                (StatusCode::CONFLICT, types::DISCONNECTED, "Connection Disconnected")
            }
            ServiceError::Unusable(Unusable::Error) => (StatusCode::CONFLICT, types::ERRORED, "Connection Error"),
            ServiceError::Unusable(Unusable::TokenExpired) => {
                (StatusCode::CONFLICT, types::TOKEN_EXPIRED, "Token Expired")
            }
            ServiceError::Provider(_) => (StatusCode::BAD_GATEWAY, types::PROVIDER, "Provider Error"),
            ServiceError::CredentialsRejected { status } => {
                let title = "Credentials Rejected";
                let problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY, types::CREDENTIALS_REJECTED, title, detail);
                return Self { provider_status: Some(status), ..problem };
            }
            ServiceError::VerificationUnavailable(_) => {
                (StatusCode::BAD_GATEWAY, types::VERIFICATION_UNAVAILABLE, "Verification Unavailable")
            }
            ServiceError::Store(_) | ServiceError::Crypto(_) | ServiceError::Unexpected(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, types::INTERNAL, "Internal Server Error")
            }
        };
        Self::new(status, kind, title, detail)
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
    use crate::crypto::CryptoError;
    use crate::ports::StoreError;

    #[test]
    fn a_dependency_that_did_not_answer_is_a_503_with_retry_after_and_type_unavailable() {
        for e in [
            ServiceError::Store(StoreError::Unavailable("timed out".into())),
            ServiceError::Crypto(CryptoError::Unavailable("timed out".into())),
        ] {
            let p = Problem::from(e);
            assert_eq!((p.status, p.kind), (503, types::UNAVAILABLE));
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

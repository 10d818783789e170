//! Errors of the client: what Latchkey refused ([`ApiError`], with an [`ErrorKind`] callers
//! branch on), and what went wrong on the way there.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// What a call to Latchkey can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Latchkey answered and refused: an HTTP problem (RFC 9457) or a Lambda function error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The request never got an answer (connection refused, DNS, timeout, TLS).
    #[error("no answer from Latchkey: {0}")]
    Transport(#[source] reqwest::Error),
    /// The Lambda Invoke call itself failed (credentials, permissions, throttling, no such
    /// function): the function did not run.
    #[cfg(feature = "lambda")]
    #[error("lambda:InvokeFunction failed: {0}")]
    Invoke(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Latchkey answered with something this client cannot read (a newer server, a proxy's
    /// page). The body is not quoted: it may carry credentials.
    #[error("unexpected answer from Latchkey ({what})")]
    Decode {
        /// Which answer: `"lookup"`, `"connection"`...
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A setting of the client is unusable (a base URL that cannot carry paths).
    #[error("invalid client setting: {0}")]
    Config(String),
}

impl Error {
    /// The kind of refusal, when Latchkey refused; `None` for transport and decoding failures.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Api(e) => Some(&e.kind),
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried as it is: Latchkey's dependencies did not
    /// answer in time (`Unavailable`), or the request got no answer at all.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(e) => matches!(
                e.kind,
                ErrorKind::Unavailable | ErrorKind::VerificationUnavailable | ErrorKind::IdempotencyInProgress
            ),
            Self::Transport(e) => e.is_timeout() || e.is_connect(),
            _ => false,
        }
    }
}

/// The kinds of refusal, named like the `errorType`s of the `token-lookup` function; over HTTP
/// they come from the problem's `type` (`urn:latchkey:problem:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// `ConnectionNotFound` (HTTP 404): no such connection (or definition) for this caller;
    /// another organization's data answers the same.
    NotFound,
    /// `ConnectionPending` (409): the connection is not authorized yet.
    ConnectionPending,
    /// `ConnectionDisconnected` (409): the connection was disconnected; authorize it again.
    ConnectionDisconnected,
    /// `ConnectionError` (409): the connection is red; see its `error` and the logs.
    ConnectionError,
    /// `TokenExpired`: the access token expired and cannot be refreshed.
    TokenExpired,
    /// `ProviderError` (502): the provider's token endpoint refused or failed a refresh.
    ProviderError,
    /// `CredentialsRejected` (422): the provider refused the credentials of a verify request
    /// (at connect time or `POST /v1/connections/{id}/verify`); nothing was stored.
    CredentialsRejected,
    /// `VerificationUnavailable` (502): a verify request got no usable answer from the
    /// provider (timeout, unreachable, throttled); worth retrying later.
    VerificationUnavailable,
    /// `Unavailable` (503): DynamoDB, KMS or the token issuer did not answer in time: retry
    /// after [`ApiError::retry_after`].
    Unavailable,
    /// `InvalidRequest` (400, 413, 422): the request is malformed or invalid; see
    /// [`ApiError::errors`].
    InvalidRequest,
    /// `Unauthorized` (401): no token, or an invalid or expired one.
    Unauthorized,
    /// `Forbidden` (403): the token lacks a role (`runtime` for lookups) or is another
    /// organization's.
    Forbidden,
    /// `Conflict` (409): e.g. a definition still used by connections.
    Conflict,
    /// `PreconditionFailed` (412): `If-Match` named an old version.
    PreconditionFailed,
    /// `InternalError` (500): a fault in Latchkey.
    Internal,
    /// HTTP only (422): an `Idempotency-Key` sent again with another body.
    IdempotencyKeyReused,
    /// HTTP only (409): the first request with this `Idempotency-Key` is still running; retry
    /// after [`ApiError::retry_after`].
    IdempotencyInProgress,
    /// HTTP only (409): a retry of a delivery of a disabled webhook
    /// (`POST /v1/webhooks/{id}/deliveries/{deliveryId}/retry`); enable the webhook with PUT
    /// first. The Lambda functions answer `Conflict` for it.
    WebhookDisabled,
    /// A kind this client does not know, as the server named it (an `errorType` or a problem
    /// `type` URI).
    Other(String),
}

impl ErrorKind {
    /// The kind of a Lambda function error's `errorType`.
    pub fn from_error_type(error_type: &str) -> Self {
        match error_type {
            "ConnectionNotFound" => Self::NotFound,
            "ConnectionPending" => Self::ConnectionPending,
            "ConnectionDisconnected" => Self::ConnectionDisconnected,
            "ConnectionError" => Self::ConnectionError,
            "TokenExpired" => Self::TokenExpired,
            "ProviderError" => Self::ProviderError,
            "CredentialsRejected" => Self::CredentialsRejected,
            "VerificationUnavailable" => Self::VerificationUnavailable,
            "Unavailable" => Self::Unavailable,
            "InvalidRequest" => Self::InvalidRequest,
            "Unauthorized" => Self::Unauthorized,
            "Forbidden" => Self::Forbidden,
            "Conflict" => Self::Conflict,
            "PreconditionFailed" => Self::PreconditionFailed,
            "InternalError" => Self::Internal,
            "IdempotencyKeyReused" => Self::IdempotencyKeyReused,
            "IdempotencyInProgress" => Self::IdempotencyInProgress,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The kind of an HTTP problem, from its `type` URI, else from its status.
    pub fn from_problem(problem_type: Option<&str>, status: u16) -> Self {
        let name = problem_type.and_then(|t| t.strip_prefix("urn:latchkey:problem:"));
        match name {
            Some("not-found") => Self::NotFound,
            Some("connection-pending") => Self::ConnectionPending,
            Some("connection-disconnected") => Self::ConnectionDisconnected,
            Some("connection-error") => Self::ConnectionError,
            Some("token-expired") => Self::TokenExpired,
            Some("provider-error") => Self::ProviderError,
            Some("credentials-rejected") => Self::CredentialsRejected,
            Some("verification-unavailable") => Self::VerificationUnavailable,
            Some("unavailable") => Self::Unavailable,
            Some("validation" | "malformed-request" | "payload-too-large" | "method-not-allowed") => {
                Self::InvalidRequest
            }
            Some("unauthorized") => Self::Unauthorized,
            Some("forbidden") => Self::Forbidden,
            Some("conflict") => Self::Conflict,
            Some("precondition-failed") => Self::PreconditionFailed,
            Some("internal") => Self::Internal,
            Some("idempotency-key-reused") => Self::IdempotencyKeyReused,
            Some("idempotency-in-progress") => Self::IdempotencyInProgress,
            Some("webhook-disabled") => Self::WebhookDisabled,
            Some(_) => Self::Other(problem_type.unwrap_or_default().to_owned()),
            None => match status {
                400 | 405 | 413 | 422 => Self::InvalidRequest,
                401 => Self::Unauthorized,
                403 => Self::Forbidden,
                404 => Self::NotFound,
                409 => Self::Conflict,
                412 => Self::PreconditionFailed,
                502 => Self::ProviderError,
                503 | 504 => Self::Unavailable,
                _ => Self::Internal,
            },
        }
    }

    /// The Lambda `errorType` of this kind (the stable name to log or branch on).
    pub fn error_type(&self) -> &str {
        match self {
            Self::NotFound => "ConnectionNotFound",
            Self::ConnectionPending => "ConnectionPending",
            Self::ConnectionDisconnected => "ConnectionDisconnected",
            Self::ConnectionError => "ConnectionError",
            Self::TokenExpired => "TokenExpired",
            Self::ProviderError => "ProviderError",
            Self::CredentialsRejected => "CredentialsRejected",
            Self::VerificationUnavailable => "VerificationUnavailable",
            Self::Unavailable => "Unavailable",
            Self::InvalidRequest => "InvalidRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::Conflict => "Conflict",
            Self::PreconditionFailed => "PreconditionFailed",
            Self::Internal => "InternalError",
            Self::IdempotencyKeyReused => "IdempotencyKeyReused",
            Self::IdempotencyInProgress => "IdempotencyInProgress",
            Self::WebhookDisabled => "WebhookDisabled",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_type())
    }
}

/// One invalid field of a validation problem.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// The field's path, e.g. `values.apiKey` or `inputs.scopes.type`; empty for the whole body.
    pub field: String,
    /// Why it is invalid.
    pub message: String,
}

/// A refusal by Latchkey. Its texts are Latchkey's own: they never carry a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct ApiError {
    /// What kind of refusal: branch on this.
    pub kind: ErrorKind,
    /// The HTTP status; `None` for a Lambda function error.
    pub status: Option<u16>,
    /// The problem's `type` URI over HTTP; `None` for Lambda.
    pub problem_type: Option<String>,
    /// The problem's `detail`, or the function error's `errorMessage`.
    pub message: String,
    /// The invalid fields of a validation problem (HTTP only: a Lambda message names them in
    /// its text).
    pub errors: Vec<FieldError>,
    /// `Retry-After`, for `Unavailable`.
    pub retry_after: Option<Duration>,
}

/// An RFC 9457 problem as Latchkey writes it.
#[derive(Deserialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    #[serde(default)]
    errors: Vec<FieldError>,
}

impl ApiError {
    /// The error of an HTTP answer with a non-2xx `status`, from its body (a problem, or
    /// anything else) and `Retry-After` in seconds.
    pub(crate) fn from_http(status: u16, body: &[u8], retry_after: Option<u64>) -> Self {
        let retry_after = retry_after.map(Duration::from_secs);
        match serde_json::from_slice::<ProblemBody>(body) {
            Ok(p) => Self {
                kind: ErrorKind::from_problem(p.kind.as_deref(), status),
                status: Some(status),
                message: p.detail.or(p.title).unwrap_or_else(|| format!("HTTP {status}")),
                problem_type: p.kind,
                errors: p.errors,
                retry_after,
            },
            // Not Latchkey's problem (a proxy, a gateway): its text is not repeated.
            Err(_) => Self {
                kind: ErrorKind::from_problem(None, status),
                status: Some(status),
                problem_type: None,
                message: format!("HTTP {status} without a problem body"),
                errors: Vec::new(),
                retry_after,
            },
        }
    }

    /// The error of a Lambda function error payload `{"errorType", "errorMessage"}`.
    /// `function_error` is the invoke answer's `FunctionError` (`Unhandled` when Lambda itself
    /// reports a crash or timeout, whose payload may not be that shape).
    pub fn from_lambda_payload(function_error: &str, payload: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Diagnostic {
            #[serde(rename = "errorType")]
            error_type: Option<String>,
            #[serde(rename = "errorMessage")]
            error_message: Option<String>,
        }
        let parsed = serde_json::from_slice::<Diagnostic>(payload).ok();
        let error_type = parsed.as_ref().and_then(|d| d.error_type.clone());
        let message = parsed.and_then(|d| d.error_message);
        Self {
            kind: match &error_type {
                Some(t) => ErrorKind::from_error_type(t),
                None => ErrorKind::Other(function_error.to_owned()),
            },
            status: None,
            problem_type: None,
            message: message.unwrap_or_else(|| format!("the function failed ({function_error})")),
            errors: Vec::new(),
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_problem_keeps_its_fields_and_kind() {
        let body = br#"{"type":"urn:latchkey:problem:validation","title":"Validation Failed","status":422,
            "detail":"invalid fields: values.apiKey","errors":[{"field":"values.apiKey","message":"is required"}]}"#;
        let e = ApiError::from_http(422, body, None);
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert_eq!(e.status, Some(422));
        assert_eq!(e.message, "invalid fields: values.apiKey");
        assert_eq!(e.errors, vec![FieldError { field: "values.apiKey".into(), message: "is required".into() }]);
    }

    #[test]
    fn every_problem_type_maps_to_the_lambda_error_type_of_the_same_refusal() {
        for (urn, error_type) in [
            ("not-found", "ConnectionNotFound"),
            ("connection-pending", "ConnectionPending"),
            ("connection-disconnected", "ConnectionDisconnected"),
            ("connection-error", "ConnectionError"),
            ("token-expired", "TokenExpired"),
            ("provider-error", "ProviderError"),
            ("credentials-rejected", "CredentialsRejected"),
            ("verification-unavailable", "VerificationUnavailable"),
            ("unavailable", "Unavailable"),
            ("validation", "InvalidRequest"),
            ("malformed-request", "InvalidRequest"),
            ("unauthorized", "Unauthorized"),
            ("forbidden", "Forbidden"),
            ("conflict", "Conflict"),
            ("precondition-failed", "PreconditionFailed"),
            ("internal", "InternalError"),
        ] {
            let kind = ErrorKind::from_problem(Some(&format!("urn:latchkey:problem:{urn}")), 400);
            assert_eq!(kind.error_type(), error_type, "{urn}");
            assert_eq!(ErrorKind::from_error_type(error_type), kind, "{error_type} round trip");
        }
    }

    #[test]
    fn an_unknown_problem_type_is_kept_and_a_body_that_is_no_problem_is_not_quoted() {
        let e = ApiError::from_http(422, br#"{"type":"urn:latchkey:problem:carrier-pigeon-lost","detail":"no"}"#, None);
        assert_eq!(e.kind, ErrorKind::Other("urn:latchkey:problem:carrier-pigeon-lost".into()));
        let e = ApiError::from_http(503, b"<html>sk_live_canary</html>", Some(2));
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert!(!e.to_string().contains("canary"), "{e}");
    }

    #[test]
    fn a_retry_of_a_disabled_webhook_is_its_own_kind_not_a_generic_conflict() {
        let body = br#"{"type":"urn:latchkey:problem:webhook-disabled","title":"Webhook Disabled","status":409,
            "detail":"the webhook is disabled; enable it with PUT before retrying"}"#;
        let e = ApiError::from_http(409, body, None);
        assert_eq!(e.kind, ErrorKind::WebhookDisabled);
        assert_eq!(e.kind.error_type(), "WebhookDisabled");
        assert!(!Error::Api(e).is_retryable(), "retrying as it is meets the same disabled webhook");
    }

    #[test]
    fn the_lambda_runtime_error_payload_is_read() {
        // What lambda_runtime writes for a handler's `Err(Diagnostic)`.
        let d = lambda_runtime::Diagnostic {
            error_type: "ConnectionPending".into(),
            error_message: "the connection is not authorized yet".into(),
        };
        let payload = serde_json::to_vec(&d).unwrap();
        let e = ApiError::from_lambda_payload("Handled", &payload);
        assert_eq!(e.kind, ErrorKind::ConnectionPending);
        assert_eq!(e.message, "the connection is not authorized yet");
        assert_eq!(e.status, None);
    }

    #[test]
    fn a_crash_reported_by_lambda_itself_is_an_error_of_its_own_kind() {
        let e = ApiError::from_lambda_payload("Unhandled", b"not json");
        assert_eq!(e.kind, ErrorKind::Other("Unhandled".into()));
        let e = ApiError::from_lambda_payload(
            "Unhandled",
            br#"{"errorType":"Runtime.ExitError","errorMessage":"RequestId: 1 Error: Runtime exited"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Other("Runtime.ExitError".into()));
    }
}

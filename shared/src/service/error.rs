//! The service's one error type and its contract with callers. HTTP turns it into problem+json
//! ([`crate::http::problem`]); the directly invoked functions turn it into a Lambda
//! [`Diagnostic`] here, beside the error (aws-lambda-rust-runtime's `basic-error-thiserror`),
//! because their `errorType`s are a contract of their own: callers branch on them (README,
//! "Token lookup").
//!
//! What a caller is told is [`ServiceError::public_message`]: never an inner error's text,
//! which could carry a provider's or backend's words.

use lambda_runtime::Diagnostic;

use crate::crypto::CryptoError;
use crate::domain::{FieldError, Status};
use crate::ports::{BackendError, StoreError};

/// Why a connection cannot hand out credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// OAuth not authorized yet.
    Pending,
    Disconnected,
    /// Red: see the connection's `error`.
    Error,
    /// The access token expired and cannot be renewed (the connection has just turned red
    /// `token_expired`).
    TokenExpired,
}

impl Unusable {
    /// Why a connection in `status` cannot hand out credentials, if it cannot: the one rule
    /// lookups, error reports and refreshes share (`configured` and `active` can).
    pub fn of(status: Status) -> Option<Self> {
        match status {
            Status::Pending => Some(Self::Pending),
            Status::Disconnected => Some(Self::Disconnected),
            Status::Error => Some(Self::Error),
            Status::Configured | Status::Active => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    /// A genuine 409: the request conflicts with the resource's state (a definition still in
    /// use, a connection of another kind, a record changed concurrently past the retries).
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the connection's version does not match If-Match")]
    PreconditionFailed,
    /// A manual delivery retry on a disabled webhook endpoint (409, problem type
    /// `webhook-disabled`): enable it with PUT first.
    #[error("the webhook is disabled")]
    WebhookDisabled,
    #[error("the connection has no usable credentials")]
    Unusable(Unusable),
    /// The provider's token endpoint refused or failed; the OAuth error code.
    #[error("the provider's token endpoint failed: {0}")]
    Provider(String),
    /// A verify request (SPEC section 10) was refused by the provider (401/403) or answered a
    /// status that does not confirm the credentials: the provider's HTTP status.
    #[error("the provider refused the credentials (HTTP {status})")]
    CredentialsRejected { status: u16 },
    /// A verify request got no usable answer: the reason's code (`timeout`, `unreachable`,
    /// `provider_error`, `throttled`...).
    #[error("the credentials could not be verified now ({0})")]
    VerificationUnavailable(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Anything else that should not happen: a deployment without `LATCHKEY_PUBLIC_URL`, a
    /// bug. Opaque to the caller (500, `InternalError`); the source is kept for the log
    /// (zero-to-production's `UnexpectedError`).
    #[error("an unexpected failure")]
    Unexpected(#[source] BackendError),
}

/// The `errorType`s of the directly invoked functions, stable for callers to branch on
/// (README, "Token lookup"; `Unauthorized` and `Forbidden` come from the token check).
pub mod error_types {
    pub const NOT_FOUND: &str = "ConnectionNotFound";
    pub const INVALID: &str = "InvalidRequest";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const CONFLICT: &str = "Conflict";
    pub const PRECONDITION: &str = "PreconditionFailed";
    pub const PENDING: &str = "ConnectionPending";
    pub const DISCONNECTED: &str = "ConnectionDisconnected";
    pub const ERRORED: &str = "ConnectionError";
    pub const TOKEN_EXPIRED: &str = "TokenExpired";
    pub const PROVIDER: &str = "ProviderError";
    pub const CREDENTIALS_REJECTED: &str = "CredentialsRejected";
    pub const VERIFICATION_UNAVAILABLE: &str = "VerificationUnavailable";
    pub const UNAVAILABLE: &str = "Unavailable";
    pub const INTERNAL: &str = "InternalError";
}

/// `"invalid fields: a, b"`: the summary of a validation failure (its fields, not their values).
pub fn invalid_summary(errors: &[FieldError]) -> String {
    let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).filter(|f| !f.is_empty()).collect();
    if fields.is_empty() {
        "the request is invalid".to_owned()
    } else {
        format!("invalid fields: {}", fields.join(", "))
    }
}

impl ServiceError {
    pub(crate) fn invalid(field: &str, message: &str) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    /// An [`ServiceError::Unexpected`] failure with `source` kept for the log.
    pub(crate) fn unexpected(source: impl Into<BackendError>) -> Self {
        Self::Unexpected(source.into())
    }

    /// A dependency (the store, the key service) did not answer in time: worth retrying as is.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(StoreError::Unavailable(_)) | Self::Crypto(CryptoError::Unavailable(_)))
    }

    /// Neither the caller's doing nor a state of the resource: a dependency or Latchkey failed.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Crypto(_) | Self::Unexpected(_))
    }

    /// The stable name of this failure: the Lambda `errorType` (see [`error_types`]).
    pub fn error_type(&self) -> &'static str {
        use error_types::*;
        match self {
            Self::NotFound => NOT_FOUND,
            Self::Forbidden(_) => FORBIDDEN,
            Self::Invalid(_) => INVALID,
            Self::Conflict(_) | Self::WebhookDisabled => CONFLICT,
            Self::PreconditionFailed => PRECONDITION,
            Self::Unusable(Unusable::Pending) => PENDING,
            Self::Unusable(Unusable::Disconnected) => DISCONNECTED,
            Self::Unusable(Unusable::Error) => ERRORED,
            Self::Unusable(Unusable::TokenExpired) => TOKEN_EXPIRED,
            Self::Provider(_) => PROVIDER,
            Self::CredentialsRejected { .. } => CREDENTIALS_REJECTED,
            Self::VerificationUnavailable(_) => VERIFICATION_UNAVAILABLE,
            e if e.is_unavailable() => UNAVAILABLE,
            Self::Store(_) | Self::Crypto(_) | Self::Unexpected(_) => INTERNAL,
        }
    }

    /// What the caller is told (the problem's `detail`, the diagnostic's message). Safe to
    /// show: Latchkey's own words, the provider's OAuth error code at most.
    pub fn public_message(&self) -> String {
        match self {
            Self::NotFound => "no such resource".to_owned(),
            Self::Forbidden(why) | Self::Conflict(why) => (*why).to_owned(),
            Self::Invalid(errors) => invalid_summary(errors),
            Self::PreconditionFailed => "the connection's version does not match If-Match; read it again".to_owned(),
            Self::WebhookDisabled => "the webhook is disabled; enable it with PUT before retrying".to_owned(),
            Self::Unusable(Unusable::Pending) => "the connection is not authorized yet".to_owned(),
            Self::Unusable(Unusable::Disconnected) => {
                "the connection was disconnected; connect it again (OAuth: authorize it again)".to_owned()
            }
            Self::Unusable(Unusable::Error) => "the connection is in error; reconfigure or re-authorize it".to_owned(),
            Self::Unusable(Unusable::TokenExpired) => "the access token expired and cannot be renewed; the customer \
                                                       must authorize the connection again"
                .to_owned(),
            Self::Provider(code) => format!("the provider's token endpoint failed ({code})"),
            Self::CredentialsRejected { status } => {
                format!("the provider refused the credentials (HTTP {status}); nothing was stored")
            }
            Self::VerificationUnavailable(code) => {
                format!("the credentials could not be verified with the provider ({code}); nothing was stored")
            }
            e if e.is_unavailable() => "a storage or key service did not answer in time; retry shortly".to_owned(),
            Self::Store(_) | Self::Crypto(_) | Self::Unexpected(_) => "an internal error occurred".to_owned(),
        }
    }

    /// Logs a failure that is not the caller's (a dependency unavailable: warn; anything
    /// internal: error), with its source chain, since the caller is told nothing of it. Every
    /// boundary calls this once as it answers.
    pub fn log_if_internal(&self) {
        if !self.is_internal() {
            return;
        }
        let source = std::error::Error::source(self).map(ToString::to_string);
        if self.is_unavailable() {
            tracing::warn!(error = %self, source = ?source, "a dependency is unavailable");
        } else {
            tracing::error!(error = %self, source = ?source, "request failed");
        }
    }
}

impl From<ServiceError> for Diagnostic {
    /// The Lambda error of a directly invoked function: the stable `errorType`, and the public
    /// message (a validation failure names its fields and what is wrong with each).
    fn from(e: ServiceError) -> Self {
        e.log_if_internal();
        let message = match &e {
            ServiceError::Invalid(errors) => {
                let fields: Vec<String> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
                format!("{} ({})", e.public_message(), fields.join("; "))
            }
            _ => e.public_message(),
        };
        Diagnostic { error_type: e.error_type().to_owned(), error_message: message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_carry_stable_error_types_and_no_inner_text() {
        let cases = [
            (ServiceError::NotFound, "ConnectionNotFound"),
            (ServiceError::Unusable(Unusable::Pending), "ConnectionPending"),
            (ServiceError::Unusable(Unusable::Disconnected), "ConnectionDisconnected"),
            (ServiceError::Unusable(Unusable::Error), "ConnectionError"),
            (ServiceError::Unusable(Unusable::TokenExpired), "TokenExpired"),
            (ServiceError::Provider("temporarily_unavailable".into()), "ProviderError"),
            (ServiceError::invalid("message", "is required"), "InvalidRequest"),
            (ServiceError::Store(StoreError::Unavailable("timed out at 10.0.0.1".into())), "Unavailable"),
            (ServiceError::Crypto(CryptoError::Unavailable("timed out at 10.0.0.1".into())), "Unavailable"),
            (ServiceError::Store(StoreError::Backend("table gone at 10.0.0.1".into())), "InternalError"),
            (ServiceError::Crypto(CryptoError::Format), "InternalError"),
            (ServiceError::unexpected("no public URL at 10.0.0.1"), "InternalError"),
        ];
        for (e, error_type) in cases {
            let d = Diagnostic::from(e);
            assert_eq!(d.error_type, error_type);
            assert!(!d.error_message.contains("10.0.0.1"), "no inner error text: {}", d.error_message);
        }
        let d = Diagnostic::from(ServiceError::invalid("message", "is required"));
        assert_eq!(d.error_message, "invalid fields: message (message: is required)");
    }

    #[test]
    fn only_configured_and_active_connections_hand_out_credentials() {
        assert_eq!(Unusable::of(Status::Pending), Some(Unusable::Pending));
        assert_eq!(Unusable::of(Status::Disconnected), Some(Unusable::Disconnected));
        assert_eq!(Unusable::of(Status::Error), Some(Unusable::Error));
        assert_eq!(Unusable::of(Status::Configured), None);
        assert_eq!(Unusable::of(Status::Active), None);
    }
}

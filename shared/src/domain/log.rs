use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What happened to a connection. Messages never contain a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogType {
    Created,
    Updated,
    AuthorizeStarted,
    Authorized,
    /// An authorization of a connection that had been authorized before (SPEC section 10).
    Reconnected,
    AuthorizeFailed,
    Refreshed,
    RefreshFailed,
    Used,
    ErrorReported,
    Disconnected,
    Revoked,
    RevokeFailed,
    /// `Refresh Token Expiring`: the refresh token lapses soon.
    RefreshTokenExpiring,
    /// The definition's verify request was accepted by the provider (SPEC section 10).
    Verified,
    /// The verify request was refused (the connection turns red) or could not be confirmed.
    VerifyFailed,
}

/// One line of a connection's log.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(rename = "type")]
    pub kind: LogType,
    pub message: String,
}

impl LogEntry {
    pub fn new(at: OffsetDateTime, kind: LogType, message: impl Into<String>) -> Self {
        Self { at, kind, message: message.into() }
    }
}

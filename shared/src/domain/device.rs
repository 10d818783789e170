//! A pending RFC 8628 device authorization, kept on its connection while the user approves
//! the code on another device and the sweep polls the token endpoint.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Sealed;

/// What a device authorization in progress needs: the device code (a credential: sealed under
/// the connection's context), what the user is shown, and when to poll next. A disconnect
/// removes it with the tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAuthorization {
    /// The sealed device code (RFC 8628 section 3.2 `device_code`).
    pub device_code: Sealed,
    /// What the user enters at the verification URI (`WDJB-MJHT`).
    pub user_code: String,
    /// Where the user enters it (https, or http on loopback).
    pub verification_uri: String,
    /// The verification URI with the code filled in, when the provider offers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    /// When the device code lapses: the authorization is then over, unapproved.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Seconds between polls: the provider's `interval`, plus 5 for every `slow_down`.
    pub interval_secs: u64,
    /// When the next poll may be sent; the connection's due time in the refresh index.
    #[serde(with = "time::serde::rfc3339")]
    pub next_poll_at: OffsetDateTime,
}

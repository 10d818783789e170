//! Webhooks (SPEC section 11): an organization's endpoints and the deliveries of its events to
//! them, signed per the Standard Webhooks specification
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{OrgId, Sealed, WebhookId};

/// A webhook endpoint. Its signing secrets are sealed under the organization's context
/// (`EncryptionContext::organization`) as one JSON value [`WebhookSecrets`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub org: OrgId,
    pub id: WebhookId,
    /// `https://…` (or `http://` on a loopback host when loopback is allowed), checked against
    /// the outbound policy when written and again at each delivery.
    pub url: String,
    /// The EventBridge `detail-type`s delivered (`Connection Created`, …); at least one.
    pub events: Vec<String>,
    pub enabled: bool,
    /// Why Latchkey disabled the endpoint (`deliveries_failing`); `None` when enabled or
    /// disabled by the organization. Cleared by a PUT with `enabled: true`.
    pub disabled_reason: Option<String>,
    /// Sealed [`WebhookSecrets`].
    pub secrets: Sealed,
    /// Until when the secret replaced by the last rotation still signs (a copy of
    /// [`WebhookSecrets::previous_until`] in the clear, so views never open the secrets); `None`
    /// before any rotation.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub previous_until: Option<OffsetDateTime>,
    /// When a delivery to this endpoint last succeeded (a 2xx answer); `None` before the first.
    /// An endpoint that succeeded since a failing delivery's first attempt is not disabled by it.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_delivered_at: Option<OffsetDateTime>,
    /// Incremented by every write; conditional writes compare it.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What [`Webhook::secrets`] seals: the current signing secret and, for 24 hours after a
/// rotation, the previous one (both sign every delivery meanwhile). Secrets are the Standard
/// Webhooks form `whsec_` + base64 of 32 random bytes.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookSecrets {
    #[serde(with = "exposed")]
    pub current: secrecy::SecretString,
    #[serde(with = "exposed_option", default)]
    pub previous: Option<secrecy::SecretString>,
    /// When `previous` stops signing.
    #[serde(with = "time::serde::rfc3339::option")]
    pub previous_until: Option<OffsetDateTime>,
}

/// Serde of a secret that is only ever serialized to be sealed ([`Webhook::secrets`]).
mod exposed {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose_secret())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::from(String::deserialize(d)?))
    }
}

mod exposed_option {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(v.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets").field("previous_until", &self.previous_until).finish_non_exhaustive()
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::EnumString, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; attempted again at `next_attempt_at`.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt of the schedule failed (or the endpoint was disabled or deleted).
    Failed,
}

/// One attempt of a delivery: what came back, never the answer's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The HTTP status, when an answer came.
    pub status_code: Option<u16>,
    /// `timeout`, `connect`, `refused_destination`, … when no answer came.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Made by `POST …/retry` rather than by the retry schedule: it does not count against the
    /// schedule and never disables the endpoint.
    #[serde(default)]
    pub manual: bool,
}

/// One event for one endpoint. Its id is the Standard Webhooks `webhook-id`: derived from the
/// event id and the webhook id ([`delivery_id`]), so the same event is never delivered under two
/// ids, whoever enqueues it and however often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub org: OrgId,
    pub webhook_id: WebhookId,
    /// `msg_` + 26 characters ([`delivery_id`]).
    pub id: String,
    pub event_id: String,
    /// The event's `detail-type`.
    pub event_type: String,
    /// The exact body sent: `{"type", "timestamp", "data"}`, no secret by construction.
    pub payload: String,
    pub status: DeliveryStatus,
    /// Incremented by every write; [`crate::ports::Store::update_delivery`] compares it, so
    /// of two workers claiming one delivery exactly one wins.
    pub version: u64,
    /// Every attempt so far, oldest first (at most the schedule's length plus the manual ones).
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next attempt is due (`Pending` only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Forgotten after this (30 days; DynamoDB TTL, SQLite purge).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The Standard Webhooks `webhook-id` of `event_id` sent to `webhook`: `msg_` + the first 26
/// characters of the lowercase base32 (RFC 4648, no padding) SHA-256 of
/// `"{org}\n{webhook}\n{event_id}"`.
pub fn delivery_id(org: &OrgId, webhook: &WebhookId, event_id: &str) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(format!("{org}\n{webhook}\n{event_id}").as_bytes());
    let mut out = String::from("msg_");
    let (mut acc, mut bits) = (0u32, 0u32);
    for &byte in digest.iter() {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 && out.len() < 30 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let org = OrgId::parse("acme").unwrap();
        let (a, b) = (WebhookId::parse("ops").unwrap(), WebhookId::parse("crm").unwrap());
        let id = delivery_id(&org, &a, "01J0EVENT");
        assert_eq!(id, delivery_id(&org, &a, "01J0EVENT"));
        assert_eq!(id.len(), 30);
        assert!(id.starts_with("msg_"));
        assert_ne!(id, delivery_id(&org, &b, "01J0EVENT"));
        assert_ne!(id, delivery_id(&org, &a, "01J0EVENT2"));
    }
}

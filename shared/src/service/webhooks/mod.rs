//! Webhooks (SPEC section 11): an organization's endpoints ([`config`]), the deliveries of its
//! events to them ([`deliver`]: fan-out, one attempt, backoff, manual retry), and the outbound
//! HTTP adapter that sends and signs them ([`sender`], Standard Webhooks).
//!
//! One flow on both backends: an event becomes a [`WebhookMessage`] (from the [`Event`] itself in
//! `latchkey serve`'s outbox, from its EventBridge envelope in the `webhook-deliver` function),
//! [`Service::enqueue_deliveries`] stores one delivery per subscribed endpoint (idempotent: the
//! delivery id is derived from the event id), and [`Service::attempt_delivery`] makes one
//! attempt, claiming the delivery by its version so that two workers never send it at once.

mod config;
mod deliver;
mod sender;

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use config::{
    DEFAULT_DELIVERIES, DeliveriesQuery, DeliveryPage, DeliveryView, MAX_DELIVERIES, ROTATION_OVERLAP, RotatedSecret,
    WebhookView,
};
pub use deliver::{CLAIM_LEASE, DELIVERIES_FAILING, DELIVERY_CONCURRENCY, DELIVERY_RETENTION, DUE_BATCH, next_attempt};
pub use sender::{DEFAULT_ATTEMPT_TIMEOUT, MAX_RETRY_AFTER, USER_AGENT, WebhookSender};

use super::Service;
use crate::domain::{Event, OrgId};

/// When a failed delivery is tried again: seconds after the previous attempt, one entry per
/// retry (`LATCHKEY_WEBHOOK_RETRY_SCHEDULE`). 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight
/// attempts over about 27.5 hours, after which the delivery is `failed` and its endpoint
/// disabled.
pub const DEFAULT_RETRY_SCHEDULE: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];

/// The default [`DEFAULT_RETRY_SCHEDULE`] as durations.
pub fn default_retry_schedule() -> Vec<Duration> {
    DEFAULT_RETRY_SCHEDULE.iter().map(|s| Duration::from_secs(*s)).collect()
}

/// One event as webhooks send it: its identity, and the exact body every endpoint receives,
/// `{"type": "<detail-type>", "timestamp": "<occurred_at, RFC 3339>", "data": <the EventBridge
/// detail>}` (Standard Webhooks). Holds no secret: events never carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookMessage {
    pub org: OrgId,
    /// The event's id (a ULID): with the webhook id, the delivery id.
    pub event_id: String,
    /// The EventBridge `detail-type` (`Connection Created`, …).
    pub event_type: String,
    pub occurred_at: OffsetDateTime,
    /// The body sent, serialized once.
    pub payload: String,
}

/// Why an EventBridge envelope is not a Latchkey event a webhook can carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookMessageError {
    /// A member the message needs is absent or of the wrong type (its JSON path).
    #[error("the event has no valid `{0}`")]
    Missing(&'static str),
    /// `detail.org` is not an organization id.
    #[error("the event's `detail.org` is not an organization id")]
    Org,
}

impl WebhookMessage {
    /// The message of an event emitted in this process (`latchkey serve`'s outbox).
    pub fn from_event(event: &Event) -> Self {
        let data = serde_json::to_value(event).unwrap_or(Value::Null);
        Self::new(event.org.clone(), event.event_id.clone(), event.kind.detail_type(), event.occurred_at, &data)
    }

    /// The message of an EventBridge envelope as the `webhook-deliver` function receives it
    /// from SQS: `detail-type`, `detail.event_id` (else the envelope's `id`), `detail.org`,
    /// `detail.occurred_at` (else the envelope's `time`), and `detail` as the body's `data`.
    ///
    /// # Errors
    /// [`WebhookMessageError`] naming the first member that is missing or invalid.
    pub fn from_eventbridge(envelope: &Value) -> Result<Self, WebhookMessageError> {
        let event_type = envelope
            .get("detail-type")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(WebhookMessageError::Missing("detail-type"))?;
        let detail = envelope.get("detail").filter(|d| d.is_object()).ok_or(WebhookMessageError::Missing("detail"))?;
        let org = detail.get("org").and_then(Value::as_str).ok_or(WebhookMessageError::Missing("detail.org"))?;
        let org = OrgId::parse(org).map_err(|_| WebhookMessageError::Org)?;
        let event_id = detail
            .get("event_id")
            .or_else(|| envelope.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(WebhookMessageError::Missing("detail.event_id"))?;
        let time = |v: Option<&Value>| v.and_then(Value::as_str).and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
        let occurred_at = time(detail.get("occurred_at"))
            .or_else(|| time(envelope.get("time")))
            .ok_or(WebhookMessageError::Missing("detail.occurred_at"))?;
        Ok(Self::new(org, event_id.to_owned(), event_type, occurred_at, detail))
    }

    fn new(org: OrgId, event_id: String, event_type: &str, occurred_at: OffsetDateTime, data: &Value) -> Self {
        let timestamp = occurred_at.format(&Rfc3339).unwrap_or_default();
        let payload = json!({"type": event_type, "timestamp": timestamp, "data": data}).to_string();
        Self { org, event_id, event_type: event_type.to_owned(), occurred_at, payload }
    }
}

impl Service {
    /// The worker's wake-up call: poked by every event that enqueued deliveries (when
    /// [`super::ServiceOptions::webhook_outbox`] is on), so `latchkey serve` delivers at once
    /// rather than at its next tick.
    pub fn webhook_wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.webhook_wake.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventbridge_envelope_gives_the_body_of_its_detail() {
        let envelope = json!({
            "id": "envelope-id",
            "detail-type": "Connection Created",
            "source": "latchkey",
            "time": "2026-11-30T09:00:00Z",
            "detail": {"event_id": "01JEVENT", "occurred_at": "2026-11-30T08:59:59.5Z", "org": "acme", "connection_id": "c1"}
        });
        let m = WebhookMessage::from_eventbridge(&envelope).unwrap();
        assert_eq!(
            (m.org.as_str(), m.event_id.as_str(), m.event_type.as_str()),
            ("acme", "01JEVENT", "Connection Created")
        );
        let body: Value = serde_json::from_str(&m.payload).unwrap();
        assert_eq!(body["type"], "Connection Created");
        assert_eq!(body["timestamp"], "2026-11-30T08:59:59.5Z");
        assert_eq!(body["data"], envelope["detail"]);

        let mut bare = envelope.clone();
        bare["detail"].as_object_mut().unwrap().retain(|k, _| k == "org");
        let m = WebhookMessage::from_eventbridge(&bare).unwrap();
        assert_eq!(m.event_id, "envelope-id", "the envelope's id when the detail has none");
        assert_eq!(m.occurred_at, OffsetDateTime::parse("2026-11-30T09:00:00Z", &Rfc3339).unwrap());

        for (path, broken) in [
            ("detail-type", json!({"detail": {"org": "acme"}, "id": "x", "time": "2026-11-30T09:00:00Z"})),
            ("detail", json!({"detail-type": "Connection Created", "detail": "no"})),
            ("detail.org", json!({"detail-type": "Connection Created", "detail": {}})),
        ] {
            assert_eq!(WebhookMessage::from_eventbridge(&broken), Err(WebhookMessageError::Missing(path)));
        }
        let bad_org =
            json!({"detail-type": "T", "id": "x", "time": "2026-11-30T09:00:00Z", "detail": {"org": "no such/org"}});
        assert_eq!(WebhookMessage::from_eventbridge(&bad_org), Err(WebhookMessageError::Org));
    }
}

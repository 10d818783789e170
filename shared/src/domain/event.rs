use std::collections::BTreeMap;

use serde::Serialize;

use super::{ConnectContext, Connection, ConnectionId, CustomerId, DefinitionKey, OrgId, Status, UserId};

/// Lifecycle events (EventBridge `detail-type`, source `latchkey`).
#[derive(Debug, Clone, Copy, Serialize)]
pub enum EventType {
    #[serde(rename = "Connection Created")]
    ConnectionCreated,
    #[serde(rename = "Connection Updated")]
    ConnectionUpdated,
    #[serde(rename = "Connection Authorized")]
    ConnectionAuthorized,
    #[serde(rename = "Token Refreshed")]
    TokenRefreshed,
    #[serde(rename = "Token Refresh Failed")]
    TokenRefreshFailed,
    #[serde(rename = "Connection Error")]
    ConnectionError,
    #[serde(rename = "Connection Disconnected")]
    ConnectionDisconnected,
    #[serde(rename = "Connection Deleted")]
    ConnectionDeleted,
    /// An authorization of a connection that had been authorized before: same id and values,
    /// new tokens (SPEC section 10). Emitted after `Connection Authorized`, which every completed
    /// authorization emits.
    #[serde(rename = "Connection Reconnected")]
    ConnectionReconnected,
    /// The connection's refresh token lapses within `LATCHKEY_RT_WARNING_DAYS` (detail
    /// `refresh_token_expires_at`); once per refresh token.
    #[serde(rename = "Refresh Token Expiring")]
    RefreshTokenExpiring,
}

impl EventType {
    /// The EventBridge `detail-type`.
    pub fn detail_type(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "Connection Created",
            Self::ConnectionUpdated => "Connection Updated",
            Self::ConnectionAuthorized => "Connection Authorized",
            Self::TokenRefreshed => "Token Refreshed",
            Self::TokenRefreshFailed => "Token Refresh Failed",
            Self::ConnectionError => "Connection Error",
            Self::ConnectionDisconnected => "Connection Disconnected",
            Self::ConnectionDeleted => "Connection Deleted",
            Self::ConnectionReconnected => "Connection Reconnected",
            Self::RefreshTokenExpiring => "Refresh Token Expiring",
        }
    }
}

/// An event: identifiers and status only, by construction never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(skip)]
    pub kind: EventType,
    /// Unique per event (a ULID): the key that makes webhook deliveries idempotent
    /// ([`super::webhook::delivery_id`]).
    pub event_id: String,
    /// When it happened (the service clock; set by `Service::emit`).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: time::OffsetDateTime,
    /// Why, for the event types that have reasons (`Connection Expired`: `token_expired`,
    /// `grant_refused`, `client_rejected`, `scopes_missing`, `credentials_rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub org: OrgId,
    pub customer: Option<CustomerId>,
    pub connection_id: ConnectionId,
    pub definition: DefinitionKey,
    pub status: Status,
    /// The end user whose own connection it is, when it is one (never a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// The connection's tags (`{}` when it has none): labels, never a secret, so that rules can
    /// route events by them.
    pub tags: BTreeMap<String, String>,
    /// `Refresh Token Expiring` only: when the refresh token lapses (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<time::OffsetDateTime>,
    /// The connect page's context of a connection it created: flat members `instance_id`,
    /// `instance_name`, `integration_id`, `integration_name`, `config_variable_key`,
    /// `config_variable_name`, each only when set.
    #[serde(flatten)]
    pub context: ConnectContext,
}

impl Event {
    pub fn about(kind: EventType, c: &Connection) -> Self {
        Self {
            kind,
            event_id: ulid::Ulid::new().to_string(),
            occurred_at: time::OffsetDateTime::now_utc(),
            reason: None,
            org: c.org.clone(),
            customer: c.customer.clone(),
            connection_id: c.id.clone(),
            definition: c.definition.clone(),
            status: c.status,
            user: c.user.clone(),
            tags: c.tags.clone(),
            refresh_token_expires_at: matches!(kind, EventType::RefreshTokenExpiring)
                .then(|| c.oauth.as_ref().and_then(|t| t.refresh_token_expires_at))
                .flatten(),
            context: c.connect_context.clone().unwrap_or_default(),
        }
    }
}

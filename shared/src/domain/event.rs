use std::collections::BTreeMap;

use serde::Serialize;

use super::{ConnectContext, Connection, ConnectionId, CustomerId, DefinitionKey, OrgId, Status, UserId, WebhookId};

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
    /// The connection turned red for good: it needs a new authorization (or new values) before
    /// it works again. Detail `reason` ([`ExpiredReason`]). Emitted beside `Connection Error`.
    #[serde(rename = "Connection Expired")]
    ConnectionExpired,
    /// A refresh succeeded after one or more failed tries (the connection had been retrying or
    /// red and is `active` again). Emitted after `Token Refreshed`.
    #[serde(rename = "Refresh Recovered")]
    RefreshRecovered,
    /// A webhook endpoint was disabled (organization-level: detail `webhook_id` and `reason`,
    /// no connection members).
    #[serde(rename = "Webhook Disabled")]
    WebhookDisabled,
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
            Self::ConnectionExpired => "Connection Expired",
            Self::RefreshRecovered => "Refresh Recovered",
            Self::WebhookDisabled => "Webhook Disabled",
        }
    }

    /// Every event type, in the order the README lists them.
    pub const ALL: [EventType; 13] = [
        Self::ConnectionCreated,
        Self::ConnectionUpdated,
        Self::ConnectionAuthorized,
        Self::ConnectionReconnected,
        Self::TokenRefreshed,
        Self::TokenRefreshFailed,
        Self::RefreshRecovered,
        Self::RefreshTokenExpiring,
        Self::ConnectionError,
        Self::ConnectionExpired,
        Self::ConnectionDisconnected,
        Self::ConnectionDeleted,
        Self::WebhookDisabled,
    ];

    /// The type whose `detail-type` this is (`None` for an unknown one).
    pub fn from_detail_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.detail_type() == name)
    }
}

/// Why a connection turned red for good (`Connection Expired`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredReason {
    /// The access token lapsed and there is no way to get another (no refresh token, or the
    /// refresh token's own lifetime is over).
    TokenExpired,
    /// The provider refused the refresh token or assertion (`invalid_grant`: revoked, rotated
    /// elsewhere, expired).
    GrantRefused,
    /// The provider refused the client itself (`invalid_client`, `unauthorized_client`).
    ClientRejected,
    /// The provider granted fewer scopes than the definition requires (`invalid_scope`, or an
    /// answer missing a required scope).
    ScopesMissing,
    /// The provider refused the stored values (a verify request answered 401/403, or a report
    /// from the caller).
    CredentialsRejected,
}

impl ExpiredReason {
    /// The reason a connection red with error class `code` expired: `grant_refused` and
    /// `reauthorization_required` (the grant is bound to a token endpoint that has since changed)
    /// are [`Self::GrantRefused`]; `reported` (the caller's `report_error`: the provider refused
    /// the credentials when used) and `credentials_rejected` are [`Self::CredentialsRejected`];
    /// `client_rejected`, `scopes_missing` and `token_expired` are themselves. `None` for a
    /// class that is no expiry (`access_denied`: a device authorization the user denied).
    pub fn of_code(code: &str) -> Option<Self> {
        Some(match code {
            "token_expired" => Self::TokenExpired,
            "grant_refused" | "reauthorization_required" => Self::GrantRefused,
            "client_rejected" => Self::ClientRejected,
            "scopes_missing" => Self::ScopesMissing,
            "credentials_rejected" | "reported" => Self::CredentialsRejected,
            _ => return None,
        })
    }

    /// The `reason` member's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenExpired => "token_expired",
            Self::GrantRefused => "grant_refused",
            Self::ClientRejected => "client_rejected",
            Self::ScopesMissing => "scopes_missing",
            Self::CredentialsRejected => "credentials_rejected",
        }
    }
}

/// An event: identifiers and status only, by construction never a secret.
///
/// Its JSON is the EventBridge `detail` (and the webhook body's `data`): `event_id`,
/// `occurred_at`, `reason` (when there is one), `org`, then the connection's members
/// ([`EventConnection`], flat) for connection events, or `webhook_id` for `Webhook Disabled`.
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
    /// `grant_refused`, `client_rejected`, `scopes_missing`, `credentials_rejected`;
    /// `Token Refresh Failed` and `Connection Error` where the cause is known; `Webhook
    /// Disabled`: `deliveries_failing`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub org: OrgId,
    /// The connection it is about (every type but `Webhook Disabled`), flattened into the detail.
    #[serde(flatten)]
    pub connection: Option<EventConnection>,
    /// `Webhook Disabled` only: the endpoint that was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<WebhookId>,
}

/// The connection members of a connection event's detail.
#[derive(Debug, Clone, Serialize)]
pub struct EventConnection {
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
    fn new(kind: EventType, org: &OrgId) -> Self {
        Self {
            kind,
            event_id: ulid::Ulid::new().to_string(),
            occurred_at: time::OffsetDateTime::now_utc(),
            reason: None,
            org: org.clone(),
            connection: None,
            webhook_id: None,
        }
    }

    /// An event about connection `c` as it is now. `Connection Error`'s `reason` is the
    /// connection's error class (`grant_refused`, `reported`...) when it has one.
    pub fn about(kind: EventType, c: &Connection) -> Self {
        let reason =
            matches!(kind, EventType::ConnectionError).then(|| c.error.as_ref().map(|e| e.code.clone())).flatten();
        Self {
            reason,
            connection: Some(EventConnection {
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
            }),
            ..Self::new(kind, &c.org)
        }
    }

    /// `Connection Expired` about `c` (already red), with its reason.
    pub fn expired(c: &Connection, reason: ExpiredReason) -> Self {
        Self::about(EventType::ConnectionExpired, c).with_reason(reason.as_str())
    }

    /// `Webhook Disabled`: organization `org`'s endpoint `webhook` was disabled for `reason`
    /// (`deliveries_failing`). Detail `{event_id, occurred_at, org, webhook_id, reason}`.
    pub fn webhook_disabled(org: &OrgId, webhook: &WebhookId, reason: &str) -> Self {
        Self { webhook_id: Some(webhook.clone()), ..Self::new(EventType::WebhookDisabled, org) }.with_reason(reason)
    }

    /// The same event with `reason` set.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The connection it is about (`None` for organization-level events).
    pub fn connection_id(&self) -> Option<&ConnectionId> {
        self.connection.as_ref().map(|c| &c.connection_id)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_connection_event_keeps_its_flat_detail() {
        let org = OrgId::parse("acme").unwrap();
        let c = crate::conformance::connection(&crate::conformance::definition(&org, "acme"), "c-1");
        let detail = serde_json::to_value(Event::expired(&c, ExpiredReason::GrantRefused)).unwrap();
        let mut keys: Vec<&str> = detail.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["connection_id", "customer", "definition", "event_id", "occurred_at", "org", "reason", "status", "tags"]
        );
        assert_eq!((&detail["reason"], &detail["connection_id"]), (&json!("grant_refused"), &json!(c.id.as_str())));
    }

    #[test]
    fn webhook_disabled_is_organization_level() {
        let org = OrgId::parse("acme").unwrap();
        let hook = WebhookId::parse("ops").unwrap();
        let event = Event::webhook_disabled(&org, &hook, "deliveries_failing");
        assert_eq!(event.connection_id(), None);
        let detail = serde_json::to_value(&event).unwrap();
        let mut keys: Vec<&str> = detail.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["event_id", "occurred_at", "org", "reason", "webhook_id"]);
        assert_eq!((&detail["webhook_id"], &detail["reason"]), (&json!("ops"), &json!("deliveries_failing")));
    }

    #[test]
    fn expiry_reasons_are_the_refusal_classes_and_credential_rejections() {
        use crate::domain::Refusal;
        let of = |code: &str| ExpiredReason::of_code(code).map(ExpiredReason::as_str);
        for class in [Refusal::TokenExpired, Refusal::GrantRefused, Refusal::ClientRejected, Refusal::ScopesMissing] {
            assert_eq!(of(class.code()), Some(class.code()));
        }
        assert_eq!(of(Refusal::ReauthorizationRequired.code()), Some("grant_refused"));
        assert_eq!(of(crate::service::CREDENTIALS_REJECTED), Some("credentials_rejected"));
        assert_eq!(of("reported"), Some("credentials_rejected"));
        assert_eq!(of("access_denied"), None, "a denied first authorization is no expiry");
    }

    #[test]
    fn every_type_round_trips_through_its_detail_type() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_detail_type(t.detail_type()).map(EventType::detail_type), Some(t.detail_type()));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.detail_type()));
        }
        assert!(EventType::from_detail_type("Connection Exploded").is_none());
    }
}

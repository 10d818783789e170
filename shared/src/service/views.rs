//! What reads return. Secrets never get here: a set `password` shows as `{"set": true}`.

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, Input, InstanceId, OAuthQuirks,
    Principal, Redirects, Scope, Status, StatusError,
};

fn is_default_quirks(q: &OAuthQuirks) -> bool {
    *q == OAuthQuirks::default()
}

fn set_marker() -> Value {
    json!({"set": true})
}

#[derive(Debug, Serialize)]
pub struct DefinitionView {
    pub key: DefinitionKey,
    pub label: String,
    pub description: Option<String>,
    pub auth: AuthKind,
    pub provider: Option<String>,
    pub inputs: IndexMap<String, Input>,
    pub redirects: Option<Redirects>,
    /// The definition's own quirks block, as the organization sent it.
    #[serde(skip_serializing_if = "is_default_quirks")]
    pub oauth: OAuthQuirks,
    /// The definition's `verify` request (SPEC section 10), templates unrendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<crate::domain::Verify>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<&Definition> for DefinitionView {
    fn from(d: &Definition) -> Self {
        let mut inputs = d.inputs.clone();
        for name in &d.secret_default_names {
            if let Some(i) = inputs.get_mut(name) {
                i.default = Some(set_marker());
            }
        }
        Self {
            key: d.key.clone(),
            label: d.label.clone(),
            description: d.description.clone(),
            auth: d.auth,
            provider: d.provider.clone(),
            inputs,
            redirects: d.redirects.clone(),
            oauth: d.oauth.clone(),
            verify: d.verify.clone(),
            version: d.version,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub id: ConnectionId,
    pub definition: DefinitionKey,
    pub scope: Scope,
    pub customer: Option<CustomerId>,
    pub instance_id: Option<InstanceId>,
    /// The end user whose own connection it is (`null` for none).
    pub user: Option<crate::domain::UserId>,
    pub label: Option<String>,
    pub status: Status,
    pub error: Option<StatusError>,
    pub values: Map<String, Value>,
    /// The connection's tags (`{}` when none).
    pub tags: std::collections::BTreeMap<String, String>,
    /// When the connection's refresh token lapses (SPEC section 10); `null` without a refresh
    /// token or when its lifetime is unknown.
    #[serde(with = "time::serde::rfc3339::option")]
    pub refresh_token_expires_at: Option<OffsetDateTime>,
    /// What the connect session that created it named (instance, integration, config
    /// variable); absent for other connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_context: Option<crate::domain::ConnectContext>,
    /// An `oauth2_device_code` connection's device authorization in progress (RFC 8628): the
    /// user code, where to enter it, when it lapses and the poll interval in seconds, as
    /// authorize answered them (the device code itself stays sealed, never shown). Absent
    /// when none is in progress: never started, approved, denied, disconnected, or lapsed (the
    /// connection then stays `pending` and its log has an `authorize_failed` line saying the
    /// code expired; authorizing again shows a new code).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<super::DeviceAuthorizeResponse>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl ConnectionView {
    /// The view of `c` for `p`, judged by the definition's current `inputs`: a customer sees
    /// only `customer`-visible inputs, and an input that is a `password` now shows as set even
    /// if its value was stored before the input became one. App settings the connection reads
    /// from the definition show the definition's current value.
    pub fn of(c: &Connection, p: &Principal, def: &Definition) -> Self {
        let inputs = &def.inputs;
        let input = |name: &str| inputs.get(name).filter(|i| p.is_organization() || i.visibility.customer_can_see());
        let mut values = Map::new();
        for (k, v) in &c.values {
            match input(k) {
                Some(i) if i.kind.is_secret() => values.insert(k.clone(), set_marker()),
                Some(_) => values.insert(k.clone(), v.clone()),
                None => None,
            };
        }
        for k in c.secret_names.iter().filter(|k| input(k).is_some()) {
            values.insert(k.clone(), set_marker());
        }
        for (k, i) in inputs.iter().filter(|(k, _)| def.by_reference(k) && input(k).is_some()) {
            if values.contains_key(k) {
                continue;
            }
            if def.secret_default_names.contains(k) {
                values.insert(k.clone(), set_marker());
            } else if let Some(d) = &i.default {
                values.insert(k.clone(), d.clone());
            }
        }
        Self {
            id: c.id.clone(),
            definition: c.definition.clone(),
            scope: c.scope,
            customer: c.customer.clone(),
            instance_id: c.instance_id.clone(),
            user: c.user.clone(),
            label: c.label.clone(),
            status: c.status,
            error: c.error.clone(),
            values,
            tags: c.tags.clone(),
            refresh_token_expires_at: c
                .oauth
                .as_ref()
                .filter(|t| t.has_refresh_token)
                .and_then(|t| t.refresh_token_expires_at),
            connect_context: c.connect_context.clone(),
            device: c.device.as_ref().map(super::DeviceAuthorizeResponse::from),
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// What a device authorization in progress shows: everything but the sealed device code.
impl From<&crate::domain::DeviceAuthorization> for super::DeviceAuthorizeResponse {
    fn from(d: &crate::domain::DeviceAuthorization) -> Self {
        Self {
            user_code: d.user_code.clone(),
            verification_uri: d.verification_uri.clone(),
            verification_uri_complete: d.verification_uri_complete.clone(),
            expires_at: d.expires_at,
            interval: d.interval_secs,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectionPage {
    pub items: Vec<ConnectionView>,
    pub next_cursor: Option<String>,
}

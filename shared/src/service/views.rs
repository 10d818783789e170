//! What reads return. Secrets never get here: a set `password` shows as `{"set": true}`.

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, Definition, DefinitionKey, Input, InstanceId, Principal, Redirects,
    Scope, Status, StatusError,
};

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
    pub label: Option<String>,
    pub status: Status,
    pub error: Option<StatusError>,
    pub values: Map<String, Value>,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl ConnectionView {
    /// The view for `p`. A customer sees only `customer`-visible inputs, so `inputs` (the
    /// definition's) is needed for customers; organization users see every value.
    pub fn of(c: &Connection, p: &Principal, inputs: Option<&IndexMap<String, Input>>) -> Self {
        let shown = |name: &str| {
            p.is_organization() || inputs.and_then(|i| i.get(name)).is_some_and(|i| i.visibility.customer_can_see())
        };
        let mut values = Map::new();
        for (k, v) in c.values.iter().filter(|(k, _)| shown(k)) {
            values.insert(k.clone(), v.clone());
        }
        for k in c.secret_names.iter().filter(|k| shown(k)) {
            values.insert(k.clone(), set_marker());
        }
        Self {
            id: c.id.clone(),
            definition: c.definition.clone(),
            scope: c.scope,
            customer: c.customer.clone(),
            instance_id: c.instance_id.clone(),
            label: c.label.clone(),
            status: c.status,
            error: c.error.clone(),
            values,
            version: c.version,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectionPage {
    pub items: Vec<ConnectionView>,
    pub next_cursor: Option<String>,
}

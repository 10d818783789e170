//! Lookup by selector (SPEC section 10): naming a connection by what an execution knows (the
//! definition, the customer, perhaps its instance and its end user) instead of its id.

use serde::Serialize;

/// Which connection a lookup means, resolved by Latchkey in this order: the instance's own
/// connection (scope `instance` with [`Selector::instance`]), then the end user's own
/// ([`Selector::user`]), then the customer's reusable one (scope `customer`), then the one the
/// organization activated for that customer (scope `organization`). The first that exists
/// answers, even when it is unusable (its error then says why: a broken connection is not
/// silently replaced); within one of these the oldest; `NotFound` when none.
///
/// ```
/// let s = latchkey_client::Selector::new("acme-api", "c-1").instance("inst-9").user("u-42");
/// assert_eq!(serde_json::to_value(&s).unwrap()["instance_id"], "inst-9");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selector {
    /// The definition's key (`acme-api`).
    pub definition: String,
    /// The customer; `None` with a runtime token bound to one customer (the token says which).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// The integration instance, whose own connection comes first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The customer's end user, whose own connection comes next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl Selector {
    /// The connections of `definition` for `customer`.
    pub fn new(definition: impl Into<String>, customer: impl Into<String>) -> Self {
        Self { definition: definition.into(), customer: Some(customer.into()), instance_id: None, user: None }
    }

    /// The connections of `definition` for the customer the caller's runtime token is bound to.
    pub fn own_customer(definition: impl Into<String>) -> Self {
        Self { definition: definition.into(), customer: None, instance_id: None, user: None }
    }

    /// Prefers the connection of this integration instance.
    pub fn instance(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// Prefers this end user's own connection (after the instance's).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The selector's members as a JSON object, to merge into a request body or payload.
    pub(crate) fn members(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            // A struct of strings always serializes to an object.
            _ => serde_json::Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_members_given_are_sent() {
        assert_eq!(
            serde_json::to_value(Selector::new("acme-api", "c-1")).unwrap(),
            json!({"definition": "acme-api", "customer": "c-1"})
        );
        assert_eq!(
            serde_json::to_value(Selector::own_customer("acme-api").instance("inst-9").user("u-42")).unwrap(),
            json!({"definition": "acme-api", "instance_id": "inst-9", "user": "u-42"})
        );
    }
}

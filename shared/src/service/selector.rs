//! Lookup by selector (SPEC section 10): the connection a lookup names by `{"definition",
//! "customer", "instance_id"?, "user"?}` instead of `connection_id`, resolved in the order of
//! [`crate::domain::Selector`]; and the optional `user` a connection is created with.

use serde_json::{Map, Value};

use super::lookup::LookupRequest;
use super::{Result, Service, ServiceError};
use crate::domain::{
    Connection, ConnectionId, CustomerId, DefinitionKey, FieldError, InstanceId, OrgId, Selector, UserId,
};

/// The `user` of `POST /v1/connections`: an end user of the connection's customer, so only with
/// a customer. Problems go to `errors`.
pub(super) fn user_of(
    obj: &Map<String, Value>,
    customer: Option<&CustomerId>,
    errors: &mut Vec<FieldError>,
) -> Option<UserId> {
    let user = match obj.get("user") {
        None | Some(Value::Null) => return None,
        Some(Value::String(s)) => match UserId::parse(s) {
            Ok(u) => u,
            Err(e) => {
                errors.push(FieldError::new("user", e.to_string()));
                return None;
            }
        },
        Some(_) => {
            errors.push(FieldError::new("user", "must be a string"));
            return None;
        }
    };
    if customer.is_none() {
        errors.push(FieldError::new("user", "is an end user of a customer: name the customer too"));
    }
    Some(user)
}

impl LookupRequest {
    /// Whether the request names a connection by selector (any of its members is present).
    pub fn names_selector(&self) -> bool {
        self.definition.is_some() || self.customer.is_some() || self.instance_id.is_some() || self.user.is_some()
    }

    /// The selector the request names, for a caller restricted to `own` customer if any.
    ///
    /// # Errors
    /// `Invalid` naming each malformed or missing member (`customer` may be left out when the
    /// caller's token names one); `NotFound` when it names a customer other than the caller's
    /// own (never a 403: another customer's connections do not exist for this caller).
    fn selector(&self, own: Option<&CustomerId>) -> Result<Selector> {
        let mut errors = Vec::new();
        fn parse<T>(
            v: Option<&str>,
            field: &str,
            f: fn(&str) -> std::result::Result<T, crate::domain::IdError>,
            errors: &mut Vec<FieldError>,
        ) -> Option<T> {
            f(v?).map_err(|e| errors.push(FieldError::new(field, e.to_string()))).ok()
        }
        let definition = parse(self.definition.as_deref(), "definition", DefinitionKey::parse, &mut errors);
        if self.definition.is_none() {
            errors.push(FieldError::new("definition", "is required with a selector"));
        }
        let named = parse(self.customer.as_deref(), "customer", CustomerId::parse, &mut errors);
        if self.customer.is_none() && own.is_none() {
            errors.push(FieldError::new("customer", "is required with a selector"));
        }
        let instance_id = parse(self.instance_id.as_deref(), "instance_id", InstanceId::parse, &mut errors);
        let user = parse(self.user.as_deref(), "user", UserId::parse, &mut errors);
        if !errors.is_empty() {
            return Err(ServiceError::Invalid(errors));
        }
        let customer = match (named, own) {
            (Some(named), Some(own)) if &named != own => return Err(ServiceError::NotFound),
            (Some(named), _) => named,
            (None, Some(own)) => own.clone(),
            (None, None) => return Err(ServiceError::invalid("customer", "is required with a selector")),
        };
        let definition = definition.ok_or_else(|| ServiceError::invalid("definition", "is required"))?;
        Ok(Selector { definition, customer, instance_id, user })
    }
}

impl Service {
    /// The connection a lookup or an error report is about: by `connection_id` (one store read),
    /// or by selector (an index query, then one read of the connections it found). `customer` is the
    /// caller's own when its token is bound to one: nothing else is found.
    pub(super) async fn lookup_target(
        &self,
        org: &OrgId,
        customer: Option<&CustomerId>,
        req: &LookupRequest,
    ) -> Result<Connection> {
        match (req.connection_id.as_deref(), req.names_selector()) {
            (Some(_), true) => Err(ServiceError::invalid(
                "connection_id",
                "names the connection already: give it or a selector (definition, customer...), not both",
            )),
            (Some(id), false) => {
                let id = ConnectionId::parse(id).map_err(|_| ServiceError::NotFound)?;
                let c = self.store.get_connection(org, &id).await?.ok_or(ServiceError::NotFound)?;
                // A runtime principal bound to a customer sees only that customer's connections.
                if customer.is_some_and(|cu| c.customer.as_ref() != Some(cu)) {
                    return Err(ServiceError::NotFound);
                }
                Ok(c)
            }
            (None, true) => self.select(org, &req.selector(customer)?).await,
            (None, false) => {
                Err(ServiceError::invalid("connection_id", "is required (or a selector: definition and customer)"))
            }
        }
    }

    /// Resolves `selector` among `org`'s connections: the best ranked of the connections the
    /// store finds for it, as they are now ([`crate::ports::Store::find_for_selector`] reads them
    /// again after its index query); `NotFound` when none.
    async fn select(&self, org: &OrgId, selector: &Selector) -> Result<Connection> {
        let candidates = self.store.find_for_selector(org, &selector.definition, &selector.customer).await?;
        let chosen = selector.rank(candidates).into_iter().next().ok_or(ServiceError::NotFound)?;
        tracing::Span::current().record("connection_id", chosen.id.as_str());
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(v: Value) -> LookupRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_selector_needs_a_definition_and_a_customer_unless_the_token_names_it() {
        let own = CustomerId::parse("c-1").unwrap();
        let bare = request(serde_json::json!({"definition": "acme-api"}));
        assert!(matches!(bare.selector(None), Err(ServiceError::Invalid(e)) if e[0].field == "customer"));
        assert_eq!(bare.selector(Some(&own)).unwrap().customer, own);
        let other = request(serde_json::json!({"definition": "acme-api", "customer": "c-2"}));
        assert!(matches!(other.selector(Some(&own)), Err(ServiceError::NotFound)));
        let bad = request(serde_json::json!({"definition": "Acme", "customer": "c#1", "user": ""}));
        let Err(ServiceError::Invalid(errors)) = bad.selector(None) else { panic!("invalid") };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["definition", "customer", "user"]);
        let no_definition = request(serde_json::json!({"customer": "c-1"}));
        assert!(matches!(no_definition.selector(None), Err(ServiceError::Invalid(e)) if e[0].field == "definition"));
    }
}

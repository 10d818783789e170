//! Lookup by selector (SPEC section 10): which connection an execution means when it names a
//! definition and a customer (and perhaps its instance and its end user) instead of an id.
//!
//! The order, first tier that has a connection wins:
//! 1. [`Tier::Instance`]: scope `instance` with the selector's `instance_id`;
//! 2. [`Tier::User`]: a `customer` or `organization` scope connection carrying the selector's
//!    `user`;
//! 3. [`Tier::Customer`]: the customer's reusable one (scope `customer`, no `user`);
//! 4. [`Tier::Organization`]: the one the organization activated for that customer (scope
//!    `organization`, no `user`).
//!
//! Status plays no part: the first connection that exists answers, with its problem if it is
//! unusable (pending, disconnected, red), so that a broken connection is seen and fixed rather
//! than silently replaced by a reusable one with other credentials. Within a tier the oldest
//! connection (lowest id: ids sort by creation) answers, so a second connection never takes over
//! from the one executions already use; deleting the first moves them over.
//!
//! Never selected: another instance's connection, another user's, and an organization
//! connection without a customer (name those by id).

use super::{Connection, CustomerId, DefinitionKey, InstanceId, Scope, UserId};

/// What a lookup by selector names: `{"definition", "customer", "instance_id"?, "user"?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub definition: DefinitionKey,
    pub customer: CustomerId,
    pub instance_id: Option<InstanceId>,
    pub user: Option<UserId>,
}

/// Where a connection stands in the resolution order; earlier tiers win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Instance,
    User,
    Customer,
    Organization,
}

impl Selector {
    /// The tier of `c` for this selector, or `None` when this selector never selects `c`.
    pub fn tier(&self, c: &Connection) -> Option<Tier> {
        if c.definition != self.definition || c.customer.as_ref() != Some(&self.customer) {
            return None;
        }
        match (c.scope, &c.user) {
            (Scope::Instance, _) => {
                (self.instance_id.is_some() && c.instance_id == self.instance_id).then_some(Tier::Instance)
            }
            (Scope::Customer | Scope::Organization, Some(user)) => {
                (self.user.as_ref() == Some(user)).then_some(Tier::User)
            }
            (Scope::Customer, None) => Some(Tier::Customer),
            (Scope::Organization, None) => Some(Tier::Organization),
        }
    }

    /// The connections of `candidates` this selector selects, best first: by [`Tier`], then
    /// oldest first. The first is the answer ([`crate::ports::Store::find_for_selector`] gives
    /// the candidates as they are now).
    pub fn rank(&self, candidates: Vec<Connection>) -> Vec<Connection> {
        let mut ranked: Vec<(Tier, Connection)> =
            candidates.into_iter().filter_map(|c| self.tier(&c).map(|t| (t, c))).collect();
        ranked.sort_by(|(ta, a), (tb, b)| ta.cmp(tb).then_with(|| a.id.cmp(&b.id)));
        ranked.into_iter().map(|(_, c)| c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrgId, Status};

    fn conn(scope: Scope, instance: Option<&str>, user: Option<&str>) -> Connection {
        // Ids sort by creation: a short pause keeps the ULIDs of consecutive calls in order.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let def = crate::conformance::definition(&OrgId::parse("acme").unwrap(), "acme-api");
        let mut c = crate::conformance::connection(&def, "c-1");
        c.scope = scope;
        c.instance_id = instance.map(|i| InstanceId::parse(i).unwrap());
        c.user = user.map(|u| UserId::parse(u).unwrap());
        c
    }

    fn selector(instance: Option<&str>, user: Option<&str>) -> Selector {
        Selector {
            definition: DefinitionKey::parse("acme-api").unwrap(),
            customer: CustomerId::parse("c-1").unwrap(),
            instance_id: instance.map(|i| InstanceId::parse(i).unwrap()),
            user: user.map(|u| UserId::parse(u).unwrap()),
        }
    }

    fn ids(v: &[Connection]) -> Vec<&str> {
        v.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn instance_then_user_then_customer_then_organization() {
        let organization = conn(Scope::Organization, None, None);
        let customer = conn(Scope::Customer, None, None);
        let user = conn(Scope::Customer, None, Some("u-1"));
        let instance = conn(Scope::Instance, Some("inst-9"), None);
        let all = vec![organization.clone(), customer.clone(), user.clone(), instance.clone()];
        let full = selector(Some("inst-9"), Some("u-1"));
        assert_eq!(
            ids(&full.rank(all.clone())),
            ids(&[instance.clone(), user.clone(), customer.clone(), organization.clone()])
        );
        assert_eq!(full.tier(&instance), Some(Tier::Instance));
        // Each removed in turn: the next tier answers.
        assert_eq!(full.rank(all[..3].to_vec())[0].id, user.id);
        assert_eq!(full.rank(all[..2].to_vec())[0].id, customer.id);
        assert_eq!(full.rank(all[..1].to_vec())[0].id, organization.id);
        assert!(full.rank(Vec::new()).is_empty());
    }

    #[test]
    fn other_instances_other_users_and_other_definitions_are_never_selected() {
        let other_instance = conn(Scope::Instance, Some("inst-8"), None);
        let other_user = conn(Scope::Customer, None, Some("u-2"));
        let mut other_definition = conn(Scope::Customer, None, None);
        other_definition.definition = DefinitionKey::parse("other-api").unwrap();
        let mut other_customer = conn(Scope::Customer, None, None);
        other_customer.customer = Some(CustomerId::parse("c-2").unwrap());
        let mut org_wide = conn(Scope::Organization, None, None);
        org_wide.customer = None;
        let all = vec![other_instance.clone(), other_user, other_definition, other_customer, org_wide];
        assert!(selector(Some("inst-9"), Some("u-1")).rank(all.clone()).is_empty());
        // Without an instance, no instance connection; without a user, no user's connection.
        let instance = conn(Scope::Instance, Some("inst-9"), None);
        let user = conn(Scope::Customer, None, Some("u-1"));
        assert!(selector(None, None).rank(vec![instance, user]).is_empty());
        assert_eq!(selector(Some("inst-8"), None).tier(&other_instance), Some(Tier::Instance));
    }

    #[test]
    fn a_users_organization_connection_is_the_users_and_ties_go_to_the_oldest() {
        let org_for_user = conn(Scope::Organization, None, Some("u-1"));
        assert_eq!(selector(None, Some("u-1")).tier(&org_for_user), Some(Tier::User));
        let first = conn(Scope::Customer, None, None);
        let second = conn(Scope::Customer, None, None);
        let ranked = selector(None, None).rank(vec![second.clone(), first.clone()]);
        assert_eq!(ids(&ranked), ids(&[first, second]));
    }

    #[test]
    fn events_name_the_user_of_a_users_connection() {
        use crate::domain::{Event, EventType};
        let user = conn(Scope::Customer, None, Some("u-1"));
        let detail = serde_json::to_value(Event::about(EventType::ConnectionCreated, &user)).unwrap();
        assert_eq!(detail["user"], "u-1");
        let customer = conn(Scope::Customer, None, None);
        let detail = serde_json::to_value(Event::about(EventType::ConnectionCreated, &customer)).unwrap();
        assert!(detail.get("user").is_none(), "no user member for a connection of no user: {detail}");
    }

    #[test]
    fn status_does_not_matter_a_broken_connection_still_answers() {
        let mut instance = conn(Scope::Instance, Some("inst-9"), None);
        instance.status = Status::Disconnected;
        let customer = conn(Scope::Customer, None, None);
        let ranked = selector(Some("inst-9"), None).rank(vec![customer, instance.clone()]);
        assert_eq!(ranked[0].id, instance.id);
    }
}

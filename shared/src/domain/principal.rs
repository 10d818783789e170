use super::{CustomerId, OrgId};

/// Who is calling, from a verified bearer token.
#[derive(Debug)]
pub struct Principal {
    pub org: OrgId,
    /// Present for a customer user; absent for an organization user.
    pub customer: Option<CustomerId>,
    pub roles: Vec<String>,
}

/// The role that grants token lookup over HTTP.
pub const RUNTIME_ROLE: &str = "runtime";

impl Principal {
    pub fn organization(org: OrgId) -> Self {
        Self { org, customer: None, roles: Vec::new() }
    }

    pub fn is_organization(&self) -> bool {
        self.customer.is_none()
    }

    pub fn is_runtime(&self) -> bool {
        self.roles.iter().any(|r| r == RUNTIME_ROLE)
    }
}

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdError(&'static str);

/// Tenant identifiers (org, customer, instance) share one alphabet: they come from JWT claims
/// and request bodies and end up in store keys, so they must not contain separators like `#`.
fn tenant_id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates the identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                Self::parse_owned(s.to_owned())
            }

            /// [`Self::parse`] of a string already owned, kept as it is (no copy).
            fn parse_owned(s: String) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok(Self(s)) } else { Err(IdError($msg)) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse_owned(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// An organization: the SaaS company using Latchkey. Every record lives under one.
    OrgId,
    tenant_id_ok,
    "must be 1-128 characters of letters, digits and - _ . : @"
);
string_id!(
    /// A customer of the organization.
    CustomerId,
    tenant_id_ok,
    "must be 1-128 characters of letters, digits and - _ . : @"
);
string_id!(
    /// An integration instance a connection of scope `instance` belongs to.
    InstanceId,
    tenant_id_ok,
    "must be 1-128 characters of letters, digits and - _ . : @"
);
string_id!(
    /// An end user of a customer (a runtime user) whose own connection a lookup by selector
    /// finds (SPEC section 10). Chosen by the organization, like customer ids.
    UserId,
    tenant_id_ok,
    "must be 1-128 characters of letters, digits and - _ . : @"
);
string_id!(
    /// The key of a connection definition, chosen by the organization (`acme-api`).
    DefinitionKey,
    |s| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.'))
    },
    "must be 1-64 characters of lowercase letters, digits and - _ . starting with a letter or digit"
);
string_id!(
    /// A connection: `con_` followed by a ULID, so ids sort by creation time.
    ConnectionId,
    |s| s
        .strip_prefix("con_")
        .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| b.is_ascii_alphanumeric())),
    "must be a connection id (con_ followed by 26 characters)"
);

impl ConnectionId {
    /// A new, random, time-ordered id.
    pub fn generate() -> Self {
        Self(format!("con_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_round_trip_and_sort_by_creation() {
        let a = ConnectionId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ConnectionId::generate();
        assert_eq!(ConnectionId::parse(a.as_str()).unwrap(), a);
        assert!(a < b);
    }

    #[test]
    fn identifiers_reject_separators_and_empty_strings() {
        assert!(OrgId::parse("").is_err());
        assert!(OrgId::parse("acme#1").is_err());
        assert!(CustomerId::parse(&"c".repeat(129)).is_err());
        assert!(DefinitionKey::parse("Acme").is_err());
        assert!(DefinitionKey::parse("-acme").is_err());
        assert!(DefinitionKey::parse("acme-api.v2").is_ok());
        assert!(ConnectionId::parse("con_123").is_err());
    }
}
string_id!(
    /// A webhook endpoint of an organization, chosen by it (`PUT /v1/webhooks/{id}`, SPEC
    /// section 11).
    WebhookId,
    tenant_id_ok,
    "must be 1-128 characters of letters, digits and - _ . : @"
);

//! The domain: identifiers, definitions, connections, logs and events. Pure data and rules.

pub mod connect;
mod connection;
mod definition;
mod device;
mod event;
pub mod idempotency;
mod ids;
mod log;
mod oauth;
mod principal;
mod provider;
mod sealed;
mod selector;
pub mod tags;
pub mod validate;
mod verify;
mod webhook;

pub use connect::{ConnectContext, ConnectSession};
pub use connection::{
    BrowserBinding, Connection, Lease, OAuthState, OAuthTokens, RefreshState, RevocationJob, Scope, Status,
    StatusError, due_second,
};
pub use definition::{AuthKind, Definition, Input, InputType, OAUTH_APP_SETTINGS, Redirects, Visibility};
pub use device::DeviceAuthorization;
pub use event::{Event, EventConnection, EventType, ExpiredReason};
pub use idempotency::{IdempotencyKey, IdempotencyRecord, StoredResponse};
pub use ids::{ConnectionId, CustomerId, DefinitionKey, IdError, InstanceId, OrgId, UserId, WebhookId};
pub use log::{LogEntry, LogType};
pub use oauth::{Capture, OAuthQuirks, RESERVED_TOKEN_PARAMS, Refusal, origin_of, provider_code};
pub use principal::{Principal, RUNTIME_ROLE};
pub use provider::{ExpiresIn, Provider, ProviderInput, TokenResponse};
pub use sealed::Sealed;
pub use selector::{Selector, Tier};
pub use tags::{TagFilter, Tags};
pub use validate::FieldError;
pub(crate) use verify::percent_encode;
pub use verify::{
    ACCESS_TOKEN, RenderError, TemplateError, Verdict, Verify, VerifyMethod, VerifyRequest, VerifyState,
    verify_from_json,
};
pub use webhook::{DeliveryAttempt, DeliveryStatus, Webhook, WebhookDelivery, WebhookSecrets, delivery_id};

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use strum::VariantNames;

    use super::*;

    /// Every name strum parses and prints is the one serde reads and writes (stored records,
    /// API bodies), and back.
    fn same_names<T>()
    where
        T: VariantNames + std::str::FromStr + Into<&'static str> + Serialize + DeserializeOwned + Copy,
    {
        for name in T::VARIANTS {
            let parsed: T = name.parse().ok().unwrap_or_else(|| panic!("{name} parses"));
            assert_eq!(serde_json::to_value(parsed).unwrap(), *name);
            let read: T = serde_json::from_value(serde_json::Value::from(*name)).unwrap();
            assert_eq!(Into::<&'static str>::into(read), *name);
        }
    }

    #[test]
    fn string_tables_agree_with_serde() {
        same_names::<Scope>();
        same_names::<Status>();
        same_names::<AuthKind>();
        same_names::<InputType>();
        same_names::<Visibility>();
        assert_eq!(AuthKind::VARIANTS.len(), 8);
        assert_eq!(Refusal::ReauthorizationRequired.code(), "reauthorization_required");
        assert_eq!(Status::parse("nope"), None);
    }
}

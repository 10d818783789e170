//! The domain: identifiers, definitions, connections, logs and events. Pure data and rules.

mod connection;
mod definition;
mod event;
mod ids;
mod log;
mod oauth;
mod principal;
mod provider;
mod sealed;
pub mod validate;

pub use connection::{
    Connection, Lease, OAuthState, OAuthTokens, RefreshState, RevocationJob, Scope, Status, StatusError,
};
pub use definition::{AuthKind, Definition, Input, InputType, OAUTH_APP_SETTINGS, Redirects, Visibility};
pub use event::{Event, EventType};
pub use ids::{ConnectionId, CustomerId, DefinitionKey, IdError, InstanceId, OrgId};
pub use log::{LogEntry, LogType};
pub use oauth::{Capture, OAuthQuirks, RESERVED_TOKEN_PARAMS, Refusal, origin_of, provider_code};
pub use principal::Principal;
pub use provider::{ExpiresIn, Provider, TokenResponse};
pub use sealed::Sealed;
pub use validate::FieldError;

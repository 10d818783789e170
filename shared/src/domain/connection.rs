use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strum::{EnumString, IntoStaticStr, VariantNames};
use time::OffsetDateTime;

use super::{AuthKind, ConnectionId, CustomerId, DefinitionKey, InstanceId, OrgId, Sealed, UserId, VerifyState};

/// Whose connection it is and who manages it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumString, IntoStaticStr, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Scope {
    /// Belongs to one integration instance (`instance_id`).
    Instance,
    /// Reusable across a customer's integrations, activated by the customer.
    Customer,
    /// Reusable, activated and managed by the organization on a customer's behalf.
    Organization,
}

impl Scope {
    /// The scope named `s` (`instance`, `customer`, `organization`).
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The lifecycle of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumString, IntoStaticStr, VariantNames)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Status {
    /// OAuth not yet authorized.
    Pending,
    /// Has credentials, never used (yellow).
    Configured,
    /// Used successfully (green).
    Active,
    /// Broken (red); see [`Connection::error`].
    Error,
    Disconnected,
}

impl Status {
    /// The status named `s` (`pending`, `configured`, `active`, `error`, `disconnected`).
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// Its name, as stored, filtered on and serialized.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a connection is red.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusError {
    /// Latchkey's class (`grant_refused`, `client_rejected`, `reported`...).
    pub code: String,
    /// The provider's own code (`invalid_grant`, `bad_refresh_token`), reduced to
    /// `[A-Za-z0-9_.-]{1,64}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<String>,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A connection's OAuth tokens: the tokens themselves sealed as one JSON object
/// (`{"access_token", "refresh_token"?}`), their metadata in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokens {
    pub sealed: Sealed,
    pub token_type: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub has_refresh_token: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub obtained_at: OffsetDateTime,
    /// The origin (`https://host:port`) of the token endpoint the grant was obtained from:
    /// refreshes go there and nowhere else (SPEC section 8). Required: a stored record without
    /// it does not read (the store's error), so no grant is ever unbound.
    pub token_origin: String,
    /// The origin of the revocation endpoint when the grant was obtained, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_origin: Option<String>,
    /// When the refresh token lapses (SPEC section 10): from the answer's
    /// `refresh_token_expires_in` or the definition's `oauth.refresh_token_lifetime_secs`, set
    /// when the refresh token was issued and kept with it. `None`: no refresh token, or no known
    /// lifetime.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<OffsetDateTime>,
}

/// A worker's claim to refresh a connection: whoever holds an unexpired lease is the only one
/// calling the provider. Written with the connection's version check, so two cannot both take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// Refresh bookkeeping of an OAuth connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshState {
    /// When the sweep should refresh next; `None` keeps the connection out of the due index
    /// (no refresh token, red, disconnected).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    /// Transient failures since the last success (drives the backoff).
    #[serde(default)]
    pub failures: u32,
    /// Attempts on `day` (days since the Unix epoch), to cap retries per day.
    #[serde(default)]
    pub attempts_today: u32,
    #[serde(default)]
    pub day: i64,
    #[serde(default)]
    pub lease: Option<Lease>,
    /// When `Refresh Token Expiring` is due (`LATCHKEY_RT_WARNING_DAYS` before
    /// [`OAuthTokens::refresh_token_expires_at`]): armed when a refresh token with a known
    /// lifetime is stored, `None` once the event fired (so it fires once per refresh token) or
    /// when there is nothing to warn about.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub rt_warn_at: Option<OffsetDateTime>,
}

/// Tokens to revoke at the provider after a disconnect or delete (RFC 7009). It holds the
/// sealed tokens and the sealed client settings it needs, so it outlives the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationJob {
    /// Unique per job (a ULID): a connection authorized and disconnected twice has two.
    pub id: String,
    pub org: OrgId,
    pub connection_id: ConnectionId,
    pub definition: DefinitionKey,
    /// The connection's sealed tokens, as they were (sealed under the connection's context).
    pub tokens: Sealed,
    /// Sealed `{revoke_url, client_id, client_secret?, client_auth}` (same context).
    pub settings: Sealed,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// Dropped after this (store TTL), whatever happened.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A pending authorization: what the callback needs, stored under the SHA-256 of the `state`
/// (the state itself is never stored), single use, expiring after 10 minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthState {
    /// Hex SHA-256 of the state parameter.
    pub hash: String,
    pub org: OrgId,
    pub connection_id: ConnectionId,
    /// The PKCE verifier, sealed under the connection's context.
    pub verifier: Option<Sealed>,
    /// OAuth 1.0a (RFC 5849 section 2.1): the request token's secret, sealed under the
    /// connection's context, which signs the access token request. Such a pending
    /// authorization is stored under the SHA-256 of the request token (the callback carries
    /// `oauth_token`, no `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_token_secret: Option<Sealed>,
    pub redirect_uri: String,
    /// The issuer expected in an RFC 9207 `iss` parameter, when known.
    pub issuer: Option<String>,
    /// The connection's generation when the authorization began.
    #[serde(default)]
    pub generation: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Set when the authorization was started from the connect page: the callback then needs
    /// that page's session cookie (SPEC section 9), so a forwarded authorize link is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<BrowserBinding>,
}

/// The browser an authorization is bound to: the connect session whose cookie the callback
/// must carry, and the hex SHA-256 of that cookie's browser secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrowserBinding {
    /// The connect session's id.
    pub session: String,
    /// Hex SHA-256 of the session's browser secret.
    pub hash: String,
}

/// A customer's (or the organization's) credentials for one definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    pub id: ConnectionId,
    pub org: OrgId,
    pub customer: Option<CustomerId>,
    pub scope: Scope,
    pub instance_id: Option<InstanceId>,
    /// The end user of the customer whose own connection this is, if any: a lookup by
    /// selector naming this `user` finds it (SPEC section 10), one naming none never does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    pub definition: DefinitionKey,
    pub label: Option<String>,
    pub status: Status,
    pub error: Option<StatusError>,
    /// Values of the non-secret inputs.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Names of the secret (`password`) inputs that are set.
    pub secret_names: BTreeSet<String>,
    /// The sealed JSON object of secret values; `None` when no secret is set.
    pub secrets: Option<Sealed>,
    /// The definition's auth kind when the connection was created: lets a lookup know it
    /// needs no definition read (records from before it was kept have `None`).
    #[serde(default)]
    pub auth: Option<AuthKind>,
    /// OAuth 2.0 tokens, once authorized (or fetched, for client credentials).
    #[serde(default)]
    pub oauth: Option<OAuthTokens>,
    /// A device authorization in progress (`oauth2_device_code`, SPEC section 12): polled by the
    /// sweep when its `next_poll_at` comes (one of the times of [`Connection::due_index_at`]);
    /// gone once approved, denied, expired or disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<super::DeviceAuthorization>,
    /// Labels set by whoever manages the connection ([`super::tags`]): at most 20, shown in
    /// reads and events, filtered on by listings. Records from before tags have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Non-secret values captured when authorized (Salesforce `instance_url`, QuickBooks
    /// `realmId`), returned by lookups as fields.
    #[serde(default)]
    pub captured: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub refresh: RefreshState,
    /// Credential verification bookkeeping (SPEC section 10), for definitions with `verify`.
    #[serde(default)]
    pub verify: VerifyState,
    /// Incremented by each disconnect: authorizations and refreshes that began before one must
    /// not put tokens back.
    #[serde(default)]
    pub generation: u32,
    /// What the connect page that created it was for (instance, integration, config variable
    /// names and ids, SPEC section 9): carried to every event about it and shown in reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_context: Option<super::ConnectContext>,
    /// Incremented by every write; the store's optimistic-concurrency check.
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Connection {
    /// Whether a `PATCH` of its values brings a disconnected connection back: credentials that
    /// need no authorization.
    pub fn reconfigurable(&self) -> bool {
        !matches!(self.auth, Some(AuthKind::Oauth2AuthorizationCode | AuthKind::Oauth2DeviceCode | AuthKind::Oauth1))
    }
}

impl Connection {
    /// `self` turned red with `error`: out of the refresh index (a red connection is never
    /// refreshed until someone acts), version bumped. A lease stays with its holder, whose
    /// refresh then stores its tokens (a rotated refresh token is never lost) and keeps the red.
    pub fn turned_red(&self, error: StatusError) -> Connection {
        let mut red = self.clone();
        red.status = Status::Error;
        red.updated_at = error.at;
        red.error = Some(error);
        red.refresh = RefreshState {
            day: self.refresh.day,
            attempts_today: self.refresh.attempts_today,
            lease: self.refresh.lease.clone(),
            rt_warn_at: self.refresh.rt_warn_at,
            ..Default::default()
        };
        red.version = self.version + 1;
        red
    }

    /// Its time in the due index, which both stores derive on every write: the earliest of the
    /// refresh due time and the refresh token's warning and lapse times, and only while a
    /// refresh is scheduled (`refresh.due_at` set: red, disconnected and unrefreshable
    /// connections stay out), its next verification (`verify.due_at`, only while
    /// `configured` or `active`), and the next poll of a device authorization in progress
    /// (`device.next_poll_at`). The sweep tells which one came due.
    pub fn due_index_at(&self) -> Option<OffsetDateTime> {
        let refresh = self.refresh.due_at.map(|due| {
            let lapse = self.oauth.as_ref().and_then(|t| t.refresh_token_expires_at);
            [Some(due), self.refresh.rt_warn_at, lapse].into_iter().flatten().min().unwrap_or(due)
        });
        let verify = self.verify.due_at.filter(|_| matches!(self.status, Status::Configured | Status::Active));
        let device = self.device.as_ref().map(|d| d.next_poll_at);
        [refresh, verify, device].into_iter().flatten().min()
    }

    /// [`Connection::due_index_at`] as both stores key their due index: Unix seconds, rounded
    /// up ([`due_second`]).
    pub fn due_index_second(&self) -> Option<i64> {
        self.due_index_at().map(due_second)
    }
}

/// The whole Unix second a due index files `t` under: the first second at or after `t`. Rounded
/// up, so that a sweep reading the index up to its own `now` (rounded down) never finds an entry
/// before its time has come: it re-reads the record, which would not be due yet, and would pass
/// the entry by until its next run (a refresh, verification, warning or device poll a whole
/// sweep interval late). An entry comes out of the index up to a second late instead. (Entries
/// written before this rounding keep their rounded-down key until their record's next write.)
pub fn due_second(t: OffsetDateTime) -> i64 {
    t.unix_timestamp() + i64::from(t.nanosecond() > 0)
}

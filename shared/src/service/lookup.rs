//! Token lookup: fresh, decrypted credentials for integration executions (SPEC section 5).

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::retry::Races;
use super::{Result, Service, ServiceError, Unusable};
use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, DefinitionKey, LogType, OrgId, Refusal, Status, StatusError,
};
use crate::ports::StoreError;

/// A lookup or an error report, as the Lambda payload or the HTTP body carries it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    /// Only in the Lambda payload: HTTP takes it from the bearer token.
    #[serde(default)]
    pub org: Option<String>,
    /// The connection, by id; or leave it out and name it by selector (the four members below,
    /// SPEC section 10, resolved as [`crate::domain::Selector`] orders).
    #[serde(default)]
    pub connection_id: Option<String>,
    /// Selector: the definition key (`acme-api`).
    #[serde(default)]
    pub definition: Option<String>,
    /// Selector: the customer; may be left out when the caller's token names one.
    #[serde(default)]
    pub customer: Option<String>,
    /// Selector: the integration instance, whose own connection comes first.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Selector: the customer's end user, whose own connection comes next.
    #[serde(default)]
    pub user: Option<String>,
    /// Refresh first if the access token expires within this many seconds.
    #[serde(default)]
    pub min_valid_seconds: Option<u64>,
    /// `report_error` marks the connection red instead of looking it up.
    #[serde(default)]
    pub action: Option<String>,
    /// The error message of `report_error`.
    #[serde(default)]
    pub message: Option<String>,
    /// Only in the Lambda payload: the caller's runtime JWT, verified when the function runs
    /// with `LATCHKEY_LOOKUP_AUTH=token`, ignored otherwise (HTTP takes the bearer token).
    #[serde(default)]
    pub token: Option<SecretString>,
}

impl LookupRequest {
    /// The lookup a JSON payload or body holds, when it is one: a JSON object of these members
    /// (unknown members refused). `None` otherwise, an array included, which serde alone would
    /// read as the members in order. The caller says what was expected; serde's message could
    /// quote a value of the payload (the token).
    pub fn from_json(value: serde_json::Value) -> Option<Self> {
        Some(value).filter(serde_json::Value::is_object).and_then(|v| serde_json::from_value(v).ok())
    }
}

/// The decrypted values: serialized in clear for the caller, redacted in `Debug`.
pub struct Fields {
    plain: BTreeMap<String, serde_json::Value>,
    secret: BTreeMap<String, SecretString>,
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fields")
            .field("names", &self.plain.keys().chain(self.secret.keys()).collect::<Vec<_>>())
            .finish()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.plain.len() + self.secret.len()))?;
        for (k, v) in &self.plain {
            m.serialize_entry(k, v)?;
        }
        for (k, v) in &self.secret {
            m.serialize_entry(k, v.expose_secret())?;
        }
        m.end()
    }
}

/// An OAuth access token as a lookup hands it out.
#[derive(Serialize)]
pub struct TokenView {
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
}

fn expose<S: Serializer>(v: &SecretString, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.expose_secret())
}

impl fmt::Debug for TokenView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenView").field("token_type", &self.token_type).finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize)]
pub struct LookupResponse {
    pub connection_id: ConnectionId,
    pub definition: DefinitionKey,
    pub status: Status,
    pub fields: Fields,
    pub token: Option<TokenView>,
    /// `oauth1` connections: what an execution signs its requests with (SPEC section 12).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth1: Option<super::oauth::Oauth1Credentials>,
}

#[derive(Debug, Serialize)]
pub struct ReportedError {
    pub connection_id: ConnectionId,
    pub status: Status,
    pub error: StatusError,
}

const MAX_REPORT: usize = 1_000;

/// How a credential read reached Latchkey: what its audit line (SPEC section 11) names beside
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOrigin {
    pub channel: Channel,
    pub principal: PrincipalKind,
    /// The HTTP request's id (the `x-request-id` answered) or the Lambda invocation's
    /// `request_id`: the id the request's other log lines carry under `span.request_id`.
    pub request_id: String,
}

impl ReadOrigin {
    /// A read over HTTP by `principal` in request `request_id`.
    pub fn http(principal: PrincipalKind, request_id: impl Into<String>) -> Self {
        Self { channel: Channel::Http, principal, request_id: request_id.into() }
    }

    /// A read through the `token-lookup` function by `principal` in invocation `request_id`.
    pub fn lambda(principal: PrincipalKind, request_id: impl Into<String>) -> Self {
        Self { channel: Channel::Lambda, principal, request_id: request_id.into() }
    }
}

/// The way in of a credential read (the audit line's `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Channel {
    /// `POST /v1/connections/{id}/token` or `POST /v1/token`.
    Http,
    /// The `token-lookup` function.
    Lambda,
}

/// Who read (the audit line's `principal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum PrincipalKind {
    /// A runtime-role JWT of the organization (HTTP, or `token-lookup` with
    /// `LATCHKEY_LOOKUP_AUTH=token`).
    Runtime,
    /// A runtime-role JWT bound to one customer (its `customer` claim).
    CustomerRuntime,
    /// `token-lookup` with `LATCHKEY_LOOKUP_AUTH=iam`: whoever holds the invoke permission.
    Iam,
}

impl PrincipalKind {
    /// The kind of a verified runtime principal.
    pub fn of(p: &crate::domain::Principal) -> Self {
        if p.customer.is_some() { Self::CustomerRuntime } else { Self::Runtime }
    }

    /// The audit line's value: `runtime`, `customer_runtime` or `iam`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Channel {
    /// The audit line's value: `http` or `lambda`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The audit line of a credential read handed out: one `info` line, `audit =
/// "credentials_read"` with the organization, connection, its definition and customer, who read
/// and through what, and the request id. Identifiers only, never a value; a log line, not a
/// store write.
fn audit_read(c: &Connection, origin: &ReadOrigin) {
    tracing::info!(
        target: crate::telemetry::AUDIT_TARGET,
        audit = "credentials_read",
        org = %c.org,
        connection_id = %c.id,
        definition = %c.definition,
        customer = c.customer.as_ref().map(CustomerId::as_str),
        principal = origin.principal.as_str(),
        channel = origin.channel.as_str(),
        request_id = %origin.request_id,
        "credentials read"
    );
}

impl Service {
    /// Looks a connection up, by id or by selector: every value decrypted. A warm lookup of an
    /// active connection by id is one store read and no key-provider call (the data key is
    /// cached); by selector, an index query more; of an `oauth1` connection, a read of its
    /// definition more (the consumer settings it inherits). A lookup that hands credentials out writes
    /// the audit line (`audit = "credentials_read"`, naming `origin`); one that fails does not.
    pub async fn lookup(
        &self,
        org: &OrgId,
        customer: Option<&CustomerId>,
        req: &LookupRequest,
        origin: &ReadOrigin,
    ) -> Result<LookupResponse> {
        let c = self.lookup_target(org, customer, req).await?;
        if let Some(why) = Unusable::of(c.status) {
            return Err(ServiceError::Unusable(why));
        }
        // A lapsed refresh token (SPEC section 10): red `token_expired`, no provider call.
        // The paths that write or call a provider are boxed (here and below): their futures are
        // most of a lookup's, which every lookup would otherwise carry and copy
        // (docs/performance.md, "`opt-level = 3` for `latchkey serve`, and large futures").
        if let Some(at) = self.refresh_token_lapse(&c) {
            return Err(Box::pin(self.refresh_token_lapsed(c, at)).await);
        }
        let mut c = c;
        let mut token = None;
        let mut captured = BTreeMap::new();
        let mut oauth1 = None;
        let mut own_secrets = None;
        if c.auth == Some(AuthKind::Oauth1) {
            // Nothing expires and nothing refreshes: the stored token and secret, as they are.
            let opened = self.open_secrets(&c).await?;
            let (access_token, credentials) = self.oauth1_lookup(&c, &opened).await?;
            own_secrets = Some(opened);
            token = Some(TokenView {
                access_token: SecretString::from(access_token),
                token_type: super::oauth::OAUTH1_TOKEN_TYPE.to_owned(),
                expires_at: None,
                scopes: Vec::new(),
            });
            oauth1 = Some(credentials);
        }
        if c.auth.is_some_and(|a| a.is_oauth()) {
            let now = self.clock.now();
            let min_valid = time::Duration::seconds(req.min_valid_seconds.unwrap_or(0).min(86_400) as i64);
            let fresh = c.oauth.as_ref().is_some_and(|t| t.expires_at.is_none_or(|e| e > now + min_valid));
            if !fresh {
                c = Box::pin(self.fresh_for_lookup(c, min_valid)).await?;
                // Reported red while the refresh ran: the refresh stored its tokens (a rotated
                // refresh token is never lost) but the connection stays red and unusable.
                if c.status == Status::Error {
                    return Err(ServiceError::Unusable(Unusable::Error));
                }
            }
            let tokens = c.oauth.clone().ok_or(ServiceError::Unusable(Unusable::Pending))?;
            // Never hand out a token known to be dead (SPEC section 8): one that expired and
            // that nothing can renew turns the connection red.
            if tokens.expires_at.is_some_and(|e| e <= self.clock.now()) && !self.renewable(&c) {
                return Err(Box::pin(self.token_expired(c)).await);
            }
            let opened = self.open_tokens(&c).await?.ok_or(ServiceError::Unusable(Unusable::Pending))?;
            captured = opened.captured;
            token = Some(TokenView {
                access_token: SecretString::from(opened.access_token),
                token_type: tokens.token_type,
                expires_at: tokens
                    .expires_at
                    .and_then(|e| e.format(&time::format_description::well_known::Rfc3339).ok()),
                scopes: tokens.scopes,
            });
        }
        let mut secret = match own_secrets {
            Some(opened) => opened,
            None => self.open_secrets(&c).await?,
        };
        if token.is_some() {
            // The integration gets the access token, never the app's client secret.
            secret.remove("clientSecret");
        }
        if oauth1.is_some() {
            // The consumer's secrets are in the `oauth1` member, and only those its method uses.
            secret.remove(crate::domain::validate::CONSUMER_SECRET_INPUT);
            secret.remove(crate::domain::validate::PRIVATE_KEY_INPUT);
        }
        if c.auth == Some(AuthKind::Oauth2JwtBearer) {
            // Nor a service account's private key, wherever it is set (the definition or the
            // connection): it signs assertions for any token, so it stays inside Latchkey.
            secret.remove(crate::domain::validate::PRIVATE_KEY_INPUT);
        }
        let status = match c.status {
            Status::Configured => Box::pin(self.first_used(&c)).await?,
            status => status,
        };
        audit_read(&c, origin);
        // The connection is not used past here: its values move into the answer, uncopied.
        let mut plain = std::mem::take(&mut c.values);
        plain.extend(std::mem::take(&mut c.captured));
        plain.extend(captured);
        Ok(LookupResponse {
            connection_id: c.id,
            definition: c.definition,
            status,
            fields: Fields { plain, secret },
            token,
            oauth1,
        })
    }

    /// A `configured` connection's first lookup turns it `active` (and logs it): the status the
    /// answer reports, `configured` still where someone else changed the connection meanwhile
    /// (the credentials read are still the latest this caller could have seen, and the next
    /// lookup tries again).
    async fn first_used(&self, c: &Connection) -> Result<Status> {
        let mut used = c.clone();
        used.status = Status::Active;
        used.version += 1;
        used.updated_at = self.clock.now();
        match self.store.update_connection(&used, c.version).await {
            Ok(()) => {
                self.log(&used, LogType::Used, "first successful lookup: connection active").await;
                Ok(Status::Active)
            }
            Err(StoreError::Conflict) => Ok(c.status),
            Err(e) => Err(e.into()),
        }
    }

    /// `report_error`: the integration tells Latchkey the credentials failed; the connection
    /// (by id, or the one its selector resolves to) turns red until it is reconfigured.
    pub async fn report_error(
        &self,
        org: &OrgId,
        customer: Option<&CustomerId>,
        req: &LookupRequest,
    ) -> Result<ReportedError> {
        let message = match req.message.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() && m.chars().count() <= MAX_REPORT => m.to_owned(),
            Some(m) if !m.is_empty() => {
                return Err(ServiceError::invalid("message", &format!("must be at most {MAX_REPORT} characters")));
            }
            _ => return Err(ServiceError::invalid("message", "is required")),
        };
        let mut races = Races::default();
        loop {
            let c = self.lookup_target(org, customer, req).await?;
            // Only credentials that were handed out can have failed (a red connection's too).
            match Unusable::of(c.status) {
                Some(why @ (Unusable::Pending | Unusable::Disconnected)) => return Err(ServiceError::Unusable(why)),
                Some(Unusable::Error | Unusable::TokenExpired) | None => {}
            }
            // A connection Latchkey already knows to be red for a provider's reason keeps that
            // reason (and who must act); the report is logged beside it.
            if c.status == Status::Error
                && let Some(known) = c.error.clone().filter(|e| e.code != "reported")
            {
                self.log(&c, LogType::ErrorReported, format!("error reported: {message} (already {})", known.code))
                    .await;
                return Ok(ReportedError { connection_id: c.id, status: c.status, error: known });
            }
            let now = self.clock.now();
            let error =
                StatusError { code: "reported".to_owned(), provider_code: None, message: message.clone(), at: now };
            // Out of the due index too: the sweep never spends its page on it.
            let red = c.turned_red(error.clone());
            match self.store.update_connection(&red, c.version).await {
                Ok(()) => {
                    self.log(&red, LogType::ErrorReported, format!("error reported: {message}")).await;
                    // Reported again while red: the message is the latest, the events were sent.
                    if c.status != red.status {
                        self.announce_red(&red).await;
                    }
                    return Ok(ReportedError { connection_id: red.id, status: red.status, error });
                }
                Err(StoreError::Conflict) => races.lost()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether `c`'s access token can be renewed: by a refresh token, by client credentials or
    /// by a new JWT bearer assertion.
    pub(crate) fn renewable(&self, c: &Connection) -> bool {
        c.auth.is_some_and(AuthKind::grants_without_user) || c.oauth.as_ref().is_some_and(|t| t.has_refresh_token)
    }

    /// Turns `c` red `token_expired` (its token expired and nothing renews it) and returns the
    /// lookup's error.
    pub(crate) async fn token_expired(&self, c: Connection) -> ServiceError {
        let error = self.refusal_error(Refusal::TokenExpired, None, "");
        self.turn_red_expired(c, error).await
    }

    /// Turns `c` red with `error` (a `token_expired` state: an access token nothing renews, or
    /// a lapsed refresh token), logged and announced once, and returns the lookup's error, the
    /// `token-expired` problem. A connection renewed, reconfigured or already red meanwhile is
    /// left as the write that won made it.
    pub(crate) async fn turn_red_expired(&self, c: Connection, error: StatusError) -> ServiceError {
        let mut current = c;
        let mut races = Races::default();
        loop {
            let red = current.turned_red(error.clone());
            match self.store.update_connection(&red, current.version).await {
                Ok(()) => {
                    self.log(&red, LogType::RefreshFailed, format!("{}: {}", error.code, error.message)).await;
                    self.announce_red(&red).await;
                    break;
                }
                Err(StoreError::Conflict) if races.lost().is_ok() => {}
                Err(StoreError::Conflict) => break,
                Err(e) => return e.into(),
            }
            // Redone only on the same dead token.
            match self.store.get_connection(&current.org, &current.id).await {
                Ok(Some(latest)) if latest.status != Status::Error && latest.oauth == current.oauth => current = latest,
                _ => break,
            }
        }
        ServiceError::Unusable(Unusable::TokenExpired)
    }
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use super::*;
    use crate::service::ServiceOptions;

    /// A lookup's future carries only its warm path: the refresh, the paths that turn a
    /// connection red and the first use's write are boxed. With the refresh inline it was 24,384
    /// bytes (this test's unoptimised build; 25,992 for the HTTP handler's in a release build),
    /// which every lookup over HTTP and in the `token-lookup` function built and copied
    /// (docs/performance.md, "`opt-level = 3` for `latchkey serve`, and large futures"). The bound
    /// guards the refresh, the largest; the smaller boxed paths alone would fit under it.
    #[tokio::test]
    async fn a_lookups_future_carries_only_its_warm_path() {
        let dir = tempfile::tempdir().unwrap();
        let service = Service::on_sqlite(dir.path(), ServiceOptions::default());
        let org = OrgId::parse("acme").unwrap();
        let lookup = LookupRequest::default();
        let origin = ReadOrigin::http(PrincipalKind::Runtime, "req-1");
        let size = std::mem::size_of_val(&service.lookup(&org, None, &lookup, &origin));
        assert!(size <= 8 * 1024, "a lookup's future is {size} bytes");
    }
}

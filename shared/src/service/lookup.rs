//! Token lookup: fresh, decrypted credentials for integration executions (SPEC section 5).

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::retry::Races;
use super::{Result, Service, ServiceError, Unusable};
use crate::domain::{
    AuthKind, Connection, ConnectionId, CustomerId, DefinitionKey, Event, EventType, LogType, OrgId, Refusal, Status,
    StatusError,
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
}

#[derive(Debug, Serialize)]
pub struct ReportedError {
    pub connection_id: ConnectionId,
    pub status: Status,
    pub error: StatusError,
}

const MAX_REPORT: usize = 1_000;

impl Service {
    /// Looks a connection up, by id or by selector: every value decrypted. A warm lookup of an
    /// active connection by id is one store read and no key-provider call (the data key is
    /// cached); by selector, an index query more.
    pub async fn lookup(
        &self,
        org: &OrgId,
        customer: Option<&CustomerId>,
        req: &LookupRequest,
    ) -> Result<LookupResponse> {
        let c = self.lookup_target(org, customer, req).await?;
        if let Some(why) = Unusable::of(c.status) {
            return Err(ServiceError::Unusable(why));
        }
        // A lapsed refresh token (SPEC section 10): red `token_expired`, no provider call.
        if let Some(at) = self.refresh_token_lapse(&c) {
            return Err(self.refresh_token_lapsed(c, at).await);
        }
        let mut c = c;
        let mut token = None;
        let mut captured = BTreeMap::new();
        if c.auth.is_some_and(|a| a.is_oauth()) {
            let now = self.clock.now();
            let min_valid = time::Duration::seconds(req.min_valid_seconds.unwrap_or(0).min(86_400) as i64);
            let fresh = c.oauth.as_ref().is_some_and(|t| t.expires_at.is_none_or(|e| e > now + min_valid));
            if !fresh {
                c = self.fresh_for_lookup(c, min_valid).await?;
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
                return Err(self.token_expired(c).await);
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
        let mut secret = self.open_secrets(&c).await?;
        if token.is_some() {
            // The integration gets the access token, never the app's client secret.
            secret.remove("clientSecret");
        }
        if c.auth == Some(AuthKind::Oauth2JwtBearer) {
            // Nor a service account's private key, wherever it is set (the definition or the
            // connection): it signs assertions for any token, so it stays inside Latchkey.
            secret.remove(crate::domain::validate::PRIVATE_KEY_INPUT);
        }
        let mut plain = c.values.clone();
        plain.extend(c.captured.clone());
        plain.extend(captured);
        let mut status = c.status;
        if c.status == Status::Configured {
            let mut used = c.clone();
            used.status = Status::Active;
            used.version += 1;
            used.updated_at = self.clock.now();
            match self.store.update_connection(&used, c.version).await {
                Ok(()) => {
                    status = Status::Active;
                    self.log(&used, LogType::Used, "first successful lookup: connection active").await;
                }
                // Someone else changed it meanwhile; the credentials read are still the latest
                // this caller could have seen, and the next lookup will try again.
                Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(LookupResponse {
            connection_id: c.id,
            definition: c.definition,
            status,
            fields: Fields { plain, secret },
            token,
        })
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
                    self.emit(Event::about(EventType::ConnectionError, &red)).await;
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
                    self.emit(Event::about(EventType::ConnectionError, &red)).await;
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

//! Token import (SPEC section 10): an organization moving from another platform creates its
//! customers' OAuth connections with the tokens it already holds, so nobody consents again.
//!
//! An imported grant is stored exactly as an authorized one: the same sealing
//! ([`Service::seal_token_answer`]), the same granted-scope check (a grant lacking a
//! `required_scopes` entry is created red `scopes_missing`, like an authorization that lacks
//! them), the same refresh schedule ([`Service::with_tokens`]), bound to the token and
//! revocation origins the connection's settings give now. Only the write differs: the record is
//! new, so it is inserted, not updated.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;

use super::super::{Result, Service, ServiceError};
use crate::domain::validate::{self, FieldError, ImportedExpiry, ImportedTokens};
use crate::domain::{AuthKind, Connection, Definition, Event, EventType, LogType, Principal, Status};
use crate::provider::TokenAnswer;

/// Tokens are imported only for `oauth2_authorization_code` definitions: the other kinds hold
/// no grant (client-credentials tokens are fetched again at the first lookup).
pub(super) fn check_importable(def: &Definition, obj: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    if obj.get("tokens").is_some_and(|t| !t.is_null()) && def.auth != AuthKind::Oauth2AuthorizationCode {
        errors.push(FieldError::new("tokens", "only oauth2_authorization_code connections take imported tokens"));
    }
}

impl Service {
    /// The `tokens` member of a `POST /v1/connections` body: `None` when absent, field errors
    /// appended to `errors`. Customer users may not import (403): tokens come from the
    /// organization's own records, and a customer could otherwise plant a grant nobody gave.
    pub(super) fn import_request(
        &self,
        p: &Principal,
        obj: &Map<String, Value>,
        errors: &mut Vec<FieldError>,
    ) -> Result<Option<ImportedTokens>> {
        let Some(v) = obj.get("tokens").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        if !p.is_organization() {
            return Err(ServiceError::Forbidden("only organization users import tokens"));
        }
        Ok(validate::imported_tokens(v, self.clock.now()).map_err(|e| errors.extend(e)).ok())
    }

    /// `conn` (new, not stored yet, its values sealed) holding `imported` as an authorized
    /// grant: `configured` (red `scopes_missing` when the grant lacks a required scope), in the
    /// due index when it has a refresh token. The connection's OAuth settings must be complete
    /// (422 naming what is missing): they are what the grant is bound to and refreshed with.
    pub(super) async fn with_imported_tokens(
        &self,
        def: &Definition,
        conn: Connection,
        imported: ImportedTokens,
    ) -> Result<Connection> {
        let settings = self.oauth_settings(def, &conn).await?;
        let now = self.clock.now();
        // An access token already expired is stored as such, so the sweep refreshes it at once
        // (the validator took it only with a refresh token); any other expiry is a lifetime from
        // now, shortened by the provider's buffer like an answer's.
        let (expires_in, expired_at) = match imported.expiry {
            ImportedExpiry::Unknown => (None, None),
            ImportedExpiry::In(secs) => (Some(secs), None),
            ImportedExpiry::At(at) if at <= now => (None, Some(at)),
            ImportedExpiry::At(at) => {
                let left = (at - now).as_seconds_f64().ceil() as u64;
                (Some(left.clamp(1, validate::MAX_IMPORT_LIFETIME_SECS)), None)
            }
        };
        // A live token is checked at the provider first, like values (SPEC section 10): one it
        // refuses is never stored. An expired one cannot be; the sweep refreshes it at once.
        let mut conn = conn;
        if expired_at.is_none() {
            self.verify_imported_token(def, &mut conn, &imported.access_token).await?;
        }
        let scopes = imported.scopes.map(|given| given.iter().flat_map(|s| settings.quirks.split_scopes(s)).collect());
        let mut answer = TokenAnswer::imported(
            imported.access_token,
            imported.token_type.as_deref(),
            expires_in,
            imported.refresh_token,
            scopes,
        );
        // The refresh token's lapse time, stated as a lifetime from now like an answer's
        // (validated: never already lapsed); unstated, the definition's lifetime applies.
        answer.refresh_token_expires_in = match imported.refresh_expiry {
            ImportedExpiry::Unknown => None,
            ImportedExpiry::In(secs) => Some(secs),
            ImportedExpiry::At(at) => Some(((at - now).as_seconds_f64().ceil() as u64).max(1)),
        };
        let mut tokens = self.seal_token_answer(&conn, &settings, &answer, None).await?;
        if expired_at.is_some() {
            tokens.expires_at = expired_at;
        }
        let error = self.scopes_error(&settings, &tokens);
        let mut done = self.with_tokens(&conn, tokens, &Default::default(), Status::Configured, error);
        done.version = conn.version;
        Ok(done)
    }

    /// Logs and events of a connection created with imported tokens: `created` with the granted
    /// scopes, expiry and next refresh, `Connection Created`, and for a grant lacking required
    /// scopes the `authorize_failed` line and `Connection Error` an authorization would give.
    /// Identifiers, scopes and times only: never a token.
    pub(super) async fn announce_import(&self, conn: &Connection) {
        let Some(tokens) = &conn.oauth else {
            return;
        };
        let at = |t: Option<time::OffsetDateTime>, none: &str| {
            t.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| none.to_owned())
        };
        let refresh = match (tokens.has_refresh_token, conn.refresh.due_at) {
            (false, _) => "no refresh token: not refreshed".to_owned(),
            (true, due) => format!("next refresh {}", at(due, "none")),
        };
        let message = format!(
            "connection created by the organization with imported tokens (scopes: {}; expires {}; {refresh})",
            tokens.scopes.join(" "),
            at(tokens.expires_at, "never"),
        );
        self.log(conn, LogType::Created, message).await;
        self.emit(Event::about(EventType::ConnectionCreated, conn)).await;
        if let Some(error) = conn.error.as_ref().filter(|_| conn.status == Status::Error) {
            self.log(conn, LogType::AuthorizeFailed, error.message.clone()).await;
            self.emit(Event::about(EventType::ConnectionError, conn)).await;
        }
    }
}

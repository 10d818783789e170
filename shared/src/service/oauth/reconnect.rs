//! Reconnect in place (SPEC section 10): authorizing a connection that was authorized before
//! (active, configured, red or disconnected) keeps its id and values and replaces its tokens.
//! The write itself is [`Service::store_tokens`]'s (which keeps a refresh token still held when
//! the answer has none); this is what a reconnect says about itself.
//!
//! Events: every completed authorization emits `Connection Authorized` (SPEC section 6), so a
//! subscriber that waits for usable credentials sees reconnects too; a reconnect then also emits
//! `Connection Reconnected` (SPEC section 11), so one that cares which it was need not keep
//! state. Neither triggers a revocation (the revoker's rule matches `Connection Disconnected`
//! and `Connection Deleted` only).

use super::super::Service;
use crate::domain::{Connection, Event, EventType, LogType, Status};

/// Whether authorizing `c` now is a reconnect: it was authorized before.
pub(super) fn is_reconnect(c: &Connection) -> bool {
    c.status != Status::Pending
}

impl Service {
    /// Logs a `reconnected` line (what the connection was, the scopes granted now and before,
    /// what became of the refresh token) and emits `Connection Reconnected`. `before` is the
    /// record the authorization began from, `done` the one written, `answered_refresh` whether
    /// the provider's answer carried a refresh token. Names and scopes only, never a token.
    pub(super) async fn announce_reconnect(&self, before: &Connection, done: &Connection, answered_refresh: bool) {
        let was = match (&before.status, &before.error) {
            (Status::Error, Some(e)) => format!("error: {}", e.code),
            (status, _) => status.as_str().to_owned(),
        };
        let scopes = |c: &Connection| c.oauth.as_ref().map(|t| t.scopes.join(" "));
        let refresh = match (answered_refresh, done.oauth.as_ref().is_some_and(|t| t.has_refresh_token)) {
            (true, _) => "a new refresh token",
            (false, true) => "the refresh token kept (the provider sent none)",
            (false, false) => "no refresh token",
        };
        let message = format!(
            "reconnected in place, same id and values (was {was}): scopes {} (before: {}); {refresh}",
            scopes(done).unwrap_or_default(),
            scopes(before).unwrap_or_else(|| "none held".to_owned()),
        );
        self.log(done, LogType::Reconnected, message).await;
        self.emit(Event::about(EventType::ConnectionReconnected, done)).await;
    }
}

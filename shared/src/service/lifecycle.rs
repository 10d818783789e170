//! The events that tell how a connection is doing (SPEC section 11): a connection that turned
//! red announces `Connection Error` and, when it lost credentials that worked, `Connection
//! Expired` with the reason; a refresh that worked again after failures announces `Refresh
//! Recovered`.

use super::Service;
use crate::domain::{Connection, Event, EventType, ExpiredReason};

impl Service {
    /// Announces that `red` (as written, status `error`) turned red: `Connection Error` (reason:
    /// its error class), then `Connection Expired` when that class is an expiry
    /// ([`ExpiredReason::of_code`]).
    pub(crate) async fn announce_red(&self, red: &Connection) {
        self.emit(Event::about(EventType::ConnectionError, red)).await;
        if let Some(reason) = red.error.as_ref().and_then(|e| ExpiredReason::of_code(&e.code)) {
            self.emit(Event::expired(red, reason)).await;
        }
    }

    /// Announces a refresh of `before` that wrote `done`: `Token Refreshed`, then `Refresh
    /// Recovered` when `before` had failed since its last success (transient failures counted)
    /// and `done` is usable. A red connection stays red through a refresh (only a new
    /// authorization or new values clear it), so it never recovers here.
    pub(crate) async fn announce_refreshed(&self, before: &Connection, done: &Connection) {
        self.emit(Event::about(EventType::TokenRefreshed, done)).await;
        if before.refresh.failures > 0 && done.error.is_none() {
            self.emit(Event::about(EventType::RefreshRecovered, done)).await;
        }
    }
}

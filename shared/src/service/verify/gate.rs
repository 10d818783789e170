//! The verify gate: a process-wide bound on verify requests in flight and a breaker per
//! provider origin that holds back the sweep's periodic checks while an origin keeps failing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use super::{BREAKER_MAX_BACKOFF, VerifyPolicy};
use crate::service::retry::exponential;

/// Per-origin failure state of the [`VerifyGate`].
#[derive(Debug, Default, Clone, Copy)]
struct OriginState {
    failures: u32,
    open_until: Option<OffsetDateTime>,
}

/// Bounds verify requests: a process-wide limit on those in flight, and a breaker per provider
/// origin (see the module documentation).
#[derive(Debug)]
pub(crate) struct VerifyGate {
    pub(super) permits: tokio::sync::Semaphore,
    origins: Mutex<HashMap<String, OriginState>>,
    threshold: u32,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl VerifyGate {
    pub(crate) fn new(policy: &VerifyPolicy) -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(policy.concurrency.max(1)),
            origins: Mutex::new(HashMap::new()),
            threshold: policy.breaker_threshold.max(1),
            base_backoff: policy.base_backoff,
            max_backoff: BREAKER_MAX_BACKOFF.min(policy.interval).max(policy.base_backoff),
        }
    }

    /// Whether a periodic request to `origin` may go at `now`: not while its breaker is open.
    /// Once the backoff has elapsed this lets one request through as a probe and holds the
    /// others back for another backoff, until [`Self::record`] hears how the probe went.
    pub(super) fn admit(&self, origin: &str, now: OffsetDateTime) -> bool {
        let mut origins = self.origins();
        let Some(state) = origins.get_mut(origin) else {
            return true;
        };
        match state.open_until {
            Some(t) if t > now => false,
            Some(_) => {
                state.open_until = Some(now + self.max_backoff);
                true
            }
            None => true,
        }
    }

    fn origins(&self) -> std::sync::MutexGuard<'_, HashMap<String, OriginState>> {
        self.origins.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When requests to `origin` may go again, if it is backing off at `now`.
    #[cfg(test)]
    pub(super) fn open_until(&self, origin: &str, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.origins().get(origin).and_then(|s| s.open_until).filter(|t| *t > now)
    }

    /// Records what a request to `origin` came to: a transient failure counts toward the
    /// breaker, anything else resets it.
    pub(super) fn record(&self, origin: &str, transient: bool, now: OffsetDateTime) {
        let mut origins = self.origins();
        if !transient {
            origins.remove(origin);
            return;
        }
        let state = origins.entry(origin.to_owned()).or_default();
        state.failures += 1;
        if state.failures >= self.threshold {
            let n = state.failures - self.threshold + 1;
            state.open_until = Some(now + exponential(self.base_backoff, self.max_backoff, n));
        }
    }
}

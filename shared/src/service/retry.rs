//! Retries, written once: redoing a conditional write that lost a race, the in-process retry of
//! a dependency that did not answer, and the backoff of retries scheduled for later (refreshes,
//! revocations).

use std::time::Duration;

use backon::ExponentialBuilder;
use rand::Rng;

use super::{Result, ServiceError};

/// How often a conditional write is redone after losing a race before the caller is told to
/// retry.
pub(crate) const CONFLICT_ATTEMPTS: usize = 5;

/// The 409 of a write that lost [`CONFLICT_ATTEMPTS`] races in a row.
pub(crate) const CHANGED_CONCURRENTLY: &str = "the connection is being changed concurrently; retry";

/// The attempts left to a conditional write that is redone on the latest record after losing a
/// race: [`CONFLICT_ATTEMPTS`] in all. A loop calls [`Races::lost`] on each
/// `StoreError::Conflict` and goes round again; after the last it is told to give up with a 409.
///
/// (A counter rather than a function taking the attempt as an async closure: futures of async
/// closures that borrow their state are not yet provably `Send`, which axum's handlers need.)
#[derive(Debug)]
pub(crate) struct Races {
    left: usize,
}

impl Default for Races {
    fn default() -> Self {
        Self { left: CONFLICT_ATTEMPTS }
    }
}

impl Races {
    /// Counts a lost race: `Ok` while another attempt may follow, then
    /// [`ServiceError::Conflict`] ("changed concurrently; retry").
    pub(crate) fn lost(&mut self) -> Result<()> {
        self.left = self.left.saturating_sub(1);
        if self.left == 0 { Err(ServiceError::Conflict(CHANGED_CONCURRENTLY)) } else { Ok(()) }
    }
}

/// The in-process retry of a dependency that did not answer (`Unavailable`), where the work
/// cannot be asked for twice (a provider's answer holding a rotated refresh token): three more
/// tries, 250 ms apart and doubling, with jitter; about two seconds in all.
pub(crate) fn unavailable_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(3)
        .with_jitter()
}

/// The longest wait between two tries of [`held_retries`]: its 2 s cap plus backon's jitter
/// (up to as much again).
pub(crate) const HELD_RETRY_MAX_WAIT: Duration = Duration::from_secs(4);

/// The in-process retry of a write that must land while a lease lasts (a provider's answer,
/// which may hold a rotated refresh token): from 250 ms, doubling up to 2 s, plus jitter (at
/// most [`HELD_RETRY_MAX_WAIT`]), and no count: the caller stops when its time is up (its
/// `when` condition), so the tries spread over the lease instead of the two seconds of
/// [`unavailable_retries`]. A throttled partition recovers within a second or two; the jitter
/// keeps workers throttled together from retrying together.
pub(crate) fn held_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(HELD_RETRY_MAX_WAIT / 2)
        .without_max_times()
        .with_jitter()
}

/// The wait before retry number `n` (from 1) of something scheduled for later: `base`,
/// doubling with each retry, at most `max`.
pub(crate) fn exponential(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.clamp(1, 17).saturating_sub(1)).min(max)
}

/// `wait` with jitter on its upper half (between half of it and all of it), so that many
/// retries scheduled by one outage do not all come due at once.
pub(crate) fn jittered(wait: Duration) -> Duration {
    wait / 2 + wait.mul_f64(rand::rng().random_range(0.0..0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_its_base_up_to_its_maximum() {
        let (base, max) = (Duration::from_secs(4), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=12).map(|n| exponential(base, max, n).as_secs()).collect();
        assert_eq!(waits, [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]);
        assert_eq!(exponential(base, max, 0), base, "the first retry waits the base");
        assert_eq!(exponential(base, max, u32::MAX), max);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(60));
            assert!(j >= Duration::from_secs(30) && j <= Duration::from_secs(60), "{j:?}");
        }
    }

    #[test]
    fn held_retries_never_run_out_and_wait_at_most_their_cap() {
        use backon::BackoffBuilder;
        let waits: Vec<Duration> = held_retries().build().take(200).collect();
        assert_eq!(waits.len(), 200, "the caller's deadline ends them, not a count");
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(250) && *w <= HELD_RETRY_MAX_WAIT), "{waits:?}");
        assert!(waits[4..].iter().all(|w| *w >= HELD_RETRY_MAX_WAIT / 2), "doubled up to the cap: {waits:?}");
    }

    #[test]
    fn a_write_that_keeps_losing_is_a_conflict_after_the_last_attempt() {
        let mut races = Races::default();
        let mut attempts = 1;
        while races.lost().is_ok() {
            attempts += 1;
        }
        assert_eq!(attempts, CONFLICT_ATTEMPTS);
        assert!(matches!(races.lost(), Err(ServiceError::Conflict(CHANGED_CONCURRENTLY))));
    }
}

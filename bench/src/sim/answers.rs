//! Provider answers and their commits, connection by connection: what a provider that rotates
//! refresh tokens would notice when an answer is lost.
//!
//! A token answer holds a new refresh token, and the provider (many do) takes the old one back.
//! If the answer's commit fails, the connection keeps the old refresh token: its next refresh
//! presents a token the provider no longer accepts, and the connection needs its user again.
//! The simulated provider ([`super::provider::SimProvider`]) reports each answer here (which
//! seeded connection it was for, from the refresh token presented), the metered store
//! ([`super::quota::MeteredStore`]) each commit of new tokens. Refreshes of one connection are
//! serialized by its lease, so an answer is lost exactly when the next request for the same
//! connection comes before its commit, or the run ends with it uncommitted after its lease:
//!
//! - **lost**: the commit never landed (the next request presented the replaced token, or at
//!   the end the answer is older than a lease, past which the service stops trying). Of those,
//!   **given up**: the service tried until its lease was nearly over and logged the loss (its
//!   error line's `lost_answer` field, counted by [`give_ups`]); the others were dropped with
//!   an invocation the simulation cut off at its timeout (docs/scale.md, "Simulation").
//! - **cut off**: uncommitted at the end but younger than a lease: the run's end stopped it, not
//!   the service.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

use super::clock::SimClock;

/// The service's error lines for answers it gave up writing, in this process ([`give_ups`]).
static GIVEN_UP: AtomicU64 = AtomicU64::new(0);

/// A tracing layer counting the service's error lines that carry a `lost_answer` field (a
/// provider's answer it gave up writing before its lease ended), and nothing else: the scale
/// binary installs it, so the other callsites stay disabled and cost nothing.
pub fn give_ups<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    GiveUps.with_filter(filter_fn(|m| m.fields().field("lost_answer").is_some()))
}

struct GiveUps;

impl<S: tracing::Subscriber> Layer<S> for GiveUps {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        GIVEN_UP.fetch_add(1, Ordering::Relaxed);
    }
}

/// The ledger of answers (see the module documentation).
pub struct Answers {
    clock: SimClock,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per seeded connection (by index): when its latest answer was given, simulated seconds,
    /// while it is not committed; NaN otherwise.
    pending: Vec<f32>,
    answered: u64,
    committed: u64,
    /// Answers superseded before their commit.
    superseded: u64,
}

/// What became of the provider's answers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTally {
    /// Token answers given for a known connection.
    pub answered: u64,
    /// Of those, committed.
    pub committed: u64,
    /// Lost: never committed (module documentation).
    pub lost: u64,
    /// The service's error lines for answers it gave up writing ([`give_ups`]; 0 where that
    /// layer is not installed).
    pub given_up: u64,
    /// Not committed when the run ended, within a lease of their answer.
    pub cut_off: u64,
}

/// The seeded connection a refresh token was issued to: `seed-rt-{i:012}-...` (seeding) or
/// `sim-rt-{i:012}-...` ([`refresh_token`]).
pub fn connection_of(refresh_token: &str) -> Option<usize> {
    let rest = refresh_token.strip_prefix("seed-rt-").or_else(|| refresh_token.strip_prefix("sim-rt-"))?;
    rest.get(..12)?.parse().ok()
}

/// The rotated refresh token the simulated provider issues for connection `i`, answer `n`: as
/// long as a typical provider's (54 characters), naming its connection for [`connection_of`].
pub fn refresh_token(i: usize, n: u64) -> String {
    format!("sim-rt-{i:012}-{n:016x}-00000000000000000")
}

/// The seeded connection a connection's customer names: `c-{i}` (seeding).
pub fn connection_of_customer(customer: &str) -> Option<usize> {
    customer.strip_prefix("c-")?.parse().ok()
}

impl Answers {
    pub fn new(clock: SimClock) -> Self {
        Self { clock, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The provider answered connection `i`'s refresh. An earlier answer still uncommitted was
    /// lost: this request presented the refresh token it replaced.
    pub fn answered(&self, i: usize) {
        let now = self.clock.elapsed_secs() as f32;
        let mut s = self.state();
        if s.pending.len() <= i {
            s.pending.resize(i + 1, f32::NAN);
        }
        if !s.pending[i].is_nan() {
            s.superseded += 1;
        }
        s.pending[i] = now;
        s.answered += 1;
    }

    /// New tokens for connection `i` were committed.
    pub fn committed(&self, i: usize) {
        let mut s = self.state();
        if let Some(at) = s.pending.get_mut(i).filter(|at| !at.is_nan()) {
            *at = f32::NAN;
            s.committed += 1;
        }
    }

    /// The tally now, an uncommitted answer older than `lease` counted as lost.
    pub fn tally(&self, lease: Duration) -> AnswerTally {
        let now = self.clock.elapsed_secs() as f32;
        let s = self.state();
        let (mut lost, mut cut_off) = (s.superseded, 0);
        for at in s.pending.iter().filter(|at| !at.is_nan()) {
            if now - at > lease.as_secs_f32() {
                lost += 1;
            } else {
                cut_off += 1;
            }
        }
        let given_up = GIVEN_UP.load(Ordering::Relaxed);
        AnswerTally { answered: s.answered, committed: s.committed, lost, given_up, cut_off }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_connection() {
        assert_eq!(connection_of("seed-rt-000000000042-00000000000000000000"), Some(42));
        let rotated = refresh_token(7, 0xabc);
        assert_eq!(rotated.len(), 54, "as long as the tokens it replaced: item sizes unchanged");
        assert_eq!(connection_of(&rotated), Some(7));
        assert_eq!(connection_of("other"), None);
        assert_eq!(connection_of_customer("c-19"), Some(19));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_lost_when_the_next_request_or_the_end_finds_it_uncommitted() {
        let clock = SimClock::starting_at(time::OffsetDateTime::UNIX_EPOCH);
        let answers = Answers::new(clock);
        let lease = Duration::from_secs(30);
        answers.answered(1);
        answers.committed(1);
        answers.answered(1);
        // Its commit failed: the next request presents the replaced token.
        answers.answered(1);
        answers.answered(2);
        tokio::time::advance(Duration::from_secs(31)).await;
        answers.answered(3);
        answers.committed(9);
        let t = answers.tally(lease);
        assert_eq!((t.answered, t.committed, t.lost, t.cut_off), (5, 1, 3, 1), "{t:?}");
    }
}

//! The simulated clock: a fixed start plus tokio's (paused) time elapsed since, truncated to
//! milliseconds like [`latchkey::ports::SystemClock`].

use latchkey::ports::Clock;
use time::OffsetDateTime;

/// The service clock of a simulation. Build it inside the paused runtime.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    start: OffsetDateTime,
    at: tokio::time::Instant,
}

impl SimClock {
    /// A clock reading `start` now (in tokio time).
    pub fn starting_at(start: OffsetDateTime) -> Self {
        let start = start.replace_nanosecond(start.millisecond() as u32 * 1_000_000).unwrap_or(start);
        Self { start, at: tokio::time::Instant::now() }
    }

    /// Simulated seconds since the start.
    pub fn elapsed_secs(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }

    /// The start.
    pub fn start(&self) -> OffsetDateTime {
        self.start
    }
}

impl Clock for SimClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = self.at.elapsed();
        let ms = time::Duration::milliseconds(elapsed.as_millis() as i64);
        self.start + ms
    }
}

//! The clock schedules read: the system's, or one driven by tokio's (for tests that pause and
//! advance time).

use std::time::SystemTime;

/// What time it is, for the scheduler.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's clock (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that moves with tokio's clock from a starting time: with
/// `tokio::time::pause()`, hours of schedules run in milliseconds, exactly.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use qtasks::schedule::{Clock, TokioClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let clock = TokioClock::starting_at(UNIX_EPOCH);
/// tokio::time::sleep(Duration::from_secs(3600)).await; // instant, with the clock paused
/// assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_secs(3600));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now and moves with tokio's time from here (call it inside a
    /// runtime).
    pub fn starting_at(wall: SystemTime) -> Self {
        TokioClock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}

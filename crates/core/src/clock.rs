//! [`Clock`]: where the crates that keep time-bound state (token expiry, cache TTLs) read the
//! time, so that tests can move it forward instead of sleeping through it.
//!
//! A clock is the system clock plus an offset that only [`Clock::advance`] changes: time keeps
//! flowing as usual (timeouts, real servers), and a test jumps past an expiry at once. In
//! production the offset is always zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The system clock, optionally moved forward by a test. Cheap to clone; clones share the
/// offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Nanoseconds added to the system clock; `None` for the plain system clock.
    offset: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { offset: None }
    }

    /// A clock that starts at the system time and that [`Clock::advance`] moves forward
    /// (tests).
    pub fn adjustable() -> Clock {
        Clock {
            offset: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    fn offset(&self) -> Duration {
        self.offset.as_ref().map_or(Duration::ZERO, |o| {
            Duration::from_nanos(o.load(Ordering::Acquire))
        })
    }

    /// Wall-clock time (token `exp`/`nbf`, record timestamps).
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Monotonic time (cache ages, intervals).
    pub fn instant(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Moves an adjustable clock forward by `by` (every clone sees it). On the system clock
    /// it does nothing: production time is never moved.
    pub fn advance(&self, by: Duration) {
        if let Some(o) = &self.offset {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            o.fetch_add(nanos, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_moves_both_clocks_of_every_clone_and_never_the_system_clock() {
        let c = Clock::adjustable();
        let seen = c.clone();
        let (w, i) = (c.now(), c.instant());
        c.advance(Duration::from_secs(3600));
        assert!(seen.now().duration_since(w).unwrap() >= Duration::from_secs(3600));
        assert!(seen.instant().duration_since(i) >= Duration::from_secs(3600));

        let s = Clock::system();
        let before = s.now();
        s.advance(Duration::from_secs(3600));
        assert!(s.now().duration_since(before).unwrap_or_default() < Duration::from_secs(3600));
    }
}

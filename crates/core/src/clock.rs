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
    /// `None` for the plain system clock.
    adjust: Option<Arc<Adjust>>,
}

#[derive(Debug)]
struct Adjust {
    /// Nanoseconds added to the system clock.
    offset: AtomicU64,
    /// Told of every advance, so that [`Clock::sleep_until`] wakes up to look again.
    advanced: tokio::sync::watch::Sender<()>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { adjust: None }
    }

    /// A clock that starts at the system time and that [`Clock::advance`] moves forward
    /// (tests).
    pub fn adjustable() -> Clock {
        Clock {
            adjust: Some(Arc::new(Adjust {
                offset: AtomicU64::new(0),
                advanced: tokio::sync::watch::Sender::new(()),
            })),
        }
    }

    fn offset(&self) -> Duration {
        self.adjust.as_ref().map_or(Duration::ZERO, |a| {
            Duration::from_nanos(a.offset.load(Ordering::Acquire))
        })
    }

    /// Wall-clock time (token `exp`/`nbf`, record timestamps).
    pub fn now(&self) -> SystemTime {
        // The one read of the system time the workspace allows (clippy.toml).
        #[allow(clippy::disallowed_methods)]
        let system = SystemTime::now();
        system + self.offset()
    }

    /// Monotonic time (cache ages, intervals).
    pub fn instant(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// Moves an adjustable clock forward by `by` (every clone sees it). On the system clock
    /// it does nothing: production time is never moved.
    pub fn advance(&self, by: Duration) {
        if let Some(a) = &self.adjust {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            a.offset.fetch_add(nanos, Ordering::AcqRel);
            a.advanced.send_replace(());
        }
    }

    /// Waits until this clock reads `deadline` or later: on the system clock a timer; on an
    /// adjustable clock also woken by [`Clock::advance`], so a test reaches an expiry at once.
    pub async fn sleep_until(&self, deadline: SystemTime) {
        // Subscribed before the first look at the time: an advance after it is never missed.
        let mut advanced = self.adjust.as_ref().map(|a| a.advanced.subscribe());
        loop {
            let left = deadline
                .duration_since(self.now())
                .unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return;
            }
            match advanced.as_mut() {
                None => tokio::time::sleep(left).await,
                Some(rx) => {
                    // Either the time comes, or the clock moved: look again.
                    let _ = tokio::time::timeout(left, rx.changed()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_until_wakes_on_an_advance_past_the_deadline_and_not_before() {
        let c = Clock::adjustable();
        let deadline = c.now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_until(deadline).await }
        });
        c.advance(Duration::from_secs(1800));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!sleeper.is_finished(), "woke half-way to the deadline");
        c.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("still asleep after the clock passed the deadline")
            .unwrap();
    }

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

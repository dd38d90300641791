//! [`Clock`]: where the crates that keep time-bound state (token expiry, cache TTLs) read the
//! time, so that tests can move it forward instead of sleeping through it.
//!
//! A clock is the system clock plus an offset that only [`Clock::advance`] changes: time keeps
//! flowing as usual (timeouts, real servers), and a test jumps past an expiry at once. In
//! production the offset is always zero.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
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
    /// How many times the clock was advanced.
    advances: AtomicU64,
    /// Tasks waiting in [`Advanced`] for the next advance.
    waiters: Mutex<Vec<Waker>>,
}

/// Two clocks are equal when they are the same clock: both the plain system clock, or clones
/// sharing one offset. (A configuration holding the system clock compares equal to another.)
impl PartialEq for Clock {
    fn eq(&self, other: &Clock) -> bool {
        match (&self.adjust, &other.adjust) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Clock {}

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
                advances: AtomicU64::new(0),
                waiters: Mutex::new(Vec::new()),
            })),
        }
    }

    /// Whether [`Clock::advance`] can move this clock (a test's clock).
    pub fn is_adjustable(&self) -> bool {
        self.adjust.is_some()
    }

    /// How far this clock has been moved ahead of the system clock (zero in production), for
    /// code that keeps its own monotonic clock (e.g. tokio's) and adds the offset to it.
    pub fn offset(&self) -> Duration {
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
            a.advances.fetch_add(1, Ordering::AcqRel);
            let waiters = std::mem::take(&mut *a.waiters.lock().unwrap_or_else(|e| e.into_inner()));
            for w in waiters {
                w.wake();
            }
        }
    }

    /// A future that resolves at the first [`Clock::advance`] after this call; on the system
    /// clock it never resolves. Whoever waits for a time on this clock (a token's expiry)
    /// waits for the timer *or* this, then looks at the time again.
    pub fn advanced(&self) -> Advanced {
        Advanced {
            seen: self
                .adjust
                .as_ref()
                .map_or(0, |a| a.advances.load(Ordering::Acquire)),
            adjust: self.adjust.clone(),
        }
    }
}

/// See [`Clock::advanced`].
#[derive(Debug)]
pub struct Advanced {
    adjust: Option<Arc<Adjust>>,
    seen: u64,
}

impl Future for Advanced {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(a) = &self.adjust else {
            return Poll::Pending;
        };
        if a.advances.load(Ordering::Acquire) != self.seen {
            return Poll::Ready(());
        }
        let mut waiters = a.waiters.lock().unwrap_or_else(|e| e.into_inner());
        // Looked at again under the lock: an advance in between has taken the list already.
        if a.advances.load(Ordering::Acquire) != self.seen {
            return Poll::Ready(());
        }
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advanced_resolves_at_the_next_advance_only_and_never_on_the_system_clock() {
        use std::task::Wake;
        struct Flag(std::sync::atomic::AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);

        let c = Clock::adjustable();
        c.advance(Duration::from_secs(1)); // before the wait: not seen by it
        let mut wait = Box::pin(c.advanced());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        c.clone().advance(Duration::from_secs(1));
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the advance did not wake the waiter"
        );
        assert!(wait.as_mut().poll(&mut cx).is_ready());

        let mut never = Box::pin(Clock::system().advanced());
        Clock::system().advance(Duration::from_secs(1));
        assert!(never.as_mut().poll(&mut cx).is_pending());
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

//! Per-instance sliding-window rate limit: at most `limit` calls in any `window`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    calls: HashMap<String, VecDeque<Instant>>,
}

impl RateLimiter {
    pub fn new(limit: usize, window: Duration) -> RateLimiter {
        RateLimiter {
            limit,
            window,
            calls: HashMap::new(),
        }
    }

    /// Count a call by `who` at `now`. `Err(retry_after)` when `who` already made `limit`
    /// calls within the window ending now (the refused call is not counted).
    pub fn check(&mut self, who: &str, now: Instant) -> Result<(), Duration> {
        let q = self.calls.entry(who.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.limit {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(self
                .window
                .saturating_sub(now.saturating_duration_since(oldest)));
        }
        q.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_per_instance() {
        let mut r = RateLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            r.check("a", t0 + Duration::from_secs(i)).unwrap();
        }
        let wait = r.check("a", t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another instance has its own window.
        r.check("b", t0 + Duration::from_secs(10)).unwrap();
        // The first call leaves the window at t0+60: one more fits, not two.
        r.check("a", t0 + Duration::from_secs(60)).unwrap();
        assert!(r.check("a", t0 + Duration::from_secs(60)).is_err());
        r.check("a", t0 + Duration::from_secs(62)).unwrap();
    }
}

//! The group-commit hand-off between request tasks and the single spool writer.
//!
//! Submitters push items and return at once; the writer blocks until at least one item is
//! queued, then takes everything queued (up to a limit) as one batch, commits it with one fsync
//! and acknowledges each item. Items that arrive while a batch is being committed form the next
//! batch, so under load many requests share one fsync without any added delay.
//!
//! Written against `crate::sync` (std in the library, loom in the model-checking test), so it
//! must use only the API the two have in common: `Mutex::lock`, `Condvar::wait`,
//! `Condvar::wait_timeout`, `Condvar::notify_one`/`notify_all`. (loom's `wait_timeout` never
//! times out, so the model covers [`GroupCommitQueue::take_batch`]; the linger of
//! [`GroupCommitQueue::take_batch_lingering`] is covered by `group_commit_tests.rs`.)

use std::collections::VecDeque;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};

/// Why [`GroupCommitQueue::push`] refused an item; the item is handed back.
#[derive(Debug)]
pub(crate) enum PushError<T> {
    /// The queue was closed (the spool is shutting down).
    Closed(T),
    /// The queue already holds `limit` items.
    Full(T),
}

/// A closable multi-producer, single-consumer batch queue.
pub(crate) struct GroupCommitQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> GroupCommitQueue<T> {
    pub(crate) fn new() -> GroupCommitQueue<T> {
        GroupCommitQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Queues `item`, refusing it when closed or when `limit` items are already queued.
    ///
    /// The critical section is a `VecDeque::push_back`: safe to call from async code.
    pub(crate) fn push(&self, item: T, limit: Option<usize>) -> Result<(), PushError<T>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if st.closed {
            return Err(PushError::Closed(item));
        }
        if limit.is_some_and(|l| st.items.len() >= l) {
            return Err(PushError::Full(item));
        }
        st.items.push_back(item);
        drop(st);
        // One consumer: waking one waiter is enough, and the writer re-checks the queue
        // before every wait, so a notification sent while it was busy is never needed.
        self.ready.notify_one();
        Ok(())
    }

    /// Blocks until at least one item is queued, then takes up to `max` items in FIFO order.
    ///
    /// Returns `None` once the queue is closed *and* drained: items pushed before `close` are
    /// always handed out. The spool's writer uses the lingering form; this one (no linger) is
    /// what the loom model drives, through the same code.
    #[allow(dead_code)]
    pub(crate) fn take_batch(&self, max: usize) -> Option<Vec<T>> {
        self.take_batch_lingering(max, Duration::ZERO, |_| false)
    }

    /// Like [`GroupCommitQueue::take_batch`], but a batch made only of items nobody waits for
    /// (`urgent` false for all of them) lingers up to `linger` from the moment the writer
    /// sees it, so that a trickle of asynchronous items shares one commit instead of paying
    /// one each. The wait ends early as soon as an urgent item arrives, `max` items are queued
    /// or the queue is closed; a zero `linger` is exactly `take_batch`.
    pub(crate) fn take_batch_lingering(
        &self,
        max: usize,
        linger: Duration,
        urgent: impl Fn(&T) -> bool,
    ) -> Option<Vec<T>> {
        let max = max.max(1);
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while st.items.is_empty() {
            if st.closed {
                return None;
            }
            st = self.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        let deadline = Instant::now() + linger;
        loop {
            if st.closed || st.items.len() >= max || st.items.iter().take(max).any(&urgent) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let n = st.items.len().min(max);
        Some(st.items.drain(..n).collect())
    }

    /// Takes up to `max` queued items without blocking.
    pub(crate) fn try_take(&self, max: usize) -> Vec<T> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let n = st.items.len().min(max);
        st.items.drain(..n).collect()
    }

    /// Refuses further pushes and wakes the consumer so it can drain and stop.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.closed = true;
        drop(st);
        self.ready.notify_all();
    }

    /// Number of queued items.
    pub(crate) fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items
            .len()
    }
}

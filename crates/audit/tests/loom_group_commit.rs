//! Model-checks the group-commit queue with loom, in the normal test suite.
//!
//! `src/group_commit.rs` is written against `crate::sync`; here it is compiled as a module of
//! this test crate next to a `sync` module that re-exports `loom::sync`, so loom explores the
//! shipped code without a `--cfg loom` build.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

mod sync {
    pub(crate) use loom::sync::{Condvar, Mutex};
}

#[path = "../src/group_commit.rs"]
mod group_commit;

use group_commit::{GroupCommitQueue, PushError};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// A one-shot acknowledgement a submitter blocks on (the spool uses a tokio oneshot).
#[derive(Clone)]
struct Ack(Arc<(Mutex<Option<bool>>, Condvar)>);

impl Ack {
    fn new() -> Ack {
        Ack(Arc::new((Mutex::new(None), Condvar::new())))
    }
    fn set(&self, ok: bool) {
        *self.0 .0.lock().unwrap() = Some(ok);
        self.0 .1.notify_all();
    }
    fn wait(&self) -> bool {
        let mut g = self.0 .0.lock().unwrap();
        loop {
            if let Some(v) = *g {
                return v;
            }
            g = self.0 .1.wait(g).unwrap();
        }
    }
}

struct Log {
    /// Durable ids, in commit order.
    durable: Mutex<Vec<usize>>,
    fsyncs: AtomicUsize,
}

/// The spool writer's loop, reduced to its synchronisation: take a batch, make it durable
/// (one fsync), then acknowledge every item of the batch.
fn writer(q: Arc<GroupCommitQueue<(usize, Ack)>>, log: Arc<Log>) {
    while let Some(batch) = q.take_batch(8) {
        {
            let mut d = log.durable.lock().unwrap();
            d.extend(batch.iter().map(|(id, _)| *id));
        }
        log.fsyncs.fetch_add(1, Ordering::SeqCst);
        for (_, ack) in batch {
            ack.set(true);
        }
    }
}

/// Exhaustive up to 2 preemptions per execution (loom's recommended bound: bugs in practice
/// need few preemptions, and an unbounded search of 4 threads takes minutes in debug builds).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(f);
}

#[test]
fn every_acknowledged_item_is_durable_exactly_once() {
    model(|| {
        let q = Arc::new(GroupCommitQueue::new());
        let log = Arc::new(Log {
            durable: Mutex::new(Vec::new()),
            fsyncs: AtomicUsize::new(0),
        });
        let w = {
            let (q, log) = (q.clone(), log.clone());
            thread::spawn(move || writer(q, log))
        };
        let submitters: Vec<_> = (0..2)
            .map(|id| {
                let (q, log) = (q.clone(), log.clone());
                thread::spawn(move || {
                    let ack = Ack::new();
                    q.push((id, ack.clone()), None).map_err(|_| ()).unwrap();
                    assert!(ack.wait());
                    // Acknowledged means durable: the "secret" may leave now.
                    assert!(log.durable.lock().unwrap().contains(&id));
                })
            })
            .collect();
        for s in submitters {
            s.join().unwrap();
        }
        q.close();
        w.join().unwrap();
        let mut d = log.durable.lock().unwrap().clone();
        d.sort_unstable();
        assert_eq!(d, vec![0, 1]);
        let fsyncs = log.fsyncs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&fsyncs));
    });
}

#[test]
fn close_never_strands_a_waiter() {
    model(|| {
        let q = Arc::new(GroupCommitQueue::new());
        let log = Arc::new(Log {
            durable: Mutex::new(Vec::new()),
            fsyncs: AtomicUsize::new(0),
        });
        let w = {
            let (q, log) = (q.clone(), log.clone());
            thread::spawn(move || writer(q, log))
        };
        let s = {
            let q = q.clone();
            thread::spawn(move || {
                let ack = Ack::new();
                match q.push((7, ack.clone()), None) {
                    // Accepted before close: must be committed and acknowledged.
                    Ok(()) => assert!(ack.wait()),
                    // Refused: the caller fails closed without waiting.
                    Err(PushError::Closed(_)) => {}
                    Err(PushError::Full(_)) => unreachable!(),
                }
            })
        };
        q.close();
        s.join().unwrap();
        w.join().unwrap();
        assert!(q.take_batch(8).is_none());
    });
}

#[test]
fn bounded_push_refuses_when_full() {
    loom::model(|| {
        let q: GroupCommitQueue<usize> = GroupCommitQueue::new();
        assert!(q.push(1, Some(1)).is_ok());
        assert!(matches!(q.push(2, Some(1)), Err(PushError::Full(2))));
        assert_eq!(q.try_take(8), vec![1]);
        assert_eq!(q.len(), 0);
    });
}

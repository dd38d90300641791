//! Unit tests of the group-commit queue's linger (std only: loom's `wait_timeout` never times
//! out, so `tests/loom_group_commit.rs` covers the rest of the queue).
use std::sync::Arc;
use std::time::Duration;

use crate::group_commit::GroupCommitQueue;

const URGENT: u32 = 0;

#[test]
fn a_lingering_batch_collects_async_items_until_an_urgent_one_arrives() {
    let q = Arc::new(GroupCommitQueue::new());
    q.push(1, None).unwrap();
    let taker = {
        let q = Arc::clone(&q);
        // A linger far longer than the test: only the urgent item can end the wait.
        std::thread::spawn(move || {
            q.take_batch_lingering(100, Duration::from_secs(600), |&i| i == URGENT)
        })
    };
    q.push(2, None).unwrap();
    q.push(URGENT, None).unwrap();
    assert_eq!(taker.join().unwrap(), Some(vec![1, 2, URGENT]));
}

#[test]
fn a_lingering_batch_ends_at_max_items_and_on_close() {
    let q = Arc::new(GroupCommitQueue::new());
    let taker = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            q.take_batch_lingering(3, Duration::from_secs(600), |&i| i == URGENT)
        })
    };
    for i in 1..=4 {
        q.push(i, None).unwrap();
    }
    assert_eq!(taker.join().unwrap(), Some(vec![1, 2, 3]));

    let taker = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            q.take_batch_lingering(100, Duration::from_secs(600), |&i| i == URGENT)
        })
    };
    q.close();
    assert_eq!(taker.join().unwrap(), Some(vec![4]));
    assert_eq!(
        q.take_batch_lingering(100, Duration::from_secs(600), |_| false),
        None
    );
}

#[test]
fn a_lingering_batch_is_handed_out_when_the_linger_expires() {
    let q = GroupCommitQueue::new();
    q.push(7, None).unwrap();
    // Nothing else arrives: the batch is still handed out (the linger bounds the wait).
    assert_eq!(
        q.take_batch_lingering(100, Duration::from_millis(1), |&i| i == URGENT),
        Some(vec![7])
    );
    // An urgent item is handed out at once, whatever the linger.
    q.push(URGENT, None).unwrap();
    assert_eq!(
        q.take_batch_lingering(100, Duration::from_secs(600), |&i| i == URGENT),
        Some(vec![URGENT])
    );
}

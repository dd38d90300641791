//! Graceful shutdown: a signal every connection watches, and a count of those still open.
//!
//! Each connection holds a [`Drain`] (a receiver of the signal plus a sender whose drop
//! marks the connection gone); `Drainer::drain` signals and waits until every clone is gone.

use std::future::Future;
use std::pin::pin;

use tokio::sync::{mpsc, watch};

#[derive(Clone, Debug)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

#[derive(Debug)]
pub struct Drainer {
    signal: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
    template: Option<Drain>,
}

impl Drainer {
    pub fn new() -> Drainer {
        let (signal, rx) = watch::channel(false);
        let (tx, alive) = mpsc::channel(1);
        Drainer {
            signal,
            alive,
            template: Some(Drain {
                signal: rx,
                _alive: tx,
            }),
        }
    }

    pub fn handle(&self) -> Drain {
        match &self.template {
            Some(d) => d.clone(),
            // After drain() started there are no new connections; a closed handle is right.
            None => {
                let (tx, _) = mpsc::channel(1);
                Drain {
                    signal: self.signal.subscribe(),
                    _alive: tx,
                }
            }
        }
    }

    /// Signal shutdown and wait until every handle has been dropped.
    pub async fn drain(mut self) {
        self.template = None;
        let _ = self.signal.send(true);
        // recv() returns None once every sender is gone.
        while self.alive.recv().await.is_some() {}
    }
}

impl Drain {
    /// Resolves when shutdown has been signalled.
    pub async fn signalled(&mut self) {
        let _ = self.signal.wait_for(|s| *s).await;
    }

    /// Drive `conn` to completion; when shutdown is signalled, call `graceful` on it once
    /// (which lets in-flight requests finish and refuses new ones) and keep driving it.
    pub async fn watch<C, O>(mut self, conn: C, graceful: impl FnOnce(std::pin::Pin<&mut C>)) -> O
    where
        C: Future<Output = O>,
    {
        let mut conn = pin!(conn);
        tokio::select! {
            out = conn.as_mut() => return out,
            _ = self.signalled() => graceful(conn.as_mut()),
        }
        conn.await
    }
}

//! Group commit: many writers waiting for durability share one fsync.
//!
//! A writer takes a `Ticket` after its write; `wait` returns once a flush that began after
//! the ticket was taken has finished. Flushes are serialized by a mutex, and a waiter that
//! finds its ticket already covered by a finished flush returns without flushing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Proof of a write that a caller wants durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Default)]
pub struct GroupCommit {
    issued: AtomicU64,
    flushed: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    pub fn ticket(&self) -> Ticket {
        Ticket(self.issued.fetch_add(1, Ordering::SeqCst) + 1)
    }

    pub async fn wait<F, Fut, E>(&self, ticket: Ticket, flush: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        let _guard = self.lock.lock().await;
        if self.flushed.load(Ordering::SeqCst) >= ticket.0 {
            return Ok(());
        }
        // Every ticket issued so far belongs to a write that already happened.
        let covers = self.issued.load(Ordering::SeqCst);
        flush().await?;
        self.flushed.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_waiters_share_flushes() {
        let gc = Arc::new(GroupCommit::default());
        let flushes = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let gc = gc.clone();
            let flushes = flushes.clone();
            tasks.push(tokio::spawn(async move {
                let t = gc.ticket();
                gc.wait(t, || async {
                    flushes.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..50).contains(&n), "expected shared flushes, got {n}");
        // A ticket taken after everything flushed needs a new flush.
        let t = gc.ticket();
        let before = flushes.load(Ordering::SeqCst);
        gc.wait(t, || async {
            flushes.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await
        .unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), before + 1);
    }
}

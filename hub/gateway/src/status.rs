//! The SpokeAgent status writer. Sessions ask for a cluster's status to be persisted
//! ([`StatusQueue::request`]) and get a receiver that resolves once a write that includes their
//! change is durable; only then is the report acknowledged to the agent. Requests are coalesced
//! per cluster (one write covers every change made before it started) and writes for one
//! cluster never overlap, so a newer status is never overwritten by an older one.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Default)]
struct Slot {
    waiters: Vec<oneshot::Sender<bool>>,
    /// A write was asked for without a waiter.
    dirty: bool,
    queued: bool,
    in_flight: bool,
}

/// Pending status writes.
#[derive(Debug)]
pub struct StatusQueue {
    slots: Mutex<HashMap<String, Slot>>,
    tx: mpsc::UnboundedSender<String>,
}

/// A batch of waiters taken by a writer.
#[derive(Debug)]
pub struct Batch {
    /// Cluster to write.
    pub cluster: String,
    waiters: Vec<oneshot::Sender<bool>>,
}

impl StatusQueue {
    /// A queue and the receiver the writer loop consumes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                slots: Mutex::new(HashMap::new()),
                tx,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `cluster`'s status to be written; resolves `true` once durable (`false` if the
    /// write failed).
    pub fn request(&self, cluster: &str) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.lock();
        let slot = slots.entry(cluster.to_string()).or_default();
        slot.waiters.push(tx);
        if !slot.queued && !slot.in_flight {
            slot.queued = true;
            let _ = self.tx.send(cluster.to_string());
        }
        rx
    }

    /// Asks for `cluster`'s status to be written, without waiting for it.
    pub fn touch(&self, cluster: &str) {
        let mut slots = self.lock();
        let slot = slots.entry(cluster.to_string()).or_default();
        slot.dirty = true;
        if !slot.queued && !slot.in_flight {
            slot.queued = true;
            let _ = self.tx.send(cluster.to_string());
        }
    }

    /// Takes the waiters of a queued cluster and marks it in flight. The caller snapshots the
    /// status AFTER this call, so the write covers every change the waiters made.
    pub fn begin(&self, cluster: &str) -> Batch {
        let mut slots = self.lock();
        let slot = slots.entry(cluster.to_string()).or_default();
        slot.queued = false;
        slot.dirty = false;
        slot.in_flight = true;
        Batch {
            cluster: cluster.to_string(),
            waiters: std::mem::take(&mut slot.waiters),
        }
    }

    /// Completes a batch; re-queues the cluster if more requests arrived meanwhile.
    pub fn finish(&self, batch: Batch, ok: bool) {
        for w in batch.waiters {
            let _ = w.send(ok);
        }
        let mut slots = self.lock();
        let requeue = match slots.get_mut(&batch.cluster) {
            Some(slot) => {
                slot.in_flight = false;
                if slot.waiters.is_empty() && !slot.dirty {
                    false
                } else {
                    slot.queued = true;
                    true
                }
            }
            None => false,
        };
        if requeue {
            let _ = self.tx.send(batch.cluster);
        } else {
            slots.remove(&batch.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_coalesce_and_never_overlap() {
        let (q, mut rx) = StatusQueue::new();
        let a = q.request("c1");
        let b = q.request("c1");
        assert_eq!(rx.recv().await.as_deref(), Some("c1"));
        let batch = q.begin("c1");
        // A request while in flight waits for the next write and does not enqueue twice.
        let c = q.request("c1");
        assert!(rx.try_recv().is_err());
        q.finish(batch, true);
        assert!(a.await.unwrap() && b.await.unwrap());
        assert_eq!(rx.recv().await.as_deref(), Some("c1"));
        let batch = q.begin("c1");
        q.finish(batch, false);
        assert!(!c.await.unwrap());
        assert!(rx.try_recv().is_err());
    }
}

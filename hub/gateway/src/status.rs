//! The SpokeAgent status writer. Sessions ask for a cluster's status to be persisted
//! ([`StatusQueue::request`]) and get a receiver that resolves once a write that includes their
//! change is durable; only then is the report acknowledged to the agent. Requests are coalesced
//! per cluster (one write covers every change made before it started) and writes for one
//! cluster never overlap, so a newer status is never overwritten by an older one.
//!
//! Pre-cache transfer progress is not a transition, but the hub's scheduler and people read it
//! from SpokeAgent status: [`ProgressCoalescer`] decides when a progress report asks for a
//! write, at most once per interval per cluster (10,000 agents reporting every few seconds
//! must not become 10,000 writes every few seconds).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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

/// What a progress report asks of the status writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressFlush {
    /// Write now.
    Now,
    /// Write at this instant (arm a timer; none is armed yet).
    At(Instant),
    /// A write is already due at a later instant: nothing to do.
    Pending,
}

#[derive(Clone, Copy, Debug, Default)]
struct ProgressSlot {
    /// When progress last asked for a write (or a transition wrote it).
    last: Option<Instant>,
    /// A deferred write is armed.
    armed: bool,
}

/// Coalesces pre-cache progress writes: at most one per `interval` per cluster, except that a
/// report the scheduler needs at once (`urgent`: the task's first total or registries) asks for
/// a write immediately.
#[derive(Debug)]
pub struct ProgressCoalescer {
    interval: Duration,
    slots: Mutex<HashMap<String, ProgressSlot>>,
}

impl ProgressCoalescer {
    /// A coalescer writing at most once per `interval` per cluster.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ProgressSlot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A progress report of `cluster` arrived at `now`.
    pub fn report(&self, cluster: &str, now: Instant, urgent: bool) -> ProgressFlush {
        let mut slots = self.lock();
        let slot = slots.entry(cluster.to_string()).or_default();
        let due = slot.last.map(|l| l + self.interval);
        if urgent || due.is_none_or(|d| d <= now) {
            slot.last = Some(now);
            return ProgressFlush::Now;
        }
        if slot.armed {
            return ProgressFlush::Pending;
        }
        slot.armed = true;
        ProgressFlush::At(due.unwrap_or(now))
    }

    /// A write that carries the latest progress was asked for at `now` for another reason (a
    /// transition, or an armed timer that fired): the interval counts from here.
    pub fn wrote(&self, cluster: &str, now: Instant) {
        let mut slots = self.lock();
        let slot = slots.entry(cluster.to_string()).or_default();
        slot.last = Some(now);
        slot.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_writes_at_most_once_per_interval_except_first_totals() {
        let c = ProgressCoalescer::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first report with registries: at once.
        assert_eq!(c.report("a", at(0), true), ProgressFlush::Now);
        // The next ones within the interval: one deferred write, at the end of the interval.
        assert_eq!(c.report("a", at(2), false), ProgressFlush::At(at(20)));
        for s in [4, 6, 8, 18] {
            assert_eq!(c.report("a", at(s), false), ProgressFlush::Pending);
        }
        // Another cluster is independent.
        assert_eq!(c.report("b", at(5), false), ProgressFlush::Now);
        // The timer fires at 20: the next report after that waits for 40.
        c.wrote("a", at(20));
        assert_eq!(c.report("a", at(21), false), ProgressFlush::At(at(40)));
        // An urgent report is written at once even with a timer armed.
        assert_eq!(c.report("a", at(22), true), ProgressFlush::Now);
        // Long after, a report is written at once.
        c.wrote("a", at(40));
        assert_eq!(c.report("a", at(61), false), ProgressFlush::Now);
    }

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

//! The simulated pre-caching agent of the `precache_budget` benchmark: one agent session on
//! the real channel (`sim_agent`), and a pre-cache task that "downloads" through a token
//! bucket at the cap the hub gives it.
//!
//! On a PRECACHE assignment the agent accepts and reports one `TaskProgress` (done 0, the
//! total, its registry). Held (`hold`), it waits; let in (an assignment or a `TaskUpdate`
//! with `hold` false) it downloads: every 100 ms tick of its own it adds `rate × elapsed` to
//! its bucket (the rate is the lower of the hub's cap and the node's link, `--node-mib`; at
//! most one second of credit is kept) and takes what the bucket holds, up to what is left. A
//! `TaskUpdate` changes the rate in flight (the credit earned so far is settled at the old
//! rate first). It reports progress (done, total, bytes/s since the last report) every 5 s,
//! then a final progress and `Succeeded`. Other task kinds are answered at once, as the
//! channel load generator does.
//!
//! What the measurement needs is recorded per agent on the benchmark's clock ([`Record`]):
//! when the task was assigned, let in and finished, the cap changes, and the bytes taken in
//! each 100 ms tick since the benchmark's start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use talm_agent::backoff::{Backoff, random_u64};
use talm_agent::conn::{ConnConfig, HubTarget, Identity};
use talm_proto::v1::{self, hub_message};
use tokio::sync::Semaphore;

use crate::sim_agent::{self, AgentSession};

/// The benchmark's clock tick: bytes are recorded per tick.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a downloading agent reports its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What every simulated agent downloads, and how fast its link is.
#[derive(Debug, Clone)]
pub struct Download {
    /// Bytes of the pre-cache task.
    pub total: u64,
    /// The node's own limit (its link), bytes/s: the rate when the hub gives no cap.
    pub node_rate: u64,
}

/// What one agent saw and did, on the benchmark's clock (seconds since its start).
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// When the pre-cache task was first assigned.
    pub assigned: Option<f64>,
    /// Whether that first assignment was held.
    pub held: bool,
    /// When it was let in (the hold lifted, or at assignment when not held).
    pub let_in: Option<f64>,
    /// When the last byte was taken.
    pub finished: Option<f64>,
    /// The hub's caps, bytes/s (0: none), with when each took effect.
    pub caps: Vec<(f64, u64)>,
    /// `TaskUpdate`s received for the task.
    pub updates: u32,
    /// Sessions opened (1 without reconnects).
    pub sessions: u32,
    /// Bytes taken per [`TICK`], from tick [`Record::first_tick`] on.
    pub bytes: Vec<u64>,
    /// The tick of `bytes[0]`.
    pub first_tick: usize,
}

impl Record {
    fn add_bytes(&mut self, tick: usize, n: u64) {
        if self.bytes.is_empty() {
            self.first_tick = tick;
        }
        let Some(i) = tick.checked_sub(self.first_tick) else {
            return;
        };
        if self.bytes.len() <= i {
            self.bytes.resize(i + 1, 0);
        }
        self.bytes[i] += n;
    }
}

/// Everything an agent shares with the benchmark.
#[derive(Debug, Clone)]
pub struct Shared {
    pub target: HubTarget,
    pub hub_ca: Vec<u8>,
    pub download: Download,
    /// The benchmark's clock.
    pub t0: Instant,
    /// Sessions up now.
    pub connected: Arc<AtomicUsize>,
    /// Pre-cache tasks finished.
    pub finished: Arc<AtomicUsize>,
    /// Limits the connection attempts in flight.
    pub ramp: Arc<Semaphore>,
}

/// The pre-cache task as the agent runs it.
#[derive(Debug)]
struct Task {
    id: String,
    hold: bool,
    /// The hub's cap, bytes/s (0: none).
    cap: u64,
    done: u64,
    credit: f64,
    /// When the bucket was last filled.
    last: Instant,
    last_progress: Instant,
    done_at_last_progress: u64,
    finished: bool,
}

struct Agent {
    shared: Shared,
    registry: String,
    id: Identity,
    rec: Arc<Mutex<Record>>,
    seq: u64,
    task: Option<Task>,
}

/// Runs one simulated agent until the benchmark ends (the task is aborted).
pub async fn run(shared: Shared, id: Identity, registry: String, rec: Arc<Mutex<Record>>) {
    let mut a = Agent {
        shared,
        registry,
        id,
        rec,
        seq: 0,
        task: None,
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    let conn = ConnConfig::default();
    loop {
        let permit = a.shared.ramp.clone().acquire_owned().await.ok();
        let (active, finished) = match &a.task {
            Some(t) if t.finished => (Vec::new(), vec![t.id.clone()]),
            Some(t) => (vec![t.id.clone()], Vec::new()),
            None => (Vec::new(), Vec::new()),
        };
        let opened = AgentSession::open(
            &a.shared.target,
            &a.shared.hub_ca,
            &a.id,
            &conn,
            active,
            finished,
        )
        .await;
        drop(permit);
        if let Ok(mut s) = opened {
            backoff.reset();
            lock(&a.rec).sessions += 1;
            a.shared.connected.fetch_add(1, Ordering::Relaxed);
            a.session(&mut s).await;
            a.shared.connected.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(backoff.next_delay(random_u64())).await;
    }
}

fn lock(rec: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    rec.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Agent {
    fn now(&self) -> f64 {
        self.shared.t0.elapsed().as_secs_f64()
    }

    fn downloading(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.hold && !t.finished)
    }

    /// The rate a cap gives: the lower of it and the node's link.
    fn rate(&self, cap: u64) -> u64 {
        if cap == 0 {
            self.shared.download.node_rate
        } else {
            cap.min(self.shared.download.node_rate)
        }
    }

    async fn session(&mut self, s: &mut AgentSession) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let downloading = self.downloading();
            tokio::select! {
                m = s.recv() => match m {
                    Some(m) => {
                        if !self.on_message(s, m).await {
                            return;
                        }
                    }
                    None => return,
                },
                _ = tick.tick(), if downloading => {
                    if !self.step(s).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one hub message; false when the session is gone.
    async fn on_message(&mut self, s: &AgentSession, m: v1::HubMessage) -> bool {
        let now = Instant::now();
        match m.msg {
            Some(hub_message::Msg::Assign(a)) if a.kind == v1::TaskKind::Precache as i32 => {
                let same = self.task.as_ref().is_some_and(|t| t.id == a.task_id);
                if !same {
                    // A new task (a cancelled or other one before it is dropped).
                    self.task = Some(Task {
                        id: a.task_id.clone(),
                        hold: true,
                        cap: 0,
                        done: 0,
                        credit: 0.0,
                        last: now,
                        last_progress: now,
                        done_at_last_progress: 0,
                        finished: false,
                    });
                    let t = self.now();
                    let mut r = lock(&self.rec);
                    let sessions = r.sessions;
                    *r = Record {
                        assigned: Some(t),
                        held: a.hold,
                        sessions,
                        ..Record::default()
                    };
                }
                if !s
                    .report(&mut self.seq, &a.task_id, sim_agent::accepted(a.kind))
                    .await
                {
                    return false;
                }
                if self.task.as_ref().is_some_and(|t| t.finished) {
                    // The hub missed the result (a session ended before it was read).
                    let total = self.shared.download.total;
                    return s
                        .progress(&a.task_id, progress(total, total, 0, &self.registry))
                        .await
                        && s.report(&mut self.seq, &a.task_id, sim_agent::succeeded())
                            .await;
                }
                self.apply(a.rate_limit_bytes_per_second, a.hold);
                let done = self.task.as_ref().map_or(0, |t| t.done);
                s.progress(
                    &a.task_id,
                    progress(done, self.shared.download.total, 0, &self.registry),
                )
                .await
            }
            Some(hub_message::Msg::Assign(a)) => {
                s.report(&mut self.seq, &a.task_id, sim_agent::accepted(a.kind))
                    .await
                    && s.report(&mut self.seq, &a.task_id, sim_agent::succeeded())
                        .await
            }
            Some(hub_message::Msg::Update(u)) => {
                if self
                    .task
                    .as_ref()
                    .is_some_and(|t| t.id == u.task_id && !t.finished)
                {
                    lock(&self.rec).updates += 1;
                    self.apply(u.rate_limit_bytes_per_second, u.hold);
                }
                true
            }
            Some(hub_message::Msg::Cancel(c)) => {
                if self
                    .task
                    .as_ref()
                    .is_some_and(|t| t.id == c.task_id && !t.finished)
                {
                    self.task = None;
                }
                true
            }
            _ => true,
        }
    }

    /// Applies the hub's cap and hold to the running task: the credit so far is settled at
    /// the old rate, then the new one applies.
    fn apply(&mut self, cap: u64, hold: bool) {
        let t_now = self.now();
        let old_rate = self.task.as_ref().map(|t| self.rate(t.cap));
        let Some(t) = self.task.as_mut() else {
            return;
        };
        if t.finished {
            return;
        }
        let now = Instant::now();
        if !t.hold
            && let Some(rate) = old_rate
        {
            t.credit += rate as f64 * now.duration_since(t.last).as_secs_f64();
        }
        t.last = now;
        let mut r = lock(&self.rec);
        if t.cap != cap || r.caps.is_empty() {
            r.caps.push((t_now, cap));
        }
        t.cap = cap;
        if t.hold && !hold {
            // Let in: the bucket starts empty.
            t.credit = 0.0;
            t.last_progress = now;
            t.done_at_last_progress = t.done;
            if r.let_in.is_none() {
                r.let_in = Some(t_now);
            }
        }
        t.hold = hold;
    }

    /// One tick of the download; false when the session is gone.
    async fn step(&mut self, s: &AgentSession) -> bool {
        let total = self.shared.download.total;
        let now = Instant::now();
        let tick = (now.duration_since(self.shared.t0).as_nanos() / TICK.as_nanos()) as usize;
        let t_now = self.now();
        let Some(cap) = self.task.as_ref().map(|t| t.cap) else {
            return true;
        };
        let rate = self.rate(cap) as f64;
        let Some(t) = self.task.as_mut() else {
            return true;
        };
        t.credit = (t.credit + rate * now.duration_since(t.last).as_secs_f64()).min(rate);
        t.last = now;
        let take = (t.credit.floor() as u64).min(total - t.done);
        t.credit -= take as f64;
        t.done += take;
        let id = t.id.clone();
        let done = t.done;
        if take > 0 {
            lock(&self.rec).add_bytes(tick, take);
        }
        if done >= total {
            t.finished = true;
            let secs = now.duration_since(t.last_progress).as_secs_f64().max(1e-3);
            let bps = ((done - t.done_at_last_progress) as f64 / secs) as u64;
            lock(&self.rec).finished = Some(t_now);
            self.shared.finished.fetch_add(1, Ordering::Relaxed);
            return s
                .progress(&id, progress(done, total, bps, &self.registry))
                .await
                && s.report(&mut self.seq, &id, sim_agent::succeeded()).await;
        }
        if now.duration_since(t.last_progress) >= PROGRESS_EVERY {
            let secs = now.duration_since(t.last_progress).as_secs_f64();
            let bps = ((done - t.done_at_last_progress) as f64 / secs) as u64;
            t.last_progress = now;
            t.done_at_last_progress = done;
            return s
                .progress(&id, progress(done, total, bps, &self.registry))
                .await;
        }
        true
    }
}

/// A PRECACHE `TaskProgress`.
fn progress(done: u64, total: u64, bytes_per_second: u64, registry: &str) -> v1::TaskProgress {
    v1::TaskProgress {
        message: format!("downloading {done}/{total}"),
        done,
        total,
        bytes_per_second,
        registries: vec![registry.to_string()],
    }
}

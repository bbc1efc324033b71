//! Task execution. A [`TaskRunner`] turns one journaled task into an outcome; the daemon wraps
//! it with the deadline and cancellation, and journals the result before reporting it.
//!
//! Runners must be idempotent per task id: after an agent restart mid-task, an unfinished task
//! is started again with the same id (a finished one never is).
//!
//! Progress goes to the hub best-effort, through [`Coalescer`]: at most one report per task
//! every `--progress-interval`, plus one at once at each phase change, and nothing when nothing
//! changed (a held pre-cache reports once, not every interval).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::clock::{Clock, SystemClock};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backup::task::BackupTaskConfig;
use crate::facts::{CONTAINERS_STORAGE, HostInfo, host_stats};
use crate::journal::{Grant, Task};

/// Live progress, forwarded to the hub best-effort (never journaled).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Task id.
    pub task_id: String,
    /// Free text.
    pub message: String,
    /// Units done (pre-cache: bytes).
    pub done: u64,
    /// Units in total (pre-cache: bytes; 0 while unknown).
    pub total: u64,
    /// Pre-cache: measured download throughput, bytes/s.
    pub bytes_per_second: u64,
    /// Pre-cache: the registry hosts pulled from, after mirror resolution, sorted.
    pub registries: Vec<String>,
    /// Sent at once rather than coalesced: the task entered a new phase (tasks other than a
    /// pre-cache mark every report so: their messages carry their state).
    pub phase_change: bool,
}

/// What a runner gets besides the task.
#[derive(Clone, Debug)]
pub struct TaskContext {
    progress: mpsc::Sender<Progress>,
    task_id: String,
    grant: watch::Receiver<Grant>,
}

impl TaskContext {
    /// A context sending progress on `progress`, with an open grant that never changes.
    pub fn new(task_id: &str, progress: mpsc::Sender<Progress>) -> Self {
        Self {
            progress,
            task_id: task_id.to_string(),
            grant: watch::channel(Grant::default()).1,
        }
    }

    /// Follows the hub's grant of this task (hold, cap) on `grant`.
    pub fn with_grant(mut self, grant: watch::Receiver<Grant>) -> Self {
        self.grant = grant;
        self
    }

    /// The hub's grant of this task, as it changes.
    pub fn grant(&self) -> watch::Receiver<Grant> {
        self.grant.clone()
    }

    /// Reports `p` (its task id is set here; dropped when the channel is full).
    pub fn report(&self, mut p: Progress) {
        p.task_id.clone_from(&self.task_id);
        let _ = self.progress.try_send(p);
    }

    /// The task this context belongs to.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Reports progress, sent at once (dropped when the channel is full: progress is best
    /// effort).
    pub fn progress(&self, message: &str, done: u64, total: u64) {
        self.report(Progress {
            message: message.to_string(),
            done,
            total,
            phase_change: true,
            ..Default::default()
        });
    }
}

/// The default of `--progress-interval`.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Thins out progress on its way to the hub, per task: the first report and every phase
/// change go at once; otherwise at most one every `interval` (the latest, held back until its
/// time); a report equal to the last one sent is dropped. One per session (a new session
/// starts by sending what it gets).
#[derive(Debug)]
pub struct Coalescer {
    interval: Duration,
    tasks: HashMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    sent_at: Instant,
    sent: Progress,
    pending: Option<Progress>,
}

impl Coalescer {
    /// A coalescer sending at most one report per task every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            tasks: HashMap::new(),
        }
    }

    /// Offers a report made at `now`: returns it when it is to be sent now, otherwise keeps it
    /// (the latest wins) for [`Self::take_due`].
    pub fn offer(&mut self, p: Progress, now: Instant) -> Option<Progress> {
        let Some(slot) = self.tasks.get_mut(&p.task_id) else {
            self.tasks.insert(
                p.task_id.clone(),
                Slot {
                    sent_at: now,
                    sent: p.clone(),
                    pending: None,
                },
            );
            return Some(p);
        };
        if same_content(&slot.sent, &p) {
            slot.pending = None;
            return None;
        }
        if p.phase_change || now >= slot.sent_at + self.interval {
            slot.sent_at = now;
            slot.sent = p.clone();
            slot.pending = None;
            return Some(p);
        }
        slot.pending = Some(p);
        None
    }

    /// When the next held-back report is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.tasks
            .values()
            .filter(|s| s.pending.is_some())
            .map(|s| s.sent_at + self.interval)
            .min()
    }

    /// Drops what is held back for `task_id` (its result is being sent: later progress would
    /// be stale).
    pub fn forget(&mut self, task_id: &str) {
        self.tasks.remove(task_id);
    }

    /// The held-back reports due at `now`. Tasks quiet for a while are forgotten (their next
    /// report goes at once, as it would anyway).
    pub fn take_due(&mut self, now: Instant) -> Vec<Progress> {
        let mut out = Vec::new();
        for slot in self.tasks.values_mut() {
            if now >= slot.sent_at + self.interval
                && let Some(p) = slot.pending.take()
            {
                slot.sent_at = now;
                slot.sent = p.clone();
                out.push(p);
            }
        }
        let forget = self.interval * 4;
        self.tasks
            .retain(|_, s| s.pending.is_some() || now < s.sent_at + forget);
        out
    }
}

/// Equal but for the phase-change flag.
fn same_content(a: &Progress, b: &Progress) -> bool {
    a.message == b.message
        && a.done == b.done
        && a.total == b.total
        && a.bytes_per_second == b.bytes_per_second
        && a.registries == b.registries
}

/// A boxed runner future.
pub type RunFuture = Pin<Box<dyn Future<Output = (TaskOutcome, String)> + Send>>;

/// Runs tasks.
pub trait TaskRunner: Send + Sync + std::fmt::Debug {
    /// Runs `task` to an outcome and a message.
    fn run(&self, task: Task, ctx: TaskContext) -> RunFuture;

    /// Why the hub's cancel of the running task `task_id` must not end it (`None`: it may).
    /// Only a rollback watchdog whose recovery has started refuses: cancelling the task cannot
    /// stop `talm-recover.service`, it would only hide the recovery's outcome from the hub.
    fn refuses_cancel(&self, _task_id: &str) -> Option<String> {
        None
    }
}

/// The real runner.
#[derive(Debug, Clone)]
pub struct HostRunner {
    host: Arc<dyn HostInfo>,
    clock: Arc<dyn Clock>,
    precache: Option<PrecacheSettings>,
    backup: Option<Arc<BackupTaskConfig>>,
    approvals: Option<crate::installplans::ApprovalSettings>,
    watchdog: Option<crate::watchdog::WatchdogSettings>,
}

/// How `Precache` tasks run (the daemon's `--state-dir`, `--host-root` and `--precache-*`
/// flags).
#[derive(Clone, Debug)]
pub struct PrecacheSettings {
    /// Engine options (the task id and deadline are filled in per task).
    pub options: crate::precache::Options,
    /// Runs skopeo.
    pub runner: Arc<dyn crate::host::exec::CommandRunner>,
}

impl HostRunner {
    /// A runner over `host` (pre-cache, backup and InstallPlan-approval tasks are rejected
    /// until [`Self::with_precache`] / [`Self::with_backup`] / [`Self::with_approvals`]), on
    /// the system clock until [`Self::with_clock`].
    pub fn new(host: Arc<dyn HostInfo>) -> Self {
        Self {
            host,
            clock: Arc::new(SystemClock),
            precache: None,
            backup: None,
            approvals: None,
            watchdog: None,
        }
    }

    /// Reads the time (pre-cache deadlines and status times) from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Enables `ApproveInstallPlans` tasks.
    pub fn with_approvals(mut self, settings: crate::installplans::ApprovalSettings) -> Self {
        self.approvals = Some(settings);
        self
    }

    /// Enables `Rollback` (watchdog) tasks.
    pub fn with_watchdog(mut self, settings: crate::watchdog::WatchdogSettings) -> Self {
        self.watchdog = Some(settings);
        self
    }

    /// Also runs hub-assigned backups with `cfg`.
    pub fn with_backup(mut self, cfg: BackupTaskConfig) -> Self {
        self.backup = Some(Arc::new(cfg));
        self
    }

    /// Enables `Precache` tasks.
    pub fn with_precache(mut self, settings: PrecacheSettings) -> Self {
        self.precache = Some(settings);
        self
    }
}

/// The engine stops this long before the task's deadline, so that it reports
/// `PrecacheTimeout` itself (with its status file updated) before the daemon's own timer fires.
const PRECACHE_DEADLINE_MARGIN_SECS: i64 = 2;

/// Runs a `Precache` task: the params are a `PrecachingSpec` (JSON, camelCase).
async fn run_precache(
    settings: PrecacheSettings,
    host: Arc<dyn HostInfo>,
    clock: Arc<dyn Clock>,
    task: Task,
    ctx: TaskContext,
) -> (TaskOutcome, String) {
    use crate::precache::{self, PrecacheError};
    let spec: talm_shared::api::cgu::PrecachingSpec = match serde_json::from_str(&task.params_json)
    {
        Ok(s) => s,
        Err(e) => {
            return (
                TaskOutcome::Rejected,
                format!("the pre-cache spec is not a PrecachingSpec: {e}"),
            );
        }
    };
    if let Err(e) = precache::spec::validate(&spec) {
        return (
            TaskOutcome::Rejected,
            format!("invalid pre-cache spec: {e}"),
        );
    }
    let mut opts = settings.options.clone();
    opts.task_id = task.id.clone();
    if task.deadline_unix > 0 {
        let left = (task.deadline_unix - clock.unix() - PRECACHE_DEADLINE_MARGIN_SECS).max(0);
        opts.deadline =
            Some(tokio::time::Instant::now() + std::time::Duration::from_secs(left.unsigned_abs()));
    }
    let deps = precache::Deps {
        host,
        runner: settings.runner.clone(),
        clock,
    };
    opts.grant = Some(ctx.grant());
    let progress = ctx.clone();
    let last_phase = Mutex::new(None);
    let observer: precache::Observer = Arc::new(move |s: &precache::status::PrecacheStatus| {
        let phase_change = {
            let mut last = last_phase.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *last != Some(s.phase);
            *last = Some(s.phase);
            changed
        };
        progress.report(transfer_progress(s, phase_change));
    });
    match precache::run(&opts, &spec, &deps, observer).await {
        Ok(s) => (
            TaskOutcome::Succeeded,
            format!(
                "{} images pre-cached ({} already present), {} fetched",
                s.images_total,
                s.counters.images_present,
                precache::status::human_bytes(s.counters.bytes_fetched)
            ),
        ),
        Err(e @ PrecacheError::Deadline { .. }) => (TaskOutcome::TimedOut, e.to_string()),
        Err(e) => (TaskOutcome::Failed, e.to_string()),
    }
}

/// What a pre-cache reports to the hub: bytes done and in all, the throughput, the
/// registries; while held, "queued by the hub's pre-cache budget" and no throughput.
pub fn transfer_progress(
    s: &crate::precache::status::PrecacheStatus,
    phase_change: bool,
) -> Progress {
    use crate::precache::status::{Phase, human_bytes};
    let held = s.phase == Phase::Held;
    let message = if held {
        "queued by the hub's pre-cache budget".to_string()
    } else {
        format!(
            "{:?}: {}/{} images, {}/s",
            s.state,
            s.images_done,
            s.images_total,
            human_bytes(s.rate_bytes_per_sec)
        )
    };
    Progress {
        message,
        done: s.bytes_done,
        total: s.bytes_total,
        bytes_per_second: if held { 0 } else { s.rate_bytes_per_sec },
        registries: s.registries.clone(),
        phase_change,
        ..Default::default()
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// TALM's `check_space`: with `high` the image-GC threshold, `avail = high% × size − used`;
/// the check passes when `avail ≥ required` (or, with no requirement, when `avail > 0`).
pub fn check_space(host: &dyn HostInfo, space_required_gib: u64) -> (TaskOutcome, String) {
    let stats = match host_stats(host, CONTAINERS_STORAGE) {
        Ok(s) => s,
        Err(e) => {
            return (
                TaskOutcome::Failed,
                format!("statvfs {CONTAINERS_STORAGE}: {e}"),
            );
        }
    };
    let high = u128::from(host.image_gc_high_threshold());
    let allowed = u128::from(stats.size) * high / 100;
    let avail = allowed.saturating_sub(u128::from(stats.used()));
    let need = u128::from(space_required_gib) * u128::from(GIB);
    let ok = if space_required_gib > 0 {
        avail >= need
    } else {
        avail > 0
    };
    let detail = format!(
        "{:.1} GiB available under the {high}% image-GC threshold of {:.1} GiB, {space_required_gib} GiB required",
        avail as f64 / GIB as f64,
        stats.size as f64 / GIB as f64,
    );
    if ok {
        (TaskOutcome::Succeeded, detail)
    } else {
        (
            TaskOutcome::Failed,
            format!("not enough space for precaching: {detail}"),
        )
    }
}

impl TaskRunner for HostRunner {
    fn refuses_cancel(&self, task_id: &str) -> Option<String> {
        self.watchdog
            .as_ref()
            .and_then(|w| crate::watchdog::refuses_cancel(&w.state_dir, task_id))
    }

    fn run(&self, task: Task, ctx: TaskContext) -> RunFuture {
        let host = self.host.clone();
        let backup = self.backup.clone();
        let precache = self.precache.clone();
        let approvals = self.approvals.clone();
        let watchdog = self.watchdog.clone();
        let clock = self.clock.clone();
        Box::pin(async move {
            match TaskKind::try_from(task.kind) {
                Ok(TaskKind::CheckSpace) => {
                    let params: serde_json::Value =
                        serde_json::from_str(&task.params_json).unwrap_or_default();
                    let raw = params
                        .get("spaceRequired")
                        .and_then(|v| v.as_str())
                        .unwrap_or("0");
                    let Ok(gib) = raw.trim().parse::<u64>() else {
                        return (
                            TaskOutcome::Rejected,
                            format!("spaceRequired {raw:?} is not a GiB integer"),
                        );
                    };
                    ctx.progress("measuring containers storage", 0, 1);
                    let out = tokio::task::spawn_blocking(move || check_space(host.as_ref(), gib))
                        .await
                        .unwrap_or((TaskOutcome::Failed, "check-space task panicked".into()));
                    ctx.progress("done", 1, 1);
                    out
                }
                Ok(TaskKind::Backup) => match backup {
                    Some(cfg) => crate::backup::task::run_task(&cfg, task, ctx).await,
                    None => (
                        TaskOutcome::Rejected,
                        "this agent was started without backup settings".to_string(),
                    ),
                },
                Ok(TaskKind::Precache) => match precache {
                    Some(p) => run_precache(p, host, clock, task, ctx).await,
                    None => (
                        TaskOutcome::Rejected,
                        "pre-caching is not configured in this agent".to_string(),
                    ),
                },
                Ok(TaskKind::ApproveInstallPlans) => match approvals {
                    Some(a) => crate::installplans::run_task(&a, &task.params_json, ctx).await,
                    None => (
                        TaskOutcome::Rejected,
                        "InstallPlan approval is not configured in this agent".to_string(),
                    ),
                },
                Ok(TaskKind::Rollback) => match watchdog {
                    Some(w) => crate::watchdog::run_task(&w, clock.as_ref(), &task, ctx).await,
                    None => (
                        TaskOutcome::Rejected,
                        "the rollback watchdog is not configured in this agent".to_string(),
                    ),
                },
                _ => (
                    TaskOutcome::Rejected,
                    format!("unknown task kind {}", task.kind),
                ),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::disk::{Disk, FsStats};
    use crate::host::root::HostRoot;

    #[derive(Debug)]
    struct Fake(FsStats, u32, HostRoot);
    impl Disk for Fake {
        fn stats(&self, _: &std::path::Path) -> std::io::Result<FsStats> {
            Ok(self.0)
        }
        fn is_mount_point(&self, _: &std::path::Path) -> std::io::Result<bool> {
            Ok(false)
        }
    }
    impl HostInfo for Fake {
        fn root(&self) -> &HostRoot {
            &self.2
        }
        fn image_gc_high_threshold(&self) -> u32 {
            self.1
        }
        fn facts(&self) -> talm_proto::v1::NodeFacts {
            Default::default()
        }
    }

    fn precache_task(params: &str, deadline_unix: i64) -> Task {
        Task {
            id: "ns/cgu/uid/precache".into(),
            kind: TaskKind::Precache as i32,
            params_json: params.into(),
            deadline_unix,
            state: crate::journal::TaskState::Running,
            message: String::new(),
            starts: 1,
            accepted_at: 0,
            finished_at: None,
        }
    }

    fn roomy() -> Arc<dyn HostInfo> {
        Arc::new(Fake(
            FsStats {
                size: 100 * GIB,
                free: 90 * GIB,
                available: 90 * GIB,
            },
            85,
            HostRoot::new("/"),
        ))
    }

    #[tokio::test]
    async fn precache_tasks_run_the_engine_and_map_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let ctx = TaskContext::new("t", tx);
        // Not configured: rejected.
        let plain = HostRunner::new(roomy());
        let (o, _) = plain.run(precache_task("{}", 0), ctx.clone()).await;
        assert_eq!(o, TaskOutcome::Rejected);
        let mut options = crate::precache::Options::new(dir.path(), dir.path());
        options.retry.retries = 0;
        let runner = HostRunner::new(roomy()).with_precache(PrecacheSettings {
            options,
            runner: Arc::new(crate::host::exec::RecordingRunner::new()),
        });
        // Not a PrecachingSpec, or an unusable one: rejected with the reason.
        let (o, msg) = runner.run(precache_task("[1]", 0), ctx.clone()).await;
        assert_eq!(o, TaskOutcome::Rejected, "{msg}");
        let (o, msg) = runner
            .run(precache_task(r#"{"spaceRequired":"3"}"#, 0), ctx.clone())
            .await;
        assert_eq!(o, TaskOutcome::Rejected);
        assert!(msg.contains("no software spec"), "{msg}");
        // Nothing listens on port 1: Failed (UnrecoverableError), naming the image.
        let spec = r#"{"additionalImages":["127.0.0.1:1/a/b:v1"],"spaceRequired":"1"}"#;
        let (o, msg) = runner.run(precache_task(spec, 0), ctx.clone()).await;
        assert_eq!(o, TaskOutcome::Failed, "{msg}");
        assert!(msg.contains("127.0.0.1:1/a/b:v1"), "{msg}");
        let status = crate::precache::status::load(dir.path()).unwrap();
        assert_eq!(
            status.state,
            crate::precache::status::State::UnrecoverableError
        );
        assert_eq!(status.task_id, "ns/cgu/uid/precache");
        // A deadline already past: TimedOut (the hub's PrecacheTimeout).
        let (o, msg) = runner.run(precache_task(spec, 1), ctx.clone()).await;
        assert_eq!(o, TaskOutcome::TimedOut, "{msg}");
        assert_eq!(
            crate::precache::status::load(dir.path()).unwrap().state,
            crate::precache::status::State::PrecacheTimeout
        );
        // Progress reached the channel.
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn check_space_follows_talms_formula() {
        // 100 GiB disk, 50 GiB used, threshold 85% -> 35 GiB available.
        let h = Fake(
            FsStats {
                size: 100 * GIB,
                free: 50 * GIB,
                available: 50 * GIB,
            },
            85,
            HostRoot::new("/"),
        );
        assert_eq!(check_space(&h, 35).0, TaskOutcome::Succeeded);
        let (o, msg) = check_space(&h, 36);
        assert_eq!(o, TaskOutcome::Failed);
        assert!(msg.starts_with("not enough space for precaching"), "{msg}");
        // Already above the threshold: fails even with no requirement.
        let full = Fake(
            FsStats {
                size: 100 * GIB,
                free: 10 * GIB,
                available: 10 * GIB,
            },
            85,
            HostRoot::new("/"),
        );
        assert_eq!(check_space(&full, 0).0, TaskOutcome::Failed);
        assert_eq!(check_space(&h, 0).0, TaskOutcome::Succeeded);
    }

    fn transfer(task: &str, done: u64, phase_change: bool) -> Progress {
        Progress {
            task_id: task.into(),
            message: format!("Active: {done}"),
            done,
            total: 1_000,
            bytes_per_second: 10,
            registries: vec!["mirror.example:5000".into()],
            phase_change,
        }
    }

    /// Progress reaching the hub on the paused clock: the first and phase changes at once,
    /// otherwise at most one per interval (the latest), nothing when nothing changed, and
    /// nothing stale after the result.
    #[tokio::test(start_paused = true)]
    async fn progress_is_coalesced_per_task_on_the_paused_clock() {
        let every = Duration::from_secs(5);
        let mut c = Coalescer::new(every);
        let t0 = Instant::now();
        let mut sent: Vec<(Duration, Progress)> = Vec::new();
        // A report every 500 ms for 12 s, as the pre-cache's ticker does; a phase change at 7 s.
        for tick in 0..24u64 {
            let now = t0 + Duration::from_millis(500 * tick);
            tokio::time::sleep_until(now).await;
            for p in c.take_due(now) {
                sent.push((now - t0, p));
            }
            let p = transfer("a", tick * 10, tick == 14);
            if let Some(p) = c.offer(p, now) {
                sent.push((now - t0, p));
            }
        }
        let at: Vec<(u64, u64)> = sent
            .iter()
            .map(|(t, p)| (t.as_millis() as u64, p.done))
            .collect();
        // 0 s: the first; 5 s: the latest held back (done 90, from 4.5 s); 7 s: the phase
        // change (140) at once; the next is due at 12 s.
        assert_eq!(at, vec![(0, 0), (5_000, 90), (7_000, 140)]);
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(12)));
        let late = t0 + Duration::from_secs(12);
        tokio::time::sleep_until(late).await;
        let due = c.take_due(late);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].done, 230,
            "the latest report, not the first held back"
        );
        // Nothing new: a held task reports once, not every interval.
        let same = due[0].clone();
        assert_eq!(c.offer(same.clone(), late + every * 2), None);
        assert_eq!(c.next_due(), None);
        // Another task is independent of the first.
        assert!(c.offer(transfer("b", 1, false), late).is_some());
        // The result is on its way: what is held back for the task is dropped.
        assert_eq!(c.offer(transfer("b", 2, false), late), None);
        c.forget("b");
        assert_eq!(c.next_due(), None);
        assert!(c.take_due(late + every * 10).is_empty());
    }

    #[test]
    fn a_held_precache_reports_its_total_and_registries_and_no_throughput() {
        use crate::precache::status::{Phase, PrecacheStatus, State};
        let mut s = PrecacheStatus {
            state: State::Starting,
            phase: Phase::Held,
            bytes_done: 300,
            bytes_total: 1_000,
            rate_bytes_per_sec: 77,
            registries: vec!["a.example".into(), "b.example:5000".into()],
            ..Default::default()
        };
        let p = transfer_progress(&s, true);
        assert_eq!(p.message, "queued by the hub's pre-cache budget");
        assert_eq!((p.done, p.total, p.bytes_per_second), (300, 1_000, 0));
        assert_eq!(p.registries, s.registries);
        assert!(p.phase_change);
        s.phase = Phase::Fetching;
        s.state = State::Active;
        let p = transfer_progress(&s, false);
        assert_eq!(p.bytes_per_second, 77);
        assert!(p.message.starts_with("Active: "), "{}", p.message);
    }
}

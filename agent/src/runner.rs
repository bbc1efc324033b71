//! Task execution. A [`TaskRunner`] turns one journaled task into an outcome; the daemon wraps
//! it with the deadline and cancellation, and journals the result before reporting it.
//!
//! Runners must be idempotent per task id: after an agent restart mid-task, an unfinished task
//! is started again with the same id (a finished one never is).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::clock::{Clock, SystemClock};
use tokio::sync::mpsc;

use crate::backup::task::BackupTaskConfig;
use crate::facts::{CONTAINERS_STORAGE, HostInfo, host_stats};
use crate::journal::Task;

/// Live progress, forwarded to the hub best-effort (never journaled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Task id.
    pub task_id: String,
    /// Free text.
    pub message: String,
    /// Units done.
    pub done: u64,
    /// Units in total.
    pub total: u64,
}

/// What a runner gets besides the task.
#[derive(Clone, Debug)]
pub struct TaskContext {
    progress: mpsc::Sender<Progress>,
    task_id: String,
}

impl TaskContext {
    /// A context sending progress on `progress`.
    pub fn new(task_id: &str, progress: mpsc::Sender<Progress>) -> Self {
        Self {
            progress,
            task_id: task_id.to_string(),
        }
    }

    /// The task this context belongs to.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Reports progress (dropped when the channel is full: progress is best effort).
    pub fn progress(&self, message: &str, done: u64, total: u64) {
        let _ = self.progress.try_send(Progress {
            task_id: self.task_id.clone(),
            message: message.to_string(),
            done,
            total,
        });
    }
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
    let progress = ctx.clone();
    let observer: precache::Observer = Arc::new(move |s: &precache::status::PrecacheStatus| {
        progress.progress(
            &format!(
                "{:?}: {}/{} images, {}/s",
                s.state,
                s.images_done,
                s.images_total,
                precache::status::human_bytes(s.rate_bytes_per_sec)
            ),
            s.bytes_done,
            s.bytes_total,
        );
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
}

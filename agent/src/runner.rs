//! Task execution. A [`TaskRunner`] turns one journaled task into an outcome; the daemon wraps
//! it with the deadline and cancellation, and journals the result before reporting it.
//!
//! Runners must be idempotent per task id: after an agent restart mid-task, an unfinished task
//! is started again with the same id (a finished one never is).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use talm_proto::v1::{TaskKind, TaskOutcome};
use tokio::sync::mpsc;

use crate::backup::task::BackupTaskConfig;
use crate::facts::{CONTAINERS_STORAGE, HostInfo};
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
}

/// The real runner.
#[derive(Debug, Clone)]
pub struct HostRunner {
    host: Arc<dyn HostInfo>,
    backup: Option<Arc<BackupTaskConfig>>,
}

impl HostRunner {
    /// A runner over `host` (backup tasks are rejected until [`HostRunner::with_backup`]).
    pub fn new(host: Arc<dyn HostInfo>) -> Self {
        Self { host, backup: None }
    }

    /// Also runs hub-assigned backups with `cfg`.
    pub fn with_backup(mut self, cfg: BackupTaskConfig) -> Self {
        self.backup = Some(Arc::new(cfg));
        self
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// TALM's `check_space`: with `high` the image-GC threshold, `avail = high% × size − used`;
/// the check passes when `avail ≥ required` (or, with no requirement, when `avail > 0`).
pub fn check_space(host: &dyn HostInfo, space_required_gib: u64) -> (TaskOutcome, String) {
    let stats = match host.statvfs(CONTAINERS_STORAGE) {
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
    fn run(&self, task: Task, ctx: TaskContext) -> RunFuture {
        let host = self.host.clone();
        let backup = self.backup.clone();
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
                Ok(k @ TaskKind::Precache) => (
                    TaskOutcome::Rejected,
                    format!(
                        "task kind {} is not supported by talm-agent {} yet",
                        k.as_str_name(),
                        crate::VERSION
                    ),
                ),
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
    use crate::facts::FsStats;

    #[derive(Debug)]
    struct Fake(FsStats, u32);
    impl HostInfo for Fake {
        fn statvfs(&self, _: &str) -> std::io::Result<FsStats> {
            Ok(self.0)
        }
        fn image_gc_high_threshold(&self) -> u32 {
            self.1
        }
        fn facts(&self) -> talm_proto::v1::NodeFacts {
            Default::default()
        }
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
        );
        assert_eq!(check_space(&full, 0).0, TaskOutcome::Failed);
        assert_eq!(check_space(&h, 0).0, TaskOutcome::Succeeded);
    }
}

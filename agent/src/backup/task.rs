//! The hub-assigned `Backup` task: runs [`super::run`] for the daemon, with the task's deadline,
//! the hub's cancel, and progress forwarded on the channel.
//!
//! The backup itself is blocking work (archives, fsyncs, the etcd snapshot), so it runs on a
//! blocking thread. The daemon ends a task by dropping its future (deadline or cancel); a drop
//! guard then raises a flag that [`Progress::proceed`] reads, so the backup stops at the next
//! step boundary and the previous backup stays intact. The deadline is also handed to the
//! backup itself, which checks it inside long steps.
//!
//! Outcomes map to TALM's backup states through the gateway: success → `Succeeded`, the
//! deadline → `BackupTimeout`, anything else → `UnrecoverableError` with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use talm_proto::v1::TaskOutcome;
use talm_shared::clock::Clock;

use super::{BackupConfig, BackupError, Progress, Step};
use crate::journal::Task;
use crate::runner::TaskContext;

/// What the daemon needs to take backups: a configuration template (host, directory, etcd
/// access, compression) and the clock that names the backup and turns the task's deadline into
/// an instant.
#[derive(Clone, Debug)]
pub struct BackupTaskConfig {
    /// The template; `timestamp` and `deadline` are set per task.
    pub template: BackupConfig,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl BackupTaskConfig {
    /// The configuration for one task: named after now, stopping at the task's deadline.
    pub fn for_task(&self, task: &Task) -> BackupConfig {
        let now = self.clock.unix();
        let mut cfg = self.template.clone();
        cfg.timestamp = jiff::Timestamp::from_second(now)
            .map(|t| t.strftime("%Y-%m-%d_%H%M%S").to_string())
            .unwrap_or_else(|_| now.to_string());
        cfg.deadline = (task.deadline_unix > 0).then(|| {
            let left = task.deadline_unix.saturating_sub(now).max(0);
            Instant::now() + Duration::from_secs(left.unsigned_abs())
        });
        cfg
    }
}

/// Progress of a hub-assigned backup: steps and bytes go to the hub (best effort); `proceed`
/// says no once the daemon dropped the task.
#[derive(Debug)]
struct ChannelProgress {
    ctx: TaskContext,
    stop: Arc<AtomicBool>,
    total: AtomicU64,
    done: AtomicU64,
    step: std::sync::Mutex<&'static str>,
    last_sent: AtomicU64,
}

impl ChannelProgress {
    fn send(&self, force: bool) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        // Forward at most every 1% of the total (and every step change): progress is chatter.
        let last = self.last_sent.load(Ordering::Relaxed);
        if !force && done.saturating_sub(last) < (total / 100).max(1) {
            return;
        }
        self.last_sent.store(done, Ordering::Relaxed);
        let step = *self.step.lock().unwrap_or_else(|p| p.into_inner());
        self.ctx
            .progress(&format!("backup: {step}"), done, total.max(done));
    }
}

impl Progress for ChannelProgress {
    fn step(&self, step: Step) {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = step.name();
        self.send(true);
    }
    fn total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.send(false);
    }
    fn warn(&self, msg: &str) {
        tracing::warn!(task = %self.ctx.task_id(), "{msg}");
    }
    fn proceed(&self, _after: Step) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }
}

/// Raises the stop flag when the task's future is dropped (deadline, cancel, shutdown).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The task outcome for a backup result.
pub fn outcome(result: &Result<super::BackupReport, BackupError>) -> (TaskOutcome, String) {
    match result {
        Ok(r) => {
            let mut msg = format!(
                "backup complete: {} artifacts, {} bytes in {}",
                r.manifest.artifacts.len(),
                r.bytes,
                r.dir.display()
            );
            for w in &r.warnings {
                msg.push_str("; warning: ");
                msg.push_str(w);
            }
            (TaskOutcome::Succeeded, msg)
        }
        Err(e @ BackupError::Deadline { .. }) => (TaskOutcome::TimedOut, e.to_string()),
        Err(e @ BackupError::Stopped { .. }) => (TaskOutcome::Cancelled, e.to_string()),
        Err(e) => (TaskOutcome::Failed, e.to_string()),
    }
}

/// Runs one backup task to an outcome.
pub async fn run_task(
    cfg: &BackupTaskConfig,
    task: Task,
    ctx: TaskContext,
) -> (TaskOutcome, String) {
    let backup = cfg.for_task(&task);
    let stop = Arc::new(AtomicBool::new(false));
    let _guard = StopOnDrop(stop.clone());
    let progress = ChannelProgress {
        ctx,
        stop,
        total: AtomicU64::new(0),
        done: AtomicU64::new(0),
        step: std::sync::Mutex::new("checks"),
        last_sent: AtomicU64::new(0),
    };
    let joined = tokio::task::spawn_blocking(move || {
        let result = super::run(&backup, &progress);
        outcome(&result)
    })
    .await;
    joined.unwrap_or_else(|e| {
        (
            TaskOutcome::Failed,
            format!("the backup task panicked: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backup::{EtcdAccess, Host};
    use crate::host::archive::Compression;
    use crate::host::disk::RealDisk;
    use crate::host::exec::RecordingRunner;
    use crate::host::root::HostRoot;
    use crate::journal::TaskState;
    use std::path::PathBuf;
    use talm_shared::clock::ManualClock;

    fn cfg(now: i64) -> BackupTaskConfig {
        BackupTaskConfig {
            template: BackupConfig {
                host: Host {
                    root: HostRoot::new("/nonexistent"),
                    runner: Arc::new(RecordingRunner::new()),
                    disk: Arc::new(RealDisk),
                },
                dir: PathBuf::from("/var/recovery"),
                margin: 0,
                etcd: EtcdAccess {
                    endpoints: vec![],
                    ca: None,
                    cert: None,
                    key: None,
                },
                compression: Compression::None,
                deadline: None,
                timestamp: String::new(),
            },
            clock: Arc::new(ManualClock::at_unix(now)),
        }
    }

    fn task(deadline_unix: i64) -> Task {
        Task {
            id: "t".into(),
            kind: talm_proto::v1::TaskKind::Backup as i32,
            params_json: "{}".into(),
            deadline_unix,
            state: TaskState::Running,
            message: String::new(),
            starts: 1,
            accepted_at: 0,
            finished_at: None,
        }
    }

    #[test]
    fn each_task_is_named_after_now_and_stops_at_its_deadline() {
        // 2026-11-25T20:45:12Z
        let c = cfg(1_795_639_512);
        let before = Instant::now();
        let b = c.for_task(&task(1_795_639_512 + 300));
        assert_eq!(b.timestamp, "2026-11-25_204512");
        let d = b.deadline.unwrap();
        assert!(d >= before + Duration::from_secs(300));
        assert!(d <= Instant::now() + Duration::from_secs(300));
        assert!(c.for_task(&task(0)).deadline.is_none(), "0 = no deadline");
        // A deadline already passed gives an instant that is already due.
        assert!(c.for_task(&task(1)).deadline.unwrap() <= Instant::now());
    }

    #[test]
    fn failures_map_to_talms_backup_states_through_the_outcome() {
        let dl = Err(BackupError::Deadline {
            step: "etcd snapshot",
        });
        assert_eq!(outcome(&dl).0, TaskOutcome::TimedOut);
        let stopped = Err(BackupError::Stopped { step: "ostree" });
        assert_eq!(outcome(&stopped).0, TaskOutcome::Cancelled);
        let other = Err(BackupError::Io {
            path: PathBuf::from("/var/recovery"),
            source: std::io::Error::other("boom"),
        });
        let (o, msg) = outcome(&other);
        assert_eq!(o, TaskOutcome::Failed);
        assert!(
            msg.contains("/var/recovery") && msg.contains("boom"),
            "{msg}"
        );
    }
}

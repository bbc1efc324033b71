//! The automatic-rollback watchdog (issue 18): the `Rollback` task the hub assigns when it
//! releases a cluster with `spec.recovery.automatic` into its upgrade, and
//! `talm-agent rollback disarm`.
//!
//! The task polls the node's health ([`health`], through the node's own API server) until the
//! node is healthy or its health timeout (`armedAt + healthTimeoutSeconds`, absolute Unix
//! seconds, so restarts and reboots do not move it) has passed:
//! - healthy at a check (even one made after the timeout, e.g. the first check after the
//!   agent was down across it): the task ends `Succeeded` ("Healthy"), nothing is touched. A
//!   node seen healthy is never rolled back.
//! - not healthy at a check made at or after the timeout: progress `RollingBack: ...`, the
//!   marker that arms `talm-recover.service` is written
//!   ([`crate::recovery::unattended::arm`]) and the unit is started with
//!   `systemctl start --no-block talm-recover.service` (the one exec module); from then on
//!   the task only follows the unit's outcome file: `RolledBack` ends it `RolledBack`,
//!   `RollbackFailed` ends it `Failed` with the step and the reason.
//! - a person ran `talm-agent rollback disarm` (before the recovery started): `Cancelled`,
//!   nothing touched.
//!
//! The hub is never consulted: losing it does not change a decision; the daemon journals the
//! result and resends it when the channel returns. The watchdog's own state (armed since,
//! the last health check's reasons, the recovery's phase) is kept in `watchdog.json` in the
//! state directory, replaced atomically; `talm-agent status` shows it, and a restarted task
//! continues from it (once `RollingBack`, it never goes back to checking health).

pub mod health;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use talm_proto::v1::TaskOutcome;
use talm_shared::clock::Clock;
use talm_shared::fsutil::atomic_write;
use talm_shared::task_state::TaskState;

use crate::host::exec::{Cmd, CommandRunner};
use crate::journal::Task;
use crate::recovery::unattended;
use crate::runner::TaskContext;

/// The unit that carries the recovery out (shipped in `systemd/`).
pub const RECOVER_UNIT: &str = "talm-recover.service";
/// The watchdog's state, in the state directory.
pub const STATE_FILE: &str = "watchdog.json";
/// A person's disarm request, in the state directory (holds the task id).
pub const DISARM_FILE: &str = "watchdog.disarm";

/// The task's parameters (JSON, camelCase; proto `TASK_KIND_ROLLBACK`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// When the hub armed the watchdog (Unix seconds).
    pub armed_at: i64,
    /// How long the node has to become healthy.
    pub health_timeout_seconds: u64,
    /// The version the ClusterVersion must be at, when the upgrade has one.
    #[serde(default)]
    pub target_version: Option<String>,
}

/// Parses and checks the parameters.
pub fn parse_params(raw: &str) -> Result<Params, String> {
    let p: Params = serde_json::from_str(raw).map_err(|e| format!("rollback params: {e}"))?;
    if p.armed_at <= 0 {
        return Err(format!(
            "rollback params: armedAt {} is not a Unix time",
            p.armed_at
        ));
    }
    if p.health_timeout_seconds == 0 {
        return Err("rollback params: healthTimeoutSeconds must be at least 1".into());
    }
    if p.target_version
        .as_deref()
        .is_some_and(|v| v.trim().is_empty())
    {
        return Err("rollback params: targetVersion is empty".into());
    }
    Ok(p)
}

/// How `Rollback` tasks run.
#[derive(Clone, Debug)]
pub struct WatchdogSettings {
    /// The spoke API's kubeconfig (the one the InstallPlan task uses).
    pub kubeconfig: PathBuf,
    /// The agent's state directory ([`STATE_FILE`], [`DISARM_FILE`]).
    pub state_dir: PathBuf,
    /// The recovery directory as the agent sees it (under the host root).
    pub recovery_dir: PathBuf,
    /// Time between health checks, and between looks at the recovery's outcome.
    pub poll: Duration,
    /// How long one round of health checks may take; a round that does not answer in time
    /// counts as "not healthy" with that reason (a hung API server must not stall the
    /// watchdog past its timeout).
    pub check_timeout: Duration,
    /// Runs `systemctl`.
    pub runner: Arc<dyn CommandRunner>,
}

/// What `watchdog.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchState {
    /// The task.
    pub task_id: String,
    /// Armed since (Unix seconds).
    pub armed_at: i64,
    /// The health timeout (Unix seconds).
    pub deadline: i64,
    /// The target version, if any.
    #[serde(default)]
    pub target_version: Option<String>,
    /// `Armed`, `Healthy`, `RollingBack`, `RolledBack`, `RollbackFailed` or `Cancelled`.
    pub state: Option<TaskState>,
    /// Why the node was not healthy at the last check (empty: healthy, or none yet).
    #[serde(default)]
    pub checks: Vec<String>,
    /// When the last check ran (Unix seconds, 0: none yet).
    #[serde(default)]
    pub checked_at: i64,
    /// `talm-recover.service` was started.
    #[serde(default)]
    pub unit_started: bool,
    /// The recovery's step, while rolling back or after.
    #[serde(default)]
    pub recovery_step: String,
    /// The last word (the outcome's message).
    #[serde(default)]
    pub message: String,
}

/// Errors of the watchdog's files and of `rollback disarm`.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// `disarm` with nothing armed.
    #[error("no rollback watchdog is armed on this node ({0})")]
    NotArmed(String),
    /// `disarm` once the recovery runs.
    #[error(
        "the watchdog of task {0} already started the recovery; stop it with `systemctl stop talm-recover.service` and take over with `talm-agent recover --resume` or `--step` (docs/operations.md)"
    )]
    Recovering(String),
}

fn file_err(path: &Path, reason: impl ToString) -> WatchdogError {
    WatchdogError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Reads `watchdog.json`; `None` if there is none.
pub fn load_state(state_dir: &Path) -> Result<Option<WatchState>, WatchdogError> {
    let p = state_dir.join(STATE_FILE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| file_err(&p, format!("unreadable: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(&p, e)),
    }
}

fn save_state(state_dir: &Path, s: &WatchState) -> Result<(), WatchdogError> {
    let p = state_dir.join(STATE_FILE);
    let text = serde_json::to_vec_pretty(s).map_err(|e| file_err(&p, e))?;
    atomic_write(&p, &text, 0o600).map_err(|e| file_err(&p, e))
}

/// `talm-agent rollback disarm`: asks the running watchdog to stop (it ends `Cancelled` at
/// its next check, touching nothing). Refused when nothing is armed or the recovery started.
pub fn request_disarm(state_dir: &Path) -> Result<WatchState, WatchdogError> {
    let s = load_state(state_dir)?.ok_or_else(|| {
        WatchdogError::NotArmed(format!("no {}", state_dir.join(STATE_FILE).display()))
    })?;
    match s.state {
        Some(TaskState::Armed) => {}
        Some(TaskState::RollingBack) => return Err(WatchdogError::Recovering(s.task_id)),
        other => {
            return Err(WatchdogError::NotArmed(format!(
                "the last watchdog, task {}, is {}",
                s.task_id,
                other.map_or("unknown", TaskState::as_str)
            )));
        }
    }
    let p = state_dir.join(DISARM_FILE);
    atomic_write(&p, s.task_id.as_bytes(), 0o600).map_err(|e| file_err(&p, e))?;
    Ok(s)
}

/// Why a cancel of `task_id` must not end it: its recovery has started (see
/// [`crate::runner::TaskRunner::refuses_cancel`]).
pub fn refuses_cancel(state_dir: &Path, task_id: &str) -> Option<String> {
    let s = load_state(state_dir).ok()??;
    (s.task_id == task_id && s.state == Some(TaskState::RollingBack)).then(|| {
        format!(
            "the rollback watchdog already started {RECOVER_UNIT}; the task reports its outcome when it ends (stop it on the node: docs/operations.md)"
        )
    })
}

fn disarm_requested(state_dir: &Path, task_id: &str) -> bool {
    std::fs::read_to_string(state_dir.join(DISARM_FILE)).is_ok_and(|s| s.trim() == task_id)
}

/// `talm-agent rollback`.
#[derive(Clone, Debug, clap::Args)]
pub struct RollbackArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: RollbackAction,
}

/// `talm-agent rollback` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum RollbackAction {
    /// Stop the armed watchdog: its task ends Cancelled (reported to the hub as such) and
    /// nothing is touched. Refused once the recovery has started.
    Disarm {
        /// State directory of the daemon.
        #[arg(long, env = "TALM_AGENT_STATE_DIR")]
        state_dir: PathBuf,
    },
}

impl RollbackArgs {
    /// Runs the subcommand.
    pub fn run(&self) -> Result<(), WatchdogError> {
        match &self.action {
            RollbackAction::Disarm { state_dir } => {
                let s = request_disarm(state_dir)?;
                println!(
                    "disarm requested for task {}; the watchdog ends Cancelled at its next check (see `talm-agent status`)",
                    s.task_id
                );
                Ok(())
            }
        }
    }
}

/// The watchdog's task run: keeps `watchdog.json` up to date and reports progress.
struct Run<'a> {
    settings: &'a WatchdogSettings,
    ctx: &'a TaskContext,
    state: WatchState,
}

impl Run<'_> {
    fn save(&self) {
        if let Err(e) = save_state(&self.settings.state_dir, &self.state) {
            tracing::warn!(task = self.ctx.task_id(), "watchdog state: {e}");
        }
    }

    fn end(
        &mut self,
        state: TaskState,
        outcome: TaskOutcome,
        msg: String,
    ) -> (TaskOutcome, String) {
        self.state.state = Some(state);
        self.state.message.clone_from(&msg);
        self.save();
        (outcome, msg)
    }

    async fn systemctl_start(&self) -> Result<(), String> {
        let runner = self.settings.runner.clone();
        let cmd = Cmd::new("systemctl").args(["start", "--no-block", RECOVER_UNIT]);
        tokio::task::spawn_blocking(move || runner.run(&cmd).map(drop).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Arms and starts the unit (again, if a restart came between the two).
    async fn start_recovery(&mut self) -> Result<(), (TaskOutcome, String)> {
        let dir = &self.settings.recovery_dir;
        if let Err(e) = unattended::arm(dir, &self.state.task_id) {
            let msg = format!("RollbackFailed: step arm: {e}; nothing was changed");
            return Err(self.end(TaskState::RollbackFailed, TaskOutcome::Failed, msg));
        }
        if let Err(e) = self.systemctl_start().await {
            // Not armed any more: the next boot must not start it either.
            let _ = std::fs::remove_file(dir.join(unattended::MARKER));
            let msg =
                format!("RollbackFailed: step start {RECOVER_UNIT}: {e}; nothing was changed");
            return Err(self.end(TaskState::RollbackFailed, TaskOutcome::Failed, msg));
        }
        self.state.unit_started = true;
        self.save();
        Ok(())
    }

    /// Follows the recovery's outcome file until it ends.
    async fn follow(&mut self) -> (TaskOutcome, String) {
        if !self.state.unit_started
            && let Err(end) = self.start_recovery().await
        {
            return end;
        }
        loop {
            match unattended::load_outcome(&self.settings.recovery_dir) {
                Ok(Some(o)) if o.task_id == self.state.task_id => {
                    self.state.recovery_step.clone_from(&o.step);
                    match o.state {
                        TaskState::RolledBack => {
                            let msg = format!("RolledBack: {}", o.message);
                            return self.end(TaskState::RolledBack, TaskOutcome::RolledBack, msg);
                        }
                        TaskState::RollbackFailed => {
                            let msg = format!("RollbackFailed: step {}: {}", o.step, o.message);
                            return self.end(TaskState::RollbackFailed, TaskOutcome::Failed, msg);
                        }
                        _ => {
                            self.save();
                            let step = if o.step.is_empty() {
                                "preflight"
                            } else {
                                &o.step
                            };
                            self.ctx.progress(&format!("RollingBack: {step}"), 0, 0);
                        }
                    }
                }
                Ok(_) => self.ctx.progress("RollingBack: starting", 0, 0),
                Err(e) => self.ctx.progress(&format!("RollingBack: {e}"), 0, 0),
            }
            tokio::time::sleep(self.settings.poll).await;
        }
    }
}

/// Runs one `Rollback` task to its outcome (see the module header).
pub async fn run_task(
    settings: &WatchdogSettings,
    clock: &dyn Clock,
    task: &Task,
    ctx: TaskContext,
) -> (TaskOutcome, String) {
    let params = match parse_params(&task.params_json) {
        Ok(p) => p,
        Err(e) => return (TaskOutcome::Rejected, e),
    };
    let deadline = params
        .armed_at
        .saturating_add(i64::try_from(params.health_timeout_seconds).unwrap_or(i64::MAX));
    let state = match load_state(&settings.state_dir) {
        Ok(Some(s)) if s.task_id == task.id => s,
        Ok(_) => WatchState {
            task_id: task.id.clone(),
            armed_at: params.armed_at,
            deadline,
            target_version: params.target_version.clone(),
            state: Some(TaskState::Armed),
            ..WatchState::default()
        },
        Err(e) => return (TaskOutcome::Failed, e.to_string()),
    };
    let mut run = Run {
        settings,
        ctx: &ctx,
        state,
    };
    if run.state.state == Some(TaskState::RollingBack) {
        return run.follow().await;
    }
    run.save();
    let client = match crate::installplans::client(&settings.kubeconfig).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("the watchdog cannot check the node's health: {e}");
            return run.end(TaskState::UnrecoverableError, TaskOutcome::Rejected, msg);
        }
    };
    loop {
        if disarm_requested(&settings.state_dir, &task.id) {
            let _ = std::fs::remove_file(settings.state_dir.join(DISARM_FILE));
            let msg = "disarmed on the node (talm-agent rollback disarm); nothing was changed";
            return run.end(TaskState::Cancelled, TaskOutcome::Cancelled, msg.into());
        }
        let why = tokio::time::timeout(
            settings.check_timeout,
            health::check(&client, params.target_version.as_deref()),
        )
        .await
        .unwrap_or_else(|_| {
            vec![format!(
                "the health checks did not answer within {}s",
                settings.check_timeout.as_secs()
            )]
        });
        let now = clock.unix();
        run.state.checked_at = now;
        run.state.checks.clone_from(&why);
        if why.is_empty() {
            return run.end(
                TaskState::Healthy,
                TaskOutcome::Succeeded,
                "Healthy: the node passed every health check; disarmed, nothing was changed".into(),
            );
        }
        if now >= deadline {
            run.state.state = Some(TaskState::RollingBack);
            run.state.message = format!("not healthy at the health timeout: {}", why.join("; "));
            run.save();
            tracing::warn!(task = %task.id, reasons = %why.join("; "), "not healthy at the health timeout; rolling back");
            ctx.progress(
                &format!("RollingBack: starting {RECOVER_UNIT} ({})", why.join("; ")),
                0,
                0,
            );
            return run.follow().await;
        }
        run.save();
        ctx.progress(
            &format!(
                "Armed: not healthy yet, {}s to the health timeout: {}",
                deadline - now,
                why.join("; ")
            ),
            0,
            0,
        );
        let left = Duration::from_secs((deadline - now).unsigned_abs());
        tokio::time::sleep(settings.poll.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        let p = parse_params(
            r#"{"armedAt":1800000000,"healthTimeoutSeconds":5400,"targetVersion":"4.16.3"}"#,
        )
        .unwrap();
        assert_eq!(p.health_timeout_seconds, 5400);
        assert_eq!(p.target_version.as_deref(), Some("4.16.3"));
        assert_eq!(
            parse_params(r#"{"armedAt":1,"healthTimeoutSeconds":1}"#)
                .unwrap()
                .target_version,
            None
        );
        for (bad, needle) in [
            ("\"x\"", "invalid type"),
            (r#"{"healthTimeoutSeconds":1}"#, "armedAt"),
            (
                r#"{"armedAt":0,"healthTimeoutSeconds":1}"#,
                "not a Unix time",
            ),
            (r#"{"armedAt":1,"healthTimeoutSeconds":0}"#, "at least 1"),
            (
                r#"{"armedAt":1,"healthTimeoutSeconds":-3}"#,
                "invalid value",
            ),
            (
                r#"{"armedAt":1,"healthTimeoutSeconds":1,"targetVersion":" "}"#,
                "targetVersion is empty",
            ),
            (
                r#"{"armedAt":1,"healthTimeoutSeconds":1,"typo":1}"#,
                "unknown field",
            ),
        ] {
            let e = parse_params(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    fn state(s: TaskState) -> WatchState {
        WatchState {
            task_id: "t".into(),
            armed_at: 1,
            deadline: 2,
            state: Some(s),
            ..WatchState::default()
        }
    }

    #[test]
    fn disarm_only_while_armed() {
        let d = tempfile::tempdir().unwrap();
        let e = request_disarm(d.path()).unwrap_err().to_string();
        assert!(e.contains("no rollback watchdog is armed"), "{e}");
        save_state(d.path(), &state(TaskState::RollingBack)).unwrap();
        assert!(refuses_cancel(d.path(), "t").is_some_and(|w| w.contains(RECOVER_UNIT)));
        assert_eq!(refuses_cancel(d.path(), "another task"), None);
        let e = request_disarm(d.path()).unwrap_err().to_string();
        assert!(e.contains("systemctl stop talm-recover.service"), "{e}");
        assert!(!d.path().join(DISARM_FILE).exists());
        save_state(d.path(), &state(TaskState::Healthy)).unwrap();
        let e = request_disarm(d.path()).unwrap_err().to_string();
        assert!(e.contains("is Healthy"), "{e}");
        save_state(d.path(), &state(TaskState::Armed)).unwrap();
        assert_eq!(
            refuses_cancel(d.path(), "t"),
            None,
            "armed: the hub may cancel"
        );
        request_disarm(d.path()).unwrap();
        assert!(disarm_requested(d.path(), "t"));
        assert!(!disarm_requested(d.path(), "another task"));
    }

    #[tokio::test]
    async fn bad_params_and_a_missing_kubeconfig_reject_the_task() {
        let d = tempfile::tempdir().unwrap();
        let runner = Arc::new(crate::host::exec::RecordingRunner::new());
        let settings = WatchdogSettings {
            kubeconfig: d.path().join("missing.kubeconfig"),
            state_dir: d.path().to_path_buf(),
            recovery_dir: d.path().join("recovery"),
            poll: Duration::from_millis(10),
            check_timeout: Duration::from_secs(1),
            runner: runner.clone(),
        };
        let clock = talm_shared::clock::ManualClock::at_unix(10_000);
        let mut task = Task {
            id: "t".into(),
            kind: talm_proto::v1::TaskKind::Rollback as i32,
            params_json: "{}".into(),
            deadline_unix: 0,
            state: crate::journal::TaskState::Running,
            message: String::new(),
            starts: 1,
            accepted_at: 0,
            finished_at: None,
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let (o, msg) = run_task(&settings, &clock, &task, TaskContext::new("t", tx.clone())).await;
        assert_eq!(o, TaskOutcome::Rejected);
        assert!(msg.contains("armedAt"), "{msg}");
        // Past its timeout, but no way to check the health: rejected, never a rollback.
        task.params_json = r#"{"armedAt":1,"healthTimeoutSeconds":1}"#.into();
        let (o, msg) = run_task(&settings, &clock, &task, TaskContext::new("t", tx)).await;
        assert_eq!(o, TaskOutcome::Rejected);
        assert!(msg.contains("missing.kubeconfig"), "{msg}");
        assert!(runner.lines().is_empty());
        assert!(!settings.recovery_dir.join(unattended::MARKER).exists());
    }
}

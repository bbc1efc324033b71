//! `talm-agent recover --unattended`: the recovery the rollback watchdog starts when the node
//! is not healthy at its health timeout (issue 18 §3), run by `talm-recover.service`.
//!
//! It is the manual recovery ([`super::run`], same archives, checks and stages, everything
//! validated before the first destructive step) in `--resume` mode, with no prompts: where a
//! person is asked to reboot, it runs `systemctl reboot` itself. Two files in the recovery
//! directory tie it to the watchdog:
//! - the marker [`MARKER`] (holding the watchdog's task id), written by the agent before it
//!   starts the unit; `talm-recover.service` has `ConditionPathExists=` on it, so the unit
//!   runs again at every boot until the recovery ends, and never on a node nobody armed. It is
//!   removed when the recovery finished or failed.
//! - the outcome [`OUTCOME`]: `RollingBack` with the step reached, then `RolledBack`, or
//!   `RollbackFailed` with the step and the reason. The agent reads it to report the task.
//!
//! A person can take over at any point: `systemctl stop talm-recover`, remove the marker, and
//! run `talm-agent recover --resume` or `--step` by hand (the journal is the same).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use talm_shared::fsutil::atomic_write;
use talm_shared::task_state::TaskState;

use super::{Mode, Outcome, RecoverConfig, RecoverError, Reporter};
use crate::host::exec::Cmd;

/// The marker that arms `talm-recover.service` (in the recovery directory).
pub const MARKER: &str = "recovery.unattended";
/// Where the unattended recovery records its outcome (in the recovery directory).
pub const OUTCOME: &str = "recovery.outcome.json";

/// What the unattended recovery recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryOutcome {
    /// The watchdog task that armed it.
    pub task_id: String,
    /// `RollingBack`, `RolledBack` or `RollbackFailed`.
    pub state: TaskState,
    /// The step reached (the last finished one while `RollingBack`; the failed one).
    #[serde(default)]
    pub step: String,
    /// Why it failed, or what happens next.
    #[serde(default)]
    pub message: String,
}

/// The unattended recovery's files could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct UnattendedError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub reason: String,
}

fn err(path: &Path, reason: impl ToString) -> UnattendedError {
    UnattendedError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The recovery directory as the host sees it, under `cfg`'s host root.
fn dir(cfg: &RecoverConfig) -> PathBuf {
    cfg.host.root.join(&cfg.dir)
}

/// Arms the unit for `task_id`: writes the marker (the agent does this before starting it).
pub fn arm(recovery_dir: &Path, task_id: &str) -> Result<(), UnattendedError> {
    let p = recovery_dir.join(MARKER);
    atomic_write(&p, task_id.as_bytes(), 0o600).map_err(|e| err(&p, e))
}

/// The task id in the marker, if the unit is armed.
pub fn armed(recovery_dir: &Path) -> Result<Option<String>, UnattendedError> {
    let p = recovery_dir.join(MARKER);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&p, e)),
    }
}

fn disarm(recovery_dir: &Path) -> Result<(), UnattendedError> {
    let p = recovery_dir.join(MARKER);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(&p, e)),
    }
}

/// The recorded outcome, if any.
pub fn load_outcome(recovery_dir: &Path) -> Result<Option<RecoveryOutcome>, UnattendedError> {
    let p = recovery_dir.join(OUTCOME);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| err(&p, format!("unreadable: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&p, e)),
    }
}

fn save_outcome(recovery_dir: &Path, o: &RecoveryOutcome) -> Result<(), UnattendedError> {
    let p = recovery_dir.join(OUTCOME);
    let text = serde_json::to_vec_pretty(o).map_err(|e| err(&p, e))?;
    atomic_write(&p, &text, 0o644).map_err(|e| err(&p, e))
}

/// Passes messages on and records every finished step in the outcome file.
struct Recording<'a> {
    inner: &'a dyn Reporter,
    dir: PathBuf,
    task_id: String,
    last: Mutex<String>,
}

impl Recording<'_> {
    fn last(&self) -> String {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn record(&self, state: TaskState, step: &str, message: &str) {
        let o = RecoveryOutcome {
            task_id: self.task_id.clone(),
            state,
            step: step.to_string(),
            message: message.to_string(),
        };
        if let Err(e) = save_outcome(&self.dir, &o) {
            self.inner.say(&format!("cannot record the outcome: {e}"));
        }
    }
}

impl Reporter for Recording<'_> {
    fn say(&self, msg: &str) {
        self.inner.say(msg);
    }

    fn proceed(&self, step: &str) -> bool {
        if let Ok(mut l) = self.last.lock() {
            *l = step.to_string();
        }
        self.record(TaskState::RollingBack, step, "");
        self.inner.proceed(step)
    }
}

/// The step a failure belongs to: the failed step, `preflight` for what the checks before
/// the first change found, `os/rollback` for the OS, otherwise the step after `last`.
fn failed_step(e: &RecoverError, last: &str) -> String {
    match e {
        RecoverError::Step { step, .. } => step.clone(),
        RecoverError::Backup(_)
        | RecoverError::Archive { .. }
        | RecoverError::Destination { .. }
        | RecoverError::BelowFloor { .. } => "preflight".into(),
        RecoverError::NotPinned(_) | RecoverError::Ostree(_) => "os/rollback".into(),
        RecoverError::Journal(_) => "journal".into(),
        _ if last.is_empty() => "start".into(),
        _ => format!("after {last}"),
    }
}

/// Why an unattended run did not go on.
#[derive(Debug, thiserror::Error)]
pub enum UnattendedRunError {
    /// No watchdog armed this node (the marker is missing).
    #[error(
        "no unattended recovery is armed ({0} is missing); run `talm-agent recover` by hand instead"
    )]
    NotArmed(String),
    /// The run would be a dry run (a host root other than `/`).
    #[error("--unattended never runs as a dry run: {0}")]
    Dry(String),
    /// The marker or outcome file could not be used.
    #[error(transparent)]
    Files(#[from] UnattendedError),
    /// The recovery stopped (recorded as `RollbackFailed`, except for [`RecoverError::Stopped`]).
    #[error(transparent)]
    Recover(#[from] RecoverError),
}

/// Runs the unattended recovery (resume semantics) and records its outcome. A reboot the
/// recovery needs is started here with `systemctl reboot`; the unit then runs again at boot.
pub fn run(cfg: &RecoverConfig, rep: &dyn Reporter) -> Result<Outcome, UnattendedRunError> {
    let dir = dir(cfg);
    let Some(task_id) = armed(&dir)? else {
        return Err(UnattendedRunError::NotArmed(
            dir.join(MARKER).display().to_string(),
        ));
    };
    if let Some(why) = super::dry_run_reason(cfg) {
        return Err(UnattendedRunError::Dry(why));
    }
    // This task's recovery already started (its outcome is recorded) and its journal says
    // finished: a person completed it by hand (`recover --resume`/`--step`). Only record it;
    // a new run would start the whole recovery over from the backup. (A finished journal
    // with no outcome of this task is an older recovery's, and this one starts afresh.)
    let started = load_outcome(&dir)?.is_some_and(|o| o.task_id == task_id);
    let finished = matches!(
        super::journal::Journal::load(&dir.join(crate::backup::RECOVERY_JOURNAL)),
        Ok(Some(j)) if j.finished
    );
    let mut cfg = cfg.clone();
    cfg.mode = Mode::Resume;
    cfg.single_stage = false;
    cfg.force = false;
    let rec = Recording {
        inner: rep,
        dir: dir.clone(),
        task_id,
        last: Mutex::new(String::new()),
    };
    if started && finished {
        let next = "the recovery was completed by hand; nothing left to do".to_string();
        rec.say(&next);
        rec.record(TaskState::RolledBack, "", &next);
        disarm(&dir)?;
        return Ok(Outcome {
            next,
            finished: true,
            reboot: false,
        });
    }
    if !started {
        rec.record(TaskState::RollingBack, "", "started");
    }
    let reboot = |rec: &Recording<'_>, why: &str| -> Result<(), UnattendedRunError> {
        rec.record(TaskState::RollingBack, &rec.last(), why);
        rec.say(&format!("{why}: running `systemctl reboot`"));
        cfg.host
            .runner
            .run(&Cmd::new("systemctl").arg("reboot"))
            .map_err(|e| RecoverError::Step {
                step: "reboot".into(),
                reason: e.to_string(),
            })?;
        Ok(())
    };
    match super::run(&cfg, &rec) {
        Ok(o) if o.finished => {
            rec.record(TaskState::RolledBack, &rec.last(), &o.next);
            disarm(&dir)?;
            Ok(o)
        }
        Ok(o) if o.reboot => {
            reboot(&rec, "stage 1 done, the node reboots")?;
            Ok(o)
        }
        Ok(o) => {
            rec.record(TaskState::RollingBack, &rec.last(), &o.next);
            Ok(o)
        }
        // Started again in the boot that ran stage 1 (the reboot did not happen yet).
        Err(RecoverError::NotRebooted) => {
            reboot(&rec, "stage 1 is done but the node has not rebooted since")?;
            Ok(Outcome {
                next: "rebooting".into(),
                finished: false,
                reboot: true,
            })
        }
        // Fault injection: as if killed, nothing recorded beyond the last step.
        Err(e @ RecoverError::Stopped(_)) => Err(e.into()),
        Err(e) => {
            let step = failed_step(&e, &rec.last());
            rec.record(TaskState::RollbackFailed, &step, &e.to_string());
            disarm(&dir)?;
            Err(e.into())
        }
    }
}

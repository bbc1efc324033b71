//! The state of an agent task (pre-cache, backup, check-space, InstallPlan approval, the
//! rollback watchdog), under TALM's names (docs/contract.md §2.4, §4.2 and §5.1) and, for the
//! watchdog, talm's own (`Armed`, `Healthy`, `RollingBack`, `RolledBack`, `RollbackFailed`).
//!
//! One vocabulary for the whole system: the engine records these states per cluster in the CGU
//! status (`status.precaching.status`, `status.backup.status`), the gateway writes them to each
//! SpokeAgent's status from the agent's reports, and the agent maps its backup failures to them.
//! The API types keep the states as strings, as TALM's API does (an unknown value must not make
//! a whole object unreadable); code reads them with [`TaskState::from_name`] and writes them
//! with [`TaskState::as_str`]. Serde uses the same names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of one agent task, serialized with TALM's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Nothing assigned yet (TALM's initial pre-cache state).
    NotStarted,
    /// The hub assigned the task; the agent has not accepted it yet.
    PreparingToStart,
    /// The agent accepted the task.
    Starting,
    /// The agent reported progress.
    Active,
    /// Done.
    Succeeded,
    /// The pre-cache deadline passed.
    PrecacheTimeout,
    /// The backup deadline passed.
    BackupTimeout,
    /// The deadline of another task (check-space, InstallPlan approval) passed.
    TimedOut,
    /// Failed or rejected; not retried.
    UnrecoverableError,
    /// Cancelled by the hub (the task left the SpokeAgent spec).
    Cancelled,
    /// Rollback watchdog: the agent accepted it and watches the node's health.
    Armed,
    /// Rollback watchdog: the node became healthy before the health timeout; disarmed.
    Healthy,
    /// Rollback watchdog: unhealthy at the health timeout; the unattended recovery runs.
    RollingBack,
    /// Rollback watchdog: the unattended recovery finished; the node runs the pinned deployment.
    RolledBack,
    /// Rollback watchdog: the unattended recovery could not run or failed (the message names the
    /// step and the reason).
    RollbackFailed,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 15] = [
        TaskState::NotStarted,
        TaskState::PreparingToStart,
        TaskState::Starting,
        TaskState::Active,
        TaskState::Succeeded,
        TaskState::PrecacheTimeout,
        TaskState::BackupTimeout,
        TaskState::TimedOut,
        TaskState::UnrecoverableError,
        TaskState::Cancelled,
        TaskState::Armed,
        TaskState::Healthy,
        TaskState::RollingBack,
        TaskState::RolledBack,
        TaskState::RollbackFailed,
    ];

    /// TALM's name of the state.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::NotStarted => "NotStarted",
            TaskState::PreparingToStart => "PreparingToStart",
            TaskState::Starting => "Starting",
            TaskState::Active => "Active",
            TaskState::Succeeded => "Succeeded",
            TaskState::PrecacheTimeout => "PrecacheTimeout",
            TaskState::BackupTimeout => "BackupTimeout",
            TaskState::TimedOut => "TimedOut",
            TaskState::UnrecoverableError => "UnrecoverableError",
            TaskState::Cancelled => "Cancelled",
            TaskState::Armed => "Armed",
            TaskState::Healthy => "Healthy",
            TaskState::RollingBack => "RollingBack",
            TaskState::RolledBack => "RolledBack",
            TaskState::RollbackFailed => "RollbackFailed",
        }
    }

    /// The state named `name` (exact, case-sensitive), or `None` for a name talm does not know.
    pub fn from_name(name: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True for the states after which the task never changes: `Succeeded`, the timeouts,
    /// `UnrecoverableError`, `Cancelled`, and the watchdog's `Healthy`, `RolledBack` and
    /// `RollbackFailed`.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::PrecacheTimeout
                | TaskState::BackupTimeout
                | TaskState::TimedOut
                | TaskState::UnrecoverableError
                | TaskState::Cancelled
                | TaskState::Healthy
                | TaskState::RolledBack
                | TaskState::RollbackFailed
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_uses_talm_names_both_ways() {
        for s in TaskState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TaskState>(&json).unwrap(), s);
            assert_eq!(TaskState::from_name(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(
            serde_json::to_string(&TaskState::UnrecoverableError).unwrap(),
            "\"UnrecoverableError\"",
            "TALM's spelling, not a serde rename"
        );
    }

    #[test]
    fn unknown_names_are_rejected() {
        for name in ["", "succeeded", "Failed", "Timeout", " Active"] {
            assert_eq!(TaskState::from_name(name), None, "{name:?}");
            assert!(serde_json::from_str::<TaskState>(&format!("\"{name}\"")).is_err());
        }
    }

    #[test]
    fn names_are_distinct() {
        let mut names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TaskState::ALL.len());
    }

    #[test]
    fn final_states() {
        let finals: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                TaskState::Succeeded,
                TaskState::PrecacheTimeout,
                TaskState::BackupTimeout,
                TaskState::TimedOut,
                TaskState::UnrecoverableError,
                TaskState::Cancelled,
                TaskState::Healthy,
                TaskState::RolledBack,
                TaskState::RollbackFailed,
            ]
        );
    }
}

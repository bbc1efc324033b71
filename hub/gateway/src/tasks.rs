//! SpokeAgent `spec` tasks → assignments, and agent results → [`TaskState`]s, which the
//! gateway writes to SpokeAgent status under TALM's names (docs/contract.md §2.4).

use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::api::spokeagent::SpokeAgentSpec;
use talm_shared::task_state::TaskState;

/// Which SpokeAgent slot a task lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `spec.precache` / `status.precache`.
    Precache,
    /// `spec.backup` / `status.backup`.
    Backup,
    /// `spec.checkSpace` / `status.checkSpace`.
    CheckSpace,
    /// `spec.installPlans` / `status.installPlans`.
    InstallPlans,
    /// `spec.rollback` / `status.rollback` (the rollback watchdog).
    Rollback,
}

impl Slot {
    /// The wire kind.
    pub fn kind(self) -> TaskKind {
        match self {
            Slot::Precache => TaskKind::Precache,
            Slot::Backup => TaskKind::Backup,
            Slot::CheckSpace => TaskKind::CheckSpace,
            Slot::InstallPlans => TaskKind::ApproveInstallPlans,
            Slot::Rollback => TaskKind::Rollback,
        }
    }
}

/// A task the hub wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTask {
    /// Task id.
    pub id: String,
    /// Slot in the SpokeAgent.
    pub slot: Slot,
    /// Parameters, JSON.
    pub params_json: String,
    /// Deadline, Unix seconds.
    pub deadline_unix: i64,
    /// The pre-cache scheduler's grant (pre-cache only; other slots: not held, no cap).
    pub grant: Grant,
}

/// The pre-cache scheduler's grant for a task, as the wire carries it (issue 17):
/// held or let in, and the hub's cap for the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grant {
    /// Held by a PrecacheBudget: the agent resolves the images and waits.
    pub hold: bool,
    /// The hub's cap, bytes/s; 0 = none.
    pub rate_limit_bytes_per_second: u64,
}

/// The tasks a SpokeAgent spec asks for.
pub fn desired(spec: &SpokeAgentSpec) -> Vec<DesiredTask> {
    let mut out = Vec::new();
    if let Some(t) = &spec.check_space {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::CheckSpace,
            params_json: serde_json::json!({ "spaceRequired": t.space_required }).to_string(),
            deadline_unix: t.deadline.0.as_second(),
            grant: Grant::default(),
        });
    }
    if let Some(t) = &spec.precache {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::Precache,
            params_json: serde_json::to_string(&t.spec).unwrap_or_else(|_| "{}".into()),
            deadline_unix: t.deadline.0.as_second(),
            grant: Grant {
                hold: t.hold,
                // A cap at or below zero is no cap the agent could honour: none.
                rate_limit_bytes_per_second: t
                    .rate_limit_bytes_per_second
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(0),
            },
        });
    }
    if let Some(t) = &spec.backup {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::Backup,
            params_json: "{}".into(),
            deadline_unix: t.deadline.0.as_second(),
            grant: Grant::default(),
        });
    }
    if let Some(t) = &spec.install_plans {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::InstallPlans,
            params_json: serde_json::json!({ "subscriptions": t.subscriptions }).to_string(),
            deadline_unix: t.deadline.0.as_second(),
            grant: Grant::default(),
        });
    }
    if let Some(t) = &spec.rollback {
        let mut params = serde_json::json!({
            "armedAt": t.armed_at.0.as_second(),
            "healthTimeoutSeconds": t.health_timeout_seconds,
        });
        if let Some(v) = &t.target_version {
            params["targetVersion"] = serde_json::Value::String(v.clone());
        }
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::Rollback,
            params_json: params.to_string(),
            // The watchdog has no deadline: its health timeout is in the params.
            deadline_unix: 0,
            grant: Grant::default(),
        });
    }
    out
}

/// The state of a task that ended with `outcome`: a timeout is named after the task kind, and
/// the rollback watchdog has its own names (`Healthy`, `RolledBack`, `RollbackFailed`).
pub fn result_state(kind: TaskKind, outcome: TaskOutcome) -> TaskState {
    let rollback = kind == TaskKind::Rollback;
    match outcome {
        TaskOutcome::Succeeded if rollback => TaskState::Healthy,
        TaskOutcome::RolledBack if rollback => TaskState::RolledBack,
        // An agent that rejects the watchdog (one without it, or params it refuses) never
        // armed it: nothing was rolled back, and the cluster must not fail for it.
        TaskOutcome::Rejected if rollback => TaskState::UnrecoverableError,
        TaskOutcome::Failed | TaskOutcome::Unspecified if rollback => TaskState::RollbackFailed,
        // Only the watchdog can roll back; anything else saying so is a broken agent.
        TaskOutcome::RolledBack => TaskState::UnrecoverableError,
        TaskOutcome::Succeeded => TaskState::Succeeded,
        TaskOutcome::TimedOut => match kind {
            TaskKind::Precache => TaskState::PrecacheTimeout,
            TaskKind::Backup => TaskState::BackupTimeout,
            _ => TaskState::TimedOut,
        },
        TaskOutcome::Cancelled => TaskState::Cancelled,
        TaskOutcome::Failed | TaskOutcome::Rejected | TaskOutcome::Unspecified => {
            TaskState::UnrecoverableError
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::Time;
    use talm_shared::api::spokeagent::{BackupTask, CheckSpaceTask};

    #[test]
    fn spec_tasks_become_assignments() {
        let t = Time(jiff::Timestamp::from_second(2_000_000_000).unwrap());
        let spec = SpokeAgentSpec {
            check_space: Some(CheckSpaceTask {
                id: "c1".into(),
                space_required: "35".into(),
                deadline: t.clone(),
            }),
            backup: Some(BackupTask {
                id: "b1".into(),
                deadline: t,
            }),
            ..Default::default()
        };
        let d = desired(&spec);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].slot, Slot::CheckSpace);
        assert_eq!(d[0].params_json, r#"{"spaceRequired":"35"}"#);
        assert_eq!(d[1].deadline_unix, 2_000_000_000);
        assert_eq!(
            result_state(TaskKind::Backup, TaskOutcome::TimedOut),
            TaskState::BackupTimeout
        );
        assert_eq!(
            result_state(TaskKind::Precache, TaskOutcome::Rejected),
            TaskState::UnrecoverableError
        );
    }

    #[test]
    fn precache_tasks_carry_the_schedulers_hold_and_cap() {
        use talm_shared::api::spokeagent::PrecacheTask;
        let mut task = PrecacheTask {
            id: "ns/cgu/uid/precache".into(),
            spec: Default::default(),
            deadline: Time(jiff::Timestamp::from_second(2_000_000_000).unwrap()),
            hold: true,
            rate_limit_bytes_per_second: None,
            order: None,
        };
        let grant = |task: &PrecacheTask| {
            let d = desired(&SpokeAgentSpec {
                precache: Some(task.clone()),
                ..Default::default()
            });
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].slot, Slot::Precache);
            d[0].grant
        };
        assert_eq!(
            grant(&task),
            Grant {
                hold: true,
                rate_limit_bytes_per_second: 0
            }
        );
        task.hold = false;
        task.rate_limit_bytes_per_second = Some(10 * 1024 * 1024);
        assert_eq!(
            grant(&task),
            Grant {
                hold: false,
                rate_limit_bytes_per_second: 10 * 1024 * 1024
            }
        );
        // A cap the agent cannot honour (zero or negative) is no cap.
        task.rate_limit_bytes_per_second = Some(-5);
        assert_eq!(grant(&task).rate_limit_bytes_per_second, 0);
        // Other slots are never held.
        let d = desired(&SpokeAgentSpec {
            backup: Some(talm_shared::api::spokeagent::BackupTask {
                id: "b".into(),
                deadline: task.deadline.clone(),
            }),
            ..Default::default()
        });
        assert_eq!(d[0].grant, Grant::default());
    }

    #[test]
    fn install_plan_tasks_carry_their_subscriptions() {
        use talm_shared::api::spokeagent::{InstallPlanTask, SubscriptionTarget};
        let spec = SpokeAgentSpec {
            install_plans: Some(InstallPlanTask {
                id: "ns/cgu/uid/installplans/p1".into(),
                subscriptions: vec![SubscriptionTarget {
                    name: "ptp".into(),
                    namespace: "openshift-ptp".into(),
                }],
                deadline: Time(jiff::Timestamp::from_second(2_000_000_000).unwrap()),
            }),
            ..Default::default()
        };
        let d = desired(&spec);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].slot, Slot::InstallPlans);
        assert_eq!(d[0].slot.kind(), TaskKind::ApproveInstallPlans);
        assert_eq!(
            d[0].params_json,
            r#"{"subscriptions":[{"name":"ptp","namespace":"openshift-ptp"}]}"#
        );
        assert_eq!(
            result_state(TaskKind::ApproveInstallPlans, TaskOutcome::TimedOut),
            TaskState::TimedOut
        );
        assert_eq!(
            TaskKind::ApproveInstallPlans.display_name(),
            "approve-install-plans"
        );
    }

    #[test]
    fn the_watchdog_becomes_a_rollback_assignment_without_deadline() {
        use talm_shared::api::spokeagent::RollbackTask;
        let mut task = RollbackTask {
            id: "ns/cgu/uid/rollback".into(),
            armed_at: Time(jiff::Timestamp::from_second(2_000_000_000).unwrap()),
            health_timeout_seconds: 5400,
            target_version: Some("4.16.3".into()),
        };
        let d = desired(&SpokeAgentSpec {
            rollback: Some(task.clone()),
            ..Default::default()
        });
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].slot.kind(), TaskKind::Rollback);
        assert_eq!(d[0].deadline_unix, 0);
        let params: serde_json::Value = serde_json::from_str(&d[0].params_json).unwrap();
        assert_eq!(
            params,
            serde_json::json!({"armedAt": 2_000_000_000, "healthTimeoutSeconds": 5400,
                               "targetVersion": "4.16.3"})
        );
        task.target_version = None;
        let d = desired(&SpokeAgentSpec {
            rollback: Some(task),
            ..Default::default()
        });
        let params: serde_json::Value = serde_json::from_str(&d[0].params_json).unwrap();
        assert!(params.get("targetVersion").is_none(), "absent, not null");
        // A rejecting agent (one without the watchdog) never armed it: not a failed rollback.
        assert_eq!(
            result_state(TaskKind::Rollback, TaskOutcome::Rejected),
            TaskState::UnrecoverableError
        );
        assert_eq!(
            result_state(TaskKind::Rollback, TaskOutcome::Failed),
            TaskState::RollbackFailed
        );
        assert_eq!(
            result_state(TaskKind::Rollback, TaskOutcome::RolledBack),
            TaskState::RolledBack
        );
        assert_eq!(
            result_state(TaskKind::Rollback, TaskOutcome::Succeeded),
            TaskState::Healthy
        );
    }

    #[test]
    fn every_result_state_is_final() {
        let kinds = [
            TaskKind::Unspecified,
            TaskKind::CheckSpace,
            TaskKind::Precache,
            TaskKind::Backup,
            TaskKind::ApproveInstallPlans,
        ];
        let outcomes = [
            TaskOutcome::Unspecified,
            TaskOutcome::Succeeded,
            TaskOutcome::Failed,
            TaskOutcome::TimedOut,
            TaskOutcome::Cancelled,
            TaskOutcome::Rejected,
        ];
        for k in kinds {
            for o in outcomes {
                assert!(result_state(k, o).is_final(), "{k:?} {o:?}");
            }
        }
    }
}

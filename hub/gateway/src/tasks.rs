//! SpokeAgent `spec` tasks → assignments, and agent reports → TALM state names
//! (talm-behaviour.md §2.4: `Starting`, `Active`, `Succeeded`, `PrecacheTimeout`,
//! `BackupTimeout`, `UnrecoverableError`).

use talm_proto::v1::{TaskKind, TaskOutcome};
use talm_shared::api::spokeagent::SpokeAgentSpec;

/// State names written to SpokeAgent status.
pub mod states {
    /// The agent accepted (journaled) the task.
    pub const STARTING: &str = "Starting";
    /// The agent reported progress.
    pub const ACTIVE: &str = "Active";
    /// Done.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Pre-cache deadline passed.
    pub const PRECACHE_TIMEOUT: &str = "PrecacheTimeout";
    /// Backup deadline passed.
    pub const BACKUP_TIMEOUT: &str = "BackupTimeout";
    /// Check-space deadline passed.
    pub const TIMED_OUT: &str = "TimedOut";
    /// Failed or rejected; not retried.
    pub const UNRECOVERABLE_ERROR: &str = "UnrecoverableError";
    /// Cancelled by the hub (the task left the spec).
    pub const CANCELLED: &str = "Cancelled";
}

/// True for states after which the task never changes.
pub fn is_final(state: &str) -> bool {
    matches!(
        state,
        states::SUCCEEDED
            | states::PRECACHE_TIMEOUT
            | states::BACKUP_TIMEOUT
            | states::TIMED_OUT
            | states::UNRECOVERABLE_ERROR
            | states::CANCELLED
    )
}

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
}

impl Slot {
    /// The wire kind.
    pub fn kind(self) -> TaskKind {
        match self {
            Slot::Precache => TaskKind::Precache,
            Slot::Backup => TaskKind::Backup,
            Slot::CheckSpace => TaskKind::CheckSpace,
            Slot::InstallPlans => TaskKind::ApproveInstallPlans,
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
        });
    }
    if let Some(t) = &spec.precache {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::Precache,
            params_json: serde_json::to_string(&t.spec).unwrap_or_else(|_| "{}".into()),
            deadline_unix: t.deadline.0.as_second(),
        });
    }
    if let Some(t) = &spec.backup {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::Backup,
            params_json: "{}".into(),
            deadline_unix: t.deadline.0.as_second(),
        });
    }
    if let Some(t) = &spec.install_plans {
        out.push(DesiredTask {
            id: t.id.clone(),
            slot: Slot::InstallPlans,
            params_json: serde_json::json!({ "subscriptions": t.subscriptions }).to_string(),
            deadline_unix: t.deadline.0.as_second(),
        });
    }
    out
}

/// The state name for a result.
pub fn result_state(kind: TaskKind, outcome: TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Succeeded => states::SUCCEEDED,
        TaskOutcome::TimedOut => match kind {
            TaskKind::Precache => states::PRECACHE_TIMEOUT,
            TaskKind::Backup => states::BACKUP_TIMEOUT,
            _ => states::TIMED_OUT,
        },
        TaskOutcome::Cancelled => states::CANCELLED,
        TaskOutcome::Failed | TaskOutcome::Rejected | TaskOutcome::Unspecified => {
            states::UNRECOVERABLE_ERROR
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
            "BackupTimeout"
        );
        assert_eq!(
            result_state(TaskKind::Precache, TaskOutcome::Rejected),
            "UnrecoverableError"
        );
        assert!(is_final("Succeeded") && !is_final("Active"));
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
            "TimedOut"
        );
        assert_eq!(
            TaskKind::ApproveInstallPlans.display_name(),
            "approve-install-plans"
        );
    }
}

//! Pre-cache and backup gating through the clusters' agents (talm-behaviour.md §4.2 and §5.1,
//! with SpokeAgent tasks in place of TALM's Jobs, ManagedClusterActions and views).
//!
//! Per cluster and per reconcile: a cluster with no state gets the task assigned in its
//! SpokeAgent `spec` and becomes `PreparingToStart`; afterwards the state follows the agent's
//! report for that task id (`Starting`, `Active`, then a final state). The hub also ends a task
//! itself: past its deadline (`PrecacheTimeout`/`BackupTimeout`), or, once the CGU is enabled,
//! when the cluster is not Available (`UnrecoverableError`).

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{ClusterGroupUpgrade, PrecachingSpec};
use talm_shared::api::spokeagent::{BackupTask, PrecacheTask, SpokeAgent, TaskReport};

use crate::decision::{TaskChange, Write};

/// Pre-cache and backup state names.
pub mod states {
    #![allow(missing_docs)]
    pub const NOT_STARTED: &str = "NotStarted";
    pub const PREPARING_TO_START: &str = "PreparingToStart";
    pub const STARTING: &str = "Starting";
    pub const ACTIVE: &str = "Active";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PRECACHE_TIMEOUT: &str = "PrecacheTimeout";
    pub const BACKUP_TIMEOUT: &str = "BackupTimeout";
    pub const UNRECOVERABLE_ERROR: &str = "UnrecoverableError";
}

/// The backup job deadline TALM uses (seconds).
pub const BACKUP_DEADLINE_SECS: i64 = 480;
/// TALM's hub-side guard on backups (seconds from `status.backup.startedAt`).
pub const BACKUP_GUARD_SECS: i64 = 480 + 720;

/// Which task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Image pre-caching.
    Precache,
    /// Pre-upgrade backup.
    Backup,
}

impl Kind {
    fn timeout_state(self) -> &'static str {
        match self {
            Kind::Precache => states::PRECACHE_TIMEOUT,
            Kind::Backup => states::BACKUP_TIMEOUT,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Precache => "precache",
            Kind::Backup => "backup",
        }
    }
}

/// True for `Succeeded`, the timeouts and `UnrecoverableError`.
pub fn is_final(state: &str) -> bool {
    matches!(
        state,
        states::SUCCEEDED
            | states::PRECACHE_TIMEOUT
            | states::BACKUP_TIMEOUT
            | states::UNRECOVERABLE_ERROR
    )
}

/// The task id: unique per CGU (by uid, so a re-created CGU gets new tasks) and task kind.
pub fn task_id(cgu: &ClusterGroupUpgrade, kind: Kind) -> String {
    let ns = cgu.metadata.namespace.as_deref().unwrap_or("default");
    let name = cgu.metadata.name.as_deref().unwrap_or("");
    let uid = cgu.metadata.uid.as_deref().unwrap_or("-");
    format!("{ns}/{name}/{uid}/{}", kind.name())
}

/// The id prefix of every task of this CGU.
pub fn task_id_prefix(cgu: &ClusterGroupUpgrade) -> String {
    let ns = cgu.metadata.namespace.as_deref().unwrap_or("default");
    let name = cgu.metadata.name.as_deref().unwrap_or("");
    let uid = cgu.metadata.uid.as_deref().unwrap_or("-");
    format!("{ns}/{name}/{uid}/")
}

/// What the engine knows about one cluster for one task.
#[derive(Clone, Copy, Debug)]
pub struct ClusterInput<'a> {
    /// Cluster name (also its namespace).
    pub cluster: &'a str,
    /// State recorded in the CGU status, if any.
    pub state: Option<&'a str>,
    /// The cluster's SpokeAgent, if it exists.
    pub agent: Option<&'a SpokeAgent>,
    /// Whether the ManagedCluster is Available.
    pub available: bool,
    /// Whether the CGU is enabled.
    pub enabled: bool,
}

/// The task to assign when a cluster has none yet.
#[derive(Clone, Debug)]
pub enum NewTask<'a> {
    /// A pre-cache task with its spec and the CGU timeout in minutes.
    Precache(&'a PrecachingSpec, i32),
    /// A backup task.
    Backup,
}

/// One step of a cluster's task state machine: the new state and the write, if any.
pub fn step(
    kind: Kind,
    id: &str,
    input: ClusterInput<'_>,
    new_task: &NewTask<'_>,
    now: Timestamp,
) -> (String, Option<Write>) {
    let assign = || -> Write {
        let (precache, backup) = match new_task {
            NewTask::Precache(spec, timeout_min) => (
                Some(TaskChange::Assign(PrecacheTask {
                    id: id.to_string(),
                    spec: (*spec).clone(),
                    deadline: Time(
                        now.checked_add(SignedDuration::from_mins(i64::from(*timeout_min)))
                            .unwrap_or(Timestamp::MAX),
                    ),
                })),
                None,
            ),
            NewTask::Backup => (
                None,
                Some(TaskChange::Assign(BackupTask {
                    id: id.to_string(),
                    deadline: Time(
                        now.checked_add(SignedDuration::from_secs(BACKUP_DEADLINE_SECS))
                            .unwrap_or(Timestamp::MAX),
                    ),
                })),
            ),
        };
        Write::SetSpokeAgentTasks {
            namespace: input.cluster.to_string(),
            name: input.cluster.to_string(),
            precache,
            backup,
            install_plans: None,
        }
    };
    let current = match input.state {
        None | Some(states::NOT_STARTED) => {
            return (states::PREPARING_TO_START.to_string(), Some(assign()));
        }
        Some(s) if is_final(s) => return (s.to_string(), None),
        Some(s) => s,
    };
    let spec_task: Option<(&str, Time)> = input.agent.and_then(|a| match kind {
        Kind::Precache => a
            .spec
            .precache
            .as_ref()
            .map(|t| (t.id.as_str(), t.deadline.clone())),
        Kind::Backup => a
            .spec
            .backup
            .as_ref()
            .map(|t| (t.id.as_str(), t.deadline.clone())),
    });
    let assigned = spec_task.as_ref().is_some_and(|(tid, _)| *tid == id);
    if !assigned {
        if input.enabled && !input.available {
            return (states::UNRECOVERABLE_ERROR.to_string(), None);
        }
        // The SpokeAgent is missing or lost the task: assign it again, keep the state.
        return (current.to_string(), Some(assign()));
    }
    let report: Option<&TaskReport> = input.agent.and_then(|a| {
        a.status.as_ref().and_then(|s| match kind {
            Kind::Precache => s.precache.as_ref(),
            Kind::Backup => s.backup.as_ref(),
        })
    });
    let mut state = current.to_string();
    if let Some(r) = report.filter(|r| r.id == id) {
        match r.state.as_str() {
            states::STARTING | states::ACTIVE | states::SUCCEEDED | states::UNRECOVERABLE_ERROR => {
                state = r.state.clone();
            }
            s if s == kind.timeout_state() => state = r.state.clone(),
            // NotStarted/PreparingToStart from the agent, or a state this hub does not know:
            // keep what we have.
            _ => {}
        }
    }
    if !is_final(&state) {
        if input.enabled && !input.available {
            state = states::UNRECOVERABLE_ERROR.to_string();
        } else if let Some((_, deadline)) = spec_task
            && now > deadline.0
        {
            state = kind.timeout_state().to_string();
        }
    }
    (state, None)
}

/// A write that clears this CGU's tasks from a SpokeAgent (only the tasks it owns).
pub fn clear_tasks(cgu: &ClusterGroupUpgrade, agent: &SpokeAgent) -> Option<Write> {
    let prefix = task_id_prefix(cgu);
    let precache = agent
        .spec
        .precache
        .as_ref()
        .filter(|t| t.id.starts_with(&prefix))
        .map(|_| TaskChange::Clear);
    let backup = agent
        .spec
        .backup
        .as_ref()
        .filter(|t| t.id.starts_with(&prefix))
        .map(|_| TaskChange::Clear);
    let install_plans = agent
        .spec
        .install_plans
        .as_ref()
        .filter(|t| t.id.starts_with(&prefix))
        .map(|_| TaskChange::Clear);
    if precache.is_none() && backup.is_none() && install_plans.is_none() {
        return None;
    }
    Some(Write::SetSpokeAgentTasks {
        namespace: agent.metadata.namespace.clone().unwrap_or_default(),
        name: agent.metadata.name.clone().unwrap_or_default(),
        precache,
        backup,
        install_plans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::spokeagent::{SpokeAgentSpec, SpokeAgentStatus};

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn agent(
        spec_id: Option<&str>,
        report: Option<(&str, &str)>,
        deadline: Timestamp,
    ) -> SpokeAgent {
        let mut a = SpokeAgent::new(
            "spoke1",
            SpokeAgentSpec {
                precache: spec_id.map(|id| PrecacheTask {
                    id: id.into(),
                    spec: PrecachingSpec::default(),
                    deadline: Time(deadline),
                }),
                ..Default::default()
            },
        );
        a.metadata.namespace = Some("spoke1".into());
        a.status = Some(SpokeAgentStatus {
            precache: report.map(|(id, st)| TaskReport {
                id: id.into(),
                state: st.into(),
                message: String::new(),
            }),
            ..Default::default()
        });
        a
    }

    fn input<'a>(
        state: Option<&'a str>,
        agent: Option<&'a SpokeAgent>,
        available: bool,
        enabled: bool,
    ) -> ClusterInput<'a> {
        ClusterInput {
            cluster: "spoke1",
            state,
            agent,
            available,
            enabled,
        }
    }

    #[test]
    fn assigns_then_follows_matching_reports_only() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache(&spec, 240);
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(None, None, true, false),
            &nt,
            now(),
        );
        assert_eq!(s, "PreparingToStart");
        let Some(Write::SetSpokeAgentTasks {
            precache: Some(TaskChange::Assign(t)),
            ..
        }) = w
        else {
            panic!("expected an assignment");
        };
        assert_eq!(t.deadline, Time(now() + SignedDuration::from_mins(240)));

        let later = now() + SignedDuration::from_mins(300);
        let stale = agent(Some("id1"), Some(("id0", "Succeeded")), later);
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some("PreparingToStart"), Some(&stale), true, false),
            &nt,
            now(),
        );
        assert_eq!((s.as_str(), w), ("PreparingToStart", None));

        let active = agent(Some("id1"), Some(("id1", "Active")), later);
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some("PreparingToStart"), Some(&active), true, false),
            &nt,
            now(),
        );
        assert_eq!(s, "Active");

        let done = agent(Some("id1"), Some(("id1", "Succeeded")), later);
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some("Active"), Some(&done), true, true),
            &nt,
            now(),
        );
        assert_eq!(s, "Succeeded");
    }

    #[test]
    fn unavailable_fails_only_when_enabled() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache(&spec, 240);
        let a = agent(
            Some("id1"),
            Some(("id1", "Active")),
            now() + SignedDuration::from_mins(10),
        );
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some("Active"), Some(&a), false, false),
            &nt,
            now(),
        );
        assert_eq!(s, "Active");
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some("Active"), Some(&a), false, true),
            &nt,
            now(),
        );
        assert_eq!(s, "UnrecoverableError");
    }

    #[test]
    fn unavailable_cluster_without_its_task_fails_once_enabled() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache(&spec, 240);
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some("PreparingToStart"), None, false, false),
            &nt,
            now(),
        );
        assert_eq!(s, "PreparingToStart");
        assert!(w.is_some(), "re-assigned while not enabled");
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some("PreparingToStart"), None, false, true),
            &nt,
            now(),
        );
        assert_eq!((s.as_str(), w), ("UnrecoverableError", None));
    }

    #[test]
    fn deadline_times_out_and_lost_task_is_reassigned() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache(&spec, 240);
        let a = agent(Some("id1"), None, now() - SignedDuration::from_secs(1));
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some("Starting"), Some(&a), true, true),
            &nt,
            now(),
        );
        assert_eq!(s, "PrecacheTimeout");
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some("Starting"), None, true, true),
            &nt,
            now(),
        );
        assert_eq!(s, "Starting");
        assert!(w.is_some());
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some("UnrecoverableError"), None, true, true),
            &nt,
            now(),
        );
        assert_eq!((s.as_str(), w), ("UnrecoverableError", None));
    }
}

//! Pre-cache and backup gating through the clusters' agents (docs/contract.md §4.2 and §5.1,
//! with SpokeAgent tasks in place of TALM's Jobs, ManagedClusterActions and views).
//!
//! Per cluster and per reconcile: a cluster with no state gets the task assigned in its
//! SpokeAgent `spec` and becomes `PreparingToStart`; on the next pass, with the task in the
//! spec (handed to the agent), `Starting`; afterwards the state follows the agent's report for
//! that task id (`Active`, then a final state). A pre-cache task held by the fleet scheduler
//! (`hold`, docs/contract.md §4.4) stays `Starting` until it is let in. The hub also ends a task
//! itself: past its deadline (`PrecacheTimeout`/`BackupTimeout`), or, once the CGU is enabled,
//! when the cluster is not Available (`UnrecoverableError`).

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{ClusterGroupUpgrade, PrecachingSpec};
use talm_shared::api::spokeagent::{
    BackupTask, PrecacheOrder, PrecacheTask, SpokeAgent, TaskReport,
};
use talm_shared::task_state::TaskState;

use crate::decision::{TaskChange, Write};

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
    fn timeout_state(self) -> TaskState {
        match self {
            Kind::Precache => TaskState::PrecacheTimeout,
            Kind::Backup => TaskState::BackupTimeout,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Precache => "precache",
            Kind::Backup => "backup",
        }
    }
}

/// The state recorded for a cluster in the CGU status. A name talm does not know (only a hand
/// edit writes one) counts as `PreparingToStart`: not final, so the task is assigned again if
/// the agent lacks it and the agent's report is followed.
pub fn recorded_state(name: &str) -> TaskState {
    TaskState::from_name(name).unwrap_or(TaskState::PreparingToStart)
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
    pub state: Option<TaskState>,
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
    /// A pre-cache task.
    Precache {
        /// The pre-cache spec.
        spec: &'a PrecachingSpec,
        /// The CGU timeout in minutes (the task's deadline counts from its assignment).
        timeout_min: i32,
        /// Assign it held: a PrecacheBudget may apply (`schedule::may_apply`).
        hold: bool,
        /// The cluster's place in the fleet's pre-cache queue.
        order: Option<PrecacheOrder>,
    },
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
) -> (TaskState, Option<Write>) {
    let assign = || -> Write {
        let (precache, backup) = match new_task {
            NewTask::Precache {
                spec,
                timeout_min,
                hold,
                order,
            } => (
                Some(TaskChange::Assign(PrecacheTask {
                    id: id.to_string(),
                    spec: (*spec).clone(),
                    deadline: Time(
                        now.checked_add(SignedDuration::from_mins(i64::from(*timeout_min)))
                            .unwrap_or(Timestamp::MAX),
                    ),
                    hold: *hold,
                    // The scheduler gives the cap when it lets the task in.
                    rate_limit_bytes_per_second: None,
                    order: order.clone(),
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
            rollback: None,
        }
    };
    let current = match input.state {
        None | Some(TaskState::NotStarted) => {
            return (TaskState::PreparingToStart, Some(assign()));
        }
        Some(s) if s.is_final() => return (s, None),
        Some(s) => s,
    };
    // (id, deadline, held by the pre-cache scheduler)
    let spec_task: Option<(&str, Time, bool)> = input.agent.and_then(|a| match kind {
        Kind::Precache => a
            .spec
            .precache
            .as_ref()
            .map(|t| (t.id.as_str(), t.deadline.clone(), t.hold)),
        Kind::Backup => a
            .spec
            .backup
            .as_ref()
            .map(|t| (t.id.as_str(), t.deadline.clone(), false)),
    });
    let assigned = spec_task.as_ref().is_some_and(|(tid, _, _)| *tid == id);
    let held = spec_task.as_ref().is_some_and(|(_, _, h)| *h);
    if !assigned {
        if input.enabled && !input.available {
            return (TaskState::UnrecoverableError, None);
        }
        // The SpokeAgent is missing or lost the task: assign it again, keep the state.
        return (current, Some(assign()));
    }
    let report: Option<&TaskReport> = input.agent.and_then(|a| {
        a.status.as_ref().and_then(|s| match kind {
            Kind::Precache => s.precache.as_ref(),
            Kind::Backup => s.backup.as_ref(),
        })
    });
    // The task is in the SpokeAgent spec: handed to the agent. TALM moves from
    // PreparingToStart to Starting on the pass after the one that prepared the spoke.
    let mut state = match current {
        TaskState::PreparingToStart => TaskState::Starting,
        s => s,
    };
    if let Some(r) = report.filter(|r| r.id == id) {
        match TaskState::from_name(&r.state) {
            Some(
                s @ (TaskState::Starting
                | TaskState::Active
                | TaskState::Succeeded
                | TaskState::UnrecoverableError),
            ) => state = s,
            Some(s) if s == kind.timeout_state() => state = s,
            // NotStarted/PreparingToStart from the agent, another task kind's state, or a state
            // this hub does not know: keep what we have.
            _ => {}
        }
    }
    // Queued by the pre-cache scheduler: not downloading yet, whatever the agent says before
    // it sees the hold (a final report still counts).
    if held && state == TaskState::Active {
        state = TaskState::Starting;
    }
    if !state.is_final() {
        if input.enabled && !input.available {
            state = TaskState::UnrecoverableError;
        } else if let Some((_, deadline, _)) = spec_task
            && now > deadline.0
        {
            state = kind.timeout_state();
        }
    }
    (state, None)
}

/// Whether [`clear_tasks`] also disarms the CGU's rollback watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watchdog {
    /// Disarm it too (the CGU is being deleted, or the cluster left the plan).
    Disarm,
    /// Keep it armed: the CGU ended (succeeded, timed out, aborted), and a node whose upgrade
    /// is still unhealthy must still be recovered (the watchdog is disarmed only on the
    /// cluster's success, the CGU's deletion or by a person; contract §5.5).
    Keep,
}

/// A write that clears this CGU's tasks from a SpokeAgent (only the tasks it owns).
pub fn clear_tasks(
    cgu: &ClusterGroupUpgrade,
    agent: &SpokeAgent,
    watchdog: Watchdog,
) -> Option<Write> {
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
    let rollback = agent
        .spec
        .rollback
        .as_ref()
        .filter(|t| watchdog == Watchdog::Disarm && t.id.starts_with(&prefix))
        .map(|_| TaskChange::Clear);
    if precache.is_none() && backup.is_none() && install_plans.is_none() && rollback.is_none() {
        return None;
    }
    Some(Write::SetSpokeAgentTasks {
        namespace: agent.metadata.namespace.clone().unwrap_or_default(),
        name: agent.metadata.name.clone().unwrap_or_default(),
        precache,
        backup,
        install_plans,
        rollback,
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
                    hold: false,
                    rate_limit_bytes_per_second: None,
                    order: None,
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
                progress: None,
            }),
            ..Default::default()
        });
        a
    }

    fn input<'a>(
        state: Option<TaskState>,
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
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(None, None, true, false),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::PreparingToStart);
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
            input(Some(TaskState::PreparingToStart), Some(&stale), true, false),
            &nt,
            now(),
        );
        // Handed to the agent (in its spec), nothing reported for this id yet: Starting, as
        // TALM shows on the pass after the one that prepared the spoke.
        assert_eq!((s, w), (TaskState::Starting, None));

        let active = agent(Some("id1"), Some(("id1", "Active")), later);
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(
                Some(TaskState::PreparingToStart),
                Some(&active),
                true,
                false,
            ),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::Active);

        let done = agent(Some("id1"), Some(("id1", "Succeeded")), later);
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::Active), Some(&done), true, true),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::Succeeded);
    }

    #[test]
    fn a_held_task_stays_starting_until_let_in_but_a_final_report_counts() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: true,
            order: None,
        };
        let later = now() + SignedDuration::from_mins(10);
        let mut a = agent(Some("id1"), Some(("id1", "Active")), later);
        a.spec.precache.as_mut().unwrap().hold = true;
        let run = |a: &SpokeAgent| {
            step(
                Kind::Precache,
                "id1",
                input(Some(TaskState::Starting), Some(a), true, true),
                &nt,
                now(),
            )
        };
        assert_eq!(run(&a), (TaskState::Starting, None));
        a.spec.precache.as_mut().unwrap().hold = false;
        assert_eq!(run(&a), (TaskState::Active, None));
        a.spec.precache.as_mut().unwrap().hold = true;
        a.status.as_mut().unwrap().precache.as_mut().unwrap().state = "Succeeded".into();
        assert_eq!(run(&a), (TaskState::Succeeded, None));
        // Assigned held, with the queue place given.
        let (_, w) = step(
            Kind::Precache,
            "id2",
            input(None, None, true, false),
            &NewTask::Precache {
                spec: &spec,
                timeout_min: 240,
                hold: true,
                order: Some(PrecacheOrder {
                    batch: 3,
                    cgu_created: Time(now()),
                }),
            },
            now(),
        );
        let Some(Write::SetSpokeAgentTasks {
            precache: Some(TaskChange::Assign(t)),
            ..
        }) = w
        else {
            panic!("expected an assignment");
        };
        assert!(t.hold);
        assert_eq!(t.order.map(|o| o.batch), Some(3));
        assert_eq!(t.rate_limit_bytes_per_second, None);
    }

    #[test]
    fn unavailable_fails_only_when_enabled() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let a = agent(
            Some("id1"),
            Some(("id1", "Active")),
            now() + SignedDuration::from_mins(10),
        );
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::Active), Some(&a), false, false),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::Active);
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::Active), Some(&a), false, true),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::UnrecoverableError);
    }

    #[test]
    fn unavailable_cluster_without_its_task_fails_once_enabled() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::PreparingToStart), None, false, false),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::PreparingToStart);
        assert!(w.is_some(), "re-assigned while not enabled");
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::PreparingToStart), None, false, true),
            &nt,
            now(),
        );
        assert_eq!((s, w), (TaskState::UnrecoverableError, None));
    }

    #[test]
    fn deadline_times_out_and_lost_task_is_reassigned() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let a = agent(Some("id1"), None, now() - SignedDuration::from_secs(1));
        let (s, _) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::Starting), Some(&a), true, true),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::PrecacheTimeout);
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::Starting), None, true, true),
            &nt,
            now(),
        );
        assert_eq!(s, TaskState::Starting);
        assert!(w.is_some());
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some(TaskState::UnrecoverableError), None, true, true),
            &nt,
            now(),
        );
        assert_eq!((s, w), (TaskState::UnrecoverableError, None));
    }

    #[test]
    fn unknown_recorded_state_is_followed_like_preparing_to_start() {
        assert_eq!(recorded_state("Succeeded"), TaskState::Succeeded);
        assert_eq!(
            recorded_state("edited-by-hand"),
            TaskState::PreparingToStart
        );
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let a = agent(
            Some("id1"),
            Some(("id1", "Active")),
            now() + SignedDuration::from_mins(10),
        );
        let (s, w) = step(
            Kind::Precache,
            "id1",
            input(Some(recorded_state("edited-by-hand")), Some(&a), true, true),
            &nt,
            now(),
        );
        assert_eq!((s, w), (TaskState::Active, None));
    }

    #[test]
    fn reports_of_other_kinds_states_are_ignored() {
        let spec = PrecachingSpec::default();
        let nt = NewTask::Precache {
            spec: &spec,
            timeout_min: 240,
            hold: false,
            order: None,
        };
        let later = now() + SignedDuration::from_mins(10);
        for reported in [
            "BackupTimeout",
            "TimedOut",
            "Cancelled",
            "PreparingToStart",
            "?",
        ] {
            let a = agent(Some("id1"), Some(("id1", reported)), later);
            let (s, _) = step(
                Kind::Precache,
                "id1",
                input(Some(TaskState::Starting), Some(&a), true, true),
                &nt,
                now(),
            );
            assert_eq!(s, TaskState::Starting, "{reported}");
        }
    }
}

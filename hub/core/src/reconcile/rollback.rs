//! The rollback watchdog in the rollout (talm extension, CGU `spec.recovery`; issue 18).
//!
//! With `spec.recovery.automatic` (and `spec.backup`), a cluster whose backup succeeded gets its
//! watchdog armed through its SpokeAgent (`spec.rollback`) the first time it is released into a
//! policy of this CGU. The watchdog is disarmed when the cluster completes its policies (and
//! with every other task of the CGU on deletion or cleanup). A person's disarm or an agent that
//! cannot arm it ends it for this CGU: it is not armed again, and the cluster goes on. When
//! the agent reports `RolledBack` or `RollbackFailed`, the cluster is failed in the CGU: its
//! progress becomes `RolledBack`, `status.clusters` records it (`rolledback` or
//! `rollbackfailed`, with the policy it was in), it leaves the Placements at once, nothing is
//! enforced on it again in this CGU, and a `ClusterRolledBack` event names it.

use std::collections::HashSet;

use talm_shared::api::cgu::{ClusterState, ManagedPolicyForUpgrade, PolicyStatus};
use talm_shared::api::rhacm::Policy;
use talm_shared::task_state::TaskState;

use super::Run;
use super::progress::IN_PROGRESS;
use crate::conditions::reasons;
use crate::decision::{TaskChange, Write};
use crate::events;
use crate::installplan;
use crate::recovery::{self, Watch};

/// Progress state (`currentBatchRemediationProgress`) of a cluster rolled back by its agent:
/// done for the batch, failed for the CGU.
pub(super) const ROLLED_BACK: &str = "RolledBack";

impl Run<'_> {
    /// Whether `c`'s agent rolled it back (or failed to) for this CGU; the first time, records
    /// it failed, withdraws it, clears its approval task and emits `ClusterRolledBack`.
    /// Returns true when the cluster is rolled back (its progress must not move on).
    pub(super) fn rolled_back(&mut self, c: &str, policies: &[ManagedPolicyForUpgrade]) -> bool {
        let mut p = self.progress_of(c);
        if p.state == ROLLED_BACK {
            return true;
        }
        if p.state != IN_PROGRESS {
            return false;
        }
        let agent = self.snap.spoke_agent(c, c);
        let (state, ok) = match recovery::watch(self.cgu, agent) {
            Watch::RolledBack => (recovery::STATE_ROLLED_BACK, true),
            Watch::RollbackFailed => (recovery::STATE_ROLLBACK_FAILED, false),
            _ => return false,
        };
        let message = recovery::report_message(self.cgu, agent);
        let policy = p
            .policy_index
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| policies.get(i))
            .map(|p| p.name.clone());
        self.record_outcome(ClusterState {
            name: c.to_string(),
            state: state.to_string(),
            current_policy: policy.map(|name| PolicyStatus {
                name,
                status: "NonCompliant".into(),
            }),
            current_manifest_work: None,
        });
        self.new_failures = true;
        p.state = ROLLED_BACK.into();
        p.first_compliant_at = None;
        self.upgrade_status()
            .current_batch_remediation_progress
            .get_or_insert_with(Default::default)
            .insert(c.to_string(), p);
        self.withdraw(&HashSet::from([c.to_string()]));
        self.writes
            .extend(installplan::clear_agent_task(self.cgu, c, self.snap));
        self.events.push(events::cluster_rolled_back(
            self.cgu,
            events::cluster_ref(c, self.snap.managed_cluster(c)),
            ok,
            &message,
        ));
        true
    }

    /// Arms the watchdog of each released cluster of the batch whose backup succeeded, when the
    /// CGU asks for automatic recovery and the cluster's watchdog was never armed in this CGU.
    pub(super) fn arm_watchdogs(&mut self, batch: &[String], policies: &[ManagedPolicyForUpgrade]) {
        let Some(r) = recovery::automatic(&self.cgu.spec) else {
            return;
        };
        let backed_up = |c: &str| {
            self.status
                .backup
                .as_ref()
                .and_then(|b| b.status.as_ref())
                .and_then(|s| s.get(c))
                .is_some_and(|s| s == TaskState::Succeeded.as_str())
        };
        let mut arm = Vec::new();
        for c in batch {
            let p = self.progress_of(c);
            let released = p.state == IN_PROGRESS
                && p.policy_index
                    .and_then(|i| usize::try_from(i).ok())
                    .is_some_and(|i| i < policies.len());
            if !released || !backed_up(c) {
                continue;
            }
            if recovery::watch(self.cgu, self.snap.spoke_agent(c, c)) == Watch::NotArmed {
                arm.push(c.clone());
            }
        }
        if arm.is_empty() {
            return;
        }
        let roots: Vec<&Policy> = policies
            .iter()
            .filter_map(|p| self.snap.root_policy(&p.namespace, &p.name))
            .map(|r| &r.policy)
            .collect();
        let target = recovery::target_version(&roots);
        for c in arm {
            self.writes.push(Write::SetSpokeAgentTasks {
                namespace: c.clone(),
                name: c,
                precache: None,
                backup: None,
                install_plans: None,
                rollback: Some(TaskChange::Assign(recovery::task(
                    self.cgu,
                    r,
                    self.now,
                    target.clone(),
                ))),
            });
        }
    }

    /// At the end of the last batch, with every other cluster done: when any cluster of the
    /// plan was rolled back, the CGU ends failed (`Succeeded=False/ClustersRolledBack`) instead
    /// of succeeding. Returns true when it ended the CGU.
    pub(super) fn end_if_rolled_back(&mut self, plan: &[Vec<String>]) -> bool {
        let planned: HashSet<&str> = plan.iter().flatten().map(String::as_str).collect();
        let rolled: Vec<String> = self
            .status
            .clusters
            .iter()
            .flatten()
            .filter(|c| {
                (c.state == recovery::STATE_ROLLED_BACK
                    || c.state == recovery::STATE_ROLLBACK_FAILED)
                    && planned.contains(c.name.as_str())
            })
            .map(|c| c.name.clone())
            .collect();
        if rolled.is_empty() {
            return false;
        }
        let m = format!(
            "Clusters rolled back by their agents' watchdog: {}",
            rolled.join(", ")
        );
        self.end(reasons::COMPLETED, false, reasons::CLUSTERS_ROLLED_BACK, &m);
        true
    }

    /// Disarms `c`'s watchdog for this CGU (the cluster completed its policies).
    pub(super) fn disarm(&mut self, c: &str) {
        let id = recovery::task_id(self.cgu);
        let armed = self
            .snap
            .spoke_agent(c, c)
            .and_then(|a| a.spec.rollback.as_ref())
            .is_some_and(|t| t.id == id);
        if armed {
            self.writes.push(Write::SetSpokeAgentTasks {
                namespace: c.to_string(),
                name: c.to_string(),
                precache: None,
                backup: None,
                install_plans: None,
                rollback: Some(TaskChange::Clear),
            });
        }
    }
}

//! The failure budget (talm extension, `spec.remediationStrategy.maxFailures`; docs/contract.md
//! §11.2).
//!
//! A cluster has failed when it timed out in its batch (`status.clusters[].state: timedout`), its
//! agent rolled it back or failed to (`rolledback`, `rollbackfailed`; issue 18's watchdog,
//! docs/contract.md §5.5), or its pre-cache or backup ended in anything but `Succeeded`. Once more clusters have failed than
//! the budget allows (a count, or a percentage of the CGU's clusters rounded down), the rollout
//! ends as `batchTimeoutAction: Abort` ends it: `Progressing=False` and `Succeeded=False`, both
//! with reason `FailureBudgetExceeded` and a message naming the failed clusters; the completion
//! path then withdraws enforcement. Without the field nothing here applies.

use std::collections::HashSet;

use talm_shared::api::cgu::ClusterGroupUpgradeStatus;
use talm_shared::task_state::TaskState;

use super::Run;
use crate::conditions::reasons;
use crate::events;
use crate::tasks::recorded_state;
use crate::validate::failure_budget;

/// The failed clusters of a CGU status, in the order it records them: timed out or rolled back
/// (in `status.clusters` order), then pre-cache failures, then backup failures.
pub fn failed_clusters(status: &ClusterGroupUpgradeStatus) -> Vec<String> {
    let failed_task = |s: &String| {
        let st = recorded_state(s);
        st.is_final() && st != TaskState::Succeeded
    };
    let timed_out = status
        .clusters
        .iter()
        .flatten()
        .filter(|c| crate::recovery::counts_as_failed(&c.state))
        .map(|c| c.name.clone());
    let precache = status
        .precaching
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, s)| failed_task(s))
        .map(|(c, _)| c.clone());
    let backup = status
        .backup
        .as_ref()
        .and_then(|b| b.status.as_ref())
        .into_iter()
        .flatten()
        .filter(|(_, s)| failed_task(s))
        .map(|(c, _)| c.clone());
    let mut seen = HashSet::new();
    timed_out
        .chain(precache)
        .chain(backup)
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

/// The CGU's clusters as a started CGU's status knows them: the `plan`, the recorded outcomes,
/// and the clusters pre-caching or backup dropped.
pub fn status_cluster_count(status: &ClusterGroupUpgradeStatus, plan: &[Vec<String>]) -> usize {
    let mut all: HashSet<&str> = HashSet::new();
    all.extend(plan.iter().flatten().map(String::as_str));
    all.extend(status.clusters.iter().flatten().map(|c| c.name.as_str()));
    for states in [
        status.precaching.as_ref().and_then(|p| p.status.as_ref()),
        status.backup.as_ref().and_then(|b| b.status.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        all.extend(states.keys().map(String::as_str));
    }
    all.len()
}

impl Run<'_> {
    /// Ends the rollout when more clusters failed than the budget allows for a CGU of
    /// `clusters` clusters; true when it did.
    pub(super) fn budget_exceeded(&mut self, clusters: usize) -> bool {
        let Some(v) = self.cgu.spec.remediation_strategy.max_failures.clone() else {
            return false;
        };
        // An invalid value never gets this far (Validated=False stops the start); an edit
        // after the start is read as no budget rather than guessed at.
        let Ok(budget) = failure_budget(&v, clusters) else {
            return false;
        };
        let failed = failed_clusters(&self.status);
        if failed.len() <= budget {
            return false;
        }
        let raw = match &v {
            talm_shared::api::IntOrString::Int(n) => n.to_string(),
            talm_shared::api::IntOrString::String(s) => format!("{s:?}"),
        };
        let message = format!(
            "Failure budget exceeded: {} clusters failed, more than the {budget} allowed by remediationStrategy.maxFailures {raw}: {}",
            failed.len(),
            failed.join(", ")
        );
        self.events
            .push(events::failure_budget_exceeded(self.cgu, &message, &failed));
        self.end(
            reasons::FAILURE_BUDGET_EXCEEDED,
            false,
            reasons::FAILURE_BUDGET_EXCEEDED,
            &message,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn failures_are_timeouts_then_failed_pre_caches_then_failed_backups_once_each() {
        let status: ClusterGroupUpgradeStatus = serde_json::from_value(json!({
            "remediationPlan": [["a", "b"], ["c"]],
            "clusters": [{"name": "z", "state": "complete"}, {"name": "b", "state": "timedout"}],
            "precaching": {"status": {"d": "PrecacheTimeout", "e": "Succeeded", "f": "Active",
                                      "b": "UnrecoverableError"}},
            "backup": {"status": {"g": "BackupTimeout", "h": "Succeeded", "i": "Bogus"}}
        }))
        .unwrap();
        // Not final (Active, an unknown name) and Succeeded are not failures; b counts once.
        assert_eq!(failed_clusters(&status), ["b", "d", "g"]);
        let plan = status.remediation_plan.clone().unwrap();
        // a, b, c, z, d, e, f, g, h, i.
        assert_eq!(status_cluster_count(&status, &plan), 10);
        assert!(failed_clusters(&ClusterGroupUpgradeStatus::default()).is_empty());
    }
}

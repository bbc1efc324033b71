//! CGU status conditions: TALM's exact types, reasons and messages (docs/contract.md §2.3),
//! misspellings included, and its ordering rule; and the PrecacheBudget's own conditions
//! (talm's, docs/contract.md §4.4), in [`budget`].

use jiff::Timestamp;
use talm_shared::api::{Condition, Time};

/// Condition types.
pub mod types {
    /// Cluster selection result.
    pub const CLUSTERS_SELECTED: &str = "ClustersSelected";
    /// Policy validation result.
    pub const VALIDATED: &str = "Validated";
    /// Pre-cache spec validity.
    pub const PRECACHE_SPEC_VALID: &str = "PrecacheSpecValid";
    /// Pre-caching outcome (misspelled as in TALM).
    pub const PRECACHING_SUCCEEDED: &str = "PrecachingSuceeded";
    /// Backup outcome (misspelled as in TALM).
    pub const BACKUP_SUCCEEDED: &str = "BackupSuceeded";
    /// Whether remediation is running.
    pub const PROGRESSING: &str = "Progressing";
    /// Final outcome.
    pub const SUCCEEDED: &str = "Succeeded";
    /// talm extension: the rollout is paused (`spec.paused`) or held by an alert.
    pub const PAUSED: &str = "Paused";
}

/// Condition reasons.
pub mod reasons {
    #![allow(missing_docs)]
    pub const CLUSTER_SELECTION_COMPLETED: &str = "ClusterSelectionCompleted";
    pub const CLUSTER_NOT_FOUND: &str = "ClusterNotFound";
    pub const VALIDATION_COMPLETED: &str = "ValidationCompleted";
    pub const NOT_ALL_MANAGED_POLICIES_EXIST: &str = "NotAllManagedPoliciesExist";
    pub const AMBIGUOUS_MANAGED_POLICIES_NAMES: &str = "AmbiguousManagedPoliciesNames";
    pub const NOT_ALL_MANIFEST_TEMPLATES_EXIST: &str = "NotAllManifestTemplatesExist";
    pub const INVALID_PLATFORM_IMAGE: &str = "InvalidPlatformImage";
    pub const UNRESOLVABLE_DEPENDENCY: &str = "UnresolvableDenpendency";
    /// talm's own (TALM has no minimum): `remediationStrategy.maxConcurrency` is negative.
    pub const INVALID_MAX_CONCURRENCY: &str = "InvalidMaxConcurrency";
    /// talm extension: `spec.recovery` is invalid (needs `backup: true`, a bounded duration).
    pub const INVALID_RECOVERY: &str = "InvalidRecovery";
    /// talm extension: the rollout ended with clusters rolled back by their watchdog.
    pub const CLUSTERS_ROLLED_BACK: &str = "ClustersRolledBack";
    /// talm's own (TALM rolls a repeated policy out twice): `managedPolicies` repeats a name.
    pub const DUPLICATE_MANAGED_POLICIES: &str = "DuplicateManagedPolicies";
    /// talm's own (TALM fails its reconcile without a condition): a `clusterLabelSelectors`
    /// entry has an unknown operator or wrong values.
    pub const INVALID_CLUSTER_LABEL_SELECTOR: &str = "InvalidClusterLabelSelector";
    /// talm's own: `spec.maintenanceWindows` (a talm extension) does not parse.
    pub const INVALID_MAINTENANCE_WINDOW: &str = "InvalidMaintenanceWindow";
    /// talm's own: `Progressing=True` while the next batch waits for a maintenance window.
    pub const WAITING_FOR_MAINTENANCE_WINDOW: &str = "WaitingForMaintenanceWindow";
    pub const PRECACHE_SPEC_IS_WELL_FORMED: &str = "PrecacheSpecIsWellFormed";
    pub const PRECACHE_SPEC_INCOMPLETE: &str = "PrecacheSpecIncomplete";
    pub const IN_PROGRESS: &str = "InProgress";
    pub const PRECACHING_COMPLETED: &str = "PrecachingCompleted";
    pub const PARTIALLY_DONE: &str = "PartiallyDone";
    pub const FAILED: &str = "Failed";
    pub const BACKUP_COMPLETED: &str = "BackupCompleted";
    pub const NOT_ENABLED: &str = "NotEnabled";
    pub const MISSING_BLOCKING_CR: &str = "MissingBlockingCR";
    pub const INCOMPLETE_BLOCKING_CR: &str = "IncompleteBlockingCR";
    pub const NOT_STARTED: &str = "NotStarted";
    pub const WAITING_FOR_PLACEMENT: &str = "WaitingForPlacement";
    pub const COMPLETED: &str = "Completed";
    pub const TIMED_OUT: &str = "TimedOut";
    /// talm extension: `Paused=True` because `spec.paused` is true.
    pub const PAUSED: &str = "Paused";
    /// talm extension: `Paused=True` because alerts hold the CGU (`talm.dev/held-by`).
    pub const HELD_BY_ALERT: &str = "HeldByAlert";
    /// talm extension: `Paused=False` after a pause or hold ended.
    pub const RESUMED: &str = "Resumed";
    /// talm extension: more clusters failed than `remediationStrategy.maxFailures` allows.
    pub const FAILURE_BUDGET_EXCEEDED: &str = "FailureBudgetExceeded";
    /// talm extension: `remediationStrategy.maxFailures` is not a count or a percentage.
    pub const INVALID_MAX_FAILURES: &str = "InvalidMaxFailures";
}

/// Fixed condition messages.
pub mod messages {
    #![allow(missing_docs)]
    pub const CLUSTERS_VALID: &str = "All selected clusters are valid";
    pub const VALIDATION_COMPLETED: &str = "Completed validation";
    pub const PRECACHE_SPEC_VALID: &str = "Precaching spec is valid and consistent";
    pub const PRECACHING_REQUIRED: &str = "Precaching is required and not done";
    pub const PRECACHING_COMPLETED: &str = "Precaching is completed for all clusters";
    pub const PRECACHING_FAILED_ALL: &str = "Precaching failed for all clusters";
    pub const BACKUP_COMPLETED: &str = "Backup is completed for all clusters";
    pub const BACKUP_FAILED_ALL: &str = "Backup failed for all clusters";
    pub const NOT_ENABLED: &str = "Not enabled";
    pub const BACKUP_IN_PROGRESS_PROGRESSING: &str = "Cluster backup is in progress";
    pub const REMEDIATING: &str = "Remediating non-compliant policies";
    pub const ALL_COMPLIANT: &str = "All clusters are compliant with all the managed policies";
    pub const ALREADY_COMPLIANT: &str =
        "All clusters already compliant with the specified managed policies";
    pub const NO_CLUSTERS_PRECACHE: &str =
        "No clusters available for remediation (Precaching failed)";
    pub const NO_CLUSTERS_BACKUP: &str = "No clusters available for remediation (Backup failed)";
    pub const NO_CLUSTERS_BLOCKING: &str = "No clusters available for remediation after filtering out non-completed clusters from blocking CGUs";
    pub const TIMED_OUT: &str = "Policy remediation took too long";
    pub const TIMED_OUT_CANARY: &str = "Policy remediation took too long on canary clusters";
    pub const TIMED_OUT_SOME: &str = "Policy remediation took too long on some clusters";
    pub const MW_ROLLING_OUT: &str = "Rolling out manifestworks";
    pub const MW_COMPLETED: &str = "All manifestworks rolled out successfully on all clusters";
    pub const MW_TIMED_OUT: &str = "Manifestwork rollout took too long";
    pub const MW_TIMED_OUT_CANARY: &str = "Manifestwork rollout took too long on canary clusters";
    pub const MW_TIMED_OUT_SOME: &str = "Manifestwork rollout took too long on some clusters";
}

/// PrecacheBudget conditions (talm's own, docs/contract.md §4.4), set with [`set`] like the
/// CGU's.
pub mod budget {
    /// Condition types.
    pub mod types {
        /// Whether the spec parses (`bandwidth`, `maxConcurrentClusters`, hosts, selector).
        pub const VALID: &str = "Valid";
        /// Whether the selector matches some ManagedCluster.
        pub const CLUSTERS_SELECTED: &str = "ClustersSelected";
        /// Whether every listed registry is one the selected clusters' agents pull from.
        pub const REGISTRIES_SEEN: &str = "RegistriesSeen";
    }

    /// Condition reasons.
    pub mod reasons {
        /// `Valid=True`.
        pub const VALID: &str = "Valid";
        /// `Valid=False`: a `bandwidth` is not a positive quantity.
        pub const INVALID_BANDWIDTH: &str = "InvalidBandwidth";
        /// `Valid=False`: a `maxConcurrentClusters` is below 1.
        pub const INVALID_MAX_CONCURRENT_CLUSTERS: &str = "InvalidMaxConcurrentClusters";
        /// `Valid=False`: a registry `host` is not `host[:port]` (or is listed twice).
        pub const INVALID_REGISTRY_HOST: &str = "InvalidRegistryHost";
        /// `Valid=False`: the `clusterSelector` would be refused by apimachinery.
        pub const INVALID_SELECTOR: &str = "InvalidSelector";
        /// `ClustersSelected=True`.
        pub const CLUSTERS_SELECTED: &str = "ClustersSelected";
        /// `ClustersSelected=False`.
        pub const NO_CLUSTERS_SELECTED: &str = "NoClustersSelected";
        /// `RegistriesSeen=True`.
        pub const REGISTRIES_SEEN: &str = "RegistriesSeen";
        /// `RegistriesSeen=False`: a listed host is not among the reported registries.
        pub const UNKNOWN_REGISTRY: &str = "UnknownRegistry";
    }
}

/// Formats a list as Go's `%s` does for a `[]string`: `[a b c]`.
pub fn go_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut s = String::from("[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(it.as_ref());
    }
    s.push(']');
    s
}

/// Finds a condition by type.
pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// True when the condition exists with status `True`.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    find(conds, type_).is_some_and(|c| c.status == "True")
}

/// Sets a condition the way TALM does:
/// - a new condition is appended;
/// - a condition whose **status** changes is removed and re-appended (so the newest transition is
///   last, which the printer columns show), with a new transition time;
/// - a reason- or message-only change is made in place.
///
/// Returns true when anything changed.
pub fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status_s = if status { "True" } else { "False" };
    match conds.iter().position(|c| c.type_ == type_) {
        None => {
            conds.push(Condition {
                type_: type_.to_string(),
                status: status_s.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition_time: Time(now),
                observed_generation: generation,
            });
            true
        }
        Some(i) => {
            if conds[i].status != status_s {
                conds.remove(i);
                conds.push(Condition {
                    type_: type_.to_string(),
                    status: status_s.to_string(),
                    reason: reason.to_string(),
                    message: message.to_string(),
                    last_transition_time: Time(now),
                    observed_generation: generation,
                });
                true
            } else {
                let c = &mut conds[i];
                let changed = c.reason != reason
                    || c.message != message
                    || (generation.is_some() && c.observed_generation != generation);
                c.reason = reason.to_string();
                c.message = message.to_string();
                if generation.is_some() {
                    c.observed_generation = generation;
                }
                changed
            }
        }
    }
}

/// Removes a condition by type.
pub fn remove(conds: &mut Vec<Condition>, type_: &str) {
    conds.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn status_change_moves_condition_last() {
        let mut c = Vec::new();
        set(&mut c, "A", false, "R1", "m1", None, t(1));
        set(&mut c, "B", true, "R2", "m2", None, t(2));
        // message-only change stays in place and keeps its transition time
        assert!(set(&mut c, "A", false, "R1", "m1b", None, t(3)));
        assert_eq!(c[0].type_, "A");
        assert_eq!(c[0].last_transition_time, Time(t(1)));
        // status change moves it last with a new transition time
        assert!(set(&mut c, "A", true, "R3", "m3", None, t(4)));
        assert_eq!(
            c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(),
            ["B", "A"]
        );
        assert_eq!(c[1].last_transition_time, Time(t(4)));
        // no change
        assert!(!set(&mut c, "A", true, "R3", "m3", None, t(5)));
    }

    #[test]
    fn go_list_formats_like_go() {
        assert_eq!(go_list(&["a", "b"]), "[a b]");
        assert_eq!(go_list::<&str>(&[]), "[]");
    }
}

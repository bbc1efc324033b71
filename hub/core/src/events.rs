//! TALM's events (docs/contract.md §2.7): reasons, actions, notes and `cgu.openshift.io/*`
//! annotations, with TALM's size limits.

use std::collections::BTreeMap;

use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::rhacm::ManagedCluster;

use crate::decision::{Event, EventType, ObjectRef};

/// Annotation keys.
pub mod keys {
    #![allow(missing_docs)]
    pub const EVENT_TYPE: &str = "cgu.openshift.io/event-type";
    pub const TOTAL_BATCHES_COUNT: &str = "cgu.openshift.io/total-batches-count";
    pub const TOTAL_CLUSTERS_COUNT: &str = "cgu.openshift.io/total-clusters-count";
    pub const BATCH_CLUSTERS: &str = "cgu.openshift.io/batch-clusters";
    pub const BATCH_CLUSTERS_COUNT: &str = "cgu.openshift.io/batch-clusters-count";
    pub const TIMEDOUT_CLUSTERS: &str = "cgu.openshift.io/timedout-clusters";
    pub const MISSING_CLUSTERS: &str = "cgu.openshift.io/missing-clusters";
    pub const MISSING_CLUSTERS_COUNT: &str = "cgu.openshift.io/missing-clusters-count";
    pub const MISSING_POLICIES: &str = "cgu.openshift.io/missing-policies";
    pub const INVALID_POLICIES: &str = "cgu.openshift.io/invalid-policies";
    pub const AMBIGUOUS_POLICIES: &str = "cgu.openshift.io/ambiguous-policies";
    pub const TRUNCATED: &str = "cgu.openshift.io/truncated";
    /// talm extension: the clusters counted against the failure budget.
    pub const FAILED_CLUSTERS: &str = "talm.dev/failed-clusters";
}

/// apimachinery's total annotation size limit.
pub const ANNOTATION_LIMIT: usize = 256 * 1024;
/// Maximum event note length in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// Reference to the CGU.
pub fn cgu_ref(cgu: &ClusterGroupUpgrade) -> ObjectRef {
    ObjectRef {
        api_version: talm_shared::api::cgu::API_VERSION.into(),
        kind: "ClusterGroupUpgrade".into(),
        namespace: cgu.metadata.namespace.clone().unwrap_or_default(),
        name: cgu.metadata.name.clone().unwrap_or_default(),
        uid: cgu.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Reference to a ManagedCluster.
pub fn cluster_ref(name: &str, mc: Option<&ManagedCluster>) -> ObjectRef {
    ObjectRef {
        api_version: ManagedCluster::API_VERSION.into(),
        kind: ManagedCluster::KIND.into(),
        namespace: String::new(),
        name: name.into(),
        uid: mc.and_then(|m| m.metadata.uid.clone()).unwrap_or_default(),
    }
}

fn truncate_note(mut s: String) -> String {
    if s.len() > NOTE_LIMIT {
        let mut cut = NOTE_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Trims comma-list annotations (in the order given) until all annotations fit the limit, and
/// records each trimmed key under `cgu.openshift.io/truncated`.
pub fn fit_annotations(ann: &mut BTreeMap<String, String>, list_keys: &[&str], limit: usize) {
    let size =
        |a: &BTreeMap<String, String>| a.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let mut truncated: Vec<&str> = Vec::new();
    for key in list_keys {
        if size(ann) <= limit {
            break;
        }
        let over = size(ann) - limit + keys::TRUNCATED.len() + 64;
        if let Some(v) = ann.get_mut(*key) {
            let mut keep = v.len().saturating_sub(over);
            while keep > 0 && !v.is_char_boundary(keep) {
                keep -= 1;
            }
            let cut = v[..keep].rfind(',').unwrap_or(0);
            v.truncate(cut);
            truncated.push(key);
        }
    }
    if !truncated.is_empty() {
        ann.insert(keys::TRUNCATED.into(), truncated.join(","));
    }
}

/// Builds an event.
pub fn event(
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    regarding: ObjectRef,
    related: Option<ObjectRef>,
    annotations: &[(&str, String)],
) -> Event {
    let mut ann: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    fit_annotations(
        &mut ann,
        &[
            keys::BATCH_CLUSTERS,
            keys::TIMEDOUT_CLUSTERS,
            keys::FAILED_CLUSTERS,
            keys::MISSING_CLUSTERS,
            keys::MISSING_POLICIES,
            keys::INVALID_POLICIES,
            keys::AMBIGUOUS_POLICIES,
        ],
        ANNOTATION_LIMIT,
    );
    Event {
        type_,
        reason: reason.into(),
        action: action.into(),
        note: truncate_note(note),
        regarding,
        related,
        annotations: ann,
    }
}

/// `CguCreated` / `BuildingRemediationPlan`.
pub fn created(cgu: &ClusterGroupUpgrade) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "CguCreated",
        "BuildingRemediationPlan",
        format!("New ClusterGroupUpgrade found: {name}"),
        cgu_ref(cgu),
        None,
        &[(keys::EVENT_TYPE, "global".into())],
    )
}

/// `CguStarted` / `RemediationStarted`.
pub fn started(cgu: &ClusterGroupUpgrade, batches: usize, clusters: usize) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "CguStarted",
        "RemediationStarted",
        format!("ClusterGroupUpgrade {name} started remediating policies"),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "global".into()),
            (keys::TOTAL_BATCHES_COUNT, batches.to_string()),
            (keys::TOTAL_CLUSTERS_COUNT, clusters.to_string()),
        ],
    )
}

/// `CguStarted` / `RemediationInBatchStarted` (1-based batch index; `total_clusters` is the
/// number of clusters in the whole plan).
pub fn batch_started(
    cgu: &ClusterGroupUpgrade,
    batch: usize,
    clusters: &[String],
    total_clusters: usize,
) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "CguStarted",
        "RemediationInBatchStarted",
        format!("ClusterGroupUpgrade {name}: batch index {batch} upgrade started"),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "batch".into()),
            (keys::BATCH_CLUSTERS, clusters.join(",")),
            (keys::BATCH_CLUSTERS_COUNT, clusters.len().to_string()),
            (keys::TOTAL_CLUSTERS_COUNT, total_clusters.to_string()),
        ],
    )
}

/// `CguStarted` / `RemediationInClusterStarted`: regarding the CGU, related to the
/// ManagedCluster.
pub fn cluster_started(cgu: &ClusterGroupUpgrade, cluster: ObjectRef) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    let note = format!(
        "ClusterGroupUpgrade {name}: cluster {} upgrade started",
        cluster.name
    );
    event(
        EventType::Normal,
        "CguStarted",
        "RemediationInClusterStarted",
        note,
        cgu_ref(cgu),
        Some(cluster),
        &[(keys::EVENT_TYPE, "cluster".into())],
    )
}

/// `CguSuccess` / `RemediationInClusterCompleted`: regarding the CGU, related to the
/// ManagedCluster.
pub fn cluster_completed(cgu: &ClusterGroupUpgrade, cluster: ObjectRef) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    let note = format!(
        "ClusterGroupUpgrade {name}: cluster {} upgrade finished successfully",
        cluster.name
    );
    event(
        EventType::Normal,
        "CguSuccess",
        "RemediationInClusterCompleted",
        note,
        cgu_ref(cgu),
        Some(cluster),
        &[(keys::EVENT_TYPE, "cluster".into())],
    )
}

/// The reason of [`cluster_rolled_back`] events.
pub const CLUSTER_ROLLED_BACK: &str = "ClusterRolledBack";

/// `ClusterRolledBack` (Warning, talm extension): the cluster's rollback watchdog fired and
/// its agent rolled the node back (`rolled_back`) or failed to (`!rolled_back`); the cluster is
/// failed in the CGU. Regarding the CGU, related to the ManagedCluster.
pub fn cluster_rolled_back(
    cgu: &ClusterGroupUpgrade,
    cluster: ObjectRef,
    rolled_back: bool,
    message: &str,
) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    let what = if rolled_back {
        "was rolled back by its agent (not healthy in time)"
    } else {
        "failed its automatic rollback and needs a person"
    };
    let mut note = format!(
        "ClusterGroupUpgrade {name}: cluster {} {what}",
        cluster.name
    );
    if !message.is_empty() {
        note.push_str(": ");
        note.push_str(message);
    }
    event(
        EventType::Warning,
        CLUSTER_ROLLED_BACK,
        if rolled_back {
            "RollbackInClusterCompleted"
        } else {
            "RollbackInClusterFailed"
        },
        note,
        cgu_ref(cgu),
        Some(cluster),
        &[(keys::EVENT_TYPE, "cluster".into())],
    )
}

/// `CguSuccess` / `RemediationInBatchCompleted` (`total_clusters` as for [`batch_started`]).
pub fn batch_completed(
    cgu: &ClusterGroupUpgrade,
    batch: usize,
    clusters: &[String],
    total_clusters: usize,
) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "CguSuccess",
        "RemediationInBatchCompleted",
        format!(
            "ClusterGroupUpgrade {name}: all clusters in the batch index {batch} are compliant with managed policies"
        ),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "batch".into()),
            (keys::BATCH_CLUSTERS, clusters.join(",")),
            (keys::BATCH_CLUSTERS_COUNT, clusters.len().to_string()),
            (keys::TOTAL_CLUSTERS_COUNT, total_clusters.to_string()),
        ],
    )
}

/// talm extension: `WaitingForMaintenanceWindow` / `BatchWaiting`: the next batch waits for a
/// maintenance window (`why` says which and until when).
pub fn window_wait(cgu: &ClusterGroupUpgrade, batch: usize, why: &str) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "WaitingForMaintenanceWindow",
        "BatchWaiting",
        format!("ClusterGroupUpgrade {name}: batch index {batch} {why}"),
        cgu_ref(cgu),
        None,
        &[(keys::EVENT_TYPE, "batch".into())],
    )
}

/// talm extension: `MaintenanceWindowOpened` / `BatchReleased`: the wait ended, the batch
/// starts.
pub fn window_opened(cgu: &ClusterGroupUpgrade, batch: usize, waited: &str) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "MaintenanceWindowOpened",
        "BatchReleased",
        format!(
            "ClusterGroupUpgrade {name}: maintenance window open, batch index {batch} starts after waiting {waited}"
        ),
        cgu_ref(cgu),
        None,
        &[(keys::EVENT_TYPE, "batch".into())],
    )
}

/// `CguSuccess` / `RemediationCompleted`.
pub fn completed(cgu: &ClusterGroupUpgrade, batches: usize, clusters: usize) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Normal,
        "CguSuccess",
        "RemediationCompleted",
        format!("ClusterGroupUpgrade {name} succeeded remediating policies"),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "global".into()),
            (keys::TOTAL_BATCHES_COUNT, batches.to_string()),
            (keys::TOTAL_CLUSTERS_COUNT, clusters.to_string()),
        ],
    )
}

/// `CguTimedout` / `RemediationInBatchTimeout` (Warning).
pub fn batch_timed_out(cgu: &ClusterGroupUpgrade, batch: usize, timed_out: &[String]) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Warning,
        "CguTimedout",
        "RemediationInBatchTimeout",
        format!(
            "ClusterGroupUpgrade {name}: some clusters in the batch index {batch} timed out remediating policies"
        ),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "batch".into()),
            (keys::TIMEDOUT_CLUSTERS, timed_out.join(",")),
        ],
    )
}

/// `CguTimedout` / `RemediationTimeout` (Warning).
pub fn timed_out(cgu: &ClusterGroupUpgrade, timed_out: &[String]) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    event(
        EventType::Warning,
        "CguTimedout",
        "RemediationTimeout",
        format!("ClusterGroupUpgrade {name} timed-out remediating policies"),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "global".into()),
            (keys::TIMEDOUT_CLUSTERS, timed_out.join(",")),
        ],
    )
}

/// talm extension: `CguPaused` / `RemediationPaused` (or `RemediationHeldByAlert`), with the
/// Paused condition's message as the note.
pub fn paused(cgu: &ClusterGroupUpgrade, held_by_alert: bool, message: &str) -> Event {
    event(
        EventType::Normal,
        "CguPaused",
        if held_by_alert {
            "RemediationHeldByAlert"
        } else {
            "RemediationPaused"
        },
        message.to_string(),
        cgu_ref(cgu),
        None,
        &[(keys::EVENT_TYPE, "global".into())],
    )
}

/// talm extension: `CguResumed` / `RemediationResumed`.
pub fn resumed(cgu: &ClusterGroupUpgrade, message: &str) -> Event {
    event(
        EventType::Normal,
        "CguResumed",
        "RemediationResumed",
        message.to_string(),
        cgu_ref(cgu),
        None,
        &[(keys::EVENT_TYPE, "global".into())],
    )
}

/// talm extension: `CguFailureBudgetExceeded` / `RemediationStopped` (Warning), naming the
/// failed clusters.
pub fn failure_budget_exceeded(
    cgu: &ClusterGroupUpgrade,
    message: &str,
    failed: &[String],
) -> Event {
    event(
        EventType::Warning,
        "CguFailureBudgetExceeded",
        "RemediationStopped",
        message.to_string(),
        cgu_ref(cgu),
        None,
        &[
            (keys::EVENT_TYPE, "global".into()),
            (keys::FAILED_CLUSTERS, failed.join(",")),
        ],
    )
}

/// `CguValidationFailure` / `RemediationOnHoldDueToValidationFailure` (Warning). `kind` is
/// `missing clusters`, `missing policies`, `invalid policies` or `ambiguous policies`.
pub fn validation_failure(cgu: &ClusterGroupUpgrade, kind: &str, items: &[String]) -> Event {
    let name = cgu.metadata.name.clone().unwrap_or_default();
    let list = items.join(",");
    let mut ann = vec![(keys::EVENT_TYPE, "global".to_string())];
    match kind {
        "missing clusters" => {
            ann.push((keys::MISSING_CLUSTERS, list.clone()));
            ann.push((keys::MISSING_CLUSTERS_COUNT, items.len().to_string()));
        }
        "missing policies" => ann.push((keys::MISSING_POLICIES, list.clone())),
        "invalid policies" => ann.push((keys::INVALID_POLICIES, list.clone())),
        "ambiguous policies" => ann.push((keys::AMBIGUOUS_POLICIES, list.clone())),
        _ => {}
    }
    event(
        EventType::Warning,
        "CguValidationFailure",
        "RemediationOnHoldDueToValidationFailure",
        format!("ClusterGroupUpgrade {name}: validation failure ({kind}): {list}"),
        cgu_ref(cgu),
        None,
        &ann,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgu() -> ClusterGroupUpgrade {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu-1", "namespace": "ns", "uid": "u1"},
            "spec": {"remediationStrategy": {"maxConcurrency": 1}},
        }))
        .unwrap()
    }

    #[test]
    fn per_cluster_events_regard_the_cgu_and_relate_the_cluster() {
        let c = cgu();
        for e in [
            cluster_started(&c, cluster_ref("spoke1", None)),
            cluster_completed(&c, cluster_ref("spoke1", None)),
        ] {
            assert_eq!(e.regarding, cgu_ref(&c), "{}", e.action);
            let related = e.related.as_ref().unwrap();
            assert_eq!(
                (related.kind.as_str(), related.name.as_str()),
                ("ManagedCluster", "spoke1")
            );
            assert!(related.namespace.is_empty());
        }
        for e in [created(&c), started(&c, 1, 1), timed_out(&c, &[])] {
            assert_eq!(e.regarding, cgu_ref(&c));
            assert!(e.related.is_none(), "{}", e.action);
        }
    }

    #[test]
    fn batch_events_carry_the_total_cluster_count() {
        let c = cgu();
        let batch = vec!["a".to_string(), "b".to_string()];
        for e in [
            batch_started(&c, 1, &batch, 5),
            batch_completed(&c, 1, &batch, 5),
        ] {
            assert_eq!(e.annotations[keys::TOTAL_CLUSTERS_COUNT], "5");
            assert_eq!(e.annotations[keys::BATCH_CLUSTERS_COUNT], "2");
            assert_eq!(e.annotations[keys::BATCH_CLUSTERS], "a,b");
        }
    }

    #[test]
    fn long_lists_are_truncated_and_marked() {
        let clusters: Vec<String> = (0..40_000).map(|i| format!("cluster-{i:05}")).collect();
        let mut ann: BTreeMap<String, String> = BTreeMap::new();
        ann.insert(keys::BATCH_CLUSTERS.into(), clusters.join(","));
        ann.insert(keys::EVENT_TYPE.into(), "batch".into());
        fit_annotations(&mut ann, &[keys::BATCH_CLUSTERS], ANNOTATION_LIMIT);
        let total: usize = ann.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(total <= ANNOTATION_LIMIT, "{total}");
        assert_eq!(ann[keys::TRUNCATED], keys::BATCH_CLUSTERS);
        assert!(ann[keys::BATCH_CLUSTERS].starts_with("cluster-00000,cluster-00001"));
        assert!(!ann[keys::BATCH_CLUSTERS].ends_with(','));
    }

    #[test]
    fn truncation_respects_utf8_boundaries() {
        for pad in 0..4 {
            let names: Vec<String> = (0..30_000)
                .map(|i| format!("{}cé{i:06}", "x".repeat(pad)))
                .collect();
            let mut ann: BTreeMap<String, String> = BTreeMap::new();
            ann.insert(keys::MISSING_CLUSTERS.into(), names.join(","));
            fit_annotations(&mut ann, &[keys::MISSING_CLUSTERS], ANNOTATION_LIMIT);
            let total: usize = ann.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(total <= ANNOTATION_LIMIT);
        }
    }

    #[test]
    fn small_annotations_are_untouched_and_notes_are_capped() {
        let mut ann: BTreeMap<String, String> =
            [(keys::BATCH_CLUSTERS.to_string(), "a,b".to_string())].into();
        fit_annotations(&mut ann, &[keys::BATCH_CLUSTERS], ANNOTATION_LIMIT);
        assert_eq!(ann.len(), 1);
        assert_eq!(truncate_note("é".repeat(600)).len(), 1024);
    }
}

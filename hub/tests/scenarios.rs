//! Black-box rollout scenarios: TALM's kuttl suite (docs/contract.md §6.2) and detailed
//! acceptance cases (§6.3), replayed through `talm-hub plan` on the §6.1 fleet, plus talm's
//! deliberate fixes of TALM quirks (README, "Deliberate differences from TALM").
//!
//! Each test is a sequence of steps: edit the world (compliance, CGU spec, agent reports), move
//! the clock, run `talm-hub plan -o yaml`, and assert on what it printed. The output of one step
//! is the input of the next.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

const STARTED: &str = "Remediating non-compliant policies";
const ALL_COMPLIANT: &str = "All clusters are compliant with all the managed policies";
const ALREADY_COMPLIANT: &str =
    "All clusters already compliant with the specified managed policies";
const TOOK_TOO_LONG: &str = "Policy remediation took too long";

/// The CGU of `deploy/upgrades/upgrade-complete/cgu-upgrade-complete.yaml` (§6.3 A).
fn upgrade_complete_spec() -> Value {
    json!({
        "clusters": ["spoke1", "spoke4", "spoke6"],
        "managedPolicies": [P1, P2],
        "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
        "enable": false,
        "actions": {
            "beforeEnable": {"addClusterLabels": {"ztp-running": ""}},
            "afterCompletion": {
                "addClusterLabels": {"ztp-done": ""},
                "deleteClusterLabels": {"ztp-running": ""},
                "deleteObjects": true,
            },
        },
    })
}

/// Asserts the three "not started" conditions in order.
#[track_caller]
fn assert_not_enabled(c: &Value) {
    assert_eq!(
        condition_types(c),
        ["ClustersSelected", "Validated", "Progressing"],
        "condition order"
    );
    assert_condition(
        c,
        "ClustersSelected",
        "True",
        "ClusterSelectionCompleted",
        "All selected clusters are valid",
    );
    assert_condition(
        c,
        "Validated",
        "True",
        "ValidationCompleted",
        "Completed validation",
    );
    assert_condition(c, "Progressing", "False", "NotEnabled", "Not enabled");
}

#[track_caller]
fn assert_completed(c: &Value) {
    assert_condition(c, "Progressing", "False", "Completed", ALL_COMPLIANT);
    assert_condition(c, "Succeeded", "True", "Completed", ALL_COMPLIANT);
}

#[track_caller]
fn assert_timed_out(c: &Value, message: &str) {
    assert_condition(c, "Progressing", "False", "TimedOut", message);
    assert_condition(c, "Succeeded", "False", "TimedOut", message);
}

/// The `status.clusters` entry of a timed-out cluster.
#[track_caller]
fn assert_timedout_entry(c: &Value, cluster: &str, policy: &str) {
    let entry = c["status"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == cluster)
        .unwrap_or_else(|| panic!("{cluster} not in status.clusters: {:#}", c["status"]));
    assert_eq!(
        entry,
        &json!({"name": cluster, "state": "timedout",
                "currentPolicy": {"name": policy, "status": "NonCompliant"}}),
    );
}

#[track_caller]
fn assert_no_enforcement_left(w: &World, cgu_name: &str) {
    let left: Vec<String> = w
        .enforcement_objects(cgu_name)
        .iter()
        .map(|o| format!("{} {}/{}", kind(o), namespace(o), name(o)))
        .collect();
    assert!(left.is_empty(), "enforcement objects left behind: {left:?}");
}

fn label_keys(w: &World, cluster: &str) -> Vec<String> {
    w.labels(cluster)
        .into_keys()
        .filter(|k| k.starts_with("ztp-") || k.starts_with("cgu-"))
        .collect()
}

// =====================================================================================
// §6.3 A: upgrade-complete
// =====================================================================================

#[test]
fn a_upgrade_complete() {
    let cgu_name = "cgu-upgrade-complete";
    let mut w = World::talm();
    w.add_cgu(cgu_name, upgrade_complete_spec());

    // ---- step 0: not enabled
    w.run();
    let c = w.cgu(cgu_name);
    assert_not_enabled(c);
    assert!(
        strs(&c["metadata"]["finalizers"]).contains(&FINALIZER.to_string()),
        "finalizer added: {:#}",
        c["metadata"]
    );
    assert_eq!(policies_for_upgrade(c), in_default(&[P1, P2]));
    let content: Value = serde_json::from_str(
        c["status"]["managedPoliciesContent"][P2]
            .as_str()
            .expect("p2 content"),
    )
    .expect("managedPoliciesContent is JSON");
    assert_eq!(
        content,
        json!([{"kind": "Subscription", "name": "performance-addon-operator",
                "apiVersion": "operators.coreos.com/v1alpha1",
                "namespace": "openshift-performance-addon-operator"}])
    );
    assert!(
        c["status"]["managedPoliciesContent"][P1].is_null(),
        "policy1 has no Subscription"
    );
    assert_eq!(
        plan(c),
        batches(&[&["spoke1"], &["spoke4"]]),
        "spoke6 is compliant"
    );
    assert_eq!(c["status"]["computedMaxConcurrency"], 1);
    assert!(
        c["status"]["status"]["startedAt"].is_null(),
        "not started: {:#}",
        c["status"]
    );
    assert_eq!(current_batch(c), 0);
    assert!(c["status"]["clusters"].as_array().is_none_or(Vec::is_empty));

    // Enforcement objects exist but release nobody yet.
    let mut names = Vec::new();
    for p in [P1, P2] {
        let pl_name = World::placement_name(cgu_name, p);
        let pl = w
            .placement(cgu_name, p)
            .unwrap_or_else(|| panic!("no Placement {pl_name}"));
        assert_eq!(
            pl["apiVersion"],
            "cluster.open-cluster-management.io/v1beta1"
        );
        assert_eq!(
            placement_values(pl),
            Vec::<String>::new(),
            "{pl_name} releases nobody yet"
        );
        let labels = &pl["metadata"]["labels"];
        assert_eq!(labels["app"], "openshift-cluster-group-upgrades");
        assert_eq!(
            labels["openshift-cluster-group-upgrades/clusterGroupUpgrade"],
            cgu_name
        );
        assert_eq!(
            labels["openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace"],
            NS
        );
        assert_eq!(labels["openshift-cluster-group-upgrades/forPolicy"], p);
        assert_eq!(labels["velero.io/exclude-from-backup"], "true");
        let tolerations: Vec<&str> = pl["spec"]["tolerations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["key"].as_str().unwrap_or_default())
            .collect();
        assert!(tolerations.contains(&"cluster.open-cluster-management.io/unavailable"));
        assert!(tolerations.contains(&"cluster.open-cluster-management.io/unreachable"));
        let expr = &pl["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]["matchExpressions"]
            [0];
        assert_eq!(
            (&expr["key"], &expr["operator"]),
            (&json!("name"), &json!("In"))
        );

        let b = w
            .binding(cgu_name, p)
            .unwrap_or_else(|| panic!("no PlacementBinding {pl_name}"));
        assert_eq!(b["apiVersion"], "policy.open-cluster-management.io/v1");
        assert_eq!(b["subFilter"], "restricted");
        assert_eq!(b["bindingOverrides"]["remediationAction"], "enforce");
        assert_eq!(b["placementRef"]["name"], pl_name.as_str());
        assert_eq!(b["placementRef"]["kind"], "Placement");
        assert_eq!(b["subjects"][0]["kind"], "Policy");
        assert_eq!(b["subjects"][0]["name"], p);
        assert_eq!(
            c["status"]["safeResourceNames"][format!("{NS}/{cgu_name}-{p}-placement")],
            pl_name.as_str()
        );
        names.push(pl_name);
    }
    names.sort();
    assert_eq!(strs(&c["status"]["placements"]), names);
    assert_eq!(strs(&c["status"]["placementBindings"]), names);

    // TALM's UpgradeStatus is a plain struct: written as `{}` before the start.
    assert_eq!(c["status"]["status"], json!({}));
    w.event(
        "CguCreated",
        "BuildingRemediationPlan",
        &format!("New ClusterGroupUpgrade found: {cgu_name}"),
    );
    w.assert_no_event("CguStarted", "RemediationStarted");
    assert!(
        label_keys(&w, "spoke1").is_empty(),
        "no action before enable"
    );

    // ---- step 1: enable
    w.advance(10);
    w.patch_cgu_spec(cgu_name, json!({"enable": true}));
    w.run();
    let start = w.now;
    let c = w.cgu(cgu_name);
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(cluster_states(c), states(&[("spoke6", "complete")]));
    assert_eq!(current_batch(c), 1);
    assert_eq!(progress(c), prog(&[("spoke1", "InProgress", Some(0))]));
    assert_eq!(time(&c["status"]["status"]["startedAt"]), Some(start));
    assert_eq!(
        time(&c["status"]["status"]["currentBatchStartedAt"]),
        Some(start)
    );
    assert_eq!(label_keys(&w, "spoke1"), ["ztp-running"]);
    assert_eq!(label_keys(&w, "spoke4"), ["ztp-running"]);
    assert_eq!(label_keys(&w, "spoke6"), ["ztp-done"]);
    assert_eq!(w.released(cgu_name, P1), ["spoke1"]);
    assert!(w.released(cgu_name, P2).is_empty());

    let e = w.event(
        "CguStarted",
        "RemediationStarted",
        &format!("ClusterGroupUpgrade {cgu_name} started remediating policies"),
    );
    assert_eq!(ev_ann(e, "event-type"), Some("global"));
    assert_eq!(ev_ann(e, "total-batches-count"), Some("2"));
    assert_eq!(ev_ann(e, "total-clusters-count"), Some("2"));
    assert_eq!(e["reportingController"], "ClusterGroupUpgrade");
    let e = w.event(
        "CguStarted",
        "RemediationInBatchStarted",
        &format!("ClusterGroupUpgrade {cgu_name}: batch index 1 upgrade started"),
    );
    assert_eq!(ev_ann(e, "event-type"), Some("batch"));
    assert_eq!(ev_ann(e, "batch-clusters"), Some("spoke1"));
    assert_eq!(ev_ann(e, "batch-clusters-count"), Some("1"));
    // TALM's batch events carry the CGU's total cluster count too.
    assert_eq!(ev_ann(e, "total-clusters-count"), Some("2"));
    let e = w.event(
        "CguStarted",
        "RemediationInClusterStarted",
        &format!("ClusterGroupUpgrade {cgu_name}: cluster spoke1 upgrade started"),
    );
    assert_eq!(ev_ann(e, "event-type"), Some("cluster"));
    // Per-cluster events are about the CGU (so a field selector on the CGU finds them), with
    // the ManagedCluster as the related object, as TALM's recorder writes them.
    assert_eq!(e["regarding"]["kind"], "ClusterGroupUpgrade");
    assert_eq!(e["regarding"]["name"], cgu_name);
    assert_eq!(e["related"]["kind"], "ManagedCluster");
    assert_eq!(e["related"]["name"], "spoke1");
    assert!(e["related"].get("namespace").is_none(), "cluster-scoped");
    w.assert_no_event("CguCreated", "BuildingRemediationPlan");

    // ---- step 1b: spoke1 compliant on policy1 only: enforcement accumulates within the batch.
    w.advance(5);
    w.set_compliance(P1, "spoke1", Compliant);
    w.run();
    let c = w.cgu(cgu_name);
    assert_eq!(progress(c), prog(&[("spoke1", "InProgress", Some(1))]));
    assert_eq!(
        w.released(cgu_name, P1),
        ["spoke1"],
        "earlier policy stays enforced"
    );
    assert_eq!(w.released(cgu_name, P2), ["spoke1"]);
    assert_eq!(current_batch(c), 1);

    // ---- step 2: spoke1 compliant on both: batch 1 done, batch 2 starts with spoke4.
    w.advance(10);
    w.set_compliance(P2, "spoke1", Compliant);
    w.run();
    let c = w.cgu(cgu_name);
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(
        cluster_states(c),
        states(&[("spoke6", "complete"), ("spoke1", "complete")])
    );
    assert_eq!(current_batch(c), 2);
    assert_eq!(progress(c), prog(&[("spoke4", "InProgress", Some(0))]));
    assert_eq!(
        time(&c["status"]["status"]["currentBatchStartedAt"]),
        Some(w.now)
    );
    assert_eq!(label_keys(&w, "spoke1"), ["ztp-done"]);
    assert_eq!(label_keys(&w, "spoke4"), ["ztp-running"]);
    assert_eq!(
        w.released(cgu_name, P1),
        ["spoke4"],
        "emptied at batch end, then spoke4"
    );
    assert!(
        w.released(cgu_name, P2).is_empty(),
        "emptied when batch 1 completed"
    );
    w.event(
        "CguSuccess",
        "RemediationInClusterCompleted",
        &format!("ClusterGroupUpgrade {cgu_name}: cluster spoke1 upgrade finished successfully"),
    );
    let e = w.event(
        "CguSuccess",
        "RemediationInBatchCompleted",
        &format!(
            "ClusterGroupUpgrade {cgu_name}: all clusters in the batch index 1 are compliant with managed policies"
        ),
    );
    assert_eq!(ev_ann(e, "event-type"), Some("batch"));
    assert_eq!(ev_ann(e, "total-clusters-count"), Some("2"));
    let e = w.event(
        "CguStarted",
        "RemediationInBatchStarted",
        &format!("ClusterGroupUpgrade {cgu_name}: batch index 2 upgrade started"),
    );
    assert_eq!(ev_ann(e, "batch-clusters"), Some("spoke4"));

    // ---- step 3: spoke4 compliant: the CGU succeeds and cleans up.
    w.advance(10);
    w.comply("spoke4", &[P1, P2]);
    w.run();
    let c = w.cgu(cgu_name);
    assert_completed(c);
    assert_eq!(
        condition_types(c),
        ["ClustersSelected", "Validated", "Progressing", "Succeeded"],
        "condition order"
    );
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke1", "complete"),
            ("spoke4", "complete")
        ])
    );
    assert_eq!(time(&c["status"]["status"]["completedAt"]), Some(w.now));
    assert_eq!(current_batch(c), 0, "reset at completion");
    assert_eq!(label_keys(&w, "spoke4"), ["ztp-done"]);
    w.event(
        "CguSuccess",
        "RemediationInBatchCompleted",
        &format!(
            "ClusterGroupUpgrade {cgu_name}: all clusters in the batch index 2 are compliant with managed policies"
        ),
    );
    w.event(
        "CguSuccess",
        "RemediationCompleted",
        &format!("ClusterGroupUpgrade {cgu_name} succeeded remediating policies"),
    );
    assert_no_enforcement_left(&w, cgu_name);

    // ---- step 4: nothing left to do: no new events, status unchanged.
    let before = w.cgu(cgu_name).clone();
    w.run_after(60);
    assert!(
        w.events.is_empty(),
        "a finished CGU emits nothing:\n{:#?}",
        w.events
    );
    assert_eq!(w.cgu(cgu_name)["status"], before["status"]);
}

// =====================================================================================
// §6.3 B: cluster-selector
// =====================================================================================

#[test]
fn b_cluster_selector() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-cluster-selector",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke5", "spoke6"],
            "clusterLabelSelectors": [
                {"matchLabels": {"upgrade2": "true"}},
                {"matchExpressions": [{"key": "upgrade", "operator": "Exists"}]},
            ],
            "managedPolicies": [P1, P2, P3, P4],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-cluster-selector");
    assert_not_enabled(c);
    // Selection order spoke1, spoke2, spoke5, spoke6 (explicit), spoke3, spoke4 (selected,
    // sorted); spoke3 is NotMatched everywhere and left out.
    assert_eq!(
        plan(c),
        batches(&[&["spoke1", "spoke2"], &["spoke5", "spoke6"], &["spoke4"]])
    );
    assert_eq!(c["status"]["computedMaxConcurrency"], 2);
    assert_eq!(policies_for_upgrade(c), in_default(&[P1, P2, P3, P4]));
}

// =====================================================================================
// §6.3 C: skip-compliant-policies / do-not-skip-compliant-policies-with-status
// =====================================================================================

fn skip_compliant_world(p2_has_status: bool) -> World {
    let mut w = World::talm();
    w.set_matrix_row(
        P1,
        &[
            ("spoke1", NonCompliant),
            ("spoke4", NonCompliant),
            ("spoke6", NonCompliant),
        ],
    );
    w.set_matrix_row(
        P2,
        &[
            ("spoke1", Compliant),
            ("spoke2", Compliant),
            ("spoke5", Compliant),
            ("spoke6", Compliant),
        ],
    );
    w.set_matrix_row(P3, &[("spoke2", NonCompliant), ("spoke4", NonCompliant)]);
    w.set_matrix_row(
        P4,
        &[
            ("spoke4", NonCompliant),
            ("spoke5", NonCompliant),
            ("spoke6", NonCompliant),
        ],
    );
    if p2_has_status {
        // The ZTP shape: the Subscription must report `state: AtLatestKnown`.
        let status = json!({"state": "AtLatestKnown"});
        let child = format!("{NS}.{P2}");
        for o in w.objects.iter_mut() {
            if kind(o) == "Policy" && (name(o) == P2 || name(o) == child) {
                let templates = &mut o["spec"]["policy-templates"][0]["objectDefinition"]["spec"]["object-templates"];
                for t in templates.as_array_mut().expect("object-templates") {
                    if t["objectDefinition"]["kind"] == "Subscription" {
                        t["objectDefinition"]["status"] = status.clone();
                    }
                }
            }
        }
    }
    w.add_cgu(
        "cgu-skip",
        json!({
            "clusters": ["spoke6", "spoke2", "spoke1", "spoke5"],
            "managedPolicies": [P1, P2, P3, P4],
            "remediationStrategy": {"maxConcurrency": 4},
            "enable": true,
        }),
    );
    w
}

#[test]
fn c_skip_compliant_policies() {
    let mut w = skip_compliant_world(false);
    w.run();
    let c = w.cgu("cgu-skip");
    assert_eq!(c["status"]["computedMaxConcurrency"], 4);
    assert_eq!(
        plan(c),
        batches(&[&["spoke6", "spoke2", "spoke1", "spoke5"]])
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(current_batch(c), 1);
    assert_eq!(
        strs(&c["status"]["managedPoliciesCompliantBeforeUpgrade"]),
        [P2]
    );
    assert_eq!(policies_for_upgrade(c), in_default(&[P1, P3, P4]));
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "InProgress", Some(0)),
            ("spoke2", "InProgress", Some(1)),
            ("spoke5", "InProgress", Some(2)),
            ("spoke6", "InProgress", Some(0)),
        ])
    );
    // Each cluster is released to the policy at its index only.
    assert_eq!(w.released("cgu-skip", P1), ["spoke1", "spoke6"]);
    assert_eq!(w.released("cgu-skip", P3), ["spoke2"]);
    assert_eq!(w.released("cgu-skip", P4), ["spoke5"]);
    assert!(
        w.placement("cgu-skip", P2).is_none(),
        "no enforcement for a skipped policy"
    );
}

#[test]
fn c_do_not_skip_compliant_policies_with_status() {
    let mut w = skip_compliant_world(true);
    w.run();
    let c = w.cgu("cgu-skip");
    assert_eq!(
        plan(c),
        batches(&[&["spoke6", "spoke2", "spoke1", "spoke5"]])
    );
    assert!(
        strs(&c["status"]["managedPoliciesCompliantBeforeUpgrade"]).is_empty(),
        "a policy with a status: template is never skipped"
    );
    assert_eq!(policies_for_upgrade(c), in_default(&[P1, P2, P3, P4]));
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "InProgress", Some(0)),
            ("spoke2", "InProgress", Some(2)),
            ("spoke5", "InProgress", Some(3)),
            ("spoke6", "InProgress", Some(0)),
        ])
    );
}

// =====================================================================================
// §6.3 E: upgrade-batch-timeout / upgrade-partial-batch-timeout
// =====================================================================================

#[test]
fn e_upgrade_batch_timeout() {
    let cgu_name = "cgu-upgrade-batch-timeout";
    let mut w = World::talm();
    w.add_cgu(cgu_name, upgrade_complete_spec());
    w.run();
    w.patch_cgu_spec(cgu_name, json!({"enable": true}));
    w.run_after(10);
    w.comply("spoke1", &[P1, P2]);
    w.run_after(10);
    let c = w.cgu(cgu_name);
    assert_eq!(current_batch(c), 2);
    assert_eq!(
        cluster_states(c),
        states(&[("spoke6", "complete"), ("spoke1", "complete")])
    );

    // timeout: 0 => already timed out.
    w.patch_cgu_spec(cgu_name, json!({"remediationStrategy": {"timeout": 0}}));
    w.run_after(1);
    let c = w.cgu(cgu_name);
    assert_timed_out(c, TOOK_TOO_LONG);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke1", "complete"),
            ("spoke4", "timedout")
        ])
    );
    assert_timedout_entry(c, "spoke4", P1);
    assert_eq!(
        label_keys(&w, "spoke4"),
        ["ztp-running"],
        "no afterCompletion for spoke4"
    );
    let e = w.event(
        "CguTimedout",
        "RemediationInBatchTimeout",
        &format!(
            "ClusterGroupUpgrade {cgu_name}: some clusters in the batch index 2 timed out remediating policies"
        ),
    );
    assert_eq!(e["type"], "Warning");
    assert_eq!(ev_ann(e, "timedout-clusters"), Some("spoke4"));
    let e = w.event(
        "CguTimedout",
        "RemediationTimeout",
        &format!("ClusterGroupUpgrade {cgu_name} timed-out remediating policies"),
    );
    assert_eq!(e["type"], "Warning");
    assert_no_enforcement_left(&w, cgu_name);
}

#[test]
fn e_upgrade_partial_batch_timeout() {
    let cgu_name = "cgu-upgrade-partial-batch-timeout";
    let mut w = World::talm();
    let mut spec = upgrade_complete_spec();
    spec["managedPolicies"] = json!([P1, P0]);
    spec["remediationStrategy"]["maxConcurrency"] = json!(2);
    spec["enable"] = json!(true);
    w.add_cgu(cgu_name, spec);
    w.run();
    let c = w.cgu(cgu_name);
    assert_eq!(plan(c), batches(&[&["spoke1", "spoke4"]]));
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "InProgress", Some(0)),
            ("spoke4", "InProgress", Some(0))
        ])
    );
    assert_eq!(w.released(cgu_name, P1), ["spoke1", "spoke4"]);
    assert!(w.released(cgu_name, P0).is_empty());

    w.set_compliance(P1, "spoke1", Compliant);
    w.run_after(10);
    let c = w.cgu(cgu_name);
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "InProgress", Some(1)),
            ("spoke4", "InProgress", Some(0))
        ])
    );
    assert_eq!(
        w.released(cgu_name, P1),
        ["spoke1", "spoke4"],
        "cumulative within a batch"
    );
    assert_eq!(w.released(cgu_name, P0), ["spoke1"]);

    w.set_compliance(P0, "spoke1", Compliant);
    w.run_after(10);
    let c = w.cgu(cgu_name);
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "Completed", None),
            ("spoke4", "InProgress", Some(0))
        ])
    );
    assert_eq!(
        cluster_states(c),
        states(&[("spoke6", "complete"), ("spoke1", "complete")])
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);

    w.patch_cgu_spec(cgu_name, json!({"remediationStrategy": {"timeout": 0}}));
    w.run_after(1);
    let c = w.cgu(cgu_name);
    assert_timed_out(c, TOOK_TOO_LONG);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke1", "complete"),
            ("spoke4", "timedout")
        ])
    );
    assert_timedout_entry(c, "spoke4", P1);
    assert_no_enforcement_left(&w, cgu_name);
}

// =====================================================================================
// §6.3 H: upgrade-starts-complete
// =====================================================================================

#[test]
fn h_upgrade_starts_complete() {
    let mut w = World::talm();
    w.comply("spoke1", &[P1, P2]);
    w.add_cgu(
        "cgu-starts-complete",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P1, P2],
            "remediationStrategy": {"maxConcurrency": 1},
            "backup": true,
            "preCaching": true,
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-starts-complete");
    assert_eq!(
        strs(&c["status"]["managedPoliciesCompliantBeforeUpgrade"]),
        [P1, P2]
    );
    assert_condition(c, "Progressing", "False", "NotEnabled", "Not enabled");
    assert!(
        c["status"]["precaching"].is_null(),
        "no pre-caching: {:#}",
        c["status"]
    );
    assert!(plan(c).is_none());
    assert!(
        w.all("SpokeAgent").is_empty(),
        "no agent task for a compliant cluster"
    );

    w.patch_cgu_spec("cgu-starts-complete", json!({"enable": true}));
    w.run_after(10);
    let c = w.cgu("cgu-starts-complete");
    assert_eq!(cluster_states(c), states(&[("spoke1", "complete")]));
    assert_condition(c, "Progressing", "False", "Completed", ALL_COMPLIANT);
    assert_condition(c, "Succeeded", "True", "Completed", ALREADY_COMPLIANT);
    assert!(
        c["status"]["backup"].is_null(),
        "no backup: {:#}",
        c["status"]
    );
    assert!(c["status"]["precaching"].is_null());
    assert!(
        w.all("SpokeAgent").is_empty(),
        "no agent task for a compliant cluster"
    );
}

// =====================================================================================
// §6.3 J: operator-upgrade
// =====================================================================================

#[test]
fn j_operator_upgrade_plan_and_enforcement() {
    // TALM approves Manual InstallPlans through ManagedClusterViews/Actions
    // (`cgu-default-subscription-<sub>-kuttl`, `install-aaaa1..5`). Without a connected agent
    // talm writes the same Subscription views, and `plan` shows them; the InstallPlan views and
    // the actions need the views' results, which only a live hub fills in.
    let mut w = World::talm();
    w.set_compliance(P5, "spoke1", NonCompliant)
        .set_compliance(P5, "spoke2", NonCompliant);
    w.add_cgu(
        "cgu",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke5"],
            "managedPolicies": [P5],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu");
    assert_eq!(plan(c), batches(&[&["spoke1", "spoke2"], &["spoke5"]]));
    let content: Value = serde_json::from_str(
        c["status"]["managedPoliciesContent"][P5]
            .as_str()
            .expect("content"),
    )
    .expect("JSON");
    let subs = [
        ("cluster-logging", "openshift-logging"),
        ("local-storage-operator", "openshift-local-storage"),
        (
            "performance-addon-operator",
            "openshift-performance-addon-operator",
        ),
        ("ptp-operator-subscription", "openshift-ptp"),
        (
            "sriov-network-operator-subscription",
            "openshift-sriov-network-operator",
        ),
    ];
    let expected: Vec<Value> = subs
        .iter()
        .map(|(n, ns)| {
            json!({"kind": "Subscription", "name": n,
                   "apiVersion": "operators.coreos.com/v1alpha1", "namespace": ns})
        })
        .collect();
    assert_eq!(content, Value::Array(expected));

    w.patch_cgu_spec("cgu", json!({"enable": true}));
    w.run_after(10);
    let c = w.cgu("cgu");
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    let pl = w
        .placement("cgu", P5)
        .expect("cgu-policy5-subscriptions-placement-kuttl");
    assert_eq!(name(pl), "cgu-policy5-subscriptions-placement-kuttl");
    assert_eq!(w.released("cgu", P5), ["spoke1", "spoke2"]);
    let b = w.binding("cgu", P5).expect("binding");
    assert_eq!(b["subFilter"], "restricted");
    assert_eq!(b["bindingOverrides"]["remediationAction"], "enforce");
    // TALM records each Subscription view's name, with an empty namespace part.
    for (sub, _) in subs {
        assert_eq!(
            c["status"]["safeResourceNames"][format!("/cgu-default-subscription-{sub}")],
            format!("cgu-default-subscription-{sub}-kuttl"),
            "{sub}"
        );
    }
    // No agent is connected: the views the operator would write, in each cluster namespace.
    for cluster in ["spoke1", "spoke2"] {
        for (sub, sub_ns) in subs {
            let view = w
                .find(
                    "ManagedClusterView",
                    cluster,
                    &format!("cgu-default-subscription-{sub}-kuttl"),
                )
                .unwrap_or_else(|| panic!("no view of {sub} in {cluster}"));
            assert_eq!(
                view["apiVersion"],
                "view.open-cluster-management.io/v1beta1"
            );
            assert_eq!(
                view["spec"]["scope"]["resource"],
                "Subscription.operators.coreos.com"
            );
            assert_eq!(view["spec"]["scope"]["name"], sub);
            assert_eq!(view["spec"]["scope"]["namespace"], sub_ns);
            assert_eq!(
                view["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"],
                "cgu"
            );
        }
    }
    let views_in = |w: &World, ns: &str| {
        w.all("ManagedClusterView")
            .into_iter()
            .filter(|v| v["metadata"]["namespace"] == ns)
            .count()
    };
    assert_eq!(views_in(&w, "spoke5"), 0, "spoke5 is not in the batch");

    w.set_compliance(P5, "spoke1", Compliant);
    w.run_after(10);
    let c = w.cgu("cgu");
    assert_eq!(
        progress(c),
        prog(&[
            ("spoke1", "Completed", None),
            ("spoke2", "InProgress", Some(0))
        ])
    );
    assert_eq!(views_in(&w, "spoke1"), 0, "a completed cluster's views go");
    assert_eq!(views_in(&w, "spoke2"), subs.len());
    w.patch_cgu_spec("cgu", json!({"remediationStrategy": {"timeout": 0}}));
    w.run_after(1);
    let c = w.cgu("cgu");
    assert_timed_out(c, TOOK_TOO_LONG);
    assert_eq!(
        cluster_states(c),
        states(&[("spoke1", "complete"), ("spoke2", "timedout")])
    );
    assert_timedout_entry(c, "spoke2", P5);
    assert!(
        w.all("ManagedClusterView").is_empty(),
        "the CGU's views go when it ends"
    );
}

#[test]
fn j_operator_upgrade_with_a_connected_agent_writes_no_views() {
    // The rule the operator follows: a SpokeAgent with `status.connected: true` takes the
    // approval task, and no view or action is written for its cluster.
    let mut w = World::talm();
    w.set_compliance(P5, "spoke1", NonCompliant)
        .set_compliance(P5, "spoke2", NonCompliant);
    w.add(json!({
        "apiVersion": "talm.dev/v1alpha1",
        "kind": "SpokeAgent",
        "metadata": {"name": "spoke1", "namespace": "spoke1"},
        "spec": {},
        "status": {"connected": true, "lastSeen": T0},
    }));
    w.add_cgu(
        "cgu",
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P5],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": true,
        }),
    );
    w.run();
    let views: Vec<String> = w
        .all("ManagedClusterView")
        .into_iter()
        .map(|v| {
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(!views.is_empty(), "spoke2 has no agent: views");
    assert!(
        views.iter().all(|ns| ns == "spoke2"),
        "no view for the agent's cluster: {views:?}"
    );
    let agent = w.spoke_agent("spoke1").expect("agent");
    assert!(
        agent["spec"]["installPlans"]["subscriptions"].is_array(),
        "the agent has the approval task: {agent:#}"
    );
}

// =====================================================================================
// §6.2 kuttl scenarios
// =====================================================================================

#[test]
fn adjust_max_concurrency() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-adjust",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 3},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-adjust");
    assert_eq!(c["status"]["computedMaxConcurrency"], 1);
    assert_eq!(plan(c), batches(&[&["spoke1"]]));
    assert_not_enabled(c);
}

/// clusters [spoke6, spoke2, spoke1, spoke5], policies [policy2, policy4]: all four are
/// non-compliant (spoke6 on policy4 only).
fn backup_world(name_: &str) -> World {
    let mut w = World::talm();
    w.add_cgu(
        name_,
        json!({
            "clusters": ["spoke6", "spoke2", "spoke1", "spoke5"],
            "managedPolicies": [P2, P4],
            "remediationStrategy": {"maxConcurrency": 4},
            "backup": true,
            "enable": true,
        }),
    );
    w
}

const BACKUP_CLUSTERS: [&str; 4] = ["spoke6", "spoke2", "spoke1", "spoke5"];

fn backup_states(c: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c["status"]["backup"]["status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    v.sort();
    v
}

fn precache_states(c: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = c["status"]["precaching"]["status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    v.sort();
    v
}

fn sorted_states(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut s = states(v);
    s.sort();
    s
}

#[test]
fn backup_complete() {
    let n = "cgu-backup-complete";
    let mut w = backup_world(n);
    w.run();
    let c = w.cgu(n);
    assert_condition(
        c,
        "Progressing",
        "False",
        "NotStarted",
        "Cluster backup is in progress",
    );
    assert_condition(
        c,
        "BackupSuceeded",
        "False",
        "InProgress",
        "Backup in progress for 4 clusters",
    );
    assert!(
        c["status"]["status"]["startedAt"].is_string(),
        "startedAt is set at enable"
    );
    // Prepared and handed to each agent in the run (TALM: PreparingToStart, then Starting on
    // the next pass); no agent has reported yet.
    assert_eq!(
        backup_states(c),
        sorted_states(&BACKUP_CLUSTERS.map(|cl| (cl, "Starting"))),
        "{:#}",
        c["status"]["backup"]
    );
    assert!(c["status"]["backup"]["startedAt"].is_string());
    for cl in BACKUP_CLUSTERS {
        let a = w
            .spoke_agent(cl)
            .unwrap_or_else(|| panic!("no SpokeAgent {cl}"));
        assert_eq!(a["apiVersion"], "talm.dev/v1alpha1");
        assert!(a["spec"]["backup"]["id"].is_string(), "{a:#}");
        assert!(a["spec"]["backup"]["deadline"].is_string(), "{a:#}");
        assert!(a["spec"]["precache"].is_null(), "no pre-caching asked");
    }
    assert!(
        w.released(n, P2).is_empty(),
        "nothing enforced while backing up"
    );
    assert!(w.released(n, P4).is_empty());

    for cl in BACKUP_CLUSTERS {
        w.report_backup(cl, "Active");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        backup_states(c),
        sorted_states(&BACKUP_CLUSTERS.map(|cl| (cl, "Active")))
    );
    assert_condition(
        c,
        "BackupSuceeded",
        "False",
        "InProgress",
        "Backup in progress for 4 clusters",
    );
    assert_condition(
        c,
        "Progressing",
        "False",
        "NotStarted",
        "Cluster backup is in progress",
    );

    for cl in BACKUP_CLUSTERS {
        w.report_backup(cl, "Succeeded");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        backup_states(c),
        sorted_states(&BACKUP_CLUSTERS.map(|cl| (cl, "Succeeded")))
    );
    assert_condition(
        c,
        "BackupSuceeded",
        "True",
        "BackupCompleted",
        "Backup is completed for all clusters",
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(
        plan(c),
        batches(&[&["spoke6", "spoke2", "spoke1", "spoke5"]])
    );
    assert_eq!(current_batch(c), 1);
}

#[test]
fn backup_starts_on_a_cluster_without_an_available_condition() {
    // No ManagedClusterConditionAvailable at all is not "unavailable": TALM starts the backup
    // and lets the task's own timeout decide. Unknown still counts as unavailable.
    let n = "cgu-backup-no-condition";
    let mut w = backup_world(n);
    w.get_mut("ManagedCluster", "", "spoke5")["status"] = json!({"conditions": []});
    w.set_available("spoke1", false);
    w.run();
    let c = w.cgu(n);
    let states: std::collections::BTreeMap<String, String> = backup_states(c).into_iter().collect();
    assert_eq!(states["spoke5"], "Starting", "{states:?}");
    assert_eq!(states["spoke1"], "UnrecoverableError", "{states:?}");
    assert!(
        w.spoke_agent("spoke5")
            .is_some_and(|a| a["spec"]["backup"]["id"].is_string()),
        "spoke5's agent has the backup task"
    );
}

#[test]
fn backup_partial_complete() {
    let n = "cgu-backup-partial";
    let mut w = backup_world(n);
    w.run();
    for cl in BACKUP_CLUSTERS {
        w.report_backup(cl, "Active");
    }
    w.run_after(30);
    for cl in ["spoke6", "spoke1", "spoke5"] {
        w.report_backup(cl, "Succeeded");
    }
    w.report_backup("spoke2", "BackupTimeout");
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        backup_states(c),
        sorted_states(&[
            ("spoke1", "Succeeded"),
            ("spoke2", "BackupTimeout"),
            ("spoke5", "Succeeded"),
            ("spoke6", "Succeeded"),
        ])
    );
    assert_condition(
        c,
        "BackupSuceeded",
        "True",
        "PartiallyDone",
        "Backup failed for 1 clusters",
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(plan(c), batches(&[&["spoke6", "spoke1", "spoke5"]]));

    w.comply("spoke6", &[P4])
        .comply("spoke1", &[P2])
        .comply("spoke5", &[P4]);
    w.run_after(30);
    let c = w.cgu(n);
    assert_completed(c);
}

#[test]
fn backup_fail_ends_the_cgu() {
    // talm fix: TALM stays at Progressing=False/NotStarted forever (kuttl backup-fail).
    let n = "cgu-backup-fail";
    let mut w = backup_world(n);
    w.run();
    for cl in BACKUP_CLUSTERS {
        w.report_backup(cl, "UnrecoverableError");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        backup_states(c),
        sorted_states(&BACKUP_CLUSTERS.map(|cl| (cl, "UnrecoverableError")))
    );
    assert_condition(
        c,
        "BackupSuceeded",
        "False",
        "Failed",
        "Backup failed for all clusters",
    );
    let msg = "No clusters available for remediation (Backup failed)";
    assert_condition(c, "Progressing", "False", "Completed", msg);
    assert_condition(c, "Succeeded", "False", "Failed", msg);

    // Deleting the CGU cleans up what it asked of the agents.
    w.delete_cgu(n);
    w.run_after(10);
    assert!(
        w.find("ClusterGroupUpgrade", NS, n).is_none(),
        "the CGU is gone"
    );
    for cl in BACKUP_CLUSTERS {
        if let Some(a) = w.spoke_agent(cl) {
            assert!(
                a["spec"]["backup"].is_null(),
                "backup task of {cl} left behind: {a:#}"
            );
        }
    }
    assert_no_enforcement_left(&w, n);
}

#[test]
fn backup_of_a_silent_agent_times_out() {
    // A backup the agent never finishes ends as BackupTimeout: at the latest at TALM's hub
    // guard (§5.1: 480 + 720 s after status.backup.startedAt); talm may end it earlier, at
    // the 480 s task deadline it gave the agent.
    let n = "cgu-backup-guard";
    let mut w = backup_world(n);
    w.run();
    for cl in ["spoke6", "spoke1", "spoke5"] {
        w.report_backup(cl, "Succeeded");
    }
    w.run_after(300);
    let c = w.cgu(n);
    let st = c["status"]["backup"]["status"]["spoke2"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["PreparingToStart", "Starting", "Active"].contains(&st),
        "spoke2 still running at +300 s: {st}"
    );
    assert_condition(
        c,
        "Progressing",
        "False",
        "NotStarted",
        "Cluster backup is in progress",
    );
    w.run_after(901);
    let c = w.cgu(n);
    assert_eq!(c["status"]["backup"]["status"]["spoke2"], "BackupTimeout");
    assert_condition(
        c,
        "BackupSuceeded",
        "True",
        "PartiallyDone",
        "Backup failed for 1 clusters",
    );
    assert_eq!(plan(c), batches(&[&["spoke6", "spoke1", "spoke5"]]));
}

#[test]
fn blocking_mechanisms() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-a",
        json!({
            "clusters": ["spoke2", "spoke6"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "canaries": ["spoke6"]},
            "blockingCRs": [{"name": "cgu-c", "namespace": NS}],
            "enable": true,
            "actions": {"afterCompletion": {"addClusterLabels": {"cgu-a-done": ""}}},
        }),
    );
    w.add_cgu(
        "cgu-b",
        json!({
            "clusters": ["spoke4"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "blockingCRs": [{"name": "cgu-a", "namespace": NS}],
            "enable": true,
        }),
    );
    w.add_cgu(
        "cgu-c",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.run();
    assert_condition(
        w.cgu("cgu-a"),
        "Progressing",
        "False",
        "IncompleteBlockingCR",
        "Blocking CRs that are not completed: [cgu-c]",
    );
    assert_condition(
        w.cgu("cgu-b"),
        "Progressing",
        "False",
        "IncompleteBlockingCR",
        "Blocking CRs that are not completed: [cgu-a]",
    );
    assert_condition(w.cgu("cgu-c"), "Progressing", "True", "InProgress", STARTED);
    // A compliant canary is skipped.
    assert_eq!(plan(w.cgu("cgu-a")), batches(&[&["spoke2"]]));
    // Nothing happens while blocked: afterCompletion is not applied yet (OCPBUGS-58372).
    assert!(
        label_keys(&w, "spoke6").is_empty(),
        "{:?}",
        w.labels("spoke6")
    );
    assert!(
        w.cgu("cgu-a")["status"]["clusters"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert!(w.released("cgu-a", P0).is_empty());

    // cgu-c completes.
    w.set_compliance(P0, "spoke1", Compliant);
    w.run_after(10);
    assert_completed(w.cgu("cgu-c"));

    // After the blocking requeue interval, cgu-a starts; its compliant canary is recorded and
    // gets the afterCompletion labels.
    w.run_after(90);
    let a = w.cgu("cgu-a");
    assert_condition(a, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(cluster_states(a), states(&[("spoke6", "complete")]));
    assert_eq!(label_keys(&w, "spoke6"), ["cgu-a-done"]);
    assert_eq!(w.released("cgu-a", P0), ["spoke2"]);
    assert_condition(
        w.cgu("cgu-b"),
        "Progressing",
        "False",
        "IncompleteBlockingCR",
        "Blocking CRs that are not completed: [cgu-a]",
    );

    w.set_compliance(P0, "spoke2", Compliant);
    w.run_after(10);
    assert_completed(w.cgu("cgu-a"));
    assert_eq!(label_keys(&w, "spoke2"), ["cgu-a-done"]);

    w.run_after(90);
    assert_condition(w.cgu("cgu-b"), "Progressing", "True", "InProgress", STARTED);
    w.set_compliance(P0, "spoke4", Compliant);
    w.run_after(10);
    assert_completed(w.cgu("cgu-b"));
}

#[test]
fn blocking_cr_missing() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-blocked",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "blockingCRs": [{"name": "cgu-x", "namespace": NS}],
            "enable": true,
        }),
    );
    w.run();
    let c = w.cgu("cgu-blocked");
    assert_condition(
        c,
        "Progressing",
        "False",
        "MissingBlockingCR",
        "Missing blocking CRs: [cgu-x]",
    );
    assert_eq!(current_batch(c), 0);
}

#[test]
fn dependency_order() {
    let mut w = World::talm();
    let dep = json!([{"apiVersion": "policy.open-cluster-management.io/v1", "kind": "Policy",
                      "name": P1, "namespace": NS, "compliance": "Compliant"}]);
    let child = format!("{NS}.{P0}");
    for o in w.objects.iter_mut() {
        if kind(o) == "Policy" && (name(o) == P0 || name(o) == child) {
            o["spec"]["dependencies"] = dep.clone();
        }
    }
    w.add_cgu(
        "cgu-dependency",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0, P1],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": false,
        }),
    );
    w.run();
    assert_condition(
        w.cgu("cgu-dependency"),
        "Validated",
        "False",
        "UnresolvableDenpendency",
        &format!("Managed Policy {P0} depends on {P1}, which is to be remediated later"),
    );
    assert!(
        plan(w.cgu("cgu-dependency")).is_none(),
        "no plan while invalid"
    );

    w.patch_cgu_spec("cgu-dependency", json!({"managedPolicies": [P1, P0]}));
    w.run_after(60);
    let c = w.cgu("cgu-dependency");
    assert_condition(
        c,
        "Validated",
        "True",
        "ValidationCompleted",
        "Completed validation",
    );
    assert_condition(c, "Progressing", "False", "NotEnabled", "Not enabled");
    assert_eq!(policies_for_upgrade(c), in_default(&[P1, P0]));
    assert_eq!(plan(c), batches(&[&["spoke1"], &["spoke2"], &["spoke4"]]));
}

#[test]
fn duplicated_managed_policy_name() {
    let mut w = World::talm();
    // policy2 exists only in aaa and bbb; policy3 in aaa, bbb and default.
    w.copy_policy_to(P2, "aaa", &["spoke1", "spoke2"]);
    w.copy_policy_to(P2, "bbb", &["spoke1", "spoke2"]);
    w.delete_policy(NS, P2);
    w.copy_policy_to(P3, "aaa", &["spoke2"]);
    w.copy_policy_to(P3, "bbb", &["spoke2"]);
    w.add_cgu(
        "cgu-duplicated",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0, P2, P3],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-duplicated");
    assert_condition(
        c,
        "Validated",
        "False",
        "AmbiguousManagedPoliciesNames",
        &format!(
            "Managed policy name should be unique, but was found in multiple namespaces: {{\"{P2}\":[\"aaa\",\"bbb\"],\"{P3}\":[\"aaa\",\"bbb\",\"default\"]}} "
        ),
    );
    let ev = w.events_with(
        "CguValidationFailure",
        "RemediationOnHoldDueToValidationFailure",
    );
    assert_eq!(ev.len(), 1, "one validation-failure event");
    assert!(
        ev[0]["note"].as_str().unwrap_or_default().starts_with(
            "ClusterGroupUpgrade cgu-duplicated: validation failure (ambiguous policies): "
        ),
        "{:#}",
        ev[0]
    );
    // Same message again: no new event.
    w.run_after(60);
    assert!(
        w.events_with(
            "CguValidationFailure",
            "RemediationOnHoldDueToValidationFailure"
        )
        .is_empty()
    );

    // Delete the duplicates: policy2 stays in aaa, policy3 in bbb.
    w.delete_policy("bbb", P2);
    w.delete_policy("aaa", P3);
    w.delete_policy(NS, P3);
    w.run_after(60);
    let c = w.cgu("cgu-duplicated");
    assert_condition(
        c,
        "Validated",
        "True",
        "ValidationCompleted",
        "Completed validation",
    );
    assert_eq!(
        policies_for_upgrade(c),
        vec![
            (P0.to_string(), NS.to_string()),
            (P2.to_string(), "aaa".to_string()),
            (P3.to_string(), "bbb".to_string()),
        ]
    );
    assert_eq!(c["status"]["managedPoliciesNs"][P2], "aaa");
    assert_eq!(c["status"]["managedPoliciesNs"][P3], "bbb");
    assert!(
        w.find(
            "Placement",
            "aaa",
            &World::placement_name("cgu-duplicated", P2)
        )
        .is_some(),
        "the Placement lives in the policy's namespace"
    );
    assert!(
        w.find(
            "PlacementBinding",
            "bbb",
            &World::placement_name("cgu-duplicated", P3)
        )
        .is_some()
    );
}

#[test]
fn policy_has_missing_cluster_status() {
    let mut w = World::talm();
    // spoke1's entry has no `compliant` field: NonCompliant. spoke3 is in no status: excluded.
    w.set_compliance(P0, "spoke1", MissingField);
    w.add_cgu(
        "cgu-missing-status",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke3", "spoke4"],
            "managedPolicies": [P0, P3],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-missing-status");
    assert_not_enabled(c);
    assert_eq!(plan(c), batches(&[&["spoke1", "spoke2"], &["spoke4"]]));
}

#[test]
fn policy_without_status_means_every_cluster_non_compliant() {
    let mut w = World::talm();
    w.clear_policy_status(P3);
    // Children so the policy is found in spoke3's and spoke5's namespaces.
    let root = w.find("Policy", NS, P3).expect("p3").clone();
    w.add(child_policy(&root, "spoke3"))
        .add(child_policy(&root, "spoke5"));
    w.add_cgu(
        "cgu-no-status",
        json!({
            "clusters": ["spoke3", "spoke5"],
            "managedPolicies": [P3],
            "remediationStrategy": {"maxConcurrency": 5},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-no-status");
    assert_eq!(plan(c), batches(&[&["spoke3", "spoke5"]]));
    assert_eq!(c["status"]["computedMaxConcurrency"], 2);
}

/// clusters [spoke1, spoke2, spoke4, spoke5], policies 0–4, maxConcurrency 2, preCaching.
fn precache_world(name_: &str) -> World {
    let mut w = World::talm();
    w.add_cgu(
        name_,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4", "spoke5"],
            "managedPolicies": [P0, P1, P2, P3, P4],
            "remediationStrategy": {"maxConcurrency": 2},
            "preCaching": true,
            "enable": false,
        }),
    );
    w
}

const PRECACHE_CLUSTERS: [&str; 4] = ["spoke1", "spoke2", "spoke4", "spoke5"];

fn derived_precache_spec() -> Value {
    json!({
        "platformImage": PAYLOAD_498,
        "operatorsIndexes": [INDEX_IMAGE],
        "operatorsPackagesAndChannels": [
            "performance-addon-operator:4.9",
            "ptp-operator:4.9",
            "sriov-network-operator:4.9",
        ],
        "spaceRequired": "35",
    })
}

#[test]
fn pre_caching_complete() {
    let n = "cgu-pre-caching-complete";
    let mut w = precache_world(n);
    w.run();
    let assigned_at = w.now;
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecacheSpecValid",
        "True",
        "PrecacheSpecIsWellFormed",
        "Precaching spec is valid and consistent",
    );
    assert_eq!(c["status"]["precaching"]["spec"], derived_precache_spec());
    assert_condition_reason(c, "PrecachingSuceeded", "False", "InProgress");
    let msg = condition(c, "PrecachingSuceeded").expect("cond")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg == "Precaching is required and not done"
            || msg == "Precaching in progress for 4 clusters",
        "{msg}"
    );
    let st = precache_states(c);
    assert_eq!(st.len(), 4, "{:#}", c["status"]["precaching"]);
    for (cl, s) in &st {
        assert!(
            ["NotStarted", "PreparingToStart", "Starting"].contains(&s.as_str()),
            "{cl} starts in {s}"
        );
    }
    for cl in PRECACHE_CLUSTERS {
        let a = w
            .spoke_agent(cl)
            .unwrap_or_else(|| panic!("no SpokeAgent {cl}"));
        assert_eq!(
            a["spec"]["precache"]["spec"],
            derived_precache_spec(),
            "{cl}"
        );
        assert!(
            a["spec"]["precache"]["id"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        // The deadline is the CGU timeout (240 min) from assignment (TALM: Job deadline).
        let deadline = time(&a["spec"]["precache"]["deadline"]).expect("deadline");
        assert_eq!(
            deadline,
            assigned_at
                .checked_add(jiff::SignedDuration::from_mins(240))
                .unwrap()
        );
    }
    assert!(
        w.spoke_agent("spoke6").is_none(),
        "spoke6 is not in the CGU"
    );

    for cl in PRECACHE_CLUSTERS {
        w.report_precache(cl, "Starting");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        precache_states(c),
        sorted_states(&PRECACHE_CLUSTERS.map(|cl| (cl, "Starting")))
    );

    for cl in PRECACHE_CLUSTERS {
        w.report_precache(cl, "Active");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        precache_states(c),
        sorted_states(&PRECACHE_CLUSTERS.map(|cl| (cl, "Active")))
    );
    assert_condition(
        c,
        "PrecachingSuceeded",
        "False",
        "InProgress",
        "Precaching in progress for 4 clusters",
    );

    for cl in PRECACHE_CLUSTERS {
        w.report_precache(cl, "Succeeded");
    }
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        precache_states(c),
        sorted_states(&PRECACHE_CLUSTERS.map(|cl| (cl, "Succeeded")))
    );
    assert_condition(
        c,
        "PrecachingSuceeded",
        "True",
        "PrecachingCompleted",
        "Precaching is completed for all clusters",
    );
    assert_condition(c, "Progressing", "False", "NotEnabled", "Not enabled");
    assert_eq!(
        plan(c),
        batches(&[&["spoke1", "spoke2"], &["spoke4", "spoke5"]])
    );

    w.patch_cgu_spec(n, json!({"enable": true}));
    w.run_after(10);
    assert_condition(w.cgu(n), "Progressing", "True", "InProgress", STARTED);
}

#[test]
fn pre_caching_ignores_reports_for_another_task() {
    // A report counts only when its id equals the spec id.
    let n = "cgu-precache-ids";
    let mut w = precache_world(n);
    w.run();
    for cl in PRECACHE_CLUSTERS {
        w.report_precache(cl, "Succeeded");
    }
    let a = w.get_mut("SpokeAgent", "spoke2", "spoke2");
    a["status"]["precache"]["id"] = json!("default/some-other-cgu/0000/precache");
    w.run_after(30);
    let c = w.cgu(n);
    assert_ne!(c["status"]["precaching"]["status"]["spoke2"], "Succeeded");
    assert_eq!(c["status"]["precaching"]["status"]["spoke1"], "Succeeded");
    assert_condition(
        c,
        "PrecachingSuceeded",
        "False",
        "InProgress",
        "Precaching in progress for 1 clusters",
    );
}

#[test]
fn pre_caching_missing_sub_policy() {
    let n = "cgu-pre-caching-missing-sub";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 2},
            "preCaching": true,
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecacheSpecValid",
        "False",
        "PrecacheSpecIncomplete",
        "Precaching spec is incomplete: inconsistent precaching configuration: olm index provided, but no packages",
    );
    assert!(w.all("SpokeAgent").is_empty(), "nothing to pre-cache yet");
    // TALM initialises the pre-caching status before it knows whether the spec can be derived.
    assert_eq!(
        c["status"]["precaching"],
        json!({"spec": {"platformImage": "", "operatorsIndexes": [],
                        "operatorsPackagesAndChannels": []},
               "status": {}, "clusters": []})
    );

    w.patch_cgu_spec(n, json!({"managedPolicies": [P0, P2, P3]}));
    w.run_after(300);
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecacheSpecValid",
        "True",
        "PrecacheSpecIsWellFormed",
        "Precaching spec is valid and consistent",
    );
    assert_eq!(
        c["status"]["precaching"]["spec"],
        json!({
            "platformImage": "",
            "operatorsIndexes": [INDEX_IMAGE],
            "operatorsPackagesAndChannels": ["performance-addon-operator:4.9", "ptp-operator:4.9"],
            "spaceRequired": "35",
        })
    );
    assert!(w.spoke_agent("spoke1").is_some());
}

#[test]
fn pre_caching_partial_complete() {
    let n = "cgu-pre-caching-partial";
    let mut w = precache_world(n);
    w.run();
    for cl in PRECACHE_CLUSTERS {
        w.report_precache(cl, "Active");
    }
    w.run_after(30);
    w.report_precache("spoke1", "Succeeded")
        .report_precache("spoke4", "Succeeded")
        .report_precache("spoke2", "PrecacheTimeout")
        .set_available("spoke5", false);
    w.run_after(30);
    let c = w.cgu(n);
    // spoke5 is unavailable but the CGU is not enabled: it stays Active.
    assert_eq!(
        precache_states(c),
        sorted_states(&[
            ("spoke1", "Succeeded"),
            ("spoke2", "PrecacheTimeout"),
            ("spoke4", "Succeeded"),
            ("spoke5", "Active"),
        ])
    );
    assert_condition(
        c,
        "PrecachingSuceeded",
        "False",
        "InProgress",
        "Precaching in progress for 1 clusters",
    );

    w.patch_cgu_spec(n, json!({"enable": true}));
    w.run_after(30);
    let c = w.cgu(n);
    assert_eq!(
        c["status"]["precaching"]["status"]["spoke5"],
        "UnrecoverableError"
    );
    assert_condition(
        c,
        "PrecachingSuceeded",
        "True",
        "PartiallyDone",
        "Precaching failed for 2 clusters",
    );
    assert_eq!(plan(c), batches(&[&["spoke1", "spoke4"]]));
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
}

#[test]
fn pre_caching_with_configs() {
    let n = "cgu-pre-caching-with-configs";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0, P1, P2, P3],
            "remediationStrategy": {"maxConcurrency": 2},
            "preCaching": true,
            "preCachingConfigRef": {"name": "pre-caching-config", "namespace": NS},
            "enable": false,
        }),
    );
    w.run();
    assert_condition(
        w.cgu(n),
        "PrecacheSpecValid",
        "False",
        "PrecacheSpecIncomplete",
        "Precaching spec is incomplete: failed to get PreCachingConfig resource due to PreCachingConfig.ran.openshift.io \"pre-caching-config\" not found",
    );

    w.add(json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "PreCachingConfig",
        "metadata": {"name": "pre-caching-config", "namespace": NS},
        "spec": {
            "overrides": {"platformImage": "this/should/be/ignored/too:latest"},
            "spaceRequired": "40 GiB",
            "additionalImages": [
                "quay.io/test_images/test-image:latest",
                "quay.io/test_images/test-image2:latest",
            ],
        },
    }));
    w.add(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-group-upgrade-overrides", "namespace": NS},
        "data": {
            "operators.packagesAndChannels": "local-storage-operator:stable\nperformance-addon-operator:4.9\n",
            "excludePrecachePatterns": "aws\nazure\n",
            "platform.image": "this/should/be/ignored:latest",
            "operators.indexes": "this/should/be/ignored/as/well:latest",
        },
    }));
    w.run_after(300);
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecacheSpecValid",
        "True",
        "PrecacheSpecIsWellFormed",
        "Precaching spec is valid and consistent",
    );
    assert_eq!(
        c["status"]["precaching"]["spec"],
        json!({
            "platformImage": PAYLOAD_498,
            "operatorsIndexes": [INDEX_IMAGE],
            "operatorsPackagesAndChannels": ["local-storage-operator:stable", "performance-addon-operator:4.9"],
            "excludePrecachePatterns": ["aws", "azure"],
            "spaceRequired": "40",
            "additionalImages": [
                "quay.io/test_images/test-image:latest",
                "quay.io/test_images/test-image2:latest",
            ],
        })
    );
}

#[test]
fn soaking() {
    let n = "cgu-soaking";
    let mut w = World::talm();
    w.annotate_policy(P0, "ran.openshift.io/soak-seconds", "5");
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.run();
    assert_eq!(
        progress(w.cgu(n)),
        prog(&[("spoke1", "InProgress", Some(0))])
    );

    w.set_compliance(P0, "spoke1", Compliant);
    w.run_after(10);
    let first = w.now;
    let c = w.cgu(n);
    assert_eq!(
        progress(c),
        prog(&[("spoke1", "InProgress", Some(0))]),
        "soaking"
    );
    assert_eq!(
        time(
            &c["status"]["status"]["currentBatchRemediationProgress"]["spoke1"]["firstCompliantAt"]
        ),
        Some(first)
    );

    w.run_after(3);
    assert_eq!(
        progress(w.cgu(n)),
        prog(&[("spoke1", "InProgress", Some(0))]),
        "still soaking"
    );

    w.run_after(3);
    let c = w.cgu(n);
    assert_completed(c);
    assert_eq!(cluster_states(c), states(&[("spoke1", "complete")]));
}

#[test]
fn timeout_not_block_next_batch() {
    // timeout 1 min, two batches: batch 1 gets 30 s.
    let n = "cgu-timeout-not-block";
    let mut w = World::talm();
    let mut spec = upgrade_complete_spec();
    spec["enable"] = json!(true);
    spec["remediationStrategy"]["timeout"] = json!(1);
    w.add_cgu(n, spec);
    w.run();
    assert_eq!(plan(w.cgu(n)), batches(&[&["spoke1"], &["spoke4"]]));

    w.run_after(40);
    let c = w.cgu(n);
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(
        current_batch(c),
        2,
        "batch 1 timed out and the CGU continued"
    );
    assert_eq!(
        cluster_states(c),
        states(&[("spoke6", "complete"), ("spoke1", "timedout")])
    );
    assert_timedout_entry(c, "spoke1", P1);
    assert_eq!(progress(c), prog(&[("spoke4", "InProgress", Some(0))]));
    let e = w.event(
        "CguTimedout",
        "RemediationInBatchTimeout",
        &format!("ClusterGroupUpgrade {n}: some clusters in the batch index 1 timed out remediating policies"),
    );
    assert_eq!(ev_ann(e, "timedout-clusters"), Some("spoke1"));

    w.comply("spoke4", &[P1, P2]);
    w.run_after(10);
    let c = w.cgu(n);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke1", "timedout"),
            ("spoke4", "complete")
        ])
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_no_condition(c, "Succeeded");

    w.run_after(15); // 65 s after start
    let c = w.cgu(n);
    assert_timed_out(c, TOOK_TOO_LONG);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke1", "timedout"),
            ("spoke4", "complete")
        ])
    );
}

// =====================================================================================
// Canaries, batch timeouts, finalizer and deletion
// =====================================================================================

#[test]
fn canaries_come_first_one_per_batch() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-canaries",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4", "spoke5", "spoke6"],
            "managedPolicies": [P0, P4],
            "remediationStrategy": {"maxConcurrency": 2, "canaries": ["spoke5", "spoke2"]},
            "enable": true,
        }),
    );
    w.run();
    let c = w.cgu("cgu-canaries");
    assert_eq!(
        plan(c),
        batches(&[&["spoke5"], &["spoke2"], &["spoke1", "spoke4"], &["spoke6"]])
    );
    assert_eq!(c["status"]["computedMaxConcurrency"], 2);
    assert_eq!(progress(c), prog(&[("spoke5", "InProgress", Some(1))]));
    assert_eq!(w.released("cgu-canaries", P4), ["spoke5"]);
}

#[test]
fn canary_batch_timeout_fails_the_cgu() {
    let n = "cgu-canary-timeout";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke4", "spoke6"],
            "managedPolicies": [P1, P2],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 2, "canaries": ["spoke4"]},
            "enable": true,
        }),
    );
    w.run();
    assert_eq!(plan(w.cgu(n)), batches(&[&["spoke4"], &["spoke1"]]));
    w.run_after(90); // batch timeout is 60 s
    let c = w.cgu(n);
    assert_condition_reason(c, "Progressing", "False", "TimedOut");
    assert_condition(
        c,
        "Succeeded",
        "False",
        "TimedOut",
        "Policy remediation took too long on canary clusters",
    );
    assert!(
        cluster_states(c).iter().all(|(_, s)| s != "timedout"),
        "a canary timeout records no timedout clusters: {:?}",
        cluster_states(c)
    );
    assert_no_enforcement_left(&w, n);
}

#[test]
fn batch_timeout_action_abort() {
    let n = "cgu-abort";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke4", "spoke6"],
            "managedPolicies": [P1, P2],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 2},
            "batchTimeoutAction": "Abort",
            "enable": true,
        }),
    );
    w.run();
    w.run_after(90);
    let c = w.cgu(n);
    assert_condition_reason(c, "Progressing", "False", "TimedOut");
    assert_condition(
        c,
        "Succeeded",
        "False",
        "TimedOut",
        "Policy remediation took too long on some clusters",
    );
    assert_eq!(
        cluster_states(c),
        states(&[("spoke6", "complete"), ("spoke1", "timedout")])
    );
    assert_timedout_entry(c, "spoke1", P1);
    assert_no_enforcement_left(&w, n);
}

#[test]
fn batch_timeout_continue_is_the_default_for_other_values() {
    // Exactly "Abort" aborts; anything else continues.
    let n = "cgu-continue";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke4", "spoke6"],
            "managedPolicies": [P1, P2],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 2},
            "batchTimeoutAction": "abort",
            "enable": true,
        }),
    );
    w.run();
    w.run_after(90);
    let c = w.cgu(n);
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(current_batch(c), 2);
}

#[test]
fn finalizer_and_created_event() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-new",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-new");
    assert_eq!(strs(&c["metadata"]["finalizers"]), [FINALIZER]);
    let e = w.event(
        "CguCreated",
        "BuildingRemediationPlan",
        "New ClusterGroupUpgrade found: cgu-new",
    );
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["regarding"]["kind"], "ClusterGroupUpgrade");
    assert_eq!(e["regarding"]["name"], "cgu-new");
    assert_eq!(e["regarding"]["namespace"], NS);
    assert_eq!(namespace(e), NS);

    // Second run: the finalizer is there, no second CguCreated.
    w.run_after(10);
    assert!(
        w.events_with("CguCreated", "BuildingRemediationPlan")
            .is_empty()
    );
    assert_eq!(
        strs(&w.cgu("cgu-new")["metadata"]["finalizers"]),
        [FINALIZER]
    );
}

#[test]
fn deleting_an_in_progress_cgu_removes_its_objects() {
    let n = "cgu-delete-me";
    let mut w = World::talm();
    let mut spec = upgrade_complete_spec();
    spec["enable"] = json!(true);
    w.add_cgu(n, spec);
    w.add_cgu(
        "cgu-bystander",
        json!({
            "clusters": ["spoke2"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.run();
    assert_eq!(w.released(n, P1), ["spoke1"]);
    assert!(!w.enforcement_objects(n).is_empty());

    w.delete_cgu(n);
    w.run_after(10);
    assert!(
        w.find("ClusterGroupUpgrade", NS, n).is_none(),
        "the CGU disappears"
    );
    assert_no_enforcement_left(&w, n);
    // Other CGUs are untouched.
    assert_eq!(w.released("cgu-bystander", P0), ["spoke2"]);
    assert!(w.binding("cgu-bystander", P0).is_some());
}

#[test]
fn deleting_a_not_started_cgu() {
    let n = "cgu-delete-early";
    let mut w = World::talm();
    w.add_cgu(n, upgrade_complete_spec());
    w.run();
    assert!(w.placement(n, P1).is_some());
    w.delete_cgu(n);
    w.run_after(10);
    assert!(w.find("ClusterGroupUpgrade", NS, n).is_none());
    assert_no_enforcement_left(&w, n);
}

// =====================================================================================
// Validation messages (§2.3)
// =====================================================================================

#[test]
fn cluster_selection_errors() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-unknown-cluster",
        json!({
            "clusters": ["spoke1", "spoke9", "spoke8"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
        }),
    );
    w.add_cgu(
        "cgu-bad-canary",
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "canaries": ["spoke5"]},
        }),
    );
    w.add_cgu(
        "cgu-no-clusters",
        json!({
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
        }),
    );
    w.run();
    assert_condition(
        w.cgu("cgu-unknown-cluster"),
        "ClustersSelected",
        "False",
        "ClusterNotFound",
        "Unable to select clusters: cluster spoke9 is not a ManagedCluster",
    );
    assert_condition(
        w.cgu("cgu-bad-canary"),
        "ClustersSelected",
        "False",
        "ClusterNotFound",
        "Unable to select clusters: canary cluster spoke5 is not in the list of clusters",
    );
    assert_condition(
        w.cgu("cgu-no-clusters"),
        "ClustersSelected",
        "False",
        "ClusterNotFound",
        "Unable to select clusters: cannot obtain all the details about the clusters in the CR: no cluster specified for remediation",
    );
    assert!(plan(w.cgu("cgu-unknown-cluster")).is_none());
    let ev = w.events_with(
        "CguValidationFailure",
        "RemediationOnHoldDueToValidationFailure",
    );
    assert!(
        ev.iter()
            .any(|e| e["note"].as_str().unwrap_or_default().starts_with(
                "ClusterGroupUpgrade cgu-unknown-cluster: validation failure (missing clusters): "
            )),
        "{ev:#?}"
    );
}

#[test]
fn missing_managed_policies() {
    let mut w = World::talm();
    w.add(simple_policy(NS, "policy-no-children"));
    w.add_cgu(
        "cgu-missing-policies",
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0, "policy9-nowhere", "policy-no-children"],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    w.run();
    let c = w.cgu("cgu-missing-policies");
    // The trailing space is TALM's.
    assert_condition(
        c,
        "Validated",
        "False",
        "NotAllManagedPoliciesExist",
        "Missing managed policies: [policy9-nowhere policy-no-children] ",
    );
    assert_eq!(current_batch(c), 0, "nothing starts");
}

// =====================================================================================
// Quirks talm fixes on purpose (README "Deliberate differences from TALM")
// =====================================================================================

#[test]
fn quirk_all_precache_failed_ends_the_cgu() {
    let n = "cgu-precache-all-fail";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0, P2],
            "remediationStrategy": {"maxConcurrency": 2},
            "preCaching": true,
            "enable": true,
        }),
    );
    w.run();
    w.report_precache("spoke1", "UnrecoverableError")
        .report_precache("spoke2", "PrecacheTimeout");
    w.run_after(30);
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecachingSuceeded",
        "False",
        "Failed",
        "Precaching failed for all clusters",
    );
    let msg = "No clusters available for remediation (Precaching failed)";
    assert_condition(c, "Progressing", "False", "Completed", msg);
    assert_condition(c, "Succeeded", "False", "Failed", msg);
    assert_no_enforcement_left(&w, n);
}

#[test]
fn quirk_timed_out_cluster_leaves_enforcement_at_once() {
    // plan [[spoke1],[spoke2],[spoke4]], timeout 3 min: batch 1 gets 60 s.
    let n = "cgu-leave-enforcement";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 3},
            "enable": true,
        }),
    );
    w.run();
    assert_eq!(
        plan(w.cgu(n)),
        batches(&[&["spoke1"], &["spoke2"], &["spoke4"]])
    );
    assert_eq!(w.released(n, P0), ["spoke1"]);

    w.run_after(70);
    let c = w.cgu(n);
    assert_eq!(current_batch(c), 2);
    assert_eq!(cluster_states(c), states(&[("spoke1", "timedout")]));
    // TALM keeps spoke1 enforced until batch 2 completes; talm releases it at once.
    assert_eq!(w.released(n, P0), ["spoke2"]);
}

#[test]
fn quirk_partial_blocking_filter_keeps_selection_order() {
    let mut w = World::talm();
    // A finished blocking CGU whose status lists clusters in another order.
    let mut done = cgu(
        "cgu-done",
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4", "spoke5", "spoke6"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 5},
            "enable": true,
        }),
    );
    done["metadata"]["finalizers"] = json!([FINALIZER]);
    done["status"] = json!({
        "conditions": [
            {"type": "Succeeded", "status": "False", "reason": "TimedOut",
             "message": TOOK_TOO_LONG, "lastTransitionTime": T0},
        ],
        "clusters": [
            {"name": "spoke1", "state": "complete"},
            {"name": "spoke6", "state": "complete"},
            {"name": "spoke2", "state": "complete"},
            {"name": "spoke5", "state": "timedout",
             "currentPolicy": {"name": P0, "status": "NonCompliant"}},
            {"name": "spoke4", "state": "complete"},
        ],
        "status": {"startedAt": T0, "completedAt": T0},
    });
    w.add(done);
    let mut filtered = cgu(
        "cgu-filtered",
        json!({
            "clusters": ["spoke4", "spoke5", "spoke2", "spoke1"],
            "managedPolicies": [P0, P4],
            "remediationStrategy": {"maxConcurrency": 4},
            "blockingCRs": [{"name": "cgu-done", "namespace": NS}],
            "enable": true,
        }),
    );
    filtered["metadata"]["annotations"]["ran.openshift.io/blocking-cgu-completion-mode"] =
        json!("partial");
    filtered["metadata"]["annotations"]["ran.openshift.io/blocking-cgu-cluster-filtering"] =
        json!("true");
    w.add(filtered);
    w.advance(60);
    w.run();
    let c = w.cgu("cgu-filtered");
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    // spoke5 did not complete in cgu-done: filtered out. The rest keep the selection order.
    assert_eq!(plan(c), batches(&[&["spoke4", "spoke2", "spoke1"]]));
}

#[test]
fn partial_blocking_filter_leaving_nobody_fails() {
    let mut w = World::talm();
    let mut done = cgu(
        "cgu-done",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        }),
    );
    done["metadata"]["finalizers"] = json!([FINALIZER]);
    done["status"] = json!({
        "conditions": [{"type": "Succeeded", "status": "False", "reason": "TimedOut",
                        "message": TOOK_TOO_LONG, "lastTransitionTime": T0}],
        "clusters": [{"name": "spoke1", "state": "timedout",
                      "currentPolicy": {"name": P0, "status": "NonCompliant"}}],
        "status": {"startedAt": T0, "completedAt": T0},
    });
    w.add(done);
    let mut filtered = cgu(
        "cgu-filtered",
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 2},
            "blockingCRs": [{"name": "cgu-done", "namespace": NS}],
            "enable": true,
        }),
    );
    filtered["metadata"]["annotations"]["ran.openshift.io/blocking-cgu-completion-mode"] =
        json!("partial");
    filtered["metadata"]["annotations"]["ran.openshift.io/blocking-cgu-cluster-filtering"] =
        json!("true");
    w.add(filtered);
    w.advance(60);
    w.run();
    let c = w.cgu("cgu-filtered");
    let msg = "No clusters available for remediation after filtering out non-completed clusters from blocking CGUs";
    assert_condition(c, "Progressing", "False", "Completed", msg);
    assert_condition(c, "Succeeded", "False", "Failed", msg);
}

#[test]
fn quirk_canary_timeout_counts_canary_batches_in_the_plan() {
    // spec.canaries has two entries but spoke6 is compliant, so only spoke4 is a canary batch.
    // Batch 2 (spoke1) is a normal batch: its timeout continues (TALM would fail the CGU
    // "on canary clusters" because 2 <= len(spec.canaries)).
    let n = "cgu-canary-count";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4", "spoke6"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 3, "canaries": ["spoke6", "spoke4"]},
            "enable": true,
        }),
    );
    w.run();
    let c = w.cgu(n);
    assert_eq!(plan(c), batches(&[&["spoke4"], &["spoke1"], &["spoke2"]]));
    assert_eq!(cluster_states(c), states(&[("spoke6", "complete")]));

    w.set_compliance(P0, "spoke4", Compliant);
    w.run_after(10);
    assert_eq!(current_batch(w.cgu(n)), 2);
    // Batch 2 timeout: (180 s - 10 s) / 2 remaining batches = 85 s.
    w.run_after(90);
    let c = w.cgu(n);
    assert_no_condition(c, "Succeeded");
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(current_batch(c), 3);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke6", "complete"),
            ("spoke4", "complete"),
            ("spoke1", "timedout")
        ])
    );
}

// =====================================================================================
// Round trips and the quick-start examples
// =====================================================================================

#[test]
fn output_with_events_feeds_back_in() {
    // The README flow: `-o yaml > next.yaml`, edit, rerun with a later --now. Events from the
    // previous run are part of the input and must be accepted.
    let mut w = World::talm();
    let mut spec = upgrade_complete_spec();
    spec["enable"] = json!(true);
    w.add_cgu("cgu-roundtrip", spec);
    w.run();
    let first = w.last_stdout.clone();
    let path = w.dir().join("with-events.yaml");
    std::fs::write(&path, &first).expect("write");
    let later = w.at(10).to_string();
    let graph = format!("{FIXTURES}/update-graph.yaml");
    let out = World::talm_hub(&[
        "plan",
        "-f",
        path.to_str().expect("utf-8"),
        "--now",
        &later,
        "-o",
        "yaml",
        "--update-graph",
        &graph,
    ]);
    assert!(
        out.status.success(),
        "feeding output back failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = parse_objects(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let c = objs
        .iter()
        .find(|o| kind(o) == "ClusterGroupUpgrade")
        .expect("the CGU is printed");
    assert_eq!(current_batch(c), 1);
    let created = objs
        .iter()
        .filter(|o| is_event(o) && o["reason"] == "CguCreated")
        .count();
    assert!(created <= 1, "CguCreated must not be emitted again");
}

#[test]
fn examples_quick_start_plans() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let out = World::talm_hub(&["plan", "-f", dir, "--now", T0, "-o", "yaml"]);
    assert!(
        out.status.success(),
        "talm-hub plan -f examples/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objs = parse_objects(&String::from_utf8_lossy(&out.stdout)).expect("yaml");
    let c = objs
        .iter()
        .find(|o| kind(o) == "ClusterGroupUpgrade")
        .expect("the example CGU");
    assert!(
        plan(c).is_some_and(|p| p.len() >= 2),
        "a multi-batch plan: {:#}",
        c["status"]
    );
    assert_eq!(plan(c).unwrap()[0].len(), 1, "the canary batch comes first");

    let table = World::talm_hub(&["plan", "-f", dir, "--now", T0]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("sno-site-03"),
        "the table names the canary:\n{text}"
    );
}

// =====================================================================================
// Timing boundaries, actions, spec freezing and policy discovery details
// =====================================================================================

#[test]
fn global_timeout_is_strictly_after_timeout_minutes() {
    // `now - startedAt > timeout`: at exactly 1 min the CGU is still running.
    let n = "cgu-boundary";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 1},
            "enable": true,
        }),
    );
    w.run();
    w.run_after(60);
    assert_condition(w.cgu(n), "Progressing", "True", "InProgress", STARTED);
    w.run_after(1);
    let c = w.cgu(n);
    assert_timed_out(c, TOOK_TOO_LONG);
    assert_eq!(cluster_states(c), states(&[("spoke1", "timedout")]));
    assert_timedout_entry(c, "spoke1", P0);
}

#[test]
fn batch_timeout_splits_the_remaining_time() {
    // §3.4 vector (240 min, 5 batches, batch 1) -> 48 min.
    let n = "cgu-five-batches";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4", "spoke5", "spoke6"],
            "managedPolicies": [P0, P4],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 240},
            "enable": true,
        }),
    );
    w.run();
    assert_eq!(plan(w.cgu(n)).map(|p| p.len()), Some(5));
    w.run_after(48 * 60 - 1);
    assert_eq!(
        current_batch(w.cgu(n)),
        1,
        "batch 1 still has a second left"
    );
    w.run_after(2);
    let c = w.cgu(n);
    assert_eq!(current_batch(c), 2, "batch 1 timed out after 48 min");
    assert_eq!(cluster_states(c), states(&[("spoke1", "timedout")]));
}

#[test]
fn actions_labels_and_annotations() {
    let n = "cgu-actions";
    let mut w = World::talm();
    w.patch(
        "ManagedCluster",
        "",
        "spoke1",
        json!({"metadata": {"labels": {"old-label": "x"}, "annotations": {"old-note": "x"}}}),
    );
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
            "actions": {
                "beforeEnable": {
                    "addClusterLabels": {"upgrading": "true"},
                    "removeClusterLabels": ["old-label"],
                    "addClusterAnnotations": {"talm.example/started": "yes"},
                    "removeClusterAnnotations": ["old-note"],
                },
                "afterCompletion": {
                    "addClusterLabels": {"upgraded": "true"},
                    "removeClusterLabels": ["upgrading"],
                    "addClusterAnnotations": {"talm.example/done": "yes"},
                    "removeClusterAnnotations": ["talm.example/started"],
                },
            },
        }),
    );
    w.run();
    let l = w.labels("spoke1");
    assert_eq!(l.get("upgrading").map(String::as_str), Some("true"));
    assert!(!l.contains_key("old-label"));
    let a = w.annotations("spoke1");
    assert_eq!(
        a.get("talm.example/started").map(String::as_str),
        Some("yes")
    );
    assert!(!a.contains_key("old-note"));

    w.set_compliance(P0, "spoke1", Compliant);
    w.run_after(10);
    assert_completed(w.cgu(n));
    let l = w.labels("spoke1");
    assert_eq!(l.get("upgraded").map(String::as_str), Some("true"));
    assert!(!l.contains_key("upgrading"));
    let a = w.annotations("spoke1");
    assert_eq!(a.get("talm.example/done").map(String::as_str), Some("yes"));
    assert!(!a.contains_key("talm.example/started"));
    // Labels talm did not touch stay.
    assert_eq!(l.get("name").map(String::as_str), Some("spoke1"));
}

#[test]
fn delete_objects_false_keeps_emptied_placements_after_timeout() {
    // TALM leaves the last batch enforced forever with deleteObjects: false; talm keeps the
    // objects (as asked) but releases every cluster.
    let n = "cgu-keep-objects";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 2, "timeout": 1},
            "enable": true,
            "actions": {"afterCompletion": {"deleteObjects": false}},
        }),
    );
    w.run();
    assert_eq!(w.released(n, P0), ["spoke1", "spoke2"]);
    w.run_after(61);
    assert_timed_out(w.cgu(n), TOOK_TOO_LONG);
    assert!(
        w.placement(n, P0).is_some(),
        "deleteObjects: false keeps the Placement"
    );
    assert!(w.binding(n, P0).is_some());
    assert!(
        w.released(n, P0).is_empty(),
        "nothing stays enforced after the end"
    );
}

#[test]
fn spec_edits_count_before_start_and_are_frozen_after() {
    let n = "cgu-edits";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": false,
        }),
    );
    w.run();
    assert_eq!(plan(w.cgu(n)), batches(&[&["spoke1"]]));
    w.patch_cgu_spec(n, json!({"clusters": ["spoke1", "spoke2"]}));
    w.run_after(300);
    assert_eq!(
        plan(w.cgu(n)),
        batches(&[&["spoke1"], &["spoke2"]]),
        "re-planned"
    );

    w.patch_cgu_spec(n, json!({"enable": true}));
    w.run_after(10);
    assert_eq!(current_batch(w.cgu(n)), 1);
    w.patch_cgu_spec(
        n,
        json!({"clusters": ["spoke1", "spoke2", "spoke4"], "enable": false}),
    );
    w.run_after(10);
    let c = w.cgu(n);
    assert_eq!(
        plan(c),
        batches(&[&["spoke1"], &["spoke2"]]),
        "frozen once started"
    );
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
}

#[test]
fn deprecated_cluster_selector() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-selector",
        json!({
            "clusterSelector": ["upgrade2=true", "not a selector=x=y"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": false,
        }),
    );
    w.run();
    assert_eq!(
        plan(w.cgu("cgu-selector")),
        batches(&[&["spoke1"], &["spoke4"]])
    );
}

#[test]
fn enforce_policies_are_ignored_and_hub_templates_are_invalid() {
    let mut w = World::talm();
    // policy0's children are enforce: silently ignored.
    let child0 = format!("{NS}.{P0}");
    let child3 = format!("{NS}.{P3}");
    for o in w.objects.iter_mut() {
        if kind(o) == "Policy" && name(o) == child0 {
            o["spec"]["remediationAction"] = json!("Enforce");
        }
    }
    w.add_cgu(
        "cgu-enforce",
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0, P2],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run();
    let c = w.cgu("cgu-enforce");
    assert_condition(
        c,
        "Validated",
        "True",
        "ValidationCompleted",
        "Completed validation",
    );
    assert_eq!(policies_for_upgrade(c), in_default(&[P2]));

    // A child whose templates still hold `{{hub` failed hub-template resolution: invalid.
    for o in w.objects.iter_mut() {
        if kind(o) == "Policy" && name(o) == child3 {
            o["spec"]["policy-templates"][0]["objectDefinition"]["spec"]["object-templates"][0]["objectDefinition"]
                ["spec"]["channel"] = json!("{{hub fromConfigMap \"\" \"versions\" \"ptp\" hub}}");
        }
    }
    w.add_cgu(
        "cgu-invalid",
        json!({
            "clusters": ["spoke2", "spoke4"],
            "managedPolicies": [P2, P3],
            "remediationStrategy": {"maxConcurrency": 2},
            "enable": false,
        }),
    );
    w.run_after(10);
    assert_condition(
        w.cgu("cgu-invalid"),
        "Validated",
        "False",
        "NotAllManagedPoliciesExist",
        &format!("Invalid managed policies: [{P3}] "),
    );
}

/// Before the start, spec edits are honoured: a cluster removed from the CGU leaves the plan
/// and its pre-cache task is cancelled (its SpokeAgent spec no longer holds the task).
#[test]
fn precache_task_cancelled_when_cluster_leaves_before_start() {
    let n = "cgu-precache-edit";
    let mut w = precache_world(n);
    w.run();
    assert!(w.spoke_agent("spoke5").expect("agent")["spec"]["precache"].is_object());
    w.patch_cgu_spec(n, json!({"clusters": ["spoke1", "spoke2", "spoke4"]}));
    w.run_after(10);
    let c = w.cgu(n);
    let st = precache_states(c);
    assert!(st.iter().all(|(cl, _)| cl != "spoke5"), "{st:?}");
    assert_eq!(st.len(), 3);
    let a = w.spoke_agent("spoke5").expect("agent");
    assert!(
        a["spec"].get("precache").is_none_or(|p| p.is_null()),
        "{a:#}"
    );
    assert!(w.spoke_agent("spoke1").expect("agent")["spec"]["precache"].is_object());
}

/// Review finding: when pre-caching drops some clusters and backup fails on all the others, no
/// cluster is left; the CGU fails ("Backup failed"), it does not report "already compliant".
#[test]
fn precache_and_backup_failures_leaving_nothing_fail_the_cgu() {
    let n = "cgu-nothing-left";
    let mut w = World::talm();
    w.add_cgu(
        n,
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0, P2],
            "remediationStrategy": {"maxConcurrency": 2},
            "preCaching": true,
            "backup": true,
        }),
    );
    w.run();
    w.report_precache("spoke1", "Succeeded")
        .report_precache("spoke2", "UnrecoverableError");
    w.run_after(30);
    let c = w.cgu(n);
    assert_condition(
        c,
        "PrecachingSuceeded",
        "True",
        "PartiallyDone",
        "Precaching failed for 1 clusters",
    );
    w.report_backup("spoke1", "UnrecoverableError");
    w.run_after(30);
    let c = w.cgu(n);
    assert_condition(
        c,
        "BackupSuceeded",
        "False",
        "Failed",
        "Backup failed for all clusters",
    );
    assert_condition(
        c,
        "Succeeded",
        "False",
        "Failed",
        "No clusters available for remediation (Backup failed)",
    );
    w.assert_no_event("CguSuccess", "RemediationCompleted");
}

// =====================================================================================
// talm extensions (issue 16): pause and resume, failure budget
// =====================================================================================

#[test]
fn pause_freezes_releases_and_timers_and_resume_continues_the_same_batch() {
    let cgu_name = "cgu-pause";
    let mut w = World::talm();
    w.add_cgu(
        cgu_name,
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0, P2],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 4},
            "actions": {"afterCompletion": {"addClusterLabels": {"ztp-done": ""}}},
        }),
    );
    w.run();
    let c = w.cgu(cgu_name);
    assert_eq!(plan(c), batches(&[&["spoke1"], &["spoke2"]]));
    assert_eq!(w.released(cgu_name, P0), ["spoke1"]);

    // Pause during batch 1 (whose timeout is 2 of the 4 minutes).
    w.patch_cgu_spec(cgu_name, json!({"paused": true}));
    w.run_after(10);
    let paused_at = w.now_str();
    let c = w.cgu(cgu_name);
    assert_condition(
        c,
        "Paused",
        "True",
        "Paused",
        &format!("Paused since {paused_at}: spec.paused is true"),
    );
    assert_eq!(c["status"]["status"]["pausedAt"], json!(paused_at));
    w.event(
        "CguPaused",
        "RemediationPaused",
        &format!("Paused since {paused_at}: spec.paused is true"),
    );

    // `plan -o table` says so.
    let input = w.write_input();
    let out = talm_hub(&[
        "plan",
        "-f",
        &input.to_string_lossy(),
        "--now",
        &w.now_str(),
        "-o",
        "table",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "  paused:   Paused since {paused_at}: spec.paused is true\n"
        )) && table.contains("; set spec.paused to false to resume"),
        "{table}"
    );

    // spoke1 fixes policy0 while paused: recorded, but not released into policy2.
    w.set_compliance(P0, "spoke1", Compliant);
    w.run_after(10);
    let c = w.cgu(cgu_name);
    assert_eq!(progress(c), prog(&[("spoke1", "InProgress", Some(1))]));
    assert_eq!(w.released(cgu_name, P0), ["spoke1"], "stays enforced");
    assert!(
        w.released(cgu_name, P2).is_empty(),
        "no release while paused"
    );

    // An hour later: far past the batch and global timeouts, nothing timed out.
    w.run_after(3600);
    let c = w.cgu(cgu_name);
    assert_eq!(current_batch(c), 1);
    assert!(condition(c, "Succeeded").is_none(), "{:#}", c["status"]);
    assert!(cluster_states(c).is_empty());

    // Resume: the same batch continues where it stopped.
    w.patch_cgu_spec(cgu_name, json!({"paused": false}));
    w.run_after(10);
    let c = w.cgu(cgu_name);
    assert_condition_reason(c, "Paused", "False", "Resumed");
    assert_eq!(c["status"]["status"]["excludedSeconds"], json!(3620));
    assert_eq!(w.released(cgu_name, P2), ["spoke1"]);
    assert_eq!(current_batch(c), 1);
    assert_eq!(w.events_with("CguResumed", "RemediationResumed").len(), 1);

    // Batch 1's deadline moved by the 3,620 paused seconds: 120 s of active time, of which
    // 10 s are used; 80 s more is still within it.
    w.run_after(80);
    assert_eq!(current_batch(w.cgu(cgu_name)), 1);
    w.set_compliance(P2, "spoke1", Compliant);
    w.run_after(1);
    let c = w.cgu(cgu_name);
    assert_eq!(current_batch(c), 2);
    assert_eq!(cluster_states(c), states(&[("spoke1", "complete")]));
    assert!(label_keys(&w, "spoke1").contains(&"ztp-done".to_string()));
    assert_eq!(w.released(cgu_name, P0), ["spoke2"]);
}

#[test]
fn a_paused_cgu_does_not_start() {
    let cgu_name = "cgu-paused-from-the-start";
    let mut w = World::talm();
    w.add_cgu(
        cgu_name,
        json!({
            "clusters": ["spoke1", "spoke2"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
            "paused": true,
        }),
    );
    w.run();
    let c = w.cgu(cgu_name);
    assert_condition_reason(c, "Paused", "True", "Paused");
    assert!(condition(c, "Progressing").is_none(), "{:#}", c["status"]);
    assert_eq!(c["status"]["status"], json!({}));
    assert!(w.released(cgu_name, P0).is_empty());
    w.assert_no_event("CguStarted", "RemediationStarted");
    w.patch_cgu_spec(cgu_name, json!({"paused": false}));
    w.run_after(60);
    let c = w.cgu(cgu_name);
    assert_condition(c, "Progressing", "True", "InProgress", STARTED);
    assert_eq!(w.released(cgu_name, P0), ["spoke1"]);
}

#[test]
fn a_failure_budget_of_one_ends_the_cgu_on_the_second_failure() {
    let cgu_name = "cgu-budget";
    let mut w = World::talm();
    w.add_cgu(
        cgu_name,
        json!({
            "clusters": ["spoke1", "spoke2", "spoke4"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "timeout": 3, "maxFailures": 1},
        }),
    );
    w.run();
    assert_eq!(
        plan(w.cgu(cgu_name)),
        batches(&[&["spoke1"], &["spoke2"], &["spoke4"]])
    );
    // Batch 1 (60 s): spoke1 times out; one failure is within the budget.
    w.run_after(61);
    let c = w.cgu(cgu_name);
    assert_eq!(current_batch(c), 2);
    assert_timedout_entry(c, "spoke1", P0);
    assert!(condition(c, "Succeeded").is_none());
    assert_eq!(w.released(cgu_name, P0), ["spoke2"]);
    // Batch 2 ((180 − 61) / 2 s): spoke2 times out; two failures exceed it.
    w.run_after(60);
    let c = w.cgu(cgu_name);
    let message = "Failure budget exceeded: 2 clusters failed, more than the 1 allowed by remediationStrategy.maxFailures 1: spoke1, spoke2";
    assert_condition(c, "Succeeded", "False", "FailureBudgetExceeded", message);
    assert_condition(c, "Progressing", "False", "FailureBudgetExceeded", message);
    let e = w.event("CguFailureBudgetExceeded", "RemediationStopped", message);
    assert_eq!(e["type"], "Warning");
    assert_no_enforcement_left(&w, cgu_name);
    assert!(
        !cluster_states(c).iter().any(|(n, _)| n == "spoke4"),
        "spoke4 was never released"
    );
}

#[test]
fn an_invalid_failure_budget_is_refused_by_plan() {
    let mut w = World::talm();
    w.add_cgu(
        "cgu-bad-budget",
        json!({
            "clusters": ["spoke1"],
            "managedPolicies": [P0],
            "remediationStrategy": {"maxConcurrency": 1, "maxFailures": "120%"},
        }),
    );
    let input = w.write_input();
    let out = talm_hub(&[
        "plan",
        "-f",
        &input.to_string_lossy(),
        "--now",
        &w.now_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.remediationStrategy.maxFailures") && stderr.contains("not \"120%\""),
        "{stderr}"
    );
}

#[test]
fn a_failed_backup_counts_against_the_failure_budget_before_the_start() {
    for (budget, ends) in [(json!(0), true), (json!("25%"), false)] {
        let n = "cgu-backup-budget";
        let mut w = backup_world(n);
        w.patch_cgu_spec(n, json!({"remediationStrategy": {"maxFailures": budget}}));
        w.run();
        for cl in BACKUP_CLUSTERS {
            w.report_backup(cl, "Active");
        }
        w.run_after(30);
        for cl in ["spoke6", "spoke1", "spoke5"] {
            w.report_backup(cl, "Succeeded");
        }
        w.report_backup("spoke2", "BackupTimeout");
        w.run_after(30);
        let c = w.cgu(n);
        if ends {
            let message = "Failure budget exceeded: 1 clusters failed, more than the 0 allowed by remediationStrategy.maxFailures 0: spoke2";
            assert_condition(c, "Succeeded", "False", "FailureBudgetExceeded", message);
            assert_no_enforcement_left(&w, n);
        } else {
            // 25% of 4 clusters is 1: one failure is within the budget.
            assert_condition(c, "Progressing", "True", "InProgress", STARTED);
            assert_eq!(plan(c), batches(&[&["spoke6", "spoke1", "spoke5"]]));
        }
    }
}

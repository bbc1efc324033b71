//! Black-box ManifestWork rollouts (docs/contract.md §3.13, TALM's kuttl `manifestwork-*`
//! tests): a CGU naming `spec.manifestWorkTemplates` replayed through `talm-hub plan` on the
//! §6.1 fleet. The test plays the work agent by writing each ManifestWork's status between
//! steps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

const ROLLING_OUT: &str = "Rolling out manifestworks";
const MW_DONE: &str = "All manifestworks rolled out successfully on all clusters";
const MW_TOO_LONG: &str = "Manifestwork rollout took too long";
const EXPECTED_ANNOTATION: &str = "openshift-cluster-group-upgrades/expectedValues";
const TEMPLATES: [&str; 3] = ["ibu-prep", "ibu-upgrade", "ibu-finalize"];

/// A ManifestWorkReplicaSet template in `default` whose one manifest reports `<feedback>`,
/// expected to reach `True`.
fn template(name_: &str, feedback: &str) -> Value {
    json!({
        "apiVersion": "work.open-cluster-management.io/v1alpha1",
        "kind": "ManifestWorkReplicaSet",
        "metadata": {
            "name": name_, "namespace": NS,
            "annotations": {EXPECTED_ANNOTATION:
                format!(r#"[{{"manifestIndex":0,"name":"{feedback}","value":"True"}}]"#)},
        },
        "spec": {
            "placementRefs": [{"name": "not-used-by-talm"}],
            "manifestWorkTemplate": {
                "deleteOption": {"propagationPolicy": "Orphan"},
                "workload": {"manifests": [{
                    "apiVersion": "lca.openshift.io/v1", "kind": "ImageBasedUpgrade",
                    "metadata": {"name": "upgrade"}, "spec": {"stage": name_},
                }]},
                "manifestConfigs": [{
                    "resourceIdentifier": {"group": "lca.openshift.io", "resource": "imagebasedupgrades", "name": "upgrade"},
                    "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [{"name": feedback, "path": ".status.x"}]}],
                }],
            },
        },
    })
}

/// Validated, and rolling out.
#[track_caller]
fn assert_rolling_out(c: &Value) {
    assert_condition(
        c,
        "Validated",
        "True",
        "ValidationCompleted",
        "Completed validation",
    );
    assert_condition(c, "Progressing", "True", "InProgress", ROLLING_OUT);
}

fn feedback_of(t: &str) -> String {
    format!("is-{t}-done")
}

fn mw_world(spec_extra: Value) -> World {
    let mut w = World::talm();
    for t in TEMPLATES {
        w.add(template(t, &feedback_of(t)));
    }
    let mut spec = json!({
        "clusters": ["spoke1", "spoke4", "spoke6"],
        "manifestWorkTemplates": TEMPLATES,
        "remediationStrategy": {"maxConcurrency": 2, "timeout": 240},
        "enable": true,
    });
    merge_patch(&mut spec, &spec_extra);
    w.add_cgu("mw", spec);
    w
}

fn work_name(t: &str) -> String {
    format!("{NS}.{t}")
}

/// The ManifestWorks in a cluster namespace, by name.
fn works_in(w: &World, cluster: &str) -> Vec<String> {
    let mut v: Vec<String> = w
        .all("ManifestWork")
        .into_iter()
        .filter(|o| namespace(o) == cluster)
        .map(|o| name(o).to_string())
        .collect();
    v.sort();
    v
}

/// Plays the work agent: the work of template `t` on `cluster` is applied and available, and
/// its manifest reports `value` for the template's feedback.
fn report(w: &mut World, cluster: &str, t: &str, value: &str) {
    let cond = |ty: &str| {
        json!({"type": ty, "status": "True", "reason": "Done", "message": format!("{ty} ok"),
                                 "lastTransitionTime": "2026-03-02T10:00:00Z", "observedGeneration": 1})
    };
    w.patch(
        "ManifestWork",
        cluster,
        &work_name(t),
        json!({"status": {
            "conditions": [cond("Applied"), cond("Available")],
            "resourceStatus": {"manifests": [{
                "resourceMeta": {"ordinal": 0, "group": "lca.openshift.io", "kind": "ImageBasedUpgrade",
                                 "resource": "imagebasedupgrades", "name": "upgrade", "version": "v1"},
                "statusFeedback": {"values": [{"name": feedback_of(t),
                                               "fieldValue": {"type": "String", "string": value}}]},
                "conditions": [cond("Applied"), cond("Available"), cond("StatusFeedbackSynced")],
            }]},
        }}),
    );
}

fn finish(w: &mut World, cluster: &str, t: &str) {
    report(w, cluster, t, "True");
}

/// `currentBatchRemediationProgress` as `cluster -> (state, manifestWorkIndex)`.
fn work_progress(c: &Value) -> Vec<(String, String, Option<i64>)> {
    c["status"]["status"]["currentBatchRemediationProgress"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            assert!(
                v.get("policyIndex").is_none(),
                "no policyIndex in a ManifestWork rollout: {v}"
            );
            (
                k.clone(),
                v["state"].as_str().unwrap_or_default().to_string(),
                v["manifestWorkIndex"].as_i64(),
            )
        })
        .collect()
}

fn wp(v: &[(&str, &str, Option<i64>)]) -> Vec<(String, String, Option<i64>)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect()
}

// kuttl manifestwork-complete: three templates, maxConcurrency 2.
#[test]
fn three_templates_roll_out_in_order_with_expected_values() {
    let mut w = mw_world(json!({}));
    w.run();
    let c = w.cgu("mw");
    assert_eq!(
        c["status"]["remediationPlan"],
        json!([["spoke1", "spoke4"], ["spoke6"]])
    );
    assert_rolling_out(c);
    assert!(
        c["status"].get("managedPoliciesForUpgrade").is_none(),
        "policies are ignored"
    );
    assert_eq!(
        work_progress(c),
        wp(&[
            ("spoke1", "InProgress", Some(0)),
            ("spoke4", "InProgress", Some(0))
        ])
    );
    assert!(
        w.all("Placement").is_empty(),
        "a ManifestWork rollout enforces no policy"
    );
    for cl in ["spoke1", "spoke4"] {
        assert_eq!(works_in(&w, cl), [work_name("ibu-prep")]);
    }
    assert!(works_in(&w, "spoke6").is_empty(), "batch 2 has not started");
    // The work is the template's manifestWorkTemplate, labelled for the CGU, with the
    // template's expected values.
    let mw = w
        .find("ManifestWork", "spoke1", "default.ibu-prep")
        .unwrap();
    assert_eq!(
        mw["spec"],
        template("ibu-prep", &feedback_of("ibu-prep"))["spec"]["manifestWorkTemplate"]
    );
    assert_eq!(
        mw["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgrade"],
        "mw"
    );
    assert_eq!(
        mw["metadata"]["labels"]["openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace"],
        NS
    );
    assert!(
        mw["metadata"]["annotations"][EXPECTED_ANNOTATION]
            .as_str()
            .unwrap()
            .contains("is-ibu-prep-done")
    );

    // spoke1 reaches the expected value; spoke4 is applied but reports False.
    finish(&mut w, "spoke1", "ibu-prep");
    report(&mut w, "spoke4", "ibu-prep", "False");
    w.run_after(30);
    let c = w.cgu("mw");
    assert_eq!(
        work_progress(c),
        wp(&[
            ("spoke1", "InProgress", Some(1)),
            ("spoke4", "InProgress", Some(0))
        ])
    );
    assert_eq!(
        works_in(&w, "spoke1"),
        [work_name("ibu-upgrade")],
        "the previous work goes before the next is created"
    );
    assert_eq!(works_in(&w, "spoke4"), [work_name("ibu-prep")]);

    // Both clusters through all three templates: batch 1 completes, batch 2 starts.
    report(&mut w, "spoke4", "ibu-prep", "True");
    w.run_after(30);
    for t in ["ibu-upgrade", "ibu-finalize"] {
        finish(&mut w, "spoke1", t);
        finish(&mut w, "spoke4", t);
        w.run_after(30);
    }
    let c = w.cgu("mw");
    assert_eq!(current_batch(c), 2);
    assert_eq!(
        cluster_states(c),
        states(&[("spoke1", "complete"), ("spoke4", "complete")])
    );
    assert_eq!(work_progress(c), wp(&[("spoke6", "InProgress", Some(0))]));
    for cl in ["spoke1", "spoke4"] {
        assert!(
            works_in(&w, cl).is_empty(),
            "batch 1's works are deleted when batch 2 starts: {:?}",
            works_in(&w, cl)
        );
    }
    assert_eq!(works_in(&w, "spoke6"), [work_name("ibu-prep")]);

    for t in TEMPLATES {
        finish(&mut w, "spoke6", t);
        w.run_after(30);
    }
    let c = w.cgu("mw");
    assert_condition(c, "Progressing", "False", "Completed", MW_DONE);
    assert_condition(c, "Succeeded", "True", "Completed", MW_DONE);
    assert_eq!(
        cluster_states(c),
        states(&[
            ("spoke1", "complete"),
            ("spoke4", "complete"),
            ("spoke6", "complete")
        ])
    );
    assert!(
        w.all("ManifestWork").is_empty(),
        "deleteObjects: every work is gone at the end"
    );
    let done = w.event(
        "CguSuccess",
        "RemediationCompleted",
        "ClusterGroupUpgrade mw succeeded remediating policies",
    );
    assert_eq!(ev_ann(done, "total-clusters-count"), Some("3"));
}

// kuttl manifestwork-template-not-found.
#[test]
fn missing_templates_fail_validation_until_they_exist() {
    let mut w = mw_world(json!({}));
    assert!(w.remove("ManifestWorkReplicaSet", NS, "ibu-upgrade"));
    assert!(w.remove("ManifestWorkReplicaSet", NS, "ibu-finalize"));
    w.run();
    let c = w.cgu("mw");
    assert_condition(
        c,
        "Validated",
        "False",
        "NotAllManifestTemplatesExist",
        "Missing manifest templates: [ibu-upgrade ibu-finalize]",
    );
    assert!(w.all("ManifestWork").is_empty());
    assert!(c["status"]["status"].get("startedAt").is_none());

    w.add(template("ibu-upgrade", &feedback_of("ibu-upgrade")));
    w.add(template("ibu-finalize", &feedback_of("ibu-finalize")));
    w.run_after(60);
    let c = w.cgu("mw");
    assert_rolling_out(c);
    assert_eq!(works_in(&w, "spoke1"), [work_name("ibu-prep")]);
}

// kuttl manifestwork-timeout.
#[test]
fn a_timeout_records_the_work_and_its_trimmed_conditions() {
    let mut w = mw_world(json!({"remediationStrategy": {"timeout": 0}}));
    w.run();
    report(&mut w, "spoke1", "ibu-prep", "False");
    w.run_after(1);
    let c = w.cgu("mw");
    assert_condition(c, "Progressing", "False", "TimedOut", MW_TOO_LONG);
    assert_condition(c, "Succeeded", "False", "TimedOut", MW_TOO_LONG);
    let entry = |cl: &str| {
        c["status"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == cl)
            .unwrap_or_else(|| panic!("{cl} not in status.clusters"))
            .clone()
    };
    let e1 = entry("spoke1");
    assert_eq!(e1["state"], "timedout");
    assert!(e1.get("currentPolicy").is_none());
    assert_eq!(e1["currentManifestWork"]["name"], "default.ibu-prep");
    let m = &e1["currentManifestWork"]["status"]["manifests"][0];
    assert_eq!(m["resourceMeta"]["kind"], "ImageBasedUpgrade");
    assert_eq!(
        m["statusFeedback"]["values"][0]["fieldValue"]["string"],
        "False"
    );
    assert_eq!(
        m["conditions"][2],
        json!({"type": "StatusFeedbackSynced", "status": "True", "reason": "Done",
               "message": "StatusFeedbackSynced ok"}),
        "conditions are trimmed to type, status, reason and message"
    );
    // spoke4's work never reported: its entry names the work without a status.
    let e4 = entry("spoke4");
    assert_eq!(
        e4["currentManifestWork"],
        json!({"name": "default.ibu-prep"})
    );
}

// talm: a cluster that timed out in an earlier batch cannot complete; the CGU ends with the
// last batch instead of waiting for the global timeout.
#[test]
fn an_earlier_batch_timeout_ends_the_rollout_with_the_last_batch() {
    let mut w = mw_world(json!({
        "remediationStrategy": {"maxConcurrency": 1, "timeout": 30},
        "manifestWorkTemplates": ["ibu-prep"],
    }));
    w.run();
    assert_eq!(
        w.cgu("mw")["status"]["remediationPlan"],
        json!([["spoke1"], ["spoke4"], ["spoke6"]])
    );
    finish(&mut w, "spoke1", "ibu-prep");
    w.run_after(30);
    // Batch 2 (spoke4) gets half of what is left (14.75 min) and never reports.
    w.run_after(15 * 60);
    let c = w.cgu("mw");
    assert_eq!(current_batch(c), 3, "{:#}", c["status"]);
    assert_eq!(
        cluster_states(c),
        states(&[("spoke1", "complete"), ("spoke4", "timedout")])
    );
    finish(&mut w, "spoke6", "ibu-prep");
    w.run_after(30);
    let c = w.cgu("mw");
    assert_condition(
        c,
        "Succeeded",
        "False",
        "TimedOut",
        "Manifestwork rollout took too long on some clusters",
    );
}

#[test]
fn without_delete_objects_the_works_stay_and_deleting_the_cgu_removes_them() {
    let mut w = mw_world(json!({
        "manifestWorkTemplates": ["ibu-prep"],
        "actions": {"afterCompletion": {"deleteObjects": false}},
    }));
    w.run();
    finish(&mut w, "spoke1", "ibu-prep");
    finish(&mut w, "spoke4", "ibu-prep");
    w.run_after(30);
    assert_eq!(
        works_in(&w, "spoke1"),
        [work_name("ibu-prep")],
        "deleteObjects: false keeps batch 1's works when batch 2 starts"
    );
    finish(&mut w, "spoke6", "ibu-prep");
    w.run_after(30);
    let c = w.cgu("mw");
    assert_condition(c, "Succeeded", "True", "Completed", MW_DONE);
    assert_eq!(w.all("ManifestWork").len(), 3, "kept for inspection");

    w.delete_cgu("mw");
    w.run_after(1);
    assert!(
        w.all("ManifestWork").is_empty(),
        "deleting the CGU deletes its works"
    );
}

#[test]
fn a_work_of_another_cgu_is_never_taken_for_this_one() {
    let mut w = mw_world(json!({"manifestWorkTemplates": ["ibu-prep"]}));
    // Another CGU's finished work under the same name in spoke1.
    w.add(json!({
        "apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
        "metadata": {"name": "default.ibu-prep", "namespace": "spoke1",
                     "labels": {"openshift-cluster-group-upgrades/clusterGroupUpgrade": "other",
                                "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace": NS}},
        "spec": {},
        "status": {"conditions": [{"type": "Applied", "status": "True"}, {"type": "Available", "status": "True"}]},
    }));
    w.run();
    w.run_after(30);
    let c = w.cgu("mw");
    assert_eq!(
        work_progress(c),
        wp(&[
            ("spoke1", "InProgress", Some(0)),
            ("spoke4", "InProgress", Some(0))
        ]),
        "spoke1 does not complete on another CGU's work"
    );
}

#[test]
fn the_shipped_manifestwork_example_plans() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let clusters = format!("{root}/01-managed-clusters.yaml");
    let dir = format!("{root}/manifestwork");
    let out = talm_hub(&[
        "plan",
        "-f",
        &clusters,
        "-f",
        &dir,
        "--now",
        "2026-03-02T10:00:00Z",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("InProgress: Rolling out manifestworks"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sno-site-03  InProgress (site-config-v2, 1 of 2)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("created  ManifestWork sno-site-03/ztp-site-policies.site-config-v2"),
        "{stdout}"
    );
}

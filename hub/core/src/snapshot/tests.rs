//! Snapshot tests: policy indexing, root and child updates, and what each change reports.

use super::*;
use serde_json::json;

fn policy(v: serde_json::Value) -> Policy {
    serde_json::from_value(v).unwrap()
}

#[test]
fn roots_children_and_removal() {
    let mut s = Snapshot::new();
    s.insert_policy(policy(json!({
        "metadata": {"name": "p1", "namespace": "ztp"},
        "status": {"status": [
            {"clustername": "a", "compliant": "Compliant"},
            {"clustername": "b", "compliant": "Pending"},
            {"clustername": "c"}
        ]}
    })));
    s.insert_policy(policy(json!({
        "metadata": {"name": "ztp.p1", "namespace": "a",
            "labels": {"policy.open-cluster-management.io/root-policy": "ztp.p1"}},
        "spec": {"remediationAction": "Enforce"}
    })));
    s.insert_policy(policy(json!({
        "metadata": {"name": "nodot", "namespace": "a",
            "labels": {"policy.open-cluster-management.io/root-policy": "x"}}
    })));
    s.insert_policy(policy(json!({
        "metadata": {"name": "ztp.copy", "namespace": "a",
            "labels": {"policy.open-cluster-management.io/root-policy": "ztp.copy",
                       "openshift-cluster-group-upgrades/clusterGroupUpgrade": "x"}}
    })));
    let root = s.root_policy("ztp", "p1").unwrap();
    assert_eq!(root.compliance("a"), Compliance::Compliant);
    assert_eq!(root.compliance("b"), Compliance::NonCompliant);
    assert_eq!(root.compliance("c"), Compliance::NonCompliant);
    assert_eq!(root.compliance("d"), Compliance::NotMatched);
    let kids = s.child_policies("a", "p1");
    assert_eq!(kids.len(), 1);
    assert!(kids[0].enforce);
    assert_eq!(
        s.all_child_policies("a").count(),
        1,
        "unsplittable and legacy copies ignored"
    );
    s.remove_policy("a", "ztp.p1");
    assert!(s.child_policies("a", "p1").is_empty());
    s.remove_policy("ztp", "p1");
    assert!(s.root_policy("ztp", "p1").is_none());
}

fn root_with(rv: &str, entries: &[(&str, &str)], soak: &str) -> Policy {
    let status: Vec<serde_json::Value> = entries
        .iter()
        .map(|(c, s)| json!({"clustername": c, "clusternamespace": c, "compliant": s}))
        .collect();
    policy(json!({
        "metadata": {"name": "p1", "namespace": "ztp", "resourceVersion": rv,
            "annotations": {"ran.openshift.io/soak-seconds": soak}},
        "spec": {"remediationAction": "inform"},
        "status": {"compliant": "NonCompliant", "status": status}
    }))
}

fn root_change(clusters: Option<&[&str]>) -> Vec<PolicyChange> {
    vec![PolicyChange::Root {
        namespace: "ztp".into(),
        name: "p1".into(),
        clusters: clusters.map(|c| c.iter().map(|x| x.to_string()).collect()),
    }]
}

#[test]
fn root_updates_report_exactly_the_clusters_whose_compliance_changed() {
    let mut s = Snapshot::new();
    let base = [
        ("a", "NonCompliant"),
        ("b", "NonCompliant"),
        ("c", "Compliant"),
    ];
    assert_eq!(
        s.insert_policy(root_with("1", &base, "0")),
        root_change(None),
        "a new root: every cluster"
    );
    assert!(
        s.root_policy("ztp", "p1")
            .unwrap()
            .policy
            .status
            .as_ref()
            .unwrap()
            .status
            .is_none(),
        "the per-cluster list lives in the index only"
    );
    assert!(
        s.insert_policy(root_with("2", &base, "0")).is_empty(),
        "same compliance, new resourceVersion"
    );
    assert!(
        s.insert_policy(root_with(
            "3",
            &[("a", "Pending"), ("b", "NonCompliant"), ("c", "Compliant")],
            "0"
        ))
        .is_empty(),
        "Pending reads as NonCompliant: nothing the engine sees changed"
    );
    assert_eq!(
        s.insert_policy(root_with(
            "4",
            &[
                ("a", "Compliant"),
                ("b", "NonCompliant"),
                ("c", "Compliant"),
                ("d", "Compliant")
            ],
            "0"
        )),
        root_change(Some(&["a", "d"])),
        "a flipped, d appeared"
    );
    assert_eq!(
        s.insert_policy(root_with(
            "5",
            &[("a", "Compliant"), ("d", "Compliant")],
            "0"
        )),
        root_change(Some(&["b", "c"])),
        "b and c left the status"
    );
    let r = s.root_policy("ztp", "p1").unwrap();
    assert_eq!(r.compliance("a"), Compliance::Compliant);
    assert_eq!(r.compliance("b"), Compliance::NotMatched);
    assert_eq!(
        s.insert_policy(root_with(
            "6",
            &[
                ("a", "NonCompliant"),
                ("a", "Compliant"),
                ("d", "Compliant")
            ],
            "0"
        )),
        root_change(Some(&["a"])),
        "a repeated entry may report its cluster (never misses one)"
    );
    assert_eq!(
        s.root_policy("ztp", "p1").unwrap().compliance("a"),
        Compliance::Compliant,
        "the last entry wins"
    );
    assert_eq!(
        s.insert_policy(root_with(
            "7",
            &[("a", "Compliant"), ("d", "Compliant")],
            "60"
        )),
        root_change(None),
        "an annotation the engine reads changed: every cluster"
    );
    let mut no_status = root_with("8", &[], "60");
    no_status.status = None;
    assert_eq!(s.insert_policy(no_status), root_change(None));
    assert_eq!(
        s.root_policy("ztp", "p1").unwrap().compliance("a"),
        Compliance::NonCompliant
    );
    assert_eq!(s.remove_policy("ztp", "p1"), root_change(None));
    assert!(s.remove_policy("ztp", "p1").is_empty());
}

#[test]
fn children_keep_only_derived_fields_and_move_when_relabelled() {
    let mut s = Snapshot::new();
    let child = |labels: serde_json::Value| {
        policy(json!({
            "metadata": {"name": "ztp.p1", "namespace": "a", "labels": labels,
                "annotations": {"ran.openshift.io/ztp-deploy-wave": "7"}},
            "spec": {"remediationAction": "inform", "policy-templates": [
                {"objectDefinition": {"kind": "X", "data": "{{hub fromSecret }}"}}]},
            "status": {"compliant": "NonCompliant"}
        }))
    };
    let labelled = json!({"policy.open-cluster-management.io/root-policy": "ztp.p1"});
    let p = child(labelled.clone());
    let (ns, derived) = ChildPolicy::of(&p).unwrap();
    assert_eq!(ns, "a");
    assert_eq!(
        derived,
        ChildPolicy {
            parent_namespace: "ztp".into(),
            parent_name: "p1".into(),
            enforce: false,
            hub_template_error: true,
            wave: Some("7".into()),
        }
    );
    assert_eq!(derived.name(), "ztp.p1");
    let child_change = PolicyChange::Child {
        cluster_namespace: "a".into(),
        parent_namespace: "ztp".into(),
        parent_name: "p1".into(),
    };
    assert_eq!(s.insert_policy(p.clone()), vec![child_change.clone()]);
    assert_eq!(s.child_policy("a", "ztp.p1"), Some(&derived));
    assert!(s.child_policy("a", "other.p1").is_none());
    let mut status_only = p;
    status_only.status = None;
    assert!(
        s.insert_policy(status_only).is_empty(),
        "status-only change"
    );
    // The same object without the root-policy label is a root: it leaves the children.
    let moved = s.insert_policy(child(json!({})));
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(moved[0], child_change);
    assert!(s.child_policy("a", "ztp.p1").is_none());
    assert!(s.root_policy("a", "ztp.p1").is_some());
    // And back.
    s.insert_policy(child(labelled));
    assert!(s.root_policy("a", "ztp.p1").is_none());
    assert_eq!(s.child_policy("a", "ztp.p1"), Some(&derived));
    assert_eq!(s.remove_policy("a", "ztp.p1"), vec![child_change]);
    assert_eq!(s.all_child_policies("a").count(), 0);
}

#[test]
fn policy_without_status_is_noncompliant_everywhere() {
    let mut s = Snapshot::new();
    s.insert_policy(policy(json!({"metadata": {"name": "p", "namespace": "n"}})));
    assert_eq!(
        s.root_policy("n", "p").unwrap().compliance("x"),
        Compliance::NonCompliant
    );
}

#[test]
fn policy_view_read_from_json_indexes_like_the_full_policy() {
    let v = json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": "p", "namespace": "n", "resourceVersion": "7",
                     "annotations": {"ran.openshift.io/soak-seconds": "30"}},
        "spec": {"remediationAction": "inform", "disabled": false,
                 "policy-templates": [{"objectDefinition": {"kind": "ConfigurationPolicy"}}]},
        "status": {
            "compliant": "NonCompliant",
            "placement": [{"placement": "x"}],
            "status": [
                {"clustername": "a", "clusternamespace": "a", "compliant": "Compliant"},
                {"clustername": "b", "clusternamespace": "b", "compliant": "NonCompliant"},
                {"clustername": "c", "clusternamespace": "c", "compliant": "Pending"},
                {"clustername": "d", "clusternamespace": "d"},
                {"clustername": "e", "compliant": null},
                {"compliant": "Compliant", "clusternamespace": "f", "clustername": "f"}
            ]
        }
    });
    let view: PolicyView = serde_json::from_value(v.clone()).unwrap();
    let mut from_view = Snapshot::new();
    let mut from_full = Snapshot::new();
    assert_eq!(
        from_view.insert_policy_view(view),
        from_full.insert_policy(policy(v))
    );
    let (rv, rf) = (
        from_view.root_policy("n", "p").unwrap(),
        from_full.root_policy("n", "p").unwrap(),
    );
    assert_eq!(rv.policy, rf.policy);
    for (c, want) in [
        ("a", Compliance::Compliant),
        ("b", Compliance::NonCompliant),
        ("c", Compliance::NonCompliant),
        ("d", Compliance::NonCompliant),
        ("e", Compliance::NonCompliant),
        ("f", Compliance::Compliant),
        ("g", Compliance::NotMatched),
    ] {
        assert_eq!(rv.compliance(c), want, "{c}");
        assert_eq!(rf.compliance(c), want, "{c}");
    }
    // A compliance that is not a string is refused, as the full policy refuses it.
    let bad = json!({"metadata": {"name": "p"}, "status": {"status": [{"clustername": "a", "compliant": 1}]}});
    assert!(serde_json::from_value::<PolicyView>(bad.clone()).is_err());
    assert!(serde_json::from_value::<Policy>(bad).is_err());
}

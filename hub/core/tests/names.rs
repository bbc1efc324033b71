//! Property test of the names a CGU's writes get (docs/contract.md §3.1, issue 14 item 1): for
//! every valid CGU name and policy names of any valid length (1–253 characters), an enabled CGU
//! writes one Placement and one PlacementBinding per managed policy, each policy under its own
//! name, every name within 253 characters and every label value within 63 (valid label values).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;
use talm_hub_core::api::ObjectMeta;
use talm_hub_core::api::cgu::{ClusterGroupUpgrade, FINALIZER};
use talm_hub_core::api::rhacm::{ManagedCluster, Policy};
use talm_hub_core::names::RNAME_ANNOTATION;
use talm_hub_core::{Context, FinalizerChange, NoUpdateGraph, Requeue, Snapshot, Write, reconcile};

/// A DNS-1123 subdomain-style name of exactly `len` characters: lowercase letters and digits
/// with inner dashes, starting and ending with a letter.
fn name_of_len(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![8 => proptest::char::range('a', 'z'), 1 => Just('-'), 1 => Just('7')],
        len,
    )
    .prop_map(|chars| {
        let n = chars.len();
        chars
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if (i == 0 || i + 1 == n) && !c.is_ascii_lowercase() {
                    'p'
                } else {
                    c
                }
            })
            .collect()
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => 1usize..=253,
        2 => 200usize..=253,
    ]
    .prop_flat_map(name_of_len)
}

fn snapshot(policies: &[String]) -> Snapshot {
    let mut snap = Snapshot::new();
    let mc: ManagedCluster = serde_json::from_value(json!({
        "apiVersion": "cluster.open-cluster-management.io/v1",
        "kind": "ManagedCluster",
        "metadata": {"name": "sno-1", "labels": {"name": "sno-1"}},
        "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]},
    }))
    .unwrap();
    snap.insert_managed_cluster(mc);
    for name in policies {
        let templates = json!([{"objectDefinition": {
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "ConfigurationPolicy",
            "metadata": {"name": "config"},
            "spec": {"remediationAction": "inform", "object-templates": [{
                "complianceType": "musthave",
                "objectDefinition": {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "x", "namespace": "default"}, "data": {"k": "v"}},
            }]},
        }}]);
        let root: Policy = serde_json::from_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"remediationAction": "inform", "policy-templates": templates},
            "status": {"status": [
                {"clustername": "sno-1", "clusternamespace": "sno-1", "compliant": "NonCompliant"}
            ]},
        }))
        .unwrap();
        snap.insert_policy(root);
        let child: Policy = serde_json::from_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "metadata": {
                "name": format!("default.{name}"),
                "namespace": "sno-1",
                "labels": {"policy.open-cluster-management.io/root-policy": format!("default.{name}")},
            },
            "spec": {"remediationAction": "inform", "policy-templates": templates},
        }))
        .unwrap();
        snap.insert_policy(child);
    }
    snap
}

fn cgu(name: &str, policies: &[String], suffix: Option<&str>) -> ClusterGroupUpgrade {
    let mut meta = json!({
        "name": name,
        "namespace": "default",
        "uid": "6f1c2a4e-0000-4000-8000-000000000001",
    });
    if let Some(s) = suffix {
        meta["annotations"] = json!({"cluster-group-upgrades-operator/name-suffix": s});
    }
    serde_json::from_value(json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": meta,
        "spec": {
            "clusters": ["sno-1"],
            "managedPolicies": policies,
            "remediationStrategy": {"maxConcurrency": 1},
            "enable": true,
        },
    }))
    .unwrap()
}

/// Reconciles until the engine stops asking for an immediate requeue; returns every write.
fn writes(mut cgu: ClusterGroupUpgrade, snap: &Snapshot) -> Vec<Write> {
    let now: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
    let ctx = Context {
        now,
        graph: &NoUpdateGraph,
    };
    let mut all = Vec::new();
    for _ in 0..20 {
        let d = reconcile(&cgu, snap, &ctx);
        if d.finalizer == FinalizerChange::Add {
            cgu.metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(FINALIZER.to_string());
        }
        all.extend(d.writes);
        cgu.status = Some(d.status);
        if d.requeue != Requeue::Immediately {
            break;
        }
    }
    all
}

fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

/// Checks one kind's objects: one name per desired (`rname`) object, one desired object per
/// name, as many as there are policies, names and labels valid.
fn check(metas: &[&ObjectMeta], policies: usize) -> Result<(), TestCaseError> {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for m in metas {
        let name = m.name.as_deref().unwrap();
        prop_assert!(name.len() <= 253, "name longer than 253: {name}");
        for (k, v) in m.labels.iter().flatten() {
            prop_assert!(
                valid_label_value(v),
                "label {k}={v} is not a valid label value"
            );
        }
        let rname = m.annotations.as_ref().unwrap()[RNAME_ANNOTATION].as_str();
        by_name.entry(name).or_default().insert(rname);
    }
    for (name, rnames) in &by_name {
        prop_assert_eq!(rnames.len(), 1, "{} is the name of {:?}", name, rnames);
    }
    prop_assert_eq!(by_name.len(), policies, "names: {:?}", by_name.keys());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_policy_gets_its_own_valid_names(
        cgu_name in name(),
        policies in proptest::collection::btree_set(name(), 1..=4),
        suffix in prop_oneof![Just(None), Just(Some("kuttl"))],
    ) {
        let policies: Vec<String> = policies.into_iter().collect();
        let snap = snapshot(&policies);
        let all = writes(cgu(&cgu_name, &policies, suffix), &snap);
        let placements: Vec<&ObjectMeta> = all
            .iter()
            .filter_map(|w| match w {
                Write::ApplyPlacement(p) => Some(&p.metadata),
                _ => None,
            })
            .collect();
        let bindings: Vec<&ObjectMeta> = all
            .iter()
            .filter_map(|w| match w {
                Write::ApplyPlacementBinding(b) => Some(&b.metadata),
                _ => None,
            })
            .collect();
        check(&placements, policies.len())?;
        check(&bindings, policies.len())?;
    }
}

/// The reported case: a 225-character CGU name and two policies gave ONE Placement and ONE
/// PlacementBinding.
#[test]
fn long_cgu_name_with_two_policies_gets_two_placements() {
    let cgu_name = format!("{}-x", "a".repeat(223));
    // Policies that differ only after the 240 characters TALM keeps in namespace `default`.
    let policies = vec![
        "common-cluster-version-policy-a".to_string(),
        "common-cluster-version-policy-b".to_string(),
    ];
    let snap = snapshot(&policies);
    let all = writes(cgu(&cgu_name, &policies, None), &snap);
    let names: BTreeSet<String> = all
        .iter()
        .filter_map(|w| match w {
            Write::ApplyPlacement(p) => p.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

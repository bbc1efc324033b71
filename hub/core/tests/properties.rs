//! Property tests of the remediation plan (docs/contract.md §3.3) on random fleets, through the
//! engine's library API.
//!
//! Each case builds a fleet of N ManagedClusters and M root policies (ConfigMap templates, so no
//! update-graph lookups) with random per-cluster compliance, child policies in every cluster
//! namespace, and a not-enabled CGU over a random ordered subset of the clusters with random
//! canaries and `maxConcurrency`. The CGU is reconciled (applying finalizer changes and status)
//! until the engine stops asking for an immediate requeue, then the plan is checked:
//! - every selected cluster that is non-compliant with some policy is in exactly one batch;
//! - compliant and not-matched clusters are in no batch;
//! - non-compliant canaries come first, one per batch, in spec order;
//! - no batch is larger than `computedMaxConcurrency`, which is `maxConcurrency` when
//!   `0 < maxConcurrency < selected`, else the number of selected clusters;
//! - the plan is absent when nothing needs remediation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;
use proptest::sample::subsequence;
use serde_json::{Value, json};
use talm_hub_core::api::cgu::{ClusterGroupUpgrade, FINALIZER};
use talm_hub_core::api::rhacm::{ManagedCluster, Policy};
use talm_hub_core::{Context, FinalizerChange, NoUpdateGraph, Requeue, Snapshot, reconcile};

/// A cluster's entry in a root policy's `status.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Compliant,
    NonCompliant,
    Pending,
    /// An entry without `compliant` (NonCompliant).
    NoField,
    /// No entry (NotMatched).
    Absent,
}

impl Entry {
    fn non_compliant(self) -> bool {
        matches!(self, Entry::NonCompliant | Entry::Pending | Entry::NoField)
    }
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        3 => Just(Entry::Compliant),
        3 => Just(Entry::NonCompliant),
        1 => Just(Entry::Pending),
        1 => Just(Entry::NoField),
        2 => Just(Entry::Absent),
    ]
}

#[derive(Clone, Debug)]
struct Fleet {
    /// Cluster names of the fleet.
    clusters: Vec<String>,
    /// `matrix[p][c]`: cluster c's entry in policy p.
    matrix: Vec<Vec<Entry>>,
    /// The CGU's `spec.clusters`, in order (a permutation of a subset of the fleet).
    selected: Vec<String>,
    /// `spec.remediationStrategy.canaries` (distinct members of `selected`).
    canaries: Vec<String>,
    max_concurrency: i32,
}

fn fleet() -> impl Strategy<Value = Fleet> {
    (1usize..=12, 1usize..=4)
        .prop_flat_map(|(n, m)| {
            let clusters: Vec<String> = (0..n).map(|i| format!("sno-{i:02}")).collect();
            (
                Just(clusters.clone()),
                proptest::collection::vec(proptest::collection::vec(entry(), n), m),
                subsequence(clusters, 1..=n).prop_shuffle(),
                0i32..=(n as i32 + 2),
            )
        })
        .prop_flat_map(|(clusters, matrix, selected, mc)| {
            let k = selected.len();
            (
                Just(clusters),
                Just(matrix),
                Just(selected.clone()),
                subsequence(selected, 0..=k.min(3)).prop_shuffle(),
                Just(mc),
            )
        })
        .prop_map(
            |(clusters, matrix, selected, canaries, max_concurrency)| Fleet {
                clusters,
                matrix,
                selected,
                canaries,
                max_concurrency,
            },
        )
}

fn policy_name(p: usize) -> String {
    format!("policy{p}-site-config")
}

fn templates(name: &str) -> Value {
    json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "ConfigurationPolicy",
        "metadata": {"name": format!("{name}-config")},
        "spec": {"remediationAction": "inform", "object-templates": [{
            "complianceType": "musthave",
            "objectDefinition": {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"}, "data": {"k": "v"}},
        }]},
    }}])
}

fn snapshot(f: &Fleet) -> Snapshot {
    let mut snap = Snapshot::new();
    for c in &f.clusters {
        let mc: ManagedCluster = serde_json::from_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1",
            "kind": "ManagedCluster",
            "metadata": {"name": c, "labels": {"name": c}},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]},
        }))
        .unwrap();
        snap.insert_managed_cluster(mc);
    }
    for (p, row) in f.matrix.iter().enumerate() {
        let name = policy_name(p);
        let status: Vec<Value> = f
            .clusters
            .iter()
            .zip(row)
            .filter_map(|(c, e)| match e {
                Entry::Absent => None,
                Entry::NoField => Some(json!({"clustername": c, "clusternamespace": c})),
                Entry::Compliant => {
                    Some(json!({"clustername": c, "clusternamespace": c, "compliant": "Compliant"}))
                }
                Entry::NonCompliant => Some(
                    json!({"clustername": c, "clusternamespace": c, "compliant": "NonCompliant"}),
                ),
                Entry::Pending => {
                    Some(json!({"clustername": c, "clusternamespace": c, "compliant": "Pending"}))
                }
            })
            .collect();
        let root: Policy = serde_json::from_value(json!({
            "apiVersion": "policy.open-cluster-management.io/v1",
            "kind": "Policy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"remediationAction": "inform", "policy-templates": templates(&name)},
            "status": {"status": status},
        }))
        .unwrap();
        snap.insert_policy(root);
        for c in &f.clusters {
            let child: Policy = serde_json::from_value(json!({
                "apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "Policy",
                "metadata": {
                    "name": format!("default.{name}"),
                    "namespace": c,
                    "labels": {"policy.open-cluster-management.io/root-policy": format!("default.{name}")},
                },
                "spec": {"remediationAction": "inform", "policy-templates": templates(&name)},
            }))
            .unwrap();
            snap.insert_policy(child);
        }
    }
    snap
}

fn cgu(f: &Fleet) -> ClusterGroupUpgrade {
    let policies: Vec<String> = (0..f.matrix.len()).map(policy_name).collect();
    serde_json::from_value(json!({
        "apiVersion": "ran.openshift.io/v1alpha1",
        "kind": "ClusterGroupUpgrade",
        "metadata": {
            "name": "cgu-prop",
            "namespace": "default",
            "uid": "6f1c2a4e-0000-4000-8000-000000000001",
            "annotations": {"cluster-group-upgrades-operator/name-suffix": "prop"},
        },
        "spec": {
            "clusters": f.selected,
            "managedPolicies": policies,
            "remediationStrategy": {"maxConcurrency": f.max_concurrency, "canaries": f.canaries},
            "enable": false,
        },
    }))
    .unwrap()
}

/// Reconciles until the engine no longer asks for an immediate requeue.
fn settle(mut cgu: ClusterGroupUpgrade, snap: &Snapshot) -> ClusterGroupUpgrade {
    let now: Timestamp = "2026-03-02T10:00:00Z".parse().unwrap();
    let ctx = Context {
        now,
        graph: &NoUpdateGraph,
    };
    for _ in 0..20 {
        let d = reconcile(&cgu, snap, &ctx);
        match d.finalizer {
            FinalizerChange::Add => cgu
                .metadata
                .finalizers
                .get_or_insert_with(Vec::new)
                .push(FINALIZER.to_string()),
            FinalizerChange::Remove => {
                if let Some(f) = cgu.metadata.finalizers.as_mut() {
                    f.retain(|x| x != FINALIZER);
                }
            }
            FinalizerChange::None => {}
        }
        cgu.status = Some(d.status);
        if d.requeue != Requeue::Immediately {
            return cgu;
        }
    }
    panic!("the engine kept requeueing immediately: {:#?}", cgu.status);
}

fn conditions(c: &ClusterGroupUpgrade) -> Vec<(String, String, String)> {
    c.status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn remediation_plan_invariants(f in fleet()) {
        let snap = snapshot(&f);
        let out = settle(cgu(&f), &snap);
        let status = out.status.clone().unwrap_or_default();

        // The CGU validated and stopped at "not enabled".
        let conds = conditions(&out);
        prop_assert!(
            conds.iter().any(|(t, s, r)| t == "Validated" && s == "True" && r == "ValidationCompleted"),
            "not validated: {conds:?}"
        );
        prop_assert!(
            conds.iter().any(|(t, s, r)| t == "Progressing" && s == "False" && r == "NotEnabled"),
            "not at NotEnabled: {conds:?}"
        );

        let idx: BTreeMap<&str, usize> =
            f.clusters.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let non_compliant: BTreeSet<&str> = f
            .selected
            .iter()
            .map(String::as_str)
            .filter(|c| f.matrix.iter().any(|row| row[idx[c]].non_compliant()))
            .collect();

        let n = f.selected.len() as i32;
        let expected_cmc = if f.max_concurrency > 0 && f.max_concurrency < n {
            f.max_concurrency
        } else {
            n
        };
        prop_assert_eq!(status.computed_max_concurrency, Some(expected_cmc));

        let plan = status.remediation_plan.clone().unwrap_or_default();
        if non_compliant.is_empty() {
            prop_assert!(
                status.remediation_plan.as_ref().is_none_or(|p| p.is_empty()),
                "no plan when nothing needs remediation: {:?}", status.remediation_plan
            );
        }

        // Every non-compliant selected cluster exactly once; nobody else.
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for b in &plan {
            prop_assert!(!b.is_empty(), "empty batch in {plan:?}");
            prop_assert!(
                b.len() as i32 <= expected_cmc,
                "batch {b:?} larger than computedMaxConcurrency {expected_cmc}"
            );
            for c in b {
                *seen.entry(c.as_str()).or_default() += 1;
            }
        }
        for c in &non_compliant {
            prop_assert_eq!(seen.get(c).copied(), Some(1), "{} in plan {:?}", c, plan);
        }
        for c in seen.keys() {
            prop_assert!(
                non_compliant.contains(c),
                "{c} is compliant or not matched everywhere but in plan {plan:?}"
            );
        }

        // Non-compliant canaries first, one per batch, in spec order.
        let nc_canaries: Vec<&str> = f
            .canaries
            .iter()
            .map(String::as_str)
            .filter(|c| non_compliant.contains(c))
            .collect();
        for (i, c) in nc_canaries.iter().enumerate() {
            prop_assert_eq!(&plan[i], &vec![c.to_string()], "canary batch {} of {:?}", i, plan);
        }
        // Normal batches are full except the last one (compliant clusters use no slot).
        let normal = &plan[nc_canaries.len()..];
        for (i, b) in normal.iter().enumerate() {
            if i + 1 < normal.len() {
                prop_assert_eq!(b.len() as i32, expected_cmc, "batch {:?} of {:?} not full", b, plan);
            }
        }
        // The other batches keep the selection order.
        let rest: Vec<&str> = plan[nc_canaries.len()..]
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let expected_rest: Vec<&str> = f
            .selected
            .iter()
            .map(String::as_str)
            .filter(|c| non_compliant.contains(c) && !nc_canaries.contains(c))
            .collect();
        prop_assert_eq!(rest, expected_rest);
    }
}

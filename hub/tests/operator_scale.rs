//! A fleet-scale run of the operator against the API double (a small preview of issue 6's
//! benchmark): N ManagedClusters × P inform policies, one CGU with `maxConcurrency` M, and a
//! fleet simulator that turns a cluster Compliant on a policy as soon as a Placement releases
//! it. Reports API requests per cluster, reconciles, and the wall time to `Succeeded`.
//!
//! Ignored by default (it is a measurement, not a check of behaviour):
//! `cargo test -p talm-hub --test operator_scale -- --ignored --nocapture`
//! (`TALM_SCALE_CLUSTERS`, `TALM_SCALE_POLICIES`, `TALM_SCALE_CONCURRENCY` override the size).

// Test helpers may unwrap: a panic there is a test failure with a backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use talm_hub::operator::{Config, ManualClock, Operator};
use talm_kube_double::{KubeDouble, Verb};
use tokio::sync::watch;

const NS: &str = "ztp";
const CGU: &str = "fleet";

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cluster(i: usize) -> String {
    format!("sno{i:05}")
}

fn policy(j: usize) -> String {
    format!("du-policy-{j:02}")
}

fn root(j: usize, compliance: &BTreeMap<String, &str>) -> Value {
    let status: Vec<Value> = compliance
        .iter()
        .map(|(c, s)| json!({"clustername": c, "clusternamespace": c, "compliant": s}))
        .collect();
    json!({
        "apiVersion": "policy.open-cluster-management.io/v1",
        "kind": "Policy",
        "metadata": {"name": policy(j), "namespace": NS},
        "spec": {"remediationAction": "inform", "disabled": false, "policy-templates": [{
            "objectDefinition": {"apiVersion": "policy.open-cluster-management.io/v1",
                "kind": "ConfigurationPolicy", "metadata": {"name": format!("cfg-{j}")},
                "spec": {"remediationAction": "inform", "object-templates": []}}}]},
        "status": {"compliant": "NonCompliant", "status": status}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --ignored --nocapture"]
async fn fleet_rollout_request_budget() {
    let n = size("TALM_SCALE_CLUSTERS", 1000);
    let p = size("TALM_SCALE_POLICIES", 5);
    let m = size("TALM_SCALE_CONCURRENCY", 100);
    let double = KubeDouble::start().await.unwrap();
    let clusters: Vec<String> = (0..n).map(cluster).collect();
    for c in &clusters {
        double
            .put_value(json!({
                "apiVersion": "cluster.open-cluster-management.io/v1",
                "kind": "ManagedCluster",
                "metadata": {"name": c, "labels": {"name": c}},
                "status": {"conditions": [{"type": "ManagedClusterConditionAvailable",
                    "status": "True", "reason": "Available", "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap();
    }
    let mut compliance: Vec<BTreeMap<String, &str>> = Vec::new();
    for j in 0..p {
        let matrix: BTreeMap<String, &str> = clusters
            .iter()
            .map(|c| (c.clone(), "NonCompliant"))
            .collect();
        double.put_value(root(j, &matrix)).unwrap();
        for c in &clusters {
            double
                .put_value(json!({
                    "apiVersion": "policy.open-cluster-management.io/v1",
                    "kind": "Policy",
                    "metadata": {"name": format!("{NS}.{}", policy(j)), "namespace": c,
                        "labels": {"policy.open-cluster-management.io/root-policy":
                                   format!("{NS}.{}", policy(j))}},
                    "spec": {"remediationAction": "inform", "policy-templates": []}
                }))
                .unwrap();
        }
        compliance.push(matrix);
    }
    double
        .put_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1",
            "kind": "ClusterGroupUpgrade",
            "metadata": {"name": CGU, "namespace": NS},
            "spec": {"clusters": clusters, "managedPolicies": (0..p).map(policy).collect::<Vec<_>>(),
                     "remediationStrategy": {"maxConcurrency": m, "timeout": 100000},
                     "enable": true}
        }))
        .unwrap();
    double.clear_requests();

    let clock = Arc::new(ManualClock::new("2026-03-02T10:00:00Z".parse().unwrap()));
    let op = Operator::new(double.client(), clock, Config::default());
    let shared = op.shared();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(op.run(async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    let started = Instant::now();

    // The fleet simulator: a released cluster becomes Compliant on that policy.
    let mut done: Vec<HashSet<String>> = vec![HashSet::new(); p];
    // Reaction: from a compliance flip to the next Placement release (10 ms poll resolution).
    let mut flipped_at: Option<Instant> = None;
    let mut reactions: Vec<Duration> = Vec::new();
    let deadline = started + Duration::from_secs(900);
    loop {
        let cgu = double
            .get_value(
                "ran.openshift.io/v1alpha1",
                "ClusterGroupUpgrade",
                Some(NS),
                CGU,
            )
            .unwrap();
        let succeeded = cgu["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Succeeded" && c["status"] == "True");
        if succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no success: {:#}",
            cgu["status"]["conditions"]
        );
        let mut flipped = false;
        for pl in double.list_values(
            "cluster.open-cluster-management.io/v1beta1",
            "Placement",
            Some(NS),
        ) {
            let Some(j) = (0..p).find(|j| {
                pl["metadata"]["labels"]["openshift-cluster-group-upgrades/forPolicy"] == policy(*j)
            }) else {
                continue;
            };
            let released: BTreeSet<String> = pl["spec"]["predicates"][0]["requiredClusterSelector"]
                ["labelSelector"]["matchExpressions"][0]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let fresh: Vec<String> = released
                .difference(&done[j].iter().cloned().collect())
                .cloned()
                .collect();
            if fresh.is_empty() {
                continue;
            }
            if let Some(t) = flipped_at.take() {
                reactions.push(t.elapsed());
            }
            flipped = true;
            for c in &fresh {
                compliance[j].insert(c.clone(), "Compliant");
                done[j].insert(c.clone());
            }
            double.put_value(root(j, &compliance[j])).unwrap();
        }
        if flipped {
            flipped_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reactions.sort();
    let pct = |q: f64| {
        reactions
            .get(((reactions.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let elapsed = started.elapsed();
    let reqs = double.requests();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in reqs
        .iter()
        .filter(|r| r.verb != Verb::Watch && r.verb != Verb::Discovery)
    {
        *by.entry(format!("{} {}", r.verb.as_str(), r.rbac_resource()))
            .or_default() += 1;
    }
    let total: usize = by.values().sum();
    let watches = reqs.iter().filter(|r| r.verb == Verb::Watch).count();
    let runs = shared.metrics.reconcile_runs.get();
    eprintln!(
        "fleet: {n} clusters × {p} policies, maxConcurrency {m}: Succeeded in {elapsed:.1?}, \
         {runs} reconciles, {total} API requests ({:.2} per cluster; {watches} watch requests)",
        total as f64 / n as f64
    );
    eprintln!(
        "  reaction (compliance flip → next Placement release), {} samples: p50 {:?}, p99 {:?}, max {:?}",
        reactions.len(),
        pct(0.5),
        pct(0.99),
        reactions.last().copied().unwrap_or_default()
    );
    for (k, v) in &by {
        eprintln!("  {v:>7}  {k}");
    }
    // Lists happen at startup only (one per kind, paginated by 500), never per reconcile.
    let lists: usize = by
        .iter()
        .filter(|(k, _)| k.starts_with("list "))
        .map(|(_, v)| v)
        .sum();
    assert!(lists <= 8 + (n * (p + 1)) / 500 + 1, "lists: {by:?}");
    let _ = stop.send(true);
    task.await.unwrap().unwrap();
    double.shutdown().await;
}

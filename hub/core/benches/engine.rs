//! Engine decision-time benchmark: one reconcile of a CGU in the middle of a rollout, at 1,000
//! and at 10,000 clusters × 20 policies, plus the plan-building (not started → started) pass.
//!
//! Run: `cargo bench -p talm-hub-core --bench engine` (add `-- --quick` for fewer rounds).
//! Prints per-scenario min/median/p95 in milliseconds and the 10k/1k ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use talm_hub_core::api::cgu::{
    ClusterGroupUpgrade, ClusterGroupUpgradeStatus, ClusterRemediationProgress, ClusterState,
    FINALIZER, ManagedPolicyForUpgrade, UpgradeStatus,
};
use talm_hub_core::api::rhacm::{ManagedCluster, Policy};
use talm_hub_core::api::{Condition, Time};
use talm_hub_core::{Context, NoUpdateGraph, Snapshot, reconcile};

const POLICIES: usize = 20;
const BATCH: usize = 100;

fn t0() -> Timestamp {
    Timestamp::from_second(1_790_000_000).unwrap()
}

fn cluster(i: usize) -> String {
    format!("sno-{i:05}")
}

fn template(p: usize) -> Value {
    json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1", "kind": "ConfigurationPolicy",
        "metadata": {"name": format!("cfg-{p}")},
        "spec": {"object-templates": [{"complianceType": "musthave", "objectDefinition": {
            "apiVersion": "operators.coreos.com/v1alpha1", "kind": "Subscription",
            "metadata": {"name": format!("op-{p}"), "namespace": format!("openshift-op-{p}")},
            "spec": {"name": format!("op-{p}"), "channel": "stable"}}}]}
    }}])
}

/// A fleet of `n` SNOs and 20 policies. Clusters in batches before `done_batches` are compliant
/// with everything; the others are non-compliant from policy `i % 20` on.
fn fleet(n: usize, done_batches: usize, with_children: bool) -> Snapshot {
    let mut s = Snapshot::new();
    for i in 0..n {
        let name = cluster(i);
        let mc: ManagedCluster = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"name": name, "du-profile": "v4"}},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
        }))
        .unwrap();
        s.insert_managed_cluster(mc);
    }
    for p in 0..POLICIES {
        let status: Vec<Value> = (0..n)
            .map(|i| {
                let compliant = i < done_batches * BATCH || p < i % POLICIES;
                json!({"clustername": cluster(i), "clusternamespace": cluster(i),
                       "compliant": if compliant { "Compliant" } else { "NonCompliant" }})
            })
            .collect();
        let root: Policy = serde_json::from_value(json!({
            "metadata": {"name": format!("policy-{p:02}"), "namespace": "ztp-common"},
            "spec": {"remediationAction": "inform", "policy-templates": template(p)},
            "status": {"status": status}
        }))
        .unwrap();
        s.insert_policy(root);
        if with_children {
            for i in 0..n {
                let child: Policy = serde_json::from_value(json!({
                    "metadata": {"name": format!("ztp-common.policy-{p:02}"), "namespace": cluster(i),
                        "labels": {"policy.open-cluster-management.io/root-policy": format!("ztp-common.policy-{p:02}")}},
                    "spec": {"remediationAction": "inform", "policy-templates": template(p)}
                }))
                .unwrap();
                s.insert_policy(child);
            }
        }
    }
    s
}

fn base_cgu(n: usize, enabled: bool) -> ClusterGroupUpgrade {
    serde_json::from_value(json!({
        "metadata": {"name": "fleet-upgrade", "namespace": "ztp-install", "uid": "0b7c",
            "finalizers": [FINALIZER],
            "annotations": {"cluster-group-upgrades-operator/name-suffix": "bench"}},
        "spec": {
            "clusters": (0..n).map(cluster).collect::<Vec<_>>(),
            "managedPolicies": (0..POLICIES).map(|p| format!("policy-{p:02}")).collect::<Vec<_>>(),
            "remediationStrategy": {"maxConcurrency": BATCH, "timeout": 2400},
            "enable": enabled
        }
    }))
    .unwrap()
}

fn cond(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: Time(t0()),
        observed_generation: None,
    }
}

/// The CGU in the middle of the rollout: batch `current` (1-based) running, the earlier ones done.
fn mid_rollout(n: usize) -> (ClusterGroupUpgrade, usize) {
    let mut cgu = base_cgu(n, true);
    let plan: Vec<Vec<String>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| c.iter().map(|i| cluster(*i)).collect())
        .collect();
    let current = plan.len() / 2 + 1;
    let progress: BTreeMap<String, ClusterRemediationProgress> = plan[current - 1]
        .iter()
        .enumerate()
        .map(|(k, c)| {
            (
                c.clone(),
                ClusterRemediationProgress {
                    state: "InProgress".into(),
                    policy_index: Some((k % POLICIES) as i32),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut safe = BTreeMap::new();
    for p in 0..POLICIES {
        let desired = format!("fleet-upgrade-policy-{p:02}-placement");
        safe.insert(format!("ztp-common/{desired}"), format!("{desired}-bench"));
    }
    cgu.status = Some(ClusterGroupUpgradeStatus {
        conditions: vec![
            cond("ClustersSelected", "True", "ClusterSelectionCompleted"),
            cond("Validated", "True", "ValidationCompleted"),
            cond("Progressing", "True", "InProgress"),
        ],
        computed_max_concurrency: Some(BATCH as i32),
        remediation_plan: Some(plan.clone()),
        managed_policies_for_upgrade: Some(
            (0..POLICIES)
                .map(|p| ManagedPolicyForUpgrade {
                    name: format!("policy-{p:02}"),
                    namespace: "ztp-common".into(),
                })
                .collect(),
        ),
        safe_resource_names: Some(safe),
        clusters: Some(
            plan[..current - 1]
                .iter()
                .flatten()
                .map(|c| ClusterState {
                    name: c.clone(),
                    state: "complete".into(),
                    ..Default::default()
                })
                .collect(),
        ),
        status: Some(UpgradeStatus {
            started_at: Some(Time(t0())),
            current_batch: Some(current as i32),
            current_batch_started_at: Some(Time(t0() + SignedDuration::from_mins(60))),
            current_batch_remediation_progress: Some(progress),
            ..Default::default()
        }),
        ..Default::default()
    });
    (cgu, current - 1)
}

/// The CGU about to start one batch holding every cluster (`maxConcurrency: 0`): the reconcile
/// initialises the batch and releases all N clusters into the Placements.
fn one_big_batch(n: usize) -> ClusterGroupUpgrade {
    let (mut cgu, _) = mid_rollout(n);
    let st = cgu.status.as_mut().unwrap();
    st.remediation_plan = Some(vec![(0..n).map(cluster).collect()]);
    st.computed_max_concurrency = Some(n as i32);
    st.clusters = None;
    let us = st.status.as_mut().unwrap();
    us.current_batch = Some(1);
    us.current_batch_started_at = None;
    us.current_batch_remediation_progress = None;
    cgu
}

struct Stats {
    min: Duration,
    median: Duration,
    p95: Duration,
}

fn measure(rounds: usize, mut f: impl FnMut()) -> Stats {
    f(); // warm-up
    let mut v: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    Stats {
        min: v[0],
        median: v[v.len() / 2],
        p95: v[(v.len() * 95 / 100).min(v.len() - 1)],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Applies a first reconcile's Placement/PlacementBinding writes, so measured reconciles see
/// the steady state of a running batch (every released cluster already in its Placement).
fn settle(cgu: &ClusterGroupUpgrade, snap: &mut Snapshot, ctx: &Context<'_>) {
    let d = reconcile(cgu, snap, ctx);
    for w in d.writes {
        match w {
            talm_hub_core::Write::ApplyPlacement(p) => snap.insert_placement(p),
            talm_hub_core::Write::ApplyPlacementBinding(b) => snap.insert_placement_binding(b),
            _ => {}
        }
    }
}

/// One reconcile and the drop of its decision, in a function of its own so that callgrind can
/// count both (`--toggle-collect='engine::reconcile_and_drop*'`); toggling on
/// `talm_hub_core::reconcile::reconcile*` alone leaves out freeing the decision (the status
/// copy it returns), which the caller pays too.
#[inline(never)]
fn reconcile_and_drop(cgu: &ClusterGroupUpgrade, snap: &Snapshot, ctx: &Context<'_>) {
    let d = reconcile(black_box(cgu), black_box(snap), ctx);
    assert!(d.writes.is_empty(), "steady state expected");
    drop(black_box(d));
}

/// `--once N [K]`: build the mid-rollout fleet of N clusters, settle it, and run K reconciles, for
/// instruction counting under `valgrind --tool=callgrind --toggle-collect=...` (see
/// [`reconcile_and_drop`] for the two functions to toggle on).
fn once(n: usize, repeat: usize) {
    let (cgu, done) = mid_rollout(n);
    let mut snap = fleet(n, done, false);
    let ctx = Context {
        now: t0() + SignedDuration::from_mins(70),
        graph: &NoUpdateGraph,
    };
    settle(&cgu, &mut snap, &ctx);
    for _ in 0..repeat {
        reconcile_and_drop(&cgu, &snap, &ctx);
    }
    println!("n={n}: settled, then {repeat} reconciles");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--once") {
        let n = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let repeat = args.get(i + 2).and_then(|s| s.parse().ok()).unwrap_or(1);
        once(n, repeat);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 10 } else { 60 };
    let now = t0() + SignedDuration::from_mins(70);
    let ctx = Context {
        now,
        graph: &NoUpdateGraph,
    };

    println!(
        "engine decision time, {POLICIES} policies, batches of {BATCH} ({rounds} rounds, median)"
    );
    let mut mid = BTreeMap::new();
    for n in [1_000usize, 10_000] {
        let (cgu, done) = mid_rollout(n);
        let mut snap = fleet(n, done, false);
        settle(&cgu, &mut snap, &ctx);
        let s = measure(rounds, || {
            black_box(reconcile(black_box(&cgu), black_box(&snap), &ctx));
        });
        println!(
            "  mid-rollout reconcile   n={n:>6}: min {:>8.3} ms  median {:>8.3} ms  p95 {:>8.3} ms",
            ms(s.min),
            ms(s.median),
            ms(s.p95)
        );
        mid.insert(n, s.median);
        let b = measure(rounds, || {
            black_box(black_box(&cgu).status.clone());
        });
        println!(
            "  baseline: status clone  n={n:>6}: min {:>8.3} ms  median {:>8.3} ms  p95 {:>8.3} ms",
            ms(b.min),
            ms(b.median),
            ms(b.p95)
        );
    }
    let mut big = BTreeMap::new();
    for n in [1_000usize, 10_000] {
        let cgu = one_big_batch(n);
        let snap = fleet(n, 0, false);
        let s = measure(rounds.min(20), || {
            black_box(reconcile(black_box(&cgu), black_box(&snap), &ctx));
        });
        println!(
            "  one-batch start (release all) n={n:>6}: min {:>8.3} ms  median {:>8.3} ms  p95 {:>8.3} ms",
            ms(s.min),
            ms(s.median),
            ms(s.p95)
        );
        big.insert(n, s.median);
    }
    let mut start = BTreeMap::new();
    for n in [1_000usize, 10_000] {
        let mut cgu = base_cgu(n, true);
        cgu.status = Some(ClusterGroupUpgradeStatus::default());
        let snap = fleet(n, 0, true);
        let s = measure(rounds.min(20), || {
            black_box(reconcile(black_box(&cgu), black_box(&snap), &ctx));
        });
        println!(
            "  plan + start reconcile  n={n:>6}: min {:>8.3} ms  median {:>8.3} ms  p95 {:>8.3} ms",
            ms(s.min),
            ms(s.median),
            ms(s.p95)
        );
        start.insert(n, s.median);
    }
    let ratio = |m: &BTreeMap<usize, Duration>| m[&10_000].as_secs_f64() / m[&1_000].as_secs_f64();
    println!(
        "  ratio 10k/1k: mid-rollout {:.2}x, one-batch start {:.2}x, plan+start {:.2}x",
        ratio(&mid),
        ratio(&big),
        ratio(&start)
    );
}

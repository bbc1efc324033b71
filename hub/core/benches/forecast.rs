//! Forecast accuracy benchmark (issue 16 §4): steps a simulated fleet through the engine and
//! compares the forecast's predicted completion with the actual one.
//!
//! The fleet: 1,000 clusters, `maxConcurrency: 50` (20 batches), 3 managed policies. Each
//! cluster's time to compliance per policy is log-normal (medians 12, 25 and 8 min, σ 0.5) and
//! 2% of (cluster, policy) pairs are stragglers taking 6 times as long. No prior: the forecast
//! learns only from the CGU's own clusters. The simulation plays the policy framework: a
//! cluster released into a policy turns compliant after its drawn time; the engine
//! (`talm_hub_core::reconcile`) runs at every such instant, exactly as the operator reacts to a
//! compliance change. When batch 3, 6 and 11 start (10%, 25%, 50% of the batches done), it
//! records `status.forecast.completion`; at the end it compares with the time the CGU
//! succeeded. Ten fleets (seeds) are run. The error is given two ways: against the time that
//! was left when the prediction was made (strict), and against the whole rollout's duration.
//!
//! The oracle line predicts with the true distribution (the expected slowest-of-50, by Monte
//! Carlo): its error is what the fleet's own randomness leaves to any predictor.
//!
//! It also prints the size of `status.forecast` (JSON) at 10,000 clusters × 20 policies,
//! 20 batches, with every cluster observed on every policy.
//!
//! And the wall-clock time of one projection (`forecast::project`, which every in-progress
//! reconcile runs) at 10,000 clusters x 20 policies in 100 batches.
//!
//! Run: `cargo bench -p talm-hub-core --bench forecast`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use talm_hub_core::api::cgu::{ClusterGroupUpgrade, FINALIZER};
use talm_hub_core::api::rhacm::{ManagedCluster, Policy};
use talm_hub_core::forecast::{self, Model, PlannedBatch, Rollout};
use talm_hub_core::{Context, NoUpdateGraph, Requeue, Snapshot, reconcile};

const CLUSTERS: usize = 1000;
const BATCH: usize = 50;
const POLICIES: usize = 3;
const MEDIAN_MINS: [f64; POLICIES] = [12.0, 25.0, 8.0];
const SIGMA: f64 = 0.5;
const STRAGGLER_P: f64 = 0.02;
const STRAGGLER_X: f64 = 6.0;
const SEEDS: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
/// Batches done when a prediction is recorded: 10%, 25%, 50% of 20.
const CHECKPOINTS: [usize; 3] = [2, 5, 10];

/// The simulated fleet's draws: the engine's own splitmix64 sequence, seeded per fleet.
struct Rng(forecast::SplitMix);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(forecast::SplitMix(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next()
    }
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// One (cluster, policy) time to compliance, in whole seconds (at least 1).
    fn duration(&mut self, policy: usize) -> i64 {
        let mut mins = MEDIAN_MINS[policy] * (SIGMA * self.normal()).exp();
        if self.unit() < STRAGGLER_P {
            mins *= STRAGGLER_X;
        }
        ((mins * 60.0).round() as i64).max(1)
    }
}

fn t0() -> Timestamp {
    "2026-03-02T00:00:00Z".parse().unwrap()
}

fn cluster(i: usize) -> String {
    format!("sno-{i:05}")
}

fn policy_name(p: usize) -> String {
    format!("policy-{p}")
}

fn root_policy(p: usize, compliant: &[bool]) -> Policy {
    let status: Vec<Value> = compliant
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"clustername": cluster(i), "clusternamespace": cluster(i),
                "compliant": if *c { "Compliant" } else { "NonCompliant" }})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": policy_name(p), "namespace": "ztp-common"},
        "spec": {"remediationAction": "inform", "policy-templates": []},
        "status": {"status": status}
    }))
    .unwrap()
}

fn fleet() -> Snapshot {
    let mut s = Snapshot::new();
    for i in 0..CLUSTERS {
        let name = cluster(i);
        let mc: ManagedCluster = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"name": name}},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
        }))
        .unwrap();
        s.insert_managed_cluster(mc);
    }
    for p in 0..POLICIES {
        s.insert_policy(root_policy(p, &[false; CLUSTERS]));
        for i in 0..CLUSTERS {
            let child: Policy = serde_json::from_value(json!({
                "metadata": {"name": format!("ztp-common.{}", policy_name(p)), "namespace": cluster(i),
                    "labels": {"policy.open-cluster-management.io/root-policy": format!("ztp-common.{}", policy_name(p))}},
                "spec": {"remediationAction": "inform", "policy-templates": []}
            }))
            .unwrap();
            s.insert_policy(child);
        }
    }
    s
}

fn cgu() -> ClusterGroupUpgrade {
    serde_json::from_value(json!({
        "metadata": {"name": "fleet", "namespace": "ztp-install", "uid": "f0",
            "finalizers": [FINALIZER],
            "annotations": {"cluster-group-upgrades-operator/name-suffix": "bench"}},
        "spec": {
            "clusters": (0..CLUSTERS).map(cluster).collect::<Vec<_>>(),
            "managedPolicies": (0..POLICIES).map(policy_name).collect::<Vec<_>>(),
            "remediationStrategy": {"maxConcurrency": BATCH, "timeout": 100_000},
        }
    }))
    .unwrap()
}

struct Prediction {
    batches_done: usize,
    at: Timestamp,
    p50: Timestamp,
    p90: Timestamp,
}

struct Outcome {
    predictions: Vec<Prediction>,
    finished: Timestamp,
}

fn simulate(seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let durations: Vec<[i64; POLICIES]> = (0..CLUSTERS)
        .map(|_| std::array::from_fn(|p| rng.duration(p)))
        .collect();
    let mut compliant = vec![vec![false; CLUSTERS]; POLICIES];
    let mut snap = fleet();
    let mut cgu = cgu();
    let index: std::collections::HashMap<String, usize> =
        (0..CLUSTERS).map(|i| (cluster(i), i)).collect();
    let mut now = t0();
    let mut predictions = Vec::new();
    loop {
        // The engine to a fixed point at `now`.
        for _ in 0..100 {
            snap.insert_cgu(cgu.clone());
            let d = reconcile(
                &cgu,
                &snap,
                &Context {
                    now,
                    graph: &NoUpdateGraph,
                },
            );
            cgu.status = Some(d.status);
            if d.requeue != Requeue::Immediately {
                break;
            }
        }
        let st = cgu.status.as_ref().unwrap();
        if st
            .conditions
            .iter()
            .any(|c| c.type_ == "Succeeded" && c.status == "True")
        {
            return Outcome {
                predictions,
                finished: now,
            };
        }
        let us = st.status.as_ref().unwrap();
        let done = usize::try_from(us.current_batch.unwrap_or(1) - 1).unwrap();
        if CHECKPOINTS.contains(&done)
            && !predictions
                .iter()
                .any(|p: &Prediction| p.batches_done == done)
        {
            let f = st.forecast.as_ref().unwrap();
            predictions.push(Prediction {
                batches_done: done,
                at: now,
                p50: f.completion.as_ref().expect("a completion estimate").0,
                p90: f.completion_p90.as_ref().unwrap().0,
            });
        }
        // The next compliance change: the earliest release + drawn time in the batch.
        let policies = st.managed_policies_for_upgrade.as_ref().unwrap();
        let mut next: Option<(Timestamp, usize, usize)> = None;
        for (c, p) in us.current_batch_remediation_progress.as_ref().unwrap() {
            if p.state != "InProgress" {
                continue;
            }
            let (Some(pi), Some(rel)) = (p.policy_index, p.released_at.as_ref()) else {
                continue;
            };
            let pi = usize::try_from(pi).unwrap();
            let pol: usize = policies[pi].name["policy-".len()..].parse().unwrap();
            let ci = index[c];
            let at = rel.0 + SignedDuration::from_secs(durations[ci][pol]);
            if next.is_none_or(|(t, _, _)| at < t) {
                next = Some((at, ci, pol));
            }
        }
        let (at, _, _) = next.expect("a cluster in progress");
        now = at.max(now + SignedDuration::from_secs(1));
        // Every change due by `now`.
        let mut changed = [false; POLICIES];
        for (c, p) in us.current_batch_remediation_progress.as_ref().unwrap() {
            let (Some(pi), Some(rel)) = (p.policy_index, p.released_at.as_ref()) else {
                continue;
            };
            let pol: usize = policies[usize::try_from(pi).unwrap()].name["policy-".len()..]
                .parse()
                .unwrap();
            let ci = index[c];
            if rel.0 + SignedDuration::from_secs(durations[ci][pol]) <= now {
                compliant[pol][ci] = true;
                changed[pol] = true;
            }
        }
        for p in 0..POLICIES {
            if changed[p] {
                snap.insert_policy(root_policy(p, &compliant[p]));
            }
        }
    }
}

/// The oracle: the expected duration of one batch under the true distribution (Monte Carlo,
/// 20,000 batches), so `now + batches left × it` is the best prediction any learner can make.
/// Its error is the noise floor of the fleet itself.
fn oracle_batch_secs() -> f64 {
    let mut rng = Rng::new(0xfeed);
    let rounds = 20_000;
    let mut total = 0.0;
    for _ in 0..rounds {
        let mut slowest = 0i64;
        for _ in 0..BATCH {
            let t: i64 = (0..POLICIES).map(|p| rng.duration(p)).sum();
            slowest = slowest.max(t);
        }
        total += slowest as f64;
    }
    total / f64::from(rounds)
}

/// A model that has seen 10,000 clusters on each of 20 policies.
fn model_at_10k() -> Model {
    let mut rng = Rng::new(42);
    let mut model = Model::new((0..20).map(|p| (format!("ztp-policy-{p:02}"), None)), None);
    for _ in 0..10_000 {
        for p in 0..20 {
            let d = rng.duration(p % POLICIES);
            model.observe(p, SignedDuration::from_secs(d));
        }
    }
    model
}

fn rollout_at_10k(batches: usize) -> Rollout<'static> {
    Rollout {
        now: t0(),
        plan_len: batches,
        batches: (1..=batches)
            .map(|i| PlannedBatch {
                index: i,
                clusters: 10_000 / batches,
                needed: (0..20).collect(),
            })
            .collect(),
        current_started: None,
        timeout_minutes: 100_000,
        clock_start: t0(),
        schedule: None,
    }
}

fn status_size_at_10k() -> usize {
    let f = forecast::project(&model_at_10k(), &rollout_at_10k(20));
    serde_json::to_vec(&f).unwrap().len()
}

/// Wall-clock time of one projection at 10,000 clusters x 20 policies in 100 batches of 100
/// (the engine's benchmark fleet), every policy learned: min and median of 30.
fn projection_time() -> (f64, f64) {
    let model = model_at_10k();
    let r = rollout_at_10k(100);
    let mut ms: Vec<f64> = (0..30)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(forecast::project(&model, &r));
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2])
}

fn main() {
    println!(
        "forecast accuracy: {CLUSTERS} clusters, {} batches of {BATCH}, {POLICIES} policies, log-normal σ {SIGMA}, {}% stragglers ×{STRAGGLER_X}",
        CLUSTERS / BATCH,
        STRAGGLER_P * 100.0
    );
    println!("error = (predicted − actual completion) / (actual completion − time of prediction)");
    println!("  (\"of the whole rollout\": divided by the actual rollout duration instead)");
    let oracle = oracle_batch_secs();
    let mut by_checkpoint: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); CHECKPOINTS.len()];
    for seed in SEEDS {
        let out = simulate(seed);
        let total = out.finished.duration_since(t0());
        print!("seed {seed}: actual {:.1} h;", total.as_secs_f64() / 3600.0);
        for p in &out.predictions {
            let left = out.finished.duration_since(p.at).as_secs_f64();
            let e50 = p.p50.duration_since(out.finished).as_secs_f64() / left;
            let e90 = p.p90.duration_since(out.finished).as_secs_f64() / left;
            let k = CHECKPOINTS
                .iter()
                .position(|c| *c == p.batches_done)
                .unwrap();
            let of_total = p.p50.duration_since(out.finished).as_secs_f64() / total.as_secs_f64();
            let batches_left = (CLUSTERS / BATCH - p.batches_done) as f64;
            let oracle_end = oracle * batches_left;
            let e_oracle = (oracle_end - left) / left;
            by_checkpoint[k].push((e50, e90, of_total, e_oracle));
            print!(
                "  after {:>2}%: expected {:+.1}%, p90 {:+.1}%",
                p.batches_done * 100 / (CLUSTERS / BATCH),
                e50 * 100.0,
                e90 * 100.0
            );
        }
        println!();
    }
    for (k, errs) in by_checkpoint.iter().enumerate() {
        let mean_abs = errs.iter().map(|e| e.0.abs()).sum::<f64>() / errs.len() as f64;
        let max_abs = errs.iter().map(|e| e.0.abs()).fold(0.0, f64::max);
        let late = errs.iter().filter(|e| e.1 < 0.0).count();
        let total_mean = errs.iter().map(|e| e.2.abs()).sum::<f64>() / errs.len() as f64;
        let total_max = errs.iter().map(|e| e.2.abs()).fold(0.0, f64::max);
        let oracle_mean = errs.iter().map(|e| e.3.abs()).sum::<f64>() / errs.len() as f64;
        let oracle_max = errs.iter().map(|e| e.3.abs()).fold(0.0, f64::max);
        println!(
            "after {:>2}% of the batches: expected-completion error of the time left mean |{:.1}%|, max |{:.1}%| (oracle: mean |{:.1}%|, max |{:.1}%|); of the whole rollout mean |{:.1}%|, max |{:.1}%|; actual later than p90 in {late} of {}",
            CHECKPOINTS[k] * 100 / (CLUSTERS / BATCH),
            mean_abs * 100.0,
            max_abs * 100.0,
            oracle_mean * 100.0,
            oracle_max * 100.0,
            total_mean * 100.0,
            total_max * 100.0,
            errs.len()
        );
    }
    let (min, median) = projection_time();
    println!(
        "one projection, 10,000 clusters x 20 policies, 100 batches of 100, all learned: min {min:.2} ms, median {median:.2} ms"
    );
    let size = status_size_at_10k();
    println!(
        "status.forecast at 10,000 clusters x 20 policies, 20 batches: {size} bytes ({:.1} KiB)",
        size as f64 / 1024.0
    );
}

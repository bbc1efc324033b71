//! Pre-cache scheduler decision-time benchmark (issue 17): one `schedule::schedule` run over a
//! fleet in the middle of pre-caching, at 1,000 and 10,000 clusters, against a baseline run
//! side by side on the same fleet without any budget.
//!
//! The fleet: clusters spread over 10 sites (label `site`), each cluster with a pre-cache task
//! in its SpokeAgent (batch = its tenth of the fleet, two CGUs), every agent reporting progress
//! and the mirror registry. Budgets: one per site (bandwidth 200Mi, at most a tenth of the
//! site at once) and one registry budget over every cluster (`mirror.example.com:5000`, at most
//! a fifth of the fleet at once, 2Gi). The scenario is the steady state: the tasks are as a
//! previous run left them (so the run writes nothing but does all the work), which is what
//! every run costs while the fleet pre-caches. The baseline is the same fleet with no budget
//! and no task held: the scheduler reads the tasks and finds nothing to do.
//!
//! Run: `cargo bench -p talm-hub-core --bench schedule` (add `-- --quick` for fewer rounds).
//! Prints min/median/p95 in milliseconds and the budgeted/baseline ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use talm_hub_core::Snapshot;
use talm_hub_core::Write;
use talm_hub_core::api::precachebudget::PrecacheBudget;
use talm_hub_core::api::rhacm::ManagedCluster;
use talm_hub_core::api::spokeagent::SpokeAgent;
use talm_hub_core::schedule::schedule;

const SITES: usize = 10;
const MI: i64 = 1 << 20;

fn t0() -> Timestamp {
    Timestamp::from_second(1_790_000_000).unwrap()
}

fn cluster(i: usize) -> String {
    format!("sno-{i:05}")
}

/// The fleet's clusters and agents; with `budgets`, the 11 budgets and every task assigned
/// held (as the engine assigns under budgets); without, no budget and no task held.
fn fleet(n: usize, budgets: bool) -> Snapshot {
    let mut s = Snapshot::new();
    for i in 0..n {
        let name = cluster(i);
        let mc: ManagedCluster = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"name": name, "site": format!("site-{}", i % SITES)}},
            "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
        }))
        .unwrap();
        s.insert_managed_cluster(mc);
        let batch = i * 10 / n;
        let cgu = if i % 2 == 0 { "a" } else { "b" };
        let a: SpokeAgent = serde_json::from_value(json!({
            "apiVersion": "talm.dev/v1alpha1", "kind": "SpokeAgent",
            "metadata": {"name": name, "namespace": name},
            "spec": {"precache": {
                "id": format!("ztp/{cgu}/uid-{cgu}/precache"), "spec": {},
                "deadline": "2026-12-31T00:00:00Z", "hold": budgets,
                "order": {"batch": batch, "cguCreated": if cgu == "a" { "2026-01-01T00:00:00Z" } else { "2026-01-02T00:00:00Z" }},
            }},
            "status": {"precache": {
                "id": format!("ztp/{cgu}/uid-{cgu}/precache"), "state": "Starting",
                "progress": {"bytesDone": (i as i64 % 7) * MI, "bytesTotal": 800 * MI,
                             "bytesPerSecond": (i as i64 % 5) * MI,
                             "registries": ["mirror.example.com:5000", "quay.io"]}
            }}
        }))
        .unwrap();
        s.insert_spoke_agent(a);
    }
    if budgets {
        for site in 0..SITES {
            let b: PrecacheBudget = serde_json::from_value(json!({
                "metadata": {"name": format!("site-{site}"), "generation": 1},
                "spec": {"clusterSelector": {"matchLabels": {"site": format!("site-{site}")}},
                         "bandwidth": "200Mi", "maxConcurrentClusters": (n / SITES / 10).max(1)}
            }))
            .unwrap();
            s.insert_precache_budget(b);
        }
        let mirror: PrecacheBudget = serde_json::from_value(json!({
            "metadata": {"name": "mirror", "generation": 1},
            "spec": {"registries": [{"host": "mirror.example.com:5000",
                                     "maxConcurrentClusters": (n / 5).max(1), "bandwidth": "2Gi"}]}
        }))
        .unwrap();
        s.insert_precache_budget(mirror);
    }
    s
}

/// Applies the scheduler's writes to the snapshot, as an adapter would.
fn apply(s: &mut Snapshot, writes: &[Write]) {
    for w in writes {
        match w {
            Write::SetPrecacheGrant {
                namespace,
                name,
                hold,
                rate_limit_bytes_per_second,
                ..
            } => {
                let mut a = s.spoke_agent(namespace, name).unwrap().clone();
                let t = a.spec.precache.as_mut().unwrap();
                t.hold = *hold;
                t.rate_limit_bytes_per_second = *rate_limit_bytes_per_second;
                s.insert_spoke_agent(a);
            }
            Write::SetPrecacheBudgetStatus { name, status } => {
                let mut b = s
                    .precache_budgets()
                    .find(|b| b.metadata.name.as_deref() == Some(name))
                    .unwrap()
                    .clone();
                b.status = Some(status.clone());
                s.insert_precache_budget(b);
            }
            _ => unreachable!("the scheduler writes grants and statuses only"),
        }
    }
}

struct Stats {
    min: Duration,
    median: Duration,
    p95: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        min: v[0],
        median: v[v.len() / 2],
        p95: v[(v.len() * 95 / 100).min(v.len() - 1)],
    }
}

/// The time of one scheduler run over `snap`.
fn time(snap: &Snapshot, now: Timestamp) -> Duration {
    let t = Instant::now();
    black_box(schedule(black_box(snap), now));
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 10 } else { 60 };
    let now = t0() + SignedDuration::from_mins(5);
    println!(
        "pre-cache scheduler decision time, {SITES} site budgets + 1 registry budget, steady state ({rounds} rounds; ms)"
    );
    println!(
        "{:>7}  {:<10} {:>8} {:>8} {:>8}  {:>6}  {:>7}",
        "clusters", "fleet", "min", "median", "p95", "active", "ratio"
    );
    for n in [1_000usize, 10_000] {
        let mut budgeted = fleet(n, true);
        // Settle: the first run admits and writes the statuses; the second must be quiet.
        let first = schedule(&budgeted, now);
        apply(&mut budgeted, &first.writes);
        let second = schedule(&budgeted, now);
        assert!(
            second.writes.is_empty(),
            "not a steady state: {:?}",
            second.writes.len()
        );
        let active = first
            .writes
            .iter()
            .filter(|w| matches!(w, Write::SetPrecacheGrant { hold: false, .. }))
            .count();
        let baseline = fleet(n, false);
        assert!(schedule(&baseline, now).writes.is_empty());
        // Side by side: alternate the two so machine load hits both alike (one warm-up each).
        time(&baseline, now);
        time(&budgeted, now);
        let mut base_times = Vec::new();
        let mut budget_times = Vec::new();
        for _ in 0..rounds {
            base_times.push(time(&baseline, now));
            budget_times.push(time(&budgeted, now));
        }
        let base = stats(base_times);
        let budget = stats(budget_times);
        println!(
            "{n:>8}  {:<10} {:>8} {:>8} {:>8}  {:>6}  {:>7}",
            "no budget",
            ms(base.min),
            ms(base.median),
            ms(base.p95),
            n,
            "1.00"
        );
        println!(
            "{n:>8}  {:<10} {:>8} {:>8} {:>8}  {:>6}  {:>7.2}",
            "budgets",
            ms(budget.min),
            ms(budget.median),
            ms(budget.p95),
            active,
            budget.median.as_secs_f64() / base.median.as_secs_f64()
        );
    }
}

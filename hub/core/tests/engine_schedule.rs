//! The fleet pre-cache scheduler (`talm_hub_core::schedule`, docs/contract.md §4.4) through the
//! library API: admission order, division of bandwidth, overlapping budgets, concurrency per
//! budget and per registry, clusters leaving a budget, bad budgets, idempotence; and a flow
//! with the CGU reconcile, the scheduler and simulated agents taking turns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use talm_hub_core::api::Time;
use talm_hub_core::api::cgu::{ClusterGroupUpgrade, FINALIZER};
use talm_hub_core::api::precachebudget::{PrecacheBudget, PrecacheBudgetStatus};
use talm_hub_core::api::rhacm::{ManagedCluster, Policy};
use talm_hub_core::api::spokeagent::{SpokeAgent, TaskReport, TransferProgress};
use talm_hub_core::schedule::{self, MIN_SHARE, REFRESH_SECS, Schedule, may_apply};
use talm_hub_core::{
    Context, FinalizerChange, NoUpdateGraph, Requeue, Snapshot, TaskChange, Write, reconcile,
};

const MI: i64 = 1 << 20;

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

fn mc(name: &str, labels: &[(&str, &str)]) -> ManagedCluster {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "ManagedClusterConditionAvailable", "status": "True"}]}
    }))
    .unwrap()
}

fn budget(name: &str, spec: Value) -> PrecacheBudget {
    serde_json::from_value(json!({
        "apiVersion": "talm.dev/v1alpha1", "kind": "PrecacheBudget",
        "metadata": {"name": name, "generation": 3}, "spec": spec
    }))
    .unwrap()
}

/// A SpokeAgent with a pre-cache task `id` (deadline an hour after t0), its hold, and its queue
/// place (batch, CGU creation second offset).
fn agent(cluster: &str, id: &str, hold: bool, order: Option<(i64, i64)>) -> SpokeAgent {
    let order = order.map(|(batch, created)| {
        json!({"batch": batch, "cguCreated": Time(t0() + SignedDuration::from_secs(created))})
    });
    serde_json::from_value(json!({
        "apiVersion": "talm.dev/v1alpha1", "kind": "SpokeAgent",
        "metadata": {"name": cluster, "namespace": cluster},
        "spec": {"precache": {
            "id": id, "spec": {}, "deadline": Time(t0() + SignedDuration::from_hours(1)),
            "hold": hold, "order": order,
        }}
    }))
    .unwrap()
}

/// Sets the agent's report for its current task.
fn report(a: &mut SpokeAgent, state: &str, progress: Option<TransferProgress>) {
    let id = a.spec.precache.as_ref().unwrap().id.clone();
    a.status.get_or_insert_with(Default::default).precache = Some(TaskReport {
        id,
        state: state.into(),
        message: String::new(),
        progress,
    });
}

fn progress(done: i64, total: i64, rate: i64, registries: &[&str]) -> TransferProgress {
    TransferProgress {
        bytes_done: done,
        bytes_total: total,
        bytes_per_second: rate,
        registries: registries.iter().map(|r| r.to_string()).collect(),
        updated_at: None,
    }
}

/// A fleet under test: the objects the scheduler reads, and the adapter's part (apply writes).
#[derive(Default)]
struct Fleet {
    clusters: BTreeMap<String, ManagedCluster>,
    agents: BTreeMap<String, SpokeAgent>,
    budgets: BTreeMap<String, PrecacheBudget>,
}

impl Fleet {
    fn cluster(&mut self, name: &str, labels: &[(&str, &str)]) -> &mut Self {
        self.clusters.insert(name.into(), mc(name, labels));
        self
    }
    fn agent(&mut self, a: SpokeAgent) -> &mut Self {
        self.agents.insert(a.metadata.name.clone().unwrap(), a);
        self
    }
    fn budget(&mut self, b: PrecacheBudget) -> &mut Self {
        self.budgets.insert(b.metadata.name.clone().unwrap(), b);
        self
    }
    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        for c in self.clusters.values() {
            s.insert_managed_cluster(c.clone());
        }
        for a in self.agents.values() {
            s.insert_spoke_agent(a.clone());
        }
        for b in self.budgets.values() {
            s.insert_precache_budget(b.clone());
        }
        s
    }
    fn schedule(&self, now: Timestamp) -> Schedule {
        schedule::schedule(&self.snapshot(), now)
    }
    /// Applies the writes as an adapter does (a grant only while the task id matches).
    fn apply(&mut self, writes: &[Write]) {
        for w in writes {
            match w {
                Write::SetPrecacheGrant {
                    name,
                    task_id,
                    hold,
                    rate_limit_bytes_per_second,
                    ..
                } => {
                    let Some(t) = self
                        .agents
                        .get_mut(name)
                        .and_then(|a| a.spec.precache.as_mut())
                        .filter(|t| t.id == *task_id)
                    else {
                        continue;
                    };
                    t.hold = *hold;
                    t.rate_limit_bytes_per_second = *rate_limit_bytes_per_second;
                }
                Write::SetPrecacheBudgetStatus { name, status } => {
                    if let Some(b) = self.budgets.get_mut(name) {
                        b.status = Some(status.clone());
                    }
                }
                other => panic!("the scheduler wrote {other:?}"),
            }
        }
    }
    /// Schedules and applies; returns the writes.
    fn step(&mut self, now: Timestamp) -> Vec<Write> {
        let s = self.schedule(now);
        self.apply(&s.writes);
        s.writes
    }
    fn held(&self, cluster: &str) -> bool {
        self.agents[cluster].spec.precache.as_ref().unwrap().hold
    }
    fn cap(&self, cluster: &str) -> Option<i64> {
        self.agents[cluster]
            .spec
            .precache
            .as_ref()
            .unwrap()
            .rate_limit_bytes_per_second
    }
    fn admitted(&self) -> Vec<&str> {
        self.agents
            .keys()
            .filter(|c| !self.held(c))
            .map(String::as_str)
            .collect()
    }
    fn status(&self, budget: &str) -> &PrecacheBudgetStatus {
        self.budgets[budget].status.as_ref().unwrap()
    }
    fn finish(&mut self, cluster: &str) {
        report(self.agents.get_mut(cluster).unwrap(), "Succeeded", None);
    }
}

fn condition<'a>(st: &'a PrecacheBudgetStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

fn grants(writes: &[Write]) -> Vec<(String, bool, Option<i64>)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::SetPrecacheGrant {
                name,
                hold,
                rate_limit_bytes_per_second,
                ..
            } => Some((name.clone(), *hold, *rate_limit_bytes_per_second)),
            _ => None,
        })
        .collect()
}

#[test]
fn earlier_batches_first_then_older_cgus() {
    let mut f = Fleet::default();
    f.budget(budget("one-at-a-time", json!({"maxConcurrentClusters": 1})));
    // CGU A created at +0, CGU B at +100. Batch 1 of either goes before batch 2 of A; within
    // batch 1, A's cluster (older CGU) goes first. Names are chosen against that order.
    f.cluster("a-batch2", &[])
        .agent(agent("a-batch2", "ns/a/u1/precache", true, Some((2, 0))));
    f.cluster("b-batch1", &[])
        .agent(agent("b-batch1", "ns/b/u2/precache", true, Some((1, 100))));
    f.cluster("c-batch1", &[])
        .agent(agent("c-batch1", "ns/a/u1/precache", true, Some((1, 0))));
    f.cluster("d-unordered", &[])
        .agent(agent("d-unordered", "ns/z/u3/precache", true, None));
    let mut order = Vec::new();
    for _ in 0..4 {
        f.step(t0());
        let admitted: Vec<String> = f
            .admitted()
            .into_iter()
            .map(String::from)
            .filter(|c| !order.contains(c))
            .collect();
        assert_eq!(admitted.len(), 1, "one at a time: {admitted:?}");
        order.extend(admitted.iter().cloned());
        f.finish(&admitted[0]);
    }
    assert_eq!(order, ["c-batch1", "b-batch1", "a-batch2", "d-unordered"]);
    f.step(t0());
    assert_eq!(f.status("one-at-a-time").done, 4);
}

#[test]
fn bandwidth_divides_exactly_with_the_remainder_to_the_earliest() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site",
        json!({"bandwidth": "10000001", "maxConcurrentClusters": 3}),
    ));
    for (i, c) in ["s3", "s2", "s1"].iter().enumerate() {
        let created = i64::try_from(i).unwrap();
        f.cluster(c, &[])
            .agent(agent(c, "t", true, Some((0, created))));
    }
    f.step(t0());
    // One batch; s3's CGU is the oldest, then s2's, then s1's: the two extra bytes go to s3
    // and s2.
    assert_eq!(
        (f.cap("s3"), f.cap("s2"), f.cap("s1")),
        (Some(3_333_334), Some(3_333_334), Some(3_333_333))
    );
    let st = f.status("site");
    assert_eq!(
        (st.active, st.queued, st.bandwidth_allotted),
        (3, 0, 10_000_001)
    );
    // One finishes: the other two share it all again.
    f.finish("s3");
    f.step(t0());
    assert_eq!(
        (f.cap("s2"), f.cap("s1")),
        (Some(5_000_001), Some(5_000_000))
    );
    assert_eq!(f.status("site").bandwidth_allotted, 10_000_001);
    assert_eq!(f.status("site").done, 1);
}

#[test]
fn grants_that_lower_a_rate_come_before_those_that_raise_one() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site",
        json!({"bandwidth": "12Mi", "maxConcurrentClusters": 3}),
    ));
    // "z-old" and "a-old" run first; "a-next" and "b-next" queue. In the last step "a-old" is
    // raised and sorts between the two lowered ones by name, so only the lowering-first rule
    // puts it last.
    for (c, created) in [("z-old", 0), ("a-old", 1), ("a-next", 2), ("b-next", 3)] {
        f.cluster(c, &[])
            .agent(agent(c, "t", true, Some((0, created))));
    }
    let first = f.schedule(t0());
    assert_eq!(first.lowering, 0, "let-ins only raise");
    f.apply(&first.writes);
    f.step(t0());
    assert_eq!(f.admitted(), ["a-next", "a-old", "z-old"]);
    assert_eq!(
        (f.cap("z-old"), f.cap("a-old"), f.cap("a-next")),
        (Some(4 * MI), Some(4 * MI), Some(4 * MI))
    );
    // z-old finishes: b-next is let in at the freed 4Mi (a raise), and nobody's cap moves.
    f.finish("z-old");
    let s = f.schedule(t0());
    assert_eq!(grants(&s.writes), [("b-next".into(), false, Some(4 * MI))]);
    assert_eq!(s.lowering, 0);
    f.apply(&s.writes);
    // A second budget cuts a-next and b-next to 1Mi each (a lowering), while a-old, outside
    // it, gets the site's spare (a raise).
    f.clusters.get_mut("a-next").unwrap().metadata.labels =
        Some([("tight".to_string(), "yes".to_string())].into());
    f.clusters.get_mut("b-next").unwrap().metadata.labels =
        Some([("tight".to_string(), "yes".to_string())].into());
    f.budget(budget(
        "tight",
        json!({"clusterSelector": {"matchLabels": {"tight": "yes"}}, "bandwidth": "2Mi"}),
    ));
    let s = f.schedule(t0());
    assert_eq!(
        grants(&s.writes),
        [
            ("a-next".into(), false, Some(MI)),
            ("b-next".into(), false, Some(MI)),
            ("a-old".into(), false, Some(10 * MI)),
        ]
    );
    assert_eq!(s.lowering, 2, "the two lowered caps, then the raised one");
}

#[test]
fn water_filling_over_a_site_and_a_registry_budget() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site-a",
        json!({"clusterSelector": {"matchLabels": {"site": "a"}}, "bandwidth": "30Mi"}),
    ));
    f.budget(budget(
        "mirror",
        json!({"registries": [{"host": "mirror.example.com:5000", "bandwidth": "4Mi"}]}),
    ));
    for c in ["a1", "a2", "a3"] {
        f.cluster(c, &[("site", "a")]);
        let mut a = agent(c, "t", false, Some((1, 0)));
        let host = if c == "a1" {
            "mirror.example.com:5000"
        } else {
            "quay.io"
        };
        report(
            &mut a,
            "Active",
            Some(progress(0, 100 * MI, 2 * MI, &[host])),
        );
        f.agent(a);
    }
    let s = f.schedule(t0());
    assert_eq!(s.requeue_after_secs, Some(REFRESH_SECS));
    f.apply(&s.writes);
    // a1 is held to the mirror's 4Mi; what it cannot use goes to a2 and a3.
    assert_eq!(
        (f.cap("a1"), f.cap("a2"), f.cap("a3")),
        (Some(4 * MI), Some(13 * MI), Some(13 * MI))
    );
    let site = f.status("site-a");
    assert_eq!(site.bandwidth_allotted, 30 * MI);
    assert_eq!(site.bandwidth_in_use, 6 * MI);
    assert_eq!(site.bandwidth_in_use_display, "6Mi/s");
    let mirror = f.status("mirror");
    assert_eq!(mirror.active, 3, "the budget selects every cluster");
    assert_eq!(mirror.registries[0].active, 1);
    assert_eq!(mirror.registries[0].bandwidth_allotted, 4 * MI);
    assert_eq!(mirror.registries[0].bandwidth_in_use, 2 * MI);
    assert_eq!(
        condition(mirror, "RegistriesSeen"),
        Some((
            "True",
            "RegistriesSeen",
            "Every listed registry is one the selected clusters pull from"
        ))
    );
}

#[test]
fn every_overlapping_budget_applies_and_other_budgets_go_on() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site-a",
        json!({"clusterSelector": {"matchLabels": {"site": "a"}}, "maxConcurrentClusters": 2}),
    ));
    f.budget(budget(
        "region",
        json!({"clusterSelector": {"matchLabels": {"region": "east"}}, "maxConcurrentClusters": 1}),
    ));
    f.budget(budget(
        "site-b",
        json!({"clusterSelector": {"matchLabels": {"site": "b"}}, "maxConcurrentClusters": 1}),
    ));
    let east_a = [("site", "a"), ("region", "east")];
    // One batch, queued by CGU age: a1, a2, a3.
    f.cluster("a1", &east_a)
        .agent(agent("a1", "t", true, Some((1, 0))));
    f.cluster("a2", &east_a)
        .agent(agent("a2", "t", true, Some((1, 1))));
    // Region west: only site-a limits it.
    f.cluster("a3", &[("site", "a"), ("region", "west")])
        .agent(agent("a3", "t", true, Some((1, 2))));
    // A later batch under another budget goes on while a2 waits.
    f.cluster("b1", &[("site", "b")])
        .agent(agent("b1", "t", true, Some((2, 0))));
    f.step(t0());
    assert_eq!(f.admitted(), ["a1", "a3", "b1"]);
    assert_eq!(f.status("region").queued, 1);
    assert_eq!(
        (f.status("site-a").active, f.status("site-a").queued),
        (2, 1)
    );
    // a1 finishes: the region has room again and a2 goes.
    f.finish("a1");
    f.step(t0());
    assert!(!f.held("a2"));
    assert_eq!(
        (f.status("site-a").active, f.status("region").active),
        (2, 1)
    );
}

#[test]
fn concurrency_per_registry_entry() {
    let mut f = Fleet::default();
    f.budget(budget(
        "mirror",
        json!({"registries": [{"host": "mirror:5000", "maxConcurrentClusters": 1}]}),
    ));
    // r2 and r3 are one batch after r1 (two consecutive batches may run at once).
    for (c, host, batch) in [
        ("r1", "mirror:5000", 0),
        ("r2", "mirror:5000", 1),
        ("r3", "quay.io", 1),
    ] {
        let mut a = agent(c, "t", true, Some((batch, 0)));
        report(&mut a, "Starting", Some(progress(0, 10 * MI, 0, &[host])));
        f.cluster(c, &[]).agent(a);
    }
    f.step(t0());
    assert_eq!(f.admitted(), ["r1", "r3"]);
    let st = f.status("mirror");
    assert_eq!((st.active, st.queued), (2, 1));
    assert_eq!((st.registries[0].active, st.registries[0].queued), (1, 1));
    // No bandwidth anywhere: no caps.
    assert_eq!((f.cap("r1"), f.cap("r3")), (None, None));
}

#[test]
fn batch_one_finishes_before_batch_three_starts_even_when_a_registry_holds_it_back() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site",
        json!({"clusterSelector": {"matchLabels": {"site": "s1"}}, "maxConcurrentClusters": 10}),
    ));
    f.budget(budget(
        "mirror",
        json!({"registries": [{"host": "mirror-a:5000", "maxConcurrentClusters": 1}]}),
    ));
    for (c, host, batch) in [
        ("x1", "mirror-a:5000", 1),
        ("x2", "mirror-a:5000", 1),
        ("y1", "mirror-b:5000", 2),
        ("z1", "mirror-b:5000", 3),
    ] {
        let mut a = agent(c, "t", true, Some((batch, 0)));
        report(&mut a, "Starting", Some(progress(0, 10 * MI, 0, &[host])));
        f.cluster(c, &[("site", "s1")]).agent(a);
    }
    // x2 waits for mirror-a; the site has room, but only batch 2 may use it: z1 (batch 3)
    // waits while a batch-1 cluster is live.
    f.step(t0());
    assert_eq!(f.admitted(), ["x1", "y1"]);
    // (Finished clusters stay un-held: `admitted` lists every cluster let in so far.)
    f.finish("x1");
    f.step(t0());
    assert_eq!(f.admitted(), ["x1", "x2", "y1"]);
    f.finish("x2");
    f.step(t0());
    assert_eq!(f.admitted(), ["x1", "x2", "y1", "z1"]);
}

#[test]
fn a_registry_budget_waits_for_the_agents_report_unless_it_does_not_select_the_cluster() {
    let mut f = Fleet::default();
    f.budget(budget(
        "mirror-east",
        json!({"clusterSelector": {"matchLabels": {"region": "east"}},
               "registries": [{"host": "mirror:5000", "maxConcurrentClusters": 5}]}),
    ));
    f.budget(budget("all", json!({"maxConcurrentClusters": 10})));
    f.cluster("east1", &[("region", "east")])
        .agent(agent("east1", "t", true, Some((1, 0))));
    f.cluster("west1", &[("region", "west")])
        .agent(agent("west1", "t", true, Some((1, 0))));
    f.step(t0());
    assert_eq!(f.admitted(), ["west1"], "east1 waits for its registries");
    // Resolving (total known, nothing fetched): the report says where the images come from.
    report(
        f.agents.get_mut("east1").unwrap(),
        "Starting",
        Some(progress(0, 5 * MI, 0, &["mirror:5000"])),
    );
    f.step(t0());
    assert_eq!(f.admitted(), ["east1", "west1"]);
    assert_eq!(f.status("mirror-east").registries[0].active, 1);
}

#[test]
fn a_bandwidth_only_budget_keeps_a_minimum_share() {
    let mut f = Fleet::default();
    f.budget(budget("thin", json!({"bandwidth": "2.5Mi"})));
    for i in 0..4 {
        let c = format!("c{i}");
        f.cluster(&c, &[]).agent(agent(&c, "t", true, Some((i, 0))));
    }
    f.step(t0());
    // 2.5Mi / MIN_SHARE (1Mi) = 2 clusters, 1.25Mi each.
    assert_eq!(MIN_SHARE, MI);
    assert_eq!(f.admitted(), ["c0", "c1"]);
    assert_eq!(
        (f.cap("c0"), f.cap("c1")),
        (Some(5 * MI / 4), Some(5 * MI / 4))
    );
}

#[test]
fn a_cluster_leaving_a_budget_mid_run_keeps_running_and_the_rest_is_re_divided() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site-a",
        json!({"clusterSelector": {"matchLabels": {"site": "a"}}, "bandwidth": "30Mi"}),
    ));
    for c in ["a1", "a2", "a3"] {
        f.cluster(c, &[("site", "a")])
            .agent(agent(c, "t", true, Some((1, 0))));
    }
    f.step(t0());
    assert_eq!(
        (f.cap("a1"), f.cap("a2"), f.cap("a3")),
        (Some(10 * MI), Some(10 * MI), Some(10 * MI))
    );
    // a3 moves to site b (no budget there).
    f.cluster("a3", &[("site", "b")]);
    let w = f.step(t0());
    assert_eq!(
        grants(&w),
        [
            ("a1".to_string(), false, Some(15 * MI)),
            ("a2".to_string(), false, Some(15 * MI)),
            ("a3".to_string(), false, None),
        ]
    );
    assert!(!f.held("a3"), "never preempted");
    assert_eq!(f.status("site-a").active, 2);
}

#[test]
fn no_budgets_no_writes() {
    let mut f = Fleet::default();
    for c in ["s1", "s2"] {
        let mut a = agent(c, "t", false, None);
        report(&mut a, "Active", Some(progress(1, 2, 3, &["quay.io"])));
        f.cluster(c, &[]).agent(a);
    }
    assert_eq!(f.schedule(t0()), Schedule::default());
    assert!(!may_apply(&f.snapshot(), "s1"));
    // A task left held (its budget deleted) is let in, with no cap.
    f.agent(agent("s3", "t", true, None));
    assert_eq!(grants(&f.step(t0())), [("s3".to_string(), false, None)]);
}

#[test]
fn a_second_run_on_the_applied_result_writes_nothing() {
    let mut f = Fleet::default();
    f.budget(budget(
        "site-a",
        json!({"clusterSelector": {"matchLabels": {"site": "a"}}, "bandwidth": "25Mi",
               "maxConcurrentClusters": 2}),
    ));
    f.budget(budget(
        "mirror",
        json!({"registries": [{"host": "mirror:5000", "maxConcurrentClusters": 1},
                              {"host": "unknown.example.com"}]}),
    ));
    f.budget(budget("bad", json!({"bandwidth": "0"})));
    f.budget(budget(
        "nobody",
        json!({"clusterSelector": {"matchLabels": {"site": "zz"}}, "bandwidth": "1Gi"}),
    ));
    for (i, c) in ["a1", "a2", "a3"].iter().enumerate() {
        let mut a = agent(c, "t", true, Some((i64::try_from(i).unwrap(), 0)));
        report(
            &mut a,
            "Starting",
            Some(progress(0, MI, 0, &["mirror:5000"])),
        );
        f.cluster(c, &[("site", "a")]).agent(a);
    }
    let first = f.step(t0());
    assert!(!first.is_empty());
    let later = t0() + SignedDuration::from_secs(60);
    assert_eq!(
        f.schedule(later).writes,
        [],
        "level-triggered and idempotent"
    );
    // The transition times did not move either.
    let st = f.status("nobody");
    assert!(
        st.conditions
            .iter()
            .all(|c| c.last_transition_time == Time(t0()))
    );
    assert_eq!(st.observed_generation, Some(3));
}

#[test]
fn bad_budgets_say_which_field_and_value_and_are_not_applied() {
    let cases = [
        (
            json!({"bandwidth": "0"}),
            "InvalidBandwidth",
            "spec.bandwidth: \"0\" must be greater than zero",
        ),
        (
            json!({"bandwidth": "-5Mi"}),
            "InvalidBandwidth",
            "spec.bandwidth: \"-5Mi\" must be greater than zero",
        ),
        (
            json!({"bandwidth": "fast"}),
            "InvalidBandwidth",
            "spec.bandwidth: \"fast\" is not a quantity (expected a number with an optional suffix, such as 25Mi, 200M, 1.5Gi, 500k or 1500000)",
        ),
        (
            json!({"maxConcurrentClusters": -1}),
            "InvalidMaxConcurrentClusters",
            "spec.maxConcurrentClusters: -1 must be at least 1",
        ),
        (
            json!({"maxConcurrentClusters": 0}),
            "InvalidMaxConcurrentClusters",
            "spec.maxConcurrentClusters: 0 must be at least 1",
        ),
        (
            json!({"registries": [{"host": "ok:5000"}, {"host": "https://mirror/ocp", "bandwidth": "1Mi"}]}),
            "InvalidRegistryHost",
            "spec.registries[1].host: \"https://mirror/ocp\" must be host[:port] without a scheme",
        ),
        (
            json!({"registries": [{"host": "m", "bandwidth": "1MB"}]}),
            "InvalidBandwidth",
            "spec.registries[0].bandwidth: \"1MB\" is not a quantity (expected a number with an optional suffix, such as 25Mi, 200M, 1.5Gi, 500k or 1500000)",
        ),
        (
            json!({"registries": [{"host": "m", "maxConcurrentClusters": 0}]}),
            "InvalidMaxConcurrentClusters",
            "spec.registries[0].maxConcurrentClusters: 0 must be at least 1",
        ),
        (
            json!({"clusterSelector": {"matchExpressions": [{"key": "site", "operator": "Near"}]}, "maxConcurrentClusters": 1}),
            "InvalidSelector",
            "spec.clusterSelector.matchExpressions[0].operator: unknown operator \"Near\" (expected In, NotIn, Exists or DoesNotExist)",
        ),
    ];
    for (spec, reason, message) in cases {
        let mut f = Fleet::default();
        f.budget(budget("b", spec.clone()));
        f.cluster("s1", &[("site", "a")])
            .agent(agent("s1", "t", true, Some((0, 0))));
        f.cluster("s2", &[("site", "a")])
            .agent(agent("s2", "t", true, Some((1, 0))));
        assert!(!may_apply(&f.snapshot(), "s1"), "{spec}");
        f.step(t0());
        let st = f.status("b");
        assert_eq!(
            condition(st, "Valid"),
            Some(("False", reason, message)),
            "{spec}"
        );
        assert_eq!(st.conditions.len(), 1, "{spec}");
        assert_eq!((st.active, st.queued), (0, 0), "{spec}");
        // Not applied: both let in.
        assert_eq!(f.admitted(), ["s1", "s2"], "{spec}");
    }
}

#[test]
fn a_selector_matching_nothing_and_an_unknown_registry_are_conditions() {
    let mut f = Fleet::default();
    f.budget(budget(
        "nobody",
        json!({"clusterSelector": {"matchLabels": {"site": "zz"}}, "bandwidth": "1Gi"}),
    ));
    f.budget(budget(
        "mirrors",
        json!({"registries": [{"host": "mirror:5000"}, {"host": "old-mirror:5000"}]}),
    ));
    f.cluster("s1", &[("site", "a")])
        .agent(agent("s1", "t", true, Some((0, 0))));
    f.step(t0());
    let nobody = f.status("nobody");
    assert_eq!(
        condition(nobody, "ClustersSelected"),
        Some((
            "False",
            "NoClustersSelected",
            "spec.clusterSelector matches no ManagedCluster"
        ))
    );
    assert_eq!(
        condition(nobody, "Valid"),
        Some(("True", "Valid", "The spec is valid"))
    );
    // Nobody reported registries yet: no RegistriesSeen (a fresh budget is not noisy).
    let mirrors = f.status("mirrors");
    assert_eq!(condition(mirrors, "RegistriesSeen"), None);
    assert_eq!(
        condition(mirrors, "ClustersSelected"),
        Some(("True", "ClustersSelected", "1 ManagedCluster selected"))
    );
    assert!(f.held("s1"), "waits for its registries");
    report(
        f.agents.get_mut("s1").unwrap(),
        "Starting",
        Some(progress(0, MI, 0, &["mirror:5000", "quay.io"])),
    );
    f.step(t0());
    assert_eq!(
        condition(f.status("mirrors"), "RegistriesSeen"),
        Some((
            "False",
            "UnknownRegistry",
            "spec.registries lists [old-mirror:5000] that no selected cluster pulls from (they pull from [mirror:5000 quay.io])"
        ))
    );
    assert!(!f.held("s1"));
}

#[test]
fn may_apply_follows_the_valid_budgets_selectors() {
    let mut f = Fleet::default();
    f.cluster("east1", &[("region", "east")])
        .cluster("west1", &[("region", "west")]);
    f.budget(budget(
        "east",
        json!({"clusterSelector": {"matchLabels": {"region": "east"}}, "maxConcurrentClusters": 1}),
    ));
    let s = f.snapshot();
    assert!(may_apply(&s, "east1"));
    assert!(!may_apply(&s, "west1"));
    assert!(!may_apply(&s, "not-a-cluster"));
    f.budget(budget(
        "mirror",
        json!({"registries": [{"host": "mirror:5000"}]}),
    ));
    assert!(
        may_apply(&f.snapshot(), "west1"),
        "no selector: every cluster"
    );
}

#[test]
fn finished_and_expired_tasks_take_no_place() {
    let mut f = Fleet::default();
    f.budget(budget("one", json!({"maxConcurrentClusters": 1})));
    let mut done = agent("done", "t", false, Some((0, 0)));
    report(&mut done, "PrecacheTimeout", None);
    f.cluster("done", &[]).agent(done);
    let mut queued = agent("queued", "t", true, Some((1, 0)));
    queued.spec.precache.as_mut().unwrap().deadline = Time(t0() + SignedDuration::from_hours(5));
    f.cluster("queued", &[]).agent(queued);
    // Past the deadline (t0 + 1h) an active task without a final report no longer counts.
    f.cluster("silent", &[])
        .agent(agent("silent", "t", false, Some((0, 0))));
    f.step(t0());
    assert!(
        f.held("queued"),
        "silent holds the place before its deadline"
    );
    f.step(t0() + SignedDuration::from_hours(2));
    assert!(!f.held("queued"));
    let st = f.status("one");
    assert_eq!((st.active, st.queued, st.done), (1, 0, 1));
}

#[test]
fn a_grant_for_a_replaced_task_is_not_applied() {
    let mut f = Fleet::default();
    f.budget(budget("one", json!({"maxConcurrentClusters": 1})));
    f.cluster("s1", &[])
        .agent(agent("s1", "old", true, Some((0, 0))));
    let s = f.schedule(t0());
    // The CGU replaced the task meanwhile: the grant for "old" changes nothing.
    f.agent(agent("s1", "new", true, Some((0, 0))));
    f.apply(&s.writes);
    assert!(f.held("s1"));
    assert!(
        s.writes
            .iter()
            .any(|w| !w.grant_applies_to(Some("new")) && w.grant_applies_to(Some("old")))
    );
}

// ---- The flow: CGU reconcile + scheduler + simulated agents ----

fn cv_policy(name: &str, clusters: &[&str]) -> Vec<Policy> {
    let templates = json!([{"objectDefinition": {
        "apiVersion": "policy.open-cluster-management.io/v1", "kind": "ConfigurationPolicy",
        "metadata": {"name": format!("{name}-config")},
        "spec": {"object-templates": [{"complianceType": "musthave", "objectDefinition": {
            "apiVersion": "config.openshift.io/v1", "kind": "ClusterVersion",
            "metadata": {"name": "version"},
            "spec": {"desiredUpdate": {"image": "quay.io/ocp/release:4.16.1", "version": "4.16.1"}}}}]}
    }}]);
    let status: Vec<Value> = clusters
        .iter()
        .map(|c| json!({"clustername": c, "clusternamespace": c, "compliant": "NonCompliant"}))
        .collect();
    let mut out = vec![
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"remediationAction": "inform", "policy-templates": templates},
            "status": {"status": status}
        }))
        .unwrap(),
    ];
    for c in clusters {
        out.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("default.{name}"), "namespace": c,
                    "labels": {"policy.open-cluster-management.io/root-policy": format!("default.{name}")}},
                "spec": {"remediationAction": "inform", "policy-templates": templates}
            }))
            .unwrap(),
        );
    }
    out
}

struct Hub {
    cgu: ClusterGroupUpgrade,
    policies: Vec<Policy>,
    fleet: Fleet,
}

impl Hub {
    fn snapshot(&self) -> Snapshot {
        let mut s = self.fleet.snapshot();
        for p in &self.policies {
            s.insert_policy(p.clone());
        }
        s.insert_cgu(self.cgu.clone());
        s
    }

    /// CGU reconciles to a fixed point, then the scheduler, until neither changes anything.
    fn run(&mut self, now: Timestamp) -> Requeue {
        for _ in 0..50 {
            let d = reconcile(
                &self.cgu,
                &self.snapshot(),
                &Context {
                    now,
                    graph: &NoUpdateGraph,
                },
            );
            let status = Some(d.status);
            let mut changed = self.cgu.status != status;
            self.cgu.status = status;
            if d.finalizer == FinalizerChange::Add {
                changed |= self.cgu.metadata.finalizers.is_none();
                self.cgu.metadata.finalizers = Some(vec![FINALIZER.into()]);
            }
            for w in d.writes {
                if let Write::SetSpokeAgentTasks {
                    name,
                    precache: Some(change),
                    ..
                } = w
                {
                    changed = true;
                    let a = self.fleet.agents.entry(name.clone()).or_insert_with(|| {
                        let mut a = agent(&name, "-", false, None);
                        a.spec.precache = None;
                        a
                    });
                    match change {
                        TaskChange::Assign(t) => a.spec.precache = Some(t),
                        TaskChange::Clear => a.spec.precache = None,
                    }
                }
            }
            let s = schedule::schedule(&self.snapshot(), now);
            changed |= !s.writes.is_empty();
            self.fleet.apply(&s.writes);
            if !changed && d.requeue != Requeue::Immediately {
                return d.requeue;
            }
        }
        panic!("no fixed point");
    }

    fn states(&self) -> Vec<(String, String)> {
        self.cgu
            .status
            .as_ref()
            .unwrap()
            .precaching
            .as_ref()
            .unwrap()
            .status
            .clone()
            .unwrap()
            .into_iter()
            .collect()
    }

    fn condition(&self, type_: &str) -> (String, String, String) {
        let c = self
            .cgu
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }
}

fn st(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_cgu_pre_caches_one_cluster_at_a_time_under_a_budget() {
    let clusters = ["spoke1", "spoke2", "spoke3"];
    let mut fleet = Fleet::default();
    for c in clusters {
        fleet.cluster(c, &[("site", "a")]);
    }
    fleet.budget(budget(
        "site-a",
        json!({"clusterSelector": {"matchLabels": {"site": "a"}}, "maxConcurrentClusters": 1,
               "bandwidth": "20Mi"}),
    ));
    let created = t0() - SignedDuration::from_hours(1);
    let mut hub = Hub {
        cgu: serde_json::from_value(json!({
            "metadata": {"name": "cgu", "namespace": "default", "uid": "u1",
                         "creationTimestamp": Time(created)},
            "spec": {"clusters": clusters, "managedPolicies": ["p1"], "preCaching": true,
                     "enable": false, "remediationStrategy": {"maxConcurrency": 2}}
        }))
        .unwrap(),
        policies: cv_policy("p1", &clusters),
        fleet,
    };
    let mut now = t0();
    hub.run(now);
    // Assigned held, with their queue place; the scheduler lets the first of batch 0 in.
    for (c, batch) in [("spoke1", 0), ("spoke2", 0), ("spoke3", 1)] {
        let t = hub.fleet.agents[c].spec.precache.as_ref().unwrap();
        let order = t.order.as_ref().unwrap();
        assert_eq!(
            (order.batch, &order.cgu_created),
            (batch, &Time(created)),
            "{c}"
        );
        assert_eq!(t.deadline, Time(now + SignedDuration::from_mins(240)));
    }
    assert_eq!(hub.fleet.admitted(), ["spoke1"]);
    assert_eq!(hub.fleet.cap("spoke1"), Some(20 * MI));
    assert_eq!(
        hub.states(),
        st(&[
            ("spoke1", "Starting"),
            ("spoke2", "Starting"),
            ("spoke3", "Starting")
        ])
    );
    // Held agents report what they resolved; spoke1 downloads.
    now += SignedDuration::from_secs(30);
    for c in clusters {
        let (state, p) = if c == "spoke1" {
            ("Active", progress(40 * MI, 100 * MI, 20 * MI, &["quay.io"]))
        } else {
            ("Active", progress(0, 100 * MI, 0, &["quay.io"]))
        };
        report(hub.fleet.agents.get_mut(c).unwrap(), state, Some(p));
    }
    hub.run(now);
    // An Active report from a held agent still counts as Starting.
    assert_eq!(
        hub.states(),
        st(&[
            ("spoke1", "Active"),
            ("spoke2", "Starting"),
            ("spoke3", "Starting")
        ])
    );
    let pc = hub
        .cgu
        .status
        .as_ref()
        .unwrap()
        .precaching
        .as_ref()
        .unwrap();
    let progress_map = pc.progress.as_ref().unwrap();
    let p1 = &progress_map["spoke1"];
    assert_eq!(
        (p1.bytes_done, p1.bytes_total, p1.bytes_per_second),
        (40 * MI, 100 * MI, 20 * MI)
    );
    assert_eq!(p1.rate_limit_bytes_per_second, Some(20 * MI));
    assert!(!p1.queued);
    // 60 MiB left at 20 MiB/s: 3 s.
    assert_eq!(p1.eta, Some(Time(now + SignedDuration::from_secs(3))));
    assert!(progress_map["spoke2"].queued && progress_map["spoke2"].eta.is_none());
    assert_eq!(
        hub.condition("PrecachingSuceeded"),
        (
            "False".into(),
            "InProgress".into(),
            "Precaching in progress for 3 clusters".into()
        )
    );
    let site = hub.fleet.status("site-a");
    assert_eq!((site.active, site.queued, site.done), (1, 2, 0));
    // One at a time to the end.
    for (c, next) in [
        ("spoke1", Some("spoke2")),
        ("spoke2", Some("spoke3")),
        ("spoke3", None),
    ] {
        now += SignedDuration::from_secs(30);
        hub.fleet.finish(c);
        hub.run(now);
        let pc = hub
            .cgu
            .status
            .as_ref()
            .unwrap()
            .precaching
            .as_ref()
            .unwrap();
        assert!(
            pc.progress.as_ref().is_none_or(|m| !m.contains_key(c)),
            "{c} finished: no progress entry"
        );
        if let Some(n) = next {
            assert!(!hub.fleet.held(n), "{n} let in after {c}");
            assert_eq!(hub.fleet.cap(n), Some(20 * MI));
        }
    }
    assert_eq!(
        hub.states(),
        st(&[
            ("spoke1", "Succeeded"),
            ("spoke2", "Succeeded"),
            ("spoke3", "Succeeded")
        ])
    );
    assert_eq!(
        hub.condition("PrecachingSuceeded"),
        (
            "True".into(),
            "PrecachingCompleted".into(),
            "Precaching is completed for all clusters".into()
        )
    );
    let pc = hub
        .cgu
        .status
        .as_ref()
        .unwrap()
        .precaching
        .as_ref()
        .unwrap();
    assert_eq!(pc.progress, None);
    let site = hub.fleet.status("site-a");
    assert_eq!((site.active, site.queued, site.done), (0, 0, 3));
}

#[test]
fn without_budgets_pre_caching_starts_everywhere_as_in_talm() {
    let clusters = ["spoke1", "spoke2"];
    let mut fleet = Fleet::default();
    for c in clusters {
        fleet.cluster(c, &[]);
    }
    let mut hub = Hub {
        cgu: serde_json::from_value(json!({
            "metadata": {"name": "cgu", "namespace": "default", "uid": "u1"},
            "spec": {"clusters": clusters, "managedPolicies": ["p1"], "preCaching": true,
                     "enable": false, "remediationStrategy": {"maxConcurrency": 1}}
        }))
        .unwrap(),
        policies: cv_policy("p1", &clusters),
        fleet,
    };
    let now = t0();
    hub.run(now);
    assert_eq!(hub.fleet.admitted(), ["spoke1", "spoke2"]);
    let t = hub.fleet.agents["spoke2"].spec.precache.as_ref().unwrap();
    // No creationTimestamp: the order uses now.
    assert_eq!(t.order.as_ref().unwrap().batch, 1);
    assert_eq!(t.order.as_ref().unwrap().cgu_created, Time(now));
    report(hub.fleet.agents.get_mut("spoke1").unwrap(), "Active", None);
    hub.run(now);
    assert_eq!(
        hub.states(),
        st(&[("spoke1", "Active"), ("spoke2", "Starting")])
    );
    let pc = hub
        .cgu
        .status
        .as_ref()
        .unwrap()
        .precaching
        .as_ref()
        .unwrap();
    assert_eq!(pc.progress, None, "no report with progress, nobody queued");
}

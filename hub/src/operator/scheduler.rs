//! The fleet pre-cache scheduler loop (issue 17; leader only, beside the CGU controller).
//!
//! The engine's [`talm_hub_core::schedule::schedule`] decides, from the cached snapshot and the
//! clock's `now`, which queued pre-cache tasks may start and at what per-node cap, and what each
//! PrecacheBudget's status is. This loop runs it when something it decides on changed (a
//! budget, a ManagedCluster's labels, a SpokeAgent's pre-cache task or report: [`relevant`],
//! marked by the cache), coalescing changes for [`COALESCE`] and pausing between runs (see
//! [`run`]), and again after the engine's `requeue_after_secs`. The writes go through
//! [`super::writes`] like every other write of the operator: a grant is a JSON patch guarded by
//! a `test` of the task id (a task replaced meanwhile is left alone), a budget's status a merge
//! patch of `/status`. A budget whose `Valid` or `ClustersSelected` condition turns False gets
//! a Warning event.

use std::sync::Arc;
use std::time::Duration;

use talm_hub_core::Snapshot;
use talm_hub_core::decision::{EventType, ObjectRef};
use talm_hub_core::{Event, Write};
use talm_shared::api::precachebudget::{self, PrecacheBudget, PrecacheBudgetStatus};
use tokio::time::Instant;

use super::Shared;
use super::cache::Object;

/// How long changes are coalesced before a run.
pub const COALESCE: Duration = Duration::from_millis(20);
/// The least time from the end of a run to the start of the next.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// A run is followed by at least this many times its decision time without a run (so the
/// decisions take at most `1 / (1 + BUSY_FACTOR)` of a core).
pub const BUSY_FACTOR: u32 = 4;
/// The scheduler's writes in flight at once (grants are independent patches of different
/// SpokeAgents).
pub const WRITES_AT_ONCE: usize = 16;
/// The delay before a run after one whose writes failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The budget conditions whose turning False is announced with a Warning event.
pub const WARNED_CONDITIONS: [&str; 2] = ["Valid", "ClustersSelected"];
/// The namespace of the events about (cluster-scoped) PrecacheBudgets, as kubectl looks for
/// them.
pub const EVENT_NAMESPACE: &str = "default";

/// Whether a new version of `obj` changes what the scheduler decides on, compared with the
/// snapshot's: any PrecacheBudget change, a ManagedCluster's labels, a SpokeAgent's pre-cache
/// task (`spec.precache`) or the decision inputs of its report (task id, state, total bytes,
/// registries). New objects of those kinds count. Transfer progress alone (bytes done, the
/// measured rate) is not a reason to run: it only feeds the budgets' `bandwidthInUse`, which
/// the engine's periodic refresh keeps current, and with 10k agents reporting a few times a
/// minute it would keep the scheduler running all the time.
pub fn relevant(snap: &Snapshot, obj: &Object) -> bool {
    match obj {
        Object::PrecacheBudget(_) => true,
        Object::ManagedCluster(mc) => {
            let name = mc.metadata.name.as_deref().unwrap_or_default();
            snap.managed_cluster(name)
                .is_none_or(|old| old.metadata.labels != mc.metadata.labels)
        }
        Object::SpokeAgent(a) => {
            let ns = a.metadata.namespace.as_deref().unwrap_or_default();
            let name = a.metadata.name.as_deref().unwrap_or_default();
            snap.spoke_agent(ns, name).is_none_or(|old| {
                old.spec.precache != a.spec.precache || decided_on(old) != decided_on(a)
            })
        }
        _ => false,
    }
}

/// What the scheduler decides on in a SpokeAgent's pre-cache report: task id, state, and the
/// total bytes and registries of its progress.
type DecisionInputs<'a> = (&'a str, &'a str, Option<(i64, &'a [String])>);

fn decided_on(a: &talm_shared::api::spokeagent::SpokeAgent) -> Option<DecisionInputs<'_>> {
    let r = a.status.as_ref()?.precache.as_ref()?;
    let p = r
        .progress
        .as_ref()
        .map(|p| (p.bytes_total, p.registries.as_slice()));
    Some((r.id.as_str(), r.state.as_str(), p))
}

/// Runs the scheduler until the task is aborted (when leadership ends). The first run starts
/// at once: a new leader catches up with whatever changed meanwhile.
///
/// A change is acted on after [`COALESCE`] (the burst it belongs to, such as a wave of
/// clusters finishing together, is taken in one run), but never sooner than [`pause_after`]
/// the last run's decision time after that run ended: at least [`MIN_INTERVAL`], and
/// [`BUSY_FACTOR`] times the time the engine took to decide (its writes, which mostly wait on
/// the API server, do not count). A finished cluster's place goes to the next one within tens
/// of milliseconds on an idle hub, and the scheduler's decisions take at most about a fifth of
/// a core on a big fleet.
pub async fn run(shared: Arc<Shared>) {
    let mut last: Option<(Instant, Duration)> = None;
    let mut requeue_at: Option<Instant> = Some(Instant::now());
    loop {
        let requeue = async {
            match requeue_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shared.schedule_wake.notified() => {
                tokio::time::sleep(COALESCE).await;
            }
            () = requeue => {}
        }
        if let Some((ended, decided_in)) = last {
            tokio::time::sleep_until(ended + pause_after(decided_in)).await;
        }
        let run = run_once(&shared).await;
        requeue_at = run.requeue_after.map(|after| Instant::now() + after);
        last = Some((Instant::now(), run.decided_in));
    }
}

/// The least time from the end of a run whose decision took `decided_in` to the start of the
/// next.
pub fn pause_after(decided_in: Duration) -> Duration {
    MIN_INTERVAL.max(decided_in.saturating_mul(BUSY_FACTOR))
}

/// What one run reports to the loop.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// When to run again without a change, if ever.
    pub requeue_after: Option<Duration>,
    /// How long the engine took to decide (under the cache's read lock).
    pub decided_in: Duration,
}

/// One run: decide on the current snapshot and apply the writes.
pub async fn run_once(shared: &Shared) -> Run {
    let started = std::time::Instant::now();
    let now = shared.clock.now();
    // Changes from here on mark the cache again (and wake the loop for another run). The
    // engine then decides under the read lock, so reconciles go on meanwhile.
    shared.cache_write().take_schedule_dirty();
    let (schedule, before) = {
        let cache = shared.cache_read();
        let snap = cache.snapshot();
        let schedule = talm_hub_core::schedule::schedule(snap, now);
        let before: Vec<PrecacheBudget> = schedule
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::SetPrecacheBudgetStatus { name, .. } => snap
                    .precache_budgets()
                    .find(|b| b.metadata.name.as_deref() == Some(name.as_str()))
                    .cloned(),
                _ => None,
            })
            .collect();
        (schedule, before)
    };
    let decided_in = started.elapsed();
    let metrics = &shared.metrics.precache;
    metrics.runs.inc();
    tracing::debug!(
        writes = schedule.writes.len(),
        requeue_after_secs = ?schedule.requeue_after_secs,
        "pre-cache schedule decided"
    );
    // The grants that lower a rate first, then the rest (each part written concurrently: its
    // writes are independent); the gateway pushes a pass's lowered caps first too.
    let (lowering, rest) = schedule
        .writes
        .split_at(schedule.lowering.min(schedule.writes.len()));
    let mut result =
        super::writes::apply_writes_concurrently(shared, lowering, WRITES_AT_ONCE).await;
    if result.is_ok() {
        result = super::writes::apply_writes_concurrently(shared, rest, WRITES_AT_ONCE).await;
    }
    metrics.duration.observe(started.elapsed().as_secs_f64());
    metrics.observe_budgets(shared.cache_read().snapshot().precache_budgets());
    let events: Vec<Event> = schedule
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::SetPrecacheBudgetStatus { name, status } => Some((name, status)),
            _ => None,
        })
        .flat_map(|(name, status)| {
            let old = before
                .iter()
                .find(|b| b.metadata.name.as_deref() == Some(name.as_str()));
            warnings(old, name, status)
        })
        .collect();
    if result.is_ok() {
        super::writes::publish_budget_events(shared, &events, now).await;
    }
    let requeue_after = match result {
        Ok(()) => schedule.requeue_after_secs.map(Duration::from_secs),
        Err(e) => {
            tracing::warn!(error = %e, retry_in = ?RETRY_AFTER, "pre-cache schedule not fully written");
            Some(RETRY_AFTER)
        }
    };
    Run {
        requeue_after,
        decided_in,
    }
}

fn condition_false<'a>(
    status: Option<&'a PrecacheBudgetStatus>,
    type_: &str,
) -> Option<&'a talm_shared::api::Condition> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "False")
}

/// The Warning events for the budget conditions that turn False with `new` (a budget that was
/// already so, say at a hub restart with the status already written, is not announced again).
pub fn warnings(
    old: Option<&PrecacheBudget>,
    name: &str,
    new: &PrecacheBudgetStatus,
) -> Vec<Event> {
    let old_status = old.and_then(|b| b.status.as_ref());
    WARNED_CONDITIONS
        .iter()
        .filter(|t| condition_false(old_status, t).is_none())
        .filter_map(|t| condition_false(Some(new), t))
        .map(|c| Event {
            type_: EventType::Warning,
            reason: c.reason.clone(),
            action: format!("PrecacheBudget{}", c.type_),
            note: c.message.chars().take(1024).collect(),
            regarding: ObjectRef {
                api_version: precachebudget::API_VERSION.into(),
                kind: precachebudget::KIND.into(),
                namespace: String::new(),
                name: name.to_string(),
                uid: old.and_then(|b| b.metadata.uid.clone()).unwrap_or_default(),
            },
            related: None,
            annotations: Default::default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use talm_shared::api::rhacm::ManagedCluster;
    use talm_shared::api::spokeagent::SpokeAgent;

    use super::*;

    fn budget(conditions: serde_json::Value) -> PrecacheBudget {
        serde_json::from_value(json!({
            "apiVersion": "talm.dev/v1alpha1", "kind": "PrecacheBudget",
            "metadata": {"name": "site-a", "uid": "u-1"},
            "spec": {"bandwidth": "20Mi"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} is {status}"),
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn a_condition_turning_false_is_warned_once() {
        let ok = budget(json!([
            cond("Valid", "True", "SpecValid"),
            cond("ClustersSelected", "True", "Selected")
        ]));
        let bad = budget(json!([
            cond("Valid", "False", "InvalidBandwidth"),
            cond("ClustersSelected", "True", "Selected")
        ]));
        let new = bad.status.clone().unwrap();
        let ev = warnings(Some(&ok), "site-a", &new);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].type_, EventType::Warning);
        assert_eq!(ev[0].reason, "InvalidBandwidth");
        assert_eq!(ev[0].action, "PrecacheBudgetValid");
        assert_eq!(ev[0].note, "Valid is False");
        assert_eq!(ev[0].regarding.kind, "PrecacheBudget");
        assert_eq!(ev[0].regarding.uid, "u-1");
        // Already False: nothing new.
        assert!(warnings(Some(&bad), "site-a", &new).is_empty());
        // Both turning False at once (a new budget without status): two events.
        let both = budget(json!([
            cond("Valid", "False", "InvalidBandwidth"),
            cond("ClustersSelected", "False", "NoClusterSelected")
        ]));
        let ev = warnings(None, "site-a", both.status.as_ref().unwrap());
        let reasons: Vec<&str> = ev.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["InvalidBandwidth", "NoClusterSelected"]);
        // Other conditions are not warned about.
        let other = budget(json!([cond("RegistriesSeen", "False", "Unseen")]));
        assert!(warnings(None, "site-a", other.status.as_ref().unwrap()).is_empty());
    }

    #[test]
    fn runs_pause_at_least_the_floor_and_four_times_their_decision_time() {
        assert_eq!(pause_after(Duration::ZERO), MIN_INTERVAL);
        assert_eq!(pause_after(Duration::from_millis(5)), MIN_INTERVAL);
        // An 18 ms decision (10k clusters on a quiet machine) is followed by 72 ms without one.
        assert_eq!(
            pause_after(Duration::from_millis(18)),
            Duration::from_millis(72)
        );
    }

    #[test]
    fn only_what_the_scheduler_reads_is_relevant() {
        let mut snap = Snapshot::default();
        let mc: ManagedCluster = serde_json::from_value(json!({
            "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
            "metadata": {"name": "sno1", "labels": {"site": "a"}},
            "spec": {}
        }))
        .unwrap();
        assert!(relevant(&snap, &Object::ManagedCluster(mc.clone())), "new");
        snap.insert_managed_cluster(mc.clone());
        let mut same_labels = mc.clone();
        same_labels.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        assert!(!relevant(&snap, &Object::ManagedCluster(same_labels)));
        let mut relabelled = mc;
        relabelled.metadata.labels = Some([("site".to_string(), "b".to_string())].into());
        assert!(relevant(&snap, &Object::ManagedCluster(relabelled)));

        let agent = |precache: serde_json::Value, status: serde_json::Value| -> SpokeAgent {
            serde_json::from_value(json!({
                "apiVersion": "talm.dev/v1alpha1", "kind": "SpokeAgent",
                "metadata": {"name": "sno1", "namespace": "sno1"},
                "spec": {"precache": precache}, "status": status
            }))
            .unwrap()
        };
        let task =
            json!({"id": "t1", "spec": {}, "deadline": "2026-01-01T00:00:00Z", "hold": true});
        let a = agent(task.clone(), json!({"connected": true}));
        snap.insert_spoke_agent(a);
        // A heartbeat-ish status change (connection) is not read by the scheduler.
        let b = agent(task.clone(), json!({"connected": false}));
        assert!(!relevant(&snap, &Object::SpokeAgent(b)));
        let c = agent(
            task.clone(),
            json!({"connected": true,
            "precache": {"id": "t1", "state": "Starting",
                         "progress": {"bytesTotal": 100, "registries": ["r:5000"]}}}),
        );
        assert!(relevant(&snap, &Object::SpokeAgent(c.clone())));
        snap.insert_spoke_agent(c);
        // Transfer progress alone: left to the periodic refresh.
        let progressed = agent(
            task.clone(),
            json!({"connected": true,
            "precache": {"id": "t1", "state": "Starting",
                         "progress": {"bytesDone": 50, "bytesTotal": 100, "bytesPerSecond": 7,
                                      "registries": ["r:5000"]}}}),
        );
        assert!(!relevant(&snap, &Object::SpokeAgent(progressed)));
        // A finish is a decision input.
        let finished = agent(
            task.clone(),
            json!({"connected": true,
            "precache": {"id": "t1", "state": "Succeeded",
                         "progress": {"bytesDone": 100, "bytesTotal": 100,
                                      "registries": ["r:5000"]}}}),
        );
        assert!(relevant(&snap, &Object::SpokeAgent(finished)));
        let mut let_in = task;
        let_in["hold"] = json!(false);
        assert!(relevant(
            &snap,
            &Object::SpokeAgent(agent(let_in, json!({"connected": true})))
        ));
        assert!(relevant(&snap, &Object::PrecacheBudget(budget(json!([])))));
    }
}

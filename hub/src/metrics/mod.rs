//! The hub's Prometheus metrics (prometheus-client), in one registry under the `talm` prefix.
//!
//! - `talm_reconcile_runs_total`, `talm_reconcile_failures_total{error}` and
//!   `talm_reconcile_duration_seconds` (histogram), measured by a drop guard, and
//!   `talm_reconcile_phase_duration_seconds{phase}` (histogram): the time of each part of a
//!   reconcile (`decide`: the engine on the cached snapshot; `writes`: the Placement,
//!   binding, label and agent writes; `status`: the finalizer and status writes; `events`);
//! - per CGU (`cgu="<ns>/<name>"`): `talm_cgu_clusters{state}` (clusters by rollout state;
//!   `rolledback` counts the clusters whose rollback watchdog fired, rolled back or not),
//!   `talm_cgu_current_batch`, `talm_cgu_batch_started_timestamp_seconds` and
//!   `talm_cgu_time_in_batch_seconds` (as of the last reconcile); talm extensions:
//!   `talm_cgu_paused` and `talm_cgu_held` (1 while paused by `spec.paused` or held by an
//!   alert), `talm_cgu_excluded_seconds` (time not counted against the timeouts),
//!   `talm_cgu_failed_clusters` and `talm_cgu_failure_budget` (-1 without a budget);
//!   `talm_cgu_forecast_completion_timestamp_seconds{quantile="expected"|"p90"}` (the
//!   forecast's completion, 0 while it has none) and `talm_cgu_waiting_for_window` (1 while the
//!   next batch waits for a maintenance window);
//! - `talm_watch_events_total{kind}`, `talm_watch_bodies_skipped_total` (CGU watch events
//!   read for their metadata only, as echoes of the operator's own writes),
//!   `talm_events_published_total`, `talm_clusters_rolled_back_total` (clusters the rollback
//!   watchdog failed in a CGU, counted once each as the engine decides it),
//!   `talm_event_failures_total`, `talm_leader` (1 on the replica holding the Lease);
//! - the pre-cache scheduler's (`talm_precache_*`), in [`precache`].

pub mod precache;

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use talm_hub_core::conditions::{self as cond, reasons, types};
use talm_hub_core::validate::failure_budget;
use talm_hub_core::{reconcile, timeouts};
use talm_shared::api::cgu::ClusterGroupUpgrade;

/// Labels of the failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`OperatorError::metric_label`](crate::operator::OperatorError::metric_label).
    pub error: String,
}

/// Labels of per-CGU gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CguLabels {
    /// `namespace/name`.
    pub cgu: String,
}

/// Labels of the forecast completion gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CguQuantileLabels {
    /// `namespace/name`.
    pub cgu: String,
    /// `expected` or `p90`.
    pub quantile: String,
}

/// Labels of the clusters-by-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CguStateLabels {
    /// `namespace/name`.
    pub cgu: String,
    /// `complete`, `timedout`, `in-progress` or `pending`.
    pub state: String,
}

/// Labels of the reconcile-phase histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `decide`, `writes`, `status` or `events`.
    pub phase: &'static str,
}

/// The buckets of the reconcile histograms: 1 ms doubling to 8.192 s.
fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Labels of the watch-event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The watched kind.
    pub kind: String,
}

/// The rollout states counted by `talm_cgu_clusters`.
pub const CLUSTER_STATES: [&str; 5] = [
    "complete",
    "timedout",
    "in-progress",
    "pending",
    "rolledback",
];

/// Every metric the hub exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconcile_runs: Counter,
    /// Reconciles failed, by error kind.
    pub reconcile_failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Duration of each phase of a reconcile.
    pub reconcile_phase: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    /// Clusters by rollout state, per CGU.
    pub cgu_clusters: Family<CguStateLabels, Gauge>,
    /// The current batch (1-based; 0 when none), per CGU.
    pub cgu_current_batch: Family<CguLabels, Gauge>,
    /// When the current batch started (Unix seconds), per CGU.
    pub cgu_batch_started: Family<CguLabels, Gauge<f64, AtomicU64>>,
    /// Seconds in the current batch as of the last reconcile, per CGU.
    pub cgu_time_in_batch: Family<CguLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the CGU is paused by `spec.paused` (talm extension).
    pub cgu_paused: Family<CguLabels, Gauge>,
    /// 1 while the CGU is held by alerts (talm extension).
    pub cgu_held: Family<CguLabels, Gauge>,
    /// Seconds not counted against the timeouts (pauses, holds, window waits), per CGU.
    pub cgu_excluded: Family<CguLabels, Gauge>,
    /// Clusters counted against the failure budget, per CGU.
    pub cgu_failed: Family<CguLabels, Gauge>,
    /// The failure budget in clusters (-1 without `maxFailures`), per CGU.
    pub cgu_failure_budget: Family<CguLabels, Gauge>,
    /// The forecast's completion (Unix seconds; 0 while it has none), per CGU and quantile.
    pub cgu_forecast_completion: Family<CguQuantileLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the CGU's next batch waits for a maintenance window.
    pub cgu_waiting_for_window: Family<CguLabels, Gauge>,
    /// Watch events received, by kind.
    pub watch_events: Family<KindLabels, Counter>,
    /// CGU watch events whose spec and status were skipped: echoes of the operator's own
    /// writes (or older), which the cache already holds.
    pub watch_bodies_skipped: Counter,
    /// Events published.
    pub events_published: Counter,
    /// Clusters failed by their rollback watchdog (`ClusterRolledBack` decisions).
    pub clusters_rolled_back: Counter,
    /// Events that could not be published.
    pub event_failures: Counter,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// The pre-cache scheduler's metrics.
    pub precache: precache::PrecacheMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("talm");
        let precache = precache::PrecacheMetrics::register(&mut registry);
        let m = Metrics {
            precache,
            reconcile_runs: Counter::default(),
            reconcile_failures: Family::default(),
            reconcile_duration: reconcile_buckets(),
            reconcile_phase: Family::new_with_constructor(reconcile_buckets),
            cgu_clusters: Family::default(),
            cgu_current_batch: Family::default(),
            cgu_batch_started: Family::default(),
            cgu_time_in_batch: Family::default(),
            cgu_paused: Family::default(),
            cgu_held: Family::default(),
            cgu_excluded: Family::default(),
            cgu_failed: Family::default(),
            cgu_failure_budget: Family::default(),
            cgu_forecast_completion: Family::default(),
            cgu_waiting_for_window: Family::default(),
            watch_events: Family::default(),
            watch_bodies_skipped: Counter::default(),
            events_published: Counter::default(),
            clusters_rolled_back: Counter::default(),
            event_failures: Counter::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconcile_runs",
            "CGU reconciles run",
            m.reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "CGU reconciles failed, by error kind",
            m.reconcile_failures.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "CGU reconcile duration",
            prometheus_client::registry::Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        registry.register_with_unit(
            "reconcile_phase_duration",
            "Duration of each phase of a CGU reconcile",
            prometheus_client::registry::Unit::Seconds,
            m.reconcile_phase.clone(),
        );
        registry.register(
            "cgu_clusters",
            "Clusters of a CGU by rollout state",
            m.cgu_clusters.clone(),
        );
        registry.register(
            "cgu_current_batch",
            "The current batch of a CGU (1-based, 0 when none)",
            m.cgu_current_batch.clone(),
        );
        registry.register(
            "cgu_batch_started_timestamp_seconds",
            "When the current batch of a CGU started (Unix time)",
            m.cgu_batch_started.clone(),
        );
        registry.register(
            "cgu_time_in_batch_seconds",
            "Seconds a CGU has been in its current batch, as of its last reconcile",
            m.cgu_time_in_batch.clone(),
        );
        registry.register(
            "cgu_paused",
            "1 while a CGU is paused by spec.paused",
            m.cgu_paused.clone(),
        );
        registry.register(
            "cgu_held",
            "1 while a CGU is held by firing alerts (annotation talm.dev/held-by)",
            m.cgu_held.clone(),
        );
        registry.register_with_unit(
            "cgu_excluded",
            "Time of a CGU's pauses, holds and maintenance-window waits, not counted against its timeouts",
            prometheus_client::registry::Unit::Seconds,
            m.cgu_excluded.clone(),
        );
        registry.register(
            "cgu_failed_clusters",
            "Clusters of a CGU counted against its failure budget (timed out, pre-cache or backup failed)",
            m.cgu_failed.clone(),
        );
        registry.register(
            "cgu_failure_budget",
            "The failure budget of a CGU in clusters (-1 without remediationStrategy.maxFailures)",
            m.cgu_failure_budget.clone(),
        );
        registry.register(
            "cgu_forecast_completion_timestamp_seconds",
            "When the forecast expects a CGU to complete (Unix time; quantile expected or p90; 0 while it has no estimate)",
            m.cgu_forecast_completion.clone(),
        );
        registry.register(
            "cgu_waiting_for_window",
            "1 while the next batch of a CGU waits for a maintenance window",
            m.cgu_waiting_for_window.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events received, by kind",
            m.watch_events.clone(),
        );
        registry.register(
            "watch_bodies_skipped",
            "CGU watch events read for their metadata only, as echoes of the operator's own writes",
            m.watch_bodies_skipped.clone(),
        );
        registry.register(
            "events_published",
            "Kubernetes events published",
            m.events_published.clone(),
        );
        registry.register(
            "clusters_rolled_back",
            "Clusters failed in a CGU by their rollback watchdog (rolled back, or the rollback failed)",
            m.clusters_rolled_back.clone(),
        );
        registry.register(
            "event_failures",
            "Kubernetes events that could not be published",
            m.event_failures.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// Starts timing a reconcile; the duration is recorded when the guard drops.
    pub fn measure(&self) -> ReconcileMeasurer<'_> {
        self.reconcile_runs.inc();
        ReconcileMeasurer {
            start: Instant::now(),
            metrics: self,
        }
    }

    /// Records how long one phase of a reconcile took.
    pub fn phase(&self, phase: &'static str, took: std::time::Duration) {
        self.reconcile_phase
            .get_or_create(&PhaseLabels { phase })
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, label: &str) {
        self.reconcile_failures
            .get_or_create(&ErrorLabels {
                error: label.to_string(),
            })
            .inc();
    }

    /// Updates the per-CGU gauges from its status at `now`.
    pub fn observe_cgu(&self, key: &str, cgu: &ClusterGroupUpgrade, now: Timestamp) {
        let default = talm_shared::api::cgu::ClusterGroupUpgradeStatus::default();
        let status = cgu.status.as_ref().unwrap_or(&default);
        let mut counts = [0i64; 5];
        for c in status.clusters.iter().flatten() {
            match c.state.as_str() {
                "complete" => counts[0] += 1,
                "timedout" => counts[1] += 1,
                talm_hub_core::recovery::STATE_ROLLED_BACK
                | talm_hub_core::recovery::STATE_ROLLBACK_FAILED => counts[4] += 1,
                _ => {}
            }
        }
        let progress = status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_remediation_progress.as_ref());
        counts[2] = progress.map_or(0, |p| {
            p.values()
                .filter(|v| v.state != "Completed" && v.state != "RolledBack")
                .count()
                .try_into()
                .unwrap_or(i64::MAX)
        });
        // One pass over the plan, one lookup per recorded cluster: this runs after every
        // reconcile, on plans of 10,000 clusters.
        let planned: std::collections::HashSet<&str> = status
            .remediation_plan
            .iter()
            .flatten()
            .flatten()
            .map(String::as_str)
            .collect();
        let done_in_plan = status
            .clusters
            .iter()
            .flatten()
            .filter(|c| planned.contains(c.name.as_str()))
            .count();
        let planned: i64 = planned.len().try_into().unwrap_or(i64::MAX);
        let done_in_plan: i64 = done_in_plan.try_into().unwrap_or(i64::MAX);
        counts[3] = (planned - done_in_plan - counts[2]).max(0);
        for (state, n) in CLUSTER_STATES.iter().zip(counts) {
            self.cgu_clusters
                .get_or_create(&CguStateLabels {
                    cgu: key.to_string(),
                    state: (*state).to_string(),
                })
                .set(n);
        }
        let labels = CguLabels {
            cgu: key.to_string(),
        };
        let upgrade = status.status.as_ref();
        self.cgu_current_batch.get_or_create(&labels).set(i64::from(
            upgrade.and_then(|u| u.current_batch).unwrap_or(0),
        ));
        match upgrade.and_then(|u| u.current_batch_started_at.as_ref()) {
            Some(t) => {
                let started = t.0.as_millisecond() as f64 / 1000.0;
                self.cgu_batch_started.get_or_create(&labels).set(started);
                let secs = now.duration_since(t.0).as_secs_f64().max(0.0);
                self.cgu_time_in_batch.get_or_create(&labels).set(secs);
            }
            None => {
                self.cgu_batch_started.get_or_create(&labels).set(0.0);
                self.cgu_time_in_batch.get_or_create(&labels).set(0.0);
            }
        }
        let paused = cond::find(&status.conditions, types::PAUSED)
            .filter(|c| c.status == "True")
            .map(|c| c.reason.as_str());
        self.cgu_paused
            .get_or_create(&labels)
            .set(i64::from(paused == Some(reasons::PAUSED)));
        self.cgu_held
            .get_or_create(&labels)
            .set(i64::from(paused == Some(reasons::HELD_BY_ALERT)));
        self.cgu_excluded.get_or_create(&labels).set(
            upgrade
                .map(|u| timeouts::excluded(u, now).as_secs())
                .unwrap_or(0),
        );
        let failed = reconcile::failed_clusters(status).len();
        self.cgu_failed
            .get_or_create(&labels)
            .set(failed.try_into().unwrap_or(i64::MAX));
        let plan = status.remediation_plan.as_deref().unwrap_or_default();
        let budget = cgu
            .spec
            .remediation_strategy
            .max_failures
            .as_ref()
            .and_then(|v| failure_budget(v, reconcile::status_cluster_count(status, plan)).ok())
            .map_or(-1, |b| b.try_into().unwrap_or(i64::MAX));
        self.cgu_failure_budget.get_or_create(&labels).set(budget);
        let forecast = status.forecast.as_ref();
        for (quantile, at) in [
            ("expected", forecast.and_then(|f| f.completion.as_ref())),
            ("p90", forecast.and_then(|f| f.completion_p90.as_ref())),
        ] {
            self.cgu_forecast_completion
                .get_or_create(&CguQuantileLabels {
                    cgu: key.to_string(),
                    quantile: quantile.to_string(),
                })
                .set(at.map_or(0.0, |t| t.0.as_millisecond() as f64 / 1000.0));
        }
        let waiting = upgrade.is_some_and(|u| u.waiting_for_window_since.is_some());
        self.cgu_waiting_for_window
            .get_or_create(&labels)
            .set(i64::from(waiting));
    }

    /// Drops the per-CGU series of a deleted CGU.
    pub fn forget_cgu(&self, key: &str) {
        for state in CLUSTER_STATES {
            self.cgu_clusters.remove(&CguStateLabels {
                cgu: key.to_string(),
                state: state.to_string(),
            });
        }
        let labels = CguLabels {
            cgu: key.to_string(),
        };
        self.cgu_current_batch.remove(&labels);
        self.cgu_batch_started.remove(&labels);
        self.cgu_time_in_batch.remove(&labels);
        self.cgu_paused.remove(&labels);
        self.cgu_held.remove(&labels);
        self.cgu_excluded.remove(&labels);
        self.cgu_failed.remove(&labels);
        self.cgu_failure_budget.remove(&labels);
        for quantile in ["expected", "p90"] {
            self.cgu_forecast_completion.remove(&CguQuantileLabels {
                cgu: key.to_string(),
                quantile: quantile.to_string(),
            });
        }
        self.cgu_waiting_for_window.remove(&labels);
    }
}

/// Records a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileMeasurer<'a> {
    start: Instant,
    metrics: &'a Metrics,
}

impl Drop for ReconcileMeasurer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn exports_reconcile_and_cgu_metrics() {
        let m = Metrics::new();
        {
            let _g = m.measure();
        }
        m.failed("conflict");
        m.phase("decide", std::time::Duration::from_millis(3));
        m.phase("decide", std::time::Duration::from_millis(300));
        m.phase("status", std::time::Duration::from_millis(20));
        let cgu: ClusterGroupUpgrade = serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"remediationStrategy": {"maxConcurrency": 1}},
            "status": {
                "remediationPlan": [["a"], ["b"], ["c"]],
                "clusters": [{"name": "a", "state": "complete"},
                             {"name": "x", "state": "rolledback"}],
                "status": {"currentBatch": 2, "currentBatchStartedAt": "2026-01-01T00:00:00Z",
                           "currentBatchRemediationProgress": {"b": {"state": "InProgress"}},
                           "waitingForWindowSince": "2026-01-01T00:00:00Z"},
                "forecast": {"completion": "2026-01-01T01:00:00Z"}
            }
        }))
        .unwrap();
        m.observe_cgu("n/c", &cgu, "2026-01-01T00:01:00Z".parse().unwrap());
        let text = m.encode();
        assert!(text.contains("talm_reconcile_runs_total 1"), "{text}");
        assert!(text.contains("talm_reconcile_failures_total{error=\"conflict\"} 1"));
        assert!(text.contains("talm_reconcile_duration_seconds_count 1"));
        assert!(
            text.contains("talm_reconcile_phase_duration_seconds_count{phase=\"decide\"} 2"),
            "{text}"
        );
        assert!(text.contains("talm_reconcile_phase_duration_seconds_sum{phase=\"status\"} 0.02"));
        // 3 ms falls in the 4 ms bucket, 300 ms does not.
        assert!(text.contains(
            "talm_reconcile_phase_duration_seconds_bucket{le=\"0.004\",phase=\"decide\"} 1"
        ));
        assert!(text.contains("talm_cgu_current_batch{cgu=\"n/c\"} 2"));
        assert!(text.contains("talm_cgu_clusters{cgu=\"n/c\",state=\"complete\"} 1"));
        assert!(text.contains("talm_cgu_clusters{cgu=\"n/c\",state=\"in-progress\"} 1"));
        assert!(text.contains("talm_cgu_clusters{cgu=\"n/c\",state=\"pending\"} 1"));
        assert!(text.contains("talm_cgu_clusters{cgu=\"n/c\",state=\"rolledback\"} 1"));
        assert!(text.contains("talm_clusters_rolled_back_total 0"), "{text}");
        assert!(text.contains("talm_cgu_time_in_batch_seconds{cgu=\"n/c\"} 60"));
        assert!(text.contains("talm_cgu_paused{cgu=\"n/c\"} 0"), "{text}");
        assert!(text.contains("talm_cgu_failure_budget{cgu=\"n/c\"} -1"));
        assert!(text.contains(
            "talm_cgu_forecast_completion_timestamp_seconds{cgu=\"n/c\",quantile=\"expected\"} 1767229200.0"
        ), "{text}");
        assert!(
            text.contains(
                "talm_cgu_forecast_completion_timestamp_seconds{cgu=\"n/c\",quantile=\"p90\"} 0.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("talm_cgu_waiting_for_window{cgu=\"n/c\"} 1"),
            "{text}"
        );
        m.forget_cgu("n/c");
        assert!(!m.encode().contains("cgu=\"n/c\""));
    }

    #[test]
    fn exports_holds_excluded_time_and_failures_against_the_budget() {
        let m = Metrics::new();
        let cgu: ClusterGroupUpgrade = serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "n"},
            "spec": {"remediationStrategy": {"maxConcurrency": 1, "maxFailures": "50%"}},
            "status": {
                "conditions": [{"type": "Paused", "status": "True", "reason": "HeldByAlert",
                                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "remediationPlan": [["a"], ["b"], ["c"], ["d"]],
                "clusters": [{"name": "a", "state": "timedout"}],
                "precaching": {"status": {"e": "UnrecoverableError", "a": "Succeeded"}},
                "status": {"excludedSeconds": 100, "pausedAt": "2026-01-01T00:00:00Z"}
            }
        }))
        .unwrap();
        m.observe_cgu("n/c", &cgu, "2026-01-01T00:01:00Z".parse().unwrap());
        let text = m.encode();
        assert!(text.contains("talm_cgu_held{cgu=\"n/c\"} 1"), "{text}");
        assert!(text.contains("talm_cgu_paused{cgu=\"n/c\"} 0"));
        assert!(text.contains("talm_cgu_excluded_seconds{cgu=\"n/c\"} 160"));
        assert!(text.contains("talm_cgu_failed_clusters{cgu=\"n/c\"} 2"));
        // 50% of the 5 clusters (a..d planned, e dropped by pre-caching), rounded down.
        assert!(text.contains("talm_cgu_failure_budget{cgu=\"n/c\"} 2"));
    }
}

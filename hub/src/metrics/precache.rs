//! The pre-cache scheduler's metrics (issue 17), registered in the hub's one registry under
//! the `talm` prefix:
//!
//! - `talm_precache_scheduler_runs_total` and `talm_precache_scheduler_duration_seconds`
//!   (histogram): scheduler runs and how long each took (deciding and writing);
//! - `talm_precache_grants_written_total`: SpokeAgent grants written (a hold lifted or a cap
//!   changed);
//! - per budget (`budget="<name>"`), from its status as last written:
//!   `talm_precache_budget_active_clusters`, `talm_precache_budget_queued_clusters`,
//!   `talm_precache_budget_done_clusters`, `talm_precache_budget_allotted_bytes_per_second`
//!   and `talm_precache_budget_in_use_bytes_per_second`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use talm_shared::api::precachebudget::PrecacheBudget;

/// Labels of the per-budget gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    /// The PrecacheBudget's name.
    pub budget: String,
}

/// The pre-cache scheduler's metrics.
#[derive(Debug)]
pub struct PrecacheMetrics {
    /// Scheduler runs.
    pub runs: Counter,
    /// Duration of a run (decide and write).
    pub duration: Histogram,
    /// Grants written.
    pub grants_written: Counter,
    /// Selected clusters downloading, per budget.
    pub active: Family<BudgetLabels, Gauge>,
    /// Selected clusters queued, per budget.
    pub queued: Family<BudgetLabels, Gauge>,
    /// Selected clusters done, per budget.
    pub done: Family<BudgetLabels, Gauge>,
    /// Sum of the caps of the active clusters, per budget.
    pub allotted: Family<BudgetLabels, Gauge>,
    /// Sum of the throughput the active clusters report, per budget.
    pub in_use: Family<BudgetLabels, Gauge>,
}

impl PrecacheMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            runs: Counter::default(),
            // 100 µs doubling to about 1.6 s.
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            grants_written: Counter::default(),
            active: Family::default(),
            queued: Family::default(),
            done: Family::default(),
            allotted: Family::default(),
            in_use: Family::default(),
        };
        registry.register(
            "precache_scheduler_runs",
            "Pre-cache scheduler runs",
            m.runs.clone(),
        );
        registry.register_with_unit(
            "precache_scheduler_duration",
            "Duration of a pre-cache scheduler run (decide and write)",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "precache_grants_written",
            "SpokeAgent pre-cache grants written (a hold lifted or set, a cap changed)",
            m.grants_written.clone(),
        );
        registry.register(
            "precache_budget_active_clusters",
            "Clusters selected by a PrecacheBudget that are downloading",
            m.active.clone(),
        );
        registry.register(
            "precache_budget_queued_clusters",
            "Clusters selected by a PrecacheBudget waiting to be let in",
            m.queued.clone(),
        );
        registry.register(
            "precache_budget_done_clusters",
            "Clusters selected by a PrecacheBudget whose pre-cache task finished",
            m.done.clone(),
        );
        registry.register(
            "precache_budget_allotted_bytes_per_second",
            "Sum of the caps given to a PrecacheBudget's active clusters",
            m.allotted.clone(),
        );
        registry.register(
            "precache_budget_in_use_bytes_per_second",
            "Sum of the throughput a PrecacheBudget's active clusters report",
            m.in_use.clone(),
        );
        m
    }

    /// Sets the per-budget gauges from the budgets' statuses (budgets gone are dropped).
    pub fn observe_budgets<'a>(&self, budgets: impl IntoIterator<Item = &'a PrecacheBudget>) {
        for f in [
            &self.active,
            &self.queued,
            &self.done,
            &self.allotted,
            &self.in_use,
        ] {
            f.clear();
        }
        for b in budgets {
            let labels = BudgetLabels {
                budget: b.metadata.name.clone().unwrap_or_default(),
            };
            let st = b.status.clone().unwrap_or_default();
            self.active.get_or_create(&labels).set(st.active);
            self.queued.get_or_create(&labels).set(st.queued);
            self.done.get_or_create(&labels).set(st.done);
            self.allotted
                .get_or_create(&labels)
                .set(st.bandwidth_allotted);
            self.in_use.get_or_create(&labels).set(st.bandwidth_in_use);
        }
    }
}

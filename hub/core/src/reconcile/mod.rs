//! The reconcile entry point and its flow: one CGU + snapshot + now → [`Decision`].
//!
//! TALM reconciles a CGU in a fixed order (docs/contract.md §3.1): make sure the cleanup
//! finalizer is on, clean up and release the CGU when it is being deleted, run the completion
//! path once a `Succeeded` condition exists, and otherwise take the "not started" path (§3.2)
//! until `Progressing` turns True, then the "in progress" path (§3.6). This module holds that
//! flow, the completion path and the state every phase shares; the phases live beside it:
//!
//! - [`start`](self::start): the not-started steps, one function each;
//! - [`blocking`](self::blocking): waiting for blocking CGUs and the partial-blocking filter;
//! - [`gates`](self::gates): the pre-cache and backup gates through the agents;
//! - [`enforcement`](self::enforcement): the Placements and PlacementBindings that enforce
//!   policies on released clusters, and their cleanup;
//! - [`progress`](self::progress): batches, per-cluster progression and timeouts;
//! - [`works`](self::works): what changes for a ManifestWork rollout;
//! - [`pause`](self::pause): pauses and alert holds (talm extension);
//! - [`budget`](self::budget): the failure budget (talm extension);
//! - [`rollback`](self::rollback): the rollback watchdog (talm extension, `spec.recovery`).
//!
//! Deliberate fixes to TALM's quirks: all-failed pre-cache/backup ends the CGU instead of
//! hanging; a timed-out cluster leaves the Placements at once; partial-blocking filtering keeps
//! selection order; the canary timeout check counts the canary batches in the plan; and at the
//! end nothing keeps enforcing, even with `deleteObjects: false` (the objects stay, emptied).

mod blocking;
mod budget;
mod enforcement;
mod gates;
mod pause;
mod progress;
mod rollback;
mod start;
mod works;

use std::collections::{BTreeMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{
    ClusterGroupUpgrade, ClusterGroupUpgradeStatus, ClusterState, FINALIZER,
    ManagedPolicyForUpgrade, UpgradeStatus,
};

use crate::conditions::{self as cond, reasons, types};
use crate::decision::{Decision, Event, FinalizerChange, Notes, Requeue, Write};
use crate::events;
use crate::graph::UpdateGraph;
use crate::installplan;
use crate::snapshot::{Compliance, Snapshot};

pub use blocking::{BLOCKING_FILTER_ANNOTATION, BLOCKING_MODE_ANNOTATION};
pub use budget::{failed_clusters, status_cluster_count};
pub use pause::{HELD_BY_ANNOTATION, held_by};
pub use progress::SOAK_ANNOTATION;

/// Everything a reconcile needs besides the CGU and the snapshot.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The current time. The engine never reads the clock.
    pub now: Timestamp,
    /// The update-graph lookup for ClusterVersion policies without an image.
    pub graph: &'a dyn UpdateGraph,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

// Requeue intervals in seconds (docs/contract.md §3.9), named by what they wait for.

/// Look again after a problem only an edit can fix: cluster selection, an unsupported rollout
/// type, the platform image, the policy dependency order, an invalid pre-cache spec.
const FIX_RETRY_SECS: u64 = 300;
/// Look again after a validation failure that a new object can fix (missing templates).
const VALIDATION_RETRY_SECS: u64 = 60;
/// Look again at a CGU left with `enable: false`.
const NOT_ENABLED_RECHECK_SECS: u64 = 300;
/// Look again at a paused or held CGU (a spec or annotation change also wakes it).
const PAUSED_RECHECK_SECS: u64 = 300;
/// Poll blocking CGUs that are missing or not complete yet.
const BLOCKING_POLL_SECS: u64 = 60;
/// Poll the agents while pre-caching or backup runs.
const AGENT_TASK_POLL_SECS: u64 = 30;
/// Look again at clusters soaking in a compliant policy.
const SOAK_POLL_SECS: u64 = 30;
/// The longest wait between two passes during a batch (the first comes this long after the
/// batch started).
const BATCH_POLL: SignedDuration = SignedDuration::from_mins(5);
/// [`BATCH_POLL`] in seconds.
const BATCH_POLL_SECS: u64 = BATCH_POLL.as_secs().unsigned_abs();

/// Reconciles one CGU.
pub fn reconcile(cgu: &ClusterGroupUpgrade, snap: &Snapshot, ctx: &Context<'_>) -> Decision {
    let mut r = Run {
        cgu,
        snap,
        now: ctx.now,
        graph: ctx.graph,
        status: cgu.status.clone().unwrap_or_default(),
        writes: Vec::new(),
        events: Vec::new(),
        requeue: Requeue::Never,
        finalizer: FinalizerChange::None,
        notes: Notes::default(),
        recorded: None,
        new_failures: false,
        observed: Vec::new(),
    };
    r.run();
    // TALM's status holds `status` (UpgradeStatus) as a plain struct: it is always written,
    // `{}` before the start (docs/contract.md §2.2).
    r.status.status.get_or_insert_with(Default::default);
    Decision {
        status: r.status,
        finalizer: r.finalizer,
        writes: coalesce(r.writes),
        events: r.events,
        requeue: r.requeue,
        notes: r.notes,
    }
}

/// One reconcile in the making: the inputs, and the decision built up phase by phase.
struct Run<'a> {
    cgu: &'a ClusterGroupUpgrade,
    snap: &'a Snapshot,
    now: Timestamp,
    graph: &'a dyn UpdateGraph,
    status: ClusterGroupUpgradeStatus,
    writes: Vec<Write>,
    events: Vec<Event>,
    requeue: Requeue,
    finalizer: FinalizerChange,
    notes: Notes,
    /// Names in `status.clusters`, built on first use (O(1) membership at fleet scale).
    recorded: Option<HashSet<String>>,
    /// Set when this pass recorded a cluster failed outside a batch timeout (a rollback), so
    /// the failure budget is checked.
    new_failures: bool,
    /// Times to compliance seen in this pass, for the forecast: (index into
    /// `managedPoliciesForUpgrade`, release → moved past the policy).
    observed: Vec<(usize, SignedDuration)>,
}

impl<'a> Run<'a> {
    // ----- small helpers -------------------------------------------------------------------

    fn name(&self) -> &str {
        self.cgu.metadata.name.as_deref().unwrap_or("")
    }

    fn namespace(&self) -> &str {
        self.cgu.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn enabled(&self) -> bool {
        self.cgu.spec.enable.unwrap_or(true)
    }

    fn timeout_minutes(&self) -> i32 {
        self.cgu.spec.remediation_strategy.timeout
    }

    fn set_cond(&mut self, type_: &str, status: bool, reason: &str, message: &str) -> bool {
        cond::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            None,
            self.now,
        )
    }

    fn cond_message(&self, type_: &str) -> Option<String> {
        cond::find(&self.status.conditions, type_).map(|c| c.message.clone())
    }

    /// Keeps the soonest requeue.
    fn requeue(&mut self, r: Requeue) {
        let rank = |r: Requeue| match r {
            Requeue::Immediately => 0u64,
            Requeue::After(s) => s.max(1),
            Requeue::Never => u64::MAX,
        };
        if rank(r) < rank(self.requeue) {
            self.requeue = r;
        }
    }

    fn upgrade_status(&mut self) -> &mut UpgradeStatus {
        self.status.status.get_or_insert_with(Default::default)
    }

    fn delete_objects(&self) -> bool {
        self.cgu
            .spec
            .actions
            .as_ref()
            .and_then(|a| a.after_completion.as_ref())
            .and_then(|a| a.delete_objects)
            .unwrap_or(true)
    }

    fn compliance(&self, cluster: &str, p: &ManagedPolicyForUpgrade) -> Compliance {
        match self.snap.root_policy(&p.namespace, &p.name) {
            Some(root) => root.compliance(cluster),
            None => Compliance::NonCompliant,
        }
    }

    fn policies_for_upgrade(&self) -> Vec<ManagedPolicyForUpgrade> {
        self.status
            .managed_policies_for_upgrade
            .clone()
            .unwrap_or_default()
    }

    fn plan(&self) -> Vec<Vec<String>> {
        self.status.remediation_plan.clone().unwrap_or_default()
    }

    // ----- top level -----------------------------------------------------------------------

    fn run(&mut self) {
        let has_finalizer = self
            .cgu
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
        if self.cgu.metadata.deletion_timestamp.is_some() {
            if has_finalizer {
                self.delete_resources();
                self.finalizer = FinalizerChange::Remove;
            }
            return;
        }
        if !has_finalizer {
            self.finalizer = FinalizerChange::Add;
            self.events.push(events::created(self.cgu));
            self.requeue(Requeue::Immediately);
            return;
        }
        if cond::find(&self.status.conditions, types::SUCCEEDED).is_some() {
            self.completion();
            return;
        }
        let progressing = cond::is_true(&self.status.conditions, types::PROGRESSING);
        if progressing {
            self.in_progress();
        } else {
            self.not_started();
        }
    }

    /// The completion path: cleanup and the final event, once.
    fn completion(&mut self) {
        let done = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.completed_at.as_ref())
            .is_some();
        if done {
            return;
        }
        if self.delete_objects() {
            self.delete_resources();
        } else {
            // Keep the objects for inspection, but release every cluster: nothing the CGU
            // created keeps enforcing after it ends.
            self.empty_placements();
            self.clear_agent_tasks();
            self.writes
                .extend(installplan::cleanup_all(self.cgu, self.snap));
        }
        let succeeded = cond::is_true(&self.status.conditions, types::SUCCEEDED);
        let reason = cond::find(&self.status.conditions, types::SUCCEEDED)
            .map(|c| c.reason.clone())
            .unwrap_or_default();
        let plan = self.plan();
        let total: usize = plan.iter().map(Vec::len).sum();
        if succeeded {
            self.events
                .push(events::completed(self.cgu, plan.len(), total));
        } else if reason == reasons::TIMED_OUT {
            let timed_out: Vec<String> = self
                .status
                .clusters
                .iter()
                .flatten()
                .filter(|c| c.state == "timedout")
                .map(|c| c.name.clone())
                .collect();
            self.events.push(events::timed_out(self.cgu, &timed_out));
        }
        // A pause still open when the CGU ended is closed: the total stays true.
        self.close_pause();
        let now = self.now;
        let us = self.upgrade_status();
        us.completed_at = Some(Time(now));
        us.current_batch = None;
        us.current_batch_started_at = None;
        us.batch_start_excluded_seconds = None;
        us.current_batch_remediation_progress = None;
    }

    // ----- shared by the phases -------------------------------------------------------------

    /// Ends the rollout: `Progressing=False/<progressing_reason>` and `Succeeded` with the outcome,
    /// both with `message`, and requeue at once: the completion path runs on the next pass.
    fn end(
        &mut self,
        progressing_reason: &str,
        succeeded: bool,
        succeeded_reason: &str,
        message: &str,
    ) {
        self.set_cond(types::PROGRESSING, false, progressing_reason, message);
        self.set_cond(types::SUCCEEDED, succeeded, succeeded_reason, message);
        self.requeue(Requeue::Immediately);
    }

    fn fail_no_clusters(&mut self, message: &str) {
        self.end(reasons::COMPLETED, false, reasons::FAILED, message);
    }

    /// Appends a final outcome to `status.clusters` unless the cluster already has one.
    fn record_outcome(&mut self, entry: ClusterState) {
        let recorded = self.recorded.get_or_insert_with(|| {
            self.status
                .clusters
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect()
        });
        if recorded.insert(entry.name.clone()) {
            self.status
                .clusters
                .get_or_insert_with(Vec::new)
                .push(entry);
        }
    }

    fn record_complete(&mut self, cluster: &str) {
        self.record_outcome(ClusterState {
            name: cluster.to_string(),
            state: "complete".to_string(),
            current_policy: None,
            current_manifest_work: None,
        });
    }
}

/// Keeps only the last write to each Placement (a batch releases clusters one by one; the
/// adapter needs to apply only the final selection), preserving the order of what remains.
fn coalesce(writes: Vec<Write>) -> Vec<Write> {
    let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        if let Write::ApplyPlacement(p) = w {
            last.insert(
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
                i,
            );
        }
    }
    writes
        .into_iter()
        .enumerate()
        .filter(|(i, w)| match w {
            Write::ApplyPlacement(p) => {
                last.get(&(
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                )) == Some(i)
            }
            _ => true,
        })
        .map(|(_, w)| w)
        .collect()
}

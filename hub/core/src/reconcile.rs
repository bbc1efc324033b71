//! The reconcile entry point: one CGU + snapshot + now → [`Decision`].
//!
//! The flow is TALM's (talm-behaviour.md §3.1): finalizer, deletion, completion path,
//! "not started" path (§3.2) and "in progress" path (§3.6), with these deliberate fixes:
//! all-failed pre-cache/backup ends the CGU instead of hanging; a timed-out cluster leaves the
//! Placements at once; partial-blocking filtering keeps selection order; the canary timeout
//! check counts the canary batches in the plan; and at the end nothing keeps enforcing, even
//! with `deleteObjects: false` (the objects stay, emptied).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{
    BackupStatus, ClusterGroupUpgrade, ClusterGroupUpgradeStatus, ClusterRemediationProgress,
    ClusterState, FINALIZER, ManagedPolicyForUpgrade, PolicyStatus, PrecachingStatus,
    UpgradeStatus,
};
use talm_shared::api::rhacm::{
    BindingOverrides, ClusterPredicate, ClusterSelector, Placement, PlacementBinding,
    PlacementSpec, PlacementSubject, Policy, Toleration,
};
use talm_shared::api::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

use crate::conditions::{self as cond, messages as msg, reasons, types};
use crate::decision::{Decision, Event, FinalizerChange, Notes, Requeue, Write};
use crate::events;
use crate::graph::UpdateGraph;
use crate::installplan;
use crate::names;
use crate::plan::{build_plan, computed_max_concurrency};
use crate::precache;
use crate::selection::{SelectionError, select_clusters};
use crate::snapshot::{Compliance, Snapshot};
use crate::tasks::{self, ClusterInput, Kind, NewTask, states};
use crate::timeouts::{batch_timeout, global_timed_out};
use crate::validate::{dependency_order, platform_image, spec_failure, validate_policies};

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

/// Policy annotation: seconds a policy must stay compliant before the cluster moves on.
pub const SOAK_ANNOTATION: &str = "ran.openshift.io/soak-seconds";
/// CGU annotation: `partial` lets blocking CGUs count as done once they have any `Succeeded`.
pub const BLOCKING_MODE_ANNOTATION: &str = "ran.openshift.io/blocking-cgu-completion-mode";
/// CGU annotation: `"true"` (with partial mode) keeps only clusters complete in every blocker.
pub const BLOCKING_FILTER_ANNOTATION: &str = "ran.openshift.io/blocking-cgu-cluster-filtering";

/// Labels on created Placements and bindings.
pub mod labels {
    #![allow(missing_docs)]
    pub const APP: &str = "app";
    pub const APP_VALUE: &str = "openshift-cluster-group-upgrades";
    pub const CGU: &str = "openshift-cluster-group-upgrades/clusterGroupUpgrade";
    pub const CGU_NS: &str = "openshift-cluster-group-upgrades/clusterGroupUpgradeNamespace";
    pub const FOR_POLICY: &str = "openshift-cluster-group-upgrades/forPolicy";
    pub const VELERO_EXCLUDE: &str = "velero.io/exclude-from-backup";
}

const FIVE_MIN: u64 = 300;
const ONE_MIN: u64 = 60;
const THIRTY_S: u64 = 30;

const IN_PROGRESS: &str = "InProgress";
const NOT_STARTED: &str = "NotStarted";
const COMPLETED: &str = "Completed";

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
    };
    r.run();
    Decision {
        status: r.status,
        finalizer: r.finalizer,
        writes: coalesce(r.writes),
        events: r.events,
        requeue: r.requeue,
        notes: r.notes,
    }
}

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
}

/// What the not-started path learned about the policies.
struct Policies {
    present: Vec<ManagedPolicyForUpgrade>,
    compliant: Vec<ManagedPolicyForUpgrade>,
    platform_image: Option<String>,
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
        let now = self.now;
        let us = self.upgrade_status();
        us.completed_at = Some(Time(now));
        us.current_batch = None;
        us.current_batch_started_at = None;
        us.current_batch_remediation_progress = None;
    }

    // ----- not started ---------------------------------------------------------------------

    fn not_started(&mut self) {
        let spec = &self.cgu.spec;
        // 1. Clusters.
        let clusters = match select_clusters(spec, self.snap) {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                let changed = self.cond_message(types::CLUSTERS_SELECTED).as_deref()
                    != Some(message.as_str());
                self.set_cond(
                    types::CLUSTERS_SELECTED,
                    false,
                    reasons::CLUSTER_NOT_FOUND,
                    &message,
                );
                // The event exists for clusters that are not ManagedClusters (§2.7).
                if let (true, SelectionError::NotManagedCluster { all, .. }) = (changed, &e) {
                    self.events.push(events::validation_failure(
                        self.cgu,
                        "missing clusters",
                        all,
                    ));
                }
                self.notes
                    .pending_actions
                    .push(format!("fix cluster selection: {message}"));
                self.requeue(Requeue::After(FIVE_MIN));
                return;
            }
        };
        let cmc =
            computed_max_concurrency(spec.remediation_strategy.max_concurrency, clusters.len());
        if self.status.computed_max_concurrency != Some(cmc) {
            // TALM writes the new value and comes straight back.
            self.requeue(Requeue::Immediately);
        }
        self.status.computed_max_concurrency = Some(cmc);
        self.set_cond(
            types::CLUSTERS_SELECTED,
            true,
            reasons::CLUSTER_SELECTION_COMPLETED,
            msg::CLUSTERS_VALID,
        );

        // 2–3. Policies.
        if spec
            .manifest_work_templates
            .as_ref()
            .is_some_and(|t| !t.is_empty())
        {
            self.set_cond(
                types::VALIDATED,
                false,
                "UnsupportedRolloutType",
                "ManifestWork rollouts (spec.manifestWorkTemplates) are not supported by talm yet",
            );
            self.requeue(Requeue::After(FIVE_MIN));
            return;
        }
        let Some(policies) = self.validate(&clusters) else {
            return;
        };

        // 4. Plan.
        let present = policies.present.clone();
        let non_compliant = |c: &str| {
            present
                .iter()
                .any(|p| self.compliance(c, p) == Compliance::NonCompliant)
        };
        let canaries = spec
            .remediation_strategy
            .canaries
            .clone()
            .unwrap_or_default();
        let plan = build_plan(&clusters, &canaries, cmc, &non_compliant);
        let nc: HashSet<String> = clusters
            .iter()
            .filter(|c| non_compliant(c))
            .cloned()
            .collect();
        self.status.remediation_plan = if plan.is_empty() {
            None
        } else {
            Some(plan.clone())
        };

        // 5. Enforcement objects (empty selections).
        self.ensure_enforcement_objects(&present);

        // 6. Pre-caching.
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        if spec.pre_caching.unwrap_or(false) && !plan.is_empty() {
            match self.precache(&plan, &policies) {
                Gate::Wait => return,
                Gate::AllFailed => {
                    self.fail_no_clusters(msg::NO_CLUSTERS_PRECACHE);
                    return;
                }
                Gate::Done(f) => failed.extend(
                    f.into_iter()
                        .map(|(c, s)| (c, format!("pre-caching failed: {s}"))),
                ),
            }
        }

        // 7. Enable.
        if !self.enabled() {
            self.set_cond(
                types::PROGRESSING,
                false,
                reasons::NOT_ENABLED,
                msg::NOT_ENABLED,
            );
            self.explain_excluded(&clusters, &nc, &failed, &BTreeSet::new());
            self.notes
                .pending_actions
                .push("set spec.enable to true to start remediation".to_string());
            self.requeue(Requeue::After(FIVE_MIN));
            return;
        }

        // 8. Start the clock.
        if self
            .status
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .is_none()
        {
            let total: usize = plan.iter().map(Vec::len).sum();
            self.events
                .push(events::started(self.cgu, plan.len(), total));
            let now = self.now;
            self.upgrade_status().started_at = Some(Time(now));
        }

        // 9. Blocking CRs.
        if !self.blocking_satisfied() {
            return;
        }

        // 10. Backup.
        if spec.backup.unwrap_or(false) && !plan.is_empty() {
            let remaining: Vec<Vec<String>> = plan
                .iter()
                .map(|b| {
                    b.iter()
                        .filter(|c| !failed.contains_key(*c))
                        .cloned()
                        .collect()
                })
                .filter(|b: &Vec<String>| !b.is_empty())
                .collect();
            match self.backup(&remaining) {
                Gate::Wait => return,
                Gate::AllFailed => {
                    self.fail_no_clusters(msg::NO_CLUSTERS_BACKUP);
                    return;
                }
                Gate::Done(f) => failed.extend(
                    f.into_iter()
                        .map(|(c, s)| (c, format!("backup failed: {s}"))),
                ),
            }
        }

        // 11. Partial-blocking cluster filter (selection order kept).
        let mut filtered_out: BTreeSet<String> = BTreeSet::new();
        let mut selected = clusters.clone();
        if self.partial_filtering() {
            let keep = self.complete_in_all_blockers();
            selected.retain(|c| {
                let k = keep.contains(c);
                if !k {
                    filtered_out.insert(c.clone());
                }
                k
            });
            if selected.is_empty() {
                self.fail_no_clusters(msg::NO_CLUSTERS_BLOCKING);
                return;
            }
        }

        // 12. Final plan without failed or filtered clusters; actions.
        let eligible: Vec<String> = selected
            .iter()
            .filter(|c| !failed.contains_key(*c))
            .cloned()
            .collect();
        let eligible_canaries: Vec<String> = canaries
            .iter()
            .filter(|c| eligible.contains(c))
            .cloned()
            .collect();
        let final_plan = build_plan(&eligible, &eligible_canaries, cmc, &|c: &str| {
            nc.contains(c)
        });
        self.status.remediation_plan = if final_plan.is_empty() {
            None
        } else {
            Some(final_plan.clone())
        };
        if final_plan.is_empty() && !plan.is_empty() {
            // Every cluster that needed remediation was dropped: that is a failure, not
            // "already compliant".
            let message = if failed.values().any(|r| r.starts_with("backup")) {
                msg::NO_CLUSTERS_BACKUP
            } else if !failed.is_empty() {
                msg::NO_CLUSTERS_PRECACHE
            } else {
                msg::NO_CLUSTERS_BLOCKING
            };
            self.explain_excluded(&clusters, &nc, &failed, &filtered_out);
            self.fail_no_clusters(message);
            return;
        }
        let after = self
            .cgu
            .spec
            .actions
            .as_ref()
            .and_then(|a| a.after_completion.clone());
        let mut seen: HashSet<&str> = HashSet::new();
        for c in &selected {
            if nc.contains(c) || !seen.insert(c.as_str()) {
                continue;
            }
            self.record_complete(c);
            if let Some(a) = &after
                && self.snap.managed_cluster(c).is_some()
                && let Some(w) = crate::actions::after_completion(c, a)
            {
                self.writes.push(w);
            }
        }
        if let Some(before) = self
            .cgu
            .spec
            .actions
            .as_ref()
            .and_then(|a| a.before_enable.clone())
        {
            for c in final_plan.iter().flatten() {
                if self.snap.managed_cluster(c).is_some()
                    && let Some(w) = crate::actions::before_enable(c, &before)
                {
                    self.writes.push(w);
                }
            }
        }
        self.explain_excluded(&clusters, &nc, &failed, &filtered_out);

        // 13. Go.
        if final_plan.is_empty() {
            self.set_cond(
                types::PROGRESSING,
                false,
                reasons::COMPLETED,
                msg::ALL_COMPLIANT,
            );
            self.set_cond(
                types::SUCCEEDED,
                true,
                reasons::COMPLETED,
                msg::ALREADY_COMPLIANT,
            );
        } else {
            self.set_cond(
                types::PROGRESSING,
                true,
                reasons::IN_PROGRESS,
                msg::REMEDIATING,
            );
        }
        self.requeue(Requeue::Immediately);
    }

    fn explain_excluded(
        &mut self,
        clusters: &[String],
        nc: &HashSet<String>,
        failed: &BTreeMap<String, String>,
        filtered: &BTreeSet<String>,
    ) {
        let present = self.policies_for_upgrade();
        for c in clusters {
            let reason = if let Some(f) = failed.get(c) {
                f.clone()
            } else if filtered.contains(c) {
                "not complete in every blocking CGU".to_string()
            } else if nc.contains(c) {
                continue;
            } else if !present.is_empty()
                && present
                    .iter()
                    .all(|p| self.compliance(c, p) == Compliance::NotMatched)
            {
                "not matched by any managed policy".to_string()
            } else {
                "compliant with all managed policies".to_string()
            };
            self.notes.excluded_clusters.push((c.clone(), reason));
        }
    }

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

    /// Policy discovery and validation; sets the Validated condition. `None` means stop here.
    fn validate(&mut self, clusters: &[String]) -> Option<Policies> {
        let managed = self.cgu.spec.managed_policies.clone().unwrap_or_default();
        let v = validate_policies(&managed, clusters, self.snap);
        if let Some(f) = spec_failure(&self.cgu.spec).or_else(|| v.failure()) {
            let changed =
                self.cond_message(types::VALIDATED).as_deref() != Some(f.message.as_str());
            self.set_cond(types::VALIDATED, false, f.reason, &f.message);
            if changed {
                self.events.push(events::validation_failure(
                    self.cgu,
                    f.event_kind,
                    &f.event_items,
                ));
            }
            self.notes.pending_actions.push(format!(
                "fix the managed policies: {}",
                f.message.trim_end()
            ));
            self.requeue(Requeue::After(f.requeue_secs));
            return None;
        }
        if !v.for_upgrade.is_empty() {
            self.status.managed_policies_for_upgrade = Some(v.for_upgrade.clone());
        }
        self.status.managed_policies_compliant_before_upgrade = Some(
            v.compliant_before_upgrade
                .iter()
                .map(|p| p.name.clone())
                .collect(),
        );
        self.status.managed_policies_ns = Some(v.namespaces.clone());
        self.status.managed_policies_content = Some(v.content.clone());

        let present_roots: Vec<&Policy> = v
            .for_upgrade
            .iter()
            .filter_map(|p| {
                self.snap
                    .root_policy(&p.namespace, &p.name)
                    .map(|r| &r.policy)
            })
            .collect();
        let precaching = self.cgu.spec.pre_caching.unwrap_or(false);
        let image = match platform_image(&present_roots, precaching, self.graph) {
            Ok(i) => i,
            Err(e) => {
                self.set_cond(types::VALIDATED, false, reasons::INVALID_PLATFORM_IMAGE, &e);
                self.notes
                    .pending_actions
                    .push(format!("fix the ClusterVersion policy: {e}"));
                self.requeue(Requeue::After(FIVE_MIN));
                return None;
            }
        };
        if let Err(e) = dependency_order(&v.for_upgrade, self.snap) {
            self.set_cond(
                types::VALIDATED,
                false,
                reasons::UNRESOLVABLE_DEPENDENCY,
                &e,
            );
            self.notes
                .pending_actions
                .push(format!("reorder spec.managedPolicies: {e}"));
            self.requeue(Requeue::After(FIVE_MIN));
            return None;
        }
        self.set_cond(
            types::VALIDATED,
            true,
            reasons::VALIDATION_COMPLETED,
            msg::VALIDATION_COMPLETED,
        );
        Some(Policies {
            present: v.for_upgrade,
            compliant: v.compliant_before_upgrade,
            platform_image: image,
        })
    }

    // ----- blocking --------------------------------------------------------------------------

    fn partial_mode(&self) -> bool {
        self.cgu
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BLOCKING_MODE_ANNOTATION))
            .is_some_and(|v| v == "partial")
    }

    fn partial_filtering(&self) -> bool {
        self.partial_mode()
            && self
                .cgu
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(BLOCKING_FILTER_ANNOTATION))
                .is_some_and(|v| v == "true")
            && self
                .cgu
                .spec
                .blocking_crs
                .as_ref()
                .is_some_and(|b| !b.is_empty())
    }

    fn blocker(&self, b: &talm_shared::api::cgu::BlockingCr) -> Option<&'a ClusterGroupUpgrade> {
        let ns = if b.namespace.is_empty() {
            self.namespace()
        } else {
            b.namespace.as_str()
        };
        self.snap.cgu(ns, &b.name)
    }

    fn blocking_satisfied(&mut self) -> bool {
        let blockers = self.cgu.spec.blocking_crs.clone().unwrap_or_default();
        let partial = self.partial_mode();
        let mut missing = Vec::new();
        let mut incomplete = Vec::new();
        for b in &blockers {
            match self.blocker(b) {
                None => missing.push(b.name.clone()),
                Some(other) => {
                    let conds = other
                        .status
                        .as_ref()
                        .map(|s| s.conditions.as_slice())
                        .unwrap_or(&[]);
                    let done = if partial {
                        cond::find(conds, types::SUCCEEDED).is_some()
                    } else {
                        cond::is_true(conds, types::SUCCEEDED)
                    };
                    if !done {
                        incomplete.push(b.name.clone());
                    }
                }
            }
        }
        if !missing.is_empty() {
            let m = format!("Missing blocking CRs: {}", cond::go_list(&missing));
            self.set_cond(types::PROGRESSING, false, reasons::MISSING_BLOCKING_CR, &m);
            self.notes.pending_actions.push(format!(
                "waiting for blocking CGUs to exist: {}",
                missing.join(", ")
            ));
            self.requeue(Requeue::After(ONE_MIN));
            return false;
        }
        if !incomplete.is_empty() {
            let m = format!(
                "Blocking CRs that are not completed: {}",
                cond::go_list(&incomplete)
            );
            self.set_cond(
                types::PROGRESSING,
                false,
                reasons::INCOMPLETE_BLOCKING_CR,
                &m,
            );
            self.notes.pending_actions.push(format!(
                "waiting for blocking CGUs to complete: {}",
                incomplete.join(", ")
            ));
            self.requeue(Requeue::After(ONE_MIN));
            return false;
        }
        true
    }

    fn complete_in_all_blockers(&self) -> HashSet<String> {
        let blockers = self.cgu.spec.blocking_crs.clone().unwrap_or_default();
        let mut keep: Option<HashSet<String>> = None;
        for b in &blockers {
            let complete: HashSet<String> = self
                .blocker(b)
                .and_then(|o| o.status.as_ref())
                .and_then(|s| s.clusters.as_ref())
                .map(|cs| {
                    cs.iter()
                        .filter(|c| c.state == "complete")
                        .map(|c| c.name.clone())
                        .collect()
                })
                .unwrap_or_default();
            keep = Some(match keep {
                None => complete,
                Some(k) => k.intersection(&complete).cloned().collect(),
            });
        }
        keep.unwrap_or_default()
    }

    // ----- pre-cache and backup --------------------------------------------------------------

    fn precache(&mut self, plan: &[Vec<String>], policies: &Policies) -> Gate {
        let mut roots: Vec<&Policy> = Vec::new();
        for p in policies.present.iter().chain(policies.compliant.iter()) {
            if let Some(r) = self.snap.root_policy(&p.namespace, &p.name) {
                roots.push(&r.policy);
            }
        }
        // Compliant policies count for pre-caching too (§4.1); a ClusterVersion problem there
        // is reported, not silently dropped.
        let image = platform_image(&roots, true, self.graph)
            .map(|i| i.or_else(|| policies.platform_image.clone()))
            .map_err(|e| format!("Precaching spec is incomplete: {e}"));
        let spec = match image
            .and_then(|image| precache::build_spec(self.cgu, &roots, image.as_deref(), self.snap))
        {
            Ok(s) => s,
            Err(e) => {
                self.set_cond(
                    types::PRECACHE_SPEC_VALID,
                    false,
                    reasons::PRECACHE_SPEC_INCOMPLETE,
                    &e,
                );
                self.notes
                    .pending_actions
                    .push(format!("fix the pre-cache configuration: {e}"));
                self.requeue(Requeue::After(FIVE_MIN));
                return Gate::Wait;
            }
        };
        self.set_cond(
            types::PRECACHE_SPEC_VALID,
            true,
            reasons::PRECACHE_SPEC_IS_WELL_FORMED,
            msg::PRECACHE_SPEC_VALID,
        );
        let first = self
            .status
            .precaching
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .is_none_or(|s| s.is_empty());
        let pc = self
            .status
            .precaching
            .get_or_insert_with(PrecachingStatus::default);
        pc.spec = Some(spec.clone());
        let states_before = pc.status.clone().unwrap_or_default();
        let id = tasks::task_id(self.cgu, Kind::Precache);
        let new_task = NewTask::Precache(&spec, self.timeout_minutes());
        let mut states_after = BTreeMap::new();
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        for c in plan.iter().flatten() {
            if !seen.insert(c.clone()) {
                continue;
            }
            let input = ClusterInput {
                cluster: c,
                state: states_before.get(c).map(String::as_str),
                agent: self.snap.spoke_agent(c, c),
                available: self
                    .snap
                    .managed_cluster(c)
                    .is_some_and(|m| m.is_available()),
                enabled: self.enabled(),
            };
            let (st, w) = tasks::step(Kind::Precache, &id, input, &new_task, self.now);
            writes.extend(w);
            states_after.insert(c.clone(), st);
        }
        // Clusters that left the plan before the start (spec edits) get their task cancelled.
        for c in states_before
            .keys()
            .filter(|c| !states_after.contains_key(*c))
        {
            if let Some(w) = self
                .snap
                .spoke_agent(c, c)
                .and_then(|a| tasks::clear_tasks(self.cgu, a))
            {
                writes.push(w);
            }
        }
        self.writes.extend(writes);
        if let Some(pc) = self.status.precaching.as_mut() {
            pc.status = Some(states_after.clone());
        }
        self.gate(
            states_after,
            types::PRECACHING_SUCCEEDED,
            first.then_some(msg::PRECACHING_REQUIRED),
            "Precaching in progress for",
            (reasons::PRECACHING_COMPLETED, msg::PRECACHING_COMPLETED),
            "Precaching failed for",
            msg::PRECACHING_FAILED_ALL,
            None,
        )
    }

    fn backup(&mut self, plan: &[Vec<String>]) -> Gate {
        let now = self.now;
        let bs = self.status.backup.get_or_insert_with(BackupStatus::default);
        let started = bs.started_at.get_or_insert(Time(now)).0;
        let states_before = bs.status.clone().unwrap_or_default();
        let id = tasks::task_id(self.cgu, Kind::Backup);
        let guard_expired =
            now.duration_since(started) > SignedDuration::from_secs(tasks::BACKUP_GUARD_SECS);
        let mut states_after = BTreeMap::new();
        let mut writes = Vec::new();
        for c in plan.iter().flatten() {
            if states_after.contains_key(c) {
                continue;
            }
            let input = ClusterInput {
                cluster: c,
                state: states_before.get(c).map(String::as_str),
                agent: self.snap.spoke_agent(c, c),
                available: self
                    .snap
                    .managed_cluster(c)
                    .is_some_and(|m| m.is_available()),
                enabled: self.enabled(),
            };
            let (mut st, w) = tasks::step(Kind::Backup, &id, input, &NewTask::Backup, now);
            if guard_expired && !tasks::is_final(&st) {
                st = states::BACKUP_TIMEOUT.to_string();
            }
            writes.extend(w);
            states_after.insert(c.clone(), st);
        }
        self.writes.extend(writes);
        if let Some(bs) = self.status.backup.as_mut() {
            bs.status = Some(states_after.clone());
        }
        self.gate(
            states_after,
            types::BACKUP_SUCCEEDED,
            None,
            "Backup in progress for",
            (reasons::BACKUP_COMPLETED, msg::BACKUP_COMPLETED),
            "Backup failed for",
            msg::BACKUP_FAILED_ALL,
            Some(msg::BACKUP_IN_PROGRESS_PROGRESSING),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn gate(
        &mut self,
        states: BTreeMap<String, String>,
        cond_type: &str,
        first_message: Option<&str>,
        in_progress_prefix: &str,
        completed: (&str, &str),
        failed_prefix: &str,
        failed_all: &str,
        progressing_message: Option<&str>,
    ) -> Gate {
        let pending = states.values().filter(|s| !tasks::is_final(s)).count();
        if pending > 0 {
            let m = match first_message {
                Some(f) => f.to_string(),
                None => format!("{in_progress_prefix} {pending} clusters"),
            };
            self.set_cond(cond_type, false, reasons::IN_PROGRESS, &m);
            if let Some(pm) = progressing_message {
                self.set_cond(types::PROGRESSING, false, reasons::NOT_STARTED, pm);
            }
            self.notes.pending_actions.push(format!(
                "{} in progress on {pending} of {} clusters (agents report through SpokeAgent status)",
                if cond_type == types::BACKUP_SUCCEEDED { "backup" } else { "pre-caching" },
                states.len()
            ));
            self.requeue(Requeue::After(THIRTY_S));
            return Gate::Wait;
        }
        let total = states.len();
        let failed: BTreeMap<String, String> = states
            .into_iter()
            .filter(|(_, s)| s != states::SUCCEEDED)
            .collect();
        if failed.is_empty() {
            self.set_cond(cond_type, true, completed.0, completed.1);
            Gate::Done(failed)
        } else if failed.len() < total {
            self.set_cond(
                cond_type,
                true,
                reasons::PARTIALLY_DONE,
                &format!("{failed_prefix} {} clusters", failed.len()),
            );
            Gate::Done(failed)
        } else {
            self.set_cond(cond_type, false, reasons::FAILED, failed_all);
            Gate::AllFailed
        }
    }

    // ----- enforcement objects ---------------------------------------------------------------

    fn suffix(&self) -> String {
        if let Some(s) = self
            .cgu
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::NAME_SUFFIX_ANNOTATION))
            .filter(|s| !s.is_empty())
        {
            return s.clone();
        }
        let seed = self
            .cgu
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.namespace(), self.name()));
        names::derived_suffix(&seed)
    }

    /// The desired name and the safe name of a policy's Placement/PlacementBinding.
    fn object_name(&mut self, policy: &ManagedPolicyForUpgrade) -> String {
        let desired = format!("{}-{}-placement", self.name(), policy.name).to_lowercase();
        let key = format!("{}/{}", policy.namespace, desired);
        if let Some(n) = self
            .status
            .safe_resource_names
            .as_ref()
            .and_then(|m| m.get(&key))
        {
            return n.clone();
        }
        let safe = names::safe_name(&desired, &policy.namespace, &self.suffix());
        self.status
            .safe_resource_names
            .get_or_insert_with(BTreeMap::new)
            .insert(key, safe.clone());
        safe
    }

    fn object_meta(&self, policy: &ManagedPolicyForUpgrade, name: &str) -> ObjectMeta {
        let desired = format!("{}-{}-placement", self.name(), policy.name).to_lowercase();
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(policy.namespace.clone()),
            labels: Some(
                [
                    (labels::APP, labels::APP_VALUE),
                    (labels::CGU, self.name()),
                    (labels::CGU_NS, self.namespace()),
                    (labels::FOR_POLICY, policy.name.as_str()),
                    (labels::VELERO_EXCLUDE, "true"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            annotations: Some(
                [(
                    names::RNAME_ANNOTATION.to_string(),
                    format!("{}/{}", policy.namespace, desired),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    fn placement(
        &self,
        policy: &ManagedPolicyForUpgrade,
        name: &str,
        values: Vec<String>,
    ) -> Placement {
        Placement {
            api_version: Placement::API_VERSION.into(),
            kind: Placement::KIND.into(),
            metadata: self.object_meta(policy, name),
            spec: PlacementSpec {
                predicates: vec![ClusterPredicate {
                    required_cluster_selector: ClusterSelector {
                        label_selector: LabelSelector {
                            match_expressions: Some(vec![LabelSelectorRequirement {
                                key: "name".into(),
                                operator: "In".into(),
                                values: Some(values),
                            }]),
                            match_labels: None,
                        },
                    },
                }],
                tolerations: [
                    "cluster.open-cluster-management.io/unavailable",
                    "cluster.open-cluster-management.io/unreachable",
                ]
                .iter()
                .map(|k| Toleration {
                    key: k.to_string(),
                    operator: "Exists".into(),
                })
                .collect(),
            },
            status: None,
        }
    }

    fn binding(&self, policy: &ManagedPolicyForUpgrade, name: &str) -> PlacementBinding {
        PlacementBinding {
            api_version: PlacementBinding::API_VERSION.into(),
            kind: PlacementBinding::KIND.into(),
            metadata: self.object_meta(policy, name),
            placement_ref: PlacementSubject {
                api_group: "cluster.open-cluster-management.io".into(),
                kind: "Placement".into(),
                name: name.into(),
            },
            subjects: vec![PlacementSubject {
                api_group: "policy.open-cluster-management.io".into(),
                kind: "Policy".into(),
                name: policy.name.clone(),
            }],
            sub_filter: Some("restricted".into()),
            binding_overrides: Some(BindingOverrides {
                remediation_action: Some("enforce".into()),
            }),
        }
    }

    /// Creates (or fixes) a Placement and binding per present policy, keeping the current
    /// selections, and records their names.
    fn ensure_enforcement_objects(&mut self, present: &[ManagedPolicyForUpgrade]) {
        let mut names_list = BTreeSet::new();
        for p in present {
            let name = self.object_name(p);
            names_list.insert(name.clone());
            let current = self.snap.placement(&p.namespace, &name);
            let values = current
                .map(|c| c.selected_names().to_vec())
                .unwrap_or_default();
            self.apply_placement(p, &name, values);
            let want = self.binding(p, &name);
            let current_b = self.snap.placement_binding(&p.namespace, &name);
            if current_b.is_none_or(|b| !same_binding(b, &want)) {
                self.writes.push(Write::ApplyPlacementBinding(want));
            }
        }
        let list: Vec<String> = names_list.into_iter().collect();
        self.status.placements = Some(list.clone());
        self.status.placement_bindings = Some(list);
    }

    /// Emits an ApplyPlacement when the snapshot's object differs from the desired one.
    fn apply_placement(&mut self, p: &ManagedPolicyForUpgrade, name: &str, values: Vec<String>) {
        let want = self.placement(p, name, values);
        // A later write in this same decision supersedes the snapshot.
        let pending = self.writes.iter().rev().find_map(|w| match w {
            Write::ApplyPlacement(pl)
                if pl.metadata.name.as_deref() == Some(name)
                    && pl.metadata.namespace == want.metadata.namespace =>
            {
                Some(pl)
            }
            _ => None,
        });
        let current = pending.or_else(|| self.snap.placement(&p.namespace, name));
        if current.is_none_or(|c| c.spec != want.spec || c.metadata.labels != want.metadata.labels)
        {
            self.writes.push(Write::ApplyPlacement(want));
        }
    }

    fn current_values(&self, p: &ManagedPolicyForUpgrade, name: &str) -> Vec<String> {
        let pending = self.writes.iter().rev().find_map(|w| match w {
            Write::ApplyPlacement(pl)
                if pl.metadata.name.as_deref() == Some(name)
                    && pl.metadata.namespace.as_deref() == Some(p.namespace.as_str()) =>
            {
                Some(pl.selected_names().to_vec())
            }
            _ => None,
        });
        pending.unwrap_or_else(|| {
            self.snap
                .placement(&p.namespace, name)
                .map(|c| c.selected_names().to_vec())
                .unwrap_or_default()
        })
    }

    /// Adds clusters to a policy's Placement (keeping the order they were released in), with
    /// one write for the whole call.
    fn release(&mut self, clusters: &[&str], policy: &ManagedPolicyForUpgrade) {
        let name = self.object_name(policy);
        let mut values = self.current_values(policy, &name);
        let mut present: HashSet<String> = values.iter().cloned().collect();
        let before = values.len();
        for c in clusters {
            if present.insert((*c).to_string()) {
                values.push((*c).to_string());
            }
        }
        if values.len() != before || self.snap.placement(&policy.namespace, &name).is_none() {
            self.apply_placement(policy, &name, values);
        }
    }

    fn withdraw(&mut self, clusters: &HashSet<String>) {
        for p in self.policies_for_upgrade() {
            let name = self.object_name(&p);
            let values = self.current_values(&p, &name);
            if values.iter().any(|v| clusters.contains(v)) {
                let kept: Vec<String> = values
                    .into_iter()
                    .filter(|v| !clusters.contains(v))
                    .collect();
                self.apply_placement(&p, &name, kept);
            }
        }
    }

    fn empty_placements(&mut self) {
        for p in self.policies_for_upgrade() {
            let name = self.object_name(&p);
            if self.snap.placement(&p.namespace, &name).is_some()
                && !self.current_values(&p, &name).is_empty()
            {
                self.apply_placement(&p, &name, Vec::new());
            }
        }
    }

    /// Deletes every Placement and binding of this CGU and cancels its agent tasks.
    fn delete_resources(&mut self) {
        let mut targets: BTreeSet<(String, String)> = BTreeSet::new();
        for (key, name) in self.status.safe_resource_names.iter().flatten() {
            if let Some((ns, _)) = key.split_once('/') {
                targets.insert((ns.to_string(), name.clone()));
            }
        }
        let owned = |m: &ObjectMeta| {
            m.labels.as_ref().is_some_and(|l| {
                l.get(labels::CGU).map(String::as_str) == Some(self.name())
                    && l.get(labels::CGU_NS).map(String::as_str) == Some(self.namespace())
            })
        };
        for p in self.snap.placements().filter(|p| owned(&p.metadata)) {
            targets.insert((
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            ));
        }
        let mut binding_targets = targets.clone();
        for b in self
            .snap
            .placement_bindings()
            .filter(|b| owned(&b.metadata))
        {
            binding_targets.insert((
                b.metadata.namespace.clone().unwrap_or_default(),
                b.metadata.name.clone().unwrap_or_default(),
            ));
        }
        for (ns, name) in &targets {
            if self.snap.placement(ns, name).is_some() {
                self.writes.push(Write::DeletePlacement {
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        for (ns, name) in &binding_targets {
            if self.snap.placement_binding(ns, name).is_some() {
                self.writes.push(Write::DeletePlacementBinding {
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        self.clear_agent_tasks();
        self.writes
            .extend(installplan::cleanup_all(self.cgu, self.snap));
        self.status.placements = None;
        self.status.placement_bindings = None;
        self.status.safe_resource_names = None;
    }

    /// Clears every task of this CGU from the agents (pre-cache and backup tasks of the
    /// clusters in its status, and InstallPlan-approval tasks, which any planned cluster may hold).
    fn clear_agent_tasks(&mut self) {
        let writes: Vec<Write> = self
            .snap
            .spoke_agents()
            .filter_map(|a| tasks::clear_tasks(self.cgu, a))
            .collect();
        self.writes.extend(writes);
    }

    // ----- in progress -----------------------------------------------------------------------

    fn in_progress(&mut self) {
        // The plan is frozen once started: lend it out instead of cloning it (it is the largest
        // part of the status at fleet scale).
        let plan = self.status.remediation_plan.take().unwrap_or_default();
        self.in_progress_with(&plan);
        if !plan.is_empty() {
            self.status.remediation_plan = Some(plan);
        }
    }

    fn in_progress_with(&mut self, plan: &[Vec<String>]) {
        let policies = self.policies_for_upgrade();
        if plan.is_empty() {
            self.end(
                reasons::COMPLETED,
                true,
                reasons::COMPLETED,
                msg::ALL_COMPLIANT,
            );
            return;
        }
        let now = self.now;
        let mut current = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.current_batch)
            .unwrap_or(0);
        if current <= 0 {
            current = 1;
        }
        let current = usize::try_from(current).unwrap_or(1).min(plan.len());
        self.upgrade_status().current_batch = Some(i32::try_from(current).unwrap_or(i32::MAX));
        let batch = plan[current - 1].clone();
        if self
            .status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_started_at.as_ref())
            .is_none()
        {
            let progress: BTreeMap<String, ClusterRemediationProgress> = batch
                .iter()
                .map(|c| {
                    (
                        c.clone(),
                        ClusterRemediationProgress {
                            state: NOT_STARTED.into(),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let us = self.upgrade_status();
            us.current_batch_remediation_progress = Some(progress);
            us.current_batch_started_at = Some(Time(now));
            self.events
                .push(events::batch_started(self.cgu, current, &batch));
        }
        let batch_started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_started_at.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        let started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        // Timestamps come from an editable status: all arithmetic on them is checked.
        let wait = batch_started
            .checked_add(SignedDuration::from_mins(5))
            .map(|next| next.duration_since(now).as_secs())
            .unwrap_or(0);
        self.requeue(Requeue::After(if wait > 0 {
            wait.unsigned_abs()
        } else {
            FIVE_MIN
        }));

        let timeout = self.timeout_minutes();
        if global_timed_out(timeout, started, now) {
            let timed_out = self.time_out_batch(&batch, &policies);
            if !timed_out.is_empty() {
                self.events
                    .push(events::batch_timed_out(self.cgu, current, &timed_out));
            }
            self.end(
                reasons::TIMED_OUT,
                false,
                reasons::TIMED_OUT,
                msg::TIMED_OUT,
            );
            return;
        }
        if let Ok(at) = started.checked_add(SignedDuration::from_mins(i64::from(timeout))) {
            self.notes
                .pending_actions
                .push(format!("global timeout at {at} ({timeout} min from start)"));
        }

        let mut soaking = false;
        for c in &batch {
            soaking |= self.update_cluster_progress(c, &policies, true);
        }
        let all_done = self.batch_completed(&batch);
        let last = current == plan.len();
        if !last {
            if all_done {
                self.finish_batch(current, &batch);
                return;
            }
        } else if all_done {
            // Last batch: every cluster of the earlier batches must be compliant too.
            let earlier: Vec<String> = plan[..current - 1].iter().flatten().cloned().collect();
            let all_compliant = earlier.iter().all(|c| {
                policies
                    .iter()
                    .all(|p| self.compliance(c, p) != Compliance::NonCompliant)
            });
            if all_compliant {
                self.events
                    .push(events::batch_completed(self.cgu, current, &batch));
                self.empty_placements();
                self.end(
                    reasons::COMPLETED,
                    true,
                    reasons::COMPLETED,
                    msg::ALL_COMPLIANT,
                );
                return;
            }
            let waiting: Vec<String> = earlier
                .iter()
                .filter(|c| {
                    policies
                        .iter()
                        .any(|p| self.compliance(c, p) == Compliance::NonCompliant)
                })
                .cloned()
                .collect();
            self.notes.pending_actions.push(format!(
                "last batch done; waiting for earlier clusters to become compliant: {}",
                waiting.join(", ")
            ));
        }
        if soaking {
            self.requeue(Requeue::After(THIRTY_S));
        }
        self.remediate_batch(&batch, &policies);
        let deadline = started
            .checked_add(SignedDuration::from_mins(i64::from(self.timeout_minutes())))
            .unwrap_or(Timestamp::MAX);
        self.approve_installplans(&batch, &policies, deadline);
        self.check_placements(&policies);
        if !last {
            self.check_batch_timeout(current, &batch, plan, &policies, started, batch_started);
        }
    }

    fn progress_of(&self, c: &str) -> ClusterRemediationProgress {
        self.status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_remediation_progress.as_ref())
            .and_then(|m| m.get(c))
            .cloned()
            .unwrap_or_else(|| ClusterRemediationProgress {
                state: NOT_STARTED.into(),
                ..Default::default()
            })
    }

    fn set_progress(&mut self, c: &str, p: ClusterRemediationProgress) {
        self.upgrade_status()
            .current_batch_remediation_progress
            .get_or_insert_with(BTreeMap::new)
            .insert(c.to_string(), p);
    }

    fn batch_completed(&self, batch: &[String]) -> bool {
        batch.iter().all(|c| self.progress_of(c).state == COMPLETED)
    }

    /// Steps one cluster through the policies (§3.7). Returns true while it soaks.
    fn update_cluster_progress(
        &mut self,
        c: &str,
        policies: &[ManagedPolicyForUpgrade],
        emit: bool,
    ) -> bool {
        let mut p = self.progress_of(c);
        if p.state == COMPLETED {
            return false;
        }
        if p.state == NOT_STARTED {
            p.state = IN_PROGRESS.into();
            p.policy_index = Some(0);
            if emit {
                self.events.push(events::cluster_started(
                    self.cgu,
                    events::cluster_ref(c, self.snap.managed_cluster(c)),
                ));
            }
        }
        let mut i = usize::try_from(p.policy_index.unwrap_or(0)).unwrap_or(0);
        let mut soaking = false;
        while i < policies.len() {
            let pol = &policies[i];
            match self.compliance(c, pol) {
                Compliance::NotMatched => {
                    i += 1;
                }
                Compliance::Compliant => {
                    let soak = self.soak_seconds(pol);
                    match soak {
                        Some(n) if n > 0 => match p.first_compliant_at.as_ref().map(|t| t.0) {
                            None => {
                                p.first_compliant_at = Some(Time(self.now));
                                soaking = true;
                                break;
                            }
                            Some(first) => {
                                if self.now.duration_since(first) > SignedDuration::from_secs(n) {
                                    p.first_compliant_at = None;
                                    i += 1;
                                } else {
                                    soaking = true;
                                    break;
                                }
                            }
                        },
                        _ => {
                            p.first_compliant_at = None;
                            i += 1;
                        }
                    }
                }
                Compliance::NonCompliant => {
                    p.first_compliant_at = None;
                    break;
                }
            }
        }
        if i >= policies.len() {
            p.state = COMPLETED.into();
            p.policy_index = None;
            p.first_compliant_at = None;
            self.set_progress(c, p);
            if emit {
                self.events.push(events::cluster_completed(
                    self.cgu,
                    events::cluster_ref(c, self.snap.managed_cluster(c)),
                ));
            }
            self.record_complete(c);
            self.writes
                .extend(installplan::cleanup(self.cgu, c, self.snap));
            self.writes
                .extend(installplan::clear_agent_task(self.cgu, c, self.snap));
            if let Some(a) = self
                .cgu
                .spec
                .actions
                .as_ref()
                .and_then(|a| a.after_completion.clone())
                && self.snap.managed_cluster(c).is_some()
                && let Some(w) = crate::actions::after_completion(c, &a)
            {
                self.writes.push(w);
            }
            return false;
        }
        p.policy_index = Some(i32::try_from(i).unwrap_or(i32::MAX));
        self.set_progress(c, p);
        soaking
    }

    fn soak_seconds(&self, p: &ManagedPolicyForUpgrade) -> Option<i64> {
        self.snap
            .root_policy(&p.namespace, &p.name)?
            .policy
            .metadata
            .annotations
            .as_ref()?
            .get(SOAK_ANNOTATION)?
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
    }

    /// Manual InstallPlan approval (§3.10) for the in-progress clusters whose current policy
    /// holds Subscriptions; nothing at all when no managed policy has any.
    /// The agent path runs the approval until the CGU's global timeout (`deadline`).
    fn approve_installplans(
        &mut self,
        batch: &[String],
        policies: &[ManagedPolicyForUpgrade],
        deadline: Timestamp,
    ) {
        let Some(content) = self
            .status
            .managed_policies_content
            .as_ref()
            .filter(|c| !c.is_empty())
        else {
            return;
        };
        let mut subs: BTreeMap<&str, Vec<installplan::SubscriptionRef>> = BTreeMap::new();
        let mut work: Vec<(String, &str)> = Vec::new();
        for c in batch {
            let p = self.progress_of(c);
            if p.state != IN_PROGRESS {
                continue;
            }
            let Some(pol) = p
                .policy_index
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| policies.get(i))
            else {
                continue;
            };
            subs.entry(pol.name.as_str()).or_insert_with(|| {
                content
                    .get(&pol.name)
                    .map(|json| installplan::subscriptions(json))
                    .unwrap_or_default()
            });
            work.push((c.clone(), pol.name.as_str()));
        }
        if work.is_empty() {
            return;
        }
        let suffix = self.suffix();
        let mut writes = Vec::new();
        for (c, pol) in work {
            let Some(s) = subs.get(pol).filter(|s| !s.is_empty()) else {
                // The cluster's current policy holds no Subscriptions: an approval task left
                // from its previous policy goes.
                writes.extend(installplan::clear_agent_task(self.cgu, &c, self.snap));
                continue;
            };
            let agent = self.snap.spoke_agent(&c, &c);
            let id = installplan::agent_task_id(self.cgu, pol);
            if installplan::agent_path(self.cgu, agent, &id) {
                writes.extend(installplan::agent_task(&c, agent, &id, s, deadline));
            } else {
                writes.extend(installplan::approve(self.cgu, &suffix, &c, s, self.snap));
            }
        }
        self.writes.extend(writes);
    }

    /// Releases each in-progress cluster to the Placement of the policy at its index
    /// (cumulative within the batch).
    fn remediate_batch(&mut self, batch: &[String], policies: &[ManagedPolicyForUpgrade]) {
        // Group by policy index so each Placement is written once, whatever the batch size.
        let mut by_policy: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for c in batch {
            let p = self.progress_of(c);
            if p.state != IN_PROGRESS {
                continue;
            }
            let Some(idx) = p.policy_index.and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            if idx < policies.len() {
                by_policy.entry(idx).or_default().push(c.as_str());
            }
        }
        for (idx, clusters) in by_policy {
            self.release(&clusters, &policies[idx]);
        }
        let in_progress = batch
            .iter()
            .filter(|c| self.progress_of(c).state == IN_PROGRESS)
            .count();
        if in_progress > 0 {
            self.notes.pending_actions.push(format!(
                "{in_progress} clusters of the current batch are being remediated"
            ));
        }
    }

    fn check_placements(&mut self, policies: &[ManagedPolicyForUpgrade]) {
        for p in policies {
            let name = self.object_name(p);
            let Some(pl) = self.snap.placement(&p.namespace, &name) else {
                continue;
            };
            let unsatisfied = pl.status.as_ref().and_then(|s| {
                s.conditions.iter().find(|c| {
                    c.type_ == "PlacementSatisfied"
                        && c.status == "False"
                        && c.reason == "NoManagedClusterSetBindings"
                })
            });
            if let Some(c) = unsatisfied {
                let m = format!(
                    "Placement \"{name}\" in namespace \"{}\" cannot select clusters: {}. Create a ManagedClusterSetBinding for the \"default\" ManagedClusterSet in the policy namespace.",
                    p.namespace, c.message
                );
                self.set_cond(types::PROGRESSING, true, reasons::WAITING_FOR_PLACEMENT, &m);
                return;
            }
        }
        self.set_cond(
            types::PROGRESSING,
            true,
            reasons::IN_PROGRESS,
            msg::REMEDIATING,
        );
    }

    fn finish_batch(&mut self, current: usize, batch: &[String]) {
        self.events
            .push(events::batch_completed(self.cgu, current, batch));
        self.empty_placements();
        let us = self.upgrade_status();
        us.current_batch_started_at = None;
        us.current_batch = Some(i32::try_from(current + 1).unwrap_or(i32::MAX));
        us.current_batch_remediation_progress = None;
        self.requeue(Requeue::Immediately);
    }

    /// Marks the unfinished clusters of a batch `timedout` and withdraws them from enforcement.
    fn time_out_batch(
        &mut self,
        batch: &[String],
        policies: &[ManagedPolicyForUpgrade],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for c in batch {
            // TALM marks clusters InProgress or without a progress entry: not the completed
            // ones, nor those initialised as NotStarted in this very pass.
            let entry = self
                .status
                .status
                .as_ref()
                .and_then(|s| s.current_batch_remediation_progress.as_ref())
                .and_then(|m| m.get(c));
            if entry.is_some_and(|e| e.state == COMPLETED || e.state == NOT_STARTED) {
                continue;
            }
            let p = self.progress_of(c);
            let idx = usize::try_from(p.policy_index.unwrap_or(0)).unwrap_or(0);
            let policy = policies
                .get(idx)
                .map(|p| p.name.clone())
                .unwrap_or_default();
            self.record_outcome(ClusterState {
                name: c.clone(),
                state: "timedout".into(),
                current_policy: Some(PolicyStatus {
                    name: policy,
                    status: "NonCompliant".into(),
                }),
                current_manifest_work: None,
            });
            out.push(c.clone());
        }
        let set: HashSet<String> = out.iter().cloned().collect();
        self.withdraw(&set);
        out
    }

    fn canary_batches(&self, plan: &[Vec<String>]) -> usize {
        let canaries: HashSet<&str> = self
            .cgu
            .spec
            .remediation_strategy
            .canaries
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        plan.iter()
            .take_while(|b| b.len() == 1 && canaries.contains(b[0].as_str()))
            .count()
    }

    fn check_batch_timeout(
        &mut self,
        current: usize,
        batch: &[String],
        plan: &[Vec<String>],
        policies: &[ManagedPolicyForUpgrade],
        started: Timestamp,
        batch_started: Timestamp,
    ) {
        let bt = batch_timeout(
            self.timeout_minutes(),
            started,
            batch_started,
            plan.len(),
            current,
        );
        if self.now.duration_since(batch_started) <= bt {
            if let Ok(deadline) = batch_started.checked_add(bt) {
                self.notes
                    .pending_actions
                    .push(format!("batch {current} times out at {deadline}"));
                let wait = deadline.duration_since(self.now).as_secs().max(1);
                self.requeue(Requeue::After(u64::try_from(wait).unwrap_or(FIVE_MIN)));
            }
            return;
        }
        if current <= self.canary_batches(plan) {
            self.end(
                reasons::TIMED_OUT,
                false,
                reasons::TIMED_OUT,
                msg::TIMED_OUT_CANARY,
            );
            let unfinished: HashSet<String> = batch
                .iter()
                .filter(|c| self.progress_of(c).state != COMPLETED)
                .cloned()
                .collect();
            self.withdraw(&unfinished);
            return;
        }
        let timed_out = self.time_out_batch(batch, policies);
        self.events
            .push(events::batch_timed_out(self.cgu, current, &timed_out));
        if self.cgu.spec.batch_timeout_action.as_deref() == Some("Abort") {
            self.end(
                reasons::TIMED_OUT,
                false,
                reasons::TIMED_OUT,
                msg::TIMED_OUT_SOME,
            );
        } else {
            let us = self.upgrade_status();
            us.current_batch = Some(i32::try_from(current + 1).unwrap_or(i32::MAX));
            us.current_batch_started_at = None;
            us.current_batch_remediation_progress = None;
        }
        self.requeue(Requeue::Immediately);
    }
}

/// The outcome of a pre-cache or backup gate.
enum Gate {
    /// Still running (or the spec is invalid): stop this reconcile.
    Wait,
    /// Every cluster failed.
    AllFailed,
    /// Done; these clusters failed, with their final state.
    Done(BTreeMap<String, String>),
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

fn same_binding(a: &PlacementBinding, b: &PlacementBinding) -> bool {
    a.placement_ref == b.placement_ref
        && a.subjects == b.subjects
        && a.sub_filter == b.sub_filter
        && a.binding_overrides == b.binding_overrides
        && a.metadata.labels == b.metadata.labels
}

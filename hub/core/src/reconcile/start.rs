//! Start: the "not started" path (docs/contract.md §3.2), one function per step.
//!
//! Until a CGU is `Progressing`, TALM re-runs the whole start sequence on every reconcile, so
//! spec edits are picked up: select the clusters (§2.1) and recompute `computedMaxConcurrency`;
//! validate the managed policies and the OpenShift version they ask for; draft the remediation
//! plan (§3.3); create the empty Placements and bindings; pre-cache; stop here while
//! `enable` is false (§3.8) or while paused or held (talm extension); stamp `startedAt`; wait for blocking CGUs; back up; apply the
//! partial-blocking filter; rebuild the plan without the clusters that failed or were filtered
//! out; run the after-completion actions of the already compliant clusters and the
//! before-enable actions of the planned ones; and finally either start remediating or, when no
//! cluster needs anything, succeed at once. Every stop sets a condition saying why and requeues.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use talm_shared::api::Time;
use talm_shared::api::cgu::{ManagedPolicyForUpgrade, PrecachingSpec, PrecachingStatus};
use talm_shared::api::rhacm::Policy;

use super::gates::Gate;
use super::{FIX_RETRY_SECS, NOT_ENABLED_RECHECK_SECS, PAUSED_RECHECK_SECS, Run};
use crate::actions;
use crate::conditions::{messages as msg, reasons, types};
use crate::decision::Requeue;
use crate::events;
use crate::plan::{build_plan, computed_max_concurrency};
use crate::selection::{SelectionError, select_clusters};
use crate::snapshot::Compliance;
use crate::validate::{dependency_order, platform_image, spec_failure, validate_policies};

/// What the not-started path learned about the policies.
pub(super) struct Policies {
    /// The policies to remediate (`managedPoliciesForUpgrade`).
    pub(super) present: Vec<ManagedPolicyForUpgrade>,
    /// The policies every selected cluster already complies with.
    pub(super) compliant: Vec<ManagedPolicyForUpgrade>,
    /// The release image a ClusterVersion policy asks for, if any.
    pub(super) platform_image: Option<String>,
}

/// The plan drafted from every selected cluster (step 4), and what it was built from.
struct Draft {
    /// The selected clusters, in selection order.
    clusters: Vec<String>,
    /// `computedMaxConcurrency`.
    max_concurrency: i32,
    /// `spec.remediationStrategy.canaries`.
    canaries: Vec<String>,
    /// The selected clusters non-compliant with at least one present policy.
    non_compliant: HashSet<String>,
    /// The batches, before any cluster is dropped.
    plan: Vec<Vec<String>>,
}

/// Clusters dropped on the way, with the reason (pre-cache or backup failure).
type Failed = BTreeMap<String, String>;

impl Run<'_> {
    /// The not-started path: the steps in order, each one free to stop the pass.
    pub(super) fn not_started(&mut self) {
        let Some((clusters, max_concurrency)) = self.select() else {
            return;
        };
        let policies = if self.works_mode() {
            // A ManifestWork rollout ignores `managedPolicies` (docs/contract.md §3.13).
            if !self.validate_templates() {
                return;
            }
            Policies {
                present: Vec::new(),
                compliant: Vec::new(),
                platform_image: None,
            }
        } else {
            let Some(p) = self.validate(&clusters) else {
                return;
            };
            p
        };
        let draft = self.draft_plan(clusters, max_concurrency, &policies.present);
        self.ensure_enforcement_objects(&policies.present);
        let mut failed = Failed::new();
        if !self.precache_gate(&draft, &policies, &mut failed) {
            return;
        }
        if !self.enable_gate(&draft, &failed) {
            return;
        }
        if !self.hold_gate() {
            return;
        }
        self.start_clock(&draft.plan);
        if !self.blocking_satisfied() {
            return;
        }
        if !self.backup_gate(&draft, &mut failed) {
            return;
        }
        if self.budget_exceeded(draft.clusters.len()) {
            return;
        }
        let Some((selected, filtered_out)) = self.filter_by_blockers(&draft.clusters) else {
            return;
        };
        let Some(final_plan) = self.final_plan(&draft, &selected, &failed, &filtered_out) else {
            return;
        };
        self.cluster_actions(&draft, &selected, &final_plan);
        self.explain_excluded(
            &draft.clusters,
            &draft.non_compliant,
            &failed,
            &filtered_out,
        );
        self.go(&final_plan);
    }

    /// Step 1: selects the clusters and computes `computedMaxConcurrency`; `None` on a selection
    /// error (`ClustersSelected=False`).
    fn select(&mut self) -> Option<(Vec<String>, i32)> {
        let spec = &self.cgu.spec;
        let clusters = match select_clusters(spec, self.snap) {
            Ok(c) => c,
            Err(e) => {
                let message = e.to_string();
                let changed = self.cond_message(types::CLUSTERS_SELECTED).as_deref()
                    != Some(message.as_str());
                let reason = match e {
                    SelectionError::InvalidLabelSelector { .. } => {
                        reasons::INVALID_CLUSTER_LABEL_SELECTOR
                    }
                    _ => reasons::CLUSTER_NOT_FOUND,
                };
                self.set_cond(types::CLUSTERS_SELECTED, false, reason, &message);
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
                self.requeue(Requeue::After(FIX_RETRY_SECS));
                return None;
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
        Some((clusters, cmc))
    }

    /// Steps 2–3: policy discovery and validation, the platform image and the dependency
    /// order; sets the Validated condition. `None` means stop here.
    fn validate(&mut self, clusters: &[String]) -> Option<Policies> {
        let managed = self.cgu.spec.managed_policies.clone().unwrap_or_default();
        let v = validate_policies(&managed, clusters, self.snap);
        if let Some(f) = spec_failure(&self.cgu.spec)
            .or_else(|| crate::recovery::spec_failure(&self.cgu.spec))
            .or_else(|| v.failure())
        {
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
                self.requeue(Requeue::After(FIX_RETRY_SECS));
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
            self.requeue(Requeue::After(FIX_RETRY_SECS));
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

    /// Step 4: drafts the plan from every selected cluster and records it in the status.
    fn draft_plan(
        &mut self,
        clusters: Vec<String>,
        max_concurrency: i32,
        present: &[ManagedPolicyForUpgrade],
    ) -> Draft {
        // A ManifestWork rollout counts every selected cluster as non-compliant.
        let works = self.works_mode();
        let non_compliant = |c: &str| {
            works
                || present
                    .iter()
                    .any(|p| self.compliance(c, p) == Compliance::NonCompliant)
        };
        let canaries = self
            .cgu
            .spec
            .remediation_strategy
            .canaries
            .clone()
            .unwrap_or_default();
        let plan = build_plan(&clusters, &canaries, max_concurrency, &non_compliant);
        let non_compliant: HashSet<String> = clusters
            .iter()
            .filter(|c| non_compliant(c))
            .cloned()
            .collect();
        self.status.remediation_plan = if plan.is_empty() {
            None
        } else {
            Some(plan.clone())
        };
        Draft {
            clusters,
            max_concurrency,
            canaries,
            non_compliant,
            plan,
        }
    }

    /// Step 6: the pre-cache gate, when `spec.preCaching` is on and some cluster needs
    /// remediation. False means stop here.
    fn precache_gate(&mut self, draft: &Draft, policies: &Policies, failed: &mut Failed) -> bool {
        if !self.cgu.spec.pre_caching.unwrap_or(false) || draft.plan.is_empty() {
            return true;
        }
        if self.status.precaching.is_none() {
            // TALM initialises the pre-caching status as soon as it has plan clusters, before
            // it knows whether the spec can be derived (docs/contract.md §2.2).
            self.status.precaching = Some(PrecachingStatus {
                spec: Some(PrecachingSpec::default()),
                status: Some(BTreeMap::new()),
                clusters: Some(Vec::new()),
                progress: None,
            });
        }
        let gate = self.precache(&draft.plan, policies);
        self.pass_gate(gate, msg::NO_CLUSTERS_PRECACHE, "pre-caching", failed)
    }

    /// Step 7: with `enable: false` the CGU stops here (`Progressing=False/NotEnabled`).
    fn enable_gate(&mut self, draft: &Draft, failed: &Failed) -> bool {
        if self.enabled() {
            return true;
        }
        // Time with `enable: false` counts against the timeout, as in TALM, even when the CGU
        // is also paused: close an open pause interval (the hold gate reopens it on enable).
        self.close_pause();
        self.set_cond(
            types::PROGRESSING,
            false,
            reasons::NOT_ENABLED,
            msg::NOT_ENABLED,
        );
        self.explain_excluded(
            &draft.clusters,
            &draft.non_compliant,
            failed,
            &BTreeSet::new(),
        );
        self.notes
            .pending_actions
            .push("set spec.enable to true to start remediation".to_string());
        self.requeue(Requeue::After(NOT_ENABLED_RECHECK_SECS));
        false
    }

    /// Step 7b (talm extension): a paused or held CGU does not start, and one whose clock has
    /// started (waiting for blocking CGUs or backups) counts the pause as excluded time.
    fn hold_gate(&mut self) -> bool {
        if !self.apply_hold() {
            return true;
        }
        self.requeue(Requeue::After(PAUSED_RECHECK_SECS));
        false
    }

    /// Step 8: the first time through, emits `CguStarted` and sets `startedAt`; the global
    /// timeout counts from here, blocking and backup included.
    fn start_clock(&mut self, plan: &[Vec<String>]) {
        let started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .is_some();
        if started {
            return;
        }
        let total: usize = plan.iter().map(Vec::len).sum();
        self.events
            .push(events::started(self.cgu, plan.len(), total));
        let now = self.now;
        self.upgrade_status().started_at = Some(Time(now));
    }

    /// Step 10: the backup gate, when `spec.backup` is on and some cluster needs remediation,
    /// over the plan clusters that pre-caching did not drop. False means stop here.
    fn backup_gate(&mut self, draft: &Draft, failed: &mut Failed) -> bool {
        if !self.cgu.spec.backup.unwrap_or(false) || draft.plan.is_empty() {
            return true;
        }
        let remaining: Vec<Vec<String>> = draft
            .plan
            .iter()
            .map(|b| {
                b.iter()
                    .filter(|c| !failed.contains_key(*c))
                    .cloned()
                    .collect()
            })
            .filter(|b: &Vec<String>| !b.is_empty())
            .collect();
        let gate = self.backup(&remaining);
        self.pass_gate(gate, msg::NO_CLUSTERS_BACKUP, "backup", failed)
    }

    /// Acts on a gate's outcome: waits, ends the CGU when every cluster failed, or adds the
    /// failed clusters (`<what> failed: <state>`) to `failed` and goes on.
    fn pass_gate(&mut self, gate: Gate, all_failed: &str, what: &str, failed: &mut Failed) -> bool {
        match gate {
            Gate::Wait => false,
            Gate::AllFailed => {
                self.fail_no_clusters(all_failed);
                false
            }
            Gate::Done(f) => {
                failed.extend(
                    f.into_iter()
                        .map(|(c, s)| (c, format!("{what} failed: {s}"))),
                );
                true
            }
        }
    }

    /// Step 11: the partial-blocking filter keeps only the clusters complete in every blocker,
    /// in selection order. Returns the kept clusters and the filtered-out ones; `None` (the CGU
    /// failed) when none is kept.
    fn filter_by_blockers(
        &mut self,
        clusters: &[String],
    ) -> Option<(Vec<String>, BTreeSet<String>)> {
        let mut filtered_out: BTreeSet<String> = BTreeSet::new();
        let mut selected = clusters.to_vec();
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
                return None;
            }
        }
        Some((selected, filtered_out))
    }

    /// Step 12, the plan: rebuilt without the failed and filtered-out clusters and recorded in
    /// the status. `None` (the CGU failed) when every cluster that needed remediation was
    /// dropped.
    fn final_plan(
        &mut self,
        draft: &Draft,
        selected: &[String],
        failed: &Failed,
        filtered_out: &BTreeSet<String>,
    ) -> Option<Vec<Vec<String>>> {
        let eligible: Vec<String> = selected
            .iter()
            .filter(|c| !failed.contains_key(*c))
            .cloned()
            .collect();
        let eligible_canaries: Vec<String> = draft
            .canaries
            .iter()
            .filter(|c| eligible.contains(c))
            .cloned()
            .collect();
        let final_plan = build_plan(
            &eligible,
            &eligible_canaries,
            draft.max_concurrency,
            &|c: &str| draft.non_compliant.contains(c),
        );
        self.status.remediation_plan = if final_plan.is_empty() {
            None
        } else {
            Some(final_plan.clone())
        };
        if final_plan.is_empty() && !draft.plan.is_empty() {
            // Every cluster that needed remediation was dropped: that is a failure, not
            // "already compliant".
            let message = if failed.values().any(|r| r.starts_with("backup")) {
                msg::NO_CLUSTERS_BACKUP
            } else if !failed.is_empty() {
                msg::NO_CLUSTERS_PRECACHE
            } else {
                msg::NO_CLUSTERS_BLOCKING
            };
            self.explain_excluded(&draft.clusters, &draft.non_compliant, failed, filtered_out);
            self.fail_no_clusters(message);
            return None;
        }
        Some(final_plan)
    }

    /// Step 12, the actions: each already compliant cluster is recorded `complete` and gets its
    /// after-completion actions (once); each planned cluster gets its before-enable actions.
    fn cluster_actions(&mut self, draft: &Draft, selected: &[String], final_plan: &[Vec<String>]) {
        let after = self
            .cgu
            .spec
            .actions
            .as_ref()
            .and_then(|a| a.after_completion.clone());
        let mut seen: HashSet<&str> = HashSet::new();
        for c in selected {
            if draft.non_compliant.contains(c) || !seen.insert(c.as_str()) {
                continue;
            }
            self.record_complete(c);
            if let Some(a) = &after
                && self.snap.managed_cluster(c).is_some()
                && let Some(w) = actions::after_completion(c, a)
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
                    && let Some(w) = actions::before_enable(c, &before)
                {
                    self.writes.push(w);
                }
            }
        }
    }

    /// Step 13: start remediating, or succeed at once when no cluster needs anything; either
    /// way, come straight back.
    fn go(&mut self, final_plan: &[Vec<String>]) {
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
            let rolling_out = self.messages().rolling_out;
            self.set_cond(types::PROGRESSING, true, reasons::IN_PROGRESS, rolling_out);
        }
        self.requeue(Requeue::Immediately);
    }

    /// Notes why each selected cluster is in no batch.
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
}

//! Progress: batches, per-cluster policy progression and timeouts (docs/contract.md §3.4–§3.7,
//! §3.10).
//!
//! Once started, the plan is frozen and worked through one batch at a time. Each cluster of the
//! current batch walks the managed policies in order: policies that do not match it are skipped,
//! compliant ones are passed (after an optional soak, `ran.openshift.io/soak-seconds`), and at
//! the first non-compliant one the cluster is released into that policy's Placement, where it
//! stays until the batch ends. A cluster past its last policy is complete: its after-completion
//! actions run and its InstallPlan approvals are cleaned up. When every cluster of a batch is
//! complete the Placements are emptied and the next batch starts; the last batch also waits for
//! every earlier cluster to be compliant. Each non-last batch gets a share of the remaining
//! global timeout: past it, a canary batch fails the CGU, and any other batch has its unfinished
//! clusters marked `timedout` before the CGU aborts or continues (`batchTimeoutAction`). The
//! global timeout ends the CGU whatever the batch. talm withdraws timed-out clusters from the
//! Placements at once, where TALM leaves them enforced until the next batch completes.

use std::collections::{BTreeMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use talm_shared::api::Time;
use talm_shared::api::cgu::{
    ClusterRemediationProgress, ClusterState, ManagedPolicyForUpgrade, PolicyStatus, UpgradeStatus,
};

use super::{
    BATCH_POLL, BATCH_POLL_SECS, FIX_RETRY_SECS, PAUSED_RECHECK_SECS, Run, SOAK_POLL_SECS,
};
use crate::conditions::{messages as msg, reasons, types};
use crate::decision::Requeue;
use crate::events;
use crate::forecast;
use crate::installplan;
use crate::snapshot::{Compliance, RootPolicy};
use crate::timeouts::{batch_deadline, excluded, excluded_in_batch, global_deadline};
use crate::windows;

/// Policy annotation: seconds a policy must stay compliant before the cluster moves on.
pub const SOAK_ANNOTATION: &str = "ran.openshift.io/soak-seconds";

// Per-cluster states in `currentBatchRemediationProgress`.
pub(super) const IN_PROGRESS: &str = "InProgress";
const NOT_STARTED: &str = "NotStarted";
const COMPLETED: &str = "Completed";

impl Run<'_> {
    /// The in-progress path, once `Progressing` is True.
    pub(super) fn in_progress(&mut self) {
        // The plan is frozen once started: lend it out instead of cloning it (it is the largest
        // part of the status at fleet scale).
        let plan = self.status.remediation_plan.take().unwrap_or_default();
        self.in_progress_with(&plan);
        self.update_forecast(&plan);
        if !plan.is_empty() {
            self.status.remediation_plan = Some(plan);
        }
    }

    /// One pass of the in-progress path over the frozen `plan`.
    fn in_progress_with(&mut self, plan: &[Vec<String>]) {
        let policies = self.policies_for_upgrade();
        // The events' `total-clusters-count`: the clusters of the whole plan.
        let total: usize = plan.iter().map(Vec::len).sum();
        let messages = self.messages();
        if plan.is_empty() {
            self.end(
                reasons::COMPLETED,
                true,
                reasons::COMPLETED,
                messages.completed,
            );
            return;
        }
        let now = self.now;
        let held = self.apply_hold();
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
        let batch_not_started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_started_at.as_ref())
            .is_none();
        // `startedAt`; the deadlines add the time that does not count (pauses, holds, window
        // waits) themselves.
        let started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        if batch_not_started && held {
            // No batch starts while paused; the same batch starts on resume.
            self.notes
                .pending_actions
                .push(format!("batch {current} starts when the CGU resumes"));
            self.requeue(Requeue::After(PAUSED_RECHECK_SECS));
            return;
        }
        // A batch waits for its maintenance window (a talm extension) unless the CGU has run
        // out of time already: then it ends as it would have without windows.
        if batch_not_started
            && now <= self.global_deadline(started)
            && self.window_gate(current, &batch, &policies)
        {
            return;
        }
        if batch_not_started {
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
            let excluded_before = self
                .status
                .status
                .as_ref()
                .map(|s| excluded(s, now).as_secs())
                .unwrap_or(0);
            let us = self.upgrade_status();
            us.current_batch_remediation_progress = Some(progress);
            us.current_batch_started_at = Some(Time(now));
            us.batch_start_excluded_seconds = (excluded_before > 0).then_some(excluded_before);
            self.events
                .push(events::batch_started(self.cgu, current, &batch, total));
            // A ManifestWork rollout removes the previous batch's works as a batch starts.
            if current > 1 && self.works_mode() && self.delete_objects() {
                self.delete_works(&plan[current - 2]);
            }
        }
        let batch_started = self
            .status
            .status
            .as_ref()
            .and_then(|s| s.current_batch_started_at.as_ref())
            .map(|t| t.0)
            .unwrap_or(now);
        // Timestamps come from an editable status: all arithmetic on them is checked.
        let wait = batch_started
            .checked_add(BATCH_POLL)
            .map(|next| next.duration_since(now).as_secs())
            .unwrap_or(0);
        self.requeue(Requeue::After(if wait > 0 {
            wait.unsigned_abs()
        } else {
            BATCH_POLL_SECS
        }));

        let timeout = self.timeout_minutes();
        let deadline = self.global_deadline(started);
        if now > deadline {
            let timed_out = self.time_out_batch(&batch, &policies);
            if !timed_out.is_empty() {
                self.events
                    .push(events::batch_timed_out(self.cgu, current, &timed_out));
            }
            self.end(
                reasons::TIMED_OUT,
                false,
                reasons::TIMED_OUT,
                messages.timed_out,
            );
            return;
        }
        self.notes.pending_actions.push(format!(
            "global timeout at {deadline} ({timeout} min from start, paused time excluded)"
        ));

        let mut soaking = false;
        for c in &batch {
            soaking |= self.update_cluster_progress(c, &policies, true, held);
        }
        // A cluster rolled back by its agent counts against the failure budget at once.
        if self.new_failures
            && self.budget_exceeded(super::budget::status_cluster_count(&self.status, plan))
        {
            return;
        }
        if held {
            // Released clusters stay enforced (and their InstallPlans approved, so no upgrade
            // is cut half-way); nothing else moves until the CGU resumes.
            self.approve_installplans(&batch, &policies, deadline);
            self.check_placements(&policies);
            self.requeue(Requeue::After(PAUSED_RECHECK_SECS));
            return;
        }
        let all_done = self.batch_completed(&batch);
        let last = current == plan.len();
        if !last {
            if all_done {
                self.finish_batch(current, &batch, total);
                return;
            }
        } else if all_done && self.works_mode() {
            // Last batch of a ManifestWork rollout: a cluster that timed out in an earlier
            // batch cannot complete any more (its work is gone), so the CGU ends now rather
            // than at the global timeout (docs/contract.md §3.13).
            let recorded_complete: HashSet<&str> = self
                .status
                .clusters
                .iter()
                .flatten()
                .filter(|c| c.state == "complete")
                .map(|c| c.name.as_str())
                .collect();
            let all_complete = plan[..current - 1]
                .iter()
                .flatten()
                .all(|c| recorded_complete.contains(c.as_str()));
            self.events
                .push(events::batch_completed(self.cgu, current, &batch, total));
            if all_complete {
                self.end(
                    reasons::COMPLETED,
                    true,
                    reasons::COMPLETED,
                    messages.completed,
                );
            } else {
                self.end(
                    reasons::TIMED_OUT,
                    false,
                    reasons::TIMED_OUT,
                    messages.timed_out_some,
                );
            }
            return;
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
                    .push(events::batch_completed(self.cgu, current, &batch, total));
                self.empty_placements();
                if self.end_if_rolled_back(plan) {
                    return;
                }
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
            self.requeue(Requeue::After(SOAK_POLL_SECS));
        }
        if self.works_mode() {
            self.release_works(&batch);
        } else {
            self.remediate_batch(&batch, &policies);
            self.arm_watchdogs(&batch, &policies);
        }
        self.approve_installplans(&batch, &policies, deadline);
        self.check_placements(&policies);
        if !last {
            self.check_batch_timeout(current, &batch, plan, &policies, started, batch_started);
        }
    }

    /// The global deadline: `startedAt + timeout`, plus the paused time.
    fn global_deadline(&self, started: Timestamp) -> Timestamp {
        let ex = self
            .status
            .status
            .as_ref()
            .map(|s| excluded(s, self.now))
            .unwrap_or(SignedDuration::ZERO);
        global_deadline(self.timeout_minutes(), started, ex)
    }

    /// `startedAt` moved later by the time that does not count against the timeouts
    /// ([`excluded`]): the forecast projects from here (`clock_start + timeout` is the global
    /// deadline that `global_deadline` computes).
    fn clock_start(&self) -> Timestamp {
        let us = self.status.status.as_ref();
        let started = us
            .and_then(|u| u.started_at.as_ref())
            .map(|t| t.0)
            .unwrap_or(self.now);
        let shift = us.map_or(SignedDuration::ZERO, |u| excluded(u, self.now));
        started.checked_add(shift).unwrap_or(started)
    }

    /// The maintenance-window gate before a batch starts (talm extension, `spec.maintenanceWindows`).
    /// Returns true when the batch must wait: then `Progressing=True` says why and until when,
    /// the wait is recorded (`waitingForWindowSince`, so it does not count against the
    /// timeouts) and the CGU requeues for the opening. When the batch may start, a wait in
    /// progress is closed into `excludedSeconds`.
    fn window_gate(
        &mut self,
        current: usize,
        batch: &[String],
        policies: &[ManagedPolicyForUpgrade],
    ) -> bool {
        let schedule = match windows::schedule(&self.cgu.spec) {
            Ok(None) => return false,
            Ok(Some(s)) => s,
            Err(e) => {
                // Checked at validation; an edit after the start stops new batches instead.
                self.set_cond(
                    types::PROGRESSING,
                    true,
                    reasons::INVALID_MAINTENANCE_WINDOW,
                    &format!("Batch {current} cannot start: {e}"),
                );
                self.requeue(Requeue::After(FIX_RETRY_SECS));
                return true;
            }
        };
        let now = self.now;
        let need = self.forecast_model(policies).batch_duration(
            &self.needed(batch, policies),
            batch.len(),
            0.9,
        );
        match windows::gate(&schedule, now, need) {
            Ok(()) => {
                let us = self.upgrade_status();
                if let Some(since) = us.waiting_for_window_since.take() {
                    let waited = now.duration_since(since.0).max(SignedDuration::ZERO);
                    us.excluded_seconds = Some(
                        us.excluded_seconds
                            .unwrap_or(0)
                            .max(0)
                            .saturating_add(waited.as_secs()),
                    );
                    self.events.push(events::window_opened(
                        self.cgu,
                        current,
                        &format!("{:#}", SignedDuration::from_secs(waited.as_secs())),
                    ));
                }
                false
            }
            Err(wait) => {
                let why = wait.describe();
                let us = self.upgrade_status();
                if us.waiting_for_window_since.is_none() {
                    us.waiting_for_window_since = Some(Time(now));
                    self.events
                        .push(events::window_wait(self.cgu, current, &why));
                }
                let message = format!("Batch {current} {why}");
                self.set_cond(
                    types::PROGRESSING,
                    true,
                    reasons::WAITING_FOR_MAINTENANCE_WINDOW,
                    &message,
                );
                self.notes.pending_actions.push(message);
                match wait.until() {
                    Some(at) => {
                        let secs = at.duration_since(now).as_secs().max(1);
                        self.requeue(Requeue::After(secs.unsigned_abs()));
                    }
                    None => self.requeue(Requeue::After(FIX_RETRY_SECS)),
                }
                true
            }
        }
    }

    /// The forecast's model: the priors of the managed policies' root Policies and what the
    /// status has learned so far.
    fn forecast_model(&self, policies: &[ManagedPolicyForUpgrade]) -> forecast::Model {
        let priors = policies.iter().map(|p| {
            let prior = self
                .snap
                .root_policy(&p.namespace, &p.name)
                .and_then(|r| r.policy.metadata.annotations.as_ref())
                .and_then(|a| a.get(forecast::EXPECTED_DURATION_ANNOTATION))
                .map(String::as_str);
            (p.name.clone(), forecast::prior(prior))
        });
        forecast::Model::new(priors, self.status.forecast.as_ref())
    }

    /// The policies (indexes) that some cluster of `batch` is not compliant with.
    fn needed(&self, batch: &[String], policies: &[ManagedPolicyForUpgrade]) -> Vec<usize> {
        needed_of(&self.roots(policies), batch)
    }

    /// The root policies of `policies`, looked up once for a whole pass over the plan.
    fn roots(&self, policies: &[ManagedPolicyForUpgrade]) -> Vec<Option<&RootPolicy>> {
        policies
            .iter()
            .map(|p| self.snap.root_policy(&p.namespace, &p.name))
            .collect()
    }

    /// Updates `status.forecast` after a pass: the pass's observations go into the learners,
    /// and, while the CGU is in progress, the remaining batches are projected. Once it has
    /// ended only the basis stays.
    fn update_forecast(&mut self, plan: &[Vec<String>]) {
        let policies = self.policies_for_upgrade();
        if policies.is_empty() || plan.is_empty() {
            return;
        }
        let mut model = self.forecast_model(&policies);
        for (i, d) in std::mem::take(&mut self.observed) {
            model.observe(i, d);
        }
        let us = self.status.status.as_ref();
        // The current batch's work counts from its start moved later by the time paused or held
        // during the batch: paused time is part of the prediction (the released clusters go on,
        // nothing new starts), and an open pause keeps pushing the batch's end.
        let current_started = us.and_then(|u| {
            let start = u.current_batch_started_at.as_ref()?.0;
            Some(
                start
                    .checked_add(excluded_in_batch(u, self.now))
                    .unwrap_or(start),
            )
        });
        let ended = crate::conditions::find(&self.status.conditions, types::SUCCEEDED).is_some();
        let current = usize::try_from(us.and_then(|u| u.current_batch).unwrap_or(1))
            .unwrap_or(1)
            .clamp(1, plan.len());
        let batches = if ended {
            Vec::new()
        } else {
            let roots = self.roots(&policies);
            plan.iter()
                .enumerate()
                .skip(current - 1)
                .map(|(i, b)| forecast::PlannedBatch {
                    index: i + 1,
                    clusters: b.len(),
                    needed: needed_of(&roots, b),
                })
                .collect()
        };
        let schedule = windows::schedule(&self.cgu.spec).ok().flatten();
        let mut f = forecast::project(
            &model,
            &forecast::Rollout {
                now: self.now,
                plan_len: plan.len(),
                batches,
                current_started,
                timeout_minutes: self.timeout_minutes(),
                clock_start: self.clock_start(),
                schedule: schedule.as_ref(),
            },
        );
        if ended {
            f.completion = None;
            f.completion_p90 = None;
        }
        self.status.forecast = Some(f);
    }

    /// A cluster's entry in `currentBatchRemediationProgress` (`NotStarted` when absent).
    pub(super) fn progress_of(&self, c: &str) -> ClusterRemediationProgress {
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

    /// Stores a cluster's progress entry.
    fn set_progress(&mut self, c: &str, p: ClusterRemediationProgress) {
        self.upgrade_status()
            .current_batch_remediation_progress
            .get_or_insert_with(BTreeMap::new)
            .insert(c.to_string(), p);
    }

    /// Whether every cluster of the batch has completed.
    fn batch_completed(&self, batch: &[String]) -> bool {
        batch.iter().all(|c| {
            let s = self.progress_of(c).state;
            s == COMPLETED || s == super::rollback::ROLLED_BACK
        })
    }

    /// Steps one cluster through the policies (§3.7). Returns true while it soaks. While
    /// `held`, a cluster past its last policy stays `InProgress` (index past the end): it
    /// completes, with its after-completion actions, on the first pass after resume.
    fn update_cluster_progress(
        &mut self,
        c: &str,
        policies: &[ManagedPolicyForUpgrade],
        emit: bool,
        held: bool,
    ) -> bool {
        if self.rolled_back(c, policies) {
            return false;
        }
        let mut p = self.progress_of(c);
        if p.state == COMPLETED {
            return false;
        }
        if p.state == NOT_STARTED {
            p.state = IN_PROGRESS.into();
            if self.works_mode() {
                p.manifest_work_index = Some(0);
            } else {
                p.policy_index = Some(0);
            }
            if emit {
                self.events.push(events::cluster_started(
                    self.cgu,
                    events::cluster_ref(c, self.snap.managed_cluster(c)),
                ));
            }
        }
        if self.works_mode() {
            if held {
                // Moving to the next template deletes a work and applies another: an action,
                // so a held ManifestWork rollout keeps each cluster on its current work.
                self.set_progress(c, p);
                return false;
            }
            let count = crate::manifestwork::templates(self.cgu).len();
            if self.step_works(c, &mut p) >= count {
                self.complete_cluster(c, p, emit);
            } else {
                self.set_progress(c, p);
            }
            return false;
        }
        let mut i = usize::try_from(p.policy_index.unwrap_or(0)).unwrap_or(0);
        let mut soaking = false;
        while i < policies.len() {
            let pol = &policies[i];
            let before = i;
            match self.compliance(c, pol) {
                Compliance::NotMatched => {
                    p.released_at = None;
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
                    if i > before {
                        // Moved past the policy: if it was released into it, that is one
                        // observation of its time to compliance.
                        if let Some(released) = p.released_at.take() {
                            self.observed
                                .push((before, self.now.duration_since(released.0)));
                        }
                    }
                }
                Compliance::NonCompliant => {
                    p.first_compliant_at = None;
                    if p.released_at.is_none() {
                        p.released_at = Some(Time(self.now));
                    }
                    break;
                }
            }
        }
        if i >= policies.len() && held {
            p.policy_index = Some(i32::try_from(i).unwrap_or(i32::MAX));
            p.first_compliant_at = None;
            p.released_at = None;
            self.set_progress(c, p);
            return false;
        }
        if i >= policies.len() {
            self.complete_cluster(c, p, emit);
            return false;
        }
        p.policy_index = Some(i32::try_from(i).unwrap_or(i32::MAX));
        self.set_progress(c, p);
        soaking
    }

    /// A cluster past its last policy or template: `Completed`, its event, its `complete`
    /// outcome, the cleanup of its InstallPlan approvals and its after-completion actions.
    fn complete_cluster(&mut self, c: &str, mut p: ClusterRemediationProgress, emit: bool) {
        p.state = COMPLETED.into();
        p.policy_index = None;
        p.manifest_work_index = None;
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
        self.disarm(c);
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
    }

    /// The policy's soak time, when its annotation holds a non-negative number of seconds.
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
        // Owned: the loop below records view names in the status.
        let Some(content) = self
            .status
            .managed_policies_content
            .clone()
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
            // TALM records every Subscription view in safeResourceNames; talm does too, whether
            // the views or the agent do the work, so the names stay what TALM would show.
            for sub in s {
                let key = installplan::subscription_view_key(self.cgu, &sub.name);
                let name = installplan::subscription_view_name(
                    self.cgu,
                    &suffix,
                    &sub.name,
                    self.status.safe_resource_names.as_ref(),
                );
                self.status
                    .safe_resource_names
                    .get_or_insert_with(BTreeMap::new)
                    .entry(key)
                    .or_insert(name);
            }
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

    /// `Progressing=True`, with `WaitingForPlacement` when a Placement cannot select clusters
    /// for lack of a ManagedClusterSetBinding.
    fn check_placements(&mut self, policies: &[ManagedPolicyForUpgrade]) {
        let rolling_out = self.messages().rolling_out;
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
        self.set_cond(types::PROGRESSING, true, reasons::IN_PROGRESS, rolling_out);
    }

    /// A completed (non-last) batch: its event, empty Placements, and on to the next batch.
    fn finish_batch(&mut self, current: usize, batch: &[String], total: usize) {
        self.events
            .push(events::batch_completed(self.cgu, current, batch, total));
        self.empty_placements();
        let us = self.upgrade_status();
        us.current_batch_started_at = None;
        us.batch_start_excluded_seconds = None;
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
            // A cluster its rollback watchdog failed is recorded already, and not timed out.
            if entry.is_some_and(|e| {
                e.state == COMPLETED
                    || e.state == NOT_STARTED
                    || e.state == super::rollback::ROLLED_BACK
            }) {
                continue;
            }
            let p = self.progress_of(c);
            let entry = if self.works_mode() {
                let idx = usize::try_from(p.manifest_work_index.unwrap_or(0)).unwrap_or(0);
                ClusterState {
                    name: c.clone(),
                    state: "timedout".into(),
                    current_policy: None,
                    current_manifest_work: Some(self.timed_out_work(c, idx)),
                }
            } else {
                let idx = usize::try_from(p.policy_index.unwrap_or(0)).unwrap_or(0);
                let policy = policies
                    .get(idx)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                ClusterState {
                    name: c.clone(),
                    state: "timedout".into(),
                    current_policy: Some(PolicyStatus {
                        name: policy,
                        status: "NonCompliant".into(),
                    }),
                    current_manifest_work: None,
                }
            };
            self.record_outcome(entry);
            out.push(c.clone());
        }
        let set: HashSet<String> = out.iter().cloned().collect();
        self.withdraw(&set);
        out
    }

    /// How many leading batches of the plan are single canaries.
    pub(super) fn canary_batches(&self, plan: &[Vec<String>]) -> usize {
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

    /// The batch timeout of a non-last batch (§3.4, §3.5): until it passes, requeue at the
    /// deadline; then fail on a canary batch, or time out the batch and abort or continue.
    fn check_batch_timeout(
        &mut self,
        current: usize,
        batch: &[String],
        plan: &[Vec<String>],
        policies: &[ManagedPolicyForUpgrade],
        started: Timestamp,
        batch_started: Timestamp,
    ) {
        let none = UpgradeStatus::default();
        let deadline = batch_deadline(
            self.timeout_minutes(),
            started,
            batch_started,
            plan.len(),
            current,
            self.status.status.as_ref().unwrap_or(&none),
            self.now,
        );
        if self.now <= deadline {
            if deadline < Timestamp::MAX {
                self.notes
                    .pending_actions
                    .push(format!("batch {current} times out at {deadline}"));
                let wait = deadline.duration_since(self.now).as_secs().max(1);
                self.requeue(Requeue::After(
                    u64::try_from(wait).unwrap_or(BATCH_POLL_SECS),
                ));
            }
            return;
        }
        if current <= self.canary_batches(plan) {
            let m = self.messages().timed_out_canary;
            self.end(reasons::TIMED_OUT, false, reasons::TIMED_OUT, m);
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
        if self.budget_exceeded(super::budget::status_cluster_count(&self.status, plan)) {
            return;
        }
        if self.cgu.spec.batch_timeout_action.as_deref() == Some("Abort") {
            let m = self.messages().timed_out_some;
            self.end(reasons::TIMED_OUT, false, reasons::TIMED_OUT, m);
        } else {
            let us = self.upgrade_status();
            us.current_batch = Some(i32::try_from(current + 1).unwrap_or(i32::MAX));
            us.current_batch_started_at = None;
            us.batch_start_excluded_seconds = None;
            us.current_batch_remediation_progress = None;
        }
        self.requeue(Requeue::Immediately);
    }
}

/// The policies (indexes into `roots`) that some cluster of `batch` is not compliant with; a
/// missing root counts as not compliant, as everywhere in the engine.
fn needed_of(roots: &[Option<&RootPolicy>], batch: &[String]) -> Vec<usize> {
    roots
        .iter()
        .enumerate()
        .filter(|(_, root)| match root {
            Some(root) => batch
                .iter()
                .any(|c| root.compliance(c) == Compliance::NonCompliant),
            None => !batch.is_empty(),
        })
        .map(|(i, _)| i)
        .collect()
}

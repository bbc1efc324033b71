//! The pre-cache and backup gates (docs/contract.md §3.2 steps 6 and 10, §4.2, §5.1).
//!
//! Before any cluster is remediated, TALM can pre-cache the release and operator images on every
//! plan cluster (`spec.preCaching`) and take a backup of each one (`spec.backup`). Each is a gate:
//! the CGU waits, polling, until every cluster's task has reached a final state, then drops the
//! clusters whose task did not succeed. The gate's condition (`PrecachingSuceeded`,
//! `BackupSuceeded`) reports progress, full success, partial success or total failure. talm runs
//! these tasks through each cluster's agent (SpokeAgent tasks) instead of TALM's Jobs and
//! views, and ends the CGU when every cluster fails, where TALM waits forever.
//!
//! With PrecacheBudgets (talm extension, docs/contract.md §4.4) a pre-cache task is assigned
//! held, with the cluster's queue place, when a budget may apply; the fleet scheduler lets it in.
//! The gate reports each unfinished cluster's transfer progress, its cap and an ETA in
//! `status.precaching.progress`.

use std::collections::{BTreeMap, HashSet};

use jiff::SignedDuration;
use jiff::Timestamp;
use talm_shared::api::Time;
use talm_shared::api::cgu::{BackupStatus, ClusterPrecacheProgress, PrecachingStatus};
use talm_shared::api::rhacm::Policy;
use talm_shared::api::spokeagent::{PrecacheOrder, SpokeAgent};
use talm_shared::task_state::TaskState;

use super::start::Policies;
use super::{AGENT_TASK_POLL_SECS, FIX_RETRY_SECS, Run};
use crate::conditions::{messages as msg, reasons, types};
use crate::decision::Requeue;
use crate::precache;
use crate::schedule;
use crate::tasks::{self, ClusterInput, Kind, NewTask};
use crate::validate::platform_image;

/// The outcome of a pre-cache or backup gate.
pub(super) enum Gate {
    /// Still running (or the spec is invalid): stop this reconcile.
    Wait,
    /// Every cluster failed.
    AllFailed,
    /// Done; these clusters failed, with their final state.
    Done(BTreeMap<String, TaskState>),
}

impl Run<'_> {
    /// Step 6: derives the pre-cache spec, steps each plan cluster's pre-cache task and
    /// reports the gate.
    pub(super) fn precache(&mut self, plan: &[Vec<String>], policies: &Policies) -> Gate {
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
                self.requeue(Requeue::After(FIX_RETRY_SECS));
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
        let timeout_min = self.timeout_minutes();
        let budgets = schedule::Budgets::read(self.snap);
        let cgu_created = Time(
            self.cgu
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(self.now, |t| t.0),
        );
        let canary_batches = self.canary_batches(plan);
        let mut states_after = BTreeMap::new();
        let mut progress = BTreeMap::new();
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        for (index, c) in plan
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.iter().map(move |c| (i, c)))
        {
            if !seen.insert(c.clone()) {
                continue;
            }
            // The canaries count as one batch, 0; the batches after them follow on.
            let batch = if canary_batches == 0 {
                index
            } else {
                index.saturating_sub(canary_batches - 1)
            };
            let new_task = NewTask::Precache {
                spec: &spec,
                timeout_min,
                hold: budgets.select(self.snap, c),
                order: Some(PrecacheOrder {
                    batch: i64::try_from(batch).unwrap_or(i64::MAX),
                    cgu_created: cgu_created.clone(),
                }),
            };
            let input = ClusterInput {
                cluster: c,
                state: states_before.get(c).map(|s| tasks::recorded_state(s)),
                agent: self.snap.spoke_agent(c, c),
                available: self
                    .snap
                    .managed_cluster(c)
                    .is_some_and(|m| m.is_available()),
                enabled: self.enabled(),
            };
            let (st, w) = tasks::step(Kind::Precache, &id, input, &new_task, self.now);
            writes.extend(w);
            if !st.is_final()
                && let Some(p) = cluster_progress(input.agent, &id, self.now)
            {
                progress.insert(c.clone(), p);
            }
            states_after.insert(c.clone(), st);
        }
        let queued = progress.values().filter(|p| p.queued).count();
        if queued > 0 {
            self.notes
                .pending_actions
                .push(format!("{queued} clusters queued by PrecacheBudgets"));
        }
        // Clusters that left the plan before the start (spec edits) get their task cancelled.
        for c in states_before
            .keys()
            .filter(|c| !states_after.contains_key(*c))
        {
            if let Some(w) = self
                .snap
                .spoke_agent(c, c)
                .and_then(|a| tasks::clear_tasks(self.cgu, a, tasks::Watchdog::Disarm))
            {
                writes.push(w);
            }
        }
        self.writes.extend(writes);
        if let Some(pc) = self.status.precaching.as_mut() {
            pc.status = Some(names_of(&states_after));
            pc.progress = (!progress.is_empty()).then_some(progress);
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

    /// Step 10: steps each remaining plan cluster's backup task (under TALM's hub-side guard)
    /// and reports the gate.
    pub(super) fn backup(&mut self, plan: &[Vec<String>]) -> Gate {
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
                state: states_before.get(c).map(|s| tasks::recorded_state(s)),
                agent: self.snap.spoke_agent(c, c),
                // As TALM: a cluster without an Available condition at all is not unavailable;
                // its backup starts and the task's own deadline decides (docs/contract.md §5.1).
                available: self
                    .snap
                    .managed_cluster(c)
                    .is_some_and(|m| !m.is_known_unavailable()),
                enabled: self.enabled(),
            };
            let (mut st, w) = tasks::step(Kind::Backup, &id, input, &NewTask::Backup, now);
            if guard_expired && !st.is_final() {
                st = TaskState::BackupTimeout;
            }
            writes.extend(w);
            states_after.insert(c.clone(), st);
        }
        self.writes.extend(writes);
        if let Some(bs) = self.status.backup.as_mut() {
            bs.status = Some(names_of(&states_after));
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

    /// Sets the gate's condition from the clusters' task states and says whether to wait, stop
    /// or go on without the failed clusters.
    #[allow(clippy::too_many_arguments)]
    fn gate(
        &mut self,
        states: BTreeMap<String, TaskState>,
        cond_type: &str,
        first_message: Option<&str>,
        in_progress_prefix: &str,
        completed: (&str, &str),
        failed_prefix: &str,
        failed_all: &str,
        progressing_message: Option<&str>,
    ) -> Gate {
        let pending = states.values().filter(|s| !s.is_final()).count();
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
            self.requeue(Requeue::After(AGENT_TASK_POLL_SECS));
            return Gate::Wait;
        }
        let total = states.len();
        let failed: BTreeMap<String, TaskState> = states
            .into_iter()
            .filter(|(_, s)| *s != TaskState::Succeeded)
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
}

/// A cluster's pre-cache progress for the CGU status: when its task `id` is in the SpokeAgent's
/// spec and either held (queued) or reported with progress. The ETA is `now` + what is left
/// at the reported throughput, in whole seconds, when both are known.
fn cluster_progress(
    agent: Option<&SpokeAgent>,
    id: &str,
    now: Timestamp,
) -> Option<ClusterPrecacheProgress> {
    let agent = agent?;
    let task = agent.spec.precache.as_ref().filter(|t| t.id == id)?;
    let reported = agent
        .status
        .as_ref()
        .and_then(|s| s.precache.as_ref())
        .filter(|r| r.id == id)
        .and_then(|r| r.progress.as_ref());
    if reported.is_none() && !task.hold {
        return None;
    }
    let mut p = ClusterPrecacheProgress {
        queued: task.hold,
        rate_limit_bytes_per_second: task.rate_limit_bytes_per_second,
        ..Default::default()
    };
    if let Some(r) = reported {
        p.bytes_done = r.bytes_done;
        p.bytes_total = r.bytes_total;
        p.bytes_per_second = r.bytes_per_second;
        if r.bytes_total > 0 && r.bytes_per_second > 0 {
            let left = i128::from((r.bytes_total - r.bytes_done).max(0));
            let rate = i128::from(r.bytes_per_second);
            let secs = i64::try_from((left + rate / 2) / rate).unwrap_or(i64::MAX);
            p.eta = now
                .checked_add(SignedDuration::from_secs(secs))
                .ok()
                .map(Time);
        }
    }
    Some(p)
}

/// The per-cluster states as the CGU status records them (TALM's names).
fn names_of(states: &BTreeMap<String, TaskState>) -> BTreeMap<String, String> {
    states
        .iter()
        .map(|(c, s)| (c.clone(), s.as_str().to_string()))
        .collect()
}

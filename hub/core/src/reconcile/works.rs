//! ManifestWork rollouts in the reconcile flow (docs/contract.md §3.13): what changes when a CGU
//! names `spec.manifestWorkTemplates` instead of policies.
//!
//! Validation checks that every template exists (`NotAllManifestTemplatesExist`); every
//! selected cluster then counts as non-compliant, so the plan, canaries, batches, timeouts,
//! blocking CRs and actions are the policy rollout's. Within a batch each cluster walks the
//! templates in order: its current template's ManifestWork is created when missing, and once
//! complete it is deleted and the next one follows (`manifestWorkIndex`). A cluster past its
//! last template is complete; its last work stays until the batch cleanup. With
//! `deleteObjects`, the previous batch's works go when a batch starts, and all of the CGU's at
//! the end and on deletion. The pure rules (names, completion, trimming) are in
//! [`crate::manifestwork`].

use talm_shared::api::Time;
use talm_shared::api::cgu::{ClusterRemediationProgress, ManifestWorkStatus};

use super::Run;
use crate::conditions::{messages as msg, reasons, types};
use crate::decision::{Requeue, Write};
use crate::events;
use crate::manifestwork::{self, Completion};
use crate::names;

/// A rollout type's condition messages (TALM's, for policies and for ManifestWorks).
pub(super) struct Messages {
    /// `Progressing=True/InProgress`.
    pub(super) rolling_out: &'static str,
    /// `Progressing=False/Completed` and `Succeeded=True/Completed` at the end.
    pub(super) completed: &'static str,
    /// The global timeout.
    pub(super) timed_out: &'static str,
    /// A canary batch's timeout.
    pub(super) timed_out_canary: &'static str,
    /// A batch timeout with `batchTimeoutAction: Abort`.
    pub(super) timed_out_some: &'static str,
}

const POLICY_MESSAGES: Messages = Messages {
    rolling_out: msg::REMEDIATING,
    completed: msg::ALL_COMPLIANT,
    timed_out: msg::TIMED_OUT,
    timed_out_canary: msg::TIMED_OUT_CANARY,
    timed_out_some: msg::TIMED_OUT_SOME,
};

const WORK_MESSAGES: Messages = Messages {
    rolling_out: msg::MW_ROLLING_OUT,
    completed: msg::MW_COMPLETED,
    timed_out: msg::MW_TIMED_OUT,
    timed_out_canary: msg::MW_TIMED_OUT_CANARY,
    timed_out_some: msg::MW_TIMED_OUT_SOME,
};

/// How often to look again at a template whose expected-values annotation cannot be read.
const BAD_TEMPLATE_RETRY_SECS: u64 = 300;

impl Run<'_> {
    /// Whether this CGU is a ManifestWork rollout.
    pub(super) fn works_mode(&self) -> bool {
        manifestwork::is_manifest_work_rollout(self.cgu)
    }

    /// The condition messages of this CGU's rollout type.
    pub(super) fn messages(&self) -> &'static Messages {
        if self.works_mode() {
            &WORK_MESSAGES
        } else {
            &POLICY_MESSAGES
        }
    }

    /// Validation of a ManifestWork rollout: every template must exist in the CGU namespace.
    /// Sets `Validated`; false means stop here (the requeue is TALM's 1 min for validation).
    pub(super) fn validate_templates(&mut self) -> bool {
        let missing = manifestwork::missing_templates(self.cgu, self.snap);
        if !missing.is_empty() {
            let message = manifestwork::missing_message(&missing);
            let changed = self.cond_message(types::VALIDATED).as_deref() != Some(message.as_str());
            self.set_cond(
                types::VALIDATED,
                false,
                reasons::NOT_ALL_MANIFEST_TEMPLATES_EXIST,
                &message,
            );
            if changed {
                self.events.push(events::validation_failure(
                    self.cgu,
                    "missing manifest templates",
                    &missing,
                ));
            }
            self.notes
                .pending_actions
                .push(format!("create the ManifestWorkReplicaSets: {message}"));
            self.requeue(Requeue::After(super::VALIDATION_RETRY_SECS));
            return false;
        }
        self.set_cond(
            types::VALIDATED,
            true,
            reasons::VALIDATION_COMPLETED,
            msg::VALIDATION_COMPLETED,
        );
        true
    }

    /// The name of the work of template `index` (any cluster).
    fn work_name(&self, index: usize) -> Option<String> {
        let t = manifestwork::templates(self.cgu).get(index)?;
        Some(names::manifest_work_name(self.namespace(), t))
    }

    /// The cluster's work of template `index`, when it exists and is this CGU's.
    fn own_work(
        &self,
        cluster: &str,
        index: usize,
    ) -> Option<&talm_shared::api::work::ManifestWork> {
        let name = self.work_name(index)?;
        self.snap
            .manifest_work(cluster, &name)
            .filter(|w| names::labelled_for(&w.metadata, self.namespace(), self.name()))
    }

    /// Steps one cluster through the templates. `p` is its progress entry (already
    /// `InProgress`); returns the index reached, which is the template count when the cluster
    /// is past its last template.
    pub(super) fn step_works(
        &mut self,
        cluster: &str,
        p: &mut ClusterRemediationProgress,
    ) -> usize {
        let count = manifestwork::templates(self.cgu).len();
        let mut i = usize::try_from(p.manifest_work_index.unwrap_or(0)).unwrap_or(0);
        while i < count {
            let Some(work) = self.own_work(cluster, i) else {
                break;
            };
            match manifestwork::completion(work) {
                Completion::Complete => {
                    // The previous work goes before the next is created; the last one stays
                    // until the batch's cleanup.
                    if i + 1 < count
                        && let Some(name) = self.work_name(i)
                    {
                        self.writes.push(Write::DeleteManifestWork {
                            namespace: cluster.to_string(),
                            name,
                        });
                    }
                    i += 1;
                }
                // Waiting for the work agent (summed up by `release_works`).
                Completion::Pending(_) => break,
                Completion::BadExpectedValues(why) => {
                    self.notes.pending_actions.push(format!(
                        "cluster {cluster}: fix template {}: {why}",
                        manifestwork::templates(self.cgu)
                            .get(i)
                            .cloned()
                            .unwrap_or_default()
                    ));
                    self.requeue(Requeue::After(BAD_TEMPLATE_RETRY_SECS));
                    break;
                }
            }
        }
        p.first_compliant_at = None::<Time>;
        p.policy_index = None;
        p.manifest_work_index = (i < count).then(|| i32::try_from(i).unwrap_or(i32::MAX));
        i
    }

    /// Creates the current work of each in-progress cluster of the batch that lacks it.
    pub(super) fn release_works(&mut self, batch: &[String]) {
        let mut rolling = 0usize;
        for c in batch {
            let p = self.progress_of(c);
            if p.state != super::progress::IN_PROGRESS {
                continue;
            }
            rolling += 1;
            let Some(i) = p.manifest_work_index.and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            if self.own_work(c, i).is_some() {
                continue;
            }
            let Some(template) = manifestwork::templates(self.cgu)
                .get(i)
                .and_then(|t| self.snap.manifest_work_template(self.namespace(), t))
            else {
                // Deleted since validation: nothing to create until it is back.
                self.notes.pending_actions.push(format!(
                    "cluster {c}: template {} is missing",
                    manifestwork::templates(self.cgu)
                        .get(i)
                        .cloned()
                        .unwrap_or_default()
                ));
                continue;
            };
            self.writes
                .push(Write::CreateManifestWork(manifestwork::build(
                    self.cgu, template, c,
                )));
        }
        if rolling > 0 {
            self.notes.pending_actions.push(format!(
                "{rolling} clusters of the current batch are rolling out ManifestWorks"
            ));
        }
    }

    /// Deletes this CGU's works (every template) in the given clusters' namespaces.
    pub(super) fn delete_works<'c>(&mut self, clusters: impl IntoIterator<Item = &'c String>) {
        let count = manifestwork::templates(self.cgu).len();
        let mut writes = Vec::new();
        for c in clusters {
            for i in 0..count {
                if self.own_work(c, i).is_some()
                    && let Some(name) = self.work_name(i)
                {
                    writes.push(Write::DeleteManifestWork {
                        namespace: c.clone(),
                        name,
                    });
                }
            }
        }
        self.writes.extend(writes);
    }

    /// Deletes every work of this CGU (the whole plan's clusters).
    pub(super) fn delete_all_works(&mut self) {
        if !self.works_mode() {
            return;
        }
        let clusters: Vec<String> = self
            .status
            .remediation_plan
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect();
        self.delete_works(&clusters);
    }

    /// `currentManifestWork` of a timed-out cluster: the work it was on and its trimmed status.
    pub(super) fn timed_out_work(&self, cluster: &str, index: usize) -> ManifestWorkStatus {
        ManifestWorkStatus {
            name: self.work_name(index).unwrap_or_default(),
            status: self
                .own_work(cluster, index)
                .and_then(manifestwork::trimmed_status),
        }
    }
}

//! Blocking CRs (docs/contract.md §3.2 steps 9 and 11).
//!
//! A CGU may name other CGUs in `spec.blockingCRs`; it does not start remediating until each of
//! them exists and has succeeded. While one is missing or unfinished, `Progressing` stays False
//! (`MissingBlockingCR` or `IncompleteBlockingCR`) and nothing else happens in that pass: no
//! backup, no cluster actions. The `partial` completion mode accepts a blocker once it has any
//! `Succeeded` condition, even False; with cluster filtering on as well, only the clusters that
//! completed in every blocker stay in the rollout (talm keeps their selection order, where TALM
//! shuffles them).

use std::collections::HashSet;

use talm_shared::api::cgu::{BlockingCr, ClusterGroupUpgrade};

use super::{BLOCKING_POLL_SECS, Run};
use crate::conditions::{self as cond, reasons, types};
use crate::decision::Requeue;

/// CGU annotation: `partial` lets blocking CGUs count as done once they have any `Succeeded`.
pub const BLOCKING_MODE_ANNOTATION: &str = "ran.openshift.io/blocking-cgu-completion-mode";
/// CGU annotation: `"true"` (with partial mode) keeps only clusters complete in every blocker.
pub const BLOCKING_FILTER_ANNOTATION: &str = "ran.openshift.io/blocking-cgu-cluster-filtering";

impl<'a> Run<'a> {
    /// `partial` mode: a blocker counts as done once it has any `Succeeded` condition.
    fn partial_mode(&self) -> bool {
        self.cgu
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BLOCKING_MODE_ANNOTATION))
            .is_some_and(|v| v == "partial")
    }

    /// Whether the partial-blocking cluster filter applies (partial mode, filtering on, and at
    /// least one blocker).
    pub(super) fn partial_filtering(&self) -> bool {
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

    /// The blocking CGU a reference names (an empty namespace means this CGU's).
    fn blocker(&self, b: &BlockingCr) -> Option<&'a ClusterGroupUpgrade> {
        let ns = if b.namespace.is_empty() {
            self.namespace()
        } else {
            b.namespace.as_str()
        };
        self.snap.cgu(ns, &b.name)
    }

    /// Step 9: true when every blocker exists and is done; otherwise sets `Progressing=False`
    /// with the reason and waits.
    pub(super) fn blocking_satisfied(&mut self) -> bool {
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
            self.requeue(Requeue::After(BLOCKING_POLL_SECS));
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
            self.requeue(Requeue::After(BLOCKING_POLL_SECS));
            return false;
        }
        true
    }

    /// The clusters that are `complete` in `status.clusters` of every blocker.
    pub(super) fn complete_in_all_blockers(&self) -> HashSet<String> {
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
}

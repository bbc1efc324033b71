//! The fleet pre-cache scheduler (talm extension, issue 17; docs/contract.md §4.4): which
//! clusters may pre-cache now, and at what per-node cap, under the PrecacheBudgets.
//!
//! Pure like the rest of the engine: it reads a [`Snapshot`] (PrecacheBudgets, ManagedCluster
//! labels, the SpokeAgents' pre-cache tasks and reports) and `now`, and returns [`Write`]s: a
//! [`Write::SetPrecacheGrant`] per task whose hold or cap changes and a
//! [`Write::SetPrecacheBudgetStatus`] per budget whose status changes. It runs fleet-wide (not
//! per CGU): the operator runs it after changes, `talm-hub plan` after the CGUs' reconciles.

use jiff::Timestamp;

use crate::decision::Write;
use crate::snapshot::Snapshot;

/// The scheduler's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Grant changes, then budget status changes.
    pub writes: Vec<Write>,
    /// Run again after this many seconds even without a change (e.g. to refresh the budgets'
    /// measured bandwidth), if any.
    pub requeue_after_secs: Option<u64>,
}

/// Decides the grants and the budgets' status for the whole fleet.
pub fn schedule(snap: &Snapshot, now: Timestamp) -> Schedule {
    // Interface placeholder (issue 17 is being built): no budget logic yet.
    let _ = (snap, now);
    Schedule::default()
}

/// Whether some PrecacheBudget may apply to `cluster`'s pre-cache: the engine then assigns the
/// task held (`hold: true`) and leaves it to [`schedule`] to let it in. With no budget at all
/// this is false and pre-caching starts at once, as in TALM.
pub fn may_apply(snap: &Snapshot, cluster: &str) -> bool {
    // Interface placeholder (issue 17 is being built).
    let _ = (snap, cluster);
    false
}

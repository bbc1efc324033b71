//! The reconcile entry point: one CGU + snapshot + now → [`Decision`].

use jiff::Timestamp;
use talm_shared::api::cgu::ClusterGroupUpgrade;

use crate::decision::{Decision, FinalizerChange, Requeue};
use crate::graph::UpdateGraph;
use crate::snapshot::Snapshot;

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
        f.debug_struct("Context").field("now", &self.now).finish_non_exhaustive()
    }
}

/// Reconciles one CGU.
pub fn reconcile(cgu: &ClusterGroupUpgrade, _snap: &Snapshot, _ctx: &Context<'_>) -> Decision {
    Decision {
        status: cgu.status.clone().unwrap_or_default(),
        finalizer: FinalizerChange::None,
        writes: Vec::new(),
        events: Vec::new(),
        requeue: Requeue::Never,
        notes: Default::default(),
    }
}

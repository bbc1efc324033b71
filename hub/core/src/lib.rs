//! talm's rollout engine: a pure function from one `ClusterGroupUpgrade`, a [`Snapshot`] of hub
//! objects and `now` to a [`Decision`]: the next CGU status, the object writes, the events, and
//! when to reconcile again.
//!
//! Contract:
//! - **No I/O and no clock.** Nothing here touches the network, the filesystem or the clock;
//!   `now` is an input. The one outside lookup (the OpenShift update graph) goes through the
//!   [`UpdateGraph`] trait, which the caller implements.
//! - **Deterministic.** The same inputs give the same decision (random TALM name suffixes are
//!   derived from the CGU uid instead).
//! - **Level-triggered.** Every bit of progress lives in the CGU status, so a decision can be
//!   recomputed after any restart.
//!
//! The behaviour follows TALM's observable contract (docs/contract.md §2–§4) with the quirks
//! listed in the README fixed on purpose.
#![warn(missing_docs)]

pub mod actions;
pub mod conditions;
pub mod decision;
pub mod events;
pub mod forecast;
pub mod graph;
pub mod installplan;
pub mod manifestwork;
pub mod names;
pub mod patch;
pub mod plan;
pub mod precache;
pub mod reconcile;
pub mod recovery;
pub mod schedule;
pub mod selection;
pub mod snapshot;
pub mod tasks;
pub mod timeouts;
pub mod validate;
pub mod windows;
pub mod ztp;

pub use decision::{
    Decision, Event, EventType, FinalizerChange, Notes, ObjectRef, Requeue, TaskChange, Write,
};
pub use graph::{NoUpdateGraph, UpdateGraph};
pub use reconcile::{Context, reconcile};
pub use snapshot::Snapshot;
pub use talm_shared::api;

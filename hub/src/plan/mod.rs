//! `talm-hub plan`: the offline adapter. It reads hub objects from files, runs the engine over
//! every ClusterGroupUpgrade to a fixed point at one instant (`--now`), applies the decisions to
//! the in-memory objects, and prints the objects (`-o yaml|json`, which can be fed back with a
//! later `--now` to continue the rollout) or a per-CGU table.
//!
//! - [`load`]: files, directories and stdin → raw objects plus typed views; input errors.
//! - [`store`]: the in-memory objects and the engine [`Snapshot`](talm_hub_core::Snapshot).
//! - [`apply`]: one decision → object writes, status, finalizer, Event objects.
//! - [`graph`]: `--update-graph` lookups.
//! - [`output`]: YAML, JSON and table rendering.

pub mod apply;
pub mod graph;
pub mod load;
pub mod output;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use talm_hub_core::{Context, Decision, NoUpdateGraph, Notes, Requeue, Snapshot, UpdateGraph};
use talm_shared::api::cgu::ClusterGroupUpgrade;

use self::apply::{Verb, apply_decision};
use self::store::{CguKey, ObjectKey, Store};
use crate::args::PlanArgs;
use crate::error::Error;

/// The most passes over the CGUs before giving up on reaching a fixed point.
pub const MAX_PASSES: usize = 200;

/// What the last reconcile of one CGU said, for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CguReport {
    /// The decision's notes (excluded clusters, pending actions).
    pub notes: Notes,
    /// The decision's requeue.
    pub requeue: Requeue,
    /// How many times the CGU was reconciled in this run.
    pub reconciles: usize,
    /// Whether the CGU was deleted in this run.
    pub deleted: bool,
}

/// The outcome of running the engine to a fixed point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Passes run.
    pub passes: usize,
    /// Per CGU, what its last reconcile said.
    pub reports: BTreeMap<CguKey, CguReport>,
    /// The net change of each object touched (CGUs included).
    pub changes: BTreeMap<ObjectKey, Verb>,
    /// Events emitted.
    pub events: usize,
}

/// Folds a new change of an object into its net change for the run.
fn record(changes: &mut BTreeMap<ObjectKey, Verb>, key: ObjectKey, verb: Verb) {
    use Verb::{Created, Deleted, Updated};
    let net = match (changes.get(&key), verb) {
        (None, v) => Some(v),
        (Some(Created), Updated) => Some(Created),
        (Some(Created), Deleted) => None,
        (Some(Deleted), Created) => Some(Updated),
        (Some(_), v) => Some(v),
    };
    match net {
        Some(v) => changes.insert(key, v),
        None => changes.remove(&key),
    };
}

/// Runs `reconcile` over every CGU until nothing asks for an immediate requeue with a change.
///
/// Each pass visits the CGUs still pending, sorted by namespace and name; each reconcile sees
/// the objects as left by the previous one (all CGUs included, for blocking). A CGU is visited
/// again only when its decision said [`Requeue::Immediately`] and changed some object. Time
/// does not move within a run.
pub fn settle<F>(
    store: &mut Store,
    now: Timestamp,
    graph: &dyn UpdateGraph,
    reconcile: F,
) -> Result<Settled, Error>
where
    F: Fn(&ClusterGroupUpgrade, &Snapshot, &Context<'_>) -> Decision,
{
    let ctx = Context { now, graph };
    let mut settled = Settled::default();
    let mut pending: BTreeSet<CguKey> = store.cgu_keys().into_iter().collect();
    while !pending.is_empty() {
        if settled.passes == MAX_PASSES {
            return Err(Error::NotConverged {
                passes: MAX_PASSES,
                cgus: pending.iter().map(CguKey::to_string).collect(),
            });
        }
        settled.passes += 1;
        let mut next = BTreeSet::new();
        for key in pending {
            let Some(cgu) = store.cgu(&key).cloned() else {
                continue;
            };
            let snapshot = store.snapshot();
            let decision = reconcile(&cgu, &snapshot, &ctx);
            let applied = apply_decision(store, &key, &decision, now)?;
            tracing::debug!(
                cgu = %key,
                pass = settled.passes,
                writes = decision.writes.len(),
                events = applied.events,
                changed = applied.changed(),
                requeue = ?decision.requeue,
                "reconciled"
            );
            if decision.requeue == Requeue::Immediately && applied.changed() && !applied.cgu_deleted
            {
                next.insert(key.clone());
            }
            settled.events += applied.events;
            for change in &applied.changes {
                record(&mut settled.changes, change.key.clone(), change.verb);
            }
            let report = settled.reports.entry(key).or_insert_with(|| CguReport {
                notes: Notes::default(),
                requeue: Requeue::Never,
                reconciles: 0,
                deleted: false,
            });
            report.notes = decision.notes;
            report.requeue = decision.requeue;
            report.reconciles += 1;
            report.deleted |= applied.cgu_deleted;
        }
        pending = next;
    }
    Ok(settled)
}

/// Parses `--now` (RFC 3339), defaulting to the wall-clock time read by the entry point.
pub fn parse_now(value: Option<&str>, wall_clock: Timestamp) -> Result<Timestamp, Error> {
    let Some(value) = value else {
        return Ok(wall_clock);
    };
    value.trim().parse::<Timestamp>().map_err(|e| Error::Usage {
        flag: "--now",
        message: format!(
            "{value:?} is not an RFC 3339 time such as 2026-01-01T10:00:00Z ({})",
            e.to_string().replace('\n', " ")
        ),
    })
}

/// Runs `talm-hub plan`.
pub fn run(args: &PlanArgs, wall_clock: Timestamp) -> Result<(), Error> {
    let now = parse_now(args.now.as_deref(), wall_clock)?;
    let file_graph;
    let graph: &dyn UpdateGraph = match &args.update_graph {
        Some(path) => {
            file_graph = graph::FileUpdateGraph::load(path)?;
            &file_graph
        }
        None => &NoUpdateGraph,
    };
    let loaded = load::load_paths(&args.files, &mut std::io::stdin())?;
    let objects = loaded.len();
    let mut store = Store::from_loaded(loaded, now)?;
    let cgus = store.cgu_keys().len();
    tracing::info!(objects, cgus, now = %now, "loaded input");
    let settled = settle(&mut store, now, graph, talm_hub_core::reconcile)?;
    tracing::info!(
        passes = settled.passes,
        changed_objects = settled.changes.len(),
        events = settled.events,
        "engine settled"
    );
    let mut stdout = std::io::stdout().lock();
    match output::write(&mut stdout, args.output, &store, &settled) {
        Ok(()) => Ok(()),
        // `talm-hub plan ... | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Output(e)),
    }
}

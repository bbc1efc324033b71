//! The fleet pre-cache scheduler (talm extension, issue 17; docs/contract.md §4.4): which
//! clusters may pre-cache now, and at what per-node cap, under the PrecacheBudgets.
//!
//! Pure like the rest of the engine: it reads a [`Snapshot`] (PrecacheBudgets, ManagedCluster
//! labels, the SpokeAgents' pre-cache tasks and reports) and `now`, and returns [`Write`]s: a
//! [`Write::SetPrecacheGrant`] per task whose hold or cap changes and a
//! [`Write::SetPrecacheBudgetStatus`] per budget whose status changes. It runs fleet-wide (not
//! per CGU): the operator runs it after changes, `talm-hub plan` after the CGUs' reconciles.
//!
//! - [`budgets`]: parsing and checking a budget (quantities, hosts, selector);
//! - `fleet`: the tasks in play, the budgets and limits that apply to each, the queue order;
//! - `admit`: which queued tasks are let in (head-of-line per limit, no preemption);
//! - [`divide`]: the caps, max-min fair over every bandwidth limit;
//! - `status`: each budget's status.

mod admit;
pub mod budgets;
pub mod divide;
mod fleet;
mod status;

use jiff::Timestamp;
use talm_shared::api::spokeagent::grant_rate;

use crate::decision::Write;
use crate::snapshot::Snapshot;

pub use status::display_rate;

/// The least share of a bandwidth-only budget (no `maxConcurrentClusters`) each of its active
/// clusters keeps: such a budget lets another cluster in only while every active one would
/// still get at least this much (1 MiB/s), and always lets one in.
pub const MIN_SHARE: i64 = 1 << 20;

/// How often the scheduler runs again while any budget has an active or queued cluster, so the
/// budgets' bandwidth in use stays fresh (seconds).
pub const REFRESH_SECS: u64 = 30;

/// The scheduler's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Grant changes, then budget status changes. The grants that lower an agent's rate (a
    /// hold, a lower cap) come first, [`Schedule::lowering`] of them, then the ones that raise
    /// it (a let-in, a higher cap): applied in that order, the grants written never add up to
    /// more than a budget (the agents receive them on separate connections, so for an instant
    /// of message latency they may).
    pub writes: Vec<Write>,
    /// How many of the first `writes` lower an agent's rate; the operator applies them before
    /// the rest.
    pub lowering: usize,
    /// Run again after this many seconds even without a change (e.g. to refresh the budgets'
    /// measured bandwidth), if any.
    pub requeue_after_secs: Option<u64>,
}

/// Decides the grants and the budgets' status for the whole fleet.
///
/// Tasks in play are the SpokeAgents' `spec.precache` tasks with no final report for their id
/// and before their deadline; held ones are queued, the others active. Queued tasks are let
/// in, in queue order, while every limit that applies has room (see `admit`); every active
/// task's cap is then divided afresh (see [`divide`]). Only what differs from the objects is
/// written, so a second run on the result writes nothing.
pub fn schedule(snap: &Snapshot, now: Timestamp) -> Schedule {
    let fleet = fleet::Fleet::read(snap, now);
    let hold = admit::admit(&fleet);
    // Division over the active tasks, in queue order, with their bandwidth limits.
    let bandwidth: Vec<i64> = fleet
        .limiters
        .iter()
        .map(|l| l.bandwidth.unwrap_or(0))
        .collect();
    let mut active = Vec::new();
    let mut limits = Vec::new();
    for (i, t) in fleet.tasks.iter().enumerate() {
        if t.play == fleet::Play::Live && !hold[i] {
            active.push(i);
            limits.push(
                t.limiters
                    .iter()
                    .copied()
                    .filter(|&l| fleet.limiters[l].bandwidth.is_some())
                    .collect::<Vec<usize>>(),
            );
        }
    }
    let divided = divide::water_fill(&bandwidth, &limits);
    let mut caps: Vec<Option<i64>> = vec![None; fleet.tasks.len()];
    for (i, cap) in active.iter().zip(divided) {
        caps[*i] = cap;
    }
    let mut grants = Vec::new();
    for (i, t) in fleet.tasks.iter().enumerate() {
        if t.play != fleet::Play::Live {
            continue;
        }
        if t.held != hold[i] || t.cap != caps[i] {
            let raises = grant_rate(t.held, t.cap) < grant_rate(hold[i], caps[i]);
            grants.push((
                raises,
                Write::SetPrecacheGrant {
                    namespace: t.namespace.to_string(),
                    name: t.cluster.to_string(),
                    task_id: t.id.to_string(),
                    hold: hold[i],
                    rate_limit_bytes_per_second: caps[i],
                },
            ));
        }
    }
    grants.sort_by(|a, b| (a.0, grant_key(&a.1)).cmp(&(b.0, grant_key(&b.1))));
    let lowering = grants.iter().take_while(|(raises, _)| !raises).count();
    let mut writes: Vec<Write> = grants.into_iter().map(|(_, w)| w).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); fleet.budgets.len()];
    for (i, t) in fleet.tasks.iter().enumerate() {
        for &b in &t.budgets {
            members[b].push(i);
        }
    }
    let mut statuses: Vec<(&str, Write)> = Vec::new();
    for (index, b) in fleet.sources.iter().enumerate() {
        let st = status::valid_status(&fleet, index, &members[index], &hold, &caps, now);
        if b.status.as_ref() != Some(&st) {
            statuses.push((fleet.budgets[index].name, status_write(b, st)));
        }
    }
    for (b, why) in &fleet.invalid {
        let st = status::invalid_status(b, why, now);
        if b.status.as_ref() != Some(&st) {
            statuses.push((
                b.metadata.name.as_deref().unwrap_or_default(),
                status_write(b, st),
            ));
        }
    }
    statuses.sort_by(|a, b| a.0.cmp(b.0));
    writes.extend(statuses.into_iter().map(|(_, w)| w));
    let busy = !fleet.budgets.is_empty() && fleet.tasks.iter().any(|t| t.play == fleet::Play::Live);
    Schedule {
        writes,
        lowering,
        requeue_after_secs: busy.then_some(REFRESH_SECS),
    }
}

fn grant_key(w: &Write) -> (&str, &str) {
    match w {
        Write::SetPrecacheGrant {
            namespace, name, ..
        } => (namespace, name),
        _ => ("", ""),
    }
}

fn status_write(
    b: &talm_shared::api::precachebudget::PrecacheBudget,
    status: talm_shared::api::precachebudget::PrecacheBudgetStatus,
) -> Write {
    Write::SetPrecacheBudgetStatus {
        name: b.metadata.name.clone().unwrap_or_default(),
        status,
    }
}

/// The valid budgets, parsed once for many [`Budgets::select`] calls (the CGU reconcile asks
/// for every plan cluster).
#[derive(Debug)]
pub struct Budgets<'a>(Vec<budgets::Budget<'a>>);

impl<'a> Budgets<'a> {
    /// The valid budgets of the snapshot.
    pub fn read(snap: &'a Snapshot) -> Budgets<'a> {
        Budgets(
            snap.precache_budgets()
                .filter_map(|b| budgets::parse(b).ok())
                .collect(),
        )
    }

    /// Whether some budget selects `cluster` (see [`may_apply`]).
    pub fn select(&self, snap: &Snapshot, cluster: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let labels = snap
            .managed_cluster(cluster)
            .and_then(|m| m.metadata.labels.as_ref())
            .unwrap_or(&fleet::NO_LABELS);
        self.0.iter().any(|b| b.selects(labels))
    }
}

/// Whether some PrecacheBudget may apply to `cluster`'s pre-cache: the engine then assigns the
/// task held (`hold: true`) and leaves it to [`schedule`] to let it in. With no budget at all
/// this is false and pre-caching starts at once, as in TALM.
///
/// Only valid budgets count (an invalid one is not applied, so holding for it would only
/// delay), and a budget counts when its selector matches the cluster's labels (no selector:
/// every cluster), whether or not its registry entries turn out to apply: those are known only
/// once the held agent reports its registries.
pub fn may_apply(snap: &Snapshot, cluster: &str) -> bool {
    Budgets::read(snap).select(snap, cluster)
}

//! The scheduler's view of the fleet: the valid budgets flattened into limiters (one per budget,
//! one per registry entry), and every SpokeAgent pre-cache task with the budgets that select
//! its cluster and the limiters that apply to it, in queue order.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::spokeagent::{PrecacheOrder, TransferProgress};
use talm_shared::task_state::TaskState;

use super::budgets::{self, Budget, Invalid, Limit};
use crate::snapshot::Snapshot;

/// No labels (a SpokeAgent without its ManagedCluster).
pub(super) static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// Where a task stands for the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Play {
    /// Not final and before its deadline: held (queued) or downloading (active).
    Live,
    /// The agent reported a final state for it.
    Done,
    /// Past its deadline without a final report: the agent gives up at the deadline, so it
    /// no longer takes a place (a silent agent must not hold a budget forever).
    Expired,
}

/// One SpokeAgent's pre-cache task.
#[derive(Clone, Debug)]
pub(super) struct Task<'a> {
    /// The SpokeAgent's namespace.
    pub namespace: &'a str,
    /// The cluster (the SpokeAgent's name).
    pub cluster: &'a str,
    /// The task id.
    pub id: &'a str,
    /// `hold` as in the spec.
    pub held: bool,
    /// `rateLimitBytesPerSecond` as in the spec.
    pub cap: Option<i64>,
    /// The queue place.
    pub order: Option<&'a PrecacheOrder>,
    /// The progress of the agent's report for this task, if any.
    pub progress: Option<&'a TransferProgress>,
    /// Where it stands.
    pub play: Play,
    /// The valid budgets (indices into [`Fleet::budgets`]) whose selector matches the cluster.
    pub budgets: Vec<usize>,
    /// The limiters that apply: each selecting budget's own, and its registry entries whose
    /// host the agent reported.
    pub limiters: Vec<usize>,
    /// Some selecting budget lists registries and the agent has not reported its yet.
    pub awaits_registries: bool,
}

impl Task<'_> {
    /// The registries the agent reported (after mirror resolution), once it has resolved its
    /// image list: a report with registries, or with a known total.
    pub fn registries(&self) -> Option<&[String]> {
        registries_of(self.progress)
    }

    /// Reported throughput, bytes/s.
    pub fn bytes_per_second(&self) -> i64 {
        self.progress.map_or(0, |p| p.bytes_per_second.max(0))
    }
}

/// See [`Task::registries`].
pub(super) fn registries_of(progress: Option<&TransferProgress>) -> Option<&[String]> {
    progress
        .filter(|p| !p.registries.is_empty() || p.bytes_total > 0)
        .map(|p| p.registries.as_slice())
}

/// The queue order: earlier batch, then older CGU, then task id, then cluster; a task without
/// an order goes last.
pub(super) fn queue_order(a: &Task<'_>, b: &Task<'_>) -> Ordering {
    let key = |t: &Task<'_>| t.order.map(|o| (o.batch, o.cgu_created.0));
    match (key(a), key(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
    .then_with(|| a.id.cmp(b.id))
    .then_with(|| a.cluster.cmp(b.cluster))
    .then_with(|| a.namespace.cmp(b.namespace))
}

/// Everything the scheduler reads, indexed.
pub(super) struct Fleet<'a> {
    /// The valid budgets, by name.
    pub budgets: Vec<Budget<'a>>,
    /// The objects of [`Fleet::budgets`], same order.
    pub sources: Vec<&'a PrecacheBudget>,
    /// The invalid budgets, with why.
    pub invalid: Vec<(&'a PrecacheBudget, Invalid)>,
    /// Every limit the scheduler enforces (a "limiter"): budget `b`'s own is
    /// `first_limiter[b]`, its registry entry `r` is `first_limiter[b] + 1 + r`.
    pub limiters: Vec<Limit>,
    /// See [`Fleet::limiters`].
    pub first_limiter: Vec<usize>,
    /// Every pre-cache task, in queue order.
    pub tasks: Vec<Task<'a>>,
    /// Per valid budget, how many ManagedClusters its selector matches.
    pub selected_clusters: Vec<usize>,
}

impl<'a> Fleet<'a> {
    /// Reads the snapshot at `now`.
    pub fn read(snap: &'a Snapshot, now: Timestamp) -> Fleet<'a> {
        let mut budgets = Vec::new();
        let mut sources = Vec::new();
        let mut invalid = Vec::new();
        for b in snap.precache_budgets() {
            match budgets::parse(b) {
                Ok(p) => {
                    budgets.push(p);
                    sources.push(b);
                }
                Err(e) => invalid.push((b, e)),
            }
        }
        let mut limiters = Vec::new();
        let mut first_limiter = Vec::with_capacity(budgets.len());
        for b in &budgets {
            first_limiter.push(limiters.len());
            limiters.push(b.limit);
            limiters.extend(b.registries.iter().map(|r| r.limit));
        }
        // Each selector is matched once per ManagedCluster: the counts for `ClustersSelected`
        // and each cluster's budgets for its task.
        let mut selected_clusters = vec![0; budgets.len()];
        let mut selecting_of: HashMap<&str, Vec<usize>> = HashMap::new();
        if !budgets.is_empty() {
            for m in snap.managed_clusters() {
                let labels = m.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
                let selecting: Vec<usize> = (0..budgets.len())
                    .filter(|&i| budgets[i].selects(labels))
                    .collect();
                for &i in &selecting {
                    selected_clusters[i] += 1;
                }
                selecting_of.insert(m.metadata.name.as_deref().unwrap_or_default(), selecting);
            }
        }
        let mut tasks = Vec::new();
        for agent in snap.spoke_agents() {
            let Some(spec) = agent.spec.precache.as_ref() else {
                continue;
            };
            let report = agent
                .status
                .as_ref()
                .and_then(|s| s.precache.as_ref())
                .filter(|r| r.id == spec.id);
            let is_final = report
                .and_then(|r| TaskState::from_name(&r.state))
                .is_some_and(TaskState::is_final);
            let play = if is_final {
                Play::Done
            } else if now > spec.deadline.0 {
                Play::Expired
            } else {
                Play::Live
            };
            let cluster = agent.metadata.name.as_deref().unwrap_or_default();
            let selecting: Vec<usize> = match selecting_of.get(cluster) {
                Some(s) => s.clone(),
                // No ManagedCluster: no labels, so only selectors that match nothing select it.
                None => (0..budgets.len())
                    .filter(|&i| budgets[i].selects(&NO_LABELS))
                    .collect(),
            };
            let progress = report.and_then(|r| r.progress.as_ref());
            let reported = registries_of(progress);
            let mut applying = Vec::with_capacity(selecting.len());
            let mut awaits_registries = false;
            for &i in &selecting {
                let b = &budgets[i];
                applying.push(first_limiter[i]);
                match reported {
                    Some(hosts) => {
                        for (r, reg) in b.registries.iter().enumerate() {
                            if hosts.contains(&reg.host) {
                                applying.push(first_limiter[i] + 1 + r);
                            }
                        }
                    }
                    None => awaits_registries |= !b.registries.is_empty(),
                }
            }
            tasks.push(Task {
                namespace: agent.metadata.namespace.as_deref().unwrap_or_default(),
                cluster,
                id: &spec.id,
                held: spec.hold,
                cap: spec.rate_limit_bytes_per_second,
                order: spec.order.as_ref(),
                progress,
                play,
                budgets: selecting,
                limiters: applying,
                awaits_registries,
            });
        }
        tasks.sort_by(queue_order);
        Fleet {
            budgets,
            sources,
            invalid,
            limiters,
            first_limiter,
            tasks,
            selected_clusters,
        }
    }
}

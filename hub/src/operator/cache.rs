//! The operator's one in-memory view of the hub: the engine [`Snapshot`], kept up to date from
//! watch events and from the operator's own writes, plus the indexes that map an object change
//! to the CGUs it affects.
//!
//! - **One snapshot, incrementally maintained.** Every watched kind feeds [`Cache::apply`];
//!   a reconcile reads the snapshot under a read lock and never lists.
//! - **Re-lists.** A watch restart (`Init` … `InitApply`* … `InitDone`) replaces the kind's
//!   objects: keys not seen again are removed at `InitDone`, as a reflector store would.
//! - **Write-through.** After a successful write the operator records the server's response
//!   ([`Cache::record_write`]), so the next reconcile sees it even before the watch catches up.
//!   Watch events of that object older than the write are then skipped (they would roll the
//!   snapshot back), and the echo of the operator's own write triggers nothing (the reconcile
//!   that wrote it already decided what comes next). "Older" compares resourceVersions as
//!   integers, which is what etcd (and the test double) hand out; when a resourceVersion is
//!   not an integer the cache falls back to applying every event as it comes (a stale event
//!   then rolls back until the next one, which level-triggered reconciles tolerate).
//! - **Indexes.** policy name → CGUs that manage it; cluster → CGUs whose spec or plan holds it;
//!   blocking CGU → CGUs it blocks; CGUs not yet started that select clusters by label;
//!   ManifestWork template (`namespace/name` of a ManifestWorkReplicaSet) → CGUs whose
//!   `spec.manifestWorkTemplates` name it. CGUs that have completed are not indexed. TALM
//!   instead lists every CGU on every policy update. talm's own objects (Placements, bindings,
//!   views, ManifestWorks) map to their CGU through the labels talm put on them.
//! - **Pre-cache scheduling.** PrecacheBudgets trigger no CGU; a change the fleet pre-cache
//!   scheduler reads (a budget, a ManagedCluster's labels, a SpokeAgent's pre-cache task or
//!   report) marks the cache for it ([`Cache::take_schedule_dirty`],
//!   [`super::scheduler::relevant`]). Echoes of the operator's writes do not, nor do the
//!   scheduler's own writes ([`Cache::record_scheduled`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use talm_hub_core::Snapshot;
use talm_hub_core::names::{self, labels};
use talm_hub_core::snapshot::{PolicyChange, PolicyView};
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::precaching::PreCachingConfig;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterView, Placement, PlacementBinding,
};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::api::work::{ManifestWork, ManifestWorkReplicaSet};

/// `namespace/name` of a CGU.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CguRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl CguRef {
    /// The reference of a CGU object.
    pub fn of(cgu: &ClusterGroupUpgrade) -> Self {
        Self::of_meta(&cgu.metadata)
    }

    /// The reference of a CGU from its metadata.
    pub fn of_meta(meta: &talm_shared::api::ObjectMeta) -> Self {
        CguRef {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for CguRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds the operator watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `ClusterGroupUpgrade`.
    Cgu,
    /// `ManagedCluster`.
    ManagedCluster,
    /// `Policy` (root and child).
    Policy,
    /// `Placement` (talm's).
    Placement,
    /// `PlacementBinding` (talm's).
    PlacementBinding,
    /// `PreCachingConfig`.
    PreCachingConfig,
    /// `SpokeAgent`.
    SpokeAgent,
    /// The `cluster-group-upgrade-overrides` ConfigMaps.
    ConfigMap,
    /// talm's `ManagedClusterView`s (InstallPlan approval).
    ManagedClusterView,
    /// talm's `ManifestWork`s (ManifestWork rollouts).
    ManifestWork,
    /// `ManifestWorkReplicaSet`s (the templates of ManifestWork rollouts).
    ManifestWorkReplicaSet,
    /// `PrecacheBudget`s (cluster-scoped; read by the pre-cache scheduler only).
    PrecacheBudget,
}

impl Kind {
    /// Every watched kind.
    pub const ALL: [Kind; 12] = [
        Kind::Cgu,
        Kind::ManagedCluster,
        Kind::Policy,
        Kind::Placement,
        Kind::PlacementBinding,
        Kind::PreCachingConfig,
        Kind::SpokeAgent,
        Kind::ConfigMap,
        Kind::ManagedClusterView,
        Kind::ManifestWork,
        Kind::ManifestWorkReplicaSet,
        Kind::PrecacheBudget,
    ];

    /// Lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cgu => "clustergroupupgrade",
            Kind::ManagedCluster => "managedcluster",
            Kind::Policy => "policy",
            Kind::Placement => "placement",
            Kind::PlacementBinding => "placementbinding",
            Kind::PreCachingConfig => "precachingconfig",
            Kind::SpokeAgent => "spokeagent",
            Kind::ConfigMap => "configmap",
            Kind::ManagedClusterView => "managedclusterview",
            Kind::ManifestWork => "manifestwork",
            Kind::ManifestWorkReplicaSet => "manifestworkreplicaset",
            Kind::PrecacheBudget => "precachebudget",
        }
    }
}

type Key = (String, String);

/// A watched object as the cache needs it: its kind, key and resourceVersion.
pub trait Tracked: Clone + Send + Sync + 'static {
    /// The kind.
    const KIND: Kind;
    /// Its metadata.
    fn meta(&self) -> &talm_shared::api::ObjectMeta;
}

macro_rules! tracked {
    ($t:ty, $k:expr) => {
        impl Tracked for $t {
            const KIND: Kind = $k;
            fn meta(&self) -> &talm_shared::api::ObjectMeta {
                &self.metadata
            }
        }
    };
}
tracked!(ClusterGroupUpgrade, Kind::Cgu);
tracked!(ManagedCluster, Kind::ManagedCluster);
tracked!(PolicyView, Kind::Policy);
tracked!(Placement, Kind::Placement);
tracked!(PlacementBinding, Kind::PlacementBinding);
tracked!(PreCachingConfig, Kind::PreCachingConfig);
tracked!(SpokeAgent, Kind::SpokeAgent);
tracked!(ConfigMapView, Kind::ConfigMap);
tracked!(ManagedClusterView, Kind::ManagedClusterView);
tracked!(ManifestWork, Kind::ManifestWork);
tracked!(ManifestWorkReplicaSet, Kind::ManifestWorkReplicaSet);
tracked!(PrecacheBudget, Kind::PrecacheBudget);

fn key_of(meta: &talm_shared::api::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// One watch event, kind-erased into an object of the cache's closed set of kinds.
// Every variant carries an ObjectMeta (hundreds of bytes); events are moved once and dropped,
// so boxing them all would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Object {
    /// A CGU.
    Cgu(Box<ClusterGroupUpgrade>),
    /// The metadata of a CGU watch event whose spec and status were not read because the
    /// cache expected it to be the echo of the operator's own write, or older
    /// ([`Cache::is_echo_or_stale`]).
    CguEcho(talm_shared::api::ObjectMeta),
    /// A ManagedCluster.
    ManagedCluster(ManagedCluster),
    /// A Policy, as the snapshot reads it.
    Policy(PolicyView),
    /// A Placement.
    Placement(Placement),
    /// A PlacementBinding.
    PlacementBinding(PlacementBinding),
    /// A PreCachingConfig.
    PreCachingConfig(PreCachingConfig),
    /// A SpokeAgent.
    SpokeAgent(SpokeAgent),
    /// An overrides ConfigMap.
    ConfigMap(ConfigMapView),
    /// A ManagedClusterView.
    ManagedClusterView(ManagedClusterView),
    /// A ManifestWork.
    ManifestWork(ManifestWork),
    /// A ManifestWorkReplicaSet.
    ManifestWorkReplicaSet(ManifestWorkReplicaSet),
    /// A PrecacheBudget.
    PrecacheBudget(PrecacheBudget),
}

/// Conversion into [`Object`].
pub trait IntoObject: Tracked {
    /// Wraps the object.
    fn into_object(self) -> Object;
}

macro_rules! into_object {
    ($t:ty, $v:ident) => {
        impl IntoObject for $t {
            fn into_object(self) -> Object {
                Object::$v(self)
            }
        }
    };
}
impl IntoObject for ClusterGroupUpgrade {
    fn into_object(self) -> Object {
        Object::Cgu(Box::new(self))
    }
}
into_object!(ManagedCluster, ManagedCluster);
into_object!(PolicyView, Policy);
into_object!(Placement, Placement);
into_object!(PlacementBinding, PlacementBinding);
into_object!(PreCachingConfig, PreCachingConfig);
into_object!(SpokeAgent, SpokeAgent);
into_object!(ConfigMapView, ConfigMap);
into_object!(ManagedClusterView, ManagedClusterView);
into_object!(ManifestWork, ManifestWork);
into_object!(ManifestWorkReplicaSet, ManifestWorkReplicaSet);
into_object!(PrecacheBudget, PrecacheBudget);

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cgu(_) | Object::CguEcho(_) => Kind::Cgu,
            Object::ManagedCluster(_) => Kind::ManagedCluster,
            Object::Policy(_) => Kind::Policy,
            Object::Placement(_) => Kind::Placement,
            Object::PlacementBinding(_) => Kind::PlacementBinding,
            Object::PreCachingConfig(_) => Kind::PreCachingConfig,
            Object::SpokeAgent(_) => Kind::SpokeAgent,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::ManagedClusterView(_) => Kind::ManagedClusterView,
            Object::ManifestWork(_) => Kind::ManifestWork,
            Object::ManifestWorkReplicaSet(_) => Kind::ManifestWorkReplicaSet,
            Object::PrecacheBudget(_) => Kind::PrecacheBudget,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &talm_shared::api::ObjectMeta {
        match self {
            Object::Cgu(o) => &o.metadata,
            Object::CguEcho(m) => m,
            Object::ManagedCluster(o) => &o.metadata,
            Object::Policy(o) => &o.metadata,
            Object::Placement(o) => &o.metadata,
            Object::PlacementBinding(o) => &o.metadata,
            Object::PreCachingConfig(o) => &o.metadata,
            Object::SpokeAgent(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::ManagedClusterView(o) => &o.metadata,
            Object::ManifestWork(o) => &o.metadata,
            Object::ManifestWorkReplicaSet(o) => &o.metadata,
            Object::PrecacheBudget(o) => &o.metadata,
        }
    }
}

/// A kind-erased watch event.
#[derive(Clone, Debug)]
pub enum WatchEvent {
    /// The watch (re)started a list.
    Init(Kind),
    /// An object of the list.
    InitApply(Object),
    /// The list is complete.
    InitDone(Kind),
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
}

/// After one of the operator's own writes: watch events below `min` are stale; the event at
/// `echo` is the write's own echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Floor {
    min: u64,
    echo: Option<u64>,
}

fn rv_of(meta: &talm_shared::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

/// What to do with a watch event given the object's floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Older than the operator's write: skip.
    Stale,
    /// The echo of the operator's write: apply without triggers.
    Echo,
    /// Apply normally.
    Fresh,
}

/// A watch event about to be applied as new: a CGU whose body was skipped as an echo should
/// never be one (the floor it was skipped for only goes when the watch reaches it).
fn fresh(obj: Object) -> Object {
    if let Object::CguEcho(meta) = &obj {
        tracing::warn!(
            cgu = %CguRef::of_meta(meta),
            "a CGU event skipped as an echo was not one; reconciling it"
        );
    }
    obj
}

/// Per-CGU index entry: what the CGU is indexed under.
#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    /// `spec.managedPolicies` names.
    policies: Vec<String>,
    /// Resolved namespaces (`status.managedPoliciesNs`).
    policy_ns: BTreeMap<String, String>,
    /// Clusters from the spec, the canaries and the plan (shared between versions of the CGU
    /// whose sources did not change: building it is 10,000 allocations at fleet scale).
    clusters: Arc<HashSet<String>>,
    /// `spec.blockingCRs`.
    blockers: Vec<CguRef>,
    /// Not started and selecting clusters by label: any ManagedCluster change may matter.
    by_selector: bool,
    /// Not started: every compliance change of a managed policy may change the plan.
    not_started: bool,
    /// `spec.preCachingConfigRef`, resolved.
    precaching_config: Option<Key>,
    /// `spec.manifestWorkTemplates` names (ManifestWorkReplicaSets in the CGU's namespace).
    templates: Vec<String>,
}

fn has_condition(cgu: &ClusterGroupUpgrade, type_: &str, status: Option<&str>) -> bool {
    cgu.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && status.is_none_or(|v| c.status == v))
    })
}

/// Whether the CGU is done for good: completed (Succeeded present and `completedAt` set).
pub fn is_finished(cgu: &ClusterGroupUpgrade) -> bool {
    has_condition(cgu, "Succeeded", None)
        && cgu
            .status
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some_and(|s| s.completed_at.is_some())
}

impl Entry {
    /// The entry of `cgu`; `same_clusters` is the cluster set of its previous version when
    /// the spec's clusters, canaries and the plan are unchanged.
    fn of(cgu: &ClusterGroupUpgrade, same_clusters: Option<Arc<HashSet<String>>>) -> Option<Entry> {
        if is_finished(cgu) && cgu.metadata.deletion_timestamp.is_none() {
            return None;
        }
        let spec = &cgu.spec;
        let status = cgu.status.as_ref();
        let clusters = same_clusters.unwrap_or_else(|| {
            let mut clusters: HashSet<String> = HashSet::new();
            clusters.extend(spec.clusters.iter().flatten().cloned());
            clusters.extend(spec.remediation_strategy.canaries.iter().flatten().cloned());
            if let Some(plan) = status.and_then(|s| s.remediation_plan.as_ref()) {
                clusters.extend(plan.iter().flatten().cloned());
            }
            Arc::new(clusters)
        });
        let not_started = !has_condition(cgu, "Progressing", Some("True"));
        let selects = spec
            .cluster_label_selectors
            .as_ref()
            .is_some_and(|s| !s.is_empty())
            || spec
                .cluster_selector
                .as_ref()
                .is_some_and(|s| !s.is_empty());
        let ns = cgu.metadata.namespace.clone().unwrap_or_default();
        Some(Entry {
            policies: spec.managed_policies.clone().unwrap_or_default(),
            policy_ns: status
                .and_then(|s| s.managed_policies_ns.clone())
                .unwrap_or_default(),
            clusters,
            blockers: spec
                .blocking_crs
                .iter()
                .flatten()
                .map(|b| CguRef {
                    namespace: if b.namespace.is_empty() {
                        ns.clone()
                    } else {
                        b.namespace.clone()
                    },
                    name: b.name.clone(),
                })
                .collect(),
            by_selector: not_started && selects,
            not_started,
            precaching_config: spec.pre_caching_config_ref.as_ref().map(|r| {
                let rns = if r.namespace.is_empty() {
                    ns.clone()
                } else {
                    r.namespace.clone()
                };
                (rns, r.name.clone())
            }),
            templates: spec.manifest_work_templates.clone().unwrap_or_default(),
        })
    }
}

/// The cache: snapshot, re-list bookkeeping, write guards and indexes.
#[derive(Debug, Default)]
pub struct Cache {
    snapshot: Snapshot,
    present: HashMap<Kind, HashSet<Key>>,
    relisting: HashMap<Kind, HashSet<Key>>,
    synced: HashSet<Kind>,
    floors: HashMap<(Kind, Key), Floor>,
    // Indexes.
    entries: HashMap<CguRef, Entry>,
    by_policy: HashMap<String, HashSet<CguRef>>,
    by_cluster: HashMap<String, HashSet<CguRef>>,
    by_blocker: HashMap<CguRef, HashSet<CguRef>>,
    selecting: HashSet<CguRef>,
    /// ManifestWork template (namespace, name) → CGUs that name it.
    by_template: HashMap<Key, HashSet<CguRef>>,
    /// Clusters the ZTP controller must look at again (their ManagedCluster changed, or their
    /// `ztp-install` CGU was deleted).
    ztp_pending: BTreeSet<String>,
    /// Something the pre-cache scheduler reads changed since it last took this.
    schedule_dirty: bool,
    /// Marked when a SpokeAgent's spec changes (or one is added or removed), whoever wrote it:
    /// the agent gateway waits on it to push a new task, grant or cap to the session at once
    /// instead of at its next poll.
    agent_specs: std::sync::Arc<talm_gateway::store::SpecChanges>,
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether every watched kind has finished its first list.
    pub fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }

    /// The kinds that have finished their first list.
    pub fn synced_kinds(&self) -> Vec<Kind> {
        let mut v: Vec<Kind> = self.synced.iter().copied().collect();
        v.sort();
        v
    }

    /// Whether `kind` has finished its first list.
    pub fn kind_synced(&self, kind: Kind) -> bool {
        self.synced.contains(&kind)
    }

    /// Every SpokeAgent in the snapshot (the gateway reads specs from here instead of listing).
    pub fn spoke_agents(&self) -> impl Iterator<Item = &SpokeAgent> {
        let kind = Kind::SpokeAgent;
        let mut keys: Vec<&Key> = self
            .present
            .get(&kind)
            .into_iter()
            .flatten()
            .chain(self.relisting.get(&kind).into_iter().flatten())
            .collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|(ns, name)| self.snapshot.spoke_agent(ns, name))
    }

    /// Marked with the cluster whenever a SpokeAgent's spec changes in the cache (a watch
    /// event or one of the operator's own writes), or a SpokeAgent is added or removed.
    pub fn agent_spec_changes(&self) -> std::sync::Arc<talm_gateway::store::SpecChanges> {
        self.agent_specs.clone()
    }

    /// Whether something the pre-cache scheduler reads changed since the last call (and
    /// clears the mark).
    pub fn take_schedule_dirty(&mut self) -> bool {
        std::mem::take(&mut self.schedule_dirty)
    }

    /// Whether something the pre-cache scheduler reads changed (without clearing the mark).
    pub fn schedule_dirty(&self) -> bool {
        self.schedule_dirty
    }

    fn note_schedule(&mut self, obj: &Object) {
        if !self.schedule_dirty && super::scheduler::relevant(&self.snapshot, obj) {
            self.schedule_dirty = true;
        }
    }

    /// Whether the ZTP controller has clusters to look at.
    pub fn ztp_pending(&self) -> bool {
        !self.ztp_pending.is_empty()
    }

    /// Takes the clusters the ZTP controller must look at, in name order.
    pub fn take_ztp_pending(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ztp_pending).into_iter().collect()
    }

    /// Queues every known ManagedCluster for the ZTP controller (when it starts leading).
    pub fn mark_all_ztp(&mut self) {
        let names: Vec<String> = self
            .snapshot
            .managed_clusters()
            .filter_map(|m| m.metadata.name.clone())
            .collect();
        self.ztp_pending.extend(names);
    }

    /// Every CGU in the cache.
    pub fn cgu_refs(&self) -> Vec<CguRef> {
        self.snapshot.cgus().map(CguRef::of).collect()
    }

    /// The CGUs indexed under a policy name (for tests and diagnostics).
    pub fn cgus_for_policy(&self, name: &str) -> Vec<CguRef> {
        let mut v: Vec<CguRef> = self
            .by_policy
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The CGUs indexed under a ManifestWork template (a ManifestWorkReplicaSet), for tests
    /// and diagnostics.
    pub fn cgus_for_template(&self, namespace: &str, name: &str) -> Vec<CguRef> {
        let mut v: Vec<CguRef> = self
            .by_template
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// The CGUs indexed under a cluster name (for tests and diagnostics).
    pub fn cgus_for_cluster(&self, name: &str) -> Vec<CguRef> {
        let mut v: Vec<CguRef> = self
            .by_cluster
            .get(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Applies one watch event; returns the CGUs to reconcile because of it.
    pub fn apply(&mut self, event: WatchEvent) -> Vec<CguRef> {
        let mut triggers = HashSet::new();
        match event {
            WatchEvent::Init(kind) => {
                self.relisting.insert(kind, HashSet::new());
            }
            WatchEvent::InitApply(obj) => {
                let kind = obj.kind();
                let key = key_of(obj.meta());
                self.relisting.entry(kind).or_default().insert(key.clone());
                match self.verdict(kind, &key, obj.meta()) {
                    Verdict::Stale => {}
                    Verdict::Echo => self.upsert(obj, &mut HashSet::new()),
                    Verdict::Fresh => {
                        self.note_schedule(&obj);
                        self.upsert(fresh(obj), &mut triggers);
                    }
                }
            }
            WatchEvent::InitDone(kind) => {
                let seen = self.relisting.remove(&kind).unwrap_or_default();
                let gone: Vec<Key> = self
                    .present
                    .get(&kind)
                    .into_iter()
                    .flatten()
                    // Objects the operator wrote after the list was taken stay.
                    .filter(|k| {
                        !seen.contains(*k) && !self.floors.contains_key(&(kind, (*k).clone()))
                    })
                    .cloned()
                    .collect();
                for (ns, name) in gone {
                    self.remove(kind, &ns, &name, &mut triggers);
                }
                let kept = self.present.remove(&kind).unwrap_or_default();
                let mut now_present = seen;
                now_present.extend(
                    kept.into_iter()
                        .filter(|k| self.floors.contains_key(&(kind, k.clone()))),
                );
                self.present.insert(kind, now_present);
                self.synced.insert(kind);
            }
            WatchEvent::Apply(obj) => {
                let kind = obj.kind();
                let key = key_of(obj.meta());
                match self.verdict(kind, &key, obj.meta()) {
                    Verdict::Stale => {}
                    Verdict::Echo => {
                        self.present.entry(kind).or_default().insert(key);
                        self.upsert(obj, &mut HashSet::new());
                    }
                    Verdict::Fresh => {
                        self.present.entry(kind).or_default().insert(key);
                        self.note_schedule(&obj);
                        self.upsert(fresh(obj), &mut triggers);
                    }
                }
            }
            WatchEvent::Delete(obj) => {
                let kind = obj.kind();
                let (ns, name) = key_of(obj.meta());
                match self.verdict(kind, &(ns.clone(), name.clone()), obj.meta()) {
                    Verdict::Stale => {}
                    Verdict::Echo | Verdict::Fresh => self.remove(kind, &ns, &name, &mut triggers),
                }
            }
        }
        let mut v: Vec<CguRef> = triggers.into_iter().collect();
        v.sort();
        v
    }

    /// Classifies a watch event against the object's floor, clearing the floor once the watch
    /// has caught up with the operator's write.
    fn verdict(&mut self, kind: Kind, key: &Key, meta: &talm_shared::api::ObjectMeta) -> Verdict {
        let fk = (kind, key.clone());
        let Some(floor) = self.floors.get(&fk).copied() else {
            return Verdict::Fresh;
        };
        let Some(rv) = rv_of(meta) else {
            self.floors.remove(&fk);
            return Verdict::Fresh;
        };
        if rv < floor.min {
            return Verdict::Stale;
        }
        self.floors.remove(&fk);
        if floor.echo == Some(rv) {
            Verdict::Echo
        } else {
            Verdict::Fresh
        }
    }

    /// Whether a watch event of this object is the echo of the operator's own write or older
    /// than it: the cache will then not read it beyond its metadata.
    pub fn is_echo_or_stale(&self, kind: Kind, meta: &talm_shared::api::ObjectMeta) -> bool {
        let Some(floor) = self.floors.get(&(kind, key_of(meta))) else {
            return false;
        };
        rv_of(meta).is_some_and(|rv| rv < floor.min || floor.echo == Some(rv))
    }

    /// The resourceVersion of an object the operator writes, as the snapshot holds it.
    fn snapshot_rv(&self, kind: Kind, ns: &str, name: &str) -> Option<u64> {
        let s = &self.snapshot;
        let meta = match kind {
            Kind::Cgu => &s.cgu(ns, name)?.metadata,
            Kind::ManagedCluster => &s.managed_cluster(name)?.metadata,
            Kind::Placement => &s.placement(ns, name)?.metadata,
            Kind::PlacementBinding => &s.placement_binding(ns, name)?.metadata,
            Kind::SpokeAgent => &s.spoke_agent(ns, name)?.metadata,
            Kind::ManagedClusterView => &s.managed_cluster_view(ns, name)?.metadata,
            Kind::ManifestWork => &s.manifest_work(ns, name)?.metadata,
            Kind::PrecacheBudget => {
                &s.precache_budgets()
                    .find(|b| b.metadata.name.as_deref() == Some(name))?
                    .metadata
            }
            Kind::Policy
            | Kind::PreCachingConfig
            | Kind::ConfigMap
            | Kind::ManifestWorkReplicaSet => return None,
        };
        rv_of(meta)
    }

    /// Records the server's response to one of the operator's writes (or a fresh read).
    /// Ignored when the watch has already delivered a newer version.
    pub fn record_write<T: IntoObject>(&mut self, obj: T) {
        let obj = obj.into_object();
        // A reconcile's write the scheduler reads (a pre-cache task assigned held, say).
        self.note_schedule(&obj);
        self.record(obj, &mut HashSet::new());
    }

    /// As [`Self::record_write`], for the pre-cache scheduler's own writes (grants, budget
    /// status): they do not mark the cache for the scheduler again.
    pub fn record_scheduled<T: IntoObject>(&mut self, obj: T) {
        self.record(obj.into_object(), &mut HashSet::new());
    }

    /// Records a write the operator's process made for someone else: the gateway writing an
    /// agent's report into its SpokeAgent status. As [`Self::record_write`] (the snapshot has
    /// it at once, its echo triggers nothing), but it returns the CGUs to reconcile: no
    /// reconcile decided this change, and the echo will not announce it. Empty when the watch
    /// delivered the object first (that event triggered them).
    pub fn record_report<T: IntoObject>(&mut self, obj: T) -> Vec<CguRef> {
        let mut triggers = HashSet::new();
        let obj = obj.into_object();
        self.note_schedule(&obj);
        self.record(obj, &mut triggers);
        let mut v: Vec<CguRef> = triggers.into_iter().collect();
        v.sort();
        v
    }

    fn record(&mut self, obj: Object, triggers: &mut HashSet<CguRef>) {
        let kind = obj.kind();
        let key = key_of(obj.meta());
        let rv = rv_of(obj.meta());
        if let (Some(new), Some(have)) = (rv, self.snapshot_rv(kind, &key.0, &key.1))
            && have >= new
        {
            return;
        }
        if let Some(rv) = rv {
            self.floors.insert(
                (kind, key.clone()),
                Floor {
                    min: rv,
                    echo: Some(rv),
                },
            );
        }
        self.present.entry(kind).or_default().insert(key);
        self.upsert(obj, triggers);
    }

    /// Records that the operator deleted an object (or removed the last finalizer of one that
    /// was being deleted): events up to the version the snapshot held are stale.
    pub fn record_delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if let Some(rv) = self.snapshot_rv(kind, namespace, name) {
            self.floors.insert(
                (kind, key),
                Floor {
                    min: rv.saturating_add(1),
                    echo: None,
                },
            );
        }
        self.remove(kind, namespace, name, &mut HashSet::new());
    }

    fn upsert(&mut self, obj: Object, triggers: &mut HashSet<CguRef>) {
        match obj {
            Object::CguEcho(meta) => {
                // The snapshot already holds this version (an echo), or, should the floor
                // the event was skipped for have gone (see `fresh`), an older one: the
                // reconcile this then triggers gets a conflict on its guarded status write
                // and reads the CGU again.
                triggers.insert(CguRef::of_meta(&meta));
            }
            Object::Cgu(c) => {
                let r = CguRef::of(&c);
                triggers.insert(r.clone());
                if let Some(blocked) = self.by_blocker.get(&r) {
                    triggers.extend(blocked.iter().cloned());
                }
                let reuse = self
                    .snapshot
                    .cgu(&r.namespace, &r.name)
                    .filter(|old| {
                        old.spec.clusters == c.spec.clusters
                            && old.spec.remediation_strategy.canaries
                                == c.spec.remediation_strategy.canaries
                            && old.status.as_ref().map(|s| &s.remediation_plan)
                                == c.status.as_ref().map(|s| &s.remediation_plan)
                    })
                    .and_then(|_| self.entries.get(&r))
                    .map(|e| e.clusters.clone());
                self.index_cgu(&r, Entry::of(&c, reuse));
                self.snapshot.insert_cgu(*c);
            }
            Object::ManagedCluster(mc) => {
                let name = mc.metadata.name.clone().unwrap_or_default();
                let old = self.snapshot.managed_cluster(&name);
                let changed = old.is_none_or(|o| {
                    o.metadata.labels != mc.metadata.labels
                        || o.metadata.annotations != mc.metadata.annotations
                        || o.status != mc.status
                });
                if changed {
                    self.cluster_triggers(&name, triggers);
                    self.ztp_pending.insert(name.clone());
                }
                self.snapshot.insert_managed_cluster(mc);
            }
            Object::Policy(p) => {
                for change in self.snapshot.insert_policy_view(p) {
                    self.policy_triggers(&change, triggers);
                }
            }
            Object::Placement(p) => {
                owner_of(&self.snapshot, &p.metadata)
                    .into_iter()
                    .for_each(|r| {
                        triggers.insert(r);
                    });
                self.snapshot.insert_placement(p);
            }
            Object::PlacementBinding(b) => {
                owner_of(&self.snapshot, &b.metadata)
                    .into_iter()
                    .for_each(|r| {
                        triggers.insert(r);
                    });
                self.snapshot.insert_placement_binding(b);
            }
            Object::PreCachingConfig(p) => {
                let key = key_of(&p.metadata);
                self.precaching_triggers(&key, triggers);
                self.snapshot
                    .insert_precaching_config(&key.0, &key.1, p.spec);
            }
            Object::SpokeAgent(a) => {
                let name = a.metadata.name.clone().unwrap_or_default();
                if let Some(set) = self.by_cluster.get(&name) {
                    triggers.extend(set.iter().cloned());
                }
                let ns = a.metadata.namespace.as_deref().unwrap_or_default();
                if self
                    .snapshot
                    .spoke_agent(ns, &name)
                    .is_none_or(|old| old.spec != a.spec)
                {
                    self.agent_specs.mark(&name);
                }
                self.snapshot.insert_spoke_agent(a);
            }
            Object::ConfigMap(cm) => {
                let ns = cm.metadata.namespace.clone().unwrap_or_default();
                self.namespace_triggers(&ns, triggers);
                self.snapshot.insert_config_map(cm);
            }
            Object::ManagedClusterView(v) => {
                triggers.extend(owner_of(&self.snapshot, &v.metadata));
                self.snapshot.insert_managed_cluster_view(v);
            }
            Object::ManifestWork(w) => {
                // Its CGU, from the labels talm put on it (a status change is what the
                // rollout waits for); the CGU a relabelled work belonged to as well.
                let (ns, name) = key_of(&w.metadata);
                if let Some(old) = self.snapshot.manifest_work(&ns, &name) {
                    triggers.extend(owner_of(&self.snapshot, &old.metadata));
                }
                triggers.extend(owner_of(&self.snapshot, &w.metadata));
                self.snapshot.insert_manifest_work(w);
            }
            Object::ManifestWorkReplicaSet(t) => {
                let key = key_of(&t.metadata);
                self.template_triggers(&key, triggers);
                self.snapshot.insert_manifest_work_template(t);
            }
            // Read by the pre-cache scheduler only: no CGU depends on it.
            Object::PrecacheBudget(b) => self.snapshot.insert_precache_budget(b),
        }
    }

    fn remove(&mut self, kind: Kind, ns: &str, name: &str, triggers: &mut HashSet<CguRef>) {
        if let Some(set) = self.present.get_mut(&kind) {
            set.remove(&(ns.to_string(), name.to_string()));
        }
        match kind {
            Kind::Cgu => {
                let r = CguRef {
                    namespace: ns.into(),
                    name: name.into(),
                };
                if let Some(blocked) = self.by_blocker.get(&r) {
                    triggers.extend(blocked.iter().cloned());
                }
                self.index_cgu(&r, None);
                self.snapshot.remove_cgu(ns, name);
                if ns == talm_hub_core::ztp::ZTP_NAMESPACE {
                    self.ztp_pending.insert(name.to_string());
                }
            }
            Kind::ManagedCluster => {
                self.cluster_triggers(name, triggers);
                self.snapshot.remove_managed_cluster(name);
                self.ztp_pending.insert(name.to_string());
            }
            Kind::Policy => {
                for change in self.snapshot.remove_policy(ns, name) {
                    self.policy_triggers(&change, triggers);
                }
            }
            Kind::Placement => {
                if let Some(p) = self.snapshot.placement(ns, name) {
                    triggers.extend(owner_of(&self.snapshot, &p.metadata));
                }
                self.snapshot.remove_placement(ns, name);
            }
            Kind::PlacementBinding => {
                if let Some(b) = self.snapshot.placement_binding(ns, name) {
                    triggers.extend(owner_of(&self.snapshot, &b.metadata));
                }
                self.snapshot.remove_placement_binding(ns, name);
            }
            Kind::PreCachingConfig => {
                self.precaching_triggers(&(ns.to_string(), name.to_string()), triggers);
                self.snapshot.remove_precaching_config(ns, name);
            }
            Kind::SpokeAgent => {
                if let Some(set) = self.by_cluster.get(name) {
                    triggers.extend(set.iter().cloned());
                }
                self.agent_specs.mark(name);
                self.snapshot.remove_spoke_agent(ns, name);
            }
            Kind::ConfigMap => {
                self.namespace_triggers(ns, triggers);
                self.snapshot.remove_config_map(ns, name);
            }
            Kind::ManagedClusterView => {
                if let Some(v) = self.snapshot.managed_cluster_view(ns, name) {
                    triggers.extend(owner_of(&self.snapshot, &v.metadata));
                }
                self.snapshot.remove_managed_cluster_view(ns, name);
            }
            Kind::ManifestWork => {
                if let Some(w) = self.snapshot.manifest_work(ns, name) {
                    triggers.extend(owner_of(&self.snapshot, &w.metadata));
                }
                self.snapshot.remove_manifest_work(ns, name);
            }
            Kind::ManifestWorkReplicaSet => {
                self.template_triggers(&(ns.to_string(), name.to_string()), triggers);
                self.snapshot.remove_manifest_work_template(ns, name);
            }
            Kind::PrecacheBudget => {
                self.schedule_dirty = true;
                self.snapshot.remove_precache_budget(name);
            }
        }
        // A cluster or agent gone changes what the budgets select and count.
        if matches!(kind, Kind::ManagedCluster | Kind::SpokeAgent) {
            self.schedule_dirty = true;
        }
    }

    /// Triggers for what a policy insert or removal changed for the engine.
    fn policy_triggers(&self, change: &PolicyChange, triggers: &mut HashSet<CguRef>) {
        match change {
            PolicyChange::Child {
                cluster_namespace,
                parent_namespace,
                parent_name,
            } => {
                for r in self.by_policy.get(parent_name).into_iter().flatten() {
                    let Some(e) = self.entries.get(r) else {
                        continue;
                    };
                    let ns_ok = e
                        .policy_ns
                        .get(parent_name)
                        .is_none_or(|n| n == parent_namespace);
                    if ns_ok && (e.not_started || e.clusters.contains(cluster_namespace)) {
                        triggers.insert(r.clone());
                    }
                }
            }
            PolicyChange::Root {
                namespace,
                name,
                clusters,
            } => {
                for r in self.by_policy.get(name).into_iter().flatten() {
                    let Some(e) = self.entries.get(r) else {
                        continue;
                    };
                    if e.policy_ns.get(name).is_some_and(|n| n != namespace) {
                        continue;
                    }
                    let relevant = e.not_started
                        || clusters
                            .as_ref()
                            .is_none_or(|c| c.iter().any(|x| e.clusters.contains(x)));
                    if relevant {
                        triggers.insert(r.clone());
                    }
                }
            }
        }
    }

    fn cluster_triggers(&self, cluster: &str, triggers: &mut HashSet<CguRef>) {
        if let Some(set) = self.by_cluster.get(cluster) {
            triggers.extend(set.iter().cloned());
        }
        triggers.extend(self.selecting.iter().cloned());
    }

    fn precaching_triggers(&self, key: &Key, triggers: &mut HashSet<CguRef>) {
        for (r, e) in &self.entries {
            if e.precaching_config.as_ref() == Some(key) {
                triggers.insert(r.clone());
            }
        }
    }

    /// The CGUs whose `spec.manifestWorkTemplates` name the ManifestWorkReplicaSet `key`.
    fn template_triggers(&self, key: &Key, triggers: &mut HashSet<CguRef>) {
        if let Some(set) = self.by_template.get(key) {
            triggers.extend(set.iter().cloned());
        }
    }

    fn namespace_triggers(&self, ns: &str, triggers: &mut HashSet<CguRef>) {
        for r in self.entries.keys() {
            if r.namespace == ns {
                triggers.insert(r.clone());
            }
        }
    }

    /// Replaces the index entry of one CGU.
    fn index_cgu(&mut self, r: &CguRef, entry: Option<Entry>) {
        if self.entries.get(r) == entry.as_ref() {
            return;
        }
        let old = self.entries.remove(r);
        let same_clusters = match (&old, &entry) {
            (Some(o), Some(n)) => o.clusters == n.clusters,
            _ => false,
        };
        if let Some(old) = old {
            for p in &old.policies {
                remove_from(&mut self.by_policy, p, r);
            }
            if !same_clusters {
                for c in old.clusters.iter() {
                    remove_from(&mut self.by_cluster, c, r);
                }
            }
            for b in &old.blockers {
                remove_from(&mut self.by_blocker, b, r);
            }
            for t in &old.templates {
                remove_from(&mut self.by_template, &(r.namespace.clone(), t.clone()), r);
            }
            self.selecting.remove(r);
        }
        let Some(e) = entry else { return };
        for p in &e.policies {
            self.by_policy
                .entry(p.clone())
                .or_default()
                .insert(r.clone());
        }
        if !same_clusters {
            for c in e.clusters.iter() {
                self.by_cluster
                    .entry(c.clone())
                    .or_default()
                    .insert(r.clone());
            }
        }
        for b in &e.blockers {
            self.by_blocker
                .entry(b.clone())
                .or_default()
                .insert(r.clone());
        }
        for t in &e.templates {
            self.by_template
                .entry((r.namespace.clone(), t.clone()))
                .or_default()
                .insert(r.clone());
        }
        if e.by_selector {
            self.selecting.insert(r.clone());
        }
        self.entries.insert(r.clone(), e);
    }
}

fn remove_from<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, HashSet<CguRef>>,
    key: &K,
    r: &CguRef,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(r);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The CGU a talm Placement, PlacementBinding, view or ManifestWork belongs to, from its labels. A label
/// value holds the CGU's name unless the name is longer than a label value may be
/// (`names::label_value`): then the CGU of that namespace whose name gives that value, when it
/// is known.
fn owner_of(snapshot: &Snapshot, meta: &talm_shared::api::ObjectMeta) -> Option<CguRef> {
    let l = meta.labels.as_ref()?;
    let namespace = l.get(labels::CGU_NS)?;
    let value = l.get(labels::CGU)?;
    let name = if value.chars().count() < names::LABEL_VALUE_MAX {
        value.clone()
    } else {
        snapshot
            .cgus()
            .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
            .filter_map(|c| c.metadata.name.as_deref())
            .find(|n| names::label_value(n) == *value)
            .map_or_else(|| value.clone(), str::to_string)
    };
    Some(CguRef {
        namespace: namespace.clone(),
        name,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cgu(v: serde_json::Value) -> ClusterGroupUpgrade {
        serde_json::from_value(v).unwrap()
    }

    fn policy(v: serde_json::Value) -> PolicyView {
        serde_json::from_value(v).unwrap()
    }

    fn r(ns: &str, name: &str) -> CguRef {
        CguRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn root(rv: &str, compliance: &[(&str, &str)]) -> PolicyView {
        let status: Vec<serde_json::Value> = compliance
            .iter()
            .map(|(c, s)| json!({"clustername": c, "clusternamespace": c, "compliant": s}))
            .collect();
        policy(json!({
            "metadata": {"name": "p1", "namespace": "ztp", "resourceVersion": rv},
            "spec": {"remediationAction": "inform"},
            "status": {"status": status}
        }))
    }

    fn started_cgu() -> ClusterGroupUpgrade {
        cgu(json!({
            "metadata": {"name": "c1", "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusters": ["spoke1", "spoke2"], "managedPolicies": ["p1"],
                     "remediationStrategy": {"maxConcurrency": 1}},
            "status": {
                "conditions": [{"type": "Progressing", "status": "True", "reason": "InProgress",
                                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "remediationPlan": [["spoke1"], ["spoke2"]],
                "managedPoliciesNs": {"p1": "ztp"}
            }
        }))
    }

    #[test]
    fn policy_status_change_triggers_only_cgus_that_hold_the_changed_cluster() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        c.apply(WatchEvent::Apply(Object::Policy(root(
            "1",
            &[("spoke1", "NonCompliant"), ("spoke9", "NonCompliant")],
        ))));
        assert_eq!(c.cgus_for_policy("p1"), vec![r("default", "c1")]);
        // spoke9 is not in the CGU: no reconcile.
        let t = c.apply(WatchEvent::Apply(Object::Policy(root(
            "2",
            &[("spoke1", "NonCompliant"), ("spoke9", "Compliant")],
        ))));
        assert!(t.is_empty(), "{t:?}");
        // spoke1 is.
        let t = c.apply(WatchEvent::Apply(Object::Policy(root(
            "3",
            &[("spoke1", "Compliant"), ("spoke9", "Compliant")],
        ))));
        assert_eq!(t, vec![r("default", "c1")]);
        // A root of the same name in another namespace is not this CGU's.
        let mut other = root("4", &[("spoke1", "NonCompliant")]);
        other.metadata.namespace = Some("elsewhere".into());
        assert!(c.apply(WatchEvent::Apply(Object::Policy(other))).is_empty());
    }

    #[test]
    fn child_changes_trigger_only_when_what_the_engine_reads_changes() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        let child = |rv: &str, action: &str, compliant: &str| {
            Object::Policy(policy(json!({
                "metadata": {"name": "ztp.p1", "namespace": "spoke1", "resourceVersion": rv,
                    "labels": {"policy.open-cluster-management.io/root-policy": "ztp.p1"}},
                "spec": {"remediationAction": action},
                "status": {"compliant": compliant}
            })))
        };
        assert_eq!(
            c.apply(WatchEvent::Apply(child("1", "inform", "NonCompliant"))),
            vec![r("default", "c1")],
            "a new child"
        );
        assert!(
            c.apply(WatchEvent::Apply(child("2", "inform", "Compliant")))
                .is_empty(),
            "a status-only change"
        );
        assert_eq!(
            c.apply(WatchEvent::Apply(child("3", "enforce", "Compliant"))),
            vec![r("default", "c1")],
            "remediationAction changed"
        );
        assert_eq!(
            c.apply(WatchEvent::Delete(child("4", "enforce", "Compliant"))),
            vec![r("default", "c1")],
            "deleted"
        );
        assert!(c.snapshot().child_policy("spoke1", "ztp.p1").is_none());
    }

    #[test]
    fn finished_cgus_leave_the_indexes() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        assert_eq!(c.cgus_for_cluster("spoke2"), vec![r("default", "c1")]);
        let mut done = started_cgu();
        if let Some(s) = done.status.as_mut() {
            s.conditions.push(
                serde_json::from_value(json!({"type": "Succeeded", "status": "True",
                    "reason": "Completed", "message": "m",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}))
                .unwrap(),
            );
            s.status = Some(Default::default());
            if let Some(st) = s.status.as_mut() {
                st.completed_at =
                    Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
            }
        }
        done.metadata.resource_version = Some("2".into());
        c.apply(WatchEvent::Apply(done.into_object()));
        assert!(c.cgus_for_policy("p1").is_empty());
        assert!(c.cgus_for_cluster("spoke2").is_empty());
    }

    #[test]
    fn own_write_echo_triggers_nothing_and_older_events_are_skipped() {
        let mut c = Cache::new();
        let mut v1 = started_cgu();
        c.apply(WatchEvent::Apply(v1.clone().into_object()));
        let mut v3 = v1.clone();
        v3.metadata.resource_version = Some("3".into());
        v3.spec.remediation_strategy.timeout = 99;
        c.record_write(v3.clone());
        // An older event (rv 2) arrives late: skipped, the snapshot keeps rv 3.
        v1.metadata.resource_version = Some("2".into());
        assert!(c.apply(WatchEvent::Apply(v1.into_object())).is_empty());
        let snap_cgu = c.snapshot().cgu("default", "c1").unwrap();
        assert_eq!(snap_cgu.spec.remediation_strategy.timeout, 99);
        // The echo: no trigger; later changes trigger again.
        assert!(
            c.apply(WatchEvent::Apply(v3.clone().into_object()))
                .is_empty()
        );
        v3.metadata.resource_version = Some("4".into());
        assert_eq!(
            c.apply(WatchEvent::Apply(v3.into_object())),
            vec![r("default", "c1")]
        );
    }

    #[test]
    fn echoes_whose_body_was_skipped_keep_the_recorded_cgu() {
        let mut c = Cache::new();
        let v1 = started_cgu();
        c.apply(WatchEvent::Apply(v1.clone().into_object()));
        let meta = |rv: &str| talm_shared::api::ObjectMeta {
            resource_version: Some(rv.into()),
            ..v1.metadata.clone()
        };
        // Nothing written yet: every event is read in full.
        assert!(!c.is_echo_or_stale(Kind::Cgu, &meta("1")));
        let mut v3 = v1.clone();
        v3.metadata.resource_version = Some("3".into());
        v3.spec.remediation_strategy.timeout = 99;
        c.record_write(v3.clone());
        assert!(c.is_echo_or_stale(Kind::Cgu, &meta("2")), "older");
        assert!(c.is_echo_or_stale(Kind::Cgu, &meta("3")), "the echo");
        assert!(!c.is_echo_or_stale(Kind::Cgu, &meta("4")), "newer");
        assert!(
            !c.is_echo_or_stale(Kind::Placement, &meta("3")),
            "another kind"
        );
        // The body-less echo triggers nothing and keeps the recorded CGU.
        assert!(
            c.apply(WatchEvent::Apply(Object::CguEcho(meta("3"))))
                .is_empty()
        );
        let snap_cgu = c.snapshot().cgu("default", "c1").unwrap();
        assert_eq!(snap_cgu.spec.remediation_strategy.timeout, 99);
        assert_eq!(snap_cgu.metadata.resource_version.as_deref(), Some("3"));
        // The floor is gone: the next version is read in full, and should a body-less event
        // arrive unexpected, it triggers a reconcile without touching the snapshot.
        assert!(!c.is_echo_or_stale(Kind::Cgu, &meta("3")));
        assert_eq!(
            c.apply(WatchEvent::Apply(Object::CguEcho(meta("4")))),
            vec![r("default", "c1")]
        );
        let snap_cgu = c.snapshot().cgu("default", "c1").unwrap();
        assert_eq!(snap_cgu.metadata.resource_version.as_deref(), Some("3"));
    }

    #[test]
    fn a_recorded_agent_report_triggers_the_cgus_of_its_cluster() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        let report = |rv: &str| -> SpokeAgent {
            serde_json::from_value(json!({
                "metadata": {"name": "spoke1", "namespace": "spoke1", "resourceVersion": rv},
                "spec": {},
                "status": {"connected": true, "backup": {"id": "b", "state": rv}}
            }))
            .unwrap()
        };
        // The gateway's status write: the CGU holding spoke1 is reconciled, and the write's
        // echo triggers nothing more.
        assert_eq!(c.record_report(report("5")), vec![r("default", "c1")]);
        assert!(
            c.apply(WatchEvent::Apply(report("5").into_object()))
                .is_empty()
        );
        // The watch was first: its event triggered the CGU; recording the write adds nothing.
        assert_eq!(
            c.apply(WatchEvent::Apply(report("6").into_object())),
            vec![r("default", "c1")]
        );
        assert!(c.record_report(report("6")).is_empty());
        // The operator's own writes still trigger nothing.
        c.record_write(report("7"));
        assert!(
            c.apply(WatchEvent::Apply(report("7").into_object()))
                .is_empty()
        );
    }

    fn mw_cgu(rv: &str, templates: &[&str]) -> ClusterGroupUpgrade {
        cgu(json!({
            "metadata": {"name": "mw", "namespace": "default", "resourceVersion": rv},
            "spec": {"clusters": ["spoke1", "spoke2"], "manifestWorkTemplates": templates,
                     "remediationStrategy": {"maxConcurrency": 1}}
        }))
    }

    fn template(ns: &str, name: &str, rv: &str) -> ManifestWorkReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
            "spec": {"manifestWorkTemplate": {"workload": {"manifests": []}}}
        }))
        .unwrap()
    }

    fn work(rv: &str, cgu: &str, applied: &str) -> ManifestWork {
        serde_json::from_value(json!({
            "metadata": {"name": "default.t1", "namespace": "spoke1", "resourceVersion": rv,
                "labels": {labels::CGU: cgu, labels::CGU_NS: "default"}},
            "spec": {"workload": {"manifests": []}},
            "status": {"conditions": [{"type": "Applied", "status": applied}]}
        }))
        .unwrap()
    }

    #[test]
    fn template_changes_trigger_the_cgus_that_name_them_through_the_index() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(mw_cgu("1", &["t1", "t2"]).into_object()));
        // A policy CGU in the same namespace names no template.
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        assert_eq!(
            c.cgus_for_template("default", "t1"),
            vec![r("default", "mw")]
        );
        assert_eq!(
            c.cgus_for_template("default", "t2"),
            vec![r("default", "mw")]
        );
        let obj =
            |ns: &str, name: &str, rv: &str| Object::ManifestWorkReplicaSet(template(ns, name, rv));
        assert_eq!(
            c.apply(WatchEvent::Apply(obj("default", "t2", "2"))),
            vec![r("default", "mw")]
        );
        assert!(
            c.snapshot()
                .manifest_work_template("default", "t2")
                .is_some()
        );
        // Unnamed templates, and a template of that name in another namespace, trigger nothing.
        assert!(
            c.apply(WatchEvent::Apply(obj("default", "t9", "3")))
                .is_empty()
        );
        assert!(
            c.apply(WatchEvent::Apply(obj("other", "t1", "4")))
                .is_empty()
        );
        assert_eq!(
            c.apply(WatchEvent::Delete(obj("default", "t2", "5"))),
            vec![r("default", "mw")]
        );
        assert!(
            c.snapshot()
                .manifest_work_template("default", "t2")
                .is_none()
        );
        // The CGU stops naming t2: its index entry goes.
        c.apply(WatchEvent::Apply(mw_cgu("6", &["t1"]).into_object()));
        assert!(c.cgus_for_template("default", "t2").is_empty());
        assert!(
            c.apply(WatchEvent::Apply(obj("default", "t2", "7")))
                .is_empty()
        );
        // The CGU is deleted: no index entry is left.
        c.apply(WatchEvent::Delete(mw_cgu("8", &["t1"]).into_object()));
        assert!(c.cgus_for_template("default", "t1").is_empty());
    }

    #[test]
    fn manifest_work_changes_trigger_their_cgu_from_the_labels() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(mw_cgu("1", &["t1"]).into_object()));
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        // The operator's create: recorded, its echo triggers nothing.
        c.record_write(work("2", "mw", "False"));
        assert!(c.snapshot().manifest_work("spoke1", "default.t1").is_some());
        assert!(
            c.apply(WatchEvent::Apply(Object::ManifestWork(work(
                "2", "mw", "False"
            ))))
            .is_empty()
        );
        // The work agent's status update triggers the owning CGU only.
        assert_eq!(
            c.apply(WatchEvent::Apply(Object::ManifestWork(work(
                "3", "mw", "True"
            )))),
            vec![r("default", "mw")]
        );
        let applied = c.snapshot().manifest_work("spoke1", "default.t1").unwrap();
        assert_eq!(
            applied.status.as_ref().unwrap().conditions[0].status,
            "True"
        );
        // Deleted by someone else: the CGU is told.
        assert_eq!(
            c.apply(WatchEvent::Delete(Object::ManifestWork(work(
                "4", "mw", "True"
            )))),
            vec![r("default", "mw")]
        );
        assert!(c.snapshot().manifest_work("spoke1", "default.t1").is_none());
        // The operator's own delete: recorded; the watch's late events are stale.
        c.apply(WatchEvent::Apply(Object::ManifestWork(work(
            "5", "mw", "True",
        ))));
        c.record_delete(Kind::ManifestWork, "spoke1", "default.t1");
        assert!(c.snapshot().manifest_work("spoke1", "default.t1").is_none());
        assert!(
            c.apply(WatchEvent::Apply(Object::ManifestWork(work(
                "5", "mw", "True"
            ))))
            .is_empty()
        );
        assert!(c.snapshot().manifest_work("spoke1", "default.t1").is_none());
        assert!(
            c.apply(WatchEvent::Delete(Object::ManifestWork(work(
                "6", "mw", "True"
            ))))
            .is_empty()
        );
    }

    #[test]
    fn relist_removes_what_is_gone_and_marks_synced() {
        let mut c = Cache::new();
        let a: ManagedCluster = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
        let b: ManagedCluster = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
        c.apply(WatchEvent::Init(Kind::ManagedCluster));
        c.apply(WatchEvent::InitApply(Object::ManagedCluster(a.clone())));
        c.apply(WatchEvent::InitApply(Object::ManagedCluster(b)));
        c.apply(WatchEvent::InitDone(Kind::ManagedCluster));
        assert!(c.synced_kinds().contains(&Kind::ManagedCluster));
        assert!(!c.synced());
        c.apply(WatchEvent::Init(Kind::ManagedCluster));
        c.apply(WatchEvent::InitApply(Object::ManagedCluster(a)));
        c.apply(WatchEvent::InitDone(Kind::ManagedCluster));
        assert!(c.snapshot().managed_cluster("a").is_some());
        assert!(c.snapshot().managed_cluster("b").is_none());
    }

    #[test]
    fn cluster_and_blocker_triggers() {
        let mut c = Cache::new();
        c.apply(WatchEvent::Apply(started_cgu().into_object()));
        let blocked = cgu(json!({
            "metadata": {"name": "c2", "namespace": "default", "resourceVersion": "1"},
            "spec": {"clusters": ["spoke7"], "managedPolicies": ["p1"],
                     "blockingCRs": [{"name": "c1", "namespace": "default"}],
                     "remediationStrategy": {"maxConcurrency": 1}}
        }));
        c.apply(WatchEvent::Apply(blocked.into_object()));
        let mc: ManagedCluster =
            serde_json::from_value(json!({"metadata": {"name": "spoke2", "labels": {"a": "b"}}}))
                .unwrap();
        assert_eq!(
            c.apply(WatchEvent::Apply(Object::ManagedCluster(mc))),
            vec![r("default", "c1")]
        );
        let mut c1 = started_cgu();
        c1.metadata.resource_version = Some("9".into());
        c1.spec.remediation_strategy.timeout = 1;
        assert_eq!(
            c.apply(WatchEvent::Apply(c1.into_object())),
            vec![r("default", "c1"), r("default", "c2")]
        );
    }

    #[test]
    fn ztp_queue_follows_cluster_changes_and_ztp_cgu_deletions() {
        let mut c = Cache::new();
        let mc: ManagedCluster =
            serde_json::from_value(json!({"metadata": {"name": "sno1", "resourceVersion": "1"}}))
                .unwrap();
        c.apply(WatchEvent::Apply(Object::ManagedCluster(mc.clone())));
        assert_eq!(c.take_ztp_pending(), vec!["sno1".to_string()]);
        // The same object again changes nothing: nothing queued.
        c.apply(WatchEvent::Apply(Object::ManagedCluster(mc)));
        assert!(!c.ztp_pending());
        let z = cgu(json!({
            "metadata": {"name": "sno1", "namespace": "ztp-install", "resourceVersion": "2"},
            "spec": {"clusters": ["sno1"], "remediationStrategy": {"maxConcurrency": 1}}
        }));
        c.apply(WatchEvent::Apply(z.clone().into_object()));
        assert!(!c.ztp_pending(), "a new ztp CGU queues nothing");
        c.apply(WatchEvent::Delete(z.into_object()));
        assert_eq!(c.take_ztp_pending(), vec!["sno1".to_string()]);
        let other = cgu(json!({
            "metadata": {"name": "x", "namespace": "default", "resourceVersion": "3"},
            "spec": {"clusters": ["sno1"], "remediationStrategy": {"maxConcurrency": 1}}
        }));
        c.apply(WatchEvent::Apply(other.clone().into_object()));
        c.apply(WatchEvent::Delete(other.into_object()));
        assert!(!c.ztp_pending(), "CGUs elsewhere do not queue");
        c.mark_all_ztp();
        assert_eq!(c.take_ztp_pending(), vec!["sno1".to_string()]);
    }
}

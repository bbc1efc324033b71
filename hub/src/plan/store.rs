//! The in-memory hub of a `plan` run: every object as raw JSON (the source of truth, printed
//! back at the end) plus a typed view of the kinds the engine reads, kept in step.
//!
//! Objects are keyed by (kind rank, group, kind, namespace, name), which is also the output
//! order; `events.k8s.io` Events are kept apart in input-then-emission order and printed last.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use talm_hub_core::Snapshot;
use talm_hub_core::names::fnv64;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::precaching::PreCachingConfig;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterAction, ManagedClusterView, Placement,
    PlacementBinding, Policy,
};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::api::work::{ManifestWork, ManifestWorkReplicaSet};

use super::load::{InputError, Loaded, Origin};
use crate::error::Error;

/// The kinds `plan` knows, in output order. Declaration order is the sort order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` ConfigMap.
    ConfigMap,
    /// `cluster.open-cluster-management.io/v1` ManagedCluster (cluster-scoped).
    ManagedCluster,
    /// `policy.open-cluster-management.io/v1` Policy.
    Policy,
    /// `ran.openshift.io/v1alpha1` PreCachingConfig.
    PreCachingConfig,
    /// `ran.openshift.io/v1alpha1` ClusterGroupUpgrade.
    ClusterGroupUpgrade,
    /// `cluster.open-cluster-management.io/v1beta1` Placement.
    Placement,
    /// `policy.open-cluster-management.io/v1` PlacementBinding.
    PlacementBinding,
    /// `talm.dev/v1alpha1` SpokeAgent.
    SpokeAgent,
    /// `talm.dev/v1alpha1` PrecacheBudget (cluster-scoped; its status is the pre-cache
    /// scheduler's).
    PrecacheBudget,
    /// `view.open-cluster-management.io/v1beta1` ManagedClusterView (InstallPlan approval).
    ManagedClusterView,
    /// `action.open-cluster-management.io/v1beta1` ManagedClusterAction (InstallPlan approval;
    /// written, never read by the engine).
    ManagedClusterAction,
    /// `work.open-cluster-management.io/v1alpha1` ManifestWorkReplicaSet (a ManifestWork
    /// rollout's template).
    ManifestWorkReplicaSet,
    /// `work.open-cluster-management.io/v1` ManifestWork (a ManifestWork rollout's work).
    ManifestWork,
    /// Any other kind: carried through unchanged.
    Other,
    /// `events.k8s.io/v1` Event: carried through, printed last.
    Event,
}

/// `apiVersion` of the Events `plan` writes.
pub const EVENT_API_VERSION: &str = "events.k8s.io/v1";

impl Kind {
    /// Classifies an object by `apiVersion` and `kind`.
    pub fn classify(api_version: &str, kind: &str) -> Kind {
        match (api_version, kind) {
            ("v1", "ConfigMap") => Kind::ConfigMap,
            (ManagedCluster::API_VERSION, ManagedCluster::KIND) => Kind::ManagedCluster,
            (Policy::API_VERSION, Policy::KIND) => Kind::Policy,
            (Placement::API_VERSION, Placement::KIND) => Kind::Placement,
            (PlacementBinding::API_VERSION, PlacementBinding::KIND) => Kind::PlacementBinding,
            (talm_shared::api::cgu::API_VERSION, "ClusterGroupUpgrade") => {
                Kind::ClusterGroupUpgrade
            }
            (talm_shared::api::cgu::API_VERSION, "PreCachingConfig") => Kind::PreCachingConfig,
            (talm_shared::api::spokeagent::API_VERSION, "SpokeAgent") => Kind::SpokeAgent,
            (
                talm_shared::api::precachebudget::API_VERSION,
                talm_shared::api::precachebudget::KIND,
            ) => Kind::PrecacheBudget,
            (ManagedClusterView::API_VERSION, ManagedClusterView::KIND) => Kind::ManagedClusterView,
            (ManagedClusterAction::API_VERSION, ManagedClusterAction::KIND) => {
                Kind::ManagedClusterAction
            }
            (ManifestWorkReplicaSet::API_VERSION, ManifestWorkReplicaSet::KIND) => {
                Kind::ManifestWorkReplicaSet
            }
            (ManifestWork::API_VERSION, ManifestWork::KIND) => Kind::ManifestWork,
            (EVENT_API_VERSION, "Event") => Kind::Event,
            _ => Kind::Other,
        }
    }

    /// Whether objects of this kind live in a namespace (unknown kinds: unknown, so no).
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Kind::ManagedCluster | Kind::PrecacheBudget | Kind::Other
        )
    }

    /// Whether the engine reads this kind (and `plan` keeps a typed view of it).
    pub fn is_typed(self) -> bool {
        !matches!(self, Kind::Other | Kind::Event | Kind::ManagedClusterAction)
    }
}

/// The typed view of an object, for the kinds the engine reads.
#[derive(Clone, Debug)]
pub enum Typed {
    /// A ConfigMap.
    ConfigMap(Box<ConfigMapView>),
    /// A ManagedCluster.
    ManagedCluster(Box<ManagedCluster>),
    /// A Policy.
    Policy(Box<Policy>),
    /// A PreCachingConfig.
    PreCachingConfig(Box<PreCachingConfig>),
    /// A ClusterGroupUpgrade.
    ClusterGroupUpgrade(Box<ClusterGroupUpgrade>),
    /// A Placement.
    Placement(Box<Placement>),
    /// A PlacementBinding.
    PlacementBinding(Box<PlacementBinding>),
    /// A SpokeAgent.
    SpokeAgent(Box<SpokeAgent>),
    /// A PrecacheBudget.
    PrecacheBudget(Box<PrecacheBudget>),
    /// A ManagedClusterView.
    ManagedClusterView(Box<ManagedClusterView>),
    /// A ManifestWorkReplicaSet.
    ManifestWorkReplicaSet(Box<ManifestWorkReplicaSet>),
    /// A ManifestWork.
    ManifestWork(Box<ManifestWork>),
    /// Not read by the engine.
    Untyped,
}

/// A typed-parse failure: the field path (`spec.remediationStrategy.maxConcurrency`, empty at
/// the root) and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn parse_as<T: DeserializeOwned>(raw: &Map<String, Value>) -> Result<Box<T>, FieldError> {
    // Deserializing from a borrowed `Value` does not consume it; the map is cloned into one
    // `Value` so serde sees a map at the root.
    let root = Value::Object(raw.clone());
    serde_path_to_error::deserialize::<_, T>(&root)
        .map(Box::new)
        .map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = explain_number(&root, e.path(), e.inner().to_string());
            FieldError { path, message }
        })
}

/// serde_json turns integers too large for 64 bits into floats, and serde then reports
/// "invalid type: floating point `1e20`, expected i32" for an integer the user wrote. Say what
/// happened instead.
fn explain_number(root: &Value, path: &serde_path_to_error::Path, message: String) -> String {
    use serde_path_to_error::Segment;
    if !message.starts_with("invalid type: floating point") {
        return message;
    }
    let mut node = Some(root);
    for seg in path.iter() {
        node = match seg {
            Segment::Seq { index } => node.and_then(|n| n.get(*index)),
            Segment::Map { key } => node.and_then(|n| n.get(key.as_str())),
            Segment::Enum { .. } | Segment::Unknown => None,
        };
    }
    let Some(f) = node.and_then(Value::as_f64) else {
        return message;
    };
    if f.fract() != 0.0 || f.abs() < 9.0e15 {
        return message;
    }
    let expected = message
        .split_once(", expected ")
        .map(|(_, e)| format!(", expected {e}"))
        .unwrap_or_default();
    format!("number {f:.0} is out of range{expected}")
}

impl Typed {
    /// Parses the typed view of `raw` for `kind`.
    pub fn parse(kind: Kind, raw: &Map<String, Value>) -> Result<Typed, FieldError> {
        Ok(match kind {
            Kind::ConfigMap => Typed::ConfigMap(parse_as(raw)?),
            Kind::ManagedCluster => Typed::ManagedCluster(parse_as(raw)?),
            Kind::Policy => Typed::Policy(parse_as(raw)?),
            Kind::PreCachingConfig => Typed::PreCachingConfig(parse_as(raw)?),
            Kind::ClusterGroupUpgrade => Typed::ClusterGroupUpgrade(parse_as(raw)?),
            Kind::Placement => Typed::Placement(parse_as(raw)?),
            Kind::PlacementBinding => Typed::PlacementBinding(parse_as(raw)?),
            Kind::SpokeAgent => Typed::SpokeAgent(parse_as(raw)?),
            Kind::PrecacheBudget => Typed::PrecacheBudget(parse_as(raw)?),
            Kind::ManagedClusterView => Typed::ManagedClusterView(parse_as(raw)?),
            Kind::ManifestWorkReplicaSet => Typed::ManifestWorkReplicaSet(parse_as(raw)?),
            Kind::ManifestWork => Typed::ManifestWork(parse_as(raw)?),
            Kind::Other | Kind::Event | Kind::ManagedClusterAction => Typed::Untyped,
        })
    }
}

/// An object's identity and output position.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind class (output rank).
    pub rank: Kind,
    /// The API group (`""` for core).
    pub group: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a raw object.
    pub fn of(rank: Kind, raw: &Map<String, Value>) -> ObjectKey {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let api_version = s(raw.get("apiVersion"));
        let group = api_version
            .rsplit_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default();
        let meta = raw.get("metadata");
        ObjectKey {
            rank,
            group,
            kind: s(raw.get("kind")),
            namespace: s(meta.and_then(|m| m.get("namespace"))),
            name: s(meta.and_then(|m| m.get("name"))),
        }
    }

    /// The key of a typed kind's object.
    pub fn typed(rank: Kind, kind: &str, namespace: &str, name: &str) -> ObjectKey {
        let group = match rank {
            Kind::ManagedCluster | Kind::Placement => "cluster.open-cluster-management.io",
            Kind::Policy | Kind::PlacementBinding => "policy.open-cluster-management.io",
            Kind::ClusterGroupUpgrade | Kind::PreCachingConfig => talm_shared::api::cgu::GROUP,
            Kind::SpokeAgent | Kind::PrecacheBudget => "talm.dev",
            Kind::ManagedClusterView => "view.open-cluster-management.io",
            Kind::ManagedClusterAction => "action.open-cluster-management.io",
            Kind::ManifestWorkReplicaSet | Kind::ManifestWork => "work.open-cluster-management.io",
            Kind::Event => "events.k8s.io",
            Kind::ConfigMap | Kind::Other => "",
        };
        ObjectKey {
            rank,
            group: group.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `Kind namespace/name` (or `Kind name` when cluster-scoped).
    pub fn describe(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A stored object.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The raw object: the source of truth, printed in the output.
    pub raw: Map<String, Value>,
    /// The typed view of `raw` (kinds the engine reads).
    pub typed: Typed,
    /// Where it came from (`None` when created by the run).
    pub origin: Option<Origin>,
}

/// The objects of a `plan` run.
#[derive(Clone, Debug, Default)]
pub struct Store {
    objects: BTreeMap<ObjectKey, Entry>,
    events: Vec<Entry>,
    /// Namespace/name of every Event, with where it came from (for duplicate messages).
    event_names: HashMap<(String, String), Option<Origin>>,
}

/// A namespace/name pair identifying a CGU.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CguKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for CguKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl CguKey {
    /// The object key of this CGU.
    pub fn object_key(&self) -> ObjectKey {
        ObjectKey::typed(
            Kind::ClusterGroupUpgrade,
            "ClusterGroupUpgrade",
            &self.namespace,
            &self.name,
        )
    }
}

/// Formats `ts` as a Kubernetes `metav1.Time` (RFC 3339, seconds, UTC).
pub fn k8s_time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A deterministic UUID-shaped uid for an object that has none (what the API server would
/// assign at create). Same key, same uid.
pub fn deterministic_uid(key: &ObjectKey) -> String {
    let parts = [
        key.group.as_str(),
        key.kind.as_str(),
        key.namespace.as_str(),
        key.name.as_str(),
    ];
    let hi = fnv64(1, &parts);
    let lo = fnv64(2, &parts);
    // Version 8 (custom) and RFC 4122 variant bits, so it parses as a UUID.
    let hi = (hi & !0xf000) | 0x8000;
    let lo = (lo & !(0xc000 << 48)) | (0x8000 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// Runs `f` on the mapping at `map[key]`, creating it (or replacing a non-mapping) first.
pub fn edit_object<R>(
    map: &mut Map<String, Value>,
    key: &str,
    f: impl FnOnce(&mut Map<String, Value>) -> R,
) -> R {
    let mut child = match map.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let result = f(&mut child);
    map.insert(key.to_string(), Value::Object(child));
    result
}

/// Sets `metadata.uid` and `metadata.creationTimestamp` when missing, as the API server does on
/// create.
pub fn admit(key: &ObjectKey, raw: &mut Map<String, Value>, now: Timestamp) {
    edit_object(raw, "metadata", |meta| {
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), Value::String(deterministic_uid(key)));
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta.insert("creationTimestamp".into(), Value::String(k8s_time(now)));
        }
    });
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    /// Builds the store from loaded objects: rejects duplicates, and gives objects of the kinds
    /// the engine reads a uid and creation time when they have none.
    pub fn from_loaded(loaded: Vec<Loaded>, now: Timestamp) -> Result<Store, Error> {
        let mut store = Store::new();
        for Loaded {
            origin,
            kind,
            mut raw,
            typed: _,
        } in loaded
        {
            let key = ObjectKey::of(kind, &raw);
            let first = if kind == Kind::Event {
                store
                    .event_names
                    .get(&(key.namespace.clone(), key.name.clone()))
                    .cloned()
            } else {
                store.objects.get(&key).map(|e| e.origin.clone())
            };
            if let Some(first) = first {
                return Err(InputError::Duplicate {
                    origin,
                    what: key.describe(),
                    first: first.unwrap_or_else(origin_unknown),
                }
                .into());
            }
            if kind.is_typed() {
                admit(&key, &mut raw, now);
            }
            // Re-parse: admission changed metadata.
            let typed = Typed::parse(kind, &raw).map_err(|e| {
                Error::Input(InputError::Invalid {
                    origin: origin.clone(),
                    message: format!("{}: {}", e.path, e.message),
                })
            })?;
            let entry = Entry {
                raw,
                typed,
                origin: Some(origin),
            };
            if kind == Kind::Event {
                store
                    .event_names
                    .insert((key.namespace, key.name), entry.origin.clone());
                store.events.push(entry);
            } else {
                store.objects.insert(key, entry);
            }
        }
        Ok(store)
    }

    /// An object by key.
    pub fn get(&self, key: &ObjectKey) -> Option<&Entry> {
        self.objects.get(key)
    }

    /// Inserts or replaces an object (not an Event), re-deriving its typed view. Returns whether
    /// the stored raw object changed.
    pub fn put(&mut self, key: ObjectKey, raw: Map<String, Value>) -> Result<bool, Error> {
        if let Some(existing) = self.objects.get(&key)
            && existing.raw == raw
        {
            return Ok(false);
        }
        let typed = Typed::parse(key.rank, &raw).map_err(|e| {
            Error::Internal(format!(
                "{} after a write: {}: {}",
                key.describe(),
                e.path,
                e.message
            ))
        })?;
        let origin = self.objects.get(&key).and_then(|e| e.origin.clone());
        self.objects.insert(key, Entry { raw, typed, origin });
        Ok(true)
    }

    /// Removes an object; returns whether it existed.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        self.objects.remove(key).is_some()
    }

    /// Whether an Event with this namespace and name exists.
    pub fn has_event(&self, namespace: &str, name: &str) -> bool {
        self.event_names
            .contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// Appends an Event object.
    pub fn push_event(&mut self, raw: Map<String, Value>) {
        let key = ObjectKey::of(Kind::Event, &raw);
        self.event_names.insert((key.namespace, key.name), None);
        self.events.push(Entry {
            raw,
            typed: Typed::Untyped,
            origin: None,
        });
    }

    /// The number of Events.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Every CGU's namespace/name, sorted.
    pub fn cgu_keys(&self) -> Vec<CguKey> {
        self.objects
            .keys()
            .filter(|k| k.rank == Kind::ClusterGroupUpgrade)
            .map(|k| CguKey {
                namespace: k.namespace.clone(),
                name: k.name.clone(),
            })
            .collect()
    }

    /// A CGU's typed view.
    pub fn cgu(&self, key: &CguKey) -> Option<&ClusterGroupUpgrade> {
        match self.objects.get(&key.object_key()).map(|e| &e.typed) {
            Some(Typed::ClusterGroupUpgrade(c)) => Some(c),
            _ => None,
        }
    }

    /// The engine's view of every object the engine reads.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::new();
        for (key, entry) in &self.objects {
            match &entry.typed {
                Typed::ConfigMap(cm) => snap.insert_config_map((**cm).clone()),
                Typed::ManagedCluster(mc) => snap.insert_managed_cluster((**mc).clone()),
                Typed::Policy(p) => {
                    snap.insert_policy((**p).clone());
                }
                Typed::PreCachingConfig(pcc) => {
                    snap.insert_precaching_config(&key.namespace, &key.name, pcc.spec.clone());
                }
                Typed::ClusterGroupUpgrade(c) => snap.insert_cgu((**c).clone()),
                Typed::Placement(p) => snap.insert_placement((**p).clone()),
                Typed::PlacementBinding(b) => snap.insert_placement_binding((**b).clone()),
                Typed::SpokeAgent(a) => snap.insert_spoke_agent((**a).clone()),
                Typed::PrecacheBudget(b) => snap.insert_precache_budget((**b).clone()),
                Typed::ManagedClusterView(v) => snap.insert_managed_cluster_view((**v).clone()),
                Typed::ManifestWorkReplicaSet(t) => {
                    snap.insert_manifest_work_template((**t).clone())
                }
                Typed::ManifestWork(w) => snap.insert_manifest_work((**w).clone()),
                Typed::Untyped => {}
            }
        }
        snap
    }

    /// Every object in output order: by kind rank, group, kind, namespace, name; Events last,
    /// in input-then-emission order.
    pub fn output_objects(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.objects
            .values()
            .chain(self.events.iter())
            .map(|e| &e.raw)
    }

    /// Every stored object with its key (Events excluded).
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.objects.iter()
    }
}

fn origin_unknown() -> Origin {
    Origin {
        file: "(created by this run)".into(),
        doc: 0,
        item: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::load::load_yaml_str;

    pub(crate) fn now() -> Timestamp {
        "2026-01-01T10:00:00Z".parse().unwrap()
    }

    fn store(text: &str) -> Result<Store, Error> {
        Store::from_loaded(load_yaml_str("in.yaml", text).unwrap(), now())
    }

    const OBJECTS: &str = "apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata: {name: b, namespace: ns}
spec: {remediationStrategy: {maxConcurrency: 1}}
---
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: z-first, namespace: ns}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns}
---
apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata: {name: a, namespace: ns, uid: given-uid, creationTimestamp: '2025-01-01T00:00:00Z'}
spec: {remediationStrategy: {maxConcurrency: 1}}
---
apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: a-second, namespace: ns}
---
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata: {name: spoke1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: ns}
";

    fn name_of(m: &Map<String, Value>) -> String {
        format!(
            "{}/{}",
            m["kind"].as_str().unwrap(),
            m["metadata"]["name"].as_str().unwrap()
        )
    }

    #[test]
    fn output_order_is_by_kind_rank_then_name_with_events_last_in_input_order() {
        let s = store(OBJECTS).unwrap();
        let order: Vec<String> = s.output_objects().map(name_of).collect();
        assert_eq!(
            order,
            [
                "ConfigMap/cm",
                "ManagedCluster/spoke1",
                "ClusterGroupUpgrade/a",
                "ClusterGroupUpgrade/b",
                "Deployment/d",
                "Event/z-first",
                "Event/a-second",
            ]
        );
    }

    #[test]
    fn admission_gives_typed_objects_a_uid_and_creation_time_once() {
        let s = store(OBJECTS).unwrap();
        let get = |kind: Kind, k: &str, ns: &str, n: &str| {
            s.get(&ObjectKey::typed(kind, k, ns, n)).unwrap().raw["metadata"].clone()
        };
        let a = get(Kind::ClusterGroupUpgrade, "ClusterGroupUpgrade", "ns", "a");
        assert_eq!(a["uid"], "given-uid");
        assert_eq!(a["creationTimestamp"], "2025-01-01T00:00:00Z");
        let b = get(Kind::ClusterGroupUpgrade, "ClusterGroupUpgrade", "ns", "b");
        assert_eq!(b["creationTimestamp"], "2026-01-01T10:00:00Z");
        let uid = b["uid"].as_str().unwrap();
        assert_eq!(uid.len(), 36);
        assert_eq!(
            uid,
            store(OBJECTS)
                .unwrap()
                .cgu(&CguKey {
                    namespace: "ns".into(),
                    name: "b".into()
                })
                .unwrap()
                .metadata
                .uid
                .clone()
                .unwrap(),
            "deterministic"
        );
        assert_ne!(
            uid,
            get(Kind::ManagedCluster, "ManagedCluster", "", "spoke1")["uid"]
                .as_str()
                .unwrap()
        );
        let deployment = s
            .output_objects()
            .find(|m| m["kind"] == "Deployment")
            .unwrap();
        assert!(
            deployment["metadata"].get("uid").is_none(),
            "foreign kinds are not admitted"
        );
    }

    #[test]
    fn deterministic_uids_look_like_uuids() {
        let key = ObjectKey::typed(Kind::Placement, "Placement", "ns", "p");
        let uid = deterministic_uid(&key);
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&uid[14..15], "8", "version nibble");
        assert!(
            matches!(&uid[19..20], "8" | "9" | "a" | "b"),
            "variant bits: {uid}"
        );
        assert_eq!(uid, deterministic_uid(&key));
        assert_ne!(
            uid,
            deterministic_uid(&ObjectKey::typed(Kind::Placement, "Placement", "ns", "q"))
        );
    }

    #[test]
    fn duplicates_are_rejected_naming_both_places() {
        let text = format!(
            "{OBJECTS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: ns}}\n"
        );
        let e = store(&text).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "in.yaml doc 8: duplicate ConfigMap ns/cm (first defined in in.yaml doc 7)"
        );
        let events = format!(
            "{OBJECTS}---\napiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: z-first, namespace: ns}}\n"
        );
        assert!(
            store(&events)
                .unwrap_err()
                .to_string()
                .contains("duplicate Event ns/z-first")
        );
        // The same name in another namespace, or of another kind, is fine.
        let other = format!(
            "{OBJECTS}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: other}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cm, namespace: ns}}\n"
        );
        assert!(store(&other).is_ok());
        // A namespace defaulted to `default` collides with an explicit `default`.
        let defaulted = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n";
        assert!(
            store(defaulted)
                .unwrap_err()
                .to_string()
                .contains("duplicate ConfigMap default/x")
        );
    }

    #[test]
    fn snapshot_holds_the_typed_objects() {
        let s = store(OBJECTS).unwrap();
        let snap = s.snapshot();
        assert!(snap.cgu("ns", "a").is_some());
        assert!(snap.cgu("ns", "b").is_some());
        assert!(snap.managed_cluster("spoke1").is_some());
        assert!(snap.config_map("ns", "cm").is_some());
        assert_eq!(
            s.cgu_keys()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["ns/a", "ns/b"]
        );
    }

    #[test]
    fn put_rederives_the_typed_view_and_reports_changes() {
        let mut s = store(OBJECTS).unwrap();
        let key = CguKey {
            namespace: "ns".into(),
            name: "a".into(),
        };
        let mut raw = s.get(&key.object_key()).unwrap().raw.clone();
        assert!(
            !s.put(key.object_key(), raw.clone()).unwrap(),
            "same object: no change"
        );
        raw.insert(
            "status".into(),
            serde_json::json!({"computedMaxConcurrency": 7}),
        );
        assert!(s.put(key.object_key(), raw.clone()).unwrap());
        assert_eq!(
            s.cgu(&key)
                .unwrap()
                .status
                .as_ref()
                .unwrap()
                .computed_max_concurrency,
            Some(7)
        );
        raw.insert(
            "status".into(),
            serde_json::json!({"computedMaxConcurrency": "x"}),
        );
        assert!(matches!(
            s.put(key.object_key(), raw),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn times_use_kubernetes_formats() {
        let t: Timestamp = "2026-01-01T10:00:00.123456789Z".parse().unwrap();
        assert_eq!(k8s_time(t), "2026-01-01T10:00:00Z");
    }
}

//! How the snapshot reads RHACM policies: a root policy's per-cluster compliance, indexed by
//! cluster, and the few fields the engine needs from each child (replicated) policy
//! (docs/contract.md §1.3). At fleet scale these are most of the hub's objects, so both are
//! kept compact and updated in place, and each update says which clusters it affected.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Deserializer};
use talm_shared::api::ObjectMeta;
use talm_shared::api::rhacm::{
    ClusterCompliance, Policy, PolicySpec, PolicyStatus, ROOT_POLICY_LABEL,
};

use crate::names::labels;

/// A cluster's compliance with one root policy (docs/contract.md §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compliance {
    /// `Compliant`.
    Compliant,
    /// `NonCompliant`, `Pending`, a missing `compliant` field, or a policy without status.
    NonCompliant,
    /// The cluster is absent from the policy's `status.status`.
    NotMatched,
}

impl Compliance {
    /// TALM's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Compliance::Compliant => "Compliant",
            Compliance::NonCompliant => "NonCompliant",
            Compliance::NotMatched => "NotMatchedWithPolicy",
        }
    }
}

/// A Policy as the snapshot reads it: metadata, spec, the aggregate compliance and the
/// per-cluster compliance as compact `(cluster, compliance)` entries.
///
/// The operator deserializes its Policy watch events straight into this type: a root policy's
/// `status.status` holds one entry per cluster (10,000 at fleet scale), and this form skips
/// every other field of an entry (`clusternamespace`) and of the status (`details`, ...) and
/// keeps the compliance as an enum instead of a string.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PolicyView {
    /// Metadata: child policies carry the root-policy label; annotations hold soak and wave.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy spec.
    #[serde(default)]
    pub spec: PolicySpec,
    /// The aggregate and per-cluster compliance.
    #[serde(default)]
    pub status: Option<PolicyViewStatus>,
}

/// [`PolicyView`]'s status.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PolicyViewStatus {
    /// Aggregate compliance.
    #[serde(default)]
    pub compliant: Option<String>,
    /// Per-cluster compliance; absent means every cluster is NonCompliant.
    #[serde(default)]
    pub status: Option<Vec<ClusterEntry>>,
}

/// One `status.status` entry of a root policy: the cluster and whether it is Compliant.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "RawEntry")]
pub struct ClusterEntry {
    /// `clustername`.
    pub cluster: String,
    /// [`Compliance::Compliant`] for `compliant: Compliant`, else
    /// [`Compliance::NonCompliant`].
    pub compliance: Compliance,
}

/// The wire form of [`ClusterEntry`]; unknown fields are skipped without being built.
#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    clustername: String,
    #[serde(default)]
    compliant: Option<IsCompliant>,
}

impl From<RawEntry> for ClusterEntry {
    fn from(e: RawEntry) -> Self {
        ClusterEntry {
            cluster: e.clustername,
            compliance: match e.compliant {
                Some(IsCompliant(true)) => Compliance::Compliant,
                _ => Compliance::NonCompliant,
            },
        }
    }
}

/// Whether a `compliant` string is `Compliant`, read without allocating.
struct IsCompliant(bool);

impl<'de> Deserialize<'de> for IsCompliant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsCompliant;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a compliance string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsCompliant, E> {
                Ok(IsCompliant(v == "Compliant"))
            }
        }
        d.deserialize_str(V)
    }
}

impl From<&ClusterCompliance> for ClusterEntry {
    fn from(e: &ClusterCompliance) -> Self {
        ClusterEntry {
            cluster: e.clustername.clone(),
            compliance: compliance_of(e),
        }
    }
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        PolicyView {
            metadata: p.metadata,
            spec: p.spec,
            status: p.status.map(|s| PolicyViewStatus {
                compliant: s.compliant,
                status: s
                    .status
                    .map(|entries| entries.iter().map(ClusterEntry::from).collect()),
            }),
        }
    }
}

/// A root policy with its per-cluster compliance indexed.
#[derive(Clone, Debug)]
pub struct RootPolicy {
    /// The policy, without its per-cluster `status.status` (that is [`Self::compliance`]'s
    /// index: at 10,000 clusters the list is most of the object).
    pub policy: Policy,
    /// `None` when the policy has no `status.status`: every cluster is NonCompliant.
    compliance: Option<HashMap<String, Compliance>>,
}

fn compliance_of(e: &ClusterCompliance) -> Compliance {
    match e.compliant.as_deref() {
        Some("Compliant") => Compliance::Compliant,
        _ => Compliance::NonCompliant,
    }
}

/// Splits a policy view into the stored policy (without `status.status`) and its entries.
fn split(view: PolicyView) -> (Policy, Option<Vec<ClusterEntry>>) {
    let (compliant, entries) = match view.status {
        Some(s) => (Some(s.compliant), s.status),
        None => (None, None),
    };
    let policy = Policy {
        api_version: Policy::API_VERSION.to_string(),
        kind: Policy::KIND.to_string(),
        metadata: view.metadata,
        spec: view.spec,
        status: compliant.map(|compliant| PolicyStatus {
            compliant,
            status: None,
        }),
    };
    (policy, entries)
}

fn index(entries: Vec<ClusterEntry>) -> HashMap<String, Compliance> {
    entries
        .into_iter()
        .map(|e| (e.cluster, e.compliance))
        .collect()
}

impl RootPolicy {
    pub(super) fn new(view: PolicyView) -> Self {
        let (policy, entries) = split(view);
        RootPolicy {
            policy,
            compliance: entries.map(index),
        }
    }

    /// The cluster's compliance with this policy.
    pub fn compliance(&self, cluster: &str) -> Compliance {
        match &self.compliance {
            None => Compliance::NonCompliant,
            Some(m) => m.get(cluster).copied().unwrap_or(Compliance::NotMatched),
        }
    }

    /// Replaces the policy with a newer version in place and says which clusters' compliance
    /// changed: `None` means "assume every cluster" (what the engine reads besides compliance
    /// changed, or the policy gained or lost its `status.status`). Existing entries are updated
    /// without allocating, so a status write that flips a few of 10,000 clusters costs a
    /// lookup per entry.
    pub(super) fn update(&mut self, view: PolicyView) -> Option<HashSet<String>> {
        let (policy, entries) = split(view);
        let same_meta = self.policy.spec == policy.spec
            && self.policy.metadata.labels == policy.metadata.labels
            && self.policy.metadata.annotations == policy.metadata.annotations;
        self.policy = policy;
        let changed = match (&mut self.compliance, entries) {
            (None, None) => Some(HashSet::new()),
            (Some(map), Some(entries)) => Some(update_compliance(map, &entries)),
            (slot, entries) => {
                *slot = entries.map(index);
                None
            }
        };
        if same_meta { changed } else { None }
    }
}

/// Brings `map` to `entries` (last entry wins for a repeated cluster); returns the clusters
/// whose compliance changed, appeared or disappeared.
fn update_compliance(
    map: &mut HashMap<String, Compliance>,
    entries: &[ClusterEntry],
) -> HashSet<String> {
    let mut changed = HashSet::new();
    let mut seen = 0usize;
    for e in entries {
        let c = e.compliance;
        match map.get_mut(e.cluster.as_str()) {
            Some(v) => {
                seen += 1;
                if *v != c {
                    *v = c;
                    changed.insert(e.cluster.clone());
                }
            }
            None => {
                seen += 1;
                map.insert(e.cluster.clone(), c);
                changed.insert(e.cluster.clone());
            }
        }
    }
    // Every entry was counted once: more map keys than entries means some clusters left the
    // status (with repeated entries the counts differ too; the exact pass below is right
    // either way).
    if seen != map.len() {
        let present: HashSet<&str> = entries.iter().map(|e| e.cluster.as_str()).collect();
        map.retain(|k, _| {
            let keep = present.contains(k.as_str());
            if !keep {
                changed.insert(k.clone());
            }
            keep
        });
    }
    changed
}

/// What inserting or removing a policy changed, as far as the engine can see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// A child policy appeared, changed what [`ChildPolicy`] holds, or went away.
    Child {
        /// The child's namespace (its cluster).
        cluster_namespace: String,
        /// Namespace of the root policy.
        parent_namespace: String,
        /// Name of the root policy.
        parent_name: String,
    },
    /// A root policy appeared, changed, or went away.
    Root {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The clusters whose compliance changed; `None` means every cluster (a new or
        /// removed policy, or a change of its spec, labels or annotations).
        clusters: Option<HashSet<String>>,
    },
}

/// A child (replicated) policy in a cluster namespace: only what the engine reads from it.
///
/// A hub holds one child per cluster and root policy (200,000 at 10,000 clusters × 20
/// policies), so the snapshot keeps these few derived fields, not the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildPolicy {
    /// Namespace of the root policy.
    pub parent_namespace: String,
    /// Name of the root policy.
    pub parent_name: String,
    /// The child's `remediationAction` is `enforce` (case-insensitive).
    pub enforce: bool,
    /// The child's templates still hold `{{hub` (the hub template failed to resolve).
    pub hub_template_error: bool,
    /// The ZTP deploy wave annotation ([`WAVE_ANNOTATION`](crate::ztp::WAVE_ANNOTATION)), as
    /// written.
    pub wave: Option<String>,
}

impl ChildPolicy {
    /// The child-policy view of `p` with its cluster namespace, or `None` when `p` is not a
    /// child: no root-policy label, a legacy TALM copy, or a name that is not
    /// `<parentNamespace>.<parentName>`.
    pub fn of(p: &Policy) -> Option<(String, ChildPolicy)> {
        Self::of_parts(&p.metadata, &p.spec)
    }

    /// [`Self::of`] from a policy's metadata and spec.
    pub fn of_parts(metadata: &ObjectMeta, spec: &PolicySpec) -> Option<(String, ChildPolicy)> {
        let labels = metadata.labels.as_ref()?;
        if labels.contains_key(labels::CGU) || !labels.contains_key(ROOT_POLICY_LABEL) {
            return None;
        }
        let name = metadata.name.as_deref().unwrap_or_default();
        // `<parentNs>.<parentName>`: namespaces cannot hold dots, names can.
        let (parent_ns, parent_name) = name.split_once('.')?;
        if parent_ns.is_empty() || parent_name.is_empty() {
            return None;
        }
        let child = ChildPolicy {
            parent_namespace: parent_ns.to_string(),
            parent_name: parent_name.to_string(),
            enforce: spec.remediation_action.eq_ignore_ascii_case("enforce"),
            hub_template_error: spec
                .policy_templates
                .iter()
                .any(|t| value_contains(&t.object_definition, "{{hub")),
            wave: metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::ztp::WAVE_ANNOTATION))
                .cloned(),
        };
        Some((metadata.namespace.clone().unwrap_or_default(), child))
    }

    /// The child policy's own name: `<parentNamespace>.<parentName>`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.parent_namespace, self.parent_name)
    }
}

fn value_contains(v: &serde_json::Value, needle: &str) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains(needle),
        Value::Array(a) => a.iter().any(|x| value_contains(x, needle)),
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| k.contains(needle) || value_contains(x, needle)),
        _ => false,
    }
}

//! Cluster selection (docs/contract.md §3.2 step 1): explicit clusters first, in order and
//! de-duplicated, then selector matches sorted by name; every cluster must be a ManagedCluster
//! and every canary must be selected.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use talm_shared::api::LabelSelector;
use talm_shared::api::cgu::ClusterGroupUpgradeSpec;
use talm_shared::api::checks::check_label_selector;

use crate::snapshot::Snapshot;

/// Why selection failed; `Display` is TALM's condition message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectionError {
    /// No `clusters`, `clusterSelector` or `clusterLabelSelectors` at all.
    NoneSpecified,
    /// A selected cluster is not a ManagedCluster (the first one only, as TALM reports it).
    NotManagedCluster {
        /// The first missing cluster.
        first: String,
        /// Every missing cluster (for the event annotations).
        all: Vec<String>,
    },
    /// A canary is not among the selected clusters.
    CanaryNotSelected(String),
    /// A `clusterLabelSelectors` entry that apimachinery would refuse (talm's message; TALM
    /// fails its reconcile without a condition, and would otherwise match nothing).
    InvalidLabelSelector {
        /// The field, e.g. `spec.clusterLabelSelectors[0].matchExpressions[1].operator`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl std::fmt::Display for SelectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectionError::NoneSpecified => f.write_str(
                "Unable to select clusters: cannot obtain all the details about the clusters in the CR: no cluster specified for remediation",
            ),
            SelectionError::NotManagedCluster { first, .. } => {
                write!(f, "Unable to select clusters: cluster {first} is not a ManagedCluster")
            }
            SelectionError::CanaryNotSelected(c) => write!(
                f,
                "Unable to select clusters: canary cluster {c} is not in the list of clusters"
            ),
            SelectionError::InvalidLabelSelector { path, message } => {
                write!(f, "Unable to select clusters: {path}: {message}")
            }
        }
    }
}

/// Selects the CGU's clusters in TALM's order.
pub fn select_clusters(
    spec: &ClusterGroupUpgradeSpec,
    snap: &Snapshot,
) -> Result<Vec<String>, SelectionError> {
    if spec.clusters.is_none()
        && spec.cluster_selector.is_none()
        && spec.cluster_label_selectors.is_none()
    {
        return Err(SelectionError::NoneSpecified);
    }
    for (i, sel) in spec.cluster_label_selectors.iter().flatten().enumerate() {
        check_label_selector(sel).map_err(|e| SelectionError::InvalidLabelSelector {
            path: format!("spec.clusterLabelSelectors[{i}].{}", e.path),
            message: e.message,
        })?;
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for c in spec.clusters.iter().flatten() {
        if seen.insert(c.as_str()) {
            out.push(c.clone());
        }
    }
    let deprecated: Vec<(String, String)> = spec
        .cluster_selector
        .iter()
        .flatten()
        .filter_map(|s| parse_deprecated_selector(s))
        .collect();
    let selectors = spec.cluster_label_selectors.as_deref().unwrap_or(&[]);
    if !deprecated.is_empty() || !selectors.is_empty() {
        let mut matched: BTreeSet<&str> = BTreeSet::new();
        for mc in snap.managed_clusters() {
            let Some(name) = mc.metadata.name.as_deref() else {
                continue;
            };
            if seen.contains(name) {
                continue;
            }
            let empty = BTreeMap::new();
            let labels = mc.metadata.labels.as_ref().unwrap_or(&empty);
            let hit = deprecated
                .iter()
                .any(|(k, v)| labels.get(k).is_some_and(|lv| lv == v))
                || selectors.iter().any(|s| selector_matches(s, labels));
            if hit {
                matched.insert(name);
            }
        }
        out.extend(matched.into_iter().map(str::to_string));
    }
    let missing: Vec<String> = out
        .iter()
        .filter(|c| snap.managed_cluster(c).is_none())
        .cloned()
        .collect();
    if let Some(first) = missing.first() {
        return Err(SelectionError::NotManagedCluster {
            first: first.clone(),
            all: missing.clone(),
        });
    }
    if let Some(canaries) = &spec.remediation_strategy.canaries {
        let set: HashSet<&str> = out.iter().map(String::as_str).collect();
        if let Some(c) = canaries.iter().find(|c| !set.contains(c.as_str())) {
            return Err(SelectionError::CanaryNotSelected(c.clone()));
        }
    }
    Ok(out)
}

/// `"k=v"` → (k, v); `"k"` → (k, ""); anything else is ignored, as in TALM.
fn parse_deprecated_selector(s: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = s.split('=').collect();
    match parts.as_slice() {
        [k] if !k.is_empty() => Some((k.to_string(), String::new())),
        [k, v] if !k.is_empty() => Some((k.to_string(), v.to_string())),
        _ => None,
    }
}

/// Kubernetes label-selector semantics: all `matchLabels` and all `matchExpressions` must hold.
/// An empty selector matches everything. Unknown operators match nothing.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or(&[]);
        let ok = match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use talm_shared::api::LabelSelectorRequirement;
    use talm_shared::api::rhacm::ManagedCluster;

    fn mc(name: &str, labels: &[(&str, &str)]) -> ManagedCluster {
        let mut m = ManagedCluster::default();
        m.metadata.name = Some(name.into());
        m.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        m
    }

    fn fixture() -> Snapshot {
        let mut s = Snapshot::new();
        s.insert_managed_cluster(mc("spoke1", &[("upgrade", ""), ("upgrade2", "true")]));
        s.insert_managed_cluster(mc("spoke2", &[]));
        s.insert_managed_cluster(mc("spoke3", &[("upgrade", "")]));
        s.insert_managed_cluster(mc("spoke4", &[("upgrade2", "true")]));
        s.insert_managed_cluster(mc("spoke5", &[]));
        s.insert_managed_cluster(mc("spoke6", &[]));
        s
    }

    fn spec(clusters: &[&str]) -> ClusterGroupUpgradeSpec {
        ClusterGroupUpgradeSpec {
            clusters: Some(clusters.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn explicit_then_sorted_selector_matches() {
        let mut sp = spec(&["spoke1", "spoke2", "spoke5", "spoke6", "spoke2"]);
        sp.cluster_label_selectors = Some(vec![
            LabelSelector {
                match_labels: Some([("upgrade2".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "upgrade".into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                ..Default::default()
            },
        ]);
        let got = select_clusters(&sp, &fixture()).unwrap();
        assert_eq!(
            got,
            ["spoke1", "spoke2", "spoke5", "spoke6", "spoke3", "spoke4"]
        );
    }

    #[test]
    fn deprecated_selector_forms() {
        let sp = ClusterGroupUpgradeSpec {
            cluster_selector: Some(vec![
                "upgrade".into(),
                "upgrade2=true".into(),
                "a=b=c".into(),
            ]),
            ..Default::default()
        };
        let got = select_clusters(&sp, &fixture()).unwrap();
        assert_eq!(got, ["spoke1", "spoke3", "spoke4"]);
    }

    #[test]
    fn error_messages() {
        let e = select_clusters(&ClusterGroupUpgradeSpec::default(), &fixture()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to select clusters: cannot obtain all the details about the clusters in the CR: no cluster specified for remediation"
        );
        let e = select_clusters(&spec(&["spoke1", "nope", "nope2"]), &fixture()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to select clusters: cluster nope is not a ManagedCluster"
        );
        let mut sp = spec(&["spoke1"]);
        sp.remediation_strategy.canaries = Some(vec!["spoke2".into()]);
        let e = select_clusters(&sp, &fixture()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to select clusters: canary cluster spoke2 is not in the list of clusters"
        );
    }

    #[test]
    fn an_unknown_selector_operator_is_refused_naming_the_field() {
        // Issue 14 item 11: `Bogus` used to match nothing, and the user saw an unrelated
        // message later.
        let mut sp = spec(&["spoke1"]);
        sp.cluster_label_selectors = Some(vec![
            LabelSelector::default(),
            LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "upgrade".into(),
                    operator: "Bogus".into(),
                    values: Some(vec!["x".into()]),
                }]),
                ..Default::default()
            },
        ]);
        let e = select_clusters(&sp, &fixture()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Unable to select clusters: spec.clusterLabelSelectors[1].matchExpressions[0].operator: unknown operator \"Bogus\" (expected In, NotIn, Exists or DoesNotExist)"
        );
    }

    #[test]
    fn set_based_operators() {
        let labels: BTreeMap<String, String> = [("env".to_string(), "prod".to_string())].into();
        let req = |op: &str, vals: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: Some(vals.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&req("In", &["prod", "dev"]), &labels));
        assert!(!selector_matches(&req("NotIn", &["prod"]), &labels));
        assert!(selector_matches(&req("NotIn", &["dev"]), &labels));
        assert!(!selector_matches(&req("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&req("Bogus", &[]), &labels));
    }
}

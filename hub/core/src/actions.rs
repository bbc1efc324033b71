//! The CGU's cluster actions (docs/contract.md §3.7, §3.2 step 12): label and annotation
//! changes before enable and after completion, as ManagedCluster patches.

use std::collections::BTreeMap;

use talm_shared::api::cgu::{AfterCompletion, BeforeEnable};

use crate::decision::Write;

fn patch(
    cluster: &str,
    add_labels: Option<&BTreeMap<String, String>>,
    delete_labels: Option<&BTreeMap<String, String>>,
    remove_labels: Option<&Vec<String>>,
    add_annotations: Option<&BTreeMap<String, String>>,
    remove_annotations: Option<&Vec<String>>,
) -> Option<Write> {
    let add_labels = add_labels.cloned().unwrap_or_default();
    let mut remove: Vec<String> = delete_labels
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    remove.extend(remove_labels.cloned().unwrap_or_default());
    let add_annotations = add_annotations.cloned().unwrap_or_default();
    let remove_annotations = remove_annotations.cloned().unwrap_or_default();
    if add_labels.is_empty()
        && remove.is_empty()
        && add_annotations.is_empty()
        && remove_annotations.is_empty()
    {
        return None;
    }
    Some(Write::PatchManagedCluster {
        name: cluster.to_string(),
        add_labels,
        remove_labels: remove,
        add_annotations,
        remove_annotations,
    })
}

/// The `beforeEnable` changes for one cluster, if any.
pub fn before_enable(cluster: &str, a: &BeforeEnable) -> Option<Write> {
    patch(
        cluster,
        a.add_cluster_labels.as_ref(),
        a.delete_cluster_labels.as_ref(),
        a.remove_cluster_labels.as_ref(),
        a.add_cluster_annotations.as_ref(),
        a.remove_cluster_annotations.as_ref(),
    )
}

/// The `afterCompletion` changes for one cluster, if any: labels added, then the deprecated
/// `deleteClusterLabels` keys and `removeClusterLabels` removed; annotations added then removed.
pub fn after_completion(cluster: &str, a: &AfterCompletion) -> Option<Write> {
    patch(
        cluster,
        a.add_cluster_labels.as_ref(),
        a.delete_cluster_labels.as_ref(),
        a.remove_cluster_labels.as_ref(),
        a.add_cluster_annotations.as_ref(),
        a.remove_cluster_annotations.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_completion_merges_deprecated_and_new_removals() {
        let a = AfterCompletion {
            add_cluster_labels: Some([("ztp-done".to_string(), String::new())].into()),
            delete_cluster_labels: Some([("ztp-running".to_string(), String::new())].into()),
            remove_cluster_labels: Some(vec!["other".into()]),
            remove_cluster_annotations: Some(vec!["a".into()]),
            ..Default::default()
        };
        let Some(Write::PatchManagedCluster {
            name,
            add_labels,
            remove_labels,
            remove_annotations,
            ..
        }) = after_completion("spoke1", &a)
        else {
            panic!("expected a patch");
        };
        assert_eq!(name, "spoke1");
        assert_eq!(add_labels.keys().collect::<Vec<_>>(), ["ztp-done"]);
        assert_eq!(remove_labels, ["ztp-running", "other"]);
        assert_eq!(remove_annotations, ["a"]);
    }

    #[test]
    fn nothing_to_do_is_no_write() {
        assert!(before_enable("c", &BeforeEnable::default()).is_none());
    }
}

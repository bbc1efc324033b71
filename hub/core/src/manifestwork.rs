//! ManifestWork rollouts (docs/contract.md §3.13): the pure rules for TALM's second rollout
//! type, where a CGU names `ManifestWorkReplicaSet` templates in `spec.manifestWorkTemplates`
//! instead of policies.
//!
//! Per cluster, the templates are applied one at a time, in order, as a `ManifestWork` named
//! `<cgu namespace>.<template>` in the cluster namespace ([`build`]); a work is complete when
//! its `Applied` and `Available` conditions are True and, when the template carries
//! [`EXPECTED_VALUES_ANNOTATION`], every manifest's conditions `Applied`, `Available` and
//! `StatusFeedbackSynced` are True and each named status-feedback value equals the expected one
//! ([`completion`]). A timed-out cluster's `status.clusters[].currentManifestWork.status` holds
//! the work's per-manifest status, trimmed ([`trimmed_status`]). The reconcile flow that uses
//! these lives in `reconcile/works.rs`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use talm_shared::api::ObjectMeta;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::rhacm::ViewCondition;
use talm_shared::api::work::{
    EXPECTED_VALUES_ANNOTATION, ExpectedValue, ManifestWork, ManifestWorkReplicaSet,
};

use crate::names::{self, labels};
use crate::snapshot::Snapshot;

/// The longest condition message kept in a trimmed status, in bytes.
pub const TRIMMED_MESSAGE_MAX: usize = 256;

/// The CGU's templates; empty for a policy rollout.
pub fn templates(cgu: &ClusterGroupUpgrade) -> &[String] {
    cgu.spec.manifest_work_templates.as_deref().unwrap_or(&[])
}

/// Whether the CGU is a ManifestWork rollout (`managedPolicies` are then ignored).
pub fn is_manifest_work_rollout(cgu: &ClusterGroupUpgrade) -> bool {
    !templates(cgu).is_empty()
}

/// The templates missing from the CGU's namespace, in spec order.
pub fn missing_templates(cgu: &ClusterGroupUpgrade, snap: &Snapshot) -> Vec<String> {
    let ns = cgu.metadata.namespace.as_deref().unwrap_or("default");
    templates(cgu)
        .iter()
        .filter(|t| snap.manifest_work_template(ns, t).is_none())
        .cloned()
        .collect()
}

/// TALM's message for missing templates: `Missing manifest templates: [a b]` (Go's `%v` of a
/// string slice).
pub fn missing_message(missing: &[String]) -> String {
    format!(
        "Missing manifest templates: {}",
        crate::conditions::go_list(missing)
    )
}

/// The ManifestWork of `template` for `cluster`: the template's `spec.manifestWorkTemplate`,
/// named `<cgu namespace>.<template name>` in the cluster namespace, labelled for the CGU, and
/// carrying the template's expected-values annotation when it has one.
pub fn build(
    cgu: &ClusterGroupUpgrade,
    template: &ManifestWorkReplicaSet,
    cluster: &str,
) -> ManifestWork {
    let cgu_ns = cgu.metadata.namespace.as_deref().unwrap_or("default");
    let cgu_name = cgu.metadata.name.as_deref().unwrap_or("");
    let template_name = template.metadata.name.as_deref().unwrap_or("");
    let annotations: BTreeMap<String, String> = template
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == EXPECTED_VALUES_ANNOTATION)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let spec = match &template.spec.manifest_work_template {
        Value::Null => Value::Object(Map::new()),
        v => v.clone(),
    };
    ManifestWork {
        api_version: ManifestWork::API_VERSION.into(),
        kind: ManifestWork::KIND.into(),
        metadata: ObjectMeta {
            name: Some(names::manifest_work_name(cgu_ns, template_name)),
            namespace: Some(cluster.to_string()),
            labels: Some(BTreeMap::from([
                (labels::CGU.to_string(), names::label_value(cgu_name)),
                (labels::CGU_NS.to_string(), names::label_value(cgu_ns)),
            ])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Where a ManifestWork stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Applied, available and, where expected values are given, at them.
    Complete,
    /// Not there yet; the text says what is missing (for `plan` notes).
    Pending(String),
    /// The expected-values annotation cannot be read: the work can never complete until the
    /// template is fixed.
    BadExpectedValues(String),
}

fn is_true(conds: &[ViewCondition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// Whether a ManifestWork is complete (see the module header).
pub fn completion(mw: &ManifestWork) -> Completion {
    let Some(status) = mw.status.as_ref() else {
        return Completion::Pending("no status yet".into());
    };
    for t in ["Applied", "Available"] {
        if !is_true(&status.conditions, t) {
            return Completion::Pending(format!("condition {t} is not True"));
        }
    }
    let Some(raw) = mw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPECTED_VALUES_ANNOTATION))
    else {
        return Completion::Complete;
    };
    let expected: Vec<ExpectedValue> = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => {
            return Completion::BadExpectedValues(format!(
                "annotation {EXPECTED_VALUES_ANNOTATION} is not a JSON list of {{manifestIndex, name, value}}: {e}"
            ));
        }
    };
    let manifests = &status.resource_status.manifests;
    for m in manifests {
        for t in ["Applied", "Available", "StatusFeedbackSynced"] {
            if !is_true(&m.conditions, t) {
                return Completion::Pending(format!(
                    "manifest {} condition {t} is not True",
                    m.resource_meta.ordinal
                ));
            }
        }
    }
    for ev in &expected {
        let Some(m) = manifests
            .iter()
            .find(|m| m.resource_meta.ordinal == ev.manifest_index)
        else {
            return Completion::Pending(format!(
                "manifest {} has no status yet",
                ev.manifest_index
            ));
        };
        let value = m
            .status_feedback
            .as_ref()
            .and_then(|f| f.values.iter().find(|v| v.name == ev.name))
            .and_then(|v| v.field_value.as_text());
        if value.as_deref() != Some(ev.value.as_str()) {
            return Completion::Pending(format!(
                "manifest {} feedback {} is {}, expected {}",
                ev.manifest_index,
                ev.name,
                value.as_deref().unwrap_or("unset"),
                ev.value
            ));
        }
    }
    Completion::Complete
}

/// A ManifestWork's per-manifest status as a timed-out cluster records it: for each manifest
/// its `resourceMeta`, its `statusFeedback` and its conditions with only `type`, `status`,
/// `reason` and `message` (at most [`TRIMMED_MESSAGE_MAX`] bytes); transition times and
/// observed generations are dropped. `None` when the work has no status.
pub fn trimmed_status(mw: &ManifestWork) -> Option<Value> {
    let status = mw.status.as_ref()?;
    let manifests: Vec<Value> = status
        .resource_status
        .manifests
        .iter()
        .map(|m| {
            let conditions: Vec<Value> = m
                .conditions
                .iter()
                .map(|c| {
                    let mut o = Map::new();
                    o.insert("type".into(), json!(c.type_));
                    o.insert("status".into(), json!(c.status));
                    if !c.reason.is_empty() {
                        o.insert("reason".into(), json!(c.reason));
                    }
                    if !c.message.is_empty() {
                        o.insert("message".into(), json!(cut(&c.message)));
                    }
                    Value::Object(o)
                })
                .collect();
            let mut o = Map::new();
            o.insert(
                "resourceMeta".into(),
                serde_json::to_value(&m.resource_meta).unwrap_or(Value::Null),
            );
            if let Some(f) = &m.status_feedback {
                o.insert(
                    "statusFeedback".into(),
                    serde_json::to_value(f).unwrap_or(Value::Null),
                );
            }
            o.insert("conditions".into(), Value::Array(conditions));
            Value::Object(o)
        })
        .collect();
    Some(json!({ "manifests": manifests }))
}

/// `s` cut to at most [`TRIMMED_MESSAGE_MAX`] bytes on a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= TRIMMED_MESSAGE_MAX {
        return s;
    }
    let mut end = TRIMMED_MESSAGE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mw(status: Value, expected: Option<&str>) -> ManifestWork {
        let mut v = json!({
            "apiVersion": "work.open-cluster-management.io/v1", "kind": "ManifestWork",
            "metadata": {"name": "default.t", "namespace": "spoke1"},
            "spec": {}, "status": status,
        });
        if let Some(e) = expected {
            v["metadata"]["annotations"] = json!({ EXPECTED_VALUES_ANNOTATION: e });
        }
        serde_json::from_value(v).unwrap()
    }

    fn conds(types: &[&str]) -> Value {
        Value::Array(
            types
                .iter()
                .map(|t| {
                    json!({"type": t, "status": "True", "reason": "r", "message": "m",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"})
                })
                .collect(),
        )
    }

    fn with_feedback(value: &str) -> Value {
        json!({
            "conditions": conds(&["Applied", "Available"]),
            "resourceStatus": {"manifests": [{
                "resourceMeta": {"ordinal": 0, "kind": "ImageBasedUpgrade", "name": "upgrade"},
                "statusFeedback": {"values": [
                    {"name": "isPrepCompleted", "fieldValue": {"type": "String", "string": value}}
                ]},
                "conditions": conds(&["Applied", "Available", "StatusFeedbackSynced"]),
            }]},
        })
    }

    const EXPECTED: &str = r#"[{"manifestIndex":0,"name":"isPrepCompleted","value":"True"}]"#;

    #[test]
    fn applied_and_available_complete_a_work_without_expected_values() {
        let done = mw(
            json!({"conditions": conds(&["Applied", "Available"])}),
            None,
        );
        assert_eq!(completion(&done), Completion::Complete);
        let applied_only = mw(json!({"conditions": conds(&["Applied"])}), None);
        assert!(
            matches!(completion(&applied_only), Completion::Pending(m) if m.contains("Available"))
        );
        let no_status = mw(Value::Null, None);
        assert!(matches!(completion(&no_status), Completion::Pending(_)));
    }

    #[test]
    fn expected_values_must_match_the_feedback() {
        assert_eq!(
            completion(&mw(with_feedback("True"), Some(EXPECTED))),
            Completion::Complete
        );
        let pending = completion(&mw(with_feedback("False"), Some(EXPECTED)));
        assert!(
            matches!(&pending, Completion::Pending(m) if m.contains("isPrepCompleted is False")),
            "{pending:?}"
        );
        let mut s = with_feedback("True");
        s["resourceStatus"]["manifests"][0]["conditions"] = conds(&["Applied", "Available"]);
        assert!(matches!(
            completion(&mw(s, Some(EXPECTED))),
            Completion::Pending(m) if m.contains("StatusFeedbackSynced")
        ));
        let missing = r#"[{"manifestIndex":3,"name":"x","value":"1"}]"#;
        assert!(matches!(
            completion(&mw(with_feedback("True"), Some(missing))),
            Completion::Pending(m) if m.contains("manifest 3")
        ));
    }

    #[test]
    fn a_bad_expected_values_annotation_is_named() {
        let c = completion(&mw(with_feedback("True"), Some("{not json")));
        assert!(
            matches!(&c, Completion::BadExpectedValues(m) if m.contains(EXPECTED_VALUES_ANNOTATION)),
            "{c:?}"
        );
    }

    #[test]
    fn trimmed_status_keeps_meta_feedback_and_condition_essentials() {
        let mut s = with_feedback("False");
        s["resourceStatus"]["manifests"][0]["conditions"][0]["message"] = json!("é".repeat(300));
        let t = trimmed_status(&mw(s, None)).unwrap();
        let m = &t["manifests"][0];
        assert_eq!(m["resourceMeta"]["kind"], "ImageBasedUpgrade");
        assert_eq!(
            m["statusFeedback"]["values"][0]["fieldValue"]["string"],
            "False"
        );
        let c0 = &m["conditions"][0];
        assert_eq!(c0["type"], "Applied");
        assert!(c0.get("lastTransitionTime").is_none());
        assert!(c0["message"].as_str().unwrap().len() <= TRIMMED_MESSAGE_MAX);
        assert!(trimmed_status(&mw(Value::Null, None)).is_none());
    }

    #[test]
    fn the_work_is_named_labelled_and_annotated_from_the_template() {
        let cgu: ClusterGroupUpgrade = serde_json::from_value(json!({
            "apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade",
            "metadata": {"name": "cgu", "namespace": "default"},
            "spec": {"remediationStrategy": {"maxConcurrency": 1},
                     "manifestWorkTemplates": ["ibu-prep"]},
        }))
        .unwrap();
        let t: ManifestWorkReplicaSet = serde_json::from_value(json!({
            "apiVersion": "work.open-cluster-management.io/v1alpha1",
            "kind": "ManifestWorkReplicaSet",
            "metadata": {"name": "ibu-prep", "namespace": "default",
                         "annotations": {EXPECTED_VALUES_ANNOTATION: EXPECTED, "other": "x"}},
            "spec": {"manifestWorkTemplate": {"workload": {"manifests": [{"kind": "ConfigMap"}]}},
                     "placementRefs": [{"name": "p"}]},
        }))
        .unwrap();
        let w = build(&cgu, &t, "spoke1");
        assert_eq!(w.metadata.name.as_deref(), Some("default.ibu-prep"));
        assert_eq!(w.metadata.namespace.as_deref(), Some("spoke1"));
        assert!(names::labelled_for(&w.metadata, "default", "cgu"));
        let ann = w.metadata.annotations.unwrap();
        assert_eq!(ann.len(), 1);
        assert_eq!(ann[EXPECTED_VALUES_ANNOTATION], EXPECTED);
        assert_eq!(w.spec["workload"]["manifests"][0]["kind"], "ConfigMap");
        assert!(w.spec.get("placementRefs").is_none());
        assert_eq!(
            missing_message(&["a".into(), "b".into()]),
            "Missing manifest templates: [a b]"
        );
    }
}

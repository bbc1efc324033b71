//! The one `events.k8s.io/v1` Event body talm writes for an engine event
//! ([`talm_hub_core::Event`]), used by the operator and by `talm-hub plan` alike: TALM's
//! reportingController, action, reason, note and annotations, `regarding` the CGU and `related`
//! to the ManagedCluster of a per-cluster event (docs/contract.md §2.7).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use talm_hub_core::decision::ObjectRef;
use talm_hub_core::{Event, names};
use talm_shared::api::ObjectMeta;

/// Where an event is written and who writes it.
#[derive(Clone, Copy, Debug)]
pub struct EventMeta<'a> {
    /// The Event's name (unique in `namespace`).
    pub name: &'a str,
    /// The CGU's namespace, where TALM writes its events.
    pub namespace: &'a str,
    /// `eventTime`.
    pub now: Timestamp,
    /// `reportingInstance`.
    pub reporting_instance: &'a str,
}

/// The Event object for `e`. `uid_of` fills in a referenced object's uid when the engine did
/// not know it.
pub fn k8s_event(
    e: &Event,
    meta: EventMeta<'_>,
    uid_of: impl Fn(&ObjectRef) -> Option<String>,
) -> K8sEvent {
    let reference = |r: &ObjectRef| ObjectReference {
        api_version: Some(r.api_version.clone()),
        kind: Some(r.kind.clone()),
        namespace: (!r.namespace.is_empty()).then(|| r.namespace.clone()),
        name: Some(r.name.clone()),
        uid: if r.uid.is_empty() {
            uid_of(r)
        } else {
            Some(r.uid.clone())
        },
        ..Default::default()
    };
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(meta.name.to_string()),
            namespace: Some(meta.namespace.to_string()),
            annotations: (!e.annotations.is_empty()).then(|| e.annotations.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(meta.now)),
        reporting_controller: Some(names::EVENT_REPORTING_CONTROLLER.into()),
        reporting_instance: Some(meta.reporting_instance.to_string()),
        action: Some(e.action.clone()),
        reason: Some(e.reason.clone()),
        note: Some(e.note.clone()),
        type_: Some(e.type_.as_str().into()),
        regarding: Some(reference(&e.regarding)),
        related: e.related.as_ref().map(reference),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use talm_hub_core::decision::EventType;

    use super::*;

    fn object(kind: &str, name: &str, uid: &str) -> ObjectRef {
        ObjectRef {
            api_version: "v1".into(),
            kind: kind.into(),
            namespace: String::new(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn per_cluster_events_regard_the_cgu_and_relate_the_cluster() {
        let e = Event {
            type_: EventType::Normal,
            reason: "CguStarted".into(),
            action: "RemediationInClusterStarted".into(),
            note: "n".into(),
            regarding: object("ClusterGroupUpgrade", "cgu", "u-cgu"),
            related: Some(object("ManagedCluster", "sno1", "")),
            annotations: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        let meta = EventMeta {
            name: "cgu.1",
            namespace: "default",
            now: "2026-03-02T10:00:00Z".parse().unwrap(),
            reporting_instance: "talm-hub",
        };
        let k = k8s_event(&e, meta, |r| {
            (r.name == "sno1").then(|| "u-sno1".to_string())
        });
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["regarding"]["kind"], "ClusterGroupUpgrade");
        assert_eq!(v["regarding"]["uid"], "u-cgu");
        assert_eq!(v["related"]["kind"], "ManagedCluster");
        assert_eq!(v["related"]["name"], "sno1");
        assert_eq!(v["related"]["uid"], "u-sno1");
        assert_eq!(v["eventTime"], "2026-03-02T10:00:00.000000Z");
        assert_eq!(v["reportingController"], "ClusterGroupUpgrade");
        assert_eq!(v["metadata"]["annotations"]["k"], "v");
        let global = Event { related: None, ..e };
        let v = serde_json::to_value(k8s_event(&global, meta, |_| None)).unwrap();
        assert!(v.get("related").is_none(), "{v}");
    }
}

//! Applying one engine [`Decision`] to the in-memory objects, the way the operator applies it
//! to the API server: object writes in order, then the CGU's status and finalizer, then the
//! events (as `events.k8s.io/v1` Event objects). What a ManagedCluster or SpokeAgent write and
//! a finalizer change do comes from the engine (`talm_hub_core::patch`): the merge patches the
//! operator sends are applied here with `json_patch::merge`.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};
use talm_hub_core::{Decision, Event, Write, names};
use talm_shared::api::rhacm::{ManagedClusterView, Placement, PlacementBinding};
use talm_shared::api::work::ManifestWork;

use super::store::{CguKey, Kind, ObjectKey, Store, admit, edit_object};
use crate::error::Error;

/// What a write did to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// The object did not exist and was created.
    Created,
    /// The object existed and changed.
    Updated,
    /// The object was deleted.
    Deleted,
}

impl Verb {
    /// Lower-case past tense, for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Created => "created",
            Verb::Updated => "updated",
            Verb::Deleted => "deleted",
        }
    }
}

/// One object change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub verb: Verb,
    /// To which object.
    pub key: ObjectKey,
}

/// The effect of one decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Object changes, in order (the CGU itself included; events excluded).
    pub changes: Vec<Change>,
    /// Events emitted.
    pub events: usize,
    /// Whether the CGU was deleted (its finalizer removed while it was being deleted).
    pub cgu_deleted: bool,
}

impl Applied {
    /// Whether any object changed (events do not count: they never feed back into the engine).
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

fn to_object<T: Serialize>(what: &str, value: &T) -> Result<Map<String, Value>, Error> {
    match serde_json::to_value(value) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::Internal(format!(
            "{what} serialized to {other}, not an object"
        ))),
        Err(e) => Err(Error::Internal(format!("serializing {what}: {e}"))),
    }
}

/// Applies `decision` (made for the CGU `cgu`) to `store` at `now`.
pub fn apply_decision(
    store: &mut Store,
    cgu: &CguKey,
    decision: &Decision,
    now: Timestamp,
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    for write in &decision.writes {
        if let Some(change) = apply_write(store, write, now)? {
            applied.changes.push(change);
        }
    }
    apply_cgu(store, cgu, decision, &mut applied)?;
    for event in &decision.events {
        let raw = event_object(store, cgu, event, now);
        store.push_event(raw);
        applied.events += 1;
    }
    Ok(applied)
}

/// Stores `raw` under `key`, reporting what happened.
fn put(
    store: &mut Store,
    key: ObjectKey,
    raw: Map<String, Value>,
) -> Result<Option<Change>, Error> {
    let existed = store.get(&key).is_some();
    let changed = store.put(key.clone(), raw)?;
    Ok(changed.then_some(Change {
        verb: if existed {
            Verb::Updated
        } else {
            Verb::Created
        },
        key,
    }))
}

fn delete(store: &mut Store, key: ObjectKey) -> Option<Change> {
    store.remove(&key).then_some(Change {
        verb: Verb::Deleted,
        key,
    })
}

/// Applies one write; `None` when it changed nothing.
pub fn apply_write(
    store: &mut Store,
    write: &Write,
    now: Timestamp,
) -> Result<Option<Change>, Error> {
    match write {
        Write::ApplyPlacement(p) => {
            apply_object(store, Kind::Placement, to_object("Placement", p)?, now)
        }
        Write::ApplyPlacementBinding(b) => apply_object(
            store,
            Kind::PlacementBinding,
            to_object("PlacementBinding", b)?,
            now,
        ),
        Write::DeletePlacement { namespace, name } => Ok(delete(
            store,
            ObjectKey::typed(Kind::Placement, "Placement", namespace, name),
        )),
        Write::DeletePlacementBinding { namespace, name } => Ok(delete(
            store,
            ObjectKey::typed(Kind::PlacementBinding, "PlacementBinding", namespace, name),
        )),
        Write::PatchManagedCluster { name, .. } => {
            let key = ObjectKey::typed(Kind::ManagedCluster, "ManagedCluster", "", name);
            let Some(entry) = store.get(&key) else {
                tracing::debug!(cluster = %name, "PatchManagedCluster: no such ManagedCluster; ignored");
                return Ok(None);
            };
            let mut raw = entry.raw.clone();
            let patch = merge_patch(&mut raw, write)?;
            // A map the patch emptied (or created only to remove from) is dropped, as the
            // planner always has: no `labels: {}` in its output.
            edit_object(&mut raw, "metadata", |meta| {
                for field in ["labels", "annotations"] {
                    let patched = patch
                        .as_ref()
                        .and_then(|p| p.pointer(&format!("/metadata/{field}")))
                        .is_some();
                    if patched
                        && meta
                            .get(field)
                            .and_then(Value::as_object)
                            .is_some_and(Map::is_empty)
                    {
                        meta.remove(field);
                    }
                }
            });
            put(store, key, raw)
        }
        Write::SetSpokeAgentTasks {
            namespace, name, ..
        } => {
            let key = ObjectKey::typed(Kind::SpokeAgent, "SpokeAgent", namespace, name);
            let raw = match store.get(&key) {
                Some(entry) => {
                    let mut raw = entry.raw.clone();
                    merge_patch(&mut raw, write)?;
                    raw
                }
                None => {
                    // Clearing tasks of an agent that does not exist changes nothing.
                    let Some(agent) = write.spoke_agent_if_missing() else {
                        return Ok(None);
                    };
                    let mut raw = to_object("SpokeAgent", &agent)?;
                    admit(&key, &mut raw, now);
                    raw
                }
            };
            put(store, key, raw)
        }
        // Manual InstallPlan approval without a connected agent (docs/contract.md §3.10):
        // the views and actions the operator would write. Only a live hub fills a view's
        // result; a view given in the input with a status is read like the operator reads it.
        Write::ApplyManagedClusterView(v) => apply_object(
            store,
            Kind::ManagedClusterView,
            to_object("ManagedClusterView", v)?,
            now,
        ),
        Write::DeleteManagedClusterView { namespace, name } => Ok(delete(
            store,
            ObjectKey::typed(
                Kind::ManagedClusterView,
                ManagedClusterView::KIND,
                namespace,
                name,
            ),
        )),
        Write::CreateManagedClusterAction(a) => {
            let mut raw = to_object("ManagedClusterAction", a)?;
            let key = ObjectKey::of(Kind::ManagedClusterAction, &raw);
            // One that exists is left alone: it deletes itself once executed.
            if store.get(&key).is_some() {
                return Ok(None);
            }
            raw.remove("status");
            admit(&key, &mut raw, now);
            put(store, key, raw)
        }
        // A ManifestWork rollout's work (docs/contract.md §3.13): created once; its status is
        // the work agent's, which only a live hub (or the input) provides.
        Write::CreateManifestWork(w) => {
            let mut raw = to_object("ManifestWork", w)?;
            let key = ObjectKey::of(Kind::ManifestWork, &raw);
            if store.get(&key).is_some() {
                return Ok(None);
            }
            raw.remove("status");
            admit(&key, &mut raw, now);
            put(store, key, raw)
        }
        Write::DeleteManifestWork { namespace, name } => Ok(delete(
            store,
            ObjectKey::typed(Kind::ManifestWork, ManifestWork::KIND, namespace, name),
        )),
        // The pre-cache scheduler's grant (docs/contract.md §4.4): a merge patch on the
        // SpokeAgent, only while its pre-cache task is the one granted.
        Write::SetPrecacheGrant {
            namespace, name, ..
        } => {
            let key = ObjectKey::typed(Kind::SpokeAgent, "SpokeAgent", namespace, name);
            let Some(entry) = store.get(&key) else {
                return Ok(None);
            };
            let current = entry
                .raw
                .get("spec")
                .and_then(|s| s.get("precache"))
                .and_then(|t| t.get("id"))
                .and_then(Value::as_str);
            if !write.grant_applies_to(current) {
                return Ok(None);
            }
            let mut raw = entry.raw.clone();
            merge_patch(&mut raw, write)?;
            put(store, key, raw)
        }
        Write::SetPrecacheBudgetStatus { name, status } => {
            let key = ObjectKey::typed(
                Kind::PrecacheBudget,
                talm_shared::api::precachebudget::KIND,
                "",
                name,
            );
            let Some(entry) = store.get(&key) else {
                return Ok(None);
            };
            let mut raw = entry.raw.clone();
            raw.insert(
                "status".into(),
                Value::Object(to_object("PrecacheBudget status", status)?),
            );
            put(store, key, raw)
        }
    }
}

/// Applies the write's merge patch ([`Write::merge_patch`]) to `raw`, as the API server would;
/// returns the patch.
fn merge_patch(raw: &mut Map<String, Value>, write: &Write) -> Result<Option<Value>, Error> {
    let patch = write
        .merge_patch()
        .map_err(|e| Error::Internal(e.to_string()))?;
    if let Some(patch) = &patch {
        let mut doc = Value::Object(std::mem::take(raw));
        json_patch::merge(&mut doc, patch);
        if let Value::Object(m) = doc {
            *raw = m;
        }
    }
    Ok(patch)
}

/// Create-or-replace of an object talm owns (Placement, PlacementBinding, ManagedClusterView):
/// a new object gets a
/// uid and creation time; an existing one gets the written labels, annotations and body while
/// keeping the rest of its metadata and its status.
fn apply_object(
    store: &mut Store,
    kind: Kind,
    mut written: Map<String, Value>,
    now: Timestamp,
) -> Result<Option<Change>, Error> {
    let (api_version, kind_name) = match kind {
        Kind::Placement => (Placement::API_VERSION, Placement::KIND),
        Kind::ManagedClusterView => (ManagedClusterView::API_VERSION, ManagedClusterView::KIND),
        _ => (PlacementBinding::API_VERSION, PlacementBinding::KIND),
    };
    written.insert("apiVersion".into(), Value::String(api_version.into()));
    written.insert("kind".into(), Value::String(kind_name.into()));
    edit_object(&mut written, "metadata", |meta| {
        if meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("namespace".into(), Value::String("default".into()));
        }
    });
    let key = ObjectKey::of(kind, &written);
    let raw = match store.get(&key) {
        None => {
            written.remove("status");
            admit(&key, &mut written, now);
            written
        }
        Some(existing) => {
            let mut merged: Map<String, Value> = written
                .iter()
                .filter(|(k, _)| k.as_str() != "metadata" && k.as_str() != "status")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut meta = existing
                .raw
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let new_meta = written.get("metadata").and_then(Value::as_object);
            for field in ["labels", "annotations"] {
                match new_meta.and_then(|m| m.get(field)) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            merged.insert("metadata".into(), Value::Object(meta));
            if let Some(status) = existing.raw.get("status") {
                merged.insert("status".into(), status.clone());
            }
            merged
        }
    };
    put(store, key, raw)
}

/// Applies the status and finalizer parts of a decision to the CGU; deletes the CGU when it is
/// being deleted and no finalizer is left.
fn apply_cgu(
    store: &mut Store,
    cgu: &CguKey,
    decision: &Decision,
    applied: &mut Applied,
) -> Result<(), Error> {
    let key = cgu.object_key();
    let Some(entry) = store.get(&key) else {
        return Ok(());
    };
    let mut raw = entry.raw.clone();
    let status = serde_json::to_value(&decision.status)
        .map_err(|e| Error::Internal(format!("serializing status of {cgu}: {e}")))?;
    let empty = status.as_object().is_some_and(Map::is_empty);
    if !empty || raw.contains_key("status") {
        raw.insert("status".into(), status);
    }
    let (deleting, finalizers_left) = edit_object(&mut raw, "metadata", |meta| {
        let current: Vec<String> = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(list) = decision.finalizer.apply(&current) {
            if list.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert(
                    "finalizers".into(),
                    Value::Array(list.into_iter().map(Value::String).collect()),
                );
            }
        }
        let deleting = meta.get("deletionTimestamp").is_some_and(|t| !t.is_null());
        let left = meta
            .get("finalizers")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty());
        (deleting, left)
    });
    if deleting && !finalizers_left {
        applied.changes.extend(delete(store, key));
        applied.cgu_deleted = true;
        return Ok(());
    }
    applied.changes.extend(put(store, key, raw)?);
    Ok(())
}

/// Event names ([`names::event_name`]), unique in the store, deterministic for a given input
/// and `now`.
fn event_name(store: &Store, cgu: &CguKey, now: Timestamp) -> String {
    let nanos = now.as_nanosecond().to_string();
    (0u64..)
        .map(|seq| {
            names::event_name(
                &cgu.name,
                &[&cgu.namespace, &cgu.name, &nanos, &seq.to_string()],
            )
        })
        .find(|name| !store.has_event(&cgu.namespace, name))
        .unwrap_or_default()
}

/// The `events.k8s.io/v1` Event object for an engine event (the operator's body,
/// `crate::events::k8s_event`, with the uids the store knows).
fn event_object(store: &Store, cgu: &CguKey, event: &Event, now: Timestamp) -> Map<String, Value> {
    let name = event_name(store, cgu, now);
    let body = crate::events::k8s_event(
        event,
        crate::events::EventMeta {
            name: &name,
            namespace: &cgu.namespace,
            now,
            reporting_instance: "talm-hub",
        },
        |r| known_uid(store, &r.api_version, &r.kind, &r.namespace, &r.name),
    );
    match serde_json::to_value(body) {
        Ok(Value::Object(raw)) => raw,
        // An Event always serialises to an object.
        _ => Map::new(),
    }
}

/// The uid of an object the store knows, for filling in an event's `regarding.uid`.
fn known_uid(
    store: &Store,
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Option<String> {
    let rank = Kind::classify(api_version, kind);
    if !rank.is_typed() {
        return None;
    }
    let key = ObjectKey::typed(rank, kind, namespace, name);
    store
        .get(&key)?
        .raw
        .get("metadata")?
        .get("uid")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use talm_hub_core::{EventType, FinalizerChange, Notes, ObjectRef, Requeue, TaskChange};
    use talm_shared::api::ObjectMeta;
    use talm_shared::api::cgu::ClusterGroupUpgradeStatus;
    use talm_shared::api::cgu::FINALIZER;
    use talm_shared::api::rhacm::{BindingOverrides, PlacementSpec, PlacementSubject, Toleration};
    use talm_shared::api::spokeagent::{
        BackupTask, InstallPlanTask, PrecacheTask, SubscriptionTarget,
    };

    use super::*;
    use crate::plan::load::load_yaml_str;

    fn now() -> Timestamp {
        "2026-01-01T10:00:00Z".parse().unwrap()
    }

    const INPUT: &str = "apiVersion: ran.openshift.io/v1alpha1
kind: ClusterGroupUpgrade
metadata: {name: cgu-1, namespace: ns}
spec: {remediationStrategy: {maxConcurrency: 1}}
---
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata:
  name: spoke1
  labels: {keep: k, drop: d}
---
apiVersion: cluster.open-cluster-management.io/v1
kind: ManagedCluster
metadata: {name: spoke2}
";

    fn store() -> Store {
        Store::from_loaded(load_yaml_str("in.yaml", INPUT).unwrap(), now()).unwrap()
    }

    fn cgu_key() -> CguKey {
        CguKey {
            namespace: "ns".into(),
            name: "cgu-1".into(),
        }
    }

    fn decision() -> Decision {
        Decision {
            status: ClusterGroupUpgradeStatus::default(),
            finalizer: FinalizerChange::None,
            writes: Vec::new(),
            events: Vec::new(),
            requeue: Requeue::Never,
            notes: Notes::default(),
        }
    }

    fn raw(
        s: &Store,
        kind: Kind,
        kind_name: &str,
        ns: &str,
        name: &str,
    ) -> Option<Map<String, Value>> {
        s.get(&ObjectKey::typed(kind, kind_name, ns, name))
            .map(|e| e.raw.clone())
    }

    fn placement(labels: &[(&str, &str)], tolerations: &[&str]) -> Placement {
        Placement {
            api_version: Placement::API_VERSION.into(),
            kind: Placement::KIND.into(),
            metadata: ObjectMeta {
                name: Some("p1".into()),
                namespace: Some("policies".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: PlacementSpec {
                predicates: Vec::new(),
                tolerations: tolerations
                    .iter()
                    .map(|k| Toleration {
                        key: k.to_string(),
                        operator: "Exists".into(),
                    })
                    .collect(),
            },
            status: None,
        }
    }

    #[test]
    fn apply_placement_creates_then_replaces_keeping_status_and_identity() {
        let mut s = store();
        let created = apply_write(
            &mut s,
            &Write::ApplyPlacement(placement(&[("a", "1")], &["t1"])),
            now(),
        )
        .unwrap();
        assert_eq!(created.unwrap().verb, Verb::Created);
        let p = raw(&s, Kind::Placement, "Placement", "policies", "p1").unwrap();
        assert_eq!(p["apiVersion"], Placement::API_VERSION);
        assert_eq!(p["metadata"]["creationTimestamp"], "2026-01-01T10:00:00Z");
        let uid = p["metadata"]["uid"].clone();
        assert!(uid.is_string());
        // Someone (the placement controller) writes a status.
        let mut with_status = p.clone();
        with_status.insert(
            "status".into(),
            json!({"conditions": [{"type": "PlacementSatisfied", "status": "True"}]}),
        );
        s.put(
            ObjectKey::typed(Kind::Placement, "Placement", "policies", "p1"),
            with_status,
        )
        .unwrap();
        let later: Timestamp = "2026-01-01T11:00:00Z".parse().unwrap();
        let same = apply_write(
            &mut s,
            &Write::ApplyPlacement(placement(&[("a", "1")], &["t1"])),
            later,
        )
        .unwrap();
        assert_eq!(same, None, "idempotent");
        let updated = apply_write(
            &mut s,
            &Write::ApplyPlacement(placement(&[("b", "2")], &["t2"])),
            later,
        )
        .unwrap();
        assert_eq!(updated.unwrap().verb, Verb::Updated);
        let p = raw(&s, Kind::Placement, "Placement", "policies", "p1").unwrap();
        assert_eq!(p["metadata"]["uid"], uid);
        assert_eq!(p["metadata"]["creationTimestamp"], "2026-01-01T10:00:00Z");
        assert_eq!(p["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(p["spec"]["tolerations"][0]["key"], "t2");
        assert_eq!(p["status"]["conditions"][0]["type"], "PlacementSatisfied");
        assert!(matches!(
            s.get(&ObjectKey::typed(
                Kind::Placement,
                "Placement",
                "policies",
                "p1"
            ))
            .unwrap()
            .typed,
            super::super::store::Typed::Placement(_)
        ));
    }

    fn binding(overrides: bool) -> PlacementBinding {
        PlacementBinding {
            api_version: PlacementBinding::API_VERSION.into(),
            kind: PlacementBinding::KIND.into(),
            metadata: ObjectMeta {
                name: Some("b1".into()),
                namespace: Some("policies".into()),
                ..Default::default()
            },
            placement_ref: PlacementSubject {
                api_group: "cluster.open-cluster-management.io".into(),
                kind: "Placement".into(),
                name: "p1".into(),
            },
            subjects: vec![PlacementSubject {
                api_group: "policy.open-cluster-management.io".into(),
                kind: "Policy".into(),
                name: "policy1".into(),
            }],
            sub_filter: Some("restricted".into()),
            binding_overrides: overrides.then(|| BindingOverrides {
                remediation_action: Some("enforce".into()),
            }),
        }
    }

    #[test]
    fn apply_binding_replaces_the_whole_body() {
        let mut s = store();
        apply_write(&mut s, &Write::ApplyPlacementBinding(binding(true)), now()).unwrap();
        let b = raw(
            &s,
            Kind::PlacementBinding,
            "PlacementBinding",
            "policies",
            "b1",
        )
        .unwrap();
        assert_eq!(b["bindingOverrides"]["remediationAction"], "enforce");
        assert_eq!(b["subFilter"], "restricted");
        apply_write(&mut s, &Write::ApplyPlacementBinding(binding(false)), now()).unwrap();
        let b = raw(
            &s,
            Kind::PlacementBinding,
            "PlacementBinding",
            "policies",
            "b1",
        )
        .unwrap();
        assert!(
            b.get("bindingOverrides").is_none(),
            "dropped fields are dropped"
        );
        assert_eq!(b["subjects"][0]["name"], "policy1");
    }

    #[test]
    fn deletes_remove_objects_and_are_idempotent() {
        let mut s = store();
        apply_write(&mut s, &Write::ApplyPlacement(placement(&[], &[])), now()).unwrap();
        apply_write(&mut s, &Write::ApplyPlacementBinding(binding(true)), now()).unwrap();
        let del_p = Write::DeletePlacement {
            namespace: "policies".into(),
            name: "p1".into(),
        };
        let del_b = Write::DeletePlacementBinding {
            namespace: "policies".into(),
            name: "b1".into(),
        };
        assert_eq!(
            apply_write(&mut s, &del_p, now()).unwrap().unwrap().verb,
            Verb::Deleted
        );
        assert_eq!(
            apply_write(&mut s, &del_b, now()).unwrap().unwrap().verb,
            Verb::Deleted
        );
        assert!(raw(&s, Kind::Placement, "Placement", "policies", "p1").is_none());
        assert!(
            raw(
                &s,
                Kind::PlacementBinding,
                "PlacementBinding",
                "policies",
                "b1"
            )
            .is_none()
        );
        assert_eq!(apply_write(&mut s, &del_p, now()).unwrap(), None);
    }

    fn patch(
        name: &str,
        add: &[(&str, &str)],
        remove: &[&str],
        add_ann: &[(&str, &str)],
        remove_ann: &[&str],
    ) -> Write {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let list = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        Write::PatchManagedCluster {
            name: name.into(),
            add_labels: map(add),
            remove_labels: list(remove),
            add_annotations: map(add_ann),
            remove_annotations: list(remove_ann),
        }
    }

    #[test]
    fn patch_managed_cluster_adds_then_removes() {
        let mut s = store();
        let w = patch(
            "spoke1",
            &[("new", "n"), ("drop", "again")],
            &["drop"],
            &[("a", "1")],
            &["missing"],
        );
        assert_eq!(
            apply_write(&mut s, &w, now()).unwrap().unwrap().verb,
            Verb::Updated
        );
        let mc = raw(&s, Kind::ManagedCluster, "ManagedCluster", "", "spoke1").unwrap();
        assert_eq!(
            mc["metadata"]["labels"],
            json!({"keep": "k", "new": "n"}),
            "removal wins over an add of the same key"
        );
        assert_eq!(mc["metadata"]["annotations"], json!({"a": "1"}));
        assert_eq!(apply_write(&mut s, &w, now()).unwrap(), None, "idempotent");
        // The typed view follows.
        let Some(entry) = s.get(&ObjectKey::typed(
            Kind::ManagedCluster,
            "ManagedCluster",
            "",
            "spoke1",
        )) else {
            panic!()
        };
        let super::super::store::Typed::ManagedCluster(typed) = &entry.typed else {
            panic!()
        };
        assert_eq!(
            typed
                .metadata
                .labels
                .as_ref()
                .unwrap()
                .get("new")
                .map(String::as_str),
            Some("n")
        );
    }

    #[test]
    fn patch_managed_cluster_drops_emptied_maps_and_leaves_untouched_ones() {
        let mut s = store();
        let w = patch("spoke1", &[], &["keep", "drop"], &[], &["nothing"]);
        apply_write(&mut s, &w, now()).unwrap();
        let mc = raw(&s, Kind::ManagedCluster, "ManagedCluster", "", "spoke1").unwrap();
        assert!(mc["metadata"].get("labels").is_none());
        assert!(
            mc["metadata"].get("annotations").is_none(),
            "removing absent keys creates nothing"
        );
        let noop = patch("spoke2", &[], &["x"], &[], &[]);
        assert_eq!(apply_write(&mut s, &noop, now()).unwrap(), None);
    }

    #[test]
    fn patch_of_a_missing_cluster_is_ignored() {
        let mut s = store();
        let before = to_yaml(&s);
        assert_eq!(
            apply_write(&mut s, &patch("nope", &[("a", "b")], &[], &[], &[]), now()).unwrap(),
            None
        );
        assert_eq!(to_yaml(&s), before);
    }

    fn to_yaml(s: &Store) -> String {
        crate::plan::output::to_yaml(s).unwrap()
    }

    fn precache_task() -> PrecacheTask {
        PrecacheTask {
            id: "ns/cgu-1/uid/precache".into(),
            spec: Default::default(),
            deadline: talm_shared::api::Time(now()),
            hold: false,
            rate_limit_bytes_per_second: None,
            order: None,
        }
    }

    #[test]
    fn precache_grants_patch_only_the_granted_task_and_budget_status_is_replaced() {
        let mut s = store();
        let assign = Write::SetSpokeAgentTasks {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            precache: Some(TaskChange::Assign(PrecacheTask {
                hold: true,
                ..precache_task()
            })),
            backup: None,
            install_plans: None,
            rollback: None,
        };
        apply_write(&mut s, &assign, now()).unwrap();
        let grant = |task_id: &str, hold: bool, cap: Option<i64>| Write::SetPrecacheGrant {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            task_id: task_id.into(),
            hold,
            rate_limit_bytes_per_second: cap,
        };
        // A grant for another (replaced) task, or for a missing agent, changes nothing.
        assert_eq!(
            apply_write(&mut s, &grant("old", false, Some(5)), now()).unwrap(),
            None
        );
        let missing = Write::SetPrecacheGrant {
            namespace: "spoke9".into(),
            name: "spoke9".into(),
            task_id: "x".into(),
            hold: false,
            rate_limit_bytes_per_second: None,
        };
        assert_eq!(apply_write(&mut s, &missing, now()).unwrap(), None);
        let change = apply_write(
            &mut s,
            &grant("ns/cgu-1/uid/precache", false, Some(5)),
            now(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(change.verb, Verb::Updated);
        let a = raw(&s, Kind::SpokeAgent, "SpokeAgent", "spoke1", "spoke1").unwrap();
        assert!(
            a["spec"]["precache"].get("hold").is_none(),
            "false is left out"
        );
        assert_eq!(a["spec"]["precache"]["rateLimitBytesPerSecond"], 5);
        assert_eq!(
            apply_write(
                &mut s,
                &grant("ns/cgu-1/uid/precache", false, Some(5)),
                now()
            )
            .unwrap(),
            None,
            "the same grant again changes nothing"
        );
        // Budget status: replaced on an existing budget, ignored for a missing one.
        let mut s = Store::from_loaded(
            load_yaml_str(
                "b.yaml",
                "apiVersion: talm.dev/v1alpha1\nkind: PrecacheBudget\nmetadata: {name: site-a}\nspec: {bandwidth: 25Mi}\nstatus: {active: 9, queued: 9}\n",
            )
            .unwrap(),
            now(),
        )
        .unwrap();
        let status = talm_shared::api::precachebudget::PrecacheBudgetStatus {
            active: 2,
            bandwidth_in_use_display: "1Mi/s".into(),
            ..Default::default()
        };
        for (name, changed) in [("site-a", true), ("site-b", false)] {
            let w = Write::SetPrecacheBudgetStatus {
                name: name.into(),
                status: status.clone(),
            };
            assert_eq!(
                apply_write(&mut s, &w, now()).unwrap().is_some(),
                changed,
                "{name}"
            );
        }
        let b = raw(&s, Kind::PrecacheBudget, "PrecacheBudget", "", "site-a").unwrap();
        assert_eq!(
            b["status"],
            json!({"active": 2, "queued": 0, "done": 0, "bandwidthAllotted": 0,
                   "bandwidthInUse": 0, "bandwidthInUseDisplay": "1Mi/s"})
        );
    }

    #[test]
    fn spoke_agent_tasks_create_assign_and_clear() {
        let mut s = store();
        let assign = Write::SetSpokeAgentTasks {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            precache: Some(TaskChange::Assign(precache_task())),
            backup: Some(TaskChange::Assign(BackupTask {
                id: "b".into(),
                deadline: talm_shared::api::Time(now()),
            })),
            install_plans: Some(TaskChange::Assign(InstallPlanTask {
                id: "ns/cgu-1/uid/installplans/p1".into(),
                subscriptions: vec![SubscriptionTarget {
                    name: "ptp".into(),
                    namespace: "openshift-ptp".into(),
                }],
                deadline: talm_shared::api::Time(now()),
            })),
            rollback: None,
        };
        assert_eq!(
            apply_write(&mut s, &assign, now()).unwrap().unwrap().verb,
            Verb::Created
        );
        let a = raw(&s, Kind::SpokeAgent, "SpokeAgent", "spoke1", "spoke1").unwrap();
        assert_eq!(a["apiVersion"], "talm.dev/v1alpha1");
        assert_eq!(a["spec"]["precache"]["id"], "ns/cgu-1/uid/precache");
        assert_eq!(a["spec"]["precache"]["deadline"], "2026-01-01T10:00:00Z");
        assert_eq!(a["spec"]["backup"]["id"], "b");
        assert_eq!(
            a["spec"]["installPlans"],
            json!({"id": "ns/cgu-1/uid/installplans/p1",
                   "subscriptions": [{"name": "ptp", "namespace": "openshift-ptp"}],
                   "deadline": "2026-01-01T10:00:00Z"})
        );
        assert!(a["metadata"]["uid"].is_string());
        let clear_backup = Write::SetSpokeAgentTasks {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            precache: None,
            backup: Some(TaskChange::Clear),
            install_plans: Some(TaskChange::Clear),
            rollback: None,
        };
        assert_eq!(
            apply_write(&mut s, &clear_backup, now())
                .unwrap()
                .unwrap()
                .verb,
            Verb::Updated
        );
        let a = raw(&s, Kind::SpokeAgent, "SpokeAgent", "spoke1", "spoke1").unwrap();
        assert!(a["spec"].get("backup").is_none());
        assert!(a["spec"].get("installPlans").is_none());
        assert_eq!(
            a["spec"]["precache"]["id"], "ns/cgu-1/uid/precache",
            "untouched"
        );
        assert_eq!(apply_write(&mut s, &clear_backup, now()).unwrap(), None);
        // Clearing the tasks of an agent that does not exist creates nothing.
        let clear_missing = Write::SetSpokeAgentTasks {
            namespace: "spoke2".into(),
            name: "spoke2".into(),
            precache: Some(TaskChange::Clear),
            backup: None,
            install_plans: None,
            rollback: None,
        };
        assert_eq!(apply_write(&mut s, &clear_missing, now()).unwrap(), None);
        assert!(raw(&s, Kind::SpokeAgent, "SpokeAgent", "spoke2", "spoke2").is_none());
    }

    #[test]
    fn status_replaces_the_cgu_status_and_an_empty_one_is_not_added() {
        let mut s = store();
        let applied = apply_decision(&mut s, &cgu_key(), &decision(), now()).unwrap();
        assert!(
            !applied.changed(),
            "empty status on a CGU without status changes nothing"
        );
        assert!(
            raw(
                &s,
                Kind::ClusterGroupUpgrade,
                "ClusterGroupUpgrade",
                "ns",
                "cgu-1"
            )
            .unwrap()
            .get("status")
            .is_none()
        );
        let mut d = decision();
        d.status.computed_max_concurrency = Some(1);
        d.status.remediation_plan = Some(vec![vec!["spoke1".into()]]);
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        assert!(applied.changed());
        let cgu = raw(
            &s,
            Kind::ClusterGroupUpgrade,
            "ClusterGroupUpgrade",
            "ns",
            "cgu-1",
        )
        .unwrap();
        assert_eq!(
            cgu["status"],
            json!({"computedMaxConcurrency": 1, "remediationPlan": [["spoke1"]]})
        );
        assert_eq!(
            s.cgu(&cgu_key())
                .unwrap()
                .status
                .as_ref()
                .unwrap()
                .computed_max_concurrency,
            Some(1)
        );
        assert!(
            !apply_decision(&mut s, &cgu_key(), &d, now())
                .unwrap()
                .changed()
        );
    }

    #[test]
    fn finalizer_is_added_once_and_removed() {
        let mut s = store();
        let mut d = decision();
        d.finalizer = FinalizerChange::Add;
        apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        let cgu = raw(
            &s,
            Kind::ClusterGroupUpgrade,
            "ClusterGroupUpgrade",
            "ns",
            "cgu-1",
        )
        .unwrap();
        assert_eq!(cgu["metadata"]["finalizers"], json!([FINALIZER]));
        d.finalizer = FinalizerChange::Remove;
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        assert!(!applied.cgu_deleted, "not being deleted: stays");
        let cgu = raw(
            &s,
            Kind::ClusterGroupUpgrade,
            "ClusterGroupUpgrade",
            "ns",
            "cgu-1",
        )
        .unwrap();
        assert!(cgu["metadata"].get("finalizers").is_none());
    }

    #[test]
    fn removing_the_last_finalizer_of_a_deleted_cgu_deletes_it() {
        let text = INPUT.replace(
            "metadata: {name: cgu-1, namespace: ns}",
            "metadata: {name: cgu-1, namespace: ns, deletionTimestamp: '2026-01-01T09:00:00Z', finalizers: [ran.openshift.io/cleanup-finalizer, other/keep]}",
        );
        let mut s = Store::from_loaded(load_yaml_str("in.yaml", &text).unwrap(), now()).unwrap();
        let mut d = decision();
        d.finalizer = FinalizerChange::Remove;
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        assert!(!applied.cgu_deleted, "another finalizer is left");
        let cgu = raw(
            &s,
            Kind::ClusterGroupUpgrade,
            "ClusterGroupUpgrade",
            "ns",
            "cgu-1",
        )
        .unwrap();
        assert_eq!(cgu["metadata"]["finalizers"], json!(["other/keep"]));
        // Someone else removes theirs; the next removal finishes the deletion.
        let mut only_ours = cgu.clone();
        only_ours["metadata"]["finalizers"] = json!([FINALIZER]);
        s.put(cgu_key().object_key(), only_ours).unwrap();
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        assert!(applied.cgu_deleted);
        assert_eq!(
            applied.changes,
            [Change {
                verb: Verb::Deleted,
                key: cgu_key().object_key()
            }]
        );
        assert!(s.cgu(&cgu_key()).is_none());
        assert!(s.cgu_keys().is_empty());
    }

    fn event(reason: &str, related: ObjectRef) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.into(),
            action: "RemediationInClusterStarted".into(),
            note: "ClusterGroupUpgrade cgu-1: cluster spoke1 upgrade started".into(),
            regarding: ObjectRef {
                api_version: "ran.openshift.io/v1alpha1".into(),
                kind: "ClusterGroupUpgrade".into(),
                namespace: "ns".into(),
                name: "cgu-1".into(),
                uid: "u-cgu".into(),
            },
            related: Some(related),
            annotations: BTreeMap::from([(
                "cgu.openshift.io/event-type".to_string(),
                "cluster".to_string(),
            )]),
        }
    }

    #[test]
    fn events_become_event_objects_with_unique_names() {
        let mut s = store();
        let mut d = decision();
        let cluster = ObjectRef {
            api_version: "cluster.open-cluster-management.io/v1".into(),
            kind: "ManagedCluster".into(),
            namespace: String::new(),
            name: "spoke1".into(),
            uid: String::new(),
        };
        d.events = vec![
            event("CguStarted", cluster.clone()),
            event("CguStarted", cluster),
        ];
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        assert_eq!(applied.events, 2);
        assert!(!applied.changed(), "events alone are not object changes");
        // Same decision at the same instant again: still unique names.
        apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        let events: Vec<&Map<String, Value>> = s
            .output_objects()
            .filter(|o| o["kind"] == "Event")
            .collect();
        assert_eq!(events.len(), 4);
        let mut names: Vec<&str> = events
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("cgu-1.") && n.len() == "cgu-1.".len() + 16),
            "{names:?}"
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 4);
        let e = events[0];
        assert_eq!(e["apiVersion"], "events.k8s.io/v1");
        assert_eq!(e["metadata"]["namespace"], "ns", "the CGU's namespace");
        assert_eq!(
            e["metadata"]["annotations"],
            json!({"cgu.openshift.io/event-type": "cluster"})
        );
        assert_eq!(e["eventTime"], "2026-01-01T10:00:00.000000Z");
        assert_eq!(e["reportingController"], "ClusterGroupUpgrade");
        assert_eq!(e["reportingInstance"], "talm-hub");
        assert_eq!(e["type"], "Warning");
        assert_eq!(e["reason"], "CguStarted");
        assert_eq!(e["action"], "RemediationInClusterStarted");
        assert_eq!(
            e["note"],
            "ClusterGroupUpgrade cgu-1: cluster spoke1 upgrade started"
        );
        let uid = raw(&s, Kind::ManagedCluster, "ManagedCluster", "", "spoke1").unwrap()["metadata"]["uid"].clone();
        assert_eq!(
            e["regarding"],
            json!({"apiVersion": "ran.openshift.io/v1alpha1", "kind": "ClusterGroupUpgrade", "namespace": "ns", "name": "cgu-1", "uid": "u-cgu"}),
            "per-cluster events are about the CGU"
        );
        assert_eq!(
            e["related"],
            json!({"apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster", "name": "spoke1", "uid": uid}),
            "cluster-scoped: no namespace; uid filled in from the object"
        );
    }

    #[test]
    fn writes_apply_in_order() {
        let mut s = store();
        let mut d = decision();
        d.writes = vec![
            Write::ApplyPlacement(placement(&[], &[])),
            Write::DeletePlacement {
                namespace: "policies".into(),
                name: "p1".into(),
            },
            Write::ApplyPlacementBinding(binding(true)),
        ];
        let applied = apply_decision(&mut s, &cgu_key(), &d, now()).unwrap();
        let verbs: Vec<(Verb, &str)> = applied
            .changes
            .iter()
            .map(|c| (c.verb, c.key.kind.as_str()))
            .collect();
        assert_eq!(
            verbs,
            [
                (Verb::Created, "Placement"),
                (Verb::Deleted, "Placement"),
                (Verb::Created, "PlacementBinding")
            ]
        );
        assert!(raw(&s, Kind::Placement, "Placement", "policies", "p1").is_none());
    }
}

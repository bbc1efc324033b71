//! Applying one engine [`Decision`] to the in-memory objects, the way the operator applies it
//! to the API server: object writes in order, then the CGU's status and finalizer, then the
//! events (as `events.k8s.io/v1` Event objects).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use talm_hub_core::{Decision, Event, FinalizerChange, TaskChange, Write};
use talm_shared::api::cgu::FINALIZER;
use talm_shared::api::rhacm::{Placement, PlacementBinding};

use super::store::{CguKey, Kind, ObjectKey, Store, admit, edit_object, fnv64, k8s_micro_time};
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
        Write::PatchManagedCluster {
            name,
            add_labels,
            remove_labels,
            add_annotations,
            remove_annotations,
        } => {
            let key = ObjectKey::typed(Kind::ManagedCluster, "ManagedCluster", "", name);
            let Some(entry) = store.get(&key) else {
                tracing::debug!(cluster = %name, "PatchManagedCluster: no such ManagedCluster; ignored");
                return Ok(None);
            };
            let mut raw = entry.raw.clone();
            edit_object(&mut raw, "metadata", |meta| {
                edit_string_map(meta, "labels", add_labels, remove_labels);
                edit_string_map(meta, "annotations", add_annotations, remove_annotations);
            });
            put(store, key, raw)
        }
        Write::SetSpokeAgentTasks {
            namespace,
            name,
            precache,
            backup,
        } => {
            let key = ObjectKey::typed(Kind::SpokeAgent, "SpokeAgent", namespace, name);
            let assigns = matches!(precache, Some(TaskChange::Assign(_)))
                || matches!(backup, Some(TaskChange::Assign(_)));
            let mut raw = match store.get(&key) {
                Some(entry) => entry.raw.clone(),
                // Clearing tasks of an agent that does not exist changes nothing.
                None if !assigns => return Ok(None),
                None => {
                    let mut raw = to_object(
                        "SpokeAgent",
                        &json!({
                            "apiVersion": talm_shared::api::spokeagent::API_VERSION,
                            "kind": "SpokeAgent",
                            "metadata": {"name": name, "namespace": namespace},
                            "spec": {},
                        }),
                    )?;
                    admit(&key, &mut raw, now);
                    raw
                }
            };
            let precache = precache
                .as_ref()
                .map(|c| task_value("precache", c))
                .transpose()?;
            let backup = backup
                .as_ref()
                .map(|c| task_value("backup", c))
                .transpose()?;
            edit_object(&mut raw, "spec", |spec| {
                for (field, change) in [("precache", precache), ("backup", backup)] {
                    match change {
                        None => {}
                        Some(None) => {
                            spec.remove(field);
                        }
                        Some(Some(task)) => {
                            spec.insert(field.into(), task);
                        }
                    }
                }
            });
            put(store, key, raw)
        }
    }
}

/// `Some(task)` for an assignment, `None` for a clear.
fn task_value<T: Serialize>(what: &str, change: &TaskChange<T>) -> Result<Option<Value>, Error> {
    match change {
        TaskChange::Clear => Ok(None),
        TaskChange::Assign(task) => serde_json::to_value(task)
            .map(Some)
            .map_err(|e| Error::Internal(format!("serializing {what} task: {e}"))),
    }
}

/// Sets `add` entries and removes `remove` keys in the string map `meta[field]`. A map that
/// ends up empty is dropped; a map that would not change is not touched.
fn edit_string_map(
    meta: &mut Map<String, Value>,
    field: &str,
    add: &BTreeMap<String, String>,
    remove: &[String],
) {
    let existing = meta.get(field).and_then(Value::as_object);
    let has = |k: &str| existing.is_some_and(|m| m.contains_key(k));
    if add.is_empty() && !remove.iter().any(|k| has(k)) {
        return;
    }
    let now_empty = edit_object(meta, field, |map| {
        for (k, v) in add {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        for k in remove {
            map.remove(k);
        }
        map.is_empty()
    });
    if now_empty {
        meta.remove(field);
    }
}

/// Create-or-replace of an object talm owns (Placement, PlacementBinding): a new object gets a
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
        if decision.finalizer != FinalizerChange::None {
            let mut list: Vec<Value> = meta
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let present = list.iter().any(|f| f.as_str() == Some(FINALIZER));
            match decision.finalizer {
                FinalizerChange::Add if !present => list.push(Value::String(FINALIZER.into())),
                FinalizerChange::Remove => list.retain(|f| f.as_str() != Some(FINALIZER)),
                _ => {}
            }
            if list.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), Value::Array(list));
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

/// Event names: `<cgu name>.<16 hex digits>`, unique in the store, deterministic for a given
/// input and `now`.
fn event_name(store: &Store, cgu: &CguKey, now: Timestamp) -> String {
    let nanos = now.as_nanosecond().to_string();
    // 253 (max name) - 17 (".<16 hex>").
    let prefix: String = cgu.name.chars().take(236).collect();
    (0u64..)
        .map(|seq| {
            let h = fnv64(3, &[&cgu.namespace, &cgu.name, &nanos, &seq.to_string()]);
            format!("{prefix}.{h:016x}")
        })
        .find(|name| !store.has_event(&cgu.namespace, name))
        .unwrap_or_default()
}

/// The `events.k8s.io/v1` Event object for an engine event.
fn event_object(store: &Store, cgu: &CguKey, event: &Event, now: Timestamp) -> Map<String, Value> {
    let r = &event.regarding;
    let mut regarding = Map::new();
    regarding.insert("apiVersion".into(), Value::String(r.api_version.clone()));
    regarding.insert("kind".into(), Value::String(r.kind.clone()));
    if !r.namespace.is_empty() {
        regarding.insert("namespace".into(), Value::String(r.namespace.clone()));
    }
    regarding.insert("name".into(), Value::String(r.name.clone()));
    let uid = if r.uid.is_empty() {
        known_uid(store, &r.api_version, &r.kind, &r.namespace, &r.name)
    } else {
        Some(r.uid.clone())
    };
    if let Some(uid) = uid {
        regarding.insert("uid".into(), Value::String(uid));
    }
    let mut metadata = Map::new();
    metadata.insert("name".into(), Value::String(event_name(store, cgu, now)));
    metadata.insert("namespace".into(), Value::String(cgu.namespace.clone()));
    if !event.annotations.is_empty() {
        let annotations = event
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let mut raw = Map::new();
    raw.insert(
        "apiVersion".into(),
        Value::String(super::store::EVENT_API_VERSION.into()),
    );
    raw.insert("kind".into(), Value::String("Event".into()));
    raw.insert("metadata".into(), Value::Object(metadata));
    raw.insert("eventTime".into(), Value::String(k8s_micro_time(now)));
    raw.insert(
        "reportingController".into(),
        Value::String("ClusterGroupUpgrade".into()),
    );
    raw.insert("reportingInstance".into(), Value::String("talm-hub".into()));
    raw.insert("action".into(), Value::String(event.action.clone()));
    raw.insert("reason".into(), Value::String(event.reason.clone()));
    raw.insert("note".into(), Value::String(event.note.clone()));
    raw.insert("type".into(), Value::String(event.type_.as_str().into()));
    raw.insert("regarding".into(), Value::Object(regarding));
    raw
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

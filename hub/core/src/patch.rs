//! What a write does to its object, said once for every adapter.
//!
//! The decision's [`Write`]s and [`FinalizerChange`] are intents. For the ones that change part
//! of an existing object, this module gives the change itself: an RFC 7386 JSON merge patch
//! ([`Write::merge_patch`]), the object to create when the target does not exist
//! ([`Write::spoke_agent_if_missing`]), and the new finalizer list
//! ([`FinalizerChange::apply`]). The operator sends them to the API server; `talm-hub plan`
//! applies the same patches to its in-memory objects, so both carry out a decision alike.
//! (Placements, bindings, views and actions are whole objects, applied or created as they are.)

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};
use talm_shared::api::spokeagent::{SpokeAgent, SpokeAgentSpec};

use crate::decision::{FinalizerChange, TaskChange, Write};

/// A write's patch could not be serialized.
#[derive(Debug, thiserror::Error)]
#[error("serializing {what}: {source}")]
pub struct PatchError {
    /// What was being serialized.
    pub what: &'static str,
    /// The serializer's error.
    #[source]
    pub source: serde_json::Error,
}

impl PatchError {
    /// The metric label of this error.
    pub fn metric_label(&self) -> &'static str {
        "serialize_patch"
    }
}

/// The optional fields of a [`PrecacheTask`](talm_shared::api::spokeagent::PrecacheTask) that
/// the scheduler owns, named (as `null` when absent) in an assignment so an old task's hold,
/// cap or queue place does not survive into a new one.
const PRECACHE_TASK_OPTIONAL_FIELDS: [&str; 3] = ["hold", "rateLimitBytesPerSecond", "order"];

/// The serialized names of every [`PrecachingSpec`](talm_shared::api::cgu::PrecachingSpec)
/// field (checked by a test).
const PRECACHING_SPEC_FIELDS: [&str; 6] = [
    "platformImage",
    "operatorsIndexes",
    "operatorsPackagesAndChannels",
    "excludePrecachePatterns",
    "spaceRequired",
    "additionalImages",
];

impl Write {
    /// The JSON merge patch (RFC 7386) this write applies to its object, for the writes that
    /// patch one: `PatchManagedCluster` (the ManagedCluster's labels and annotations; a key
    /// both added and removed is removed) and `SetSpokeAgentTasks` (the SpokeAgent's task
    /// slots: a task to assign, `null` to clear). `None` for every other write.
    ///
    /// An assigned task replaces whatever the slot held: a merge patch merges objects, so every
    /// field a previous task may have had is named, `null` when the new task leaves it out.
    pub fn merge_patch(&self) -> Result<Option<Value>, PatchError> {
        match self {
            Write::PatchManagedCluster {
                add_labels,
                remove_labels,
                add_annotations,
                remove_annotations,
                ..
            } => {
                let mut meta = Map::new();
                for (field, add, remove) in [
                    ("labels", add_labels, remove_labels),
                    ("annotations", add_annotations, remove_annotations),
                ] {
                    if !add.is_empty() || !remove.is_empty() {
                        meta.insert(field.into(), string_map_patch(add, remove));
                    }
                }
                Ok(Some(single("metadata", Value::Object(meta))))
            }
            Write::SetSpokeAgentTasks {
                precache,
                backup,
                install_plans,
                rollback,
                ..
            } => {
                let mut spec = Map::new();
                let mut slot = |field: &str, value: Option<Value>| {
                    if let Some(v) = value {
                        spec.insert(field.into(), v);
                    }
                };
                slot(
                    "precache",
                    task_patch("pre-cache task", precache.as_ref(), |t| {
                        null_absent(t.get_mut("spec"), &PRECACHING_SPEC_FIELDS);
                        // The scheduler's fields: a new task starts from its own.
                        for f in PRECACHE_TASK_OPTIONAL_FIELDS {
                            t.entry(f).or_insert(Value::Null);
                        }
                    })?,
                );
                slot(
                    "backup",
                    task_patch("backup task", backup.as_ref(), |_| {})?,
                );
                slot(
                    "installPlans",
                    task_patch("InstallPlan task", install_plans.as_ref(), |_| {})?,
                );
                slot(
                    "rollback",
                    task_patch("rollback task", rollback.as_ref(), |t| {
                        // The one optional field: named so a previous CGU's target goes.
                        t.entry("targetVersion").or_insert(Value::Null);
                    })?,
                );
                Ok(Some(single("spec", Value::Object(spec))))
            }
            // Only the two fields: the adapter applies it only while `spec.precache.id` is
            // the grant's task id. `false` and `None` are removed (`null`), as the task
            // serializes them.
            Write::SetPrecacheGrant {
                hold,
                rate_limit_bytes_per_second,
                ..
            } => {
                let mut task = Map::new();
                task.insert(
                    "hold".into(),
                    if *hold {
                        Value::Bool(true)
                    } else {
                        Value::Null
                    },
                );
                task.insert(
                    "rateLimitBytesPerSecond".into(),
                    rate_limit_bytes_per_second.map_or(Value::Null, Value::from),
                );
                Ok(Some(single(
                    "spec",
                    single("precache", Value::Object(task)),
                )))
            }
            _ => Ok(None),
        }
    }

    /// For `SetPrecacheGrant`: whether it applies to a SpokeAgent whose `spec.precache.id` is
    /// `current` (a grant for a task that was replaced or cleared meanwhile is dropped).
    /// `true` for every other write.
    pub fn grant_applies_to(&self, current: Option<&str>) -> bool {
        match self {
            Write::SetPrecacheGrant { task_id, .. } => current == Some(task_id.as_str()),
            _ => true,
        }
    }

    /// For `SetSpokeAgentTasks`: the SpokeAgent to create when it does not exist, holding the
    /// assigned tasks. `None` when the write only clears tasks (clearing the tasks of an agent
    /// that does not exist changes nothing) and for every other write.
    pub fn spoke_agent_if_missing(&self) -> Option<SpokeAgent> {
        let Write::SetSpokeAgentTasks {
            namespace,
            name,
            precache,
            backup,
            install_plans,
            rollback,
        } = self
        else {
            return None;
        };
        let spec = SpokeAgentSpec {
            precache: assigned(precache.as_ref()),
            backup: assigned(backup.as_ref()),
            install_plans: assigned(install_plans.as_ref()),
            check_space: None,
            rollback: assigned(rollback.as_ref()),
        };
        if spec.precache.is_none()
            && spec.backup.is_none()
            && spec.install_plans.is_none()
            && spec.rollback.is_none()
        {
            return None;
        }
        let mut agent = SpokeAgent::new(name, spec);
        agent.metadata.namespace = Some(namespace.clone());
        Some(agent)
    }
}

impl FinalizerChange {
    /// The CGU's finalizer list after this change, given the current one; `None` when the list
    /// stays as it is (adding a finalizer that is there, removing one that is not).
    pub fn apply(self, current: &[String]) -> Option<Vec<String>> {
        let present = current
            .iter()
            .any(|f| f == talm_shared::api::cgu::FINALIZER);
        match self {
            FinalizerChange::Add if !present => {
                let mut list = current.to_vec();
                list.push(talm_shared::api::cgu::FINALIZER.to_string());
                Some(list)
            }
            FinalizerChange::Remove if present => Some(
                current
                    .iter()
                    .filter(|f| *f != talm_shared::api::cgu::FINALIZER)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), value);
    Value::Object(m)
}

/// A merge-patch fragment for a string map: `add` entries set, `remove` keys `null` (so a key
/// both added and removed ends up removed).
fn string_map_patch(add: &BTreeMap<String, String>, remove: &[String]) -> Value {
    let mut m: Map<String, Value> = add
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for k in remove {
        m.insert(k.clone(), Value::Null);
    }
    Value::Object(m)
}

/// The merge-patch value of a task change: the task (adjusted by `complete`), `null` to clear,
/// nothing when the slot is left alone.
fn task_patch<T: Serialize>(
    what: &'static str,
    change: Option<&TaskChange<T>>,
    complete: impl FnOnce(&mut Map<String, Value>),
) -> Result<Option<Value>, PatchError> {
    match change {
        None => Ok(None),
        Some(TaskChange::Clear) => Ok(Some(Value::Null)),
        Some(TaskChange::Assign(task)) => {
            let mut v = serde_json::to_value(task).map_err(|source| PatchError { what, source })?;
            if let Value::Object(m) = &mut v {
                complete(m);
            }
            Ok(Some(v))
        }
    }
}

/// Names every one of `fields` in the object `v`, as `null` where it is absent.
fn null_absent(v: Option<&mut Value>, fields: &[&str]) {
    if let Some(Value::Object(m)) = v {
        for f in fields {
            m.entry(*f).or_insert(Value::Null);
        }
    }
}

fn assigned<T: Clone>(change: Option<&TaskChange<T>>) -> Option<T> {
    match change {
        Some(TaskChange::Assign(t)) => Some(t.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use serde_json::json;
    use talm_shared::api::Time;
    use talm_shared::api::cgu::{FINALIZER, PrecachingSpec};
    use talm_shared::api::spokeagent::{BackupTask, InstallPlanTask, PrecacheTask};

    fn t0() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn tasks(
        precache: Option<TaskChange<PrecacheTask>>,
        backup: Option<TaskChange<BackupTask>>,
        install_plans: Option<TaskChange<InstallPlanTask>>,
    ) -> Write {
        Write::SetSpokeAgentTasks {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            precache,
            backup,
            install_plans,
            rollback: None,
        }
    }

    #[test]
    fn precaching_spec_fields_are_all_named() {
        // A literal without `..`: a new PrecachingSpec field fails to compile here.
        let full = PrecachingSpec {
            platform_image: "i".into(),
            operators_indexes: vec!["x".into()],
            operators_packages_and_channels: vec!["x".into()],
            exclude_precache_patterns: vec!["x".into()],
            space_required: "1".into(),
            additional_images: vec!["x".into()],
        };
        let v = serde_json::to_value(full).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = PRECACHING_SPEC_FIELDS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
    }

    #[test]
    fn label_patch_removal_wins_and_untouched_maps_are_left_out() {
        let w = Write::PatchManagedCluster {
            name: "spoke1".into(),
            add_labels: BTreeMap::from([
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), String::new()),
            ]),
            remove_labels: vec!["a".into(), "c".into()],
            add_annotations: BTreeMap::new(),
            remove_annotations: Vec::new(),
        };
        assert_eq!(
            w.merge_patch().unwrap(),
            Some(json!({"metadata": {"labels": {"a": null, "b": "", "c": null}}}))
        );
    }

    #[test]
    fn task_patch_replaces_a_previous_task_and_clears() {
        let task = PrecacheTask {
            id: "ns/cgu/uid/precache".into(),
            spec: PrecachingSpec {
                platform_image: "quay.io/r:1".into(),
                ..Default::default()
            },
            deadline: t0(),
            hold: false,
            rate_limit_bytes_per_second: None,
            order: None,
        };
        let w = tasks(
            Some(TaskChange::Assign(task)),
            Some(TaskChange::Clear),
            None,
        );
        let patch = w.merge_patch().unwrap().unwrap();
        assert_eq!(patch["spec"]["backup"], Value::Null);
        assert!(patch["spec"].get("installPlans").is_none(), "left alone");
        // Applied over another CGU's task with more spec fields, nothing of it is left.
        let mut agent = json!({"spec": {
            "precache": {"id": "old", "deadline": "x", "hold": true,
                         "rateLimitBytesPerSecond": 5,
                         "order": {"batch": 1, "cguCreated": "2026-01-01T00:00:00Z"},
                         "spec": {"platformImage": "old", "operatorsIndexes": ["idx"],
                                  "additionalImages": ["img"]}},
            "backup": {"id": "b", "deadline": "x"},
            "installPlans": {"id": "i", "subscriptions": [], "deadline": "x"}}});
        json_patch::merge(&mut agent, &patch);
        assert_eq!(
            agent,
            json!({"spec": {
                "precache": {"id": "ns/cgu/uid/precache", "deadline": "2027-01-15T08:00:00Z",
                             "spec": {"platformImage": "quay.io/r:1", "operatorsIndexes": [],
                                      "operatorsPackagesAndChannels": []}},
                "installPlans": {"id": "i", "subscriptions": [], "deadline": "x"}}})
        );
    }

    #[test]
    fn a_grant_patches_hold_and_cap_only() {
        let grant = |hold, cap| Write::SetPrecacheGrant {
            namespace: "spoke1".into(),
            name: "spoke1".into(),
            task_id: "t1".into(),
            hold,
            rate_limit_bytes_per_second: cap,
        };
        let mut agent = json!({"spec": {"precache": {"id": "t1", "deadline": "x", "hold": true,
            "order": {"batch": 2, "cguCreated": "y"}}}});
        json_patch::merge(
            &mut agent,
            &grant(false, Some(7)).merge_patch().unwrap().unwrap(),
        );
        assert_eq!(
            agent,
            json!({"spec": {"precache": {"id": "t1", "deadline": "x",
                "rateLimitBytesPerSecond": 7, "order": {"batch": 2, "cguCreated": "y"}}}})
        );
        json_patch::merge(
            &mut agent,
            &grant(true, None).merge_patch().unwrap().unwrap(),
        );
        assert_eq!(agent["spec"]["precache"]["hold"], json!(true));
        assert!(
            agent["spec"]["precache"]
                .get("rateLimitBytesPerSecond")
                .is_none()
        );
        assert!(grant(true, None).grant_applies_to(Some("t1")));
        assert!(!grant(true, None).grant_applies_to(Some("t0")));
        assert!(!grant(true, None).grant_applies_to(None));
    }

    #[test]
    fn a_missing_agent_is_created_only_to_assign() {
        let backup = BackupTask {
            id: "b".into(),
            deadline: t0(),
        };
        let w = tasks(
            Some(TaskChange::Clear),
            Some(TaskChange::Assign(backup.clone())),
            None,
        );
        let a = w.spoke_agent_if_missing().unwrap();
        assert_eq!(a.metadata.name.as_deref(), Some("spoke1"));
        assert_eq!(a.metadata.namespace.as_deref(), Some("spoke1"));
        assert_eq!(a.spec.backup, Some(backup));
        assert!(a.spec.precache.is_none() && a.spec.install_plans.is_none());
        let clear_only = tasks(Some(TaskChange::Clear), None, Some(TaskChange::Clear));
        assert!(clear_only.spoke_agent_if_missing().is_none());
        assert!(
            Write::DeletePlacement {
                namespace: "n".into(),
                name: "p".into()
            }
            .merge_patch()
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn rollback_slot_arms_replacing_an_older_target_and_clears() {
        use talm_shared::api::spokeagent::RollbackTask;
        let task = RollbackTask {
            id: "ns/cgu/uid/rollback".into(),
            armed_at: t0(),
            health_timeout_seconds: 600,
            target_version: None,
        };
        let mut w = tasks(None, None, None);
        if let Write::SetSpokeAgentTasks { rollback, .. } = &mut w {
            *rollback = Some(TaskChange::Assign(task.clone()));
        }
        let mut agent = json!({"spec": {"rollback": {"id": "old", "armedAt": "x",
            "healthTimeoutSeconds": 1, "targetVersion": "4.15.0"}}});
        json_patch::merge(&mut agent, &w.merge_patch().unwrap().unwrap());
        assert_eq!(
            agent["spec"]["rollback"],
            serde_json::to_value(&task).unwrap()
        );
        assert_eq!(
            w.spoke_agent_if_missing().unwrap().spec.rollback,
            Some(task)
        );
        if let Write::SetSpokeAgentTasks { rollback, .. } = &mut w {
            *rollback = Some(TaskChange::Clear);
        }
        assert_eq!(
            w.merge_patch().unwrap(),
            Some(json!({"spec": {"rollback": null}}))
        );
        assert!(w.spoke_agent_if_missing().is_none());
    }

    #[test]
    fn finalizer_changes() {
        let ours = FINALIZER.to_string();
        let other = "other/keep".to_string();
        assert_eq!(
            FinalizerChange::Add.apply(std::slice::from_ref(&other)),
            Some(vec![other.clone(), ours.clone()])
        );
        assert_eq!(
            FinalizerChange::Add.apply(std::slice::from_ref(&ours)),
            None
        );
        assert_eq!(
            FinalizerChange::Remove.apply(&[ours.clone(), other.clone()]),
            Some(vec![other.clone()])
        );
        assert_eq!(FinalizerChange::Remove.apply(&[other]), None);
        assert_eq!(FinalizerChange::None.apply(&[ours]), None);
    }
}

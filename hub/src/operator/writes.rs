//! Applying one engine [`Decision`] to the API server, with the same semantics as the offline
//! planner's in-memory application (`plan::apply`):
//!
//! 1. object writes, in order: Placement and PlacementBinding by server-side apply (field
//!    manager `talm-hub`, forced); deletes (404 is success); the engine's merge patches
//!    (`Write::merge_patch`) of ManagedCluster labels and annotations and of SpokeAgent task
//!    slots, a missing SpokeAgent created when a task is assigned; ManagedClusterViews
//!    by server-side apply and ManagedClusterActions by create (409 = already there) — these
//!    two only log their failures, as TALM does, and the next reconcile retries;
//!    ManifestWorks by create (409 = already there) and delete; the pre-cache scheduler's
//!    grants by a JSON patch of the SpokeAgent's `spec.precache` guarded by a `test` of the
//!    task id (a failed test or a missing agent: the task was replaced or removed, skipped) and
//!    its budget statuses by a merge patch of `/status` (a missing budget is skipped);
//! 2. the finalizer list the engine gives (`FinalizerChange::apply`), by a merge patch of
//!    `metadata.finalizers` guarded by `resourceVersion`;
//! 3. the status, by a merge patch of `/status` holding only what changed (removed fields as
//!    `null`), guarded by `resourceVersion`, so a stale decision fails with 409 instead of
//!    overwriting newer progress;
//! 4. the events (`events.k8s.io/v1`).
//!
//! Every successful response is recorded in the [`Cache`](super::cache::Cache) (write-through);
//! the scheduler's own writes so that they do not ask for another scheduler run.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Map, Value, json};
use talm_hub_core::{Decision, Event, Write, names};
use talm_shared::api::ObjectMeta;
use talm_shared::api::cgu::{ClusterGroupUpgrade, ClusterGroupUpgradeStatus};
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::rhacm::{
    ManagedCluster, ManagedClusterAction, ManagedClusterView, Placement, PlacementBinding,
};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::api::work::ManifestWork;

use super::Shared;
use super::cache::Kind;
use super::error::{OperatorError, is_already_exists, is_conflict, is_invalid, is_not_found};

/// The field manager of talm's server-side applies.
pub const FIELD_MANAGER: &str = "talm-hub";

/// The outcome of applying the CGU part of a decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was written.
    Done {
        /// Whether the finalizer or the status was written.
        changed: bool,
    },
    /// The CGU changed since the decision was made (409); decide again on the fresh object.
    Stale,
    /// The CGU is gone (deleted, or its last finalizer removed).
    Gone,
}

fn nn(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn api_err(
    verb: &'static str,
    kind: &'static str,
    ns: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> OperatorError {
    let name = nn(ns, name);
    move |source| OperatorError::Api {
        verb,
        kind,
        name,
        source,
    }
}

/// Applies the object writes of a decision, in order.
pub async fn apply_writes(shared: &Shared, writes: &[Write]) -> Result<(), OperatorError> {
    for w in writes {
        apply_write(shared, w).await?;
    }
    Ok(())
}

/// Applies independent writes (each about its own object), in chunks of `at_once` in flight: the pre-cache
/// scheduler's grants, where a wave of finishes lets a hundred clusters in at once and one
/// write after another would delay the last grant by the sum of their round trips. Every
/// write is tried; the first error is returned.
pub async fn apply_writes_concurrently(
    shared: &Shared,
    writes: &[Write],
    at_once: usize,
) -> Result<(), OperatorError> {
    let mut result = Ok(());
    for chunk in writes.chunks(at_once.max(1)) {
        // A plain loop, not a closure: the future stays `Send` for any lifetime (a closure
        // here trips the compiler's higher-ranked lifetime check when the loop is spawned).
        let mut inflight = Vec::with_capacity(chunk.len());
        for w in chunk {
            inflight.push(apply_write(shared, w));
        }
        for r in futures::future::join_all(inflight).await {
            if result.is_ok() {
                result = r;
            }
        }
    }
    result
}

async fn apply_write(shared: &Shared, write: &Write) -> Result<(), OperatorError> {
    let client = shared.client.clone();
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    match write {
        Write::ApplyPlacement(p) => {
            let (ns, name) = ns_name(&p.metadata);
            let api: Api<Placement> = Api::namespaced(client, &ns);
            let mut body = p.clone();
            body.status = None;
            let out = api
                .patch(&name, &apply, &Patch::Apply(&body))
                .await
                .map_err(api_err("apply", "Placement", &ns, &name))?;
            shared.cache_write().record_write(out);
        }
        Write::ApplyPlacementBinding(b) => {
            let (ns, name) = ns_name(&b.metadata);
            let api: Api<PlacementBinding> = Api::namespaced(client, &ns);
            let out = api
                .patch(&name, &apply, &Patch::Apply(b))
                .await
                .map_err(api_err("apply", "PlacementBinding", &ns, &name))?;
            shared.cache_write().record_write(out);
        }
        Write::DeletePlacement { namespace, name } => {
            let api: Api<Placement> = Api::namespaced(client, namespace);
            delete(&api, namespace, name, "Placement").await?;
            shared
                .cache_write()
                .record_delete(Kind::Placement, namespace, name);
        }
        Write::DeletePlacementBinding { namespace, name } => {
            let api: Api<PlacementBinding> = Api::namespaced(client, namespace);
            delete(&api, namespace, name, "PlacementBinding").await?;
            shared
                .cache_write()
                .record_delete(Kind::PlacementBinding, namespace, name);
        }
        Write::PatchManagedCluster { name, .. } => {
            let api: Api<ManagedCluster> = Api::all(client);
            let body = merge_patch(write)?;
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(out) => shared.cache_write().record_write(out),
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(cluster = %name, "ManagedCluster gone; label patch skipped");
                }
                Err(e) => return Err(api_err("patch", "ManagedCluster", "", name)(e)),
            }
        }
        Write::SetSpokeAgentTasks {
            namespace, name, ..
        } => {
            let api: Api<SpokeAgent> = Api::namespaced(client, namespace);
            let body = merge_patch(write)?;
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(out) => {
                    shared.cache_write().record_write(out);
                    shared.wake_scheduler_if_dirty();
                }
                Err(e) if is_not_found(&e) => {
                    // Clearing the tasks of an agent that does not exist changes nothing.
                    if let Some(agent) = write.spoke_agent_if_missing() {
                        let out = api
                            .create(&PostParams::default(), &agent)
                            .await
                            .map_err(api_err("create", "SpokeAgent", namespace, name))?;
                        shared.cache_write().record_write(out);
                        shared.wake_scheduler_if_dirty();
                    }
                }
                Err(e) => return Err(api_err("patch", "SpokeAgent", namespace, name)(e)),
            }
        }
        Write::ApplyManagedClusterView(v) => {
            let (ns, name) = ns_name(&v.metadata);
            let api: Api<ManagedClusterView> = Api::namespaced(client, &ns);
            let mut body = v.clone();
            body.status = None;
            match api.patch(&name, &apply, &Patch::Apply(&body)).await {
                Ok(out) => shared.cache_write().record_write(out),
                Err(e) => {
                    tracing::warn!(view = %nn(&ns, &name), error = %e, "ManagedClusterView not applied; retried on the next reconcile");
                }
            }
        }
        Write::DeleteManagedClusterView { namespace, name } => {
            let api: Api<ManagedClusterView> = Api::namespaced(client, namespace);
            match delete(&api, namespace, name, "ManagedClusterView").await {
                Ok(()) => {
                    shared
                        .cache_write()
                        .record_delete(Kind::ManagedClusterView, namespace, name)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ManagedClusterView not deleted; retried on the next reconcile");
                }
            }
        }
        Write::CreateManagedClusterAction(a) => {
            let (ns, name) = ns_name(&a.metadata);
            let api: Api<ManagedClusterAction> = Api::namespaced(client, &ns);
            match api.create(&PostParams::default(), a).await {
                Ok(_) => {
                    tracing::info!(action = %nn(&ns, &name), "ManagedClusterAction created (InstallPlan approval)");
                }
                Err(e) if is_already_exists(&e) => {}
                Err(e) => {
                    tracing::warn!(action = %nn(&ns, &name), error = %e, "ManagedClusterAction not created; retried on the next reconcile");
                }
            }
        }
        Write::CreateManifestWork(w) => {
            let (ns, name) = ns_name(&w.metadata);
            let api: Api<ManifestWork> = Api::namespaced(client, &ns);
            let mut body = w.clone();
            body.status = None;
            match api.create(&PostParams::default(), &body).await {
                Ok(out) => shared.cache_write().record_write(out),
                // Already there: the watch has it (or will), with its status.
                Err(e) if is_already_exists(&e) => {}
                Err(e) => return Err(api_err("create", "ManifestWork", &ns, &name)(e)),
            }
        }
        Write::SetPrecacheGrant {
            namespace,
            name,
            task_id,
            ..
        } => {
            let api: Api<SpokeAgent> = Api::namespaced(client, namespace);
            let current = shared
                .cache_read()
                .snapshot()
                .spoke_agent(namespace, name)
                .and_then(|a| a.spec.precache.as_ref())
                .filter(|t| &t.id == task_id)
                .map(|t| to_value("pre-cache task", t))
                .transpose()?;
            let ops = grant_patch(write, task_id, current.as_ref())?;
            match api
                .patch(name, &PatchParams::default(), &Patch::Json::<()>(ops))
                .await
            {
                Ok(out) => {
                    shared.metrics.precache.grants_written.inc();
                    shared.cache_write().record_scheduled(out);
                }
                // 422: the `test` failed (the task was replaced or removed meanwhile) or the
                // cap the cache showed was gone; 404: no agent. Either way the change that did
                // it is on its way to the cache, and the scheduler decides again.
                Err(e) if is_invalid(&e) || is_not_found(&e) => {
                    tracing::debug!(agent = %nn(namespace, name), task = %task_id, error = %e, "pre-cache grant skipped");
                }
                Err(e) => return Err(api_err("patch", "SpokeAgent", namespace, name)(e)),
            }
        }
        Write::SetPrecacheBudgetStatus { name, status } => {
            let api: Api<PrecacheBudget> = Api::all(client);
            // The status is replaced: what the new one leaves out is removed (`null`).
            let old = shared
                .cache_read()
                .snapshot()
                .precache_budgets()
                .find(|b| b.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|b| b.status.clone())
                .unwrap_or_default();
            let diff = merge_diff(
                &to_value("PrecacheBudget status", &old)?,
                &to_value("PrecacheBudget status", status)?,
            );
            let body = json!({ "status": diff.unwrap_or_else(|| Value::Object(Map::new())) });
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(out) => shared.cache_write().record_scheduled(out),
                Err(e) if is_not_found(&e) => {
                    tracing::debug!(budget = %name, "PrecacheBudget gone; status skipped");
                }
                Err(e) => return Err(api_err("patch_status", "PrecacheBudget", "", name)(e)),
            }
        }
        Write::DeleteManifestWork { namespace, name } => {
            let api: Api<ManifestWork> = Api::namespaced(client, namespace);
            delete(&api, namespace, name, "ManifestWork").await?;
            shared
                .cache_write()
                .record_delete(Kind::ManifestWork, namespace, name);
        }
    }
    Ok(())
}

/// The JSON patch (RFC 6902) of a pre-cache grant: a `test` that the SpokeAgent's pre-cache
/// task is still `task_id`, then the members of the grant's merge patch
/// ([`Write::merge_patch`], the one rule `plan` applies too) under `/spec/precache`: a value is
/// an `add` (which replaces a present member), a `null` a `remove`. `current` is the task as the
/// cache holds it: a member is removed only when present there (a `remove` of a missing member
/// would fail the whole patch; should the cache be behind, the patch fails with 422, is
/// skipped, and the watch event that catches the cache up runs the scheduler again).
pub fn grant_patch(
    write: &Write,
    task_id: &str,
    current: Option<&Value>,
) -> Result<json_patch::Patch, OperatorError> {
    let merge = merge_patch(write)?;
    let mut ops = vec![json!({"op": "test", "path": "/spec/precache/id", "value": task_id})];
    for (key, value) in merge
        .pointer("/spec/precache")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let path = format!("/spec/precache/{key}");
        if !value.is_null() {
            ops.push(json!({"op": "add", "path": path, "value": value}));
        } else if current.and_then(|t| t.get(key)).is_some() {
            ops.push(json!({"op": "remove", "path": path}));
        }
    }
    serde_json::from_value(Value::Array(ops)).map_err(|source| OperatorError::Serialize {
        what: "pre-cache grant patch",
        source,
    })
}

/// The write's merge patch ([`Write::merge_patch`]), for the writes that are patches.
fn merge_patch(write: &Write) -> Result<Value, OperatorError> {
    let patch = write.merge_patch().map_err(|e| OperatorError::Serialize {
        what: e.what,
        source: e.source,
    })?;
    Ok(patch.unwrap_or_else(|| Value::Object(Map::new())))
}

fn to_value<T: serde::Serialize>(what: &'static str, v: &T) -> Result<Value, OperatorError> {
    serde_json::to_value(v).map_err(|source| OperatorError::Serialize { what, source })
}

fn ns_name(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

async fn delete<K>(
    api: &Api<K>,
    ns: &str,
    name: &str,
    kind: &'static str,
) -> Result<(), OperatorError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(api_err("delete", kind, ns, name)(e)),
    }
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`; `None` when they are equal.
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut m = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(d) = merge_diff(ov, nv) {
                            m.insert(k.clone(), d);
                        }
                    }
                    None => {
                        m.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    m.insert(k.clone(), Value::Null);
                }
            }
            (!m.is_empty()).then_some(Value::Object(m))
        }
        _ => (old != new).then(|| new.clone()),
    }
}

/// Applies the finalizer and status parts of a decision to the CGU (`cgu` is the version the
/// decision was made from).
pub async fn apply_cgu(
    shared: &Shared,
    cgu: &ClusterGroupUpgrade,
    decision: &mut Decision,
) -> Result<Outcome, OperatorError> {
    let (ns, name) = ns_name(&cgu.metadata);
    let api: Api<ClusterGroupUpgrade> = Api::namespaced(shared.client.clone(), &ns);
    let mut rv = cgu.metadata.resource_version.clone();
    let mut changed = false;

    // Finalizer.
    let current: Vec<String> = cgu.metadata.finalizers.clone().unwrap_or_default();
    let wanted = decision.finalizer.apply(&current);
    if let Some(list) = wanted {
        let body = json!({"metadata": {"finalizers": list, "resourceVersion": rv}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(out) => {
                let gone = out.metadata.deletion_timestamp.is_some()
                    && out.metadata.finalizers.as_ref().is_none_or(Vec::is_empty);
                if gone {
                    let mut cache = shared.cache_write();
                    cache.record_write(out);
                    cache.record_delete(Kind::Cgu, &ns, &name);
                    return Ok(Outcome::Gone);
                }
                rv = out.metadata.resource_version.clone();
                changed = true;
                shared.cache_write().record_write(out);
            }
            Err(e) if is_not_found(&e) => {
                shared.cache_write().record_delete(Kind::Cgu, &ns, &name);
                return Ok(Outcome::Gone);
            }
            Err(e) if is_conflict(&e) => return Ok(Outcome::Stale),
            Err(e) => return Err(api_err("patch", "ClusterGroupUpgrade", &ns, &name)(e)),
        }
    }

    // Status.
    let empty = ClusterGroupUpgradeStatus::default();
    if let Some(diff) = status_patch(cgu.status.as_ref().unwrap_or(&empty), &decision.status)? {
        let body = json!({"metadata": {"resourceVersion": rv}, "status": diff});
        match patch_status_meta(shared, &ns, &name, &body).await {
            Ok(meta) => {
                changed = true;
                // The server applied this diff to the version the decision was made from
                // (the resourceVersion guard), so the result is the decided status: record
                // that instead of parsing the megabyte the server echoes at fleet scale.
                let written = ClusterGroupUpgrade {
                    metadata: meta,
                    spec: cgu.spec.clone(),
                    status: Some(std::mem::take(&mut decision.status)),
                };
                shared.cache_write().record_write(written);
            }
            Err(e) if is_not_found(&e) => {
                shared.cache_write().record_delete(Kind::Cgu, &ns, &name);
                return Ok(Outcome::Gone);
            }
            Err(e) if is_conflict(&e) => return Ok(Outcome::Stale),
            Err(e) => {
                return Err(api_err("patch_status", "ClusterGroupUpgrade", &ns, &name)(
                    e,
                ));
            }
        }
    }
    Ok(Outcome::Done { changed })
}

/// `Accept` for a write answered with the object's metadata only (`PartialObjectMetadata`,
/// served by the apiserver on every object response; kube's `patch_metadata` sends the same).
const ACCEPT_METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// A merge patch of a CGU's status subresource, answered with the CGU's metadata only: at
/// fleet scale the status is about a megabyte, which the server would otherwise serialize and
/// the hub read back for every status write, only to keep the resourceVersion.
async fn patch_status_meta(
    shared: &Shared,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<ObjectMeta, kube::Error> {
    use kube::Resource as _;
    let url = ClusterGroupUpgrade::url_path(&(), Some(ns));
    let mut req = kube::core::Request::new(url)
        .patch_subresource("status", name, &PatchParams::default(), &Patch::Merge(body))
        .map_err(kube::Error::BuildRequest)?;
    req.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static(ACCEPT_METADATA),
    );
    let out: kube::core::PartialObjectMeta<ClusterGroupUpgrade> =
        shared.client.request(req).await?;
    Ok(out.metadata)
}

/// The merge patch from status `old` to `new`: exactly `merge_diff` of their JSON, computed
/// without serializing the large fields (the plan, the per-cluster lists and maps) when they
/// are equal, which is most reconciles at fleet scale.
pub fn status_patch(
    old: &ClusterGroupUpgradeStatus,
    new: &ClusterGroupUpgradeStatus,
) -> Result<Option<Value>, OperatorError> {
    if old == new {
        return Ok(None);
    }
    let mut patch = match merge_diff(
        &to_value("CGU status", &light(old))?,
        &to_value("CGU status", &light(new))?,
    ) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // The fields `light` leaves out, with their serde skip rules: absent when `None` (and for
    // `clusters` also when empty).
    let clusters = |s: &ClusterGroupUpgradeStatus| s.clusters.clone().filter(|c| !c.is_empty());
    heavy(
        &mut patch,
        "remediationPlan",
        &old.remediation_plan,
        &new.remediation_plan,
    )?;
    if old.clusters != new.clusters {
        heavy(&mut patch, "clusters", &clusters(old), &clusters(new))?;
    }
    heavy(&mut patch, "status", &old.status, &new.status)?;
    heavy(&mut patch, "precaching", &old.precaching, &new.precaching)?;
    heavy(&mut patch, "backup", &old.backup, &new.backup)?;
    heavy(&mut patch, "forecast", &old.forecast, &new.forecast)?;
    Ok((!patch.is_empty()).then_some(Value::Object(patch)))
}

/// The status without its large fields (exhaustive: a new status field must be placed).
fn light(s: &ClusterGroupUpgradeStatus) -> ClusterGroupUpgradeStatus {
    let ClusterGroupUpgradeStatus {
        conditions,
        computed_max_concurrency,
        remediation_plan: _,
        managed_policies_for_upgrade,
        managed_policies_compliant_before_upgrade,
        managed_policies_ns,
        managed_policies_content,
        placements,
        placement_bindings,
        safe_resource_names,
        clusters: _,
        status: _,
        precaching: _,
        backup: _,
        copied_policies,
        forecast: _,
    } = s;
    ClusterGroupUpgradeStatus {
        conditions: conditions.clone(),
        computed_max_concurrency: *computed_max_concurrency,
        remediation_plan: None,
        managed_policies_for_upgrade: managed_policies_for_upgrade.clone(),
        managed_policies_compliant_before_upgrade: managed_policies_compliant_before_upgrade
            .clone(),
        managed_policies_ns: managed_policies_ns.clone(),
        managed_policies_content: managed_policies_content.clone(),
        placements: placements.clone(),
        placement_bindings: placement_bindings.clone(),
        safe_resource_names: safe_resource_names.clone(),
        clusters: None,
        status: None,
        precaching: None,
        backup: None,
        copied_policies: copied_policies.clone(),
        forecast: None,
    }
}

/// Adds the patch of one large optional field, serialized only when it changed.
fn heavy<T: serde::Serialize + PartialEq>(
    patch: &mut Map<String, Value>,
    key: &str,
    old: &Option<T>,
    new: &Option<T>,
) -> Result<(), OperatorError> {
    if old == new {
        return Ok(());
    }
    let d = match (old, new) {
        (_, None) => Some(Value::Null),
        (None, Some(n)) => Some(to_value("CGU status", n)?),
        (Some(o), Some(n)) => merge_diff(&to_value("CGU status", o)?, &to_value("CGU status", n)?),
    };
    if let Some(d) = d {
        patch.insert(key.to_string(), d);
    }
    Ok(())
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Events of one decision created in parallel (a batch start has one per cluster).
pub const EVENT_CONCURRENCY: usize = 16;

/// Publishes the events of a decision. A failed event is logged and counted, not retried: the
/// status it describes is already written, and a retry would decide again from it.
pub async fn publish_events(
    shared: &Shared,
    cgu: &ClusterGroupUpgrade,
    events: &[Event],
    now: Timestamp,
) {
    // The status that records each rolled-back cluster is written: count it once, here.
    let rolled_back = events
        .iter()
        .filter(|e| e.reason == talm_hub_core::events::CLUSTER_ROLLED_BACK)
        .count();
    shared
        .metrics
        .clusters_rolled_back
        .inc_by(u64::try_from(rolled_back).unwrap_or(0));
    let (ns, name) = ns_name(&cgu.metadata);
    let api: Api<K8sEvent> = Api::namespaced(shared.client.clone(), &ns);
    let (ns, name, api) = (&ns, &name, &api);
    futures::stream::iter(events)
        .for_each_concurrent(EVENT_CONCURRENCY, |e| async move {
            let ev = k8s_event(shared, cgu, e, now, ns, name);
            let mut result = api.create(&PostParams::default(), &ev).await;
            if let Err(err) = &result
                && is_already_exists(err)
            {
                let ev = k8s_event(shared, cgu, e, now, ns, name);
                result = api.create(&PostParams::default(), &ev).await;
            }
            match result {
                Ok(_) => {
                    shared.metrics.events_published.inc();
                }
                Err(err) => {
                    shared.metrics.event_failures.inc();
                    tracing::warn!(reason = %e.reason, action = %e.action, error = %err, "event not published");
                }
            }
        })
        .await;
}

/// Publishes the pre-cache scheduler's events about PrecacheBudgets (cluster-scoped: written
/// in [`super::scheduler::EVENT_NAMESPACE`], as kubectl looks for them). Failures are logged
/// and counted, as for a CGU's events.
pub async fn publish_budget_events(shared: &Shared, events: &[Event], now: Timestamp) {
    let ns = super::scheduler::EVENT_NAMESPACE;
    let api: Api<K8sEvent> = Api::namespaced(shared.client.clone(), ns);
    for e in events {
        let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed).to_string();
        let nanos = now.as_nanosecond().to_string();
        let name = &e.regarding.name;
        let event_name = names::event_name(
            name,
            &[
                "PrecacheBudget",
                name,
                &e.reason,
                &nanos,
                &seq,
                &shared.identity,
            ],
        );
        let ev = crate::events::k8s_event(
            e,
            crate::events::EventMeta {
                name: &event_name,
                namespace: ns,
                now,
                reporting_instance: &shared.identity,
            },
            |_| None,
        );
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                shared.metrics.events_published.inc();
            }
            Err(err) => {
                shared.metrics.event_failures.inc();
                tracing::warn!(reason = %e.reason, budget = %name, error = %err, "event not published");
            }
        }
    }
}

fn k8s_event(
    shared: &Shared,
    cgu: &ClusterGroupUpgrade,
    e: &Event,
    now: Timestamp,
    ns: &str,
    name: &str,
) -> K8sEvent {
    let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed).to_string();
    let nanos = now.as_nanosecond().to_string();
    let uid = cgu.metadata.uid.clone().unwrap_or_default();
    let event_name = names::event_name(name, &[ns, name, &uid, &nanos, &seq, &shared.identity]);
    crate::events::k8s_event(
        e,
        crate::events::EventMeta {
            name: &event_name,
            namespace: ns,
            now,
            reporting_instance: &shared.identity,
        },
        |r| {
            if r.kind == "ClusterGroupUpgrade" && r.name == name {
                cgu.metadata.uid.clone()
            } else if r.kind == "ManagedCluster" {
                // The cache is read only for the events that name a cluster.
                shared
                    .cache_read()
                    .snapshot()
                    .managed_cluster(&r.name)
                    .and_then(|m| m.metadata.uid.clone())
            } else {
                None
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_patches_test_the_task_and_remove_a_cap_only_when_there_is_one() {
        let v = |p: json_patch::Patch| serde_json::to_value(p).unwrap();
        let grant_patch = |task_id: &str, hold: bool, cap: Option<i64>, current: Option<Value>| {
            let write = Write::SetPrecacheGrant {
                namespace: "c".into(),
                name: "c".into(),
                task_id: task_id.into(),
                hold,
                rate_limit_bytes_per_second: cap,
            };
            grant_patch(&write, task_id, current.as_ref())
        };
        // Let in with a cap: the hold removed, the cap set.
        assert_eq!(
            v(grant_patch(
                "t1",
                false,
                Some(1024),
                Some(json!({"id": "t1", "hold": true}))
            )
            .unwrap()),
            json!([
                {"op": "test", "path": "/spec/precache/id", "value": "t1"},
                {"op": "remove", "path": "/spec/precache/hold"},
                {"op": "add", "path": "/spec/precache/rateLimitBytesPerSecond", "value": 1024},
            ])
        );
        // Held again without a cap: the cap removed.
        assert_eq!(
            v(grant_patch(
                "t1",
                true,
                None,
                Some(json!({"id": "t1", "rateLimitBytesPerSecond": 9}))
            )
            .unwrap()),
            json!([
                {"op": "test", "path": "/spec/precache/id", "value": "t1"},
                {"op": "add", "path": "/spec/precache/hold", "value": true},
                {"op": "remove", "path": "/spec/precache/rateLimitBytesPerSecond"},
            ])
        );
        // Nothing removed that is not there (a task the cache does not know).
        assert_eq!(
            v(grant_patch("t1", false, None, None).unwrap()),
            json!([{"op": "test", "path": "/spec/precache/id", "value": "t1"}])
        );
    }

    #[test]
    fn merge_diff_sets_changes_and_nulls_removals() {
        let old = json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1], "gone": true});
        let new = json!({"a": 1, "b": {"x": 2, "y": 2}, "c": [1, 2], "new": "v"});
        assert_eq!(
            merge_diff(&old, &new),
            Some(json!({"b": {"x": 2}, "c": [1, 2], "gone": null, "new": "v"}))
        );
        assert_eq!(merge_diff(&old, &old), None);
    }

    #[test]
    fn status_patch_equals_the_full_merge_diff() {
        let status = |v: Value| -> ClusterGroupUpgradeStatus { serde_json::from_value(v).unwrap() };
        let cond = |r: &str| {
            json!([{"type": "Progressing", "status": "True", "reason": r,
            "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
        };
        let a = status(json!({
            "conditions": cond("InProgress"),
            "remediationPlan": [["s1", "s2"], ["s3"]],
            "clusters": [{"name": "s0", "state": "complete"}],
            "status": {"currentBatch": 1, "currentBatchRemediationProgress": {
                "s1": {"state": "InProgress", "policyIndex": 0},
                "s2": {"state": "NotStarted"}}},
            "precaching": {"status": {"s1": "Succeeded", "s2": "Active"}},
            "managedPoliciesNs": {"p": "ztp"}
        }));
        let variants = [
            status(json!({})),
            a.clone(),
            status(json!({
                "conditions": cond("InProgress"),
                "remediationPlan": [["s1", "s2"], ["s3"]],
                "clusters": [{"name": "s0", "state": "complete"}],
                "status": {"currentBatch": 1, "currentBatchRemediationProgress": {
                    "s1": {"state": "Completed"},
                    "s2": {"state": "NotStarted"}}},
                "precaching": {"status": {"s1": "Succeeded", "s2": "Active"}},
                "managedPoliciesNs": {"p": "ztp"}
            })),
            status(json!({
                "conditions": cond("Completed"),
                "remediationPlan": [["s1", "s2"], ["s3"]],
                "clusters": [],
                "backup": {"status": {"s1": "Succeeded"}},
                "managedPoliciesNs": {"p": "ztp", "q": "other"}
            })),
            status(json!({"conditions": cond("InProgress"), "clusters": [
                {"name": "s0", "state": "complete"}, {"name": "s1", "state": "timedout"}]})),
        ];
        for old in &variants {
            for new in &variants {
                let full = merge_diff(
                    &serde_json::to_value(old).unwrap(),
                    &serde_json::to_value(new).unwrap(),
                );
                assert_eq!(status_patch(old, new).unwrap(), full, "{old:?} -> {new:?}");
            }
        }
        assert!(status_patch(&a, &a).unwrap().is_none());
    }
}

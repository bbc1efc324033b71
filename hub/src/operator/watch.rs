//! One watcher per watched kind, feeding the [`Cache`](super::cache::Cache) and routing the
//! CGUs each event affects to the controller.
//!
//! Placements and PlacementBindings are watched by talm's label
//! (`app=openshift-cluster-group-upgrades`), overrides ConfigMaps by field selector
//! (`metadata.name=cluster-group-upgrade-overrides`), ManagedClusterViews by the CGU label
//! talm puts on them; everything else in all namespaces. After each event the ZTP controller
//! is woken when the event queued clusters for it.

use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::core::{ObjectMeta, PartialObjectMetaExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use talm_hub_core::reconcile::labels;
use talm_shared::api::cgu::ClusterGroupUpgrade;
use talm_shared::api::precaching::PreCachingConfig;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterView, OVERRIDES_CONFIGMAP, Placement,
    PlacementBinding, Policy,
};
use talm_shared::api::spokeagent::SpokeAgent;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::cache::{CguRef, IntoObject, Kind, Object, WatchEvent};
use super::{CguMeta, Shared};
use crate::metrics::KindLabels;

fn talm_label() -> String {
    format!("{}={}", labels::APP, labels::APP_VALUE)
}

/// Starts every watcher; `cgu_store` is the controller's reflector store for CGUs.
pub fn spawn_all(shared: Arc<Shared>, mut cgu_store: Writer<CguMeta>) -> Vec<JoinHandle<()>> {
    let client = shared.client.clone();
    let all = watcher::Config::default();
    let labelled = watcher::Config::default().labels(&talm_label());
    let overrides =
        watcher::Config::default().fields(&format!("metadata.name={OVERRIDES_CONFIGMAP}"));
    let views = watcher::Config::default().labels(labels::CGU);
    let cgus = watch_fn(Api::<ClusterGroupUpgrade>::all(client.clone()), all.clone())
        .default_backoff()
        .map_ok(move |ev| {
            cgu_store.apply_watcher_event(&meta_event(&ev));
            ev
        });
    vec![
        spawn(shared.clone(), Kind::Cgu, cgus, IntoObject::into_object),
        spawn(
            shared.clone(),
            Kind::ManagedCluster,
            watch_fn(Api::<ManagedCluster>::all(client.clone()), all.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::Policy,
            watch_fn(Api::<Policy>::all(client.clone()), all.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::Placement,
            watch_fn(Api::<Placement>::all(client.clone()), labelled.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::PlacementBinding,
            watch_fn(Api::<PlacementBinding>::all(client.clone()), labelled).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::PreCachingConfig,
            watch_fn(Api::<PreCachingConfig>::all(client.clone()), all.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::SpokeAgent,
            watch_fn(Api::<SpokeAgent>::all(client.clone()), all).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::ManagedClusterView,
            watch_fn(Api::<ManagedClusterView>::all(client.clone()), views).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared,
            Kind::ConfigMap,
            watch_fn(Api::<ConfigMap>::all(client), overrides).default_backoff(),
            config_map,
        ),
    ]
}

/// The metadata-only form of a CGU event, for the controller's store.
fn meta_event(ev: &Event<ClusterGroupUpgrade>) -> Event<CguMeta> {
    let meta = |c: &ClusterGroupUpgrade| {
        ObjectMeta {
            name: c.metadata.name.clone(),
            namespace: c.metadata.namespace.clone(),
            uid: c.metadata.uid.clone(),
            resource_version: c.metadata.resource_version.clone(),
            ..ObjectMeta::default()
        }
        .into_request_partial::<ClusterGroupUpgrade>()
    };
    match ev {
        Event::Init => Event::Init,
        Event::InitApply(c) => Event::InitApply(meta(c)),
        Event::InitDone => Event::InitDone,
        Event::Apply(c) => Event::Apply(meta(c)),
        Event::Delete(c) => Event::Delete(meta(c)),
    }
}

fn config_map(cm: ConfigMap) -> Object {
    Object::ConfigMap(ConfigMapView {
        metadata: cm.metadata,
        data: cm.data.unwrap_or_default(),
    })
}

fn spawn<K, S>(
    shared: Arc<Shared>,
    kind: Kind,
    stream: S,
    convert: fn(K) -> Object,
) -> JoinHandle<()>
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let span = tracing::info_span!("watch", kind = kind.as_str());
    tokio::spawn(pump(shared, kind, stream, convert).instrument(span))
}

/// Feeds one kind's watch events to the cache and routes the triggered CGUs.
pub async fn pump<K, S>(shared: Arc<Shared>, kind: Kind, stream: S, convert: fn(K) -> Object)
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let labels = KindLabels {
        kind: kind.as_str().to_string(),
    };
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(Event::Init) => WatchEvent::Init(kind),
            Ok(Event::InitApply(o)) => WatchEvent::InitApply(convert(o)),
            Ok(Event::InitDone) => WatchEvent::InitDone(kind),
            Ok(Event::Apply(o)) => WatchEvent::Apply(convert(o)),
            Ok(Event::Delete(o)) => WatchEvent::Delete(convert(o)),
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying with back-off");
                continue;
            }
        };
        shared.metrics.watch_events.get_or_create(&labels).inc();
        if let WatchEvent::Delete(Object::Cgu(c)) = &event {
            let r = CguRef::of(c);
            shared.metrics.forget_cgu(&r.to_string());
            shared.forget_failures(&r);
        }
        let (triggers, synced, ztp) = {
            let mut cache = shared.cache_write();
            let t = cache.apply(event);
            (t, cache.synced(), cache.ztp_pending())
        };
        shared.note_synced(synced);
        if ztp {
            shared.ztp_wake.notify_one();
        }
        if !triggers.is_empty() {
            tracing::trace!(?triggers, "routing");
        }
        shared.route(triggers);
    }
}

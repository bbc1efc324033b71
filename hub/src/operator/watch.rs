//! One watcher per watched kind, feeding the [`Cache`](super::cache::Cache) and routing the
//! CGUs each event affects to the controller.
//!
//! Placements and PlacementBindings are watched by talm's label
//! (`app=openshift-cluster-group-upgrades`), overrides ConfigMaps by field selector
//! (`metadata.name=cluster-group-upgrade-overrides`), ManagedClusterViews and ManifestWorks by
//! the CGU label talm puts on them (`openshift-cluster-group-upgrades/clusterGroupUpgrade`
//! exists, as TALM's ManifestWork informer filters); everything else, ManifestWorkReplicaSets
//! and PrecacheBudgets included, in all namespaces. After each event the ZTP controller
//! is woken when the event queued clusters for it, and the pre-cache scheduler when it changed
//! something the scheduler reads.
//!
//! A kind the API server does not serve (404: its CRD is not installed, e.g. an OCM without
//! ManifestWorkReplicaSets, or a hub without the PrecacheBudget CRD) counts as listed and empty, so the caches still become synced and
//! the other CGUs run; its watch keeps retrying and lists it once it is served.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::core::{ObjectMeta, PartialObjectMetaExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_fn};
use talm_hub_core::names::labels;
use talm_hub_core::snapshot::PolicyView;
use talm_shared::api::cgu::{
    ClusterGroupUpgrade, ClusterGroupUpgradeSpec, ClusterGroupUpgradeStatus,
};
use talm_shared::api::precachebudget::PrecacheBudget;
use talm_shared::api::precaching::PreCachingConfig;
use talm_shared::api::rhacm::{
    ConfigMapView, ManagedCluster, ManagedClusterView, OVERRIDES_CONFIGMAP, Placement,
    PlacementBinding, Policy,
};
use talm_shared::api::spokeagent::SpokeAgent;
use talm_shared::api::work::{ManifestWork, ManifestWorkReplicaSet};
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
    // Objects talm labelled for a CGU: the label exists, whatever its value.
    let owned = watcher::Config::default().labels(labels::CGU);
    let cgus = EchoScoped {
        inner: Box::pin(
            watch_fn(Api::<CguWatch>::all(client.clone()), all.clone()).default_backoff(),
        ),
        shared: shared.clone(),
    }
    .map_ok(move |ev| {
        cgu_store.apply_watcher_event(&meta_event(&ev));
        ev
    });
    vec![
        spawn(shared.clone(), Kind::Cgu, cgus, CguWatch::into_object),
        spawn(
            shared.clone(),
            Kind::ManagedCluster,
            watch_fn(Api::<ManagedCluster>::all(client.clone()), all.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::Policy,
            watch_fn(Api::<PolicyWatch>::all(client.clone()), all.clone()).default_backoff(),
            |p: PolicyWatch| Object::Policy(p.0),
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
            watch_fn(Api::<SpokeAgent>::all(client.clone()), all.clone()).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::ManagedClusterView,
            watch_fn(
                Api::<ManagedClusterView>::all(client.clone()),
                owned.clone(),
            )
            .default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::ManifestWork,
            watch_fn(Api::<ManifestWork>::all(client.clone()), owned).default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::ManifestWorkReplicaSet,
            watch_fn(
                Api::<ManifestWorkReplicaSet>::all(client.clone()),
                all.clone(),
            )
            .default_backoff(),
            IntoObject::into_object,
        ),
        spawn(
            shared.clone(),
            Kind::PrecacheBudget,
            watch_fn(Api::<PrecacheBudget>::all(client.clone()), all).default_backoff(),
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

/// A Policy watch event's object, deserialized straight into the snapshot's slim
/// [`PolicyView`]: a root policy's `status.status` has an entry per cluster, and the full typed
/// object builds three strings per entry only for the snapshot to drop most of them (parsing
/// the root-policy and CGU watch events was about a quarter of the operator's CPU at 10,000
/// clusters).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(transparent)]
struct PolicyWatch(PolicyView);

impl kube::Resource for PolicyWatch {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        <Policy as kube::Resource>::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        <Policy as kube::Resource>::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        <Policy as kube::Resource>::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        <Policy as kube::Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

thread_local! {
    /// While a CGU watch stream is being polled ([`EchoScoped`]): the operator whose cache
    /// [`CguWatch`]'s deserializer asks whether an event can be skipped. The watch stream
    /// deserializes its events inside that poll, on that thread.
    static ECHO_SOURCE: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
}

/// A stream that makes its operator the [`ECHO_SOURCE`] while it is polled.
struct EchoScoped<S> {
    inner: Pin<Box<S>>,
    shared: Arc<Shared>,
}

impl<S: Stream> Stream for EchoScoped<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        let before = ECHO_SOURCE.with(|e| e.replace(Some(this.shared.clone())));
        let out = this.inner.as_mut().poll_next(cx);
        ECHO_SOURCE.with(|e| e.replace(before));
        out
    }
}

/// Whether the cache of the operator polling this thread's CGU watch expects the event of
/// this metadata to be the echo of its own write or older than it (either way the cache will
/// not read its spec and status).
fn expected_echo(meta: &ObjectMeta) -> bool {
    ECHO_SOURCE.with(|e| {
        e.borrow()
            .as_ref()
            .is_some_and(|shared| shared.cache_read().is_echo_or_stale(Kind::Cgu, meta))
    })
}

/// A CGU watch event's object. The operator's status writes come back as watch events of
/// the whole CGU (about a megabyte at 10,000 clusters) that the cache already holds
/// (write-through): when the metadata, which comes first, shows the event is such an echo,
/// the spec and status are skipped instead of built.
// An event is moved once into the cache and dropped; boxing the metadata of every echo would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum CguWatch {
    /// A CGU read in full.
    Full(Box<ClusterGroupUpgrade>),
    /// An echo: metadata only.
    Echo(ObjectMeta),
}

impl CguWatch {
    fn into_object(self) -> Object {
        match self {
            CguWatch::Full(c) => Object::Cgu(c),
            CguWatch::Echo(meta) => Object::CguEcho(meta),
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            CguWatch::Full(c) => &c.metadata,
            CguWatch::Echo(m) => m,
        }
    }
}

impl kube::Resource for CguWatch {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        <ClusterGroupUpgrade as kube::Resource>::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        <ClusterGroupUpgrade as kube::Resource>::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        <ClusterGroupUpgrade as kube::Resource>::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        <ClusterGroupUpgrade as kube::Resource>::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            CguWatch::Full(c) => &mut c.metadata,
            CguWatch::Echo(m) => m,
        }
    }
}

impl<'de> serde::Deserialize<'de> for CguWatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(CguVisitor)
    }
}

struct CguVisitor;

impl<'de> serde::de::Visitor<'de> for CguVisitor {
    type Value = CguWatch;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a ClusterGroupUpgrade")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<CguWatch, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let mut metadata: Option<ObjectMeta> = None;
        let mut spec: Option<ClusterGroupUpgradeSpec> = None;
        let mut status: Option<ClusterGroupUpgradeStatus> = None;
        // Decided once the metadata is read; fields before it are always read.
        let mut echo = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "metadata" => {
                    let m: ObjectMeta = map.next_value()?;
                    echo = expected_echo(&m);
                    metadata = Some(m);
                }
                "spec" if !echo => spec = Some(map.next_value()?),
                "status" if !echo => status = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let metadata = metadata.unwrap_or_default();
        if echo {
            return Ok(CguWatch::Echo(metadata));
        }
        let spec = spec.ok_or_else(|| A::Error::missing_field("spec"))?;
        Ok(CguWatch::Full(Box::new(ClusterGroupUpgrade {
            metadata,
            spec,
            status,
        })))
    }
}

/// The metadata-only form of a CGU event, for the controller's store.
fn meta_event(ev: &Event<CguWatch>) -> Event<CguMeta> {
    let meta = |c: &CguWatch| {
        let m = c.metadata();
        ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
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

/// Whether a watch failed because the API server does not serve the kind at all (404 on the
/// list or the watch, which is what a missing CRD gives).
fn served_nowhere(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => super::error::is_not_found(e),
        _ => false,
    }
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
                if served_nowhere(&e) && !shared.cache_read().kind_synced(kind) {
                    // The kind's CRD is not installed (a hub whose OCM has no
                    // ManifestWorkReplicaSets, say): count it as listed and empty, so the
                    // other kinds' CGUs are not held back; the watch keeps retrying and lists
                    // it once it is served.
                    tracing::warn!(error = %e, "the API server does not serve this kind; taken as empty until it does");
                    let synced = {
                        let mut cache = shared.cache_write();
                        cache.apply(WatchEvent::Init(kind));
                        cache.apply(WatchEvent::InitDone(kind));
                        cache.synced()
                    };
                    shared.note_synced(synced);
                }
                tracing::warn!(error = %e, "watch failed; retrying with back-off");
                continue;
            }
        };
        shared.metrics.watch_events.get_or_create(&labels).inc();
        if let WatchEvent::Apply(Object::CguEcho(_)) | WatchEvent::InitApply(Object::CguEcho(_)) =
            &event
        {
            shared.metrics.watch_bodies_skipped.inc();
        }
        if let WatchEvent::Delete(Object::Cgu(c)) = &event {
            let r = CguRef::of(c);
            shared.metrics.forget_cgu(&r.to_string());
            shared.forget_failures(&r);
        }
        let (triggers, synced, ztp, schedule) = {
            let mut cache = shared.cache_write();
            let t = cache.apply(event);
            (
                t,
                cache.synced(),
                cache.ztp_pending(),
                cache.schedule_dirty(),
            )
        };
        shared.note_synced(synced);
        if ztp {
            shared.ztp_wake.notify_one();
        }
        if schedule {
            shared.schedule_wake.notify_one();
        }
        if !triggers.is_empty() {
            tracing::trace!(?triggers, "routing");
        }
        shared.route(triggers);
    }
}

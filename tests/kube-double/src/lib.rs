//! # talm-kube-double — a **test double** of the Kubernetes API server
//!
//! **This is not an apiserver.** It is an in-process, in-memory HTTP server for tests that
//! speaks enough of the Kubernetes REST protocol (JSON only) on `127.0.0.1:<random port>` for
//! an unmodified [`kube::Client`] and `kube::runtime::{watcher, reflector, Controller}` to run
//! against it. No real kube-apiserver can be installed on talm's build machines (issue 6 §4),
//! and `kube-fake-client` has no watch support and pins kube 4.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//! use talm_kube_double::{Fault, KubeDouble, Verb};
//!
//! let double = KubeDouble::start().await?;            // kinds the hub uses are pre-registered
//! let cms: Api<ConfigMap> = Api::namespaced(double.client(), "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("a".into());
//! cms.create(&PostParams::default(), &cm).await?;     // over HTTP
//! assert!(double.get::<ConfigMap>(Some("default"), "a")?.is_some()); // direct, no HTTP
//! double.inject(Fault::error(500).verb(Verb::Get).times(1));         // next GET fails
//! assert_eq!(double.requests().iter().filter(|r| r.verb == Verb::Create).count(), 1);
//! double.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## What is implemented (and tested in `tests/`)
//! - **Kinds**: generic over registered [`ResourceKind`]s (group/version/kind/plural, scope,
//!   status subresource, built-in flag); [`default_kinds`] are pre-registered. Unknown kinds
//!   are 404. Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`
//!   (legacy, non-aggregated format).
//! - **Verbs**: get, list, watch, create, update (PUT), patch, delete, deletecollection, on
//!   namespaced, all-namespaces and cluster-scoped paths, plus the `/status` subresource.
//!   `dryRun=All` is honoured (nothing stored).
//! - **resourceVersion**: one global monotonic counter; `uid`, `creationTimestamp`,
//!   `resourceVersion`, `generation` are server-owned. `generation` starts at 1 and bumps when
//!   anything outside `metadata` (and outside `status` for kinds with the subresource) changes,
//!   and when `deletionTimestamp` is set. A write that changes nothing is a no-op (same
//!   resourceVersion, no watch event), like the apiserver.
//! - **Optimistic concurrency**: PUT with a stale `metadata.resourceVersion` → 409 Conflict;
//!   PUT without one → 422 for custom kinds, unconditional for built-in kinds; a patch that
//!   carries `metadata.resourceVersion` is a precondition too (409 on mismatch); delete
//!   preconditions (`uid`, `resourceVersion`) → 409.
//! - **Create**: 409 AlreadyExists; `generateName`; namespace mismatch → 400; status dropped
//!   for kinds with a status subresource; Namespaces get `status.phase: Active`. Optionally
//!   ([`Builder::require_namespaces`]) creating into a missing Namespace is 404.
//! - **Delete**: objects with finalizers get `deletionTimestamp` (+ generation bump) and stay
//!   until an update empties `metadata.finalizers`, which removes them (DELETED event).
//!   Immediate deletion answers a `Status` `Success`; pending deletion answers the object.
//!   Namespace deletion does **not** cascade to namespaced objects.
//! - **Status subresource**: writes to `/status` change only `.status`; writes to the main
//!   resource keep the stored `.status`.
//! - **Patches**: merge (RFC 7386), JSON (RFC 6902), strategic merge (built-in kinds only,
//!   applied as a plain merge patch: lists replaced, `$patch` directives not interpreted;
//!   custom kinds get 415 like the real apiserver), unknown content types → 415.
//! - **Server-side apply, approximated**: `fieldManager` required (422 otherwise),
//!   `apiVersion`/`kind` required (400), the object is created if missing, otherwise the
//!   apply configuration is merged in as an RFC 7386 merge patch (maps merge, lists — even
//!   `listType=map` ones such as `conditions` — and scalars are replaced, `null` deletes).
//!   Field ownership is tracked for **apply managers only**, per manager and subresource, in
//!   `metadata.managedFields` (`fieldsV1`, lists atomic): fields a manager applied before and
//!   no longer applies are removed unless another apply manager owns them; applying a field
//!   another apply manager owns with a different value is 409 unless `force=true`, and with
//!   `force` ownership becomes shared rather than transferred. Fields written by
//!   create/update/merge/JSON patches have no owner. A no-op apply changes nothing.
//! - **Selectors**: label selectors with `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`, `>`,
//!   `<`; field selectors on `metadata.name` / `metadata.namespace` (other fields → 400).
//! - **List**: `limit`/`continue` paginate (keyset continuation; later pages see the current
//!   state rather than a snapshot), `remainingItemCount`; `resourceVersion` and
//!   `resourceVersionMatch` are accepted and the current state is served.
//! - **Watch**: chunked JSON lines `{type, object}` with ADDED/MODIFIED/DELETED; an object
//!   leaving a selector is DELETED, entering it is ADDED; `resourceVersion` start (unset or
//!   `0` → synthetic ADDED of the current state first); `sendInitialEvents=true` → ADDED of the
//!   current state then a BOOKMARK annotated `k8s.io/initial-events-end`;
//!   `allowWatchBookmarks` → BOOKMARK every [`Builder::bookmark_interval`] of quiet;
//!   `timeoutSeconds`. Each kind keeps a bounded history ([`Builder::history_limit`]); a watch
//!   from a resourceVersion older than it gets HTTP 200 and one ERROR event carrying a 410
//!   `Status` with reason `Expired` (as the apiserver's watch cache does), so
//!   `kube::runtime::watcher` re-lists.
//! - **Metadata-only responses**: `Accept: application/json;as=PartialObjectMetadata;
//!   g=meta.k8s.io;v=v1` (or `v1beta1`) answers get, create, update, patch (also of `/status`),
//!   pending deletes and watch events with `PartialObjectMetadata` objects, and
//!   `as=PartialObjectMetadataList` answers lists with a `PartialObjectMetadataList`, as the
//!   apiserver does (kube's `get_metadata`, `list_metadata`, `watch_metadata`,
//!   `patch_metadata`). `Status` objects are never transformed. An `Accept` with no servable
//!   range (`as=Table`, protobuf only, the list form on an object or the reverse) is 406
//!   `NotAcceptable`, naming the header.
//! - **Errors** are `meta/v1` `Status` objects: 400 BadRequest (undecodable bodies, like the
//!   apiserver), 404 NotFound, 405, 406 NotAcceptable, 409 AlreadyExists/Conflict, 410
//!   Expired, 415, 422 Invalid (names, labels, annotations, finalizers, missing resourceVersion
//!   on PUT, failed JSON-patch operations). Malformed requests never panic the server.
//!
//! - **Reviews**: `authentication.k8s.io/v1` TokenReview and `authorization.k8s.io/v1`
//!   SubjectAccessReview (cluster-scoped, create only, never stored) answer from a test's
//!   script: [`KubeDouble::accept_token`] (token → user and groups) and
//!   [`KubeDouble::grant_non_resource`] (user or group → verb on a non-resource URL). Unknown
//!   tokens review as `authenticated: false`, ungranted access as `allowed: false`.
//!
//! ## Not implemented
//! Authentication/authorisation of the double's own requests (every request is allowed; the
//! review APIs above only answer from a script), admission, OpenAPI schema
//! validation and pruning, defaulting, protobuf/CBOR/Table output, aggregated discovery,
//! `managedFields` for non-apply operations, owner-reference garbage collection and
//! `propagationPolicy`, namespace cascade deletion,
//! field selectors beyond name/namespace, HTTP/2, watch-list `resourceVersionMatch=Exact`.
//!
//! ## Test hooks
//! [`KubeDouble`] gives the URL, a ready [`kube::Client`], direct typed/untyped object access
//! without HTTP (`get`/`list`/`put`/`delete`/`remove`, for fixtures and assertions; direct
//! writes emit watch events), the [request log](KubeDouble::requests) (method, path, query,
//! verb, resource, patch type, field manager, status), [fault injection](KubeDouble::inject),
//! [`KubeDouble::compact_history`], [`KubeDouble::close_watches`] and graceful
//! [`KubeDouble::shutdown`].
//!
//! ## Performance
//! One `BTreeMap<(namespace, name), Arc<Value>>` per kind: get/create/update/patch/delete are
//! O(log n) plus the cost of the object itself; lists and watch events share `Arc`s instead of
//! cloning objects. Everything sits behind one mutex; every response (objects and lists) is
//! serialised after it is released.

// Test-support crate: the only `expect` is in `KubeDouble::client`, where the config is built
// from a URL the double itself formatted.
#![allow(clippy::expect_used)]

mod error;
mod kinds;
mod log;
mod patch;
mod reviews;
mod selectors;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::ApiError;
pub use kinds::{ResourceKind, default_kinds, olm_kinds};
pub use log::{Fault, RequestRecord, Verb};
pub use patch::PatchType;
pub use reviews::ReviewUser;
pub use store::{Clock, EventType};

use server::{Shared, lock};
use store::Store;

/// Configures and starts a [`KubeDouble`].
pub struct Builder {
    kinds: Vec<ResourceKind>,
    history_limit: usize,
    bookmark_interval: Duration,
    clock: Option<Clock>,
    require_namespaces: bool,
    record_requests: bool,
    bind_ip: std::net::IpAddr,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("kinds", &self.kinds.len())
            .field("history_limit", &self.history_limit)
            .field("bookmark_interval", &self.bookmark_interval)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            kinds: default_kinds(),
            history_limit: 256,
            bookmark_interval: Duration::from_secs(1),
            clock: None,
            require_namespaces: false,
            record_requests: true,
            bind_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

impl Builder {
    /// Registers an extra kind (or redefines one with the same group/version/plural).
    #[must_use]
    pub fn kind(mut self, kind: ResourceKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Registers extra kinds (e.g. [`olm_kinds`]).
    #[must_use]
    pub fn kinds(mut self, kinds: impl IntoIterator<Item = ResourceKind>) -> Self {
        self.kinds.extend(kinds);
        self
    }

    /// Starts from no kinds at all instead of [`default_kinds`].
    #[must_use]
    pub fn no_default_kinds(mut self) -> Self {
        self.kinds.clear();
        self
    }

    /// Watch events kept per kind (default 256). Watches resuming from before the oldest kept
    /// event get 410 Expired. Keep it small for benchmarks with big objects: history holds
    /// old object versions alive.
    #[must_use]
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n;
        self
    }

    /// Quiet time after which a watch with `allowWatchBookmarks=true` gets a BOOKMARK
    /// (default 1 s).
    #[must_use]
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Clock for `creationTimestamp` / `deletionTimestamp` (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Creating a namespaced object in a Namespace that does not exist is 404 (default off).
    #[must_use]
    pub fn require_namespaces(mut self, on: bool) -> Self {
        self.require_namespaces = on;
        self
    }

    /// Whether to keep the request log (default on; turn off for long benchmarks).
    #[must_use]
    pub fn record_requests(mut self, on: bool) -> Self {
        self.record_requests = on;
        self
    }

    /// Listens on `ip` instead of 127.0.0.1 (a random port either way), e.g. the host end of a
    /// veth pair so a process in another network namespace can reach the double.
    #[must_use]
    pub fn bind_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.bind_ip = ip;
        self
    }

    /// Binds `127.0.0.1:0` (or [`Self::bind_ip`]) and starts serving on the current tokio
    /// runtime.
    pub async fn start(self) -> std::io::Result<KubeDouble> {
        let mut store = Store::new(
            self.kinds,
            self.history_limit,
            self.clock.unwrap_or_else(store::system_clock),
        );
        store.require_namespaces = self.require_namespaces;
        let (shutdown, _) = watch::channel(false);
        let (close_watches, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            log: Mutex::new(Vec::new()),
            record_requests: AtomicBool::new(self.record_requests),
            faults: Mutex::new(Vec::new()),
            reviews: Mutex::new(Default::default()),
            bookmark_interval: self.bookmark_interval,
            shutdown,
            close_watches,
        });
        let (listener, addr) = server::bind(self.bind_ip).await?;
        let task = tokio::spawn(server::serve(listener, shared.clone()));
        Ok(KubeDouble {
            inner: Arc::new(Inner {
                shared,
                addr,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Handle to a running double. Cheap to clone; the server stops when the last clone is
/// dropped or on [`KubeDouble::shutdown`].
#[derive(Clone)]
pub struct KubeDouble {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDouble")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

fn kind_of<K: kube::Resource<DynamicType = ()>>() -> (String, String, String) {
    (
        K::group(&()).into_owned(),
        K::version(&()).into_owned(),
        K::kind(&()).into_owned(),
    )
}

fn decode<K: DeserializeOwned>(v: &Value) -> Result<K, ApiError> {
    K::deserialize(v).map_err(|e| ApiError::bad_request(format!("decoding stored object: {e}")))
}

impl KubeDouble {
    /// Starts a double with the default configuration ([`Builder::default`]).
    pub async fn start() -> std::io::Result<Self> {
        Builder::default().start().await
    }

    /// A builder, to register kinds or tune history/bookmarks/clock.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The socket address (127.0.0.1 unless [`Builder::bind_ip`] said otherwise).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A `kube::Config` pointing at the double (plain HTTP, no auth, namespace `default`).
    pub fn config(&self) -> kube::Config {
        let uri: http::Uri = self
            .url()
            .parse()
            .expect("the double formats a valid http URL");
        kube::Config::new(uri)
    }

    /// A ready `kube::Client` for the double.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kube::Client for a plain-HTTP config")
    }

    /// Registers a kind at run time.
    pub fn register(&self, kind: ResourceKind) {
        self.shared().store().register(kind);
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared().store().resource_version()
    }

    fn kid_by_kind(&self, group: &str, version: &str, kind: &str) -> Result<usize, ApiError> {
        self.shared()
            .store()
            .kind_id_by_kind(group, version, kind)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "NotFound",
                    format!("kind {kind} in {group}/{version} is not registered with the double"),
                )
            })
    }

    fn kid_of_api_version(&self, api_version: &str, kind: &str) -> Result<usize, ApiError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.kid_by_kind(group, version, kind)
    }

    // ------------------------------------------------------------ direct, untyped

    /// Gets an object without HTTP (`ns` is ignored for cluster-scoped kinds).
    pub fn get_value(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let kid = self.kid_of_api_version(api_version, kind).ok()?;
        self.shared()
            .store()
            .get(kid, ns, name)
            .ok()
            .map(|a| (*a).clone())
    }

    /// Lists objects without HTTP; `ns: None` lists all namespaces. Sorted by (namespace, name).
    pub fn list_values(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Vec<Value> {
        let Ok(kid) = self.kid_of_api_version(api_version, kind) else {
            return Vec::new();
        };
        self.shared()
            .store()
            .list(kid, ns, &selectors::Filter::default(), None, None)
            .map(|r| r.items.iter().map(|a| (**a).clone()).collect())
            .unwrap_or_default()
    }

    /// Creates or replaces an object (kind from its `apiVersion`/`kind`) without HTTP and
    /// without preconditions, **status included**. Server-owned metadata is stamped, the
    /// generation bumps as usual, and watchers see the change. Returns the stored object.
    pub fn put_value(&self, obj: Value) -> Result<Value, ApiError> {
        self.put_value_shared(obj).map(|a| (*a).clone())
    }

    /// [`Self::put_value`] returning the stored object as the store shares it, without a
    /// copy (for callers writing large objects, such as the operator benchmark's compliance
    /// simulator).
    pub fn put_value_shared(&self, obj: Value) -> Result<Arc<Value>, ApiError> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let kid = self.kid_of_api_version(api_version, kind)?;
        self.shared().store().put(kid, obj)
    }

    /// Number of stored objects of a kind.
    pub fn count(&self, api_version: &str, kind: &str) -> usize {
        self.kid_of_api_version(api_version, kind)
            .map(|kid| self.shared().store().object_count(kid))
            .unwrap_or(0)
    }

    // ------------------------------------------------------------ direct, typed

    /// Typed [`KubeDouble::get_value`]. `Ok(None)` if absent; Err if the kind is not
    /// registered or the stored object does not decode as `K`.
    pub fn get<K>(&self, ns: Option<&str>, name: &str) -> Result<Option<K>, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (g, v, k) = kind_of::<K>();
        let kid = self.kid_by_kind(&g, &v, &k)?;
        let obj = self.shared().store().get(kid, ns, name).ok();
        obj.map(|o| decode(&o)).transpose()
    }

    /// Typed [`KubeDouble::list_values`].
    pub fn list<K>(&self, ns: Option<&str>) -> Result<Vec<K>, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let (g, v, k) = kind_of::<K>();
        let kid = self.kid_by_kind(&g, &v, &k)?;
        let items = self
            .shared()
            .store()
            .list(kid, ns, &selectors::Filter::default(), None, None)?
            .items;
        items.iter().map(|o| decode(o)).collect()
    }

    /// Typed [`KubeDouble::put_value`] (`apiVersion`/`kind` are filled in from `K`).
    pub fn put<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let (g, v, k) = kind_of::<K>();
        let kid = self.kid_by_kind(&g, &v, &k)?;
        let mut value = serde_json::to_value(obj)
            .map_err(|e| ApiError::bad_request(format!("encoding object: {e}")))?;
        if let Some(o) = value.as_object_mut() {
            o.insert(
                "apiVersion".into(),
                Value::String(K::api_version(&()).into_owned()),
            );
            o.insert("kind".into(), Value::String(k));
        }
        let stored = self.shared().store().put(kid, value)?;
        decode(&stored)
    }

    /// Deletes like the API does (finalizers → `deletionTimestamp` only). Returns whether
    /// the object existed.
    pub fn delete<K>(&self, ns: Option<&str>, name: &str) -> Result<bool, ApiError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let (g, v, k) = kind_of::<K>();
        let kid = self.kid_by_kind(&g, &v, &k)?;
        let res =
            self.shared()
                .store()
                .delete(kid, ns, name, &store::Preconditions::default(), false);
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes an object immediately, ignoring finalizers. Returns whether it existed.
    pub fn remove<K>(&self, ns: Option<&str>, name: &str) -> Result<bool, ApiError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let (g, v, k) = kind_of::<K>();
        let kid = self.kid_by_kind(&g, &v, &k)?;
        Ok(self.shared().store().remove(kid, ns, name).is_some())
    }

    // ------------------------------------------------------------ watch control

    /// Forgets the watch history of every kind: a watch resuming from an older
    /// resourceVersion gets a 410 Expired ERROR event (watchers then re-list).
    pub fn compact_history(&self) {
        self.shared().store().compact();
    }

    /// Ends every open watch stream (clients reconnect from their last resourceVersion).
    pub fn close_watches(&self) {
        self.shared().close_watches.send_modify(|n| *n += 1);
    }

    // ------------------------------------------------------------ request log

    /// A copy of the request log, in arrival order (completion order for concurrent
    /// requests).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared().log).clone()
    }

    /// Number of logged requests matching `pred`.
    pub fn count_requests(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        lock(&self.shared().log).iter().filter(|r| pred(r)).count()
    }

    /// The request log summarised as RBAC needs: `(group, resource[/subresource])` → verbs
    /// (discovery and unrouted requests are left out).
    pub fn rbac_rules(
        &self,
    ) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<&'static str>>
    {
        let mut out = std::collections::BTreeMap::<_, std::collections::BTreeSet<_>>::new();
        for r in lock(&self.shared().log).iter() {
            if matches!(r.verb, Verb::Discovery | Verb::Unknown) || r.resource.is_empty() {
                continue;
            }
            out.entry((r.group.clone(), r.rbac_resource()))
                .or_default()
                .insert(r.verb.as_str());
        }
        out
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared().log).clear();
    }

    /// Turns request logging on or off.
    pub fn set_record_requests(&self, on: bool) {
        self.shared().record_requests.store(on, Ordering::Relaxed);
    }

    // ------------------------------------------------------------ faults

    /// Adds a fault rule; rules are tried in insertion order, the first match applies.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared().faults).push(fault);
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared().faults).clear();
    }

    // ------------------------------------------------------------ reviews

    /// Scripts a TokenReview answer: `token` authenticates as `username` (uid
    /// `uid-<username>`) in `groups`. Every other token reviews as `authenticated: false`.
    pub fn accept_token(&self, token: &str, username: &str, groups: &[&str]) {
        lock(&self.shared().reviews).accept_token(
            token,
            ReviewUser {
                username: username.to_string(),
                uid: format!("uid-{username}"),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
        );
    }

    /// Scripts SubjectAccessReview answers: `subject` (a username or a group) may `verb`
    /// (`get`, or `*`) the non-resource URL `path` (exact, or a prefix ending in `*`, as in
    /// RBAC's `nonResourceURLs`). Every other review is `allowed: false`.
    pub fn grant_non_resource(&self, subject: &str, verb: &str, path: &str) {
        lock(&self.shared().reviews).grant(subject, verb, path);
    }

    // ------------------------------------------------------------ lifecycle

    /// Stops accepting connections, ends open connections and watch streams, and waits for
    /// the accept loop to finish. Idempotent.
    pub async fn shutdown(&self) {
        self.shared().shutdown.send_replace(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

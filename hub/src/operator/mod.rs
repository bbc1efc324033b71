//! `talm-hub run`: the ClusterGroupUpgrade operator.
//!
//! # Layout
//! - [`cache`]: the one engine [`Snapshot`](talm_hub_core::Snapshot), maintained from watch
//!   events and write-through, and the indexes that map a change to the CGUs it affects.
//! - [`watch`]: one watcher per kind feeding the cache; the CGU watcher also feeds the
//!   controller's reflector store.
//! - [`reconciler`]: one reconcile = read the snapshot + `now` → engine → apply the decision
//!   ([`writes`]) → requeue.
//! - [`leader`]: Lease-based leader election; only the leader runs the controller, every
//!   replica keeps its caches warm and serves the admin endpoints.
//! - [`cli`]: `talm-hub run` (flags → client, admin servers, signals).
//! - [`admin_auth`]: the TokenReview/SubjectAccessReview authorizer that guards `/metrics`
//!   and `/agents` (the guard itself is [`crate::admin_auth`]).
//! - [`graph`]: update-graph lookups over HTTP(S), fetched outside the engine and cached.
//! - [`error`]: the operator error type, [`OperatorError`].
//! - [`ztp`]: the ZTP auto-CGU controller (leader only, beside the CGU controller).
//! - [`scheduler`]: the fleet pre-cache scheduler loop (leader only): PrecacheBudgets →
//!   grants in SpokeAgent specs and budget statuses.
//! - [`agents`]: the agent gateway every replica serves, with Kubernetes-backed stores.
//!
//! The library entry point is [`Operator::run`], which takes a `kube::Client`, a clock and a
//! shutdown future, so tests run the operator in-process against an API double.

pub mod admin_auth;
pub mod agents;
pub mod alerts;
pub mod cache;
pub mod cli;
pub mod error;
pub mod graph;
pub mod leader;
pub mod reconciler;
pub mod scheduler;
pub mod watch;
pub mod writes;
pub mod ztp;

use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::{self, ObjectRef};
use talm_hub_core::{NoUpdateGraph, UpdateGraph};
use talm_shared::api::cgu::ClusterGroupUpgrade;
use tracing::Instrument;

pub use self::cache::{Cache, CguRef};
pub use self::error::OperatorError;
pub use self::leader::{LeaseLock, LeaseTiming};
// The workspace's one clock seam, re-exported because [`Operator::new`] takes one.
pub use talm_shared::clock::{Clock, ManualClock, SystemClock};

use crate::admin::AdminState;
use crate::metrics::Metrics;

/// The default number of concurrent reconciles (TALM's `TALM_CGU_CTRL_WORKER_COUNT` default).
pub const DEFAULT_WORKERS: u16 = 5;

/// Leader-election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Timing.
    pub timing: LeaseTiming,
}

/// How the operator runs.
#[derive(Clone)]
pub struct Config {
    /// Concurrent reconciles.
    pub workers: u16,
    /// `None` runs the controller at once, without a Lease (a single replica).
    pub leader_election: Option<LeaderElection>,
    /// This replica's identity: the Lease holder and the events' `reportingInstance`.
    pub identity: String,
    /// Update-graph lookups for ClusterVersion policies without an image.
    pub graph: Arc<dyn UpdateGraph + Send + Sync>,
    /// When `graph` is this HTTP lookup: the reconciler fetches what it missed, then decides
    /// again.
    pub graph_fetcher: Option<Arc<graph::HttpUpdateGraph>>,
    /// Run the ZTP auto-CGU controller (`--ztp`, on by default in `talm-hub run`; off in
    /// [`Config::default`] so library users opt in).
    pub ztp: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("leader_election", &self.leader_election)
            .field("identity", &self.identity)
            .field("ztp", &self.ztp)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            leader_election: None,
            identity: "talm-hub".into(),
            graph: Arc::new(NoUpdateGraph),
            graph_fetcher: None,
            ztp: false,
        }
    }
}

/// What the controller's store holds of a CGU: its metadata only. The reconcile reads the CGU
/// from the cache, so a full copy per version (the status of a 10,000-cluster CGU is about a
/// megabyte) would be waste.
pub type CguMeta = PartialObjectMeta<ClusterGroupUpgrade>;

type TriggerTx = mpsc::UnboundedSender<ObjectRef<CguMeta>>;

/// What the watchers, the reconciler and the admin server share.
pub struct Shared {
    client: kube::Client,
    cache: RwLock<Cache>,
    triggers: Mutex<Option<TriggerTx>>,
    /// The metrics.
    pub metrics: Metrics,
    identity: String,
    clock: Arc<dyn Clock>,
    graph: Arc<dyn UpdateGraph + Send + Sync>,
    graph_fetcher: Option<Arc<graph::HttpUpdateGraph>>,
    failures: Mutex<std::collections::HashMap<CguRef, u32>>,
    synced: tokio::sync::watch::Sender<bool>,
    /// Wakes the ZTP controller when the cache queued clusters for it.
    ztp_wake: tokio::sync::Notify,
    /// Wakes the pre-cache scheduler when the cache marked a change it reads.
    schedule_wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The cache, for reading.
    pub fn cache_read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cache, for writing.
    pub fn cache_write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this replica currently runs the controller.
    pub fn leading(&self) -> bool {
        self.triggers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Queues reconciles of these CGUs (dropped when this replica does not lead).
    pub fn route(&self, cgus: Vec<CguRef>) {
        if cgus.is_empty() {
            return;
        }
        let guard = self.triggers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = guard.as_ref() {
            for r in cgus {
                let _ = tx.unbounded_send(object_ref(&r));
            }
        }
    }

    /// Wakes the pre-cache scheduler if the cache holds a change it reads (a no-op on a
    /// replica that does not lead: nothing waits then, and the next leader runs it anyway).
    pub fn wake_scheduler_if_dirty(&self) {
        if self.cache_read().schedule_dirty() {
            self.schedule_wake.notify_one();
        }
    }

    /// Marks the caches synced once every kind has finished its first list.
    fn note_synced(&self, synced: bool) {
        if synced && !*self.synced.borrow() {
            tracing::info!("caches synced");
            let _ = self.synced.send(true);
        }
    }

    /// Resolves once every watched kind has finished its first list.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Drops the failure count of a deleted CGU.
    fn forget_failures(&self, r: &CguRef) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(r);
    }

    fn set_triggers(&self, tx: Option<TriggerTx>) {
        *self.triggers.lock().unwrap_or_else(PoisonError::into_inner) = tx;
    }
}

impl AdminState for Shared {
    fn ready(&self) -> bool {
        self.cache_read().synced()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Aborts the watcher tasks when the operator's run ends, however it ends (also when the
/// run future itself is dropped).
#[derive(Debug)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

fn object_ref(r: &CguRef) -> ObjectRef<CguMeta> {
    ObjectRef::new(&r.name).within(&r.namespace)
}

/// The operator: watchers, leader election and the CGU controller.
#[derive(Debug)]
pub struct Operator {
    shared: Arc<Shared>,
    config: Config,
}

impl Operator {
    /// An operator talking to the API through `client`, reading time from `clock`.
    pub fn new(client: kube::Client, clock: Arc<dyn Clock>, config: Config) -> Self {
        let shared = Arc::new(Shared {
            client,
            cache: RwLock::new(Cache::new()),
            triggers: Mutex::new(None),
            metrics: Metrics::new(),
            identity: config.identity.clone(),
            clock,
            graph: config.graph.clone(),
            graph_fetcher: config.graph_fetcher.clone(),
            failures: Mutex::new(Default::default()),
            synced: tokio::sync::watch::channel(false).0,
            ztp_wake: tokio::sync::Notify::new(),
            schedule_wake: tokio::sync::Notify::new(),
        });
        Self { shared, config }
    }

    /// The state shared with the admin server (readiness, metrics) and tests.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs until `shutdown` resolves: starts the watchers, then (as leader, when leader
    /// election is on) the controller. On shutdown the controller drains its running
    /// reconciles and the Lease is released.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), OperatorError> {
        let shutdown = shutdown.shared();
        let (reader, writer) = reflector::store::<CguMeta>();
        let watchers = AbortOnDrop(watch::spawn_all(self.shared.clone(), writer));
        let lock = self.config.leader_election.as_ref().map(|le| {
            LeaseLock::new(
                self.shared.client.clone(),
                &le.namespace,
                &le.name,
                &self.config.identity,
                le.timing,
                self.shared.clock.clone(),
            )
        });
        // Never decide from a partial view: a CGU reconciled before the policies are listed
        // would fail validation ("missing policies") and say so in its status and events.
        tokio::select! {
            () = self.shared.wait_synced() => {}
            () = shutdown.clone() => return Ok(()),
        }
        loop {
            if let Some(lock) = &lock {
                tokio::select! {
                    () = lock.acquire() => {}
                    () = shutdown.clone() => break,
                }
                tracing::info!(identity = %self.config.identity, "leader election: acquired the Lease");
            }
            self.shared.metrics.leader.set(1);
            let stopped = self
                .lead(reader.clone(), lock.as_ref(), shutdown.clone())
                .await;
            self.shared.metrics.leader.set(0);
            if stopped {
                break;
            }
            tracing::warn!("leader election: lost the Lease; controller stopped");
        }
        if let Some(lock) = &lock
            && let Err(e) = lock.release().await
        {
            tracing::warn!(error = %e, "leader election: release failed");
        }
        drop(watchers);
        Ok(())
    }

    /// Runs the controller until leadership is lost (false) or shutdown (true).
    async fn lead(
        &self,
        reader: reflector::Store<CguMeta>,
        lock: Option<&LeaseLock>,
        shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
    ) -> bool {
        let (tx, rx) = mpsc::unbounded();
        self.shared.set_triggers(Some(tx));
        let _ztp = AbortOnDrop(if self.config.ztp {
            let span = tracing::info_span!("ztp");
            vec![tokio::spawn(ztp::run(self.shared.clone()).instrument(span))]
        } else {
            Vec::new()
        });
        let _scheduler = AbortOnDrop(vec![tokio::spawn(
            scheduler::run(self.shared.clone())
                .instrument(tracing::info_span!("precache_scheduler")),
        )]);
        // Everything already cached gets one reconcile when leadership starts.
        let all = self.shared.cache_read().cgu_refs();
        self.shared.route(all);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let graceful = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        let ctrl = Controller::for_stream(futures::stream::pending(), reader)
            .with_config(ControllerConfig::default().concurrency(self.config.workers))
            .reconcile_on(rx)
            .graceful_shutdown_on(graceful)
            .run(
                reconciler::reconcile,
                reconciler::error_policy,
                self.shared.clone(),
            )
            .for_each(|res| {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "controller");
                }
                futures::future::ready(())
            })
            .instrument(tracing::info_span!("controller"));
        let mut ctrl = std::pin::pin!(ctrl);
        let lost = async {
            match lock {
                Some(l) => l.hold().await,
                None => futures::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            () = &mut ctrl => true,
            () = lost => false,
            () = shutdown => true,
        };
        self.shared.set_triggers(None);
        let _ = stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(30), ctrl)
            .await
            .is_err()
        {
            tracing::warn!("controller did not drain within 30s");
        }
        stopped
    }
}

//! The gateway process: TLS 1.3 acceptor → tonic (agent + enrollment services), the status
//! writer, the spec/enrollment watcher, and the HTTP admin endpoint. Everything stops when the
//! shutdown future resolves: live sessions are ended first (so agents reconnect elsewhere or
//! later), then the servers drain.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use talm_proto::v1::agent_service_server::AgentServiceServer;
use talm_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use talm_proto::v1::{HubMessage, TaskAssignment, TaskCancel, TaskUpdate, hub_message};
use talm_shared::api::spokeagent::SpokeAgentSpec;
use talm_shared::clock::Clock;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::conns::{ConnLimits, Conns, TrackedStream};
use crate::enroll::Enroller;
use crate::metrics::{IdentityLabel, Metrics, StateLabel, TaskLabel};
use crate::registry::{ClonePolicy, Registry};
use crate::service::{AgentSvc, EnrollSvc};
use crate::status::{ProgressCoalescer, ProgressFlush, StatusQueue};
use crate::store::SpokeAgentStore;
use crate::tasks::Slot;

/// How long the watcher waits after a store announced a spec change before it compares the
/// specs, so that a burst of writes is taken in one pass.
pub const SPEC_COALESCE: Duration = Duration::from_millis(10);

/// The pre-cache rate a spec allows, for ordering pushes: none without a task, else what its
/// grant allows.
fn precache_rate(spec: Option<&SpokeAgentSpec>) -> u64 {
    spec.and_then(|s| s.precache.as_ref())
        .map_or(0, talm_shared::api::spokeagent::PrecacheTask::allowed_rate)
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How often agents send heartbeats (told to them in `Welcome`).
    pub heartbeat_interval: Duration,
    /// Silence after which an agent is marked disconnected and its session ended.
    pub heartbeat_timeout: Duration,
    /// How often the spec and enrollment stores are polled for changes.
    pub poll_interval: Duration,
    /// Concurrent status writes.
    pub status_writers: usize,
    /// TLS handshake timeout.
    pub handshake_timeout: Duration,
    /// Idle timeout and unverified-connection cap of the agent port ([`crate::conns`]).
    pub limits: ConnLimits,
    /// When two agents with one identity keep replacing each other ([`crate::registry`]).
    pub clones: ClonePolicy,
    /// Pre-cache progress is written to SpokeAgent status at most this often per agent
    /// (the first total or registries of a task, and results, at once).
    pub progress_write_interval: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
            poll_interval: Duration::from_secs(2),
            status_writers: 8,
            handshake_timeout: Duration::from_secs(10),
            limits: ConnLimits::default(),
            clones: ClonePolicy::default(),
            progress_write_interval: Duration::from_secs(
                crate::cli::DEFAULT_PROGRESS_WRITE_INTERVAL_SECS,
            ),
        }
    }
}

/// The gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    /// Tunables.
    pub cfg: GatewayConfig,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Enrollment and signing.
    pub enroller: Enroller,
    /// SpokeAgent spec/status.
    pub agents: Arc<dyn SpokeAgentStore>,
    /// Live agent state.
    pub registry: Registry,
    /// Metrics.
    pub metrics: Metrics,
    /// Pending status writes.
    pub status: StatusQueue,
    /// Live connections of the agent port (idle timeout, unverified cap).
    pub conns: Conns,
    /// When pre-cache progress asks for a status write.
    pub progress: ProgressCoalescer,
    status_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Last seen spec per cluster.
    specs: Mutex<HashMap<String, SpokeAgentSpec>>,
    next_session: AtomicU64,
}

impl Gateway {
    /// A gateway over the given stores.
    pub fn new(
        cfg: GatewayConfig,
        clock: Arc<dyn Clock>,
        enroller: Enroller,
        agents: Arc<dyn SpokeAgentStore>,
    ) -> Arc<Self> {
        let (status, rx) = StatusQueue::new();
        let metrics = Metrics::default();
        Arc::new(Self {
            conns: Conns::new(cfg.limits, metrics.connections_closed.clone()),
            registry: Registry::new(cfg.clones),
            progress: ProgressCoalescer::new(cfg.progress_write_interval),
            cfg,
            clock,
            enroller,
            agents,
            metrics,
            status,
            status_rx: Mutex::new(Some(rx)),
            specs: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    /// A new session id.
    pub fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached spec of a cluster.
    pub fn cached_spec(&self, cluster: &str) -> Option<SpokeAgentSpec> {
        self.specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned()
    }

    /// Whether `id` is the pre-cache task of `cluster`'s spec and is held (queued by a
    /// PrecacheBudget).
    pub fn precache_held(&self, cluster: &str, id: &str) -> bool {
        self.specs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .and_then(|s| s.precache.as_ref())
            .is_some_and(|t| t.id == id && t.hold)
    }

    /// Asks for the status write a pre-cache progress report needs, coalesced
    /// ([`ProgressCoalescer`]): now, at the end of the interval (a timer), or not at all (a
    /// write is already due).
    pub fn progress_reported(self: &Arc<Self>, cluster: &str, urgent: bool) {
        match self
            .progress
            .report(cluster, tokio::time::Instant::now(), urgent)
        {
            ProgressFlush::Now => self.status.touch(cluster),
            ProgressFlush::Pending => {}
            ProgressFlush::At(when) => {
                let gw = self.clone();
                let cluster = cluster.to_string();
                tokio::spawn(async move {
                    tokio::time::sleep_until(when).await;
                    gw.progress.wrote(&cluster, tokio::time::Instant::now());
                    gw.status.touch(&cluster);
                });
            }
        }
    }

    /// Replaces the cached spec of a cluster.
    pub fn set_spec(&self, cluster: &str, spec: Option<SpokeAgentSpec>) {
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        match spec {
            Some(s) => specs.insert(cluster.to_string(), s),
            None => specs.remove(cluster),
        };
    }

    /// Sends the assignments, cancellations and pre-cache grant updates a live session needs
    /// to match its cached spec.
    pub async fn sync_session(&self, cluster: &str, finished_on_agent: &HashSet<String>) {
        let Some(session) = self.registry.session(cluster) else {
            return;
        };
        let spec = self.cached_spec(cluster);
        let (assign, cancel) = self
            .registry
            .plan_sync(cluster, spec.as_ref(), finished_on_agent);
        for d in assign {
            self.registry.note_assigned(cluster, &d.id, d.slot.kind());
            if d.slot == Slot::Precache {
                self.registry.note_assigned_grant(cluster, &d.id, d.grant);
            }
            debug!(cluster, task = %d.id, hold = d.grant.hold, cap = d.grant.rate_limit_bytes_per_second, "assigning task");
            let msg = HubMessage {
                msg: Some(hub_message::Msg::Assign(TaskAssignment {
                    task_id: d.id,
                    kind: d.slot.kind() as i32,
                    params_json: d.params_json,
                    deadline_unix: d.deadline_unix,
                    rate_limit_bytes_per_second: d.grant.rate_limit_bytes_per_second,
                    hold: d.grant.hold,
                })),
            };
            if session.tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
        // Grant changes of a running pre-cache task (and, after a reconnect, the current grant
        // of the task the agent already runs): an update, never a new assignment.
        for (id, grant) in self.registry.grant_updates(cluster, spec.as_ref()) {
            debug!(cluster, task = %id, hold = grant.hold, cap = grant.rate_limit_bytes_per_second, "updating task grant");
            let msg = HubMessage {
                msg: Some(hub_message::Msg::Update(TaskUpdate {
                    task_id: id.clone(),
                    rate_limit_bytes_per_second: grant.rate_limit_bytes_per_second,
                    hold: grant.hold,
                })),
            };
            if session.tx.send(Ok(msg)).await.is_err() {
                return;
            }
            self.registry.note_grant_sent(cluster, &id, grant);
            self.metrics.task_updates.inc();
        }
        if !cancel.is_empty() {
            self.registry.note_cancelled(cluster, &cancel);
        }
        for id in cancel {
            debug!(cluster, task = %id, "cancelling task");
            let msg = HubMessage {
                msg: Some(hub_message::Msg::Cancel(TaskCancel { task_id: id })),
            };
            if session.tx.send(Ok(msg)).await.is_err() {
                return;
            }
        }
    }

    /// Writes statuses as requested, `status_writers` at a time.
    pub(crate) async fn status_writer(self: Arc<Self>) {
        let Some(mut rx) = self
            .status_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let sem = Arc::new(Semaphore::new(self.cfg.status_writers.max(1)));
        while let Some(cluster) = rx.recv().await {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                return;
            };
            let gw = self.clone();
            tokio::spawn(async move {
                let batch = gw.status.begin(&cluster);
                let spec = gw.cached_spec(&cluster);
                let status = gw.registry.compose_status(&cluster, spec.as_ref());
                let ok =
                    if let Some(status) = status.filter(|s| gw.registry.needs_write(&cluster, s)) {
                        let progress = gw.registry.progress_changed(&cluster, &status);
                        match gw.agents.write_status(&cluster, &status).await {
                            Ok(()) => {
                                gw.metrics.status_writes.inc();
                                if progress {
                                    gw.metrics.progress_writes.inc();
                                }
                                gw.registry.written(&cluster, status);
                                true
                            }
                            Err(crate::store::StoreError::NotFound(what)) => {
                                // Nothing to write to (no SpokeAgent yet, or it was deleted): not
                                // a failure, and not recorded as written, so the status is
                                // written once the object appears (its spec change touches it).
                                debug!(cluster, %what, "status write skipped: no object");
                                true
                            }
                            Err(e) => {
                                gw.metrics.status_write_errors.inc();
                                warn!(cluster, error = %e, "status write failed");
                                false
                            }
                        }
                    } else {
                        true
                    };
                gw.status.finish(batch, ok);
                drop(permit);
            });
        }
    }

    /// Polls the spec and enrollment stores: pushes spec changes to live sessions and ends the
    /// sessions of revoked clusters. (A live session outlives the rotation of the certificate
    /// it was opened with; new connections must present a current certificate.)
    ///
    /// With a store that announces spec changes ([`SpokeAgentStore::spec_changes`]), the
    /// specs of the clusters it marked are read after [`SPEC_COALESCE`] (a burst of writes,
    /// such as the pre-cache scheduler's grants, is taken in one pass), so a grant reaches its
    /// agent within tens of milliseconds at a cost per changed cluster, not per fleet; the
    /// poll still compares everything, for revocations and as a safety net.
    async fn watcher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changes = self.agents.spec_changes();
        loop {
            let changed = async {
                match &changes {
                    Some(c) => {
                        c.changed().await;
                        tokio::time::sleep(SPEC_COALESCE).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => self.poll_once().await,
                () = changed => {
                    if let Some(c) = &changes {
                        self.sync_specs_of(c.take()).await;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Reads the specs of `clusters` (announced as changed) and pushes what differs from what
    /// the sessions were given: first the changes that lower an agent's pre-cache rate (held,
    /// a lower cap, a task removed), then the rest, so a pass that carries both a budget's
    /// lowered caps and its let-ins sends the lowered caps first.
    pub async fn sync_specs_of(&self, clusters: Vec<String>) {
        let mut changed = Vec::new();
        for cluster in clusters {
            let spec = match self.agents.spec(&cluster).await {
                Ok(spec) => spec,
                Err(e) => {
                    // The next poll compares every spec.
                    warn!(cluster, error = %e, "cannot read the SpokeAgent spec");
                    continue;
                }
            };
            let mut cur = self.specs.lock().unwrap_or_else(|p| p.into_inner());
            if cur.get(&cluster) != spec.as_ref() {
                let raises = precache_rate(spec.as_ref()) > precache_rate(cur.get(&cluster));
                match spec {
                    Some(spec) => cur.insert(cluster.clone(), spec),
                    None => cur.remove(&cluster),
                };
                changed.push((raises, cluster));
            }
        }
        changed.sort();
        for (_, cluster) in changed {
            self.spec_changed(&cluster).await;
        }
    }

    async fn spec_changed(&self, cluster: &str) {
        info!(cluster, "SpokeAgent spec changed");
        self.sync_session(cluster, &HashSet::new()).await;
        // Keep status slots in line with the new spec.
        self.status.touch(cluster);
    }

    /// One full watcher pass: every spec and enrollment compared with the sessions.
    pub async fn poll_once(&self) {
        let (specs, enrolled) = tokio::join!(self.agents.specs(), self.enroller.store().list());
        match enrolled {
            Ok(enrolled) => {
                for (cluster, session) in self.registry.sessions() {
                    let ok = enrolled
                        .get(&cluster)
                        .is_some_and(|e| e.enrolled_at == session.enrolled_at);
                    if !ok {
                        warn!(cluster, "enrollment revoked: ending session");
                        self.metrics.reject("revoked");
                        session.end(
                            Code::PermissionDenied,
                            format!("enrollment of cluster {cluster} was revoked"),
                        );
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list enrollments"),
        }
        match specs {
            Ok(specs) => {
                let changed: Vec<String> = {
                    let mut cur = self.specs.lock().unwrap_or_else(|p| p.into_inner());
                    let mut changed: Vec<String> = specs
                        .iter()
                        .filter(|(c, s)| cur.get(*c) != Some(*s))
                        .map(|(c, _)| c.clone())
                        .collect();
                    changed.extend(cur.keys().filter(|c| !specs.contains_key(*c)).cloned());
                    *cur = specs.into_iter().collect();
                    changed
                };
                for cluster in changed {
                    self.spec_changed(&cluster).await;
                }
            }
            Err(e) => warn!(error = %e, "cannot list SpokeAgent specs"),
        }
    }

    /// Renders the metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.metrics
            .connected
            .set(i64::try_from(self.registry.connected_count()).unwrap_or(i64::MAX));
        let (by_state, progress) = self.registry.task_stats();
        self.metrics.tasks.clear();
        for (state, n) in by_state {
            self.metrics
                .tasks
                .get_or_create(&StateLabel { state })
                .set(n);
        }
        self.metrics.progress.clear();
        for (cluster, task, ratio) in progress {
            self.metrics
                .progress
                .get_or_create(&TaskLabel { cluster, task })
                .set(ratio);
        }
        let conns = self.conns.stats();
        for (identity, n) in [("verified", conns.verified), ("none", conns.unverified)] {
            self.metrics
                .connections
                .get_or_create(&IdentityLabel {
                    identity: identity.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .cloned
            .set(i64::try_from(self.registry.cloned_count(self.clock.unix())).unwrap_or(i64::MAX));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.metrics.registry);
        out
    }

    /// Serves until `shutdown` resolves. `grpc` carries the agent channel (TLS with `tls`);
    /// `admin`, when given, serves plain HTTP `/agents`, `/agents/{cluster}`, `/metrics` and
    /// `/healthz`.
    pub async fn serve(
        self: Arc<Self>,
        grpc: TcpListener,
        admin: Option<TcpListener>,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(self.clone().status_writer());
        tokio::spawn(self.clone().watcher(stop_rx.clone()));
        if let Some(admin) = admin {
            tokio::spawn(serve_admin(self.clone(), admin, stop_rx.clone()));
        }
        let (conn_tx, conn_rx) = mpsc::channel(1024);
        tokio::spawn(accept_loop(
            self.clone(),
            grpc,
            TlsAcceptor::from(tls),
            self.cfg.handshake_timeout,
            conn_tx,
            stop_rx.clone(),
        ));
        let gw = self.clone();
        let signal = async move {
            shutdown.await;
            info!("gateway shutting down: ending sessions");
            for (_, s) in gw.registry.sessions() {
                s.end(Code::Unavailable, "hub shutting down");
            }
            let _ = stop_tx.send(true);
        };
        let agent = AgentServiceServer::new(AgentSvc::new(self.clone()))
            .max_decoding_message_size(talm_proto::MAX_MESSAGE_BYTES);
        let enroll = EnrollmentServiceServer::new(EnrollSvc::new(self.clone()))
            .max_decoding_message_size(talm_proto::MAX_MESSAGE_BYTES);
        tonic::transport::Server::builder()
            .http2_keepalive_interval(None)
            .add_service(agent)
            .add_service(enroll)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), signal)
            .await
    }
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Result<TrackedStream, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        // Tracked (and counted against the unverified cap) from here until it closes.
        let reg = gw.conns.register(peer);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let gw = gw.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
            let outcome = tokio::select! {
                r = handshake => r,
                why = reg.closed() => {
                    debug!(%peer, reason = why.label(), "connection closed during the TLS handshake");
                    return;
                }
            };
            match outcome {
                Ok(Ok(tls)) => {
                    let verified = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    reg.handshake_done(verified);
                    let stream = reg.into_stream(tls, gw.cfg.limits.idle_timeout);
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    gw.metrics.reject("tls_handshake");
                    info!(%peer, error = %e, "TLS handshake refused");
                }
                Err(_) => {
                    gw.metrics.reject("tls_handshake_timeout");
                    info!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// The `/agents` and `/agents/{cluster}` routes alone, for a host process that serves them on
/// its own admin server (`talm-hub run` merges them into its health/metrics endpoints).
pub fn agents_router(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/agents", get(agents_all))
        .route("/agents/{cluster}", get(agents_one))
        .with_state(gw)
}

async fn serve_admin(gw: Arc<Gateway>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(gw.clone())
        .merge(agents_router(gw));
    let stop = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "admin server failed");
    }
}

async fn agents_all(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    axum::Json(gw.registry.views())
}

async fn agents_one(
    State(gw): State<Arc<Gateway>>,
    Path(cluster): Path<String>,
) -> impl IntoResponse {
    match gw.registry.view(&cluster) {
        Some(v) => axum::Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": format!("no agent for cluster {cluster}")})),
        )
            .into_response(),
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.render_metrics(),
    )
}

#[cfg(test)]
mod tests {
    use talm_shared::api::Time;
    use talm_shared::api::spokeagent::PrecacheTask;

    use super::*;

    fn spec(hold: bool, cap: Option<i64>) -> SpokeAgentSpec {
        SpokeAgentSpec {
            precache: Some(PrecacheTask {
                id: "t".into(),
                spec: Default::default(),
                deadline: Time(jiff::Timestamp::UNIX_EPOCH),
                hold,
                rate_limit_bytes_per_second: cap,
                order: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pushes_are_ordered_by_the_pre_cache_rate_a_spec_allows() {
        let (none, held) = (SpokeAgentSpec::default(), spec(true, Some(5)));
        let (capped, uncapped) = (spec(false, Some(5)), spec(false, None));
        assert_eq!(precache_rate(None), 0);
        assert_eq!(precache_rate(Some(&none)), 0);
        assert_eq!(precache_rate(Some(&held)), 0);
        assert_eq!(precache_rate(Some(&capped)), 5);
        assert_eq!(precache_rate(Some(&uncapped)), u64::MAX);
        // A let-in raises; a lower cap or a hold does not.
        assert!(precache_rate(Some(&capped)) > precache_rate(Some(&held)));
        assert!(precache_rate(Some(&spec(false, Some(3)))) < precache_rate(Some(&capped)));
    }
}

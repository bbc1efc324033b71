//! The tonic services. The agent's identity is read ONLY from the verified peer certificate's
//! SAN; a `cluster` field in a message that names another cluster ends the session with
//! `PERMISSION_DENIED` (and is logged and counted). Every received message is validated
//! ([`talm_proto::validate`]); a bad one ends the session with a `Status` naming the field.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use talm_proto::v1::agent_service_server::AgentService;
use talm_proto::v1::enrollment_service_server::EnrollmentService;
use talm_proto::v1::{
    AgentMessage, CertificateResponse, EnrollRequest, HubMessage, RenewRequest, ReportAck, Welcome,
    agent_message, hub_message, task_report,
};
use talm_proto::validate;
use talm_shared::tls::{CertInfo, cert_info};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use crate::registry::{Applied, Connected, SessionHandle};
use crate::server::Gateway;

/// A verified peer.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Cluster from the certificate SAN.
    pub cluster: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// When the cluster enrolled (identifies the enrollment generation).
    pub enrolled_at: i64,
}

/// The identity in the verified peer certificate of `req`.
pub fn peer_identity<T>(gw: &Gateway, req: &Request<T>) -> Result<CertInfo, Status> {
    let certs = req.peer_certs().filter(|c| !c.is_empty()).ok_or_else(|| {
        gw.metrics.reject("no_client_certificate");
        Status::unauthenticated("a client certificate is required (enroll first)")
    })?;
    cert_info(&certs[0]).map_err(|e| {
        gw.metrics.reject("bad_identity");
        Status::unauthenticated(e.to_string())
    })
}

/// The enrollment check of a peer identity ([`peer_identity`]): revoked clusters and superseded
/// certificates are refused.
pub async fn authenticate(gw: &Gateway, info: CertInfo) -> Result<Peer, Status> {
    let enrolled = gw
        .enroller
        .store()
        .get(&info.cluster)
        .await
        .map_err(|e| Status::internal(format!("enrollment store: {e}")))?;
    match enrolled {
        None => {
            gw.metrics.reject("not_enrolled");
            warn!(cluster = %info.cluster, "refusing certificate: cluster not enrolled (revoked?)");
            Err(Status::permission_denied(format!(
                "cluster {} is not enrolled (revoked?)",
                info.cluster
            )))
        }
        Some(e) if !e.serials.contains(&info.serial) => {
            gw.metrics.reject("superseded_certificate");
            warn!(cluster = %info.cluster, serial = %info.serial, "refusing superseded certificate");
            Err(Status::permission_denied(format!(
                "certificate {} of cluster {} is no longer accepted",
                info.serial, info.cluster
            )))
        }
        Some(e) => Ok(Peer {
            cluster: info.cluster,
            serial: info.serial,
            enrolled_at: e.enrolled_at,
        }),
    }
}

fn claim_check(gw: &Gateway, peer: &Peer, claimed: &str, what: &str) -> Result<(), Status> {
    if claimed.is_empty() || claimed == peer.cluster {
        return Ok(());
    }
    gw.metrics.reject("cluster_mismatch");
    warn!(
        cluster = %peer.cluster, claimed, what,
        "rejecting message that claims another cluster"
    );
    Err(Status::permission_denied(format!(
        "{what} claims cluster {claimed} but the client certificate is for cluster {}",
        peer.cluster
    )))
}

/// `AgentService`.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    gw: Arc<Gateway>,
}

impl AgentSvc {
    /// Wraps the gateway.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

type Outbound = mpsc::Sender<Result<HubMessage, Status>>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let stream = self.gw.conns.open_stream(req.remote_addr());
        let addr = req.remote_addr();
        let peer = authenticate(&self.gw, peer_identity(&self.gw, &req)?).await?;
        let (tx, rx) = mpsc::channel(64);
        let gw = self.gw.clone();
        tokio::spawn(async move {
            run_session(gw, peer, addr, req.into_inner(), tx).await;
            drop(stream);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let _stream = self.gw.conns.open_stream(req.remote_addr());
        let peer = authenticate(&self.gw, peer_identity(&self.gw, &req)?).await?;
        let csr = req.into_inner().csr_pem;
        if csr.len() > validate::MAX_PARAMS_BYTES {
            return Err(Status::invalid_argument("csr_pem is too large"));
        }
        let issued = self
            .gw
            .enroller
            .renew(&peer.cluster, &csr)
            .await
            .inspect_err(|e| self.gw.metrics.reject(e.label()))?;
        self.gw
            .metrics
            .certificates
            .get_or_create(&crate::metrics::Reason {
                reason: "renew".into(),
            })
            .inc();
        info!(cluster = %peer.cluster, not_after = issued.not_after, "certificate renewed");
        Ok(Response::new(CertificateResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.gw.enroller.ca_pem().to_string(),
            cluster: issued.cluster,
            not_after_unix: issued.not_after,
        }))
    }
}

/// `EnrollmentService`.
#[derive(Debug, Clone)]
pub struct EnrollSvc {
    gw: Arc<Gateway>,
}

impl EnrollSvc {
    /// Wraps the gateway.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

#[tonic::async_trait]
impl EnrollmentService for EnrollSvc {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let _stream = self.gw.conns.open_stream(req.remote_addr());
        let r = req.into_inner();
        if r.csr_pem.len() > validate::MAX_PARAMS_BYTES || r.token.len() > 256 {
            return Err(Status::invalid_argument("token or csr_pem is too large"));
        }
        let issued = self
            .gw
            .enroller
            .enroll(&r.token, &r.csr_pem)
            .await
            .inspect_err(|e| {
                self.gw.metrics.reject(e.label());
                warn!(error = %e, "enrollment refused");
            })?;
        self.gw
            .metrics
            .certificates
            .get_or_create(&crate::metrics::Reason {
                reason: "enroll".into(),
            })
            .inc();
        info!(cluster = %issued.cluster, not_after = issued.not_after, "cluster enrolled");
        Ok(Response::new(CertificateResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.gw.enroller.ca_pem().to_string(),
            cluster: issued.cluster,
            not_after_unix: issued.not_after,
        }))
    }
}

type AckFuture = Pin<Box<dyn std::future::Future<Output = (u64, bool)> + Send>>;

async fn run_session(
    gw: Arc<Gateway>,
    peer: Peer,
    addr: Option<std::net::SocketAddr>,
    mut inbound: Streaming<AgentMessage>,
    tx: Outbound,
) {
    let timeout = gw.cfg.heartbeat_timeout;
    // 1. Hello.
    let hello = match tokio::time::timeout(timeout, inbound.message()).await {
        Err(_) => {
            let _ = tx
                .send(Err(Status::deadline_exceeded("no hello received")))
                .await;
            return;
        }
        Ok(Err(s)) => {
            debug!(cluster = %peer.cluster, status = %s, "stream failed before hello");
            gw.metrics.reject("invalid_message");
            let _ = tx.send(Err(s)).await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(m))) => m,
    };
    let hello = match validate::agent_message(&hello).map(|()| hello.msg) {
        Ok(Some(agent_message::Msg::Hello(h))) => h,
        Ok(_) => {
            gw.metrics.reject("no_hello");
            let _ = tx
                .send(Err(Status::failed_precondition(
                    "the first message must be hello",
                )))
                .await;
            return;
        }
        Err(s) => {
            gw.metrics.reject("invalid_message");
            let _ = tx.send(Err(s)).await;
            return;
        }
    };
    if let Err(s) = claim_check(&gw, &peer, &hello.cluster, "hello") {
        let _ = tx.send(Err(s)).await;
        return;
    }
    let cluster = peer.cluster.clone();
    let sid = gw.session_id();
    let (kill_tx, mut kill_rx) = watch::channel(None);
    let handle = SessionHandle {
        id: sid,
        serial: peer.serial.clone(),
        enrolled_at: peer.enrolled_at,
        tx: tx.clone(),
        kill: kill_tx,
        peer: addr,
    };

    // 2. Seed from the persisted status (first contact since the hub started) and load the spec.
    if !gw.registry.is_seeded(&cluster) {
        let (status, spec) = tokio::join!(gw.agents.status(&cluster), gw.agents.spec(&cluster));
        let spec = spec.ok().flatten();
        if spec.is_some() {
            gw.set_spec(&cluster, spec.clone());
        }
        gw.registry
            .seed(&cluster, status.ok().flatten(), spec.as_ref());
        // A spec pushed meanwhile by the watcher may have been replaced by this older read:
        // have the watcher compare this cluster again (with a store that announces changes;
        // otherwise the next poll does).
        if let Some(changes) = gw.agents.spec_changes() {
            changes.mark(&cluster);
        }
    }
    match gw
        .registry
        .connect(&cluster, handle, &hello, gw.clock.unix())
    {
        Connected::Accepted(Some(old)) => old.end(
            Code::Aborted,
            "replaced by a newer session of the same cluster",
        ),
        Connected::Accepted(None) => {}
        Connected::RefusedClone(c) => {
            gw.metrics.clone_refusals.inc();
            gw.metrics.reject("cloned_identity");
            error!(
                cluster,
                serial = %c.certificate_serial,
                kept = c.kept_peer.as_deref().unwrap_or("?"),
                refused = c.refused_peer.as_deref().unwrap_or("?"),
                refused_sessions = c.refused_sessions,
                "cloned agent identity: two agents use the certificate of cluster {cluster} and \
                 keep replacing each other's session; keeping the older session and refusing the \
                 newer. Give the copy its own enrollment (move its state directory's identity.pem \
                 aside and enroll it with a new bootstrap token)"
            );
            let _ = tx
                .send(Err(Status::already_exists(format!(
                    "another agent holds the session of cluster {cluster} with the same identity \
                     (a copied state directory?); this session is refused"
                ))))
                .await;
            return;
        }
    }
    gw.metrics.sessions.inc();
    info!(cluster, session = sid, version = %hello.agent_version, "agent connected");
    gw.status.touch(&cluster);
    let welcome = HubMessage {
        msg: Some(hub_message::Msg::Welcome(Welcome {
            cluster: cluster.clone(),
            heartbeat_interval_seconds: u32::try_from(gw.cfg.heartbeat_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
        })),
    };
    if tx.send(Ok(welcome)).await.is_err() {
        end_session(&gw, &cluster, sid);
        return;
    }
    let finished: HashSet<String> = hello.finished_task_ids.iter().cloned().collect();
    gw.sync_session(&cluster, &finished).await;

    // 3. The loop.
    let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut deadline = Instant::now() + timeout;
    let outcome: Option<Status> = loop {
        tokio::select! {
            changed = kill_rx.changed() => {
                let why = kill_rx.borrow().clone();
                match (changed, why) {
                    (Ok(()), Some((code, msg))) => break Some(Status::new(code, msg)),
                    (Ok(()), None) => continue,
                    (Err(_), _) => break None,
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                gw.metrics.heartbeat_timeouts.inc();
                warn!(cluster, session = sid, "heartbeat timeout: marking agent disconnected");
                break Some(Status::unavailable("heartbeat timeout"));
            }
            Some((seq, ok)) = acks.next() => {
                if ok {
                    let ack = HubMessage { msg: Some(hub_message::Msg::Ack(ReportAck { up_to_seq: seq })) };
                    if tx.send(Ok(ack)).await.is_err() { break None; }
                } else {
                    // Not durable: do not ack; end the session so the agent resends.
                    break Some(Status::unavailable("could not persist the report; retry"));
                }
            }
            m = inbound.message() => match m {
                Ok(Some(msg)) => {
                    deadline = Instant::now() + timeout;
                    gw.registry.touch(&cluster, gw.clock.unix());
                    match handle_message(&gw, &peer, msg) {
                        Ok(Some(fut)) => acks.push_back(fut),
                        Ok(None) => {}
                        Err(s) => break Some(s),
                    }
                }
                Ok(None) => break None,
                Err(s) => {
                    // A decode error (e.g. over the size limit) or a broken stream: tell the
                    // agent why, if it is still there.
                    debug!(cluster, status = %s, "inbound stream ended");
                    if matches!(s.code(), Code::Cancelled | Code::Unknown) {
                        break None;
                    }
                    gw.metrics.reject("invalid_message");
                    break Some(s);
                }
            }
        }
    };
    if let Some(s) = outcome {
        let _ = tx.try_send(Err(s));
    }
    end_session(&gw, &cluster, sid);
}

fn end_session(gw: &Gateway, cluster: &str, sid: u64) {
    if gw.registry.disconnect(cluster, sid, gw.clock.unix()) {
        info!(cluster, session = sid, "agent disconnected");
        gw.status.touch(cluster);
    }
}

fn handle_message(
    gw: &Arc<Gateway>,
    peer: &Peer,
    msg: AgentMessage,
) -> Result<Option<AckFuture>, Status> {
    validate::agent_message(&msg).inspect_err(|_| gw.metrics.reject("invalid_message"))?;
    match msg.msg {
        Some(agent_message::Msg::Hello(_)) => {
            gw.metrics.reject("invalid_message");
            Err(Status::failed_precondition(
                "hello may only be sent once per session",
            ))
        }
        Some(agent_message::Msg::Heartbeat(_)) | None => Ok(None),
        Some(agent_message::Msg::Report(r)) => {
            claim_check(gw, peer, &r.cluster, "report")?;
            let kind = match &r.body {
                Some(task_report::Body::Accepted(_)) => "accepted",
                Some(task_report::Body::Progress(_)) => "progress",
                Some(task_report::Body::Result(_)) => "result",
                None => "none",
            };
            gw.metrics
                .reports
                .get_or_create(&crate::metrics::Reason {
                    reason: kind.into(),
                })
                .inc();
            let held = matches!(r.body, Some(task_report::Body::Progress(_)))
                && gw.precache_held(&peer.cluster, &r.task_id);
            let applied = gw
                .registry
                .apply_report_held(&peer.cluster, &r, gw.clock.unix(), held);
            debug!(cluster = %peer.cluster, task = %r.task_id, seq = r.seq, kind, ?applied, "report");
            if let Applied::Progress { first } = applied {
                gw.metrics.progress_reports.inc();
                // Pre-cache progress: written coalesced (the first total or registries at once).
                gw.progress_reported(&peer.cluster, first);
            }
            if r.seq == 0 {
                if applied == Applied::Transition {
                    // First progress: Starting -> Active is a transition; persist, best effort.
                    gw.status.touch(&peer.cluster);
                    if kind == "progress" && gw.registry.is_precache(&peer.cluster, &r.task_id) {
                        // The write carries the progress too: the interval counts from here.
                        gw.metrics.progress_reports.inc();
                        gw.progress
                            .wrote(&peer.cluster, tokio::time::Instant::now());
                    }
                }
                return Ok(None);
            }
            let rx = gw.status.request(&peer.cluster);
            let seq = r.seq;
            Ok(Some(Box::pin(
                async move { (seq, rx.await.unwrap_or(false)) },
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The pre-cache grant and progress paths of a session, on a paused clock: a gateway over
    //! an in-memory SpokeAgent store, a session handle whose outbound channel the test reads,
    //! and reports fed through [`handle_message`] as a live session does.

    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use talm_proto::v1::{self, TaskKind};
    use talm_shared::api::Time;
    use talm_shared::api::spokeagent::{PrecacheTask, SpokeAgentSpec, SpokeAgentStatus};
    use talm_shared::clock::{Clock, ManualClock};

    use super::*;
    use crate::enroll::Enroller;
    use crate::server::GatewayConfig;
    use crate::store::file::FileEnrollmentStore;
    use crate::store::{SpecChanges, SpokeAgentStore, StoreFuture};

    const CLUSTER: &str = "sno1";
    const TASK: &str = "ns/cgu/uid/precache";

    /// SpokeAgent statuses written, in order.
    #[derive(Debug, Default)]
    struct MemStore {
        writes: Mutex<Vec<SpokeAgentStatus>>,
        specs: Mutex<BTreeMap<String, SpokeAgentSpec>>,
        changes: Arc<SpecChanges>,
    }

    impl MemStore {
        fn writes(&self) -> Vec<SpokeAgentStatus> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl SpokeAgentStore for MemStore {
        fn specs(&self) -> StoreFuture<'_, BTreeMap<String, SpokeAgentSpec>> {
            let specs = self.specs.lock().unwrap().clone();
            Box::pin(async { Ok(specs) })
        }
        fn spec<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentSpec>> {
            let spec = self.specs.lock().unwrap().get(cluster).cloned();
            Box::pin(async { Ok(spec) })
        }
        fn spec_changes(&self) -> Option<Arc<SpecChanges>> {
            Some(self.changes.clone())
        }
        fn put_spec<'a>(&'a self, _: &'a str, _: &'a SpokeAgentSpec) -> StoreFuture<'a, ()> {
            Box::pin(async { Ok(()) })
        }
        fn status<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<SpokeAgentStatus>> {
            Box::pin(async { Ok(None) })
        }
        fn write_status<'a>(
            &'a self,
            _: &'a str,
            status: &'a SpokeAgentStatus,
        ) -> StoreFuture<'a, ()> {
            self.writes.lock().unwrap().push(status.clone());
            Box::pin(async { Ok(()) })
        }
    }

    struct Fixture {
        gw: Arc<Gateway>,
        store: Arc<MemStore>,
        clock: Arc<ManualClock>,
        peer: Peer,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_900_000_000));
        let ca = talm_shared::pki::new_ca(
            "test agent CA",
            clock.system_time(),
            Duration::from_secs(86_400),
        )
        .unwrap();
        let enroller = Enroller::new(
            ca,
            Arc::new(FileEnrollmentStore::new(dir.path()).unwrap()),
            clock.clone(),
            Duration::from_secs(3600),
        );
        let store = Arc::new(MemStore::default());
        let cfg = GatewayConfig {
            progress_write_interval: Duration::from_secs(20),
            ..GatewayConfig::default()
        };
        let gw = Gateway::new(cfg, clock.clone(), enroller, store.clone());
        gw.registry.seed(CLUSTER, None, None);
        Fixture {
            gw,
            store,
            clock,
            peer: Peer {
                cluster: CLUSTER.into(),
                serial: "0a".into(),
                enrolled_at: 1,
            },
            _dir: dir,
        }
    }

    /// Connects a session; returns what the hub sends it.
    fn connect(gw: &Gateway, active: &[&str]) -> mpsc::Receiver<Result<HubMessage, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let handle = SessionHandle {
            id: gw.session_id(),
            serial: "0a".into(),
            enrolled_at: 1,
            tx,
            kill: watch::channel(None).0,
            peer: None,
        };
        let hello = v1::Hello {
            active_task_ids: active.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(matches!(
            gw.registry.connect(CLUSTER, handle, &hello, 1_900_000_000),
            Connected::Accepted(_)
        ));
        rx
    }

    fn spec(hold: bool, cap: Option<i64>) -> SpokeAgentSpec {
        SpokeAgentSpec {
            precache: Some(PrecacheTask {
                id: TASK.into(),
                spec: Default::default(),
                deadline: Time(jiff::Timestamp::from_second(2_000_000_000).unwrap()),
                hold,
                rate_limit_bytes_per_second: cap,
                order: None,
            }),
            ..Default::default()
        }
    }

    fn sent(rx: &mut mpsc::Receiver<Result<HubMessage, Status>>) -> Vec<hub_message::Msg> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|m| m.ok().and_then(|m| m.msg))
            .collect()
    }

    async fn set_spec(gw: &Gateway, s: SpokeAgentSpec) {
        gw.set_spec(CLUSTER, Some(s));
        gw.sync_session(CLUSTER, &HashSet::new()).await;
    }

    #[tokio::test]
    async fn a_marked_spec_change_reaches_the_session_without_a_poll() {
        let f = fixture();
        let mut rx = connect(&f.gw, &[]);
        let sync = || f.gw.sync_specs_of(f.store.changes.take());
        f.store
            .specs
            .lock()
            .unwrap()
            .insert(CLUSTER.into(), spec(true, None));
        // Not marked: not read (the poll would find it).
        sync().await;
        assert!(sent(&mut rx).is_empty());
        f.store.changes.mark(CLUSTER);
        sync().await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Assign(a)] => assert!(a.task_id == TASK && a.hold),
            other => panic!("expected one held assignment, got {other:?}"),
        }
        assert_eq!(f.gw.cached_spec(CLUSTER), Some(spec(true, None)));
        // The let-in, marked: one update with the cap.
        f.store
            .specs
            .lock()
            .unwrap()
            .insert(CLUSTER.into(), spec(false, Some(5 << 20)));
        f.store.changes.mark(CLUSTER);
        sync().await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Update(u)] => {
                assert!(!u.hold);
                assert_eq!(u.rate_limit_bytes_per_second, 5 << 20);
            }
            other => panic!("expected one update, got {other:?}"),
        }
        // Marked again without a change, and another cluster marked that has no spec: nothing.
        f.store.changes.mark(CLUSTER);
        f.store.changes.mark("sno-other");
        sync().await;
        assert!(sent(&mut rx).is_empty());
        // The spec removed: the task is cancelled.
        f.store.specs.lock().unwrap().remove(CLUSTER);
        f.store.changes.mark(CLUSTER);
        sync().await;
        assert!(
            matches!(sent(&mut rx).as_slice(), [hub_message::Msg::Cancel(c)] if c.task_id == TASK)
        );
        assert_eq!(f.gw.cached_spec(CLUSTER), None);
    }

    #[tokio::test]
    async fn grant_changes_become_updates_and_an_unchanged_spec_sends_nothing() {
        let f = fixture();
        let mut rx = connect(&f.gw, &[]);
        // The held task is assigned with its hold; no update follows a fresh assignment.
        set_spec(&f.gw, spec(true, None)).await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Assign(a)] => {
                assert_eq!(a.task_id, TASK);
                assert!(a.hold);
                assert_eq!(a.rate_limit_bytes_per_second, 0);
            }
            m => panic!("{m:?}"),
        }
        set_spec(&f.gw, spec(true, None)).await;
        assert!(sent(&mut rx).is_empty(), "an unchanged spec sends nothing");
        // Let in with a cap: an update, never a second assignment.
        set_spec(&f.gw, spec(false, Some(10 << 20))).await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Update(u)] => {
                assert_eq!(u.task_id, TASK);
                assert!(!u.hold);
                assert_eq!(u.rate_limit_bytes_per_second, 10 << 20);
            }
            m => panic!("{m:?}"),
        }
        set_spec(&f.gw, spec(false, Some(10 << 20))).await;
        assert!(sent(&mut rx).is_empty());
        // The cap re-divided.
        set_spec(&f.gw, spec(false, Some(20 << 20))).await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Update(u)] => assert_eq!(u.rate_limit_bytes_per_second, 20 << 20),
            m => panic!("{m:?}"),
        }
        assert_eq!(f.gw.metrics.task_updates.get(), 2);

        // The agent restarts while running the task: the assignment is repeated (the agent
        // ignores it, it knows the task) and the current grant follows as an update.
        let mut rx = connect(&f.gw, &[TASK]);
        f.gw.sync_session(CLUSTER, &HashSet::new()).await;
        match sent(&mut rx).as_slice() {
            [hub_message::Msg::Assign(a), hub_message::Msg::Update(u)] => {
                assert_eq!((a.task_id.as_str(), u.task_id.as_str()), (TASK, TASK));
                assert!(!u.hold);
                assert_eq!(u.rate_limit_bytes_per_second, 20 << 20);
            }
            m => panic!("{m:?}"),
        }
        f.gw.sync_session(CLUSTER, &HashSet::new()).await;
        assert!(sent(&mut rx).is_empty());

        // A finished task gets no update.
        let result = report(
            9,
            task_report::Body::Result(v1::TaskResult {
                outcome: v1::TaskOutcome::Succeeded as i32,
                message: String::new(),
            }),
        );
        let _ = handle_message(&f.gw, &f.peer, result).unwrap();
        set_spec(&f.gw, spec(false, Some(5 << 20))).await;
        assert!(sent(&mut rx).is_empty(), "no update for a finished task");
    }

    fn report(seq: u64, body: task_report::Body) -> AgentMessage {
        AgentMessage {
            msg: Some(agent_message::Msg::Report(v1::TaskReport {
                seq,
                task_id: TASK.into(),
                cluster: CLUSTER.into(),
                body: Some(body),
            })),
        }
    }

    fn progress(done: u64, registries: &[&str]) -> AgentMessage {
        report(
            0,
            task_report::Body::Progress(v1::TaskProgress {
                message: "downloading".into(),
                done,
                total: 1000,
                bytes_per_second: 50,
                registries: registries.iter().map(|s| s.to_string()).collect(),
            }),
        )
    }

    /// Lets the status writer's tasks run (the clock is paused; nothing here sleeps).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn with_progress(store: &MemStore) -> Vec<SpokeAgentStatus> {
        store
            .writes()
            .into_iter()
            .filter(|s| s.precache.as_ref().is_some_and(|p| p.progress.is_some()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn held_progress_is_written_coalesced_and_stays_starting() {
        let f = fixture();
        tokio::spawn(f.gw.clone().status_writer());
        let _rx = connect(&f.gw, &[]);
        set_spec(&f.gw, spec(true, None)).await;
        let accepted = report(
            1,
            task_report::Body::Accepted(v1::TaskAccepted {
                kind: TaskKind::Precache as i32,
            }),
        );
        let _ = handle_message(&f.gw, &f.peer, accepted).unwrap();
        settle().await;
        let writes = f.store.writes();
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(writes[0].precache.as_ref().unwrap().state, "Starting");

        // The first report with the total and the registries: written at once.
        let _ = handle_message(&f.gw, &f.peer, progress(0, &["mirror.example:5000"])).unwrap();
        settle().await;
        assert_eq!(with_progress(&f.store).len(), 1);
        // Nine more within 20 s (registries sent once): nothing more until the interval ends.
        for i in 1..=9u64 {
            tokio::time::advance(Duration::from_secs(2)).await;
            f.clock.advance(jiff::SignedDuration::from_secs(2));
            let _ = handle_message(&f.gw, &f.peer, progress(i * 100, &[])).unwrap();
            settle().await;
            assert_eq!(with_progress(&f.store).len(), 1, "report {i}");
        }
        // At 20 s the one coalesced write goes out, with the latest progress.
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        let w = with_progress(&f.store);
        assert_eq!(w.len(), 2, "{w:?}");
        let last = w[1].precache.clone().unwrap();
        assert_eq!(last.state, "Starting", "held: never Active");
        let p = last.progress.unwrap();
        assert_eq!(
            (p.bytes_done, p.bytes_total, p.bytes_per_second),
            (900, 1000, 50)
        );
        assert_eq!(p.registries, ["mirror.example:5000"], "kept once known");
        assert_eq!(
            p.updated_at.unwrap().0.as_second(),
            1_900_000_000 + 18,
            "the hub's clock at the report"
        );
        assert_eq!(f.gw.metrics.progress_reports.get(), 10);
        assert_eq!(f.gw.metrics.progress_writes.get(), 2);
        // Quiet: no more writes.
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(f.store.writes().len(), 3);

        // Let in: the next progress moves it to Active (a transition, written at once).
        set_spec(&f.gw, spec(false, Some(1 << 20))).await;
        let _ = handle_message(&f.gw, &f.peer, progress(950, &[])).unwrap();
        settle().await;
        let writes = f.store.writes();
        assert_eq!(writes.len(), 4);
        assert_eq!(writes[3].precache.as_ref().unwrap().state, "Active");
        // The result at once, however recent the last write.
        let done = report(
            2,
            task_report::Body::Result(v1::TaskResult {
                outcome: v1::TaskOutcome::Succeeded as i32,
                message: String::new(),
            }),
        );
        let _ = handle_message(&f.gw, &f.peer, done).unwrap();
        settle().await;
        let writes = f.store.writes();
        assert_eq!(writes.len(), 5);
        assert_eq!(writes[4].precache.as_ref().unwrap().state, "Succeeded");
    }
}

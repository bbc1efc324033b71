//! Shared fixtures for the channel tests: a PKI generated at test time with rcgen, a gateway on
//! 127.0.0.1:0 over real TLS, agents built from the real library, and a gated task runner that
//! records how often each task started and took effect.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use talm_agent::conn::{ConnConfig, HubTarget, Identity};
use talm_agent::daemon::{Agent, AgentConfig};
use talm_agent::facts::Host;
use talm_agent::journal::Task;
use talm_agent::runner::{HostRunner, RunFuture, TaskContext, TaskRunner};
use talm_gateway::enroll::Enroller;
use talm_gateway::store::file::{FileEnrollmentStore, FileSpokeAgentStore};
use talm_gateway::store::{EnrollmentStore, SpokeAgentStore, StoreFuture};
use talm_gateway::{Gateway, GatewayConfig};
use talm_proto::v1::TaskOutcome;
use talm_shared::api::Time;
use talm_shared::api::spokeagent::{CheckSpaceTask, SpokeAgentSpec, SpokeAgentStatus};
use talm_shared::clock::{Clock, SystemClock};
use talm_shared::pki::{self, Authority};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TALM_TEST_LOG").unwrap_or_else(|_| "warn".to_string()))
        .with_test_writer()
        .try_init();
}

/// The hub's PKI.
pub struct Pki {
    pub hub_ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
    pub agent_ca: Authority,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_names(&["127.0.0.1".into(), "localhost".into()])
    }

    pub fn with_names(names: &[String]) -> Self {
        let now = SystemClock.system_time();
        let year = Duration::from_secs(365 * 86_400);
        let hub_ca = pki::new_ca("test hub CA", now, year).unwrap();
        let leaf = pki::server_cert(&hub_ca, names, now, year).unwrap();
        let agent_ca = pki::new_ca("test agent CA", now, year).unwrap();
        Self {
            hub_ca_pem: hub_ca.cert_pem,
            server_cert: leaf.cert_pem,
            server_key: leaf.key_pem,
            agent_ca,
        }
    }

    pub fn agent_ca_copy(&self) -> Authority {
        Authority {
            cert_pem: self.agent_ca.cert_pem.clone(),
            key_pem: self.agent_ca.key_pem.clone(),
        }
    }
}

/// A SpokeAgent store that records every status write (to count transitions).
#[derive(Debug)]
pub struct Recording {
    pub inner: FileSpokeAgentStore,
    pub writes: Mutex<Vec<(String, SpokeAgentStatus)>>,
    /// Held across a write and its log entry, so the log has the store's order.
    order: tokio::sync::Mutex<()>,
}

impl Recording {
    pub fn new(inner: FileSpokeAgentStore) -> Self {
        Self {
            inner,
            writes: Mutex::new(Vec::new()),
            order: tokio::sync::Mutex::new(()),
        }
    }
}

impl SpokeAgentStore for Recording {
    fn specs(&self) -> StoreFuture<'_, std::collections::BTreeMap<String, SpokeAgentSpec>> {
        self.inner.specs()
    }
    fn spec<'a>(&'a self, c: &'a str) -> StoreFuture<'a, Option<SpokeAgentSpec>> {
        self.inner.spec(c)
    }
    fn put_spec<'a>(&'a self, c: &'a str, s: &'a SpokeAgentSpec) -> StoreFuture<'a, ()> {
        self.inner.put_spec(c, s)
    }
    fn status<'a>(&'a self, c: &'a str) -> StoreFuture<'a, Option<SpokeAgentStatus>> {
        self.inner.status(c)
    }
    fn write_status<'a>(&'a self, c: &'a str, s: &'a SpokeAgentStatus) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _order = self.order.lock().await;
            self.inner.write_status(c, s).await?;
            self.writes.lock().unwrap().push((c.to_string(), s.clone()));
            Ok(())
        })
    }
}

/// A running gateway.
pub struct Hub {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gw: Arc<Gateway>,
    pub agents: Arc<Recording>,
    pub enroll: Arc<FileEnrollmentStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn fast_config() -> GatewayConfig {
    GatewayConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(100),
        ..GatewayConfig::default()
    }
}

impl Hub {
    pub async fn start(state: &Path, pki: &Pki, cfg: GatewayConfig) -> Self {
        Self::start_on(
            state,
            pki,
            cfg,
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_secs(3600),
        )
        .await
    }

    pub async fn start_on(
        state: &Path,
        pki: &Pki,
        cfg: GatewayConfig,
        addr: SocketAddr,
        cert_lifetime: Duration,
    ) -> Self {
        let enroll = Arc::new(FileEnrollmentStore::new(state).unwrap());
        let agents = Arc::new(Recording::new(FileSpokeAgentStore::new(state).unwrap()));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let enroller = Enroller::new(
            pki.agent_ca_copy(),
            enroll.clone(),
            clock.clone(),
            cert_lifetime,
        );
        let gw = Gateway::new(cfg, clock, enroller, agents.clone());
        let grpc = TcpListener::bind(addr).await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (grpc.local_addr().unwrap(), admin.local_addr().unwrap());
        let tls = talm_shared::tls::server_config(
            pki.server_cert.as_bytes(),
            pki.server_key.as_bytes(),
            pki.agent_ca.cert_pem.as_bytes(),
        )
        .unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.clone().serve(grpc, Some(admin), tls, async move {
            let _ = rx.await;
        }));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        Hub {
            addr,
            admin: admin_addr,
            gw,
            agents,
            enroll,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn token(&self, cluster: &str) -> String {
        talm_gateway::enroll::issue_token(
            self.enroll.as_ref(),
            &SystemClock,
            cluster,
            Duration::from_secs(600),
        )
        .await
        .unwrap()
    }

    /// Stops the gateway (sessions are ended, listeners closed).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("hub stops")
                .unwrap();
        }
    }

    /// The cluster's SpokeAgent status, as stored.
    pub async fn status(&self, cluster: &str) -> Option<SpokeAgentStatus> {
        self.agents.status(cluster).await.unwrap()
    }

    pub async fn put_check_space(&self, cluster: &str, id: &str, gib: &str) {
        let spec = SpokeAgentSpec {
            check_space: Some(CheckSpaceTask {
                id: id.into(),
                space_required: gib.into(),
                deadline: Time(jiff::Timestamp::from_second(SystemClock.unix() + 3600).unwrap()),
            }),
            ..Default::default()
        };
        self.agents.put_spec(cluster, &spec).await.unwrap();
    }

    /// Issues a certificate directly (no enrollment RPC) and records it as enrolled.
    pub async fn issue_identity(
        &self,
        pki: &Pki,
        cluster: &str,
        not_before: i64,
        not_after: i64,
    ) -> Identity {
        let (key, csr) = pki::agent_key_and_csr().unwrap();
        let serial: Vec<u8> = (0..16)
            .map(|i| (i as u8).wrapping_mul(31) ^ (not_after as u8) ^ cluster.len() as u8)
            .collect();
        let mut serial = serial;
        serial[0] = 0x11;
        let cert = pki::sign_agent_csr(
            &pki.agent_ca,
            &csr,
            cluster,
            talm_shared::clock::from_unix(not_before),
            talm_shared::clock::from_unix(not_after),
            &serial,
        )
        .unwrap();
        let id = Identity::from_pem(cert.into_bytes(), key.into_bytes()).unwrap();
        self.enroll
            .record_certificate(cluster, &id.info.serial, not_after, not_before)
            .await
            .unwrap();
        id
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }
}

/// A minimal HTTP/1.1 GET (the admin endpoint is plain HTTP on loopback).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Undo chunked encoding if present.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (code, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

pub fn agent_config(hub_url: &str, pki: &Pki, state: &Path, token: Option<String>) -> AgentConfig {
    AgentConfig {
        target: HubTarget::parse(hub_url, None).unwrap(),
        hub_ca_pem: pki.hub_ca_pem.clone().into_bytes(),
        state_dir: state.to_path_buf(),
        bootstrap_token: token,
        conn: ConnConfig {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(2),
        },
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        renew_at_fraction: 2.0 / 3.0,
        progress_interval: talm_agent::runner::PROGRESS_INTERVAL,
    }
}

/// A running agent.
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), talm_agent::daemon::AgentError>>,
}

impl RunningAgent {
    pub fn start(cfg: AgentConfig, runner: Arc<dyn TaskRunner>, host_root: &Path) -> Self {
        let host = Arc::new(Host::new(host_root));
        let agent = Agent::new(cfg, host, runner, Arc::new(SystemClock)).unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.clone().run(async move {
            let _ = rx.await;
        }));
        Self {
            agent,
            stop: Some(stop),
            task,
        }
    }

    pub fn host_runner(host_root: &Path) -> Arc<dyn TaskRunner> {
        Arc::new(HostRunner::new(Arc::new(Host::new(host_root))))
    }

    /// Stops the agent (running tasks are aborted, like a crash of the task; the journal keeps
    /// them for the next start).
    pub async fn stop(mut self) -> Result<(), talm_agent::daemon::AgentError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops")
            .unwrap()
    }

    pub async fn join(self) -> Result<(), talm_agent::daemon::AgentError> {
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("agent ends")
            .unwrap()
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// A runner that blocks each task until released, and counts starts and effects per task id.
#[derive(Debug)]
pub struct GateState {
    pub starts: Mutex<HashMap<String, u32>>,
    pub effects: Mutex<HashMap<String, u32>>,
    pub gate: tokio::sync::Semaphore,
}

/// Cloneable handle to a [`GateState`].
#[derive(Debug, Clone)]
pub struct GateRunner(pub Arc<GateState>);

impl GateRunner {
    pub fn new() -> Self {
        Self(Arc::new(GateState {
            starts: Mutex::new(HashMap::new()),
            effects: Mutex::new(HashMap::new()),
            gate: tokio::sync::Semaphore::new(0),
        }))
    }
    pub fn starts(&self, id: &str) -> u32 {
        self.0.starts.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    pub fn effects(&self, id: &str) -> u32 {
        self.0.effects.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    pub fn release(&self, n: usize) {
        self.0.gate.add_permits(n);
    }
    pub fn arc(&self) -> Arc<dyn TaskRunner> {
        Arc::new(self.clone())
    }
}

impl TaskRunner for GateRunner {
    fn run(&self, task: Task, ctx: TaskContext) -> RunFuture {
        let me = self.0.clone();
        Box::pin(async move {
            *me.starts
                .lock()
                .unwrap()
                .entry(task.id.clone())
                .or_default() += 1;
            ctx.progress("waiting for the gate", 1, 4);
            let permit = me.gate.acquire().await.unwrap();
            permit.forget();
            // The task's effect, applied once per completed run.
            *me.effects
                .lock()
                .unwrap()
                .entry(task.id.clone())
                .or_default() += 1;
            (TaskOutcome::Succeeded, "gate passed".into())
        })
    }
}

/// Polls `f` until it returns true (or panics after `secs`).
pub async fn eventually(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > end {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn host_root(dir: &Path) -> PathBuf {
    let r = dir.join("host");
    std::fs::create_dir_all(r.join("var/lib/containers")).unwrap();
    r
}

/// The value of one sample in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Log lines of this test process, captured by a global subscriber (one per test binary):
/// tests that assert what the agent or gateway logs install it first, instead of
/// [`init_tracing`].
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Installs the capturing subscriber (at `debug` for talm crates, `warn` otherwise), or
    /// returns the one installed before.
    pub fn install() -> LogCapture {
        static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
        CAPTURE
            .get_or_init(|| {
                let cap = LogCapture::default();
                let writer = cap.clone();
                let _ = tracing_subscriber::fmt()
                    .with_env_filter("warn,talm_agent=info,talm_gateway=info")
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .try_init();
                cap
            })
            .clone()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The captured lines at `level` (e.g. `WARN`) that contain every one of `words`.
    pub fn lines(&self, level: &str, words: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(level) && words.iter().all(|w| l.contains(w)))
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

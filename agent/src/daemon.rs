//! The daemon: enroll if needed, resume unfinished tasks, then keep one session with the hub,
//! reconnecting with jittered, capped exponential backoff. While idle the only timers are the
//! heartbeat (default every 30 s), the HTTP/2 keepalive PING at the same interval, and one
//! sleep until the certificate's renewal time: no busy loops, no per-second timers.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use talm_proto::v1::{
    self, AgentMessage, Heartbeat, Hello, TaskAccepted, TaskOutcome, TaskProgress, TaskResult,
    agent_message, hub_message, task_report,
};
use talm_proto::validate;
use talm_shared::clock::{Clock, rfc3339};
use talm_shared::fsutil::atomic_write;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tracing::{debug, error, info, warn};

use crate::backoff::{Backoff, random_u64};
use crate::conn::{self, Cause, ConnConfig, ConnError, HubTarget, Identity};
use crate::facts::HostInfo;
use crate::journal::{Accept, Grant, Journal, JournalError, Report, ReportBody, Task, TaskState};
use crate::runner::{Coalescer, Progress, TaskContext, TaskRunner};

/// Daemon errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The journal failed (the agent stops rather than lose reports).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Connecting or enrolling failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// Not enrolled and no bootstrap token.
    #[error("not enrolled and no bootstrap token given (--bootstrap-token-file)")]
    NoToken,
    /// The hub refused the enrollment; retrying will not help.
    #[error("enrollment refused: token refused: {0}")]
    EnrollmentRefused(String),
    /// A configuration error that retrying cannot fix (the hub CA bundle, the identity file).
    #[error("configuration error: {0}")]
    Config(String),
    /// The hub sent something invalid.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The hub.
    pub target: HubTarget,
    /// CA bundle that signed the hub's certificate, PEM.
    pub hub_ca_pem: Vec<u8>,
    /// State directory (identity, journal, connection state).
    pub state_dir: PathBuf,
    /// Bootstrap token, for the first start.
    pub bootstrap_token: Option<String>,
    /// Connection tuning.
    pub conn: ConnConfig,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Renew the certificate after this fraction of its lifetime.
    pub renew_at_fraction: f64,
    /// At most one progress report per task this often (plus one at each phase change).
    pub progress_interval: Duration,
}

/// The connection state file, read by `talm-agent status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnState {
    /// `starting`, `enrolling`, `connecting`, `connected`, `disconnected`, `stopped`.
    pub state: String,
    /// Since when, RFC 3339.
    pub since: String,
    /// Hub address.
    pub hub: String,
    /// Cluster from the certificate.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Certificate expiry, RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_not_after: String,
    /// Last error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Daemon pid.
    pub pid: u32,
}

/// `<state_dir>/connection.json`.
pub fn conn_state_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("connection.json")
}

#[derive(Debug)]
struct Running {
    cancel: watch::Sender<bool>,
    /// The hub's grant (pre-cache hold and cap), followed by the runner.
    grant: watch::Sender<Grant>,
    abort: AbortHandle,
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    journal: Arc<Journal>,
    host: Arc<dyn HostInfo>,
    runner: Arc<dyn TaskRunner>,
    clock: Arc<dyn Clock>,
    identity: Mutex<Option<Identity>>,
    running: Mutex<HashMap<String, Running>>,
    progress_tx: mpsc::Sender<Progress>,
    progress_rx: tokio::sync::Mutex<mpsc::Receiver<Progress>>,
    conn_state: Mutex<ConnState>,
}

enum SessionEnd {
    /// Ended after a Welcome (the link worked: reset the backoff).
    AfterWelcome(String),
    /// Shutdown requested.
    Shutdown,
}

impl Agent {
    /// A new agent; opens the journal and loads the identity if enrolled.
    pub fn new(
        cfg: AgentConfig,
        host: Arc<dyn HostInfo>,
        runner: Arc<dyn TaskRunner>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, AgentError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| ConnError::Io(cfg.state_dir.display().to_string(), e))?;
        // A CA bundle that does not parse fails every connection: refuse to start instead.
        talm_shared::tls::client_config(&cfg.hub_ca_pem, None)
            .map_err(|e| AgentError::Config(format!("the hub CA bundle is not usable: {e}")))?;
        let journal = Arc::new(Journal::open(&cfg.state_dir)?);
        let identity = conn::load_identity(&cfg.state_dir)?;
        let (progress_tx, progress_rx) = mpsc::channel(64);
        let hub = cfg.target.authority.clone();
        Ok(Arc::new(Self {
            cfg,
            journal,
            host,
            runner,
            clock,
            identity: Mutex::new(identity),
            running: Mutex::new(HashMap::new()),
            progress_tx,
            progress_rx: tokio::sync::Mutex::new(progress_rx),
            conn_state: Mutex::new(ConnState {
                hub,
                pid: std::process::id(),
                ..Default::default()
            }),
        }))
    }

    /// The journal (tests inspect it).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The current identity.
    pub fn identity(&self) -> Option<Identity> {
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_identity(&self, id: Identity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    fn set_state(&self, state: &str, error: Option<String>) {
        let mut s = self.conn_state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = self.identity() {
            s.cluster = id.info.cluster.clone();
            s.cert_not_after = rfc3339(id.info.not_after);
        }
        if s.state != state {
            s.state = state.to_string();
            s.since = rfc3339(self.clock.unix());
        }
        if let Some(e) = error {
            s.last_error = e;
        }
        let bytes = serde_json::to_vec_pretty(&*s).unwrap_or_default();
        let path = conn_state_path(&self.cfg.state_dir);
        if let Err(e) = atomic_write(&path, &bytes, 0o644) {
            warn!(error = %e, "cannot write the connection state");
        }
    }

    async fn journal_op<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<R, JournalError> + Send + 'static,
    ) -> Result<R, JournalError> {
        let j = self.journal.clone();
        match tokio::task::spawn_blocking(move || f(&j)).await {
            Ok(r) => r,
            Err(e) => Err(JournalError::Io {
                path: "journal".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Runs until `shutdown` resolves (or a fatal error). Running tasks are stopped on return;
    /// the journal resumes them at the next start.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let this = self.clone();
        let main = async move {
            this.set_state("starting", None);
            this.ensure_identity(stop_rx.clone()).await?;
            for task in this.journal.unfinished() {
                info!(task = %task.id, "resuming unfinished task");
                this.spawn_task(task).await?;
            }
            let rot = tokio::spawn(this.clone().rotation_loop(stop_rx.clone()));
            let r = this.connect_loop(stop_rx).await;
            rot.abort();
            r
        };
        let result = tokio::select! {
            r = main => r,
            () = shutdown => Ok(()),
        };
        let _ = stop_tx.send(true);
        for (_, r) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            r.abort.abort();
        }
        self.set_state("stopped", None);
        result
    }

    /// The WARN text for a bootstrap token that is given but not used because the agent is
    /// already enrolled (`None` when there is no token, or it is the one the agent enrolled
    /// with). The hub alone knows which cluster a token is for, so the line names the cluster
    /// this agent is enrolled as and the token's public id.
    pub fn ignored_token_warning(&self) -> Option<String> {
        let token = self.cfg.bootstrap_token.as_deref()?;
        let id = self.identity()?;
        let token_id = conn::token_id(token);
        let enrolled_with = conn::enrollment_token_id(&self.cfg.state_dir);
        if enrolled_with.as_deref() == Some(token_id) {
            return None;
        }
        let with = enrolled_with.map_or_else(
            || "an unrecorded token".to_string(),
            |t| format!("token {t}"),
        );
        Some(format!(
            "bootstrap token {token_id} is ignored: this agent is already enrolled as cluster {} \
             (with {with}); a token is used only for the first enrollment. If this node should \
             now be the cluster token {token_id} was issued for, stop the agent, move {} aside \
             and start it again",
            id.info.cluster,
            conn::identity_path(&self.cfg.state_dir).display()
        ))
    }

    async fn ensure_identity(&self, mut stop: watch::Receiver<bool>) -> Result<(), AgentError> {
        if let Some(id) = self.identity() {
            if let Some(w) = self.ignored_token_warning() {
                let token = self.cfg.bootstrap_token.as_deref().unwrap_or_default();
                warn!(
                    cluster = %id.info.cluster,
                    token_id = conn::token_id(token),
                    "{w}"
                );
                // Warn once per token: remember it unless a token was already recorded.
                if conn::enrollment_token_id(&self.cfg.state_dir).is_none() {
                    let _ = conn::record_enrollment_token(&self.cfg.state_dir, token);
                }
            }
            return Ok(());
        }
        let token = self
            .cfg
            .bootstrap_token
            .clone()
            .ok_or(AgentError::NoToken)?;
        let mut backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        loop {
            self.set_state("enrolling", None);
            match conn::enroll(
                &self.cfg.target,
                &self.cfg.hub_ca_pem,
                &token,
                &self.cfg.state_dir,
                &self.cfg.conn,
            )
            .await
            {
                Ok(id) => {
                    info!(cluster = %id.info.cluster, "enrolled");
                    self.set_identity(id);
                    return Ok(());
                }
                Err(ConnError::Status(s))
                    if matches!(
                        s.code(),
                        Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied
                    ) =>
                {
                    error!(
                        cause = Cause::TokenRefused.label(),
                        "enrollment failed: {}: {}; giving up (give the agent a new token)",
                        Cause::TokenRefused.summary(&self.cfg.target),
                        s.message()
                    );
                    self.set_state("enrolling", Some(s.message().to_string()));
                    return Err(AgentError::EnrollmentRefused(s.message().to_string()));
                }
                Err(e) if e.cause() == Cause::Config => {
                    self.set_state("enrolling", Some(e.to_string()));
                    return Err(AgentError::Conn(e));
                }
                Err(e) => {
                    let delay = backoff.next_delay(random_u64());
                    warn!(
                        cause = e.cause().label(),
                        ?delay,
                        "enrollment failed: {}; retrying",
                        e.explain(&self.cfg.target)
                    );
                    self.set_state("enrolling", Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                }
            }
        }
    }

    async fn connect_loop(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let mut backoff = Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max);
        loop {
            let end = self.session_once(stop.clone()).await;
            let error = match end {
                Ok(SessionEnd::Shutdown) => return Ok(()),
                Ok(SessionEnd::AfterWelcome(why)) => {
                    backoff.reset();
                    why
                }
                Err(AgentError::Journal(e)) => return Err(AgentError::Journal(e)),
                Err(AgentError::Conn(e)) if e.cause() == Cause::Config => {
                    self.set_state("disconnected", Some(e.to_string()));
                    return Err(AgentError::Conn(e));
                }
                Err(AgentError::Conn(e)) => {
                    let delay = backoff.next_delay(random_u64());
                    warn!(
                        cause = e.cause().label(),
                        ?delay,
                        "cannot connect to the hub: {}; retrying",
                        e.explain(&self.cfg.target)
                    );
                    self.set_state("disconnected", Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    continue;
                }
                Err(e) => {
                    let delay = backoff.next_delay(random_u64());
                    warn!(error = %e, ?delay, "session with the hub failed; reconnecting");
                    self.set_state("disconnected", Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return Ok(()),
                    }
                    continue;
                }
            };
            let delay = backoff.next_delay(random_u64());
            info!(error = %error, ?delay, "disconnected from the hub; reconnecting");
            self.set_state("disconnected", Some(error));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    async fn session_once(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<SessionEnd, AgentError> {
        let Some(identity) = self.identity() else {
            return Err(AgentError::NoToken);
        };
        self.set_state("connecting", None);
        let mut client = conn::session_client(
            &self.cfg.target,
            &self.cfg.hub_ca_pem,
            &identity,
            &self.cfg.conn,
        )
        .await?;
        let (out, out_rx) = mpsc::channel::<AgentMessage>(128);
        let (active, finished) = self.journal.ids();
        let host = self.host.clone();
        let facts = tokio::task::spawn_blocking(move || host.facts()).await.ok();
        let hello = Hello {
            agent_version: crate::VERSION.to_string(),
            cluster: identity.info.cluster.clone(),
            facts,
            active_task_ids: active,
            finished_task_ids: finished.into_iter().rev().take(validate::MAX_IDS).collect(),
        };
        let _ = out
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            })
            .await;
        let mut inbound = client
            .session(ReceiverStream::new(out_rx))
            .await
            .map_err(ConnError::from)?
            .into_inner();
        let first = tokio::time::timeout(self.cfg.conn.connect_timeout, inbound.message())
            .await
            .map_err(|_| AgentError::Protocol("no welcome from the hub".into()))?
            .map_err(ConnError::from)?
            .ok_or_else(|| AgentError::Protocol("the hub closed the session".into()))?;
        validate::hub_message(&first).map_err(|s| AgentError::Protocol(s.message().to_string()))?;
        let Some(hub_message::Msg::Welcome(welcome)) = first.msg else {
            return Err(AgentError::Protocol(
                "the first hub message was not welcome".into(),
            ));
        };
        if welcome.cluster != identity.info.cluster {
            return Err(AgentError::Protocol(format!(
                "the hub calls us {}, our certificate says {}",
                welcome.cluster, identity.info.cluster
            )));
        }
        info!(cluster = %welcome.cluster, "connected to the hub");
        self.set_state("connected", Some(String::new()));
        let hb_every = Duration::from_secs(u64::from(welcome.heartbeat_interval_seconds.max(1)));
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + hb_every, hb_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = self.progress_rx.lock().await;
        let mut coalescer = Coalescer::new(self.cfg.progress_interval);
        let mut sent_up_to = 0u64;
        let cluster = identity.info.cluster.clone();
        loop {
            // Send journaled reports not yet sent on this session.
            for r in self.journal.pending_after(sent_up_to) {
                sent_up_to = r.seq;
                if matches!(r.body, ReportBody::Result { .. }) {
                    coalescer.forget(&r.task_id);
                }
                if out.send(report_message(&r, &cluster)).await.is_err() {
                    return Ok(SessionEnd::AfterWelcome("outbound stream closed".into()));
                }
            }
            let notified = self.journal.changed.notified();
            tokio::select! {
                _ = stop.changed() => return Ok(SessionEnd::Shutdown),
                () = notified => {}
                _ = heartbeat.tick() => {
                    if out.send(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat {})) }).await.is_err() {
                        return Ok(SessionEnd::AfterWelcome("outbound stream closed".into()));
                    }
                }
                Some(p) = progress.recv() => {
                    if let Some(p) = coalescer.offer(p, tokio::time::Instant::now()) {
                        let _ = out.send(progress_message(p, &cluster)).await;
                    }
                }
                () = sleep_until_due(coalescer.next_due()) => {
                    for p in coalescer.take_due(tokio::time::Instant::now()) {
                        let _ = out.send(progress_message(p, &cluster)).await;
                    }
                }
                m = inbound.message() => match m {
                    Ok(Some(msg)) => self.handle_hub_message(msg).await?,
                    Ok(None) => return Ok(SessionEnd::AfterWelcome("the hub ended the session".into())),
                    Err(s) => return Ok(SessionEnd::AfterWelcome(format!("{} ({:?})", s.message(), s.code()))),
                },
            }
        }
    }

    async fn handle_hub_message(self: &Arc<Self>, msg: v1::HubMessage) -> Result<(), AgentError> {
        if let Err(s) = validate::hub_message(&msg) {
            // An assignment of a kind this agent does not know: journal it as rejected so the
            // hub learns about it, instead of dropping the session.
            if let Some(hub_message::Msg::Assign(a)) = &msg.msg
                && validate::check_task_id("assign.task_id", &a.task_id).is_ok()
            {
                let (id, kind, now) = (a.task_id.clone(), a.kind, self.clock.unix());
                let message = s.message().to_string();
                self.journal_op(move |j| {
                    if j.accept(&id, kind, "", 0, now)? == Accept::New {
                        j.finish(&id, TaskState::Rejected, &message, now)?;
                    }
                    Ok(())
                })
                .await?;
                return Ok(());
            }
            return Err(AgentError::Protocol(s.message().to_string()));
        }
        match msg.msg {
            Some(hub_message::Msg::Assign(a)) => {
                let now = self.clock.unix();
                let grant = Grant {
                    hold: a.hold,
                    rate_limit: a.rate_limit_bytes_per_second,
                };
                let (id, kind, params, deadline) = (
                    a.task_id.clone(),
                    a.kind,
                    a.params_json.clone(),
                    a.deadline_unix,
                );
                let accepted = self
                    .journal_op(move |j| j.accept_with(&id, kind, &params, deadline, grant, now))
                    .await?;
                debug!(task = %a.task_id, ?accepted, hold = grant.hold, cap = grant.rate_limit, "assignment");
                match accepted {
                    Accept::New => {
                        if let Some(task) = self.journal.task(&a.task_id) {
                            self.spawn_task(task).await?;
                        }
                    }
                    // The hub's current view of a task we run (a new session re-sends it).
                    Accept::Running => self.apply_grant(&a.task_id, grant),
                    Accept::Finished(_) => {}
                }
            }
            Some(hub_message::Msg::Cancel(c)) => {
                let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(r) = running.get(&c.task_id) {
                    if let Some(why) = self.runner.refuses_cancel(&c.task_id) {
                        warn!(task = %c.task_id, "the hub's cancel is not applied: {why}");
                    } else {
                        info!(task = %c.task_id, "cancelled by the hub");
                        let _ = r.cancel.send(true);
                    }
                }
            }
            Some(hub_message::Msg::Ack(a)) => {
                self.journal_op(move |j| j.ack(a.up_to_seq)).await?;
            }
            // The pre-cache scheduler's new grant: journaled (a restart keeps it), then applied
            // to the running task (its cap to the downloads in flight).
            Some(hub_message::Msg::Update(u)) => {
                let grant = Grant {
                    hold: u.hold,
                    rate_limit: u.rate_limit_bytes_per_second,
                };
                let id = u.task_id.clone();
                let known = self.journal_op(move |j| j.set_grant(&id, grant)).await?;
                if known {
                    info!(task = %u.task_id, hold = grant.hold, cap = grant.rate_limit, "the hub changed the task's grant");
                    self.apply_grant(&u.task_id, grant);
                } else {
                    debug!(task = %u.task_id, "update of a task this agent does not run: ignored");
                }
            }
            Some(hub_message::Msg::Welcome(_)) | None => {}
        }
        Ok(())
    }

    fn apply_grant(&self, task_id: &str, grant: Grant) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(task_id) {
            r.grant
                .send_if_modified(|g| std::mem::replace(g, grant) != grant);
        }
    }

    async fn spawn_task(self: &Arc<Self>, task: Task) -> Result<(), AgentError> {
        let id = task.id.clone();
        {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.contains_key(&id) {
                return Ok(());
            }
        }
        let start_id = id.clone();
        self.journal_op(move |j| j.start(&start_id)).await?;
        let (cancel, mut cancelled) = watch::channel(false);
        // A resumed task starts from its journaled grant (still held, or capped) until the
        // hub's assignment or update says otherwise.
        let (grant, granted) = watch::channel(self.journal.grant(&id));
        let this = self.clone();
        let ctx = TaskContext::new(&id, self.progress_tx.clone()).with_grant(granted);
        let fut = self.runner.run(task.clone(), ctx);
        let task_id = id.clone();
        let handle = tokio::spawn(async move {
            let now = this.clock.unix();
            let remaining = if task.deadline_unix > 0 {
                Some(task.deadline_unix - now)
            } else {
                None
            };
            let (outcome, message) = match remaining {
                Some(r) if r <= 0 => (
                    TaskOutcome::TimedOut,
                    "the deadline passed before the task started".to_string(),
                ),
                _ => {
                    let limit =
                        remaining.map_or(Duration::MAX, |r| Duration::from_secs(r.unsigned_abs()));
                    tokio::select! {
                        r = fut => r,
                        () = tokio::time::sleep(limit) => (TaskOutcome::TimedOut, "the deadline passed".to_string()),
                        _ = cancelled.wait_for(|c| *c) => (TaskOutcome::Cancelled, "cancelled by the hub".to_string()),
                    }
                }
            };
            let state = TaskState::from_outcome(outcome);
            info!(task = %task_id, ?state, %message, "task finished");
            let now = this.clock.unix();
            let (id2, msg2) = (task_id.clone(), message.clone());
            if let Err(e) = this
                .journal_op(move |j| j.finish(&id2, state, &msg2, now))
                .await
            {
                warn!(error = %e, task = %task_id, "cannot journal the result");
            }
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&task_id);
        });
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Running {
                    cancel,
                    grant,
                    abort: handle.abort_handle(),
                },
            );
        Ok(())
    }

    async fn rotation_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut first = true;
        let mut backoff = Backoff::new(
            self.cfg.backoff_initial.max(Duration::from_secs(1)),
            Duration::from_secs(300),
        );
        loop {
            let Some(id) = self.identity() else { return };
            let life = (id.info.not_after - id.info.not_before).max(1) as f64;
            let renew_at = id.info.not_before + (life * self.cfg.renew_at_fraction) as i64;
            // At least a second between renewals, whatever the certificate says.
            let floor = if first { 0 } else { 1 };
            first = false;
            let wait = (renew_at - self.clock.unix()).max(floor);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(wait.unsigned_abs())) => {}
                _ = stop.changed() => return,
            }
            match conn::renew(
                &self.cfg.target,
                &self.cfg.hub_ca_pem,
                &id,
                &self.cfg.state_dir,
                &self.cfg.conn,
            )
            .await
            {
                Ok(new) => {
                    info!(cluster = %new.info.cluster, not_after = %rfc3339(new.info.not_after), "certificate rotated");
                    self.set_identity(new);
                    let state = self
                        .conn_state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .state
                        .clone();
                    self.set_state(&state, None);
                    backoff.reset();
                }
                Err(e) => {
                    let delay = backoff.next_delay(random_u64());
                    warn!(
                        cause = e.cause().label(),
                        ?delay,
                        "certificate rotation failed: {}; retrying",
                        e.explain(&self.cfg.target)
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }
}

/// Sleeps until `due` (forever when nothing is due).
async fn sleep_until_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A progress report within the wire's limits: the message cut to size, at most
/// [`validate::MAX_REGISTRIES`] registries of at most [`validate::MAX_SHORT_BYTES`] printable
/// bytes (others are left out), and `done ≤ total` once the total is known.
fn progress_message(p: Progress, cluster: &str) -> AgentMessage {
    let registries = p
        .registries
        .into_iter()
        .filter(|h| {
            !h.is_empty()
                && h.len() <= validate::MAX_SHORT_BYTES
                && h.bytes().all(|b| b.is_ascii_graphic())
        })
        .take(validate::MAX_REGISTRIES)
        .collect();
    let done = if p.total > 0 {
        p.done.min(p.total)
    } else {
        p.done
    };
    AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq: 0,
            task_id: p.task_id,
            cluster: cluster.to_string(),
            body: Some(task_report::Body::Progress(TaskProgress {
                message: truncate(&p.message, validate::MAX_TEXT_BYTES),
                done,
                total: p.total,
                bytes_per_second: p.bytes_per_second,
                registries,
            })),
        })),
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn report_message(r: &Report, cluster: &str) -> AgentMessage {
    let body = match &r.body {
        ReportBody::Accepted { kind } => task_report::Body::Accepted(TaskAccepted { kind: *kind }),
        ReportBody::Result { state, message } => task_report::Body::Result(TaskResult {
            outcome: state.outcome() as i32,
            message: message.chars().take(validate::MAX_TEXT_BYTES / 4).collect(),
        }),
    };
    AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq: r.seq,
            task_id: r.task_id.clone(),
            cluster: cluster.to_string(),
            body: Some(body),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_keep_to_the_wire_limits() {
        let mut registries: Vec<String> = (0..100).map(|i| format!("r{i:03}.example")).collect();
        registries.insert(3, "x".repeat(300));
        registries.insert(4, "has space".into());
        let p = Progress {
            task_id: "t".into(),
            message: "é".repeat(3_000),
            done: 12,
            total: 10,
            bytes_per_second: 5,
            registries,
            phase_change: false,
        };
        let msg = progress_message(p, "c1");
        validate::agent_message(&msg).unwrap();
        let Some(agent_message::Msg::Report(r)) = msg.msg else {
            panic!("not a report")
        };
        let Some(task_report::Body::Progress(p)) = r.body else {
            panic!("not progress")
        };
        assert_eq!(p.registries.len(), validate::MAX_REGISTRIES);
        assert_eq!(p.registries[3], "r003.example", "bad entries are left out");
        assert!(p.message.len() <= validate::MAX_TEXT_BYTES);
        assert_eq!((p.done, p.total, p.bytes_per_second), (10, 10, 5));
        assert_eq!(r.seq, 0);
    }
}

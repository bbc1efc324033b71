//! Simulated agents for the load generators (`hub/gateway/benches/loadgen.rs`,
//! `hub/benches/precache_budget.rs`): an agent identity issued directly by the hub's agent CA
//! (as the Enroll RPC would issue it), and one agent session on the real channel (the agent's
//! own `session_client`: TCP + TLS 1.3 + HTTP/2 with the client certificate), with its `Hello`,
//! the hub's `Welcome`, heartbeats at the interval the hub asks for, and task reports.
//!
//! What an agent does with the hub's messages is up to each benchmark: [`AgentSession::recv`]
//! hands them over one at a time and keeps the heartbeats going while it waits.

// Each benchmark uses a subset of these helpers; the rest is dead code in that benchmark.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use talm_agent::conn::{ConnConfig, HubTarget, Identity, session_client};
use talm_proto::v1::{self, AgentMessage, agent_message, hub_message, task_report};
use talm_shared::clock::from_unix;
use talm_shared::pki::{self, Authority};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A client certificate and key for `cluster`, signed by the agent CA `ca`, valid from a
/// minute before `now` (Unix seconds) for a day. `serial` must differ per certificate.
pub fn issue_identity(
    ca: &Authority,
    cluster: &str,
    serial: u64,
    now: i64,
) -> anyhow::Result<Identity> {
    let (key, csr) = pki::agent_key_and_csr()?;
    let mut serial = serial.to_be_bytes().to_vec();
    serial.insert(0, 0x42);
    let not_before: SystemTime = from_unix(now - 60);
    let cert = pki::sign_agent_csr(
        ca,
        &csr,
        cluster,
        not_before,
        from_unix(now + 86_400),
        &serial,
    )?;
    Ok(Identity::from_pem(cert.into_bytes(), key.into_bytes())?)
}

/// One open agent session.
#[derive(Debug)]
pub struct AgentSession {
    /// The cluster the certificate names.
    pub cluster: String,
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<v1::HubMessage>,
    heartbeat: tokio::time::Interval,
}

impl AgentSession {
    /// Connects, says `Hello` (with the task ids the agent runs and has finished, as the real
    /// agent does from its journal) and waits for the hub's `Welcome`.
    pub async fn open(
        target: &HubTarget,
        hub_ca: &[u8],
        id: &Identity,
        conn: &ConnConfig,
        active_task_ids: Vec<String>,
        finished_task_ids: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut client = session_client(target, hub_ca, id, conn).await?;
        let (tx, rx) = mpsc::channel::<AgentMessage>(16);
        let cluster = id.info.cluster.clone();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(v1::Hello {
                agent_version: "loadgen".into(),
                cluster: cluster.clone(),
                facts: Some(v1::NodeFacts::default()),
                active_task_ids,
                finished_task_ids,
            })),
        })
        .await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("{cluster}: session closed before Welcome"))?;
        let Some(hub_message::Msg::Welcome(w)) = first.msg else {
            anyhow::bail!("{cluster}: the first hub message is not a Welcome");
        };
        let every = Duration::from_secs(u64::from(w.heartbeat_interval_seconds.max(1)));
        let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        Ok(Self {
            cluster,
            tx,
            inbound,
            heartbeat,
        })
    }

    /// The next message from the hub, sending heartbeats while waiting. `None` when the
    /// session ended (closed by the hub, broken, or a heartbeat could not be sent).
    /// Cancel-safe: it can be a branch of a `select!`.
    pub async fn recv(&mut self) -> Option<v1::HubMessage> {
        loop {
            tokio::select! {
                _ = self.heartbeat.tick() => {
                    let hb = AgentMessage {
                        msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat {})),
                    };
                    if self.tx.send(hb).await.is_err() {
                        return None;
                    }
                }
                m = self.inbound.message() => return m.ok().flatten(),
            }
        }
    }

    /// Sends one journaled task report (accepted or result) with the next sequence number of
    /// `seq` (kept by the caller across sessions). False when the session is gone.
    pub async fn report(&self, seq: &mut u64, task_id: &str, body: task_report::Body) -> bool {
        *seq += 1;
        self.send_report(*seq, task_id, body).await
    }

    /// Sends one progress report (best effort: sequence number 0). False when the session is
    /// gone.
    pub async fn progress(&self, task_id: &str, progress: v1::TaskProgress) -> bool {
        self.send_report(0, task_id, task_report::Body::Progress(progress))
            .await
    }

    async fn send_report(&self, seq: u64, task_id: &str, body: task_report::Body) -> bool {
        let r = v1::TaskReport {
            seq,
            task_id: task_id.to_string(),
            cluster: self.cluster.clone(),
            body: Some(body),
        };
        self.tx
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Report(r)),
            })
            .await
            .is_ok()
    }
}

/// `Accepted` for a task of `kind`.
pub fn accepted(kind: i32) -> task_report::Body {
    task_report::Body::Accepted(v1::TaskAccepted { kind })
}

/// A final `Succeeded`.
pub fn succeeded() -> task_report::Body {
    task_report::Body::Result(v1::TaskResult {
        outcome: v1::TaskOutcome::Succeeded as i32,
        message: String::new(),
    })
}

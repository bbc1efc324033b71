//! Tasks over the channel: SpokeAgent spec → assignment → journaled reports → SpokeAgent status
//! (transitions only), exactly once across hub and agent restarts, cancellation, and the
//! heartbeat timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use talm_agent::journal::TaskState;
use talm_gateway::store::SpokeAgentStore;
use talm_proto::v1::{self, AgentMessage, agent_message};
use talm_shared::api::spokeagent::SpokeAgentSpec;
use talm_shared::clock::{Clock, SystemClock};
use tokio_stream::wrappers::ReceiverStream;

async fn state_of(hub: &Hub, cluster: &str) -> Option<String> {
    hub.status(cluster)
        .await
        .and_then(|s| s.check_space)
        .map(|r| r.state)
}

/// How many status writes moved `cluster`'s check-space task `id` into `state`.
fn transitions_into(hub: &Hub, cluster: &str, id: &str, state: &str) -> usize {
    let writes = hub.agents.writes.lock().unwrap();
    let mut prev: Option<String> = None;
    let mut n = 0;
    for (c, s) in writes.iter().filter(|(c, _)| c == cluster) {
        let _ = c;
        let cur = s
            .check_space
            .as_ref()
            .filter(|r| r.id == id)
            .map(|r| r.state.clone());
        if cur.as_deref() == Some(state) && prev.as_deref() != Some(state) {
            n += 1;
        }
        prev = cur;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_space_runs_and_only_transitions_reach_status() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        RunningAgent::host_runner(&root),
        &root,
    );
    eventually(10, "connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;

    hub.put_check_space("sno-a", "cs-1", "1").await;
    eventually(10, "cs-1 succeeded", async || {
        state_of(&hub, "sno-a").await.as_deref() == Some("Succeeded")
    })
    .await;
    let st = hub.status("sno-a").await.unwrap().check_space.unwrap();
    assert_eq!(st.id, "cs-1");
    assert!(
        st.message
            .contains("GiB available under the 85% image-GC threshold"),
        "{}",
        st.message
    );

    // More than the disk can hold: the TALM failure message, as UnrecoverableError.
    hub.put_check_space("sno-a", "cs-2", "1000000").await;
    eventually(10, "cs-2 failed", async || {
        state_of(&hub, "sno-a").await.as_deref() == Some("UnrecoverableError")
    })
    .await;
    let st = hub.status("sno-a").await.unwrap().check_space.unwrap();
    assert!(
        st.message.starts_with("not enough space for precaching"),
        "{}",
        st.message
    );

    // Each state was written once; progress reports never caused a write of their own.
    assert_eq!(transitions_into(&hub, "sno-a", "cs-1", "Succeeded"), 1);
    assert_eq!(
        transitions_into(&hub, "sno-a", "cs-2", "UnrecoverableError"),
        1
    );
    let writes = hub.agents.writes.lock().unwrap().clone();
    for pair in writes.windows(2) {
        assert_ne!(pair[0], pair[1], "identical consecutive status writes");
    }
    // /agents has both tasks; the journal has both, acknowledged.
    let v: serde_json::Value = serde_json::from_str(&hub.http_get("/agents").await.1).unwrap();
    let tasks = v[0]["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0]["kind"], "check-space");
    eventually(5, "all acked", async || {
        a.agent.journal().pending_after(0).is_empty()
    })
    .await;
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_survives_a_hub_restart_mid_task_exactly_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let state = dir.path().join("hub");
    let hub = Hub::start(&state, &pki, fast_config()).await;
    let addr = hub.addr;
    let url = hub.url();
    let root = host_root(dir.path());
    let gate = GateRunner::new();
    let a = RunningAgent::start(
        agent_config(
            &url,
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        gate.arc(),
        &root,
    );
    eventually(10, "connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;
    hub.put_check_space("sno-a", "t-1", "1").await;
    eventually(10, "task started", async || gate.starts("t-1") == 1).await;
    eventually(10, "hub saw it start", async || {
        matches!(
            state_of(&hub, "sno-a").await.as_deref(),
            Some("Starting" | "Active")
        )
    })
    .await;

    // The hub goes away mid-task; the task finishes while it is down.
    hub.stop().await;
    gate.release(1);
    eventually(10, "finished locally", async || {
        a.agent
            .journal()
            .task("t-1")
            .is_some_and(|t| t.state == TaskState::Succeeded)
    })
    .await;
    assert!(
        !a.agent.journal().pending_after(0).is_empty(),
        "the result waits for the hub"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new hub process on the same state dir and address.
    let hub = Hub::start_on(&state, &pki, fast_config(), addr, Duration::from_secs(3600)).await;
    eventually(15, "result delivered", async || {
        state_of(&hub, "sno-a").await.as_deref() == Some("Succeeded")
    })
    .await;
    eventually(5, "acknowledged", async || {
        a.agent.journal().pending_after(0).is_empty()
    })
    .await;
    // Re-synced, not re-run: the hub restart did not start the task again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gate.starts("t-1"), 1);
    assert_eq!(gate.effects("t-1"), 1);
    assert_eq!(transitions_into(&hub, "sno-a", "t-1", "Succeeded"), 1);
    assert!(hub.status("sno-a").await.unwrap().connected);
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_survives_an_agent_restart_mid_task_exactly_once() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let gate = GateRunner::new();
    let cfg = agent_config(
        &hub.url(),
        &pki,
        &dir.path().join("a"),
        Some(hub.token("sno-a").await),
    );
    let a = RunningAgent::start(cfg.clone(), gate.arc(), &root);
    eventually(10, "connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;
    hub.put_check_space("sno-a", "t-1", "1").await;
    eventually(10, "task started", async || gate.starts("t-1") == 1).await;

    // The agent process dies mid-task (its runner is dropped with it).
    a.stop().await.unwrap();
    assert_eq!(gate.effects("t-1"), 0);
    // It comes back with the same state dir (the token is spent; the identity file is used).
    let mut cfg2 = cfg.clone();
    cfg2.bootstrap_token = None;
    let a = RunningAgent::start(cfg2.clone(), gate.arc(), &root);
    eventually(10, "resumed", async || gate.starts("t-1") == 2).await;
    gate.release(1);
    eventually(10, "succeeded at the hub", async || {
        state_of(&hub, "sno-a").await.as_deref() == Some("Succeeded")
    })
    .await;
    assert_eq!(gate.effects("t-1"), 1);
    eventually(5, "acknowledged", async || {
        a.agent.journal().pending_after(0).is_empty()
    })
    .await;

    // Another restart after completion: nothing runs again, nothing is reported twice.
    a.stop().await.unwrap();
    let a = RunningAgent::start(cfg2, gate.arc(), &root);
    eventually(10, "reconnected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gate.starts("t-1"),
        2,
        "a finished task is never started again"
    );
    assert_eq!(gate.effects("t-1"), 1);
    assert_eq!(transitions_into(&hub, "sno-a", "t-1", "Succeeded"), 1);
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_task_from_the_spec_cancels_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let hub = Hub::start(&dir.path().join("hub"), &pki, fast_config()).await;
    let root = host_root(dir.path());
    let gate = GateRunner::new();
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        gate.arc(),
        &root,
    );
    eventually(10, "connected", async || {
        hub.gw.registry.session("sno-a").is_some()
    })
    .await;
    hub.put_check_space("sno-a", "t-1", "1").await;
    eventually(10, "task started", async || gate.starts("t-1") == 1).await;
    hub.agents
        .put_spec("sno-a", &SpokeAgentSpec::default())
        .await
        .unwrap();
    eventually(10, "cancelled", async || {
        a.agent
            .journal()
            .task("t-1")
            .is_some_and(|t| t.state == TaskState::Cancelled)
    })
    .await;
    gate.release(1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gate.effects("t-1"), 0);
    eventually(5, "acknowledged", async || {
        a.agent.journal().pending_after(0).is_empty()
    })
    .await;
    let v: serde_json::Value =
        serde_json::from_str(&hub.http_get("/agents/sno-a").await.1).unwrap();
    assert_eq!(v["tasks"][0]["state"], "Cancelled");
    a.stop().await.unwrap();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_marked_disconnected_after_the_heartbeat_timeout() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let mut cfg = fast_config();
    cfg.heartbeat_timeout = Duration::from_secs(1);
    let hub = Hub::start(&dir.path().join("hub"), &pki, cfg).await;
    let now = SystemClock.unix();
    let id = hub.issue_identity(&pki, "sno-q", now - 60, now + 600).await;
    let target = talm_agent::conn::HubTarget::parse(&hub.url(), None).unwrap();
    let mut client = talm_agent::conn::session_client(
        &target,
        pki.hub_ca_pem.as_bytes(),
        &id,
        &Default::default(),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            agent_version: "silent".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(inbound.message().await.unwrap().is_some(), "welcome");
    eventually(5, "connected", async || {
        hub.status("sno-q").await.is_some_and(|s| s.connected)
    })
    .await;
    // Say nothing (the stream stays open): the hub ends it and marks the agent disconnected.
    let err = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.message(), "heartbeat timeout");
    eventually(5, "disconnected", async || {
        hub.status("sno-q")
            .await
            .is_some_and(|s| !s.connected && s.last_seen.is_some())
    })
    .await;
    let m = hub.http_get("/metrics").await.1;
    assert_eq!(
        metric(&m, "talm_gateway_heartbeat_timeouts_total"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "talm_gateway_agents_connected"), 0.0);
    drop(tx);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_keeps_persisted_status_and_does_not_reassign_finished_tasks() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let state = dir.path().join("hub");
    let hub = Hub::start(&state, &pki, fast_config()).await;
    let root = host_root(dir.path());
    let a = RunningAgent::start(
        agent_config(
            &hub.url(),
            &pki,
            &dir.path().join("a"),
            Some(hub.token("sno-a").await),
        ),
        RunningAgent::host_runner(&root),
        &root,
    );
    hub.put_check_space("sno-a", "cs-1", "1").await;
    eventually(10, "succeeded", async || {
        state_of(&hub, "sno-a").await.as_deref() == Some("Succeeded")
    })
    .await;
    let identity = a.agent.identity().unwrap();
    a.stop().await.unwrap();
    eventually(10, "disconnected", async || {
        hub.status("sno-a").await.is_some_and(|s| !s.connected)
    })
    .await;
    hub.stop().await;

    // A new hub that has not heard from the agent yet leaves the status alone...
    let hub = Hub::start(&state, &pki, fast_config()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(state_of(&hub, "sno-a").await.as_deref(), Some("Succeeded"));
    assert!(
        hub.agents.writes.lock().unwrap().is_empty(),
        "no writes for unseen clusters"
    );
    // ...and an agent that forgot its journal is not given the finished task again.
    let target = talm_agent::conn::HubTarget::parse(&hub.url(), None).unwrap();
    let mut client = talm_agent::conn::session_client(
        &target,
        pki.hub_ca_pem.as_bytes(),
        &identity,
        &Default::default(),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(v1::Hello {
            agent_version: "amnesiac".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        welcome.msg,
        Some(v1::hub_message::Msg::Welcome(_))
    ));
    let next = tokio::time::timeout(Duration::from_millis(700), inbound.message()).await;
    assert!(next.is_err(), "no assignment expected, got {next:?}");
    eventually(5, "connected", async || {
        hub.status("sno-a").await.is_some_and(|s| s.connected)
    })
    .await;
    assert_eq!(state_of(&hub, "sno-a").await.as_deref(), Some("Succeeded"));
    drop(tx);
    hub.stop().await;
}

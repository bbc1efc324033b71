//! talm.agent.v1 messages as each side receives them. The first byte picks the side (even:
//! the gateway receiving `AgentMessage`s, odd: the agent receiving `HubMessage`s); the rest is
//! a session: messages framed as a 2-byte big-endian length and that many bytes. Each is
//! decoded with prost (refused over `MAX_MESSAGE_BYTES`, as tonic's limit does), validated,
//! and then handled as the receiver does: on the gateway, the first valid Hello registers the
//! session and every valid report is applied to the registry, whose status and views are then
//! composed; on the agent, an assignment's `params_json` is parsed as that task kind parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use talm_gateway::registry::{Registry, SessionHandle};
use talm_proto::v1::{AgentMessage, HubMessage, TaskKind, agent_message, hub_message};
use talm_proto::{MAX_MESSAGE_BYTES, validate};

/// Splits the session into frames.
fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        data = &rest[take..];
    }
    out
}

fn gateway_side(msgs: &[&[u8]]) {
    let registry = Registry::default();
    let now = 1_796_529_600;
    let mut cluster: Option<String> = None;
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let (kill, _kill_rx) = tokio::sync::watch::channel(None);
    for (i, bytes) in msgs.iter().enumerate() {
        let Ok(msg) = AgentMessage::decode(*bytes) else {
            continue;
        };
        if validate::agent_message(&msg).is_err() {
            continue;
        }
        match (&cluster, msg.msg) {
            (None, Some(agent_message::Msg::Hello(hello))) => {
                let handle = SessionHandle {
                    id: 1,
                    serial: "01".into(),
                    enrolled_at: now,
                    tx: tx.clone(),
                    kill: kill.clone(),
                    peer: None,
                };
                registry.seed(&hello.cluster, None, None);
                let _ = registry.connect(&hello.cluster, handle, &hello, now);
                cluster = Some(hello.cluster.clone());
            }
            (Some(c), Some(agent_message::Msg::Report(r))) => {
                // Every other report as one of a task a PrecacheBudget holds (the gateway's
                // held path keeps a pre-cache `Starting`).
                let _ = registry.apply_report_held(c, &r, now + i as i64, i % 2 == 1);
                let _ = registry.is_final(c, &r.task_id);
            }
            _ => {}
        }
    }
    if let Some(c) = cluster {
        let _ = registry.compose_status(&c, None);
        let _ = registry.views();
        let _ = registry.task_stats();
        let _ = registry.disconnect(&c, 1, now + 1);
        let _ = registry.compose_status(&c, None);
    }
}

fn agent_side(msgs: &[&[u8]]) {
    for bytes in msgs {
        let Ok(msg) = HubMessage::decode(*bytes) else {
            continue;
        };
        if validate::hub_message(&msg).is_err() {
            continue;
        }
        if let Some(hub_message::Msg::Assign(a)) = msg.msg {
            match TaskKind::try_from(a.kind) {
                Ok(TaskKind::Precache) => {
                    if let Ok(spec) = serde_json::from_str::<talm_shared::api::cgu::PrecachingSpec>(
                        &a.params_json,
                    ) {
                        let _ = talm_agent::precache::spec::validate(&spec);
                        let _ = talm_agent::precache::spec::hash(&spec);
                    }
                }
                Ok(TaskKind::ApproveInstallPlans) => {
                    let _ = talm_agent::installplans::parse_params(&a.params_json);
                }
                Ok(_) | Err(_) => {
                    let _ = serde_json::from_str::<serde_json::Value>(&a.params_json);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, rest)) = data.split_first() else {
        return;
    };
    let msgs: Vec<&[u8]> = frames(rest)
        .into_iter()
        .filter(|m| m.len() <= MAX_MESSAGE_BYTES)
        .collect();
    if side % 2 == 0 {
        gateway_side(&msgs);
    } else {
        agent_side(&msgs);
    }
});

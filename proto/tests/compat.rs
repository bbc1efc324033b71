//! Wire compatibility of `talm.agent.v1`.
//!
//! 1. Schema: the current .proto must be a superset of the frozen baseline
//!    (`tests/fixtures/agent_v1_baseline.proto`): every message, field (same number, type, label
//!    and name), enum value and RPC of the baseline still exists. Refreeze the baseline only when
//!    a release ships a new shape.
//! 2. Wire: an older agent's messages (hand-written prost structs with fewer fields) decode in
//!    the current code, and messages from a newer peer (with fields this build does not know)
//!    decode here with the known fields intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use talm_proto::v1;

fn compile(dir: &Path, file: &str) -> FileDescriptorSet {
    protox::compile([file], [dir]).unwrap()
}

type Fields = BTreeMap<(String, i32), (String, i32, i32)>;

fn collect(
    prefix: &str,
    m: &DescriptorProto,
    fields: &mut Fields,
    enums: &mut BTreeMap<String, i32>,
) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        fields.insert(
            (name.clone(), f.number()),
            (
                f.name().to_string(),
                f.r#type.unwrap_or(0),
                f.label.unwrap_or(0),
            ),
        );
    }
    for e in &m.enum_type {
        for v in &e.value {
            enums.insert(format!("{name}.{}.{}", e.name(), v.name()), v.number());
        }
    }
    for n in &m.nested_type {
        collect(&name, n, fields, enums);
    }
}

fn shape(set: &FileDescriptorSet) -> (Fields, BTreeMap<String, i32>, Vec<String>) {
    let mut fields = Fields::new();
    let mut enums = BTreeMap::new();
    let mut rpcs = Vec::new();
    for file in &set.file {
        let pkg = file.package().to_string();
        for m in &file.message_type {
            collect(&pkg, m, &mut fields, &mut enums);
        }
        for e in &file.enum_type {
            for v in &e.value {
                enums.insert(format!("{pkg}.{}.{}", e.name(), v.name()), v.number());
            }
        }
        for s in &file.service {
            for m in &s.method {
                rpcs.push(format!(
                    "{pkg}.{}/{}({})->({}) cs={} ss={}",
                    s.name(),
                    m.name(),
                    m.input_type(),
                    m.output_type(),
                    m.client_streaming(),
                    m.server_streaming()
                ));
            }
        }
    }
    (fields, enums, rpcs)
}

#[test]
fn current_schema_is_a_superset_of_the_baseline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = compile(&root.join("tests/fixtures"), "agent_v1_baseline.proto");
    let cur = compile(root, "talm/agent/v1/agent.proto");
    let (bf, be, br) = shape(&base);
    let (cf, ce, cr) = shape(&cur);
    assert!(!bf.is_empty() && !be.is_empty() && !br.is_empty());
    for (key, want) in &bf {
        assert_eq!(
            cf.get(key),
            Some(want),
            "field {key:?} changed or was removed"
        );
    }
    for (key, want) in &be {
        assert_eq!(
            ce.get(key),
            Some(want),
            "enum value {key} changed or was removed"
        );
    }
    for rpc in &br {
        assert!(cr.contains(rpc), "rpc {rpc} changed or was removed");
    }
}

#[test]
fn the_check_detects_a_renumbered_field() {
    // The superset check is only worth something if it fails on a breaking edit.
    let dir = tempfile_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("talm/agent/v1/agent.proto")).unwrap();
    let broken = text.replace("string agent_version = 1;", "string agent_version = 9;");
    assert_ne!(text, broken);
    std::fs::write(dir.join("broken.proto"), broken).unwrap();
    let (bf, ..) = shape(&compile(
        &root.join("tests/fixtures"),
        "agent_v1_baseline.proto",
    ));
    let (cf, ..) = shape(&compile(&dir, "broken.proto"));
    let key = ("talm.agent.v1.Hello".to_string(), 1);
    assert!(bf.contains_key(&key));
    assert_ne!(cf.get(&key), bf.get(&key));
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("talm-proto-compat-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What an older agent (before `finished_task_ids` and facts existed) would have sent.
#[derive(Clone, PartialEq, prost::Message)]
struct OldHello {
    #[prost(string, tag = "1")]
    agent_version: String,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(string, repeated, tag = "4")]
    active_task_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OldAgentMessage {
    #[prost(oneof = "OldMsg", tags = "1, 2")]
    msg: Option<OldMsg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum OldMsg {
    #[prost(message, tag = "1")]
    Hello(OldHello),
    #[prost(message, tag = "2")]
    Heartbeat(OldHeartbeat),
}

#[derive(Clone, PartialEq, prost::Message)]
struct OldHeartbeat {}

/// An older agent's view of TaskAssignment: no deadline field.
#[derive(Clone, PartialEq, prost::Message)]
struct OldAssignment {
    #[prost(string, tag = "1")]
    task_id: String,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    params_json: String,
}

/// A newer hub's TaskAssignment, with a field this build does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct NewerAssignment {
    #[prost(string, tag = "1")]
    task_id: String,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    params_json: String,
    #[prost(int64, tag = "4")]
    deadline_unix: i64,
    #[prost(string, tag = "99")]
    priority_class: String,
}

#[test]
fn an_older_agents_hello_decodes_and_validates() {
    let old = OldAgentMessage {
        msg: Some(OldMsg::Hello(OldHello {
            agent_version: "0.0.9".into(),
            cluster: String::new(),
            active_task_ids: vec!["t-1".into()],
        })),
    };
    let cur = v1::AgentMessage::decode(old.encode_to_vec().as_slice()).unwrap();
    talm_proto::validate::agent_message(&cur).unwrap();
    let Some(v1::agent_message::Msg::Hello(h)) = cur.msg else {
        panic!("not a hello")
    };
    assert_eq!(h.agent_version, "0.0.9");
    assert_eq!(h.active_task_ids, vec!["t-1".to_string()]);
    assert!(h.facts.is_none() && h.finished_task_ids.is_empty());
}

#[test]
fn an_older_agent_decodes_a_current_assignment() {
    let cur = v1::TaskAssignment {
        task_id: "ns/cgu/uid/precache".into(),
        kind: v1::TaskKind::CheckSpace as i32,
        params_json: "{\"spaceRequired\":\"35\"}".into(),
        deadline_unix: 1_900_000_000,
        ..Default::default()
    };
    let old = OldAssignment::decode(cur.encode_to_vec().as_slice()).unwrap();
    assert_eq!(old.task_id, cur.task_id);
    assert_eq!(old.kind, cur.kind);
    assert_eq!(old.params_json, cur.params_json);
}

#[test]
fn current_code_decodes_a_newer_hubs_assignment_ignoring_unknown_fields() {
    let newer = NewerAssignment {
        task_id: "t-2".into(),
        kind: v1::TaskKind::Backup as i32,
        params_json: "{}".into(),
        deadline_unix: 42,
        priority_class: "high".into(),
    };
    let cur = v1::TaskAssignment::decode(newer.encode_to_vec().as_slice()).unwrap();
    assert_eq!(cur.task_id, "t-2");
    assert_eq!(cur.kind, v1::TaskKind::Backup as i32);
    assert_eq!(cur.deadline_unix, 42);
    let msg = v1::HubMessage {
        msg: Some(v1::hub_message::Msg::Assign(cur)),
    };
    talm_proto::validate::hub_message(&msg).unwrap();
}

#[test]
fn a_newer_enum_value_is_rejected_cleanly_not_guessed() {
    let msg = v1::HubMessage {
        msg: Some(v1::hub_message::Msg::Assign(v1::TaskAssignment {
            task_id: "t-3".into(),
            kind: 77,
            params_json: String::new(),
            deadline_unix: 0,
            ..Default::default()
        })),
    };
    let err = talm_proto::validate::hub_message(&msg).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("assign.kind has unknown value 77"),
        "{}",
        err.message()
    );
}

//! Property tests of decoding and validation: arbitrary bytes never panic the decoder, and
//! oversized fields, unknown enum values and missing ids each give a clean `InvalidArgument`
//! naming the field, while well-formed messages pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use prost::Message;
use talm_proto::v1::{self, agent_message, hub_message, task_report};
use talm_proto::validate::{self, MAX_ID_BYTES, MAX_TEXT_BYTES};
use tonic::Code;

fn report(seq: u64, task_id: String, body: task_report::Body) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(agent_message::Msg::Report(v1::TaskReport {
            seq,
            task_id,
            cluster: String::new(),
            body: Some(body),
        })),
    }
}

fn id_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9/._-]{1,200}"
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = v1::AgentMessage::decode(bytes.as_slice()) {
            let _ = validate::agent_message(&m);
        }
        if let Ok(m) = v1::HubMessage::decode(bytes.as_slice()) {
            let _ = validate::hub_message(&m);
        }
    }

    #[test]
    fn well_formed_results_pass(seq in 1u64.., id in id_strategy(), outcome in 1i32..=5, msg in ".{0,200}") {
        let m = report(seq, id, task_report::Body::Result(v1::TaskResult { outcome, message: msg }));
        prop_assert!(validate::agent_message(&m).is_ok());
        // And they survive an encode/decode round trip unchanged.
        let back = v1::AgentMessage::decode(m.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn oversized_task_ids_are_rejected(extra in 1usize..2000) {
        let id = "x".repeat(MAX_ID_BYTES + extra);
        let m = report(1, id, task_report::Body::Accepted(v1::TaskAccepted { kind: 1 }));
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert_eq!(err.code(), Code::InvalidArgument);
        prop_assert!(err.message().starts_with("report.task_id is "), "{}", err.message());
    }

    #[test]
    fn oversized_messages_are_rejected(extra in 1usize..10_000, id in id_strategy()) {
        let text = "m".repeat(MAX_TEXT_BYTES + extra);
        let m = report(3, id, task_report::Body::Result(v1::TaskResult { outcome: 1, message: text }));
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert_eq!(err.code(), Code::InvalidArgument);
        prop_assert!(err.message().contains("report.result.message"), "{}", err.message());
    }

    #[test]
    fn unknown_enum_values_are_rejected(kind in prop_oneof![i32::MIN..0, 4..i32::MAX], id in id_strategy()) {
        let m = report(1, id.clone(), task_report::Body::Accepted(v1::TaskAccepted { kind }));
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert_eq!(err.code(), Code::InvalidArgument);
        prop_assert!(err.message().contains("report.accepted.kind has unknown value"), "{}", err.message());
        let outcome = kind;
        let m = report(1, id.clone(), task_report::Body::Result(v1::TaskResult { outcome: if (1..=5).contains(&outcome) { 6 } else { outcome }, message: String::new() }));
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert!(err.message().contains("report.result.outcome has unknown value"), "{}", err.message());
        let h = v1::HubMessage { msg: Some(hub_message::Msg::Assign(v1::TaskAssignment { task_id: id, kind, params_json: String::new(), deadline_unix: 0, ..Default::default() })) };
        let err = validate::hub_message(&h).unwrap_err();
        prop_assert!(err.message().contains("assign.kind has unknown value"), "{}", err.message());
    }

    #[test]
    fn missing_ids_are_rejected(seq in 0u64..100, which in 0usize..4) {
        let (m, field) = match which {
            0 => (report(seq, String::new(), task_report::Body::Accepted(v1::TaskAccepted { kind: 1 })), "report.task_id is missing"),
            1 => (report(0, String::new(), task_report::Body::Progress(v1::TaskProgress::default())), "report.task_id is missing"),
            2 => (v1::AgentMessage { msg: Some(agent_message::Msg::Report(v1::TaskReport { seq, task_id: "t".into(), cluster: String::new(), body: None })) }, "report.body is missing"),
            _ => (v1::AgentMessage { msg: None }, "message is empty"),
        };
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert_eq!(err.code(), Code::InvalidArgument);
        prop_assert!(err.message().starts_with(field), "{} vs {}", err.message(), field);
        let h = v1::HubMessage { msg: Some(hub_message::Msg::Cancel(v1::TaskCancel { task_id: String::new() })) };
        prop_assert!(validate::hub_message(&h).unwrap_err().message().starts_with("cancel.task_id is missing"));
    }

    #[test]
    fn journaled_reports_need_a_seq(id in id_strategy()) {
        let m = report(0, id, task_report::Body::Result(v1::TaskResult { outcome: 1, message: String::new() }));
        let err = validate::agent_message(&m).unwrap_err();
        prop_assert!(err.message().starts_with("report.seq is missing"), "{}", err.message());
    }
}

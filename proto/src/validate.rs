//! Validation of received messages. Decoding is prost's job; this module checks what prost
//! cannot: required ids, size limits, and enum values this build does not know (proto3 keeps
//! them as raw integers). Every failure is a [`tonic::Status`] naming the field.

use tonic::Status;

use crate::v1::{
    AgentMessage, HubMessage, TaskKind, TaskOutcome, agent_message, hub_message, task_report,
};

/// Longest task id (bytes).
pub const MAX_ID_BYTES: usize = 256;
/// Longest free-text message (bytes).
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest short string (versions, cluster names).
pub const MAX_SHORT_BYTES: usize = 253;
/// Most task ids in one Hello list.
pub const MAX_IDS: usize = 256;
/// Most ostree deployments in one Hello.
pub const MAX_DEPLOYMENTS: usize = 16;
/// Largest `params_json` (bytes).
pub const MAX_PARAMS_BYTES: usize = 32 * 1024;
/// Most registries in one progress report.
pub const MAX_REGISTRIES: usize = 64;

fn too_long(field: &str, len: usize, max: usize) -> Status {
    Status::invalid_argument(format!("{field} is {len} bytes, the limit is {max}"))
}

fn check_len(field: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        return Err(too_long(field, s.len(), max));
    }
    Ok(())
}

/// Checks a task id: present, bounded, printable ASCII without spaces.
pub fn check_task_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is missing")));
    }
    check_len(field, id, MAX_ID_BYTES)?;
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field} must be printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// Checks a [`TaskKind`] value: known to this build and not `UNSPECIFIED`.
pub fn check_kind(field: &str, raw: i32) -> Result<TaskKind, Status> {
    match TaskKind::try_from(raw) {
        Ok(TaskKind::Unspecified) => Err(Status::invalid_argument(format!("{field} is missing"))),
        Ok(k) => Ok(k),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field} has unknown value {raw}"
        ))),
    }
}

/// Checks a [`TaskOutcome`] value: known to this build and not `UNSPECIFIED`.
pub fn check_outcome(field: &str, raw: i32) -> Result<TaskOutcome, Status> {
    match TaskOutcome::try_from(raw) {
        Ok(TaskOutcome::Unspecified) => {
            Err(Status::invalid_argument(format!("{field} is missing")))
        }
        Ok(o) => Ok(o),
        Err(_) => Err(Status::invalid_argument(format!(
            "{field} has unknown value {raw}"
        ))),
    }
}

/// Validates a message received by the hub.
pub fn agent_message(msg: &AgentMessage) -> Result<(), Status> {
    match &msg.msg {
        None => Err(Status::invalid_argument(
            "message is empty (no hello, heartbeat or report)",
        )),
        Some(agent_message::Msg::Hello(h)) => {
            check_len("hello.agent_version", &h.agent_version, MAX_SHORT_BYTES)?;
            check_len("hello.cluster", &h.cluster, MAX_SHORT_BYTES)?;
            for (name, ids) in [
                ("hello.active_task_ids", &h.active_task_ids),
                ("hello.finished_task_ids", &h.finished_task_ids),
            ] {
                if ids.len() > MAX_IDS {
                    return Err(Status::invalid_argument(format!(
                        "{name} has {} entries, the limit is {MAX_IDS}",
                        ids.len()
                    )));
                }
                for id in ids {
                    check_task_id(name, id)?;
                }
            }
            if let Some(f) = &h.facts {
                check_len(
                    "hello.facts.openshift_version",
                    &f.openshift_version,
                    MAX_SHORT_BYTES,
                )?;
                if f.deployments.len() > MAX_DEPLOYMENTS {
                    return Err(Status::invalid_argument(format!(
                        "hello.facts.deployments has {} entries, the limit is {MAX_DEPLOYMENTS}",
                        f.deployments.len()
                    )));
                }
                for d in &f.deployments {
                    check_len("hello.facts.deployments.osname", &d.osname, MAX_SHORT_BYTES)?;
                    check_len(
                        "hello.facts.deployments.checksum",
                        &d.checksum,
                        MAX_SHORT_BYTES,
                    )?;
                }
            }
            Ok(())
        }
        Some(agent_message::Msg::Heartbeat(_)) => Ok(()),
        Some(agent_message::Msg::Report(r)) => {
            check_task_id("report.task_id", &r.task_id)?;
            check_len("report.cluster", &r.cluster, MAX_SHORT_BYTES)?;
            match &r.body {
                None => Err(Status::invalid_argument(
                    "report.body is missing (accepted, progress or result)",
                )),
                Some(task_report::Body::Accepted(a)) => {
                    check_kind("report.accepted.kind", a.kind).map(|_| ())
                }
                Some(task_report::Body::Progress(p)) => {
                    if r.seq != 0 {
                        return Err(Status::invalid_argument(
                            "report.seq must be 0 for progress (progress is best effort)",
                        ));
                    }
                    check_len("report.progress.message", &p.message, MAX_TEXT_BYTES)?;
                    if p.registries.len() > MAX_REGISTRIES {
                        return Err(Status::invalid_argument(format!(
                            "report.progress.registries has {} entries, the limit is {MAX_REGISTRIES}",
                            p.registries.len()
                        )));
                    }
                    for h in &p.registries {
                        check_len("report.progress.registries", h, MAX_SHORT_BYTES)?;
                        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) {
                            return Err(Status::invalid_argument(
                                "report.progress.registries entries must be non-empty printable ASCII without spaces",
                            ));
                        }
                    }
                    if p.total > 0 && p.done > p.total {
                        return Err(Status::invalid_argument(format!(
                            "report.progress.done ({}) is more than report.progress.total ({})",
                            p.done, p.total
                        )));
                    }
                    Ok(())
                }
                Some(task_report::Body::Result(res)) => {
                    check_outcome("report.result.outcome", res.outcome)?;
                    check_len("report.result.message", &res.message, MAX_TEXT_BYTES)
                }
            }
            .and_then(|()| match &r.body {
                Some(task_report::Body::Accepted(_)) | Some(task_report::Body::Result(_))
                    if r.seq == 0 =>
                {
                    Err(Status::invalid_argument(
                        "report.seq is missing (accepted and result reports are journaled)",
                    ))
                }
                _ => Ok(()),
            })
        }
    }
}

/// Validates a message received by the agent.
pub fn hub_message(msg: &HubMessage) -> Result<(), Status> {
    match &msg.msg {
        None => Err(Status::invalid_argument("message is empty")),
        Some(hub_message::Msg::Welcome(w)) => {
            check_len("welcome.cluster", &w.cluster, MAX_SHORT_BYTES)?;
            if w.heartbeat_interval_seconds == 0 {
                return Err(Status::invalid_argument(
                    "welcome.heartbeat_interval_seconds is missing",
                ));
            }
            Ok(())
        }
        Some(hub_message::Msg::Assign(a)) => {
            check_task_id("assign.task_id", &a.task_id)?;
            check_kind("assign.kind", a.kind)?;
            check_len("assign.params_json", &a.params_json, MAX_PARAMS_BYTES)
        }
        Some(hub_message::Msg::Cancel(c)) => check_task_id("cancel.task_id", &c.task_id),
        Some(hub_message::Msg::Update(u)) => check_task_id("update.task_id", &u.task_id),
        Some(hub_message::Msg::Ack(_)) => Ok(()),
    }
}

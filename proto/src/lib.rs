//! talm's hub↔agent wire contract: the gRPC package `talm.agent.v1`.
//!
//! - [`v1`]: the generated prost messages and tonic client/server (from
//!   `proto/talm/agent/v1/agent.proto`, compiled by the pure-Rust `protox`, so no `protoc`).
//! - [`validate`]: the hub- and agent-side checks every received message goes through: required
//!   ids, size limits and known enum values. Failures are clean [`tonic::Status`] errors naming
//!   the offending field.
//!
//! Compatibility (only additive changes) is checked by `tests/compat.rs` against a frozen
//! baseline of the .proto file, `tests/fixtures/agent_v1_baseline.proto`.

pub mod validate;

/// Generated code for `talm.agent.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod v1 {
    tonic::include_proto!("talm.agent.v1");
}

impl v1::TaskKind {
    /// The kind's name in logs, status and the agent's journal (`check-space`, `precache`,
    /// `backup`, `approve-install-plans`, `rollback`; `unspecified` for the zero value).
    pub fn display_name(self) -> &'static str {
        match self {
            v1::TaskKind::CheckSpace => "check-space",
            v1::TaskKind::Precache => "precache",
            v1::TaskKind::Backup => "backup",
            v1::TaskKind::ApproveInstallPlans => "approve-install-plans",
            v1::TaskKind::Rollback => "rollback",
            v1::TaskKind::Unspecified => "unspecified",
        }
    }
}

/// Largest encoded message either side accepts (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::v1::TaskKind;

    #[test]
    fn every_task_kind_has_its_own_display_name() {
        let names: Vec<&str> = (0..)
            .map_while(|n| TaskKind::try_from(n).ok())
            .map(TaskKind::display_name)
            .collect();
        assert_eq!(
            names,
            [
                "unspecified",
                "check-space",
                "precache",
                "backup",
                "approve-install-plans",
                "rollback"
            ]
        );
    }
}

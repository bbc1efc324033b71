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

/// Largest encoded message either side accepts (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

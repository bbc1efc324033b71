//! talm-agent: the on-node daemon of a single-node OpenShift cluster. It dials the hub over one
//! mTLS gRPC stream, runs the tasks the hub assigns, and never loses a report.
//!
//! # Layout
//! - [`args`]: the clap command line (`run`, `status`), every flag with an env fallback.
//! - [`journal`]: the durable journal (accepted tasks, their states, unacknowledged reports),
//!   written atomically and fsynced on every change.
//! - [`conn`]: TLS 1.3 connections to the hub, enrollment (bootstrap token + CSR) and rotation.
//! - [`host`]: host access behind a trait rooted at `--host-root` (statvfs, node facts).
//! - [`runner`]: task execution (`check-space`; other kinds are rejected until they land).
//! - [`daemon`]: the session loop, reconnects with jittered capped backoff, heartbeats,
//!   certificate rotation, and the connection state file read by `talm-agent status`.
//! - [`backoff`]: the reconnect backoff.
//! - [`status`]: `talm-agent status` rendering.

pub mod args;
pub mod backoff;
pub mod conn;
pub mod daemon;
pub mod host;
pub mod journal;
pub mod runner;
pub mod status;

/// This agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

//! talm-gateway: the hub end of the agent channel.
//!
//! # Layout
//! - [`store`]: the persistence seams, [`store::EnrollmentStore`] (bootstrap tokens and enrolled
//!   clusters) and [`store::SpokeAgentStore`] (SpokeAgent spec in, status out), and their
//!   file-backed implementations ([`store::file`]), which the standalone `talm-hub gateway`
//!   uses. `talm-hub run` serves the same gateway with Kubernetes-backed stores (Secrets and the
//!   SpokeAgent API), which live in talm-hub's `operator::agents`.
//! - [`enroll`]: bootstrap tokens, CSR signing, rotation and revocation.
//! - [`registry`]: the in-memory per-cluster agent state (connected, lastSeen, facts, task
//!   states, live progress) and its JSON views.
//! - [`tasks`]: SpokeAgent `spec` tasks → assignments (with the pre-cache scheduler's hold and
//!   cap); agent reports → TALM state names.
//! - [`status`]: the status writer: state transitions to SpokeAgent status, coalesced per
//!   cluster, durable before a report is acknowledged; and pre-cache transfer progress, written
//!   at most once per `--progress-write-interval` per agent.
//! - [`service`]: the tonic services (`Session`, `Renew`, `Enroll`): identity from the peer
//!   certificate SAN only, validation, heartbeat timeout.
//! - [`conns`]: limits on the agent port's connections: an idle timeout for connections with
//!   no open stream and a cap on connections without a verified client certificate (oldest
//!   evicted first).
//! - [`server`]: TLS 1.3 acceptor, gRPC server, spec/enrollment watchers, and the HTTP admin
//!   endpoint (`/agents`, `/agents/{cluster}`, `/metrics`, `/healthz`).
//! - [`metrics`]: prometheus-client metrics.
//! - [`cli`]: the clap arguments of `talm-hub gateway` and `talm-hub agents token|revoke|machineconfig`.
//! - [`machineconfig`]: the MachineConfig that installs talm-agent on a SNO node.

pub mod cli;
pub mod conns;
pub mod enroll;
pub mod machineconfig;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod service;
pub mod status;
pub mod store;
pub mod tasks;

pub use server::{Gateway, GatewayConfig};

//! talm's common vocabulary, shared by the hub, its pure engine and the agent.
//!
//! - [`api`]: the API types talm owns (`ClusterGroupUpgrade`, `PreCachingConfig`, `SpokeAgent`)
//!   and typed views of the RHACM objects the hub reads and writes.
//! - [`hex`]: lower-case hex encoding.
//! - [`task_state`]: the state of an agent task, under TALM's names, for the engine, the
//!   gateway and the agent.
//! - With the `runtime` feature, helpers for the two daemons: [`tls`] (rustls/ring, TLS 1.3,
//!   certificate identity), [`pki`] (rcgen CAs, CSRs, signing), [`fsutil`] (atomic durable
//!   writes), [`clock`] (the clock seam and a manual test clock) and [`telemetry`] (the logging
//!   flags and setup of both binaries).
//! - With the `yaml` feature (part of `runtime`; the engine turns it on alone), [`yaml`]:
//!   reading YAML/JSON documents from untrusted text with bounded alias expansion.
//!
//! With the `kube` feature the types also carry kube's `CustomResource`/`Resource` derives, so the
//! hub can use them with `kube::Api` and generate CRDs. Without it (the engine's build) they are
//! plain serde structs of the same shape: Cargo keeps the engine free of any kube dependency.
#![warn(missing_docs)]

pub mod api;
#[cfg(feature = "runtime")]
pub mod clock;
#[cfg(feature = "runtime")]
pub mod fsutil;
pub mod hex;
#[cfg(feature = "runtime")]
pub mod pki;
pub mod task_state;
#[cfg(feature = "runtime")]
pub mod telemetry;
#[cfg(feature = "runtime")]
pub mod tls;
#[cfg(feature = "yaml")]
pub mod yaml;

pub use k8s_openapi;

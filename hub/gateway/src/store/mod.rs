//! Persistence seams of the gateway. Both traits are async (boxed futures, so the gateway holds
//! them as `Arc<dyn ...>`): the gateway awaits them on its runtime. The file-backed
//! implementations ([`file`]) run their short blocking I/O on tokio's blocking pool; the
//! Kubernetes-backed ones (Secrets for enrollment, the SpokeAgent API for spec/status) live in
//! talm-hub (`talm-hub run`) and await its client directly.

pub mod file;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use talm_shared::api::spokeagent::{SpokeAgentSpec, SpokeAgentStatus};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the backing files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored document could not be parsed.
    #[error("{path}: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A name that cannot be stored (not a DNS-1123 label, or a malformed token id).
    #[error("{0}")]
    InvalidName(String),
    /// A stored object (e.g. a Kubernetes Secret) holds data that cannot be decoded; `what`
    /// names the object and the key.
    #[error("{what}: {message}")]
    BadData {
        /// The object and key, e.g. `Secret talm-system/talm-enrollment-sno1, key serials`.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The backing API (e.g. the Kubernetes API server) failed or kept conflicting.
    #[error("{what}: {message}")]
    Backend {
        /// The request, e.g. `replace Secret talm-system/talm-token-abc`.
        what: String,
        /// The error.
        message: String,
    },
    /// The object a write addresses does not exist (e.g. no SpokeAgent for the cluster yet).
    /// The status writer treats this as "nothing to persist", not as a failure.
    #[error("{0} does not exist")]
    NotFound(String),
}

/// The future of a store call.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A bootstrap token as stored: never the secret itself, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// Public token id (the part before the dot).
    pub id: String,
    /// The cluster the token enrolls.
    pub cluster: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Set when the token was used (it is then refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<i64>,
    /// SHA-256 of the CSR the token was used with. The same CSR may retry (the answer to the
    /// first attempt can be lost on a flaky link); any other CSR is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
}

/// What presenting a token did, decided by [`TokenRecord::consume`] (the same rules for every
/// store; the store only makes the write atomic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenUse {
    /// Refused.
    Rejected(TokenRejection),
    /// The same CSR retried an already consumed token: accepted, nothing to write.
    Retried(String),
    /// First use: accepted, and the record changed (persist it atomically, then answer).
    Consumed(String),
}

impl TokenRecord {
    /// Checks a presented token against this record (secret, expiry, single use with same-CSR
    /// retries) and marks it used on first use.
    pub fn consume(&mut self, secret_sha256: &str, csr_sha256: &str, now: i64) -> TokenUse {
        if !same_bytes(self.secret_sha256.as_bytes(), secret_sha256.as_bytes()) {
            return TokenUse::Rejected(TokenRejection::WrongSecret);
        }
        if now >= self.expires_at {
            return TokenUse::Rejected(TokenRejection::Expired);
        }
        if self.used_at.is_some() {
            return if self.used_by.as_deref() == Some(csr_sha256) {
                TokenUse::Retried(self.cluster.clone())
            } else {
                TokenUse::Rejected(TokenRejection::Used)
            };
        }
        self.used_at = Some(now);
        self.used_by = Some(csr_sha256.to_string());
        TokenUse::Consumed(self.cluster.clone())
    }
}

/// Compares without an early exit (the inputs are hashes, but keep timing flat anyway).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    /// No such token id.
    Unknown,
    /// The secret does not match.
    WrongSecret,
    /// Already used once.
    Used,
    /// Past its expiry.
    Expired,
}

impl TokenRejection {
    /// A short label, for metrics and errors.
    pub fn label(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown",
            TokenRejection::WrongSecret => "wrong_secret",
            TokenRejection::Used => "used",
            TokenRejection::Expired => "expired",
        }
    }
}

/// An enrolled cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// The cluster.
    pub cluster: String,
    /// Serials (hex) of the certificates currently accepted: the newest and, during a rotation,
    /// the one before it.
    pub serials: Vec<String>,
    /// Expiry of the newest certificate, Unix seconds.
    pub not_after: i64,
    /// When the cluster first enrolled, Unix seconds.
    pub enrolled_at: i64,
}

/// How many certificate serials an enrollment keeps (newest first).
pub const KEPT_SERIALS: usize = 2;

/// Bootstrap tokens and enrolled clusters.
pub trait EnrollmentStore: Send + Sync + std::fmt::Debug {
    /// Stores a new token.
    fn add_token<'a>(&'a self, token: &'a TokenRecord) -> StoreFuture<'a, ()>;
    /// Checks and consumes a token in one atomic step: it succeeds for one CSR only (`csr_sha256`;
    /// a retry with the same CSR succeeds again, before the expiry).
    fn consume_token<'a>(
        &'a self,
        id: &'a str,
        secret_sha256: &'a str,
        csr_sha256: &'a str,
        now: i64,
    ) -> StoreFuture<'a, Result<String, TokenRejection>>;
    /// Records a newly issued certificate for `cluster` (enrollment or rotation).
    fn record_certificate<'a>(
        &'a self,
        cluster: &'a str,
        serial: &'a str,
        not_after: i64,
        now: i64,
    ) -> StoreFuture<'a, ()>;
    /// The enrollment of one cluster.
    fn get<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<Enrollment>>;
    /// Every enrollment (the gateway polls this to end revoked sessions).
    fn list(&self) -> StoreFuture<'_, BTreeMap<String, Enrollment>>;
    /// Deletes a cluster's enrollment and its unused tokens. Returns whether it was enrolled.
    fn revoke<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, bool>;
}

/// SpokeAgent objects: the engine writes `spec`, the gateway writes `status`.
pub trait SpokeAgentStore: Send + Sync + std::fmt::Debug {
    /// Every cluster's spec.
    fn specs(&self) -> StoreFuture<'_, BTreeMap<String, SpokeAgentSpec>>;
    /// One cluster's spec.
    fn spec<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentSpec>>;
    /// Replaces one cluster's spec (the engine's side; tests use it too).
    fn put_spec<'a>(&'a self, cluster: &'a str, spec: &'a SpokeAgentSpec) -> StoreFuture<'a, ()>;
    /// One cluster's status.
    fn status<'a>(&'a self, cluster: &'a str) -> StoreFuture<'a, Option<SpokeAgentStatus>>;
    /// Replaces one cluster's status, durably.
    fn write_status<'a>(
        &'a self,
        cluster: &'a str,
        status: &'a SpokeAgentStatus,
    ) -> StoreFuture<'a, ()>;
    /// The clusters whose spec changed, for a store that knows (the operator's cache): the
    /// gateway then reads those specs at once instead of at its next poll. `None`: poll only.
    fn spec_changes(&self) -> Option<std::sync::Arc<SpecChanges>> {
        None
    }
}

/// The clusters whose SpokeAgent spec changed since the gateway last took them, announced by
/// the store's writer side (a spec added, changed or removed).
#[derive(Debug, Default)]
pub struct SpecChanges {
    clusters: std::sync::Mutex<std::collections::BTreeSet<String>>,
    notify: tokio::sync::Notify,
}

impl SpecChanges {
    /// Marks `cluster`'s spec changed and wakes the waiter.
    pub fn mark(&self, cluster: &str) {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cluster.to_string());
        self.notify.notify_one();
    }

    /// Waits until some cluster is marked (returns at once if one was marked since the last
    /// wait).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    /// Takes the marked clusters, in name order.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .clusters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_iter()
        .collect()
    }
}

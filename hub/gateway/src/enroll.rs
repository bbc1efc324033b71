//! Enrollment, like kubelet TLS bootstrap: `talm-hub agents token CLUSTER` stores a one-time,
//! expiring bootstrap token (only its hash); the agent sends it with a CSR for a key it
//! generated; the hub signs a short-lived client certificate naming the token's cluster.
//! Rotation signs a new CSR for the cluster of the caller's (verified) certificate. Revocation
//! deletes the enrollment; the gateway then ends the cluster's session and refuses reconnects.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use talm_shared::clock::Clock;
use talm_shared::hex;
use talm_shared::pki::{Authority, PkiError, sign_agent_csr};
use talm_shared::tls::{cert_info, certs_from_pem, check_cluster_name};
use tonic::Status;

use crate::store::{EnrollmentStore, StoreError, TokenRecord, TokenRejection};

/// Enrollment errors.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token is not of the form `<id>.<secret>`.
    #[error("malformed bootstrap token (want <id>.<secret>)")]
    MalformedToken,
    /// The token was refused.
    #[error("bootstrap token refused: {}", .0.label())]
    Token(TokenRejection),
    /// The CSR could not be used.
    #[error("bad CSR: {0}")]
    Csr(#[source] PkiError),
    /// The cluster is not enrolled (or was revoked).
    #[error("cluster {0} is not enrolled")]
    NotEnrolled(String),
    /// Bad cluster name.
    #[error("{0}")]
    InvalidCluster(String),
    /// Randomness failed.
    #[error("random number generator failed")]
    Random,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EnrollError {
    /// A label for the rejection metric.
    pub fn label(&self) -> &'static str {
        match self {
            EnrollError::MalformedToken => "malformed_token",
            EnrollError::Token(r) => r.label(),
            EnrollError::Csr(_) => "bad_csr",
            EnrollError::NotEnrolled(_) => "not_enrolled",
            EnrollError::InvalidCluster(_) => "invalid_cluster",
            EnrollError::Random | EnrollError::Store(_) => "internal",
        }
    }
}

impl From<EnrollError> for Status {
    fn from(e: EnrollError) -> Status {
        match &e {
            EnrollError::MalformedToken | EnrollError::Csr(_) | EnrollError::InvalidCluster(_) => {
                Status::invalid_argument(e.to_string())
            }
            EnrollError::Token(_) => Status::unauthenticated(e.to_string()),
            EnrollError::NotEnrolled(_) => Status::permission_denied(e.to_string()),
            EnrollError::Random | EnrollError::Store(_) => Status::internal(e.to_string()),
        }
    }
}

fn random(n: usize) -> Result<Vec<u8>, EnrollError> {
    let mut v = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| EnrollError::Random)?;
    Ok(v)
}

/// Hex SHA-256 of a token secret.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// Issues a bootstrap token for `cluster`, valid for `ttl`. Returns `<id>.<secret>`; only the
/// secret's hash is stored.
pub async fn issue_token(
    store: &dyn EnrollmentStore,
    clock: &dyn Clock,
    cluster: &str,
    ttl: Duration,
) -> Result<String, EnrollError> {
    check_cluster_name(cluster).map_err(EnrollError::InvalidCluster)?;
    let id = hex::encode(&random(6)?);
    let secret = hex::encode(&random(16)?);
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let record = TokenRecord {
        id: id.clone(),
        cluster: cluster.to_string(),
        secret_sha256: secret_hash(&secret),
        expires_at: clock.unix().saturating_add(ttl),
        used_at: None,
        used_by: None,
    };
    store.add_token(&record).await?;
    Ok(format!("{id}.{secret}"))
}

/// A certificate the hub issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// The cluster it names.
    pub cluster: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Signs agent certificates.
#[derive(Debug)]
pub struct Enroller {
    ca: Authority,
    store: Arc<dyn EnrollmentStore>,
    clock: Arc<dyn Clock>,
    lifetime: Duration,
}

impl Enroller {
    /// An enroller signing with the agent CA `ca`, issuing certificates valid for `lifetime`.
    pub fn new(
        ca: Authority,
        store: Arc<dyn EnrollmentStore>,
        clock: Arc<dyn Clock>,
        lifetime: Duration,
    ) -> Self {
        Self {
            ca,
            store,
            clock,
            lifetime,
        }
    }

    /// The agent CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The enrollment store.
    pub fn store(&self) -> &Arc<dyn EnrollmentStore> {
        &self.store
    }

    /// Exchanges a bootstrap token and a CSR for a certificate.
    pub async fn enroll(&self, token: &str, csr_pem: &str) -> Result<Issued, EnrollError> {
        let (id, secret) = token
            .trim()
            .split_once('.')
            .ok_or(EnrollError::MalformedToken)?;
        if id.is_empty() || secret.is_empty() || token.len() > 256 {
            return Err(EnrollError::MalformedToken);
        }
        // Validate the CSR before burning the token.
        talm_shared::pki::agent_csr_check(csr_pem).map_err(EnrollError::Csr)?;
        let now = self.clock.unix();
        let cluster = self
            .store
            .consume_token(id, &secret_hash(secret), &secret_hash(csr_pem.trim()), now)
            .await?
            .map_err(EnrollError::Token)?;
        self.sign(&cluster, csr_pem).await
    }

    /// Signs a CSR for an already enrolled cluster (rotation).
    pub async fn renew(&self, cluster: &str, csr_pem: &str) -> Result<Issued, EnrollError> {
        if self.store.get(cluster).await?.is_none() {
            return Err(EnrollError::NotEnrolled(cluster.to_string()));
        }
        self.sign(cluster, csr_pem).await
    }

    async fn sign(&self, cluster: &str, csr_pem: &str) -> Result<Issued, EnrollError> {
        let now = self.clock.system_time();
        let mut serial = random(16)?;
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        // Backdate a little for clock skew, but never by more than a tenth of the lifetime (so
        // short lifetimes still rotate at the intended point).
        let backdate = (self.lifetime / 10).min(Duration::from_secs(60));
        let pem = sign_agent_csr(
            &self.ca,
            csr_pem,
            cluster,
            now - backdate,
            now + self.lifetime,
            &serial,
        )
        .map_err(EnrollError::Csr)?;
        let der = certs_from_pem("issued", pem.as_bytes())
            .ok()
            .and_then(|mut v| v.pop())
            .ok_or(EnrollError::Random)?;
        let info = cert_info(&der).map_err(|_| EnrollError::Random)?;
        self.store
            .record_certificate(cluster, &info.serial, info.not_after, self.clock.unix())
            .await?;
        Ok(Issued {
            cert_pem: pem,
            cluster: cluster.to_string(),
            not_after: info.not_after,
        })
    }
}

//! Connections to the hub: TCP + rustls (TLS 1.3, ring) under tonic, with the agent's current
//! identity read at every connect (so a rotated certificate is used by the next connection and
//! the live one is left alone). Also enrollment and rotation, and the identity file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use talm_proto::v1::agent_service_client::AgentServiceClient;
use talm_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use talm_proto::v1::{EnrollRequest, RenewRequest};
use talm_shared::fsutil::{atomic_write, read_optional};
use talm_shared::tls::{CertInfo, TlsError, cert_info, certs_from_pem, client_config};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// Connection errors.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The hub URL is not `https://host:port`.
    #[error("bad hub URL {0:?}: {1}")]
    Url(String, String),
    /// TLS setup or identity failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connecting failed.
    #[error("connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The hub refused.
    #[error("hub: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    /// Key or CSR generation failed.
    #[error(transparent)]
    Pki(#[from] talm_shared::pki::PkiError),
    /// Local file I/O failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The hub returned a certificate for another cluster than expected.
    #[error("the hub issued a certificate for {got}, expected {want}")]
    WrongCluster {
        /// Expected.
        want: String,
        /// Received.
        got: String,
    },
}

/// Where the hub is.
#[derive(Clone, Debug)]
pub struct HubTarget {
    /// `host:port` to dial.
    pub authority: String,
    /// Name checked against the hub's certificate.
    pub server_name: ServerName<'static>,
}

impl HubTarget {
    /// Parses `https://host:port`; `server_name` overrides the name checked in the hub's
    /// certificate (e.g. when dialing an IP).
    pub fn parse(url: &str, server_name: Option<&str>) -> Result<Self, ConnError> {
        let bad = |m: &str| ConnError::Url(url.to_string(), m.to_string());
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https (there is no plaintext mode)"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(443);
        let name = server_name
            .unwrap_or(host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            authority: format!("{host}:{port}"),
            server_name,
        })
    }
}

/// The agent's key and certificate.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// Parsed certificate facts.
    pub info: CertInfo,
}

impl Identity {
    /// Builds an identity from PEM.
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, ConnError> {
        let der = certs_from_pem("agent certificate", &cert_pem)?.remove(0);
        let info = cert_info(&der)?;
        talm_shared::tls::key_from_pem("agent key", &key_pem)?;
        Ok(Self {
            cert_pem,
            key_pem,
            info,
        })
    }
}

/// `<state_dir>/identity.pem`: certificate and key in one file, so they are replaced together.
pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.pem")
}

/// Loads the identity, if enrolled.
pub fn load_identity(state_dir: &Path) -> Result<Option<Identity>, ConnError> {
    let path = identity_path(state_dir);
    let Some(pem) =
        read_optional(&path).map_err(|e| ConnError::Io(path.display().to_string(), e))?
    else {
        return Ok(None);
    };
    Identity::from_pem(pem.clone(), pem).map(Some)
}

/// Saves the identity atomically (0600).
pub fn save_identity(
    state_dir: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Identity, ConnError> {
    let path = identity_path(state_dir);
    let both = format!("{}\n{}", cert_pem.trim_end(), key_pem);
    atomic_write(&path, both.as_bytes(), 0o600)
        .map_err(|e| ConnError::Io(path.display().to_string(), e))?;
    Identity::from_pem(both.clone().into_bytes(), both.into_bytes())
}

/// Connection tuning.
#[derive(Clone, Debug)]
pub struct ConnConfig {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive PING interval (detects dead links; no other timer runs while idle).
    pub keepalive_interval: Duration,
    /// How long a PING may stay unanswered.
    pub keepalive_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Opens a channel to the hub with `tls`.
pub async fn channel(
    target: &HubTarget,
    tls: Arc<rustls::ClientConfig>,
    cfg: &ConnConfig,
) -> Result<Channel, ConnError> {
    let authority = target.authority.clone();
    let name = target.server_name.clone();
    let connect_timeout = cfg.connect_timeout;
    let connector = tower::service_fn(move |_: Uri| {
        let (authority, name, tls) = (authority.clone(), name.clone(), tls.clone());
        async move {
            let io = async {
                let tcp = TcpStream::connect(&authority).await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(tls).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(connect_timeout, io)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let endpoint = Endpoint::from_shared(format!("http://{}", target.authority))?
        .connect_timeout(cfg.connect_timeout)
        .http2_keep_alive_interval(cfg.keepalive_interval)
        .keep_alive_timeout(cfg.keepalive_timeout)
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// A session client for `identity`.
pub async fn session_client(
    target: &HubTarget,
    hub_ca_pem: &[u8],
    identity: &Identity,
    cfg: &ConnConfig,
) -> Result<AgentServiceClient<Channel>, ConnError> {
    let tls = client_config(hub_ca_pem, Some((&identity.cert_pem, &identity.key_pem)))?;
    Ok(AgentServiceClient::new(channel(target, tls, cfg).await?)
        .max_decoding_message_size(talm_proto::MAX_MESSAGE_BYTES))
}

/// Enrolls with a bootstrap token: generates a key here, sends only the CSR, saves the result.
pub async fn enroll(
    target: &HubTarget,
    hub_ca_pem: &[u8],
    token: &str,
    state_dir: &Path,
    cfg: &ConnConfig,
) -> Result<Identity, ConnError> {
    let (key_pem, csr_pem) = pending_key_and_csr(state_dir)?;
    let tls = client_config(hub_ca_pem, None)?;
    let mut client = EnrollmentServiceClient::new(channel(target, tls, cfg).await?);
    let resp = client
        .enroll(EnrollRequest {
            token: token.trim().to_string(),
            csr_pem,
        })
        .await?
        .into_inner();
    let id = save_identity(state_dir, &resp.certificate_pem, &key_pem)?;
    let _ = std::fs::remove_file(state_dir.join(PENDING_ENROLLMENT));
    Ok(id)
}

/// Key and CSR of an enrollment in progress: kept until it succeeds, so a retry (after a lost
/// answer, or an agent restart) presents the same CSR, which the hub accepts again for the same
/// token.
const PENDING_ENROLLMENT: &str = "enroll-pending.json";

fn pending_key_and_csr(state_dir: &Path) -> Result<(String, String), ConnError> {
    let path = state_dir.join(PENDING_ENROLLMENT);
    let io = |e| ConnError::Io(path.display().to_string(), e);
    if let Some(bytes) = read_optional(&path).map_err(io)?
        && let Ok((key, csr)) = serde_json::from_slice::<(String, String)>(&bytes)
    {
        return Ok((key, csr));
    }
    let (key, csr) = talm_shared::pki::agent_key_and_csr()?;
    let bytes = serde_json::to_vec(&(&key, &csr)).unwrap_or_default();
    atomic_write(&path, &bytes, 0o600).map_err(io)?;
    Ok((key, csr))
}

/// Rotates the certificate: a new key, a CSR, authenticated by the current identity. Saves and
/// returns the new identity; the running session is not touched.
pub async fn renew(
    target: &HubTarget,
    hub_ca_pem: &[u8],
    current: &Identity,
    state_dir: &Path,
    cfg: &ConnConfig,
) -> Result<Identity, ConnError> {
    let (key_pem, csr_pem) = talm_shared::pki::agent_key_and_csr()?;
    let mut client = session_client(target, hub_ca_pem, current, cfg).await?;
    let resp = client.renew(RenewRequest { csr_pem }).await?.into_inner();
    let new = Identity::from_pem(
        resp.certificate_pem.clone().into_bytes(),
        key_pem.clone().into_bytes(),
    )?;
    if new.info.cluster != current.info.cluster {
        return Err(ConnError::WrongCluster {
            want: current.info.cluster.clone(),
            got: new.info.cluster,
        });
    }
    save_identity(state_dir, &resp.certificate_pem, &key_pem)
}

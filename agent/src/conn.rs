//! Connections to the hub: TCP + rustls (TLS 1.3, ring) under tonic, with the agent's current
//! identity read at every connect (so a rotated certificate is used by the next connection and
//! the live one is left alone). Also enrollment and rotation, and the identity file.
//!
//! Failures are classified by [`ConnError::cause`] into the [`Cause`]s the daemon names in its
//! WARN lines (DNS, connection refused, TLS unknown CA, certificate name mismatch, revoked,
//! token refused, ...), by walking the error's source chain down to the dial step
//! ([`DialError`]) or the rustls error.

use std::error::Error as StdError;
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
    #[error("connect: {}", error_chain(.0))]
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

/// A failed step of dialing the hub (the connector's error, inside tonic's).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The host name did not resolve.
    #[error("DNS lookup of {host} failed: {source}")]
    Dns {
        /// `host:port` looked up.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection failed (refused, unreachable, reset).
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        /// Address dialed.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// Address dialed.
        addr: String,
        /// Why (a rustls error inside).
        #[source]
        source: std::io::Error,
    },
    /// TCP connect and TLS handshake took longer than the connect timeout.
    #[error("connecting to {0} timed out")]
    Timeout(String),
}

/// Why talking to the hub failed, as named in the agent's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A local configuration error (hub URL, CA bundle, identity file): retrying cannot fix it.
    Config,
    /// The hub's host name does not resolve.
    Dns,
    /// Nothing listens at the hub's address (connection refused).
    Refused,
    /// Another network error (unreachable, reset).
    Network,
    /// Connect or handshake timed out.
    Timeout,
    /// The hub's certificate is not signed by the CA in `--ca`.
    TlsUnknownCa,
    /// The hub's certificate is not valid for the name dialed.
    TlsNameMismatch,
    /// The hub's certificate has expired or is not valid yet.
    TlsExpired,
    /// The hub refused this agent's client certificate during the handshake.
    TlsCertificateRefused,
    /// Another TLS failure.
    Tls,
    /// The hub no longer accepts this agent's certificate (enrollment revoked, certificate
    /// superseded).
    Revoked,
    /// The hub refused the bootstrap token (unknown, used, expired, malformed) or the CSR.
    TokenRefused,
    /// Another agent holds this cluster's session with the same identity (a cloned state
    /// directory).
    IdentityInUse,
    /// Another refusal by the hub.
    Hub,
    /// Anything else.
    Other,
}

impl Cause {
    /// A short, stable label (logged as `cause=`).
    pub fn label(self) -> &'static str {
        match self {
            Cause::Config => "config",
            Cause::Dns => "dns",
            Cause::Refused => "connection-refused",
            Cause::Network => "network",
            Cause::Timeout => "timeout",
            Cause::TlsUnknownCa => "tls-unknown-ca",
            Cause::TlsNameMismatch => "tls-name-mismatch",
            Cause::TlsExpired => "tls-certificate-expired",
            Cause::TlsCertificateRefused => "tls-client-certificate-refused",
            Cause::Tls => "tls",
            Cause::Revoked => "revoked",
            Cause::TokenRefused => "token-refused",
            Cause::IdentityInUse => "identity-in-use",
            Cause::Hub => "hub",
            Cause::Other => "other",
        }
    }

    /// What the cause means and what to check, for people.
    pub fn summary(self, target: &HubTarget) -> String {
        let name = target.server_name.to_str();
        let addr = &target.authority;
        match self {
            Cause::Config => "configuration error".into(),
            Cause::Dns => format!("DNS: cannot resolve the hub's host name ({addr})"),
            Cause::Refused => {
                format!("connection refused by {addr}: is the hub gateway listening there?")
            }
            Cause::Network => format!("network error reaching {addr}"),
            Cause::Timeout => format!("timed out connecting to {addr}"),
            Cause::TlsUnknownCa => {
                "TLS: unknown CA: the hub's certificate is not signed by a CA in --ca".into()
            }
            Cause::TlsNameMismatch => format!(
                "TLS: certificate name mismatch: the hub's certificate is not valid for {name:?} \
                 (the --hub host, or --server-name)"
            ),
            Cause::TlsExpired => {
                "TLS: the hub's certificate has expired or is not valid yet (check clocks)".into()
            }
            Cause::TlsCertificateRefused => {
                "TLS: the hub refused this agent's client certificate".into()
            }
            Cause::Tls => "TLS handshake failed".into(),
            Cause::Revoked => "revoked: the hub no longer accepts this agent's certificate \
                 (enrollment revoked or certificate superseded; re-enroll with a new bootstrap \
                 token)"
                .into(),
            Cause::TokenRefused => "token refused: the hub refused the bootstrap token".into(),
            Cause::IdentityInUse => "identity in use: another agent holds this cluster's \
                 session with the same certificate (a copied state directory?)"
                .into(),
            Cause::Hub => "the hub refused".into(),
            Cause::Other => "connection failed".into(),
        }
    }
}

/// `e` and its sources, `: `-separated (io errors' payloads included).
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        let text = x.to_string();
        if parts.last().is_none_or(|p| !p.contains(&text)) {
            parts.push(text);
        }
        cur = x.source();
    }
    parts.join(": ")
}

/// The cause named by the first error in the chain that tells one (depth-limited).
fn classify(e: &(dyn StdError + 'static), depth: u32) -> Option<Cause> {
    if depth > 16 {
        return None;
    }
    if let Some(d) = e.downcast_ref::<DialError>() {
        return Some(match d {
            DialError::Dns { .. } => Cause::Dns,
            DialError::Connect { source, .. } => {
                if source.kind() == std::io::ErrorKind::ConnectionRefused {
                    Cause::Refused
                } else {
                    Cause::Network
                }
            }
            DialError::Timeout(_) => Cause::Timeout,
            DialError::Tls { source, .. } => classify(source, depth + 1).unwrap_or(Cause::Tls),
        });
    }
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        use rustls::CertificateError as C;
        return Some(match r {
            // A CA with the same name but another key (a regenerated hub CA) gives BadSignature.
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
                Cause::TlsUnknownCa
            }
            rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            ) => Cause::TlsNameMismatch,
            rustls::Error::InvalidCertificate(
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. },
            ) => Cause::TlsExpired,
            rustls::Error::AlertReceived(_) => Cause::TlsCertificateRefused,
            _ => Cause::Tls,
        });
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        // An io::Error's source() skips its payload: look at the payload itself.
        if let Some(inner) = io.get_ref()
            && let Some(c) = classify(inner, depth + 1)
        {
            return Some(c);
        }
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return Some(Cause::Refused);
        }
    }
    e.source().and_then(|s| classify(s, depth + 1))
}

impl ConnError {
    /// The named cause of this failure.
    pub fn cause(&self) -> Cause {
        match self {
            ConnError::Url(..) | ConnError::Tls(_) | ConnError::Io(..) | ConnError::Pki(_) => {
                Cause::Config
            }
            ConnError::Transport(e) => classify(e, 0).unwrap_or(Cause::Other),
            ConnError::Status(s) => match s.code() {
                tonic::Code::PermissionDenied => Cause::Revoked,
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => Cause::TokenRefused,
                tonic::Code::AlreadyExists => Cause::IdentityInUse,
                _ => classify(s, 0).unwrap_or(Cause::Hub),
            },
            ConnError::WrongCluster { .. } => Cause::Hub,
        }
    }

    /// `<what the cause means>: <the error chain>`, the text of the daemon's WARN lines.
    pub fn explain(&self, target: &HubTarget) -> String {
        format!("{}: {}", self.cause().summary(target), error_chain(self))
    }
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
                let addrs: Vec<_> = tokio::net::lookup_host(&authority)
                    .await
                    .map_err(|source| DialError::Dns {
                        host: authority.clone(),
                        source,
                    })?
                    .collect();
                if addrs.is_empty() {
                    return Err(DialError::Dns {
                        host: authority.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                    });
                }
                let tcp =
                    TcpStream::connect(&addrs[..])
                        .await
                        .map_err(|source| DialError::Connect {
                            addr: authority.clone(),
                            source,
                        })?;
                let _ = tcp.set_nodelay(true);
                TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|source| DialError::Tls {
                        addr: authority.clone(),
                        source,
                    })
            };
            let stream = tokio::time::timeout(connect_timeout, io)
                .await
                .map_err(|_| DialError::Timeout(authority.clone()))??;
            Ok::<_, DialError>(TokioIo::new(stream))
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
    record_enrollment_token(state_dir, token)?;
    Ok(id)
}

/// `<state_dir>/enrolled-with`: the id (the part before the dot, not the secret) of the
/// bootstrap token the agent enrolled with, so that a different token given later can be
/// reported instead of silently ignored.
pub const ENROLLED_WITH: &str = "enrolled-with";

/// The public id of a bootstrap token `<id>.<secret>` (never the secret).
pub fn token_id(token: &str) -> &str {
    token.trim().split_once('.').map_or("", |(id, _)| id)
}

/// Records the id of the token the agent enrolled with.
pub fn record_enrollment_token(state_dir: &Path, token: &str) -> Result<(), ConnError> {
    let path = state_dir.join(ENROLLED_WITH);
    atomic_write(&path, format!("{}\n", token_id(token)).as_bytes(), 0o600)
        .map_err(|e| ConnError::Io(path.display().to_string(), e))
}

/// The id of the token the agent enrolled with, when recorded.
pub fn enrollment_token_id(state_dir: &Path) -> Option<String> {
    read_optional(&state_dir.join(ENROLLED_WITH))
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty())
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

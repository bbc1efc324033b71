//! TLS for the agent channel: rustls with the ring provider, TLS 1.3 only, HTTP/2 ALPN; PEM
//! loading; and the agent identity, which is ONLY the cluster named in the client certificate's
//! SAN (URI `talm://agent/<cluster>`).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Prefix of the URI SAN that names an agent's cluster.
pub const AGENT_URI_PREFIX: &str = "talm://agent/";

/// TLS setup and certificate errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input held no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    /// A PEM input held no private key, or a malformed one.
    #[error("{0}: no usable PEM private key: {1}")]
    BadKey(String, String),
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    /// The certificate names no cluster, or more than one.
    #[error("certificate identity: {0}")]
    Identity(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. an empty CA bundle).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// Parses every certificate in a PEM bundle; `what` names the input in errors.
pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.to_string()));
    }
    Ok(certs)
}

/// Parses the first private key in a PEM input.
pub fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TlsError::BadKey(what.to_string(), e.to_string()))
}

fn roots(what: &str, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs_from_pem(what, pem)? {
        store
            .add(c)
            .map_err(|e| TlsError::BadCertificate(format!("{what}: {e}")))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's server config: TLS 1.3 only, ALPN `h2`, and client certificates verified against
/// the agent CA. Clients without a certificate are let through the handshake (they may only
/// call `Enroll`; every other RPC demands a verified certificate), but a presented certificate
/// that does not chain to the agent CA, or is expired, fails the handshake.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    agent_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots("agent CA", agent_ca_pem)?),
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem("server certificate", cert_chain_pem)?,
            key_from_pem("server key", key_pem)?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The agent's client config: TLS 1.3 only, ALPN `h2`, the hub verified against `hub_ca_pem`,
/// and the client identity when the agent has one (enrollment runs without).
pub fn client_config(
    hub_ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots("hub CA", hub_ca_pem)?),
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut cfg = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(
            certs_from_pem("client certificate", chain)?,
            key_from_pem("client key", key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// What the hub needs to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The cluster named by the `talm://agent/<cluster>` URI SAN.
    pub cluster: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
}

/// Reads the agent identity from a DER certificate: exactly one `talm://agent/<cluster>` URI SAN
/// with a valid cluster name.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    let mut clusters = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Some(c) = uri.strip_prefix(AGENT_URI_PREFIX)
            {
                clusters.push(c.to_string());
            }
        }
    }
    let cluster = match clusters.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(TlsError::Identity(format!(
                "no {AGENT_URI_PREFIX}<cluster> URI SAN"
            )));
        }
        _ => return Err(TlsError::Identity("more than one agent URI SAN".into())),
    };
    check_cluster_name(&cluster).map_err(TlsError::Identity)?;
    Ok(CertInfo {
        cluster,
        serial: crate::hex::encode(cert.tbs_certificate.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
        not_before: cert.validity().not_before.timestamp(),
    })
}

/// Checks a cluster name: a DNS-1123 label (ManagedCluster names), 1–63 characters.
pub fn check_cluster_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid cluster name {name:?}: must be a DNS-1123 label (a-z, 0-9, '-', at most 63)"
        ))
    }
}

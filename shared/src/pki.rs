//! Certificate work with rcgen: the hub's CAs and serving certificate, the agent's key and CSR,
//! and signing an agent CSR into a short-lived client certificate whose only identity is the
//! `talm://agent/<cluster>` URI SAN. Times come from the caller (the clock seam).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};

use crate::clock::unix_seconds;
use crate::tls::{AGENT_URI_PREFIX, check_cluster_name};

/// Certificate generation errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed (bad CSR, bad key, unsupported extension...).
    #[error("{0}: {1}")]
    Rcgen(&'static str, rcgen::Error),
    /// The cluster name is not valid.
    #[error("{0}")]
    Name(String),
    /// A time is out of range.
    #[error("time out of range")]
    Time,
}

fn odt(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds(t)).map_err(|_| PkiError::Time)
}

/// A CA: its certificate (PEM) and signing key.
#[derive(Debug)]
pub struct Authority {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A leaf certificate with its key.
#[derive(Debug)]
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Generates a self-signed CA valid from `now` for `validity`.
pub fn new_ca(
    common_name: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<Authority, PkiError> {
    let key = KeyPair::generate().map_err(|e| PkiError::Rcgen("CA key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = odt(now - Duration::from_secs(60))?;
    params.not_after = odt(now + validity)?;
    let ca = CertifiedIssuer::self_signed(params, key).map_err(|e| PkiError::Rcgen("CA", e))?;
    Ok(Authority {
        cert_pem: ca.pem(),
        key_pem: ca.key().serialize_pem(),
    })
}

fn issuer(ca: &Authority) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| PkiError::Rcgen("CA key", e))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(|e| PkiError::Rcgen("CA certificate", e))
}

/// Issues the hub's serving certificate for the given DNS names / IP addresses.
pub fn server_cert(
    ca: &Authority,
    names: &[String],
    now: SystemTime,
    validity: Duration,
) -> Result<Leaf, PkiError> {
    let key = KeyPair::generate().map_err(|e| PkiError::Rcgen("server key", e))?;
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| PkiError::Rcgen("server names", e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "talm-hub gateway");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = odt(now - Duration::from_secs(60))?;
    params.not_after = odt(now + validity)?;
    let cert = params
        .signed_by(&key, &issuer(ca)?)
        .map_err(|e| PkiError::Rcgen("server certificate", e))?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates a fresh agent key and a CSR for it (the agent side of enrollment and rotation).
/// The CSR carries no identity: the hub decides the SAN.
pub fn agent_key_and_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(|e| PkiError::Rcgen("agent key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "talm-agent");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| PkiError::Rcgen("CSR", e))?
        .pem()
        .map_err(|e| PkiError::Rcgen("CSR PEM", e))?;
    Ok((key.serialize_pem(), csr))
}

/// Checks that a CSR parses and its signature verifies (before a bootstrap token is spent).
pub fn agent_csr_check(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(|e| PkiError::Rcgen("CSR", e))
}

/// Signs an agent CSR into a client certificate for `cluster`, valid from `not_before` to
/// `not_after`. Everything in the CSR but its public key is ignored (the identity is the URI SAN
/// set here); `serial` must be unique per CA.
pub fn sign_agent_csr(
    ca: &Authority,
    csr_pem: &str,
    cluster: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: &[u8],
) -> Result<String, PkiError> {
    check_cluster_name(cluster).map_err(PkiError::Name)?;
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Rcgen("CSR", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("talm-agent:{cluster}"));
    let uri = format!("{AGENT_URI_PREFIX}{cluster}")
        .try_into()
        .map_err(|e| PkiError::Rcgen("SAN", e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = odt(not_before)?;
    params.not_after = odt(not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    csr.params = params;
    let cert = csr
        .signed_by(&issuer(ca)?)
        .map_err(|e| PkiError::Rcgen("agent certificate", e))?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use crate::tls::{cert_info, certs_from_pem};

    #[test]
    fn signed_agent_cert_names_the_cluster_from_the_hub_not_the_csr() {
        let now = SystemClock.system_time();
        let ca = new_ca("agents", now, Duration::from_secs(3600)).unwrap();
        let (_key, csr) = agent_key_and_csr().unwrap();
        let pem = sign_agent_csr(
            &ca,
            &csr,
            "sno-1",
            now,
            now + Duration::from_secs(600),
            &[1, 2, 3],
        )
        .unwrap();
        let der = certs_from_pem("x", pem.as_bytes()).unwrap().remove(0);
        let info = cert_info(&der).unwrap();
        assert_eq!(info.cluster, "sno-1");
        assert_eq!(info.serial, "010203");
        assert_eq!(info.not_after - info.not_before, 600);
        assert!(sign_agent_csr(&ca, &csr, "Bad_Name", now, now, &[1]).is_err());
        assert!(sign_agent_csr(&ca, "garbage", "ok", now, now, &[1]).is_err());
    }
}

//! The gateway's key material in Secrets, shared by every replica: the agent CA
//! (`talm-agent-ca`) and, unless certificate files are given, a generated serving certificate
//! (`talm-gateway-serving`, with its CA in `ca.crt` for agents' `--ca`). Whichever replica gets
//! there first creates the Secret; the others get `409 AlreadyExists` and read the winner's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use talm_gateway::store::StoreError;
use talm_shared::pki::{self, Authority};

use super::backend;
use super::secrets::{self, AGENT_CA_SECRET, KIND_AGENT_CA, KIND_SERVING, SERVING_SECRET};
use crate::operator::error::is_already_exists;

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The serving certificate of the gRPC port.
#[derive(Clone, Debug)]
pub struct Serving {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Key, PEM.
    pub key_pem: String,
    /// The CA agents must trust (`talm-agent run --ca`), when known.
    pub ca_pem: Option<String>,
}

/// Reads Secret `name`, or creates it from `make()`; on a create race, reads the winner's.
async fn get_or_create(
    api: &Api<Secret>,
    namespace: &str,
    name: &str,
    make: impl Fn() -> Result<Secret, StoreError>,
) -> Result<(Secret, bool), StoreError> {
    let what = format!("Secret {namespace}/{name}");
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await.map_err(backend("get", &what))? {
            return Ok((s, false));
        }
        match api.create(&PostParams::default(), &make()?).await {
            Ok(s) => return Ok((s, true)),
            Err(e) if is_already_exists(&e) => {
                tracing::info!(secret = %what, "another replica created it first; using theirs");
            }
            Err(e) => return Err(backend("create", &what)(e)),
        }
    }
    Err(StoreError::Backend {
        what,
        message: "created by another replica but not readable (deleted again?)".into(),
    })
}

fn pki_err(what: &str) -> impl Fn(pki::PkiError) -> StoreError + '_ {
    move |e| StoreError::Backend {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// The agent CA: read from `talm-agent-ca`, or generated and stored there once.
pub async fn ensure_agent_ca(
    client: kube::Client,
    namespace: &str,
    now: std::time::SystemTime,
) -> Result<Authority, StoreError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let (s, created) = get_or_create(&api, namespace, AGENT_CA_SECRET, || {
        let ca = pki::new_ca("talm agent CA", now, TEN_YEARS)
            .map_err(pki_err("generating the agent CA"))?;
        Ok(secrets::tls_secret(
            namespace,
            AGENT_CA_SECRET,
            KIND_AGENT_CA,
            &ca.cert_pem,
            &ca.key_pem,
            None,
        ))
    })
    .await?;
    if created {
        tracing::info!(
            namespace,
            secret = AGENT_CA_SECRET,
            "generated the agent CA"
        );
    }
    Ok(Authority {
        cert_pem: secrets::tls_pem(&s, "tls.crt")?,
        key_pem: secrets::tls_pem(&s, "tls.key")?,
    })
}

/// A generated serving certificate for `names`: read from `talm-gateway-serving`, or generated
/// (a self-signed CA and a leaf) and stored there once. Names are fixed at generation; delete
/// the Secret to regenerate.
pub async fn ensure_serving(
    client: kube::Client,
    namespace: &str,
    names: &[String],
    now: std::time::SystemTime,
) -> Result<Serving, StoreError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let (s, created) = get_or_create(&api, namespace, SERVING_SECRET, || {
        let ca =
            pki::new_ca("talm hub CA", now, TEN_YEARS).map_err(pki_err("generating the hub CA"))?;
        let leaf = pki::server_cert(&ca, names, now, TEN_YEARS)
            .map_err(pki_err("generating the serving certificate"))?;
        Ok(secrets::tls_secret(
            namespace,
            SERVING_SECRET,
            KIND_SERVING,
            &leaf.cert_pem,
            &leaf.key_pem,
            Some(&ca.cert_pem),
        ))
    })
    .await?;
    if created {
        tracing::info!(
            namespace,
            secret = SERVING_SECRET,
            ?names,
            "generated the gateway serving certificate; give its ca.crt to agents as --ca"
        );
    }
    Ok(Serving {
        cert_pem: secrets::tls_pem(&s, "tls.crt")?,
        key_pem: secrets::tls_pem(&s, "tls.key")?,
        ca_pem: Some(secrets::tls_pem(&s, "ca.crt")?),
    })
}

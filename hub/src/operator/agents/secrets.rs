//! How the gateway's state is encoded in Secrets (pure functions, no I/O).
//!
//! | Secret | type | labels | data keys |
//! |---|---|---|---|
//! | `talm-token-<id>` | `talm.dev/bootstrap-token` | `talm.dev/kind=bootstrap-token`, `talm.dev/cluster` | `cluster`, `secret-sha256`, `expires-at`, `used-at`?, `used-by`? |
//! | `talm-enrollment-<cluster>` | `talm.dev/agent-enrollment` | `talm.dev/kind=agent-enrollment`, `talm.dev/cluster` | `cluster`, `serials` (comma-separated hex, newest first), `not-after`, `enrolled-at` |
//! | `talm-agent-ca` | `kubernetes.io/tls` | `talm.dev/kind=agent-ca` | `tls.crt`, `tls.key` |
//! | `talm-gateway-serving` | `kubernetes.io/tls` | `talm.dev/kind=gateway-serving` | `tls.crt`, `tls.key`, `ca.crt` |
//!
//! Times are Unix seconds in decimal. A token Secret never holds the token's secret, only its
//! SHA-256. Decoding errors name the Secret and the key.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use talm_gateway::store::{Enrollment, StoreError, TokenRecord};

/// The label naming what a talm Secret holds.
pub const KIND_LABEL: &str = "talm.dev/kind";
/// The label naming the cluster a token or enrollment Secret is for.
pub const CLUSTER_LABEL: &str = "talm.dev/cluster";
/// `talm.dev/kind` of bootstrap-token Secrets.
pub const KIND_TOKEN: &str = "bootstrap-token";
/// `talm.dev/kind` of enrollment Secrets.
pub const KIND_ENROLLMENT: &str = "agent-enrollment";
/// `talm.dev/kind` of the agent CA Secret.
pub const KIND_AGENT_CA: &str = "agent-ca";
/// `talm.dev/kind` of the gateway serving-certificate Secret.
pub const KIND_SERVING: &str = "gateway-serving";
/// Name of the agent CA Secret.
pub const AGENT_CA_SECRET: &str = "talm-agent-ca";
/// Name of the generated serving-certificate Secret.
pub const SERVING_SECRET: &str = "talm-gateway-serving";
/// The label selector of enrollment Secrets.
pub const ENROLLMENT_SELECTOR: &str = "talm.dev/kind=agent-enrollment";

/// Name of the Secret of token `id`.
pub fn token_secret_name(id: &str) -> String {
    format!("talm-token-{id}")
}

/// Name of the enrollment Secret of `cluster`.
pub fn enrollment_secret_name(cluster: &str) -> String {
    format!("talm-enrollment-{cluster}")
}

/// `Secret <namespace>/<name>`, for messages.
pub fn describe(secret: &Secret) -> String {
    format!(
        "Secret {}/{}",
        secret.metadata.namespace.as_deref().unwrap_or(""),
        secret.metadata.name.as_deref().unwrap_or("")
    )
}

fn meta(namespace: &str, name: &str, kind: &str, cluster: Option<&str>) -> ObjectMeta {
    let mut labels = BTreeMap::from([(KIND_LABEL.to_string(), kind.to_string())]);
    if let Some(c) = cluster {
        labels.insert(CLUSTER_LABEL.to_string(), c.to_string());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn bytes(s: impl Into<String>) -> ByteString {
    ByteString(s.into().into_bytes())
}

fn bad(secret: &Secret, key: &str, message: impl Into<String>) -> StoreError {
    StoreError::BadData {
        what: format!("{}, key {key}", describe(secret)),
        message: message.into(),
    }
}

/// The UTF-8 text of `key`, or `None` when absent.
fn text_opt(secret: &Secret, key: &str) -> Result<Option<String>, StoreError> {
    let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        return Ok(None);
    };
    String::from_utf8(v.0.clone())
        .map(|s| Some(s.trim().to_string()))
        .map_err(|_| bad(secret, key, "not UTF-8 text"))
}

fn text(secret: &Secret, key: &str) -> Result<String, StoreError> {
    text_opt(secret, key)?.ok_or_else(|| bad(secret, key, "missing"))
}

fn int_opt(secret: &Secret, key: &str) -> Result<Option<i64>, StoreError> {
    match text_opt(secret, key)? {
        None => Ok(None),
        Some(t) => t
            .parse::<i64>()
            .map(Some)
            .map_err(|_| bad(secret, key, format!("not an integer (Unix seconds): {t:?}"))),
    }
}

fn int(secret: &Secret, key: &str) -> Result<i64, StoreError> {
    int_opt(secret, key)?.ok_or_else(|| bad(secret, key, "missing"))
}

/// A token Secret for `t` in `namespace`.
pub fn token_to_secret(namespace: &str, t: &TokenRecord) -> Secret {
    let mut data = BTreeMap::from([
        ("cluster".to_string(), bytes(&t.cluster)),
        ("secret-sha256".to_string(), bytes(&t.secret_sha256)),
        ("expires-at".to_string(), bytes(t.expires_at.to_string())),
    ]);
    if let Some(u) = t.used_at {
        data.insert("used-at".into(), bytes(u.to_string()));
    }
    if let Some(u) = &t.used_by {
        data.insert("used-by".into(), bytes(u));
    }
    Secret {
        metadata: meta(
            namespace,
            &token_secret_name(&t.id),
            KIND_TOKEN,
            Some(&t.cluster),
        ),
        type_: Some("talm.dev/bootstrap-token".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Decodes a token Secret.
pub fn token_from_secret(s: &Secret) -> Result<TokenRecord, StoreError> {
    let name = s.metadata.name.as_deref().unwrap_or("");
    let id = name
        .strip_prefix("talm-token-")
        .ok_or_else(|| StoreError::BadData {
            what: describe(s),
            message: "not a token Secret (name must start with talm-token-)".into(),
        })?;
    Ok(TokenRecord {
        id: id.to_string(),
        cluster: text(s, "cluster")?,
        secret_sha256: text(s, "secret-sha256")?,
        expires_at: int(s, "expires-at")?,
        used_at: int_opt(s, "used-at")?,
        used_by: text_opt(s, "used-by")?,
    })
}

/// An enrollment Secret for `e` in `namespace`.
pub fn enrollment_to_secret(namespace: &str, e: &Enrollment) -> Secret {
    let data = BTreeMap::from([
        ("cluster".to_string(), bytes(&e.cluster)),
        ("serials".to_string(), bytes(e.serials.join(","))),
        ("not-after".to_string(), bytes(e.not_after.to_string())),
        ("enrolled-at".to_string(), bytes(e.enrolled_at.to_string())),
    ]);
    Secret {
        metadata: meta(
            namespace,
            &enrollment_secret_name(&e.cluster),
            KIND_ENROLLMENT,
            Some(&e.cluster),
        ),
        type_: Some("talm.dev/agent-enrollment".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Decodes an enrollment Secret.
pub fn enrollment_from_secret(s: &Secret) -> Result<Enrollment, StoreError> {
    let cluster = text(s, "cluster")?;
    let serials: Vec<String> = text(s, "serials")?
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad_serial) = serials
        .iter()
        .find(|x| !x.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(bad(
            s,
            "serials",
            format!("not a comma-separated list of hex serials: {bad_serial:?}"),
        ));
    }
    Ok(Enrollment {
        cluster,
        serials,
        not_after: int(s, "not-after")?,
        enrolled_at: int(s, "enrolled-at")?,
    })
}

/// A `kubernetes.io/tls` Secret (with `ca.crt` when given).
pub fn tls_secret(
    namespace: &str,
    name: &str,
    kind: &str,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::from([
        ("tls.crt".to_string(), bytes(cert_pem)),
        ("tls.key".to_string(), bytes(key_pem)),
    ]);
    if let Some(ca) = ca_pem {
        data.insert("ca.crt".into(), bytes(ca));
    }
    Secret {
        metadata: meta(namespace, name, kind, None),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The PEM text of `key` of a TLS Secret (must be present and hold a PEM block).
pub fn tls_pem(s: &Secret, key: &str) -> Result<String, StoreError> {
    let t = text(s, key)?;
    if !t.contains("-----BEGIN ") {
        return Err(bad(s, key, "not PEM (no -----BEGIN line)"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn token() -> TokenRecord {
        TokenRecord {
            id: "abc123".into(),
            cluster: "sno1".into(),
            secret_sha256: "00ff".into(),
            expires_at: 1_900_000_000,
            used_at: None,
            used_by: None,
        }
    }

    #[test]
    fn tokens_round_trip_and_never_hold_the_secret() {
        let mut t = token();
        let s = token_to_secret("talm-system", &t);
        assert_eq!(s.metadata.name.as_deref(), Some("talm-token-abc123"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels[KIND_LABEL], KIND_TOKEN);
        assert_eq!(labels[CLUSTER_LABEL], "sno1");
        assert!(!s.data.as_ref().unwrap().contains_key("used-at"));
        assert_eq!(token_from_secret(&s).unwrap(), t);
        t.used_at = Some(5);
        t.used_by = Some("csrhash".into());
        assert_eq!(token_from_secret(&token_to_secret("ns", &t)).unwrap(), t);
    }

    #[test]
    fn enrollments_round_trip() {
        let e = Enrollment {
            cluster: "sno-2".into(),
            serials: vec!["0a1b".into(), "77".into()],
            not_after: 100,
            enrolled_at: 7,
        };
        let s = enrollment_to_secret("ns", &e);
        assert_eq!(s.metadata.name.as_deref(), Some("talm-enrollment-sno-2"));
        assert_eq!(s.data.as_ref().unwrap()["serials"].0, b"0a1b,77".to_vec());
        assert_eq!(enrollment_from_secret(&s).unwrap(), e);
    }

    #[test]
    fn bad_secret_data_names_the_secret_and_the_key() {
        let mut s = token_to_secret("talm-system", &token());
        s.data
            .as_mut()
            .unwrap()
            .insert("expires-at".into(), ByteString(b"soon".to_vec()));
        let e = token_from_secret(&s).unwrap_err().to_string();
        assert!(
            e.contains("Secret talm-system/talm-token-abc123")
                && e.contains("key expires-at")
                && e.contains("\"soon\""),
            "{e}"
        );

        let mut s = token_to_secret("talm-system", &token());
        s.data.as_mut().unwrap().remove("secret-sha256");
        let e = token_from_secret(&s).unwrap_err().to_string();
        assert!(e.contains("key secret-sha256: missing"), "{e}");

        let mut s = token_to_secret("talm-system", &token());
        s.data
            .as_mut()
            .unwrap()
            .insert("cluster".into(), ByteString(vec![0xff, 0xfe]));
        let e = token_from_secret(&s).unwrap_err().to_string();
        assert!(e.contains("key cluster: not UTF-8"), "{e}");

        let e = Enrollment {
            cluster: "sno1".into(),
            serials: vec!["01".into()],
            not_after: 1,
            enrolled_at: 1,
        };
        let mut s = enrollment_to_secret("hub", &e);
        s.data
            .as_mut()
            .unwrap()
            .insert("serials".into(), ByteString(b"01,zz".to_vec()));
        let err = enrollment_from_secret(&s).unwrap_err().to_string();
        assert!(
            err.contains("Secret hub/talm-enrollment-sno1, key serials") && err.contains("zz"),
            "{err}"
        );

        let mut s = tls_secret("hub", AGENT_CA_SECRET, KIND_AGENT_CA, "x", "y", None);
        let err = tls_pem(&s, "tls.crt").unwrap_err().to_string();
        assert!(
            err.contains("Secret hub/talm-agent-ca, key tls.crt: not PEM"),
            "{err}"
        );
        s.data.as_mut().unwrap().remove("tls.key");
        let err = tls_pem(&s, "tls.key").unwrap_err().to_string();
        assert!(err.contains("key tls.key: missing"), "{err}");

        let mut s = token_to_secret("ns", &token());
        s.metadata.name = Some("other".into());
        assert!(
            token_from_secret(&s)
                .unwrap_err()
                .to_string()
                .contains("not a token Secret")
        );
    }
}

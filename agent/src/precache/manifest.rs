//! Manifest and index fetches with a size cap (issue 14 item 8).
//!
//! A manifest or image index larger than [`MANIFEST_LIMIT`] (4 MiB, the limit OCI registries
//! and runtimes apply) is refused with an error that names the image and the size. The body is
//! read chunk by chunk and the read stops as soon as the limit is passed, so memory stays at
//! the limit plus one network chunk whatever the registry sends (a `Content-Length` over the
//! limit is refused before any of the body is read). Nothing is written to the cache here: the
//! caller stores a manifest only once it has been verified and understood.
//!
//! oci-client reads a manifest whole, so manifests go through reqwest directly (the same
//! client stack, with the same extra CAs). Credentials still come from oci-client: its
//! `auth` answers the registry's challenge (a bearer token, or basic auth) and the resulting
//! `Authorization` header is kept per repository for the run, refreshed once on a 401.
//!
//! The low-speed rule ([`super::stall`]) covers the request and the body.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use tokio::sync::Mutex;

use super::pull::{FailureKind, PullError, Source, classify};
use super::stall::{StallPolicy, Stalled, Watch};
use super::status::Live;

/// The largest manifest or image index accepted, in bytes (4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// A fetched manifest.
#[derive(Debug)]
pub struct Fetched {
    /// The body (at most [`MANIFEST_LIMIT`] bytes).
    pub body: bytes::Bytes,
    /// The registry's `Docker-Content-Digest` header, if any.
    pub digest_header: Option<String>,
}

/// Fetches manifests for a run.
#[derive(Debug)]
pub struct Manifests {
    http: reqwest::Client,
    stall: StallPolicy,
    limit: u64,
    /// `registry/repository` → the `Authorization` header value (`None`: anonymous).
    auth: Mutex<HashMap<String, Option<String>>>,
}

impl Manifests {
    /// A fetcher trusting the system roots plus `ca_pems`.
    pub fn new(ca_pems: &[Vec<u8>], stall: StallPolicy, user_agent: &str) -> Result<Self, String> {
        let mut certs = Vec::new();
        for pem in ca_pems {
            match reqwest::Certificate::from_pem_bundle(pem) {
                Ok(c) => certs.extend(c),
                Err(e) => tracing::warn!(error = %e, "ignoring a CA file that is not PEM"),
            }
        }
        let http = reqwest::Client::builder()
            .tls_certs_merge(certs)
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(user_agent)
            .build()
            .map_err(|e| format!("cannot build the registry client: {e}"))?;
        Ok(Self {
            http,
            stall,
            limit: MANIFEST_LIMIT,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The same fetcher with another size limit (tests).
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Fetches `reference` (a tag or a digest) from source `s`; `oci` is the oci-client client
    /// for that source (it answers the registry's authentication challenge).
    pub async fn get(
        &self,
        oci: &Client,
        image: &str,
        s: &Source,
        reference: &Reference,
        live: &Live,
        accept: &[&str],
    ) -> Result<Fetched, PullError> {
        let what = format!("manifest {reference} from {}", s.pull_spec);
        let err =
            |kind: FailureKind, m: String| PullError::new(image, kind, format!("{what}: {m}"));
        let stalled = |e: Stalled| {
            Live::add(&live.stalls, 1);
            err(
                FailureKind::Transient,
                format!("{} from {}", e, reference.resolve_registry()),
            )
        };
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            if s.insecure { "http" } else { "https" },
            reference.resolve_registry(),
            reference.repository(),
            reference
                .digest()
                .or_else(|| reference.tag())
                .unwrap_or("latest")
        );
        let mut watch = Watch::start(self.stall);
        let mut refreshed = false;
        let mut resp = loop {
            let auth = watch
                .guard(self.authorization(oci, image, s, reference, refreshed))
                .await
                .map_err(stalled)??;
            let mut req = self.http.get(&url).header("Accept", accept.join(", "));
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp = watch
                .guard(req.send())
                .await
                .map_err(stalled)?
                .map_err(|e| err(FailureKind::Transient, e.to_string()))?;
            let status = resp.status().as_u16();
            if status == 401 && !refreshed {
                refreshed = true;
                continue;
            }
            match status {
                200 => break resp,
                401 | 403 => {
                    return Err(err(
                        FailureKind::Permanent,
                        format!("not authorized (HTTP {status})"),
                    ));
                }
                404 => {
                    return Err(err(FailureKind::Permanent, "not found (HTTP 404)".into()));
                }
                408 | 429 | 500..=599 => {
                    return Err(err(FailureKind::Transient, format!("HTTP {status}")));
                }
                _ => return Err(err(FailureKind::Permanent, format!("HTTP {status}"))),
            }
        };
        let too_big = |size: String| {
            err(
                FailureKind::Permanent,
                format!(
                    "the manifest has {size}, over the {}-byte limit for a manifest or image index; refused",
                    self.limit
                ),
            )
        };
        if let Some(len) = resp.content_length()
            && len > self.limit
        {
            return Err(too_big(format!("{len} bytes")));
        }
        let digest_header = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let cap = usize::try_from(self.limit).unwrap_or(usize::MAX);
        let mut body: Vec<u8> = Vec::with_capacity(
            resp.content_length()
                .map_or(64 * 1024, |l| l as usize)
                .min(cap),
        );
        loop {
            let chunk = watch
                .guard(resp.chunk())
                .await
                .map_err(stalled)?
                .map_err(|e| err(FailureKind::Transient, e.to_string()))?;
            let Some(chunk) = chunk else { break };
            Live::add(&live.bytes_fetched, chunk.len() as u64);
            if body.len() + chunk.len() > cap {
                return Err(too_big(format!("more than {} bytes", self.limit)));
            }
            body.extend_from_slice(&chunk);
            watch.add(chunk.len() as u64).map_err(stalled)?;
        }
        Ok(Fetched {
            body: body.into(),
            digest_header,
        })
    }

    /// The `Authorization` header for `reference`'s repository (cached for the run; `refresh`
    /// asks the registry again, after a 401).
    async fn authorization(
        &self,
        oci: &Client,
        image: &str,
        s: &Source,
        reference: &Reference,
        refresh: bool,
    ) -> Result<Option<String>, PullError> {
        let key = format!(
            "{}/{}",
            reference.resolve_registry(),
            reference.repository()
        );
        if !refresh && let Some(v) = self.auth.lock().await.get(&key) {
            return Ok(v.clone());
        }
        // Not under the lock: other repositories' requests go on meanwhile.
        let header = match oci.auth(reference, &s.auth, RegistryOperation::Pull).await {
            Ok(Some(token)) => Some(format!("Bearer {token}")),
            Ok(None) => match &s.auth {
                RegistryAuth::Basic(u, p) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )),
                _ => None,
            },
            Err(e) => {
                return Err(PullError::new(
                    image,
                    classify(&e),
                    format!(
                        "manifest {reference} from {}: authentication: {e}",
                        s.pull_spec
                    ),
                ));
            }
        };
        self.auth.lock().await.insert(key, header.clone());
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::client::{ClientConfig, ClientProtocol};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A server answering `GET /v2/` and then every manifest GET with `body`, chunked (no
    /// `Content-Length`) or not, in 512-byte chunks.
    async fn serve(body: Vec<u8>, chunked: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = l.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                        }
                        let res = if path == "/v2/" {
                            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                                .await
                        } else if chunked {
                            let mut out =
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                            for c in body.chunks(512) {
                                out.extend(format!("{:x}\r\n", c.len()).bytes());
                                out.extend(c);
                                out.extend(b"\r\n");
                            }
                            out.extend(b"0\r\n\r\n");
                            w.write_all(&out).await
                        } else {
                            let mut out = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            out.extend(&body);
                            w.write_all(&out).await
                        };
                        if res.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        host
    }

    async fn fetch(host: &str, limit: u64) -> (Result<Fetched, PullError>, u64) {
        super::super::pull::install_crypto_provider();
        let oci = Client::try_from(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
        .unwrap();
        let reference = Reference::with_tag(host.to_string(), "a/b".into(), "v1".into());
        let source = Source {
            pull_spec: format!("{host}/a/b:v1"),
            reference: reference.clone(),
            insecure: true,
            auth: RegistryAuth::Anonymous,
        };
        let m = Manifests::new(&[], StallPolicy::default(), "test")
            .unwrap()
            .with_limit(limit);
        let live = Live::default();
        let r = m
            .get(
                &oci,
                "img",
                &source,
                &reference,
                &live,
                &["application/json"],
            )
            .await;
        (
            r,
            live.bytes_fetched
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn manifests_over_the_limit_are_refused_while_reading() {
        let body = vec![b'x'; 100_000];
        // Chunked: the read stops at the first chunk past the limit.
        let host = serve(body.clone(), true).await;
        let (r, read) = fetch(&host, 1000).await;
        let e = r.unwrap_err();
        assert_eq!(e.kind, FailureKind::Permanent);
        assert!(e.message.contains("more than 1000 bytes"), "{e}");
        assert!(e.to_string().contains("image img"), "{e}");
        assert!(read <= 1000 + 512, "{read} bytes read");
        // With a Content-Length, nothing of the body is read.
        let host = serve(body.clone(), false).await;
        let (r, read) = fetch(&host, 1000).await;
        let e = r.unwrap_err();
        assert!(
            e.message
                .contains("the manifest has 100000 bytes, over the 1000-byte limit"),
            "{e}"
        );
        assert_eq!(read, 0);
        // At the limit: fine.
        let (r, _) = fetch(&host, 100_000).await;
        assert_eq!(r.unwrap().body.len(), 100_000);
    }
}

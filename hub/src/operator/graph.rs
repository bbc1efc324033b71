//! Update-graph (Cincinnati) lookups over HTTP(S) for the operator.
//!
//! The engine asks synchronously ([`UpdateGraph::payload_for`]) while the reconciler holds the
//! cache's read lock, so no request can be made there. Instead [`HttpUpdateGraph`] answers
//! from its cache and records the URLs it could not answer; the reconciler then fetches them
//! ([`HttpUpdateGraph::fetch_missing`], outside the lock) and runs the engine again. Graphs
//! are kept for [`GRAPH_TTL`], failures (reported with TALM's message) for [`FAILURE_TTL`].
//!
//! `--update-graph-insecure` (TALM's `INSECURE_GRAPH_CALL`) skips TLS verification.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use talm_hub_core::UpdateGraph;
use talm_hub_core::graph::payload_in_graph;
use tokio::time::Instant;

/// How long a fetched graph is used before it is fetched again.
pub const GRAPH_TTL: Duration = Duration::from_secs(300);
/// How long a failed fetch is reported before it is tried again.
pub const FAILURE_TTL: Duration = Duration::from_secs(60);
/// The timeout of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum Cached {
    Graph(Arc<Value>, Instant),
    Failed(String, Instant),
}

/// Update-graph lookups over HTTP(S), cached.
pub struct HttpUpdateGraph {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    cache: Mutex<HashMap<String, Cached>>,
    missing: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for HttpUpdateGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpdateGraph").finish_non_exhaustive()
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("update-graph TLS setup: {0}")]
pub struct GraphSetupError(String);

impl HttpUpdateGraph {
    /// A client verifying servers against the system's roots, or not at all (`insecure`).
    pub fn new(insecure: bool) -> Result<Self, GraphSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| GraphSetupError(e.to_string()))?;
        let tls = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "update graph: reading system CA certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "update graph: system CA certificates");
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            cache: Mutex::new(HashMap::new()),
            missing: Mutex::new(BTreeSet::new()),
        })
    }

    /// Whether a lookup since the last fetch found no (fresh) cache entry.
    pub fn has_missing(&self) -> bool {
        !self
            .missing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Fetches every URL a lookup missed; returns how many were fetched.
    pub async fn fetch_missing(&self) -> usize {
        let urls: Vec<String> =
            std::mem::take(&mut *self.missing.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        for url in &urls {
            let entry = match tokio::time::timeout(REQUEST_TIMEOUT, self.get(url)).await {
                Ok(Ok(v)) => Cached::Graph(Arc::new(v), Instant::now()),
                Ok(Err(e)) => {
                    tracing::warn!(%url, error = %e, "update graph request failed");
                    Cached::Failed(
                        format!("unable to request update graph on url {url}: {e}"),
                        Instant::now(),
                    )
                }
                Err(_) => Cached::Failed(
                    format!("unable to request update graph on url {url}: timed out"),
                    Instant::now(),
                ),
            };
            self.cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(url.clone(), entry);
        }
        urls.len()
    }

    async fn get(&self, url: &str) -> Result<Value, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid url: {e}"))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("invalid graph: {e}"))
    }
}

impl UpdateGraph for HttpUpdateGraph {
    fn payload_for(&self, upstream: &str, channel: &str, version: &str) -> Result<String, String> {
        let url = format!("{upstream}?channel={channel}");
        let entry = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&url)
            .cloned();
        let fresh = |at: Instant, ttl: Duration| at.elapsed() < ttl;
        match entry {
            Some(Cached::Graph(g, at)) if fresh(at, GRAPH_TTL) => {
                payload_in_graph(&g, upstream, channel, version)
            }
            Some(Cached::Failed(m, at)) if fresh(at, FAILURE_TTL) => Err(m),
            _ => {
                self.missing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(url.clone());
                Err(format!(
                    "unable to request update graph on url {url}: not fetched yet"
                ))
            }
        }
    }
}

/// Accepts any server certificate (`--update-graph-insecure`); signatures are still checked
/// for well-formedness by the provider's algorithms list only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;

    use super::*;

    async fn serve_graph() -> std::net::SocketAddr {
        let app = Router::new().route(
            "/graph",
            get(|uri: http::Uri| async move {
                if uri.query() == Some("channel=stable-4.9") {
                    (
                        http::StatusCode::OK,
                        r#"{"nodes":[{"version":"4.9.8","payload":"quay.io/x@sha256:1"}]}"#,
                    )
                } else {
                    (http::StatusCode::NOT_FOUND, "no such channel")
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }

    #[tokio::test]
    async fn misses_then_answers_from_the_fetched_graph() {
        let addr = serve_graph().await;
        let g = HttpUpdateGraph::new(false).unwrap();
        let upstream = format!("http://{addr}/graph");
        let first = g.payload_for(&upstream, "stable-4.9", "4.9.8");
        assert!(first.unwrap_err().contains("not fetched yet"));
        assert!(g.has_missing());
        assert_eq!(g.fetch_missing().await, 1);
        assert!(!g.has_missing());
        assert_eq!(
            g.payload_for(&upstream, "stable-4.9", "4.9.8").unwrap(),
            "quay.io/x@sha256:1"
        );
        assert!(
            g.payload_for(&upstream, "stable-4.9", "4.9.9")
                .unwrap_err()
                .starts_with("unable to find version 4.9.9 on update graph on url")
        );
        // A failing URL reports TALM's request error after its fetch.
        let _ = g.payload_for(&upstream, "nope", "4.9.8");
        g.fetch_missing().await;
        let e = g.payload_for(&upstream, "nope", "4.9.8").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "unable to request update graph on url {upstream}?channel=nope: HTTP 404"
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn insecure_client_builds() {
        assert!(HttpUpdateGraph::new(true).is_ok());
    }
}

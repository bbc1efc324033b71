//! Native OCI pulls into the blob cache.
//!
//! - **Sources.** Each image is tried at the candidates `registries.conf` gives
//!   ([`Mirrors::candidates`]: mirrors in order, then the source unless it is mirror-only). An
//!   `insecure` candidate is reached over plain HTTP. TLS trusts the system roots plus every
//!   `<host-root>/etc/containers/certs.d/<host>/*.crt` (podman's convention; client
//!   certificates there are not used). Credentials come from the pull secret
//!   (`<host-root>/var/lib/kubelet/config.json`), per candidate.
//! - **Manifests.** A manifest list / image index is kept as is (so the cache can be imported
//!   by reference) and the node's platform (`linux/<arch>`) is picked from it; only that
//!   instance's blobs are fetched. Every manifest is verified against its digest, read with a
//!   4 MiB cap ([`super::manifest`]), and stored in the cache only once it is understood.
//! - **Blobs.** Fetched once per run even when several images in flight share them (an in-flight
//!   map of `OnceCell`s), with at most `parallel` downloads at a time, streamed to the cache's
//!   partial file through the node-wide [`Limiter`]; an interrupted download resumes with a
//!   Range request from the partial's length. Under a cap a blob is requested in ranges of
//!   50 ms of the rate, each granted by the limiter before it is asked for, so the registry
//!   never serves bytes the cap has not granted (a whole-blob request lets it fill the
//!   sockets' buffers, megabytes, ahead of the cap); size and sha256 are checked before the blob is
//!   renamed into place ([`super::cache::Partial::commit`]). A blob already in the cache is
//!   verified before it counts ([`super::verify`]); a bad one is removed and fetched again.
//! - **Stalls.** A transfer that gets fewer than `min_bytes` in a `period` (default 1 KiB in
//!   60 s, [`super::stall`]) fails as "stalled: …" and is retried like a network error.
//! - **Retries.** Network errors, stalls, 5xx/429 answers and digest mismatches are retried with capped
//!   exponential backoff (a mismatch starts the blob over); "not found" and "unauthorized" are
//!   not retried (the next candidate is still tried).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};

use super::cache::{Cache, CacheError, Descriptor, Digest};
use super::limit::Limiter;
use super::manifest::Manifests;
use super::sources::{ImageRef, Mirrors, PullSecret};
use super::stall::{StallPolicy, Watch};
use super::status::{Journal, Live};
use super::verify::BlobCheck;
use crate::backoff::{Backoff, random_u64};
use crate::host::root::HostRoot;

/// Media types of manifests.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The most bytes asked of the limiter at once (a body chunk can be several hundred KiB).
const LIMITER_PIECE: usize = 64 * 1024;

/// Under a cap, a blob is requested a range at a time, each granted before it is asked for:
/// 50 ms of the rate (at least 64 KiB, at most 8 MiB). A range is one lump of the cap's
/// allowance; at 50 ms it is 0.5% of a 10 s window.
fn range_len(rate: u64) -> u64 {
    (rate / 20).clamp(64 * 1024, 8 << 20)
}
const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// How failures are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (each over all candidates).
    pub retries: u32,
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// What kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying (network, 5xx, 429).
    Transient,
    /// The content was wrong (digest or size): retried from zero.
    Mismatch,
    /// Not worth retrying (not found, unauthorized, bad manifest, local I/O).
    Permanent,
}

/// A pull failure (cheap to clone: shared by the images that wait for the same blob).
#[derive(Clone, Debug, thiserror::Error)]
#[error("image {image}: {message}")]
pub struct PullError {
    /// The image being pulled.
    pub image: String,
    /// What failed (names the blob digest or the manifest, and where from).
    pub message: String,
    /// Whether a retry may help.
    pub kind: FailureKind,
}

impl PullError {
    pub(crate) fn new(image: &str, kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            image: image.to_string(),
            message: message.into(),
            kind,
        }
    }
}

pub(crate) fn classify(e: &OciDistributionError) -> FailureKind {
    use OciDistributionError as E;
    match e {
        E::RequestError(_) | E::IoError(_) => FailureKind::Transient,
        E::ServerError { code, .. } if *code >= 500 || *code == 429 || *code == 408 => {
            FailureKind::Transient
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                format!("{:?}", x.code)
                    .to_ascii_uppercase()
                    .contains("TOOMANY")
            }) =>
        {
            FailureKind::Transient
        }
        E::DigestError(_) => FailureKind::Mismatch,
        _ => FailureKind::Permanent,
    }
}

/// One place to pull an image from.
#[derive(Clone, Debug)]
pub struct Source {
    /// The pull spec at that place.
    pub pull_spec: String,
    /// Its reference.
    pub reference: Reference,
    /// Plain HTTP.
    pub insecure: bool,
    /// Credentials.
    pub auth: RegistryAuth,
}

/// A resolved image: where it came from and what to fetch.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The name in the image list.
    pub name: String,
    /// Every source, the one that answered first.
    pub sources: Vec<Source>,
    /// The top manifest (a list, or the image manifest).
    pub top: Descriptor,
    /// The platform manifest's config and layers.
    pub blobs: Vec<Descriptor>,
    /// The platform manifest's layers only (in order).
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyManifest {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<PlatformDescriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlatformDescriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// The node's architecture in OCI terms.
pub fn node_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Registry access settings.
#[derive(Debug)]
pub struct PullConfig {
    /// Mirrors from `registries.conf`.
    pub mirrors: Mirrors,
    /// The node's pull secret (`None`: anonymous).
    pub secret: Option<PullSecret>,
    /// Extra CA certificates (PEM).
    pub ca_pems: Vec<Vec<u8>>,
    /// Concurrent blob downloads.
    pub parallel: usize,
    /// Retries.
    pub retry: RetryPolicy,
    /// Platform architecture to pick from manifest lists.
    pub arch: String,
    /// The low-speed limit of every transfer.
    pub stall: StallPolicy,
}

/// Reads every `*.crt` under `<root>/etc/containers/certs.d/*/`.
pub fn certs_d(host_root: &Path) -> Vec<Vec<u8>> {
    let dir = HostRoot::new(host_root).join("/etc/containers/certs.d");
    let mut out = Vec::new();
    let Ok(hosts) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut files: Vec<_> = hosts
        .flatten()
        .filter_map(|h| std::fs::read_dir(h.path()).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    files.sort();
    for f in files {
        match std::fs::read(&f) {
            Ok(b) => out.push(b),
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "cannot read a CA certificate")
            }
        }
    }
    out
}

/// The shared outcome of one blob's download (the in-flight map's value).
type BlobCell = OnceCell<Result<(), PullError>>;

/// Pulls images into the cache.
pub struct Puller {
    secure: Client,
    insecure: Client,
    manifests: Manifests,
    cfg: PullConfig,
    cache: Arc<Cache>,
    limiter: Arc<Limiter>,
    journal: Arc<Journal>,
    slots: Semaphore,
    inflight: Mutex<HashMap<String, Arc<BlobCell>>>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' ring provider for oci-client (once per process; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Puller {
    /// A puller writing into `cache`.
    pub fn new(
        cfg: PullConfig,
        cache: Arc<Cache>,
        limiter: Arc<Limiter>,
        journal: Arc<Journal>,
    ) -> Result<Self, PullError> {
        install_crypto_provider();
        let make = |protocol: ClientProtocol| {
            let config = ClientConfig {
                protocol,
                extra_root_certificates: cfg
                    .ca_pems
                    .iter()
                    .map(|p| Certificate {
                        encoding: CertificateEncoding::Pem,
                        data: p.clone(),
                    })
                    .collect(),
                platform_resolver: None,
                connect_timeout: Some(Duration::from_secs(15)),
                read_timeout: Some(Duration::from_secs(60)),
                user_agent: concat!("talm-agent/", env!("CARGO_PKG_VERSION")),
                ..ClientConfig::default()
            };
            Client::try_from(config).map_err(|e| {
                PullError::new(
                    "-",
                    FailureKind::Permanent,
                    format!("cannot build the registry client: {e}"),
                )
            })
        };
        let manifests = Manifests::new(
            &cfg.ca_pems,
            cfg.stall,
            concat!("talm-agent/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| PullError::new("-", FailureKind::Permanent, e))?;
        Ok(Self {
            secure: make(ClientProtocol::Https)?,
            insecure: make(ClientProtocol::Http)?,
            manifests,
            slots: Semaphore::new(cfg.parallel.max(1)),
            cfg,
            cache,
            limiter,
            journal,
            inflight: Mutex::new(HashMap::new()),
        })
    }

    fn live(&self) -> &Live {
        &self.journal.live
    }

    fn client(&self, s: &Source) -> &Client {
        if s.insecure {
            &self.insecure
        } else {
            &self.secure
        }
    }

    /// The sources of `image`, in the order to try them.
    pub fn sources(&self, image: &str) -> Result<Vec<Source>, PullError> {
        let perm = |m: String| PullError::new(image, FailureKind::Permanent, m);
        let cands = self
            .cfg
            .mirrors
            .candidates(image)
            .map_err(|e| perm(e.to_string()))?;
        let mut out = Vec::new();
        for c in cands {
            let r: ImageRef = c
                .pull_spec
                .parse()
                .map_err(|e: super::sources::SourceError| perm(e.to_string()))?;
            let reference = match &r.digest {
                Some(d) => {
                    Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone())
                }
                None => Reference::with_tag(
                    r.registry.clone(),
                    r.repository.clone(),
                    r.tag.clone().unwrap_or_else(|| "latest".into()),
                ),
            };
            let auth = self
                .cfg
                .secret
                .as_ref()
                .and_then(|s| s.credentials(&c.pull_spec))
                .map_or(RegistryAuth::Anonymous, |(u, p)| RegistryAuth::Basic(u, p));
            out.push(Source {
                pull_spec: c.pull_spec.clone(),
                reference,
                insecure: c.insecure,
                auth,
            });
        }
        if out.is_empty() {
            return Err(perm("no source to pull from".into()));
        }
        Ok(out)
    }

    async fn backoff(&self, b: &mut Backoff) {
        Live::add(&self.live().retries, 1);
        tokio::time::sleep(b.next_delay(random_u64())).await;
    }

    /// Reads the image's manifests (trying every source, with retries), stores them in the
    /// cache, and returns what to fetch.
    pub async fn resolve(&self, image: &str) -> Result<Resolved, PullError> {
        let mut sources = self.sources(image)?;
        let mut backoff = Backoff::new(self.cfg.retry.initial, self.cfg.retry.max);
        let mut last = None;
        for attempt in 0..=self.cfg.retry.retries {
            if attempt > 0 {
                self.backoff(&mut backoff).await;
            }
            let mut any_retryable = false;
            for (i, s) in sources.iter().enumerate() {
                match self.resolve_at(image, s).await {
                    Ok((top, blobs, layers)) => {
                        sources.swap(0, i);
                        return Ok(Resolved {
                            name: image.to_string(),
                            sources,
                            top,
                            blobs,
                            layers,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(image, source = %s.pull_spec, error = %e.message, "manifest");
                        any_retryable |= e.kind != FailureKind::Permanent;
                        last = Some(e);
                    }
                }
            }
            if !any_retryable {
                break;
            }
        }
        Err(last.unwrap_or_else(|| PullError::new(image, FailureKind::Permanent, "no source")))
    }

    async fn manifest(
        &self,
        image: &str,
        s: &Source,
        reference: &Reference,
    ) -> Result<(bytes::Bytes, Digest), PullError> {
        let fetched = self
            .manifests
            .get(self.client(s), image, s, reference, self.live(), &ACCEPTED)
            .await?;
        let body = fetched.body;
        let digest = fetched.digest_header.unwrap_or_default();
        // Check the body against the digest of a digest reference, and a tag reference's
        // against the registry's digest header.
        let d = Digest::of(&body);
        if let Some(want) = reference.digest()
            && want != d.as_str()
        {
            return Err(PullError::new(
                image,
                FailureKind::Mismatch,
                format!("manifest {reference}: digest mismatch: the content hashes to {d}"),
            ));
        }
        if digest.starts_with("sha256:") && digest != d.as_str() {
            return Err(PullError::new(
                image,
                FailureKind::Mismatch,
                format!(
                    "manifest {reference}: the registry says {digest}, the content hashes to {d}"
                ),
            ));
        }
        Ok((body, d))
    }

    /// Stores verified manifests in the cache.
    async fn store_manifests(
        &self,
        image: &str,
        manifests: &[(&bytes::Bytes, &Digest)],
    ) -> Result<(), PullError> {
        for (body, d) in manifests {
            self.cache
                .put_bytes(d, body)
                .await
                .map_err(|e| PullError::new(image, FailureKind::Permanent, e.to_string()))?;
        }
        Ok(())
    }

    async fn resolve_at(
        &self,
        image: &str,
        s: &Source,
    ) -> Result<(Descriptor, Vec<Descriptor>, Vec<Descriptor>), PullError> {
        let bad = |m: String| PullError::new(image, FailureKind::Permanent, m);
        let (body, d) = self.manifest(image, s, &s.reference).await?;
        let parsed: AnyManifest = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("manifest {d} from {}: {e}", s.pull_spec)))?;
        let top_type = media_type(&parsed);
        let top = Descriptor {
            media_type: top_type.clone(),
            digest: d.to_string(),
            size: body.len() as u64,
            ..Default::default()
        };
        let mut child_manifest = None;
        let (manifest, mdigest) = if let Some(list) = &parsed.manifests {
            let arch = self.cfg.arch.as_str();
            let pick = list
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| {
                    bad(format!(
                        "manifest list {d} has no linux/{arch} image (platforms: {})",
                        list.iter()
                            .filter_map(|m| m.platform.as_ref())
                            .map(|p| format!("{}/{}", p.os, p.architecture))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let child = Reference::with_digest(
                s.reference.registry().to_string(),
                s.reference.repository().to_string(),
                pick.digest.clone(),
            );
            let (cbody, cd) = self.manifest(image, s, &child).await?;
            if cbody.len() as u64 != pick.size {
                return Err(PullError::new(
                    image,
                    FailureKind::Mismatch,
                    format!(
                        "manifest {cd}: {} bytes, the list says {}",
                        cbody.len(),
                        pick.size
                    ),
                ));
            }
            let m: AnyManifest = serde_json::from_slice(&cbody)
                .map_err(|e| bad(format!("manifest {cd} from {}: {e}", s.pull_spec)))?;
            child_manifest = Some((cbody, cd.clone()));
            (m, cd)
        } else {
            (parsed, d.clone())
        };
        if manifest.schema_version != 2 {
            return Err(bad(format!(
                "manifest {mdigest}: schema version {} is not supported",
                manifest.schema_version
            )));
        }
        let config = manifest
            .config
            .ok_or_else(|| bad(format!("manifest {mdigest} has no config")))?;
        let layers = manifest.layers.unwrap_or_default();
        let mut blobs = vec![config];
        blobs.extend(layers.iter().cloned());
        for b in &blobs {
            Digest::parse(&b.digest).map_err(|e| bad(format!("manifest {mdigest}: {e}")))?;
        }
        // Only now, verified and understood, do the manifests go into the cache.
        let mut store = vec![(&body, &d)];
        if let Some((cbody, cd)) = &child_manifest {
            store.push((cbody, cd));
        }
        self.store_manifests(image, &store).await?;
        Ok((top, blobs, layers))
    }

    /// Fetches every blob of `r` (concurrently, each at most once per run).
    pub async fn fetch_all(&self, r: &Resolved) -> Result<(), PullError> {
        let results =
            futures_util::future::join_all(r.blobs.iter().map(|b| self.fetch_blob(r, b))).await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(drop)
    }

    /// Fetches one blob of `r` unless the cache has it; waits for another image's download of
    /// the same blob instead of starting a second one.
    pub async fn fetch_blob(&self, r: &Resolved, desc: &Descriptor) -> Result<(), PullError> {
        let cell = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(desc.digest.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let out = cell
            .get_or_init(|| self.fetch_blob_retrying(r, desc))
            .await
            .clone();
        if out.is_err() {
            // Let a later image try again.
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&desc.digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                map.remove(&desc.digest);
            }
        }
        out.map_err(|mut e| {
            if e.image != r.name {
                e.message = format!("{} (while pulling {})", e.message, e.image);
                e.image = r.name.clone();
            }
            e
        })
    }

    async fn fetch_blob_retrying(&self, r: &Resolved, desc: &Descriptor) -> Result<(), PullError> {
        let d = Digest::parse(&desc.digest)
            .map_err(|e| PullError::new(&r.name, FailureKind::Permanent, e.to_string()))?;
        // A file of the right size was counted as done by the progress figures.
        let counted = self.cache.has_blob(&d, desc.size);
        let check = self
            .cache
            .check_blob(&d, desc.size)
            .await
            .map_err(|e| PullError::new(&r.name, FailureKind::Permanent, e.to_string()))?;
        match check {
            BlobCheck::Good => {
                Live::add(&self.live().blobs_cached, 1);
                Live::add(&self.live().bytes_done, desc.size);
                return Ok(());
            }
            BlobCheck::Missing => {}
            BlobCheck::Removed(why) => {
                tracing::warn!(image = %r.name, blob = %d, reason = %why, "a cached blob was bad: removed, fetching it again");
                Live::add(&self.live().digest_mismatches, 1);
                if counted {
                    Live::sub(&self.live().bytes_done, desc.size);
                }
            }
        }
        let mut backoff = Backoff::new(self.cfg.retry.initial, self.cfg.retry.max);
        let mut last = None;
        for attempt in 0..=self.cfg.retry.retries {
            if attempt > 0 {
                self.backoff(&mut backoff).await;
            }
            let mut any_retryable = false;
            for s in &r.sources {
                match self.download(&r.name, s, &d, desc.size).await {
                    Ok(()) => {
                        Live::add(&self.live().blobs_fetched, 1);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(image = %r.name, source = %s.pull_spec, attempt, error = %e.message, "blob download failed");
                        if e.kind == FailureKind::Mismatch {
                            Live::add(&self.live().digest_mismatches, 1);
                        }
                        any_retryable |= e.kind != FailureKind::Permanent;
                        last = Some(e);
                    }
                }
            }
            if !any_retryable {
                break;
            }
        }
        Err(last.unwrap_or_else(|| PullError::new(&r.name, FailureKind::Permanent, "no source")))
    }

    /// One download attempt from one source, resuming the partial file.
    async fn download(
        &self,
        image: &str,
        s: &Source,
        d: &Digest,
        size: u64,
    ) -> Result<(), PullError> {
        let _slot = self.slots.acquire().await.map_err(|_| {
            PullError::new(image, FailureKind::Permanent, "the download pool is closed")
        })?;
        let cache_err = |e: CacheError| {
            let kind = if matches!(e, CacheError::Mismatch { .. }) {
                FailureKind::Mismatch
            } else {
                FailureKind::Permanent
            };
            PullError::new(image, kind, format!("from {}: {e}", s.pull_spec))
        };
        let mut part = self.cache.open_partial(d, size).await.map_err(cache_err)?;
        let live = self.live();
        // Bytes on disk count as done; an attempt that fails gives back what it counted (the
        // next one counts the partial again).
        let mut counted = part.len();
        Live::add(&live.bytes_done, counted);
        let result = self.stream_into(image, s, d, &mut part, &mut counted).await;
        let result = match result {
            Ok(()) => part.commit().await.map_err(cache_err),
            Err(e) => {
                let _ = part.flush().await;
                Err(e)
            }
        };
        if result.is_err() {
            Live::sub(&live.bytes_done, counted);
        }
        result
    }

    async fn stream_into(
        &self,
        image: &str,
        s: &Source,
        d: &Digest,
        part: &mut super::cache::Partial,
        counted: &mut u64,
    ) -> Result<(), PullError> {
        let size = part.size();
        if part.len() >= size {
            return Ok(());
        }
        let live = self.live();
        let net = |e: String| {
            PullError::new(
                image,
                FailureKind::Transient,
                format!("blob {d} from {}: {e}", s.pull_spec),
            )
        };
        let cache_err = |e: CacheError| {
            let kind = if matches!(e, CacheError::Mismatch { .. }) {
                FailureKind::Mismatch
            } else {
                FailureKind::Permanent
            };
            PullError::new(image, kind, format!("from {}: {e}", s.pull_spec))
        };
        let stalled = |e: super::stall::Stalled| {
            Live::add(&live.stalls, 1);
            PullError::new(
                image,
                FailureKind::Transient,
                format!(
                    "{e} from {} for blob {d} (of {})",
                    s.reference.resolve_registry(),
                    s.pull_spec
                ),
            )
        };
        let mut watch = Watch::start(self.cfg.stall);
        let client = self.client(s);
        client
            .store_auth_if_needed(s.reference.resolve_registry(), &s.auth)
            .await;
        if !part.is_empty() {
            Live::add(&live.blobs_resumed, 1);
        }
        // Bytes granted by the limiter and not yet received.
        let mut credit = 0u64;
        loop {
            let offset = part.len();
            if offset >= size {
                return Ok(());
            }
            // Under a cap, ask only for bytes already granted, a range at a time: the registry
            // then cannot run ahead of the cap by what the sockets buffer (megabytes).
            let rate = self.limiter.rate();
            let want = (rate > 0).then(|| range_len(rate).min(size - offset));
            if let Some(n) = want
                && n > credit
            {
                let waited = tokio::time::Instant::now();
                self.limiter.acquire(n - credit).await;
                watch.pause(waited.elapsed());
                credit = n;
            }
            // The next range is reserved while this one streams, so that the request's round
            // trip does not leave the cap unused.
            let ahead = want.map_or(0, |n| {
                let after = offset + n;
                range_len(rate).min(size.saturating_sub(after))
            });
            let fetch = async {
                let resp = watch
                    .guard(client.pull_blob_stream_partial(&s.reference, &d.as_str(), offset, want))
                    .await
                    .map_err(stalled)?
                    .map_err(|e| {
                        PullError::new(
                            image,
                            classify(&e),
                            format!("blob {d} from {}: {e}", s.pull_spec),
                        )
                    })?;
                let mut stream = match resp {
                    BlobResponse::Partial(st) => st,
                    BlobResponse::Full(st) => {
                        if offset > 0 {
                            // The server ignored the Range header: start over.
                            Live::sub(&live.bytes_done, *counted);
                            *counted = 0;
                            part.restart().await.map_err(cache_err)?;
                        }
                        st
                    }
                };
                let start = part.len();
                while let Some(chunk) = watch.guard(stream.next()).await.map_err(stalled)? {
                    match chunk {
                        Ok(bytes) => {
                            // Granted and written in pieces, so that one large chunk cannot take a
                            // cap's whole allowance at one instant.
                            for piece in bytes.chunks(LIMITER_PIECE) {
                                let n = piece.len() as u64;
                                if credit >= n {
                                    credit -= n;
                                } else {
                                    let waited = tokio::time::Instant::now();
                                    self.limiter.acquire(n - credit).await;
                                    watch.pause(waited.elapsed());
                                    credit = 0;
                                }
                                part.write(piece).await.map_err(cache_err)?;
                                *counted += n;
                                Live::add(&live.bytes_fetched, n);
                                Live::add(&live.bytes_done, n);
                                watch.add(n).map_err(stalled)?;
                            }
                        }
                        // oci-client verifies full responses itself and fails at the end on a
                        // mismatch; with every byte in hand, our own check below gives the clear
                        // error.
                        Err(_) if part.len() == size => break,
                        Err(e) => return Err(net(e.to_string())),
                    }
                }
                Ok::<u64, PullError>(start)
            };
            let reserve = async {
                if ahead > 0 {
                    self.limiter.acquire(ahead).await;
                }
            };
            let (fetched, ()) = tokio::join!(fetch, reserve);
            let start = fetched?;
            credit += ahead;
            match want {
                // The rest was asked for in one go: what came is all there is (the commit
                // checks size and digest).
                None => return Ok(()),
                Some(n) if part.len() < size && part.len() < start + n => {
                    return Err(net(format!(
                        "the response to a range of {n} bytes at {offset} ended after {}",
                        part.len() - start
                    )));
                }
                Some(_) => {}
            }
        }
    }

    /// Pulls `image` into the cache: manifests, then blobs; then names it in `index.json`.
    pub async fn pull(&self, r: &Resolved) -> Result<(), PullError> {
        self.fetch_all(r).await?;
        self.cache
            .tag(&oci_ref_name(&r.name), r.top.clone())
            .await
            .map_err(|e| PullError::new(&r.name, FailureKind::Permanent, e.to_string()))
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
}

pub fn media_type(m: &AnyManifest) -> String {
    match &m.media_type {
        Some(t) if !t.is_empty() => t.clone(),
        _ if m.manifests.is_some() => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

/// The `org.opencontainers.image.ref.name` of an image in the cache: its pull spec when that is
/// a valid OCI ref name (`skopeo copy oci:<dir>:<name>` then reads naturally), otherwise
/// `img-<sha256 of the pull spec>`.
pub fn oci_ref_name(pull_spec: &str) -> String {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(
            r"^[A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*(/[A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*)*$",
        )
        .ok()
    });
    if re.as_ref().is_some_and(|re| re.is_match(pull_spec)) {
        pull_spec.to_string()
    } else {
        format!("img-{}", Digest::of(pull_spec.as_bytes()).hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        assert_eq!(
            oci_ref_name("127.0.0.1:5000/a/b:v1"),
            "127.0.0.1:5000/a/b:v1"
        );
        let d = format!("q.io/a/b@sha256:{}", "a".repeat(64));
        assert_eq!(oci_ref_name(&d), d);
        assert!(oci_ref_name("q.io/a__b:v1").starts_with("img-"));
    }

    #[test]
    fn errors_are_classified() {
        use OciDistributionError as E;
        let server = |code| E::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(classify(&server(503)), FailureKind::Transient);
        assert_eq!(classify(&server(429)), FailureKind::Transient);
        assert_eq!(classify(&server(404)), FailureKind::Permanent);
        assert_eq!(
            classify(&E::UnauthorizedError { url: "u".into() }),
            FailureKind::Permanent
        );
        assert_eq!(
            classify(&E::IoError(std::io::Error::other("reset"))),
            FailureKind::Transient
        );
    }

    #[test]
    fn manifest_media_types() {
        let m: AnyManifest = serde_json::from_str(r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert_eq!(media_type(&m), OCI_INDEX);
        let m: AnyManifest = serde_json::from_str(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#,
        )
        .unwrap();
        assert_eq!(media_type(&m), DOCKER_MANIFEST);
    }
}

//! A native etcd v3 snapshot client: the `etcdserverpb.Maintenance/Snapshot` server-streaming
//! RPC over tonic, with the node's etcd client certificates.
//!
//! The three messages are declared here with `prost` derives (the subset of etcd's
//! `rpc.proto` the call uses), so the agent needs neither `protoc` nor a build script. The
//! stream is written to disk as it arrives (bounded memory) and verified: etcd appends the
//! sha256 of the database to the stream, which is also what `etcdctl snapshot restore` checks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::digest;
use talm_shared::hex;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// OpenShift's etcd endpoint on a control-plane node.
pub const DEFAULT_ENDPOINT: &str = "https://localhost:2379";
/// OpenShift's etcd serving CA bundle (host path).
pub const DEFAULT_CA: &str =
    "/etc/kubernetes/static-pod-resources/etcd-certs/configmaps/etcd-serving-ca/ca-bundle.crt";
/// OpenShift's etcd client certificate directory; the files are `etcd-peer-<node>.crt/.key`.
pub const DEFAULT_CERT_DIR: &str =
    "/etc/kubernetes/static-pod-resources/etcd-certs/secrets/etcd-all-certs";

/// `etcdserverpb.SnapshotRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotRequest {}

/// `etcdserverpb.ResponseHeader` (the fields we log).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// Cluster id.
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    /// Member id.
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    /// Store revision.
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// `etcdserverpb.SnapshotResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotResponse {
    /// Sent with the first message.
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    /// Bytes still to come after this message.
    #[prost(uint64, tag = "2")]
    pub remaining_bytes: u64,
    /// The next piece of the stream.
    #[prost(bytes = "vec", tag = "3")]
    pub blob: Vec<u8>,
    /// The server version (etcd 3.5.x and later).
    #[prost(string, tag = "4")]
    pub version: String,
}

/// Where and how to reach the local etcd member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Endpoints, tried in order (`https://` uses TLS; `http://` does not).
    pub endpoints: Vec<String>,
    /// CA bundle that signed the server's certificate (absolute, already under the host root).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM).
    pub client_key: Option<PathBuf>,
    /// Connect timeout per endpoint.
    pub connect_timeout: Duration,
}

/// What a snapshot produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// File size in bytes (the database plus etcd's 32-byte trailing sha256).
    pub size: u64,
    /// sha256 of the whole file (hex).
    pub file_sha256: String,
    /// The store revision at the snapshot, when the server sends a response header (etcd 3.4
    /// does not).
    pub revision: Option<i64>,
    /// The endpoint that answered.
    pub endpoint: String,
}

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A certificate or key could not be read.
    #[error("etcd client: cannot read {path}: {source}")]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No endpoint accepted a connection.
    #[error(
        "etcd: no endpoint reachable ({details}); check that etcd runs and that the certificates are the node's"
    )]
    Connect {
        /// Each endpoint's error.
        details: String,
    },
    /// The RPC failed.
    #[error("etcd snapshot RPC failed: {0}")]
    Rpc(#[from] tonic::Status),
    /// Writing the snapshot failed.
    #[error("writing the etcd snapshot to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stream did not end with a valid sha256 of the database.
    #[error("etcd snapshot is corrupt or truncated: {0}")]
    Integrity(String),
    /// The deadline passed.
    #[error("etcd snapshot did not finish before the deadline")]
    Deadline,
    /// No endpoint configured.
    #[error("etcd: no endpoint configured")]
    NoEndpoint,
}

fn read(path: &Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|source| EtcdError::ReadCert {
        path: path.to_owned(),
        source,
    })
}

async fn connect(cfg: &EtcdConfig, url: &str) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(cfg.connect_timeout);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &cfg.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca).map_err(|e| e.to_string())?));
        }
        if let (Some(c), Some(k)) = (&cfg.client_cert, &cfg.client_key) {
            let cert = read(c).map_err(|e| e.to_string())?;
            let key = read(k).map_err(|e| e.to_string())?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(tls).map_err(|e| e.to_string())?;
    }
    tokio::time::timeout(cfg.connect_timeout, ep.connect())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| {
            format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
            )
        })
}

/// Streams a snapshot of the member into `out` (created or truncated), verifying etcd's
/// trailing sha256. Blocks the calling thread (a private runtime drives the RPC; from inside a
/// runtime it runs on a thread of its own); from async code, prefer `spawn_blocking`.
pub fn snapshot_to_file(
    cfg: &EtcdConfig,
    out: &Path,
    timeout: Duration,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<SnapshotInfo, EtcdError> {
    let run = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| EtcdError::Write {
                path: out.to_owned(),
                source,
            })?;
        rt.block_on(async {
            tokio::time::timeout(timeout, snapshot_async(cfg, out, on_bytes))
                .await
                .map_err(|_| EtcdError::Deadline)?
        })
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        // Called from inside a runtime (an async caller that did not use spawn_blocking): a
        // runtime cannot be started on this thread, so drive the private one on its own thread.
        std::thread::scope(|s| {
            s.spawn(run).join().unwrap_or_else(|_| {
                Err(EtcdError::Integrity("the snapshot thread panicked".into()))
            })
        })
    } else {
        run()
    }
}

async fn snapshot_async(
    cfg: &EtcdConfig,
    out: &Path,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<SnapshotInfo, EtcdError> {
    if cfg.endpoints.is_empty() {
        return Err(EtcdError::NoEndpoint);
    }
    let mut errors = Vec::new();
    let mut chosen = None;
    for url in &cfg.endpoints {
        match connect(cfg, url).await {
            Ok(ch) => {
                chosen = Some((url.clone(), ch));
                break;
            }
            Err(e) => errors.push(format!("{url}: {e}")),
        }
    }
    let Some((endpoint, channel)) = chosen else {
        return Err(EtcdError::Connect {
            details: errors.join("; "),
        });
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| EtcdError::Connect {
        details: format!("{endpoint}: {e}"),
    })?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Maintenance/Snapshot");
    let codec: tonic_prost::ProstCodec<SnapshotRequest, SnapshotResponse> = Default::default();
    let mut stream = grpc
        .server_streaming(tonic::Request::new(SnapshotRequest {}), path, codec)
        .await?
        .into_inner();

    let werr = |source| EtcdError::Write {
        path: out.to_owned(),
        source,
    };
    let file = std::fs::File::create(out).map_err(werr)?;
    let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
    let mut db_hash = digest::Context::new(&digest::SHA256);
    let mut file_hash = digest::Context::new(&digest::SHA256);
    // The last 32 bytes seen so far: they may be etcd's trailing hash, so they are hashed into
    // the database digest only once more bytes arrive.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    let mut size = 0u64;
    let mut revision = None;
    while let Some(msg) = stream.message().await? {
        if let Some(h) = &msg.header {
            revision = Some(h.revision);
        }
        let blob = msg.blob;
        w.write_all(&blob).map_err(werr)?;
        file_hash.update(&blob);
        size += blob.len() as u64;
        on_bytes(blob.len() as u64);
        if blob.len() >= 32 {
            db_hash.update(&tail);
            db_hash.update(&blob[..blob.len() - 32]);
            tail.clear();
            tail.extend_from_slice(&blob[blob.len() - 32..]);
        } else {
            tail.extend_from_slice(&blob);
            if tail.len() > 32 {
                let extra = tail.len() - 32;
                db_hash.update(&tail[..extra]);
                tail.drain(..extra);
            }
        }
    }
    let file = w.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    if size % 512 != 32 || tail.len() != 32 {
        return Err(EtcdError::Integrity(format!(
            "{size} bytes received: not a database followed by its sha256"
        )));
    }
    if db_hash.finish().as_ref() != tail.as_slice() {
        return Err(EtcdError::Integrity(
            "the trailing sha256 does not match the database".into(),
        ));
    }
    Ok(SnapshotInfo {
        size,
        file_sha256: hex::encode(file_hash.finish().as_ref()),
        revision,
        endpoint,
    })
}

/// Verifies a snapshot file on disk: its trailing sha256 matches the database before it.
pub fn verify_snapshot_file(path: &Path) -> Result<(), EtcdError> {
    use std::io::Read;
    let werr = |source| EtcdError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(werr)?;
    let len = f.metadata().map_err(werr)?.len();
    if len % 512 != 32 {
        return Err(EtcdError::Integrity(format!(
            "{}: {len} bytes is not a database followed by its sha256",
            path.display()
        )));
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut left = len - 32;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.read_exact(&mut buf[..n]).map_err(werr)?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; 32];
    f.read_exact(&mut trailer).map_err(werr)?;
    if ctx.finish().as_ref() == trailer {
        Ok(())
    } else {
        Err(EtcdError::Integrity(format!(
            "{}: the trailing sha256 does not match the database",
            path.display()
        )))
    }
}

//! `talm-agent backup`: flags (each with an env fallback and OpenShift's defaults) and the
//! console progress (a bar on a terminal, log lines otherwise).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{BackupConfig, BackupError, BackupReport, EtcdAccess, GIB, Host, Progress, Step};
use crate::host::archive::Compression;
use crate::host::disk::RealDisk;
use crate::host::etcd;
use crate::host::exec::RealRunner;
use crate::host::root::HostRoot;

/// Archive compression on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// zstd level 3 (fast; the default).
    Zstd,
    /// gzip level 6 (what `tar czf` writes).
    Gzip,
    /// No compression.
    None,
}

/// `talm-agent backup`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupArgs {
    /// The node's `/` (the agent may run with the host mounted elsewhere).
    #[arg(long, env = "TALM_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,
    /// Where and how to back up.
    #[command(flatten)]
    pub options: BackupOptions,
    /// Give up after this many seconds (TALM's backup job allows 480).
    #[arg(long, env = "TALM_BACKUP_TIMEOUT_SECONDS")]
    pub timeout_seconds: Option<u64>,
}

/// The backup settings shared by `talm-agent backup` and the daemon (`talm-agent run`), which
/// takes the backups the hub assigns.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupOptions {
    /// The recovery directory (a host path).
    #[arg(long, env = "TALM_RECOVERY_DIR", default_value = "/var/recovery")]
    pub dir: PathBuf,
    /// Free space required beyond the estimate, in GiB.
    #[arg(long, env = "TALM_BACKUP_SPACE_MARGIN_GIB", default_value_t = 10)]
    pub space_margin_gib: u64,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',', default_value = etcd::DEFAULT_ENDPOINT)]
    pub etcd_endpoints: Vec<String>,
    /// etcd server CA bundle (host path).
    #[arg(long, env = "ETCDCTL_CACERT", default_value = etcd::DEFAULT_CA)]
    pub etcd_cacert: PathBuf,
    /// etcd client certificate (host path; default: the node's `etcd-peer-<node>.crt`).
    #[arg(long, env = "ETCDCTL_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// etcd client key (host path; default: the node's `etcd-peer-<node>.key`).
    #[arg(long, env = "ETCDCTL_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// The node name (for the default certificate names; default: the host's hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Compression of the directory archives.
    #[arg(
        long,
        env = "TALM_BACKUP_COMPRESSION",
        value_enum,
        default_value = "zstd"
    )]
    pub compression: CompressionArg,
}

impl BackupArgs {
    /// The configuration these flags describe, on the real host.
    pub fn config(&self, timestamp: String) -> BackupConfig {
        let deadline = self
            .timeout_seconds
            .map(|s| Instant::now() + Duration::from_secs(s));
        self.options.config(&self.host_root, timestamp, deadline)
    }

    /// Runs the backup with console progress.
    pub fn run(&self, timestamp: String) -> Result<BackupReport, BackupError> {
        let cfg = self.config(timestamp);
        let progress = ConsoleProgress::new(std::io::stderr().is_terminal());
        let report = super::run(&cfg, &progress);
        progress.done();
        let report = report?;
        tracing::info!(
            dir = %report.dir.display(),
            bytes = report.bytes,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "backup complete"
        );
        Ok(report)
    }
}

impl BackupOptions {
    /// The configuration these settings describe, on the real host at `host_root`.
    pub fn config(
        &self,
        host_root: &std::path::Path,
        timestamp: String,
        deadline: Option<Instant>,
    ) -> BackupConfig {
        let root = HostRoot::new(host_root);
        let node = self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string(root.join("/proc/sys/kernel/hostname"))
                .or_else(|_| std::fs::read_to_string(root.join("/etc/hostname")))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        });
        let peer = |ext: &str| {
            PathBuf::from(etcd::DEFAULT_CERT_DIR).join(format!("etcd-peer-{node}.{ext}"))
        };
        BackupConfig {
            host: Host {
                root,
                runner: Arc::new(RealRunner::new()),
                disk: Arc::new(RealDisk),
            },
            dir: self.dir.clone(),
            margin: self.space_margin_gib.saturating_mul(GIB),
            etcd: EtcdAccess {
                endpoints: self.etcd_endpoints.clone(),
                ca: Some(self.etcd_cacert.clone()),
                cert: Some(self.etcd_cert.clone().unwrap_or_else(|| peer("crt"))),
                key: Some(self.etcd_key.clone().unwrap_or_else(|| peer("key"))),
            },
            compression: match self.compression {
                CompressionArg::Zstd => Compression::Zstd3,
                CompressionArg::Gzip => Compression::Gzip(6),
                CompressionArg::None => Compression::None,
            },
            deadline,
            timestamp,
        }
    }
}

/// Progress on the console: an indicatif bar on a terminal, log lines otherwise.
#[derive(Debug)]
pub struct ConsoleProgress {
    bar: Option<indicatif::ProgressBar>,
    done: AtomicU64,
}

impl ConsoleProgress {
    /// A bar when `tty`, log lines otherwise.
    pub fn new(tty: bool) -> Self {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            done: AtomicU64::new(0),
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for ConsoleProgress {
    fn step(&self, step: Step) {
        match &self.bar {
            Some(b) => b.set_message(step.name()),
            None => tracing::info!(
                step = step.name(),
                bytes_done = self.done.load(Ordering::Relaxed),
                "backup step"
            ),
        }
    }
    fn total(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn warn(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| tracing::warn!("{msg}")),
            None => tracing::warn!("{msg}"),
        }
    }
}

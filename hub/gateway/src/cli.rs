//! Command-line arguments of `talm-hub gateway` and `talm-hub agents
//! token|revoke|machineconfig`, and their wiring. The hub binary flattens these into its
//! subcommand enum and calls [`run_gateway`] / [`run_agents`]. Every flag has an environment
//! fallback.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use talm_shared::clock::{Clock, SystemClock};
use talm_shared::fsutil::{atomic_write, read_optional};
use talm_shared::pki::{self, Authority};
use tokio::net::TcpListener;
use tracing::info;

use crate::enroll::{EnrollError, Enroller, issue_token};
use crate::server::{Gateway, GatewayConfig};
use crate::store::StoreError;
use crate::store::file::{FileEnrollmentStore, FileSpokeAgentStore};
use talm_shared::tls::check_cluster_name;

/// Errors of the gateway commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Enrollment failed.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] talm_shared::tls::TlsError),
    /// Certificate generation failed.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// File or socket I/O failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A required file is missing.
    #[error("{0}")]
    Missing(String),
    /// `agents machineconfig` input is invalid.
    #[error(transparent)]
    MachineConfig(#[from] crate::machineconfig::MachineConfigError),
}

/// The default of `--progress-write-interval`, seconds.
pub const DEFAULT_PROGRESS_WRITE_INTERVAL_SECS: u64 = 20;

/// The gateway flags shared by `talm-hub gateway` and `talm-hub run` (flattened into both).
#[derive(Clone, Debug, Args)]
pub struct SessionArgs {
    /// Names (DNS or IP) of a generated serving certificate: the host agents dial.
    #[arg(
        long,
        env = "TALM_GATEWAY_SERVER_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub server_names: Vec<String>,
    /// Heartbeat interval told to agents, seconds.
    #[arg(long, env = "TALM_HEARTBEAT_INTERVAL_SECS", default_value_t = 30)]
    pub heartbeat_interval_secs: u64,
    /// Silence after which an agent is marked disconnected, seconds.
    #[arg(long, env = "TALM_HEARTBEAT_TIMEOUT_SECS", default_value_t = 90)]
    pub heartbeat_timeout_secs: u64,
    /// Lifetime of issued agent certificates, seconds.
    #[arg(long, env = "TALM_AGENT_CERT_LIFETIME_SECS", default_value_t = 86_400)]
    pub cert_lifetime_secs: u64,
    /// Close agent-port connections that have had no open gRPC stream for this long, seconds
    /// (minimum 1).
    #[arg(
        long,
        env = "TALM_GATEWAY_IDLE_TIMEOUT_SECS",
        default_value_t = crate::conns::DEFAULT_IDLE_TIMEOUT_SECS
    )]
    pub idle_timeout_secs: u64,
    /// Most agent-port connections without a verified client certificate (enrolling agents,
    /// handshakes in progress) kept at once; a new one closes the oldest (minimum 1).
    #[arg(
        long,
        env = "TALM_GATEWAY_MAX_UNVERIFIED_CONNECTIONS",
        default_value_t = crate::conns::DEFAULT_MAX_UNVERIFIED
    )]
    pub max_unverified_connections: usize,
    /// Write an agent's pre-cache progress (bytes, throughput, registries) to its SpokeAgent
    /// status at most this often, seconds (minimum 1). The first total or registries of a task,
    /// and every result, are written at once.
    #[arg(
        long = "progress-write-interval",
        env = "TALM_GATEWAY_PROGRESS_WRITE_INTERVAL_SECS",
        default_value_t = DEFAULT_PROGRESS_WRITE_INTERVAL_SECS
    )]
    pub progress_write_interval_secs: u64,
}

impl SessionArgs {
    /// The pre-cache progress write interval these flags give.
    pub fn progress_write_interval(&self) -> Duration {
        Duration::from_secs(self.progress_write_interval_secs.max(1))
    }

    /// The connection limits these flags give.
    pub fn conn_limits(&self) -> crate::conns::ConnLimits {
        crate::conns::ConnLimits {
            idle_timeout: Duration::from_secs(self.idle_timeout_secs.max(1)),
            max_unverified: self.max_unverified_connections.max(1),
        }
    }
}

/// `talm-hub gateway`: serve the agent channel with the file-backed stores.
#[derive(Clone, Debug, Args)]
pub struct GatewayArgs {
    /// State directory: enrollment, SpokeAgent spec/status, and the PKI (`pki/`).
    #[arg(long, env = "TALM_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Address of the agent channel (gRPC over TLS 1.3).
    #[arg(long, env = "TALM_GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the HTTP admin endpoint (/agents, /metrics, /healthz).
    #[arg(
        long,
        env = "TALM_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub admin_listen: SocketAddr,
    /// Serving names, heartbeats and certificate lifetime.
    #[command(flatten)]
    pub session: SessionArgs,
    /// How often SpokeAgent specs and enrollments are re-read, milliseconds.
    #[arg(long, env = "TALM_POLL_INTERVAL_MS", default_value_t = 2000)]
    pub poll_interval_ms: u64,
}

/// `talm-hub agents ...`.
#[derive(Clone, Debug, Args)]
pub struct AgentsArgs {
    /// State directory (as for `gateway`). Without it, `talm-hub agents` writes the Secrets of
    /// the hub's namespace through the Kubernetes API (KUBECONFIG or in-cluster config), for a
    /// hub running `talm-hub run`.
    #[arg(long, env = "TALM_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Without --state-dir: the namespace of the gateway's Secrets (default: the pod's
    /// namespace, else `talm-system`).
    #[arg(long, env = "TALM_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: AgentsCommand,
}

/// Enrollment commands.
#[derive(Clone, Debug, Subcommand)]
pub enum AgentsCommand {
    /// Issue a one-time bootstrap token for CLUSTER (printed on stdout).
    Token {
        /// The cluster the token enrolls.
        cluster: String,
        /// Token lifetime, seconds.
        #[arg(long, env = "TALM_TOKEN_TTL_SECS", default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Revoke CLUSTER's enrollment: its session ends and reconnects are refused.
    Revoke {
        /// The cluster.
        cluster: String,
    },
    /// Print a MachineConfig (role master, Ignition 3.2.0) that installs talm-agent on
    /// CLUSTER: its systemd unit, /etc/talm/agent.env, the hub CA bundle and a fresh bootstrap
    /// token (issued like `agents token`). The agent runs from its image with podman
    /// (`--image`, the default) or from a binary downloaded once and checked
    /// (`--binary-url` + `--binary-sha256`).
    Machineconfig(MachineconfigArgs),
}

/// `talm-hub agents machineconfig`.
#[derive(Clone, Debug, Args)]
pub struct MachineconfigArgs {
    /// The cluster the MachineConfig enrolls.
    pub cluster: String,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        value_enum,
        env = "TALM_MACHINECONFIG_OUTPUT",
        default_value_t = MachineconfigOutput::Yaml
    )]
    pub output: MachineconfigOutput,
    /// The gateway URL the agent dials: the Route's host (`https://<host>:443`) or the
    /// LoadBalancer's address (`https://<address>:8443`).
    #[arg(long, env = "TALM_HUB_ENDPOINT", value_name = "URL")]
    pub hub_endpoint: String,
    /// PEM CA bundle of the gateway's serving certificate (default:
    /// `<state-dir>/pki/hub-ca.crt`).
    #[arg(long, env = "TALM_HUB_CA_BUNDLE", value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Run the agent from this image with podman.
    #[arg(
        long,
        env = "TALM_AGENT_IMAGE",
        value_name = "IMAGE",
        conflicts_with = "binary_url"
    )]
    pub image: Option<String>,
    /// Instead of the image: download the agent binary from this URL (once; checked
    /// against --binary-sha256) and run it under the hardened unit.
    #[arg(
        long,
        env = "TALM_AGENT_BINARY_URL",
        value_name = "URL",
        requires = "binary_sha256"
    )]
    pub binary_url: Option<String>,
    /// SHA-256 (hex) of the binary at --binary-url.
    #[arg(
        long,
        env = "TALM_AGENT_BINARY_SHA256",
        value_name = "HEX",
        requires = "binary_url"
    )]
    pub binary_sha256: Option<String>,
    /// Lifetime of the embedded bootstrap token, seconds (it must outlast the MachineConfig's
    /// rollout and the node's reboot).
    #[arg(
        long,
        env = "TALM_MACHINECONFIG_TOKEN_TTL_SECS",
        default_value_t = 86_400
    )]
    pub ttl_secs: u64,
    /// The MachineConfigPool role label.
    #[arg(long, env = "TALM_MACHINECONFIG_ROLE", default_value = "master")]
    pub role: String,
}

/// Output format of `agents machineconfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MachineconfigOutput {
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Paths of the gateway PKI under `<state-dir>/pki`.
#[derive(Clone, Debug)]
pub struct PkiPaths {
    /// CA that signed the serving certificate: give it to agents as `--ca`.
    pub hub_ca: PathBuf,
    /// Serving certificate.
    pub server_cert: PathBuf,
    /// Serving key.
    pub server_key: PathBuf,
    /// Agent CA certificate.
    pub agent_ca_cert: PathBuf,
    /// Agent CA key.
    pub agent_ca_key: PathBuf,
}

impl PkiPaths {
    /// The standard layout.
    pub fn under(state_dir: &Path) -> Self {
        let d = state_dir.join("pki");
        Self {
            hub_ca: d.join("hub-ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            agent_ca_cert: d.join("agent-ca.crt"),
            agent_ca_key: d.join("agent-ca.key"),
        }
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    read_optional(path).map_err(|e| CliError::Io(path.display().to_string(), e))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CliError> {
    atomic_write(path, bytes, mode).map_err(|e| CliError::Io(path.display().to_string(), e))
}

/// Loads the PKI, generating whatever is missing (a self-signed hub CA and serving certificate
/// for `names`, and an agent CA). Returns (server cert, server key, agent CA).
pub fn ensure_pki(
    paths: &PkiPaths,
    names: &[String],
    clock: &dyn Clock,
) -> Result<(Vec<u8>, Vec<u8>, Authority), CliError> {
    let ten_years = Duration::from_secs(10 * 365 * 86_400);
    let now = clock.system_time();
    let agent_ca = match (read(&paths.agent_ca_cert)?, read(&paths.agent_ca_key)?) {
        (Some(c), Some(k)) => Authority {
            cert_pem: String::from_utf8_lossy(&c).into_owned(),
            key_pem: String::from_utf8_lossy(&k).into_owned(),
        },
        _ => {
            let ca = pki::new_ca("talm agent CA", now, ten_years)?;
            write(&paths.agent_ca_key, ca.key_pem.as_bytes(), 0o600)?;
            write(&paths.agent_ca_cert, ca.cert_pem.as_bytes(), 0o644)?;
            info!(path = %paths.agent_ca_cert.display(), "generated the agent CA");
            ca
        }
    };
    let (cert, key) = match (read(&paths.server_cert)?, read(&paths.server_key)?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let hub_ca = pki::new_ca("talm hub CA", now, ten_years)?;
            let leaf = pki::server_cert(&hub_ca, names, now, ten_years)?;
            write(&paths.hub_ca, hub_ca.cert_pem.as_bytes(), 0o644)?;
            write(&paths.server_key, leaf.key_pem.as_bytes(), 0o600)?;
            write(&paths.server_cert, leaf.cert_pem.as_bytes(), 0o644)?;
            info!(path = %paths.hub_ca.display(), "generated the hub CA and serving certificate; give hub-ca.crt to agents as --ca");
            (leaf.cert_pem.into_bytes(), leaf.key_pem.into_bytes())
        }
    };
    Ok((cert, key, agent_ca))
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run_gateway(
    args: GatewayArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (cert, key, agent_ca) = ensure_pki(
        &PkiPaths::under(&args.state_dir),
        &args.session.server_names,
        clock.as_ref(),
    )?;
    let tls = talm_shared::tls::server_config(&cert, &key, agent_ca.cert_pem.as_bytes())?;
    let enroll_store = Arc::new(FileEnrollmentStore::new(&args.state_dir)?);
    let agents = Arc::new(FileSpokeAgentStore::new(&args.state_dir)?);
    let cfg = GatewayConfig {
        heartbeat_interval: Duration::from_secs(args.session.heartbeat_interval_secs.max(1)),
        heartbeat_timeout: Duration::from_secs(args.session.heartbeat_timeout_secs.max(1)),
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(50)),
        limits: args.session.conn_limits(),
        progress_write_interval: args.session.progress_write_interval(),
        ..GatewayConfig::default()
    };
    let enroller = Enroller::new(
        agent_ca,
        enroll_store,
        clock.clone(),
        Duration::from_secs(args.session.cert_lifetime_secs.max(60)),
    );
    let gw = Gateway::new(cfg, clock, enroller, agents);
    let grpc = TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Io(args.listen.to_string(), e))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|e| CliError::Io(args.admin_listen.to_string(), e))?;
    info!(listen = %args.listen, admin = %args.admin_listen, "gateway serving");
    gw.serve(grpc, Some(admin), tls, shutdown).await?;
    Ok(())
}

/// Renders `agents machineconfig`: validates everything, then issues the token into `store`
/// (so bad input burns no token). The CA bundle is --ca-bundle, else what `default_ca` gives
/// (awaited only then): `(where it came from, PEM or None when absent)` (the file store's
/// `pki/hub-ca.crt`, or the `ca.crt` of the `talm-gateway-serving` Secret in Secrets mode).
pub async fn machineconfig(
    store: &dyn crate::store::EnrollmentStore,
    default_ca: impl Future<Output = Result<(String, Option<Vec<u8>>), CliError>>,
    args: &MachineconfigArgs,
) -> Result<String, CliError> {
    use crate::machineconfig::{self as mc, AgentInstall, MachineConfigError};
    let install = match (&args.binary_url, &args.binary_sha256) {
        (Some(url), Some(sha256)) => AgentInstall::Binary {
            url: url.clone(),
            sha256: sha256.clone(),
        },
        _ => AgentInstall::Image(
            args.image
                .clone()
                .unwrap_or_else(|| mc::DEFAULT_AGENT_IMAGE.to_string()),
        ),
    };
    mc::check_endpoint(&args.hub_endpoint)?;
    mc::check_install(&install)?;
    check_cluster_name(&args.cluster).map_err(EnrollError::InvalidCluster)?;
    let (ca_origin, ca) = match &args.ca_bundle {
        Some(path) => (path.display().to_string(), read(path)?),
        None => default_ca.await?,
    };
    let ca = ca.ok_or_else(|| {
        CliError::Missing(format!(
            "{ca_origin}: not found (give --ca-bundle, or start the gateway once to generate \
             its certificates)"
        ))
    })?;
    let ca_pem =
        String::from_utf8(ca).map_err(|_| MachineConfigError::CaBundle(ca_origin.clone()))?;
    if talm_shared::tls::certs_from_pem("CA bundle", ca_pem.as_bytes())
        .map(|c| c.is_empty())
        .unwrap_or(true)
    {
        return Err(MachineConfigError::CaBundle(ca_origin).into());
    }
    let token = issue_token(
        store,
        &SystemClock,
        &args.cluster,
        Duration::from_secs(args.ttl_secs),
    )
    .await?;
    let doc = mc::render(&mc::Input {
        cluster: args.cluster.clone(),
        hub_endpoint: args.hub_endpoint.clone(),
        ca_pem,
        token,
        install,
        role: args.role.clone(),
    })?;
    match args.output {
        // The caller prints with a trailing newline.
        MachineconfigOutput::Json => serde_json::to_string_pretty(&doc)
            .map_err(|e| CliError::Io("MachineConfig".into(), std::io::Error::other(e))),
        MachineconfigOutput::Yaml => serde_saphyr::to_string(&doc)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| CliError::Io("MachineConfig".into(), std::io::Error::other(e))),
    }
}

/// Runs `agents token|revoke|machineconfig`; returns what to print.
pub async fn run_agents(args: &AgentsArgs) -> Result<String, CliError> {
    let dir = args
        .state_dir
        .as_ref()
        .ok_or_else(|| CliError::Missing("--state-dir (or TALM_STATE_DIR) is required".into()))?;
    let store = FileEnrollmentStore::new(dir)?;
    match &args.command {
        AgentsCommand::Token { cluster, ttl_secs } => Ok(issue_token(
            &store,
            &SystemClock,
            cluster,
            Duration::from_secs(*ttl_secs),
        )
        .await?),
        AgentsCommand::Machineconfig(mc) => {
            let hub_ca = PkiPaths::under(dir).hub_ca;
            let default_ca = async { Ok((hub_ca.display().to_string(), read(&hub_ca)?)) };
            machineconfig(&store, default_ca, mc).await
        }
        AgentsCommand::Revoke { cluster } => {
            use crate::store::EnrollmentStore;
            if store.revoke(cluster).await? {
                Ok(format!("revoked the enrollment of cluster {cluster}"))
            } else {
                Ok(format!(
                    "cluster {cluster} was not enrolled (pending tokens were deleted)"
                ))
            }
        }
    }
}

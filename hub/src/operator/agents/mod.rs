//! The agent gateway inside `talm-hub run`: every replica (leader or not) serves the agent
//! channel (mTLS gRPC) with Kubernetes-backed stores, so agents can reach any replica.
//!
//! - [`secrets`]: how tokens, enrollments and key material are encoded in Secrets.
//! - [`enrollment`]: [`KubeEnrollmentStore`], tokens and enrollments in Secrets of the hub's
//!   namespace (conflict-safe across replicas), with a watch-fed enrollment cache.
//! - [`spokeagents`]: [`KubeSpokeAgentStore`], SpokeAgent specs from the operator's cache and
//!   status written through the status subresource.
//! - [`pki`]: the agent CA and the generated serving certificate, created once by whichever
//!   replica gets there first.
//!
//! The gateway's store traits are async, so the stores await the client directly. Reads the
//! gateway makes often (specs, statuses, enrollments) are served from memory.

pub mod enrollment;
pub mod pki;
pub mod secrets;
pub mod spokeagents;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use talm_gateway::enroll::Enroller;
use talm_gateway::store::StoreError;
use talm_gateway::{Gateway, GatewayConfig};
use talm_shared::clock::Clock;
use tokio::net::TcpListener;

pub use self::enrollment::{EnrollmentCache, KubeEnrollmentStore};
pub use self::pki::Serving;
pub use self::spokeagents::KubeSpokeAgentStore;

use super::{OperatorError, Shared};

/// The default namespace of the gateway's Secrets outside a pod.
pub const DEFAULT_NAMESPACE: &str = "talm-system";

/// Maps a client error of `verb` on `what` to a [`StoreError::Backend`].
pub fn backend(verb: &'static str, what: &str) -> impl Fn(kube::Error) -> StoreError + use<> {
    let what = format!("{verb} {what}");
    move |e| StoreError::Backend {
        what: what.clone(),
        message: e.to_string(),
    }
}

/// The namespace of the gateway's Secrets: the flag, else the pod's namespace, else
/// [`DEFAULT_NAMESPACE`].
pub fn namespace(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

/// Where the gRPC port's serving certificate comes from.
#[derive(Clone, Debug)]
pub enum ServingTls {
    /// PEM files (e.g. a mounted Secret from cert-manager or the service CA operator).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Key.
        key: PathBuf,
    },
    /// Generated once into the `talm-gateway-serving` Secret, for these names.
    Generated {
        /// DNS names or IPs.
        names: Vec<String>,
    },
}

/// How the gateway runs inside the operator.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// Namespace of the enrollment, token and key-material Secrets.
    pub namespace: String,
    /// The serving certificate.
    pub serving: ServingTls,
    /// Gateway tunables (heartbeats, poll interval, writers).
    pub gateway: GatewayConfig,
    /// Lifetime of issued agent certificates.
    pub cert_lifetime: Duration,
}

/// A gateway wired to one operator replica.
#[derive(Debug)]
pub struct AgentGateway {
    /// The gateway (sessions, registry, metrics).
    pub gateway: Arc<Gateway>,
    /// The enrollment store.
    pub enrollment: Arc<KubeEnrollmentStore>,
    /// The serving certificate (its `ca_pem` is what agents trust, when generated).
    pub serving: Serving,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    watch: tokio::task::JoinHandle<()>,
}

fn gateway_err(what: &str) -> impl Fn(StoreError) -> OperatorError + '_ {
    move |e| OperatorError::Gateway(format!("{what}: {e}"))
}

fn read_pem(path: &PathBuf) -> Result<String, OperatorError> {
    std::fs::read_to_string(path)
        .map_err(|e| OperatorError::Gateway(format!("{}: {e}", path.display())))
}

impl AgentGateway {
    /// Loads (or creates) the key material, builds the stores over `shared`'s client and cache,
    /// and starts the enrollment watch. Call [`AgentGateway::serve`] next.
    pub async fn start(
        shared: Arc<Shared>,
        settings: GatewaySettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OperatorError> {
        let client = shared.client.clone();
        let ns = settings.namespace.as_str();
        let agent_ca = pki::ensure_agent_ca(client.clone(), ns, clock.system_time())
            .await
            .map_err(gateway_err("agent CA"))?;
        let serving = match &settings.serving {
            ServingTls::Files { cert, key } => Serving {
                cert_pem: read_pem(cert)?,
                key_pem: read_pem(key)?,
                ca_pem: None,
            },
            ServingTls::Generated { names } => {
                pki::ensure_serving(client.clone(), ns, names, clock.system_time())
                    .await
                    .map_err(gateway_err("serving certificate"))?
            }
        };
        let tls = talm_shared::tls::server_config(
            serving.cert_pem.as_bytes(),
            serving.key_pem.as_bytes(),
            agent_ca.cert_pem.as_bytes(),
        )
        .map_err(|e| OperatorError::Gateway(format!("gRPC TLS: {e}")))?;
        let enrollment = Arc::new(KubeEnrollmentStore::new(client, ns));
        let watch = enrollment.spawn_watch();
        let agents = Arc::new(KubeSpokeAgentStore::new(shared.clone()));
        let enroller = Enroller::new(
            agent_ca,
            enrollment.clone(),
            clock.clone(),
            settings.cert_lifetime,
        );
        let gateway = Gateway::new(settings.gateway, clock, enroller, agents);
        Ok(Self {
            gateway,
            enrollment,
            serving,
            tls,
            shared,
            watch,
        })
    }

    /// Serves the agent channel on `listener` until `shutdown` resolves. Sessions are accepted
    /// only once the operator's caches and the enrollment cache have finished their first
    /// lists (the gateway must never read a partial view of SpokeAgent specs as "no tasks").
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), OperatorError> {
        let shutdown = shutdown.shared();
        let ready = async {
            self.shared.wait_synced().await;
            self.enrollment.cache().wait_synced().await;
        };
        tokio::select! {
            () = ready => {}
            () = shutdown.clone() => {
                self.watch.abort();
                return Ok(());
            }
        }
        tracing::info!(addr = ?listener.local_addr().ok(), "agent gateway serving");
        let out = self
            .gateway
            .clone()
            .serve(listener, None, self.tls.clone(), shutdown)
            .await
            .map_err(|e| OperatorError::Gateway(format!("gRPC server: {e}")));
        self.watch.abort();
        out
    }
}

/// The agent-gateway flags of `talm-hub run` (flattened into its arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    /// Serve the agent channel in this replica (every replica does, leader or not).
    #[arg(long = "gateway", env = "TALM_GATEWAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Address of the agent channel (gRPC over mTLS). The `/agents` and `/agents/{cluster}`
    /// views and the `talm_gateway_*` metrics are served on --health-addr and --metrics-addr.
    #[arg(long, env = "TALM_GRPC_ADDR", default_value = "0.0.0.0:8443")]
    pub grpc_addr: std::net::SocketAddr,
    /// Namespace of the gateway's Secrets (bootstrap tokens, enrollments, `talm-agent-ca`,
    /// `talm-gateway-serving`). Default: the pod's namespace, else `talm-system`.
    #[arg(long, env = "TALM_NAMESPACE")]
    pub namespace: Option<String>,
    /// Serving certificate chain of the gRPC port (PEM file, with --grpc-tls-key). Without it
    /// a certificate for --server-names is generated once into the `talm-gateway-serving`
    /// Secret (its `ca.crt` is what agents take as --ca).
    #[arg(long, env = "TALM_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// Serving key of the gRPC port (PEM file, with --grpc-tls-cert).
    #[arg(long, env = "TALM_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Serving names, heartbeats and certificate lifetime (as `talm-hub gateway`).
    #[command(flatten)]
    pub session: talm_gateway::cli::SessionArgs,
    /// How often the gateway compares the cached SpokeAgent specs and enrollments with its
    /// sessions (assignments, revocations), milliseconds. Reads memory only.
    #[arg(long, env = "TALM_GATEWAY_POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,
}

impl GatewayArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> GatewaySettings {
        GatewaySettings {
            namespace: namespace(self.namespace.as_deref()),
            serving: match (&self.grpc_tls_cert, &self.grpc_tls_key) {
                (Some(cert), Some(key)) => ServingTls::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => ServingTls::Generated {
                    names: self.session.server_names.clone(),
                },
            },
            gateway: GatewayConfig {
                heartbeat_interval: Duration::from_secs(
                    self.session.heartbeat_interval_secs.max(1),
                ),
                heartbeat_timeout: Duration::from_secs(self.session.heartbeat_timeout_secs.max(1)),
                poll_interval: Duration::from_millis(self.poll_interval_ms.max(50)),
                limits: self.session.conn_limits(),
                progress_write_interval: self.session.progress_write_interval(),
                ..GatewayConfig::default()
            },
            cert_lifetime: Duration::from_secs(self.session.cert_lifetime_secs.max(60)),
        }
    }
}

/// `talm-hub agents token|revoke|machineconfig` without --state-dir: the same operations on
/// the Secrets of the hub's namespace (KUBECONFIG or in-cluster config), so tokens can be
/// minted from a workstation. `machineconfig` embeds the `ca.crt` of `talm-gateway-serving`
/// unless --ca-bundle is given. Returns what to print.
pub async fn run_agents_kube(
    args: &talm_gateway::cli::AgentsArgs,
) -> Result<String, OperatorError> {
    use talm_gateway::cli::AgentsCommand;
    let _ = rustls::crypto::ring::default_provider().install_default();
    use talm_gateway::store::EnrollmentStore;
    let client = kube::Client::try_default()
        .await
        .map_err(OperatorError::Client)?;
    let ns = namespace(args.namespace.as_deref());
    let store = KubeEnrollmentStore::new(client.clone(), &ns);
    match &args.command {
        AgentsCommand::Machineconfig(mc) => {
            let default_ca = async {
                let origin = format!("the ca.crt of Secret {ns}/{}", secrets::SERVING_SECRET);
                let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
                    kube::Api::namespaced(client.clone(), &ns);
                let secret = api
                    .get_opt(secrets::SERVING_SECRET)
                    .await
                    .map_err(|e| talm_gateway::cli::CliError::Missing(format!("{origin}: {e}")))?;
                let pem = match secret {
                    Some(s) if s.data.as_ref().is_some_and(|d| d.contains_key("ca.crt")) => {
                        Some(secrets::tls_pem(&s, "ca.crt")?.into_bytes())
                    }
                    _ => None,
                };
                Ok((origin, pem))
            };
            talm_gateway::cli::machineconfig(&store, default_ca, mc)
                .await
                .map_err(|e| OperatorError::Gateway(e.to_string()))
        }
        AgentsCommand::Token { cluster, ttl_secs } => talm_gateway::enroll::issue_token(
            &store,
            &talm_shared::clock::SystemClock,
            cluster,
            Duration::from_secs(*ttl_secs),
        )
        .await
        .map_err(|e| OperatorError::Gateway(e.to_string())),
        AgentsCommand::Revoke { cluster } => {
            let was = store
                .revoke(cluster)
                .await
                .map_err(|e| OperatorError::Gateway(e.to_string()))?;
            Ok(if was {
                format!("revoked the enrollment of cluster {cluster} (namespace {ns})")
            } else {
                format!(
                    "cluster {cluster} was not enrolled (namespace {ns}; pending tokens were deleted)"
                )
            })
        }
    }
}

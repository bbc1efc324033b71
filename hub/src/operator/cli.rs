//! The `talm-hub run` command: builds the client, the admin servers and the operator from
//! [`RunArgs`], and runs them on a tokio runtime until SIGTERM or SIGINT.

use std::sync::Arc;

use talm_hub_core::UpdateGraph;

use super::admin_auth::KubeAuthorizer;
use super::graph::HttpUpdateGraph;
use super::{Config, LeaderElection, LeaseTiming, Operator, OperatorError, Shared, SystemClock};
use crate::admin;
use crate::admin_auth::{self, AdminAuth, AdminAuthMode};
use crate::args::RunArgs;
use crate::error::Error;
use crate::plan::graph::FileUpdateGraph;

/// Runs the operator (and, in every replica, the agent gateway) until a termination signal.
/// Failures are [`Error::Operator`].
pub fn run(args: &RunArgs) -> Result<(), Error> {
    // One TLS stack (rustls + ring) for kube and the update-graph client, chosen explicitly
    // so that no other provider can ever be picked up from crate features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::operator(OperatorError::Runtime(e)))?;
    rt.block_on(run_async(args)).map_err(Error::operator)
}

/// What `talm-hub run`'s admin servers read: the operator's state plus the gateway's metrics.
struct RunAdmin {
    shared: Arc<Shared>,
    gateway: Option<Arc<talm_gateway::Gateway>>,
}

/// The routes of each `talm-hub run` admin port: `/healthz` and `/readyz` open (the kubelet's
/// probes), and `/metrics` with the gateway's `/agents` (when `gateway` is given) behind `auth`
/// (open when `None`, as `--admin-auth none`).
pub fn admin_router(
    shared: Arc<Shared>,
    gateway: Option<Arc<talm_gateway::Gateway>>,
    auth: Option<Arc<AdminAuth>>,
) -> axum::Router {
    let state = Arc::new(RunAdmin { shared, gateway });
    let mut fleet = admin::metrics_router(state.clone());
    if let Some(gw) = &state.gateway {
        fleet = fleet.merge(talm_gateway::server::agents_router(gw.clone()));
    }
    if let Some(auth) = auth {
        fleet = admin_auth::protect(fleet, auth);
    }
    admin::probes_router(state).merge(fleet)
}

impl admin::AdminState for RunAdmin {
    fn ready(&self) -> bool {
        admin::AdminState::ready(self.shared.as_ref())
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.metrics
    }

    fn extra_metrics(&self) -> Option<String> {
        self.gateway.as_ref().map(|g| g.render_metrics())
    }
}

fn identity(args: &RunArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "talm-hub".into());
        format!("{host}-{}", std::process::id())
    })
}

fn lease_namespace(args: &RunArgs) -> String {
    args.lease_namespace
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

async fn run_async(args: &RunArgs) -> Result<(), OperatorError> {
    let client = kube::Client::try_default()
        .await
        .map_err(OperatorError::Client)?;
    let (graph, graph_fetcher): (Arc<dyn UpdateGraph + Send + Sync>, _) = match &args.update_graph {
        Some(path) => (
            Arc::new(
                FileUpdateGraph::load(path)
                    .map_err(|e| OperatorError::UpdateGraph(e.to_string()))?,
            ),
            None,
        ),
        None => {
            let http = Arc::new(
                HttpUpdateGraph::new(args.update_graph_insecure)
                    .map_err(|e| OperatorError::UpdateGraph(e.to_string()))?,
            );
            (http.clone(), Some(http))
        }
    };
    let identity = identity(args);
    let config = Config {
        workers: args.worker_count,
        leader_election: args.leader_elect.then(|| LeaderElection {
            namespace: lease_namespace(args),
            name: args.lease_name.clone(),
            timing: LeaseTiming::default(),
        }),
        identity: identity.clone(),
        graph,
        graph_fetcher,
        ztp: args.ztp,
    };
    tracing::info!(?config, "starting talm-hub operator");
    let operator = Operator::new(client, Arc::new(SystemClock), config);
    let shared = operator.shared();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers = Vec::new();
    // The agent gateway: every replica, leader or not.
    let gateway = if args.gateway.enabled {
        let settings = args.gateway.settings();
        tracing::info!(namespace = %settings.namespace, grpc = %args.gateway.grpc_addr, "starting the agent gateway");
        let gw = super::agents::AgentGateway::start(
            shared.clone(),
            settings,
            Arc::new(talm_shared::clock::SystemClock),
        )
        .await?;
        let addr = args.gateway.grpc_addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| OperatorError::Gateway(format!("gRPC listener on {addr}: {e}")))?;
        Some((gw, listener))
    } else {
        None
    };
    let gateway_state = gateway.as_ref().map(|(g, _)| g.gateway.clone());
    let auth = match args.admin_auth {
        AdminAuthMode::Kube => {
            tracing::info!(
                cache_ttl_secs = admin_auth::CACHE_TTL.as_secs(),
                "admin endpoints: /metrics and /agents need a bearer token allowed to get them \
                 (TokenReview + SubjectAccessReview); /healthz and /readyz are open"
            );
            Some(Arc::new(AdminAuth::new(
                Arc::new(KubeAuthorizer::new(shared.client.clone())),
                shared.clock.clone(),
            )))
        }
        AdminAuthMode::None => {
            tracing::warn!(
                "admin endpoints: --admin-auth none, /metrics and /agents are open to anyone \
                 who can reach the admin ports"
            );
            None
        }
    };
    let router = admin_router(shared.clone(), gateway_state, auth);
    let mut gateway_task = None;
    if let Some((gw, listener)) = gateway {
        gateway_task = Some(tokio::spawn(gw.serve(listener, stopped())));
    }
    let mut addrs = vec![args.health_addr];
    if args.metrics_addr != args.health_addr {
        addrs.push(args.metrics_addr);
    }
    for addr in addrs {
        let listener = admin::bind(addr)
            .await
            .map_err(|source| OperatorError::Admin { addr, source })?;
        tracing::info!(%addr, "admin endpoints listening");
        let router = router.clone();
        let stop = stopped();
        servers.push(tokio::spawn(async move {
            if let Err(e) = admin::serve_router(listener, router, stop).await {
                tracing::error!(%addr, error = %e, "admin server failed");
            }
        }));
    }
    // The alert receiver: every replica that has an address, leader or not.
    if let Some(addr) = args.alerts.alert_receiver_addr {
        let listener = admin::bind(addr)
            .await
            .map_err(|source| OperatorError::Admin { addr, source })?;
        let config = args.alerts.config();
        tracing::info!(%addr, matchers = ?config.matchers, cluster_label = %config.cluster_label, "alert receiver listening");
        let (shared, stop) = (shared.clone(), stopped());
        servers.push(tokio::spawn(async move {
            if let Err(e) = super::alerts::serve(shared, config, listener, stop).await {
                tracing::error!(%addr, error = %e, "alert receiver failed");
            }
        }));
    }
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("termination signal received; shutting down");
        let _ = signal_tx.send(true);
    });
    let result = operator.run(stopped()).await;
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let gateway_result = match gateway_task {
        Some(t) => t
            .await
            .unwrap_or_else(|e| Err(OperatorError::Gateway(format!("gateway task: {e}")))),
        None => Ok(()),
    };
    result.and(gateway_result)
}

/// Resolves on SIGTERM or SIGINT (`run` and `gateway`).
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

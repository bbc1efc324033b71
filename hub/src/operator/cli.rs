//! The `talm-hub run` command: builds the client, the admin servers and the operator from
//! [`RunArgs`], and runs them on a tokio runtime until SIGTERM or SIGINT.

use std::sync::Arc;

use talm_hub_core::UpdateGraph;

use super::graph::HttpUpdateGraph;
use super::{Config, LeaderElection, LeaseTiming, Operator, OperatorError, SystemClock};
use crate::admin;
use crate::args::RunArgs;
use crate::error::Error;
use crate::plan::graph::FileUpdateGraph;

/// Runs the operator until a termination signal. Failures are reported as
/// [`Error::Internal`] with the operator's message (this module cannot add variants to
/// the CLI's error type).
pub fn run(args: &RunArgs) -> Result<(), Error> {
    // One TLS stack (rustls + ring) for kube and the update-graph client, chosen explicitly
    // so that no other provider can ever be picked up from crate features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(OperatorError::Runtime(e).to_string()))?;
    rt.block_on(run_async(args))
        .map_err(|e| Error::Internal(e.to_string()))
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
    let mut addrs = vec![args.health_addr];
    if args.metrics_addr != args.health_addr {
        addrs.push(args.metrics_addr);
    }
    for addr in addrs {
        let listener = admin::bind(addr)
            .await
            .map_err(|source| OperatorError::Admin { addr, source })?;
        tracing::info!(%addr, "admin endpoints listening");
        let state = shared.clone();
        let stop = stopped();
        servers.push(tokio::spawn(async move {
            if let Err(e) = admin::serve(listener, state, stop).await {
                tracing::error!(%addr, error = %e, "admin server failed");
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
    result
}

async fn wait_for_signal() {
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

//! The admin HTTP server every replica runs: `/healthz` (the process serves), `/readyz` (every
//! watch has finished its first list) and `/metrics` (Prometheus text format). `talm-hub run`
//! adds the agent gateway's `/agents` routes ([`serve_router`]) and its metrics
//! ([`AdminState::extra_metrics`]), and puts `/metrics` and `/agents` behind
//! [`crate::admin_auth`] ([`crate::operator::cli::admin_router`]). [`router`] and [`serve`]
//! serve everything open.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the admin endpoints read.
pub trait AdminState: Send + Sync + 'static {
    /// Whether the replica is ready (caches synced).
    fn ready(&self) -> bool;
    /// The metrics to export.
    fn metrics(&self) -> &Metrics;
    /// More metrics in the OpenMetrics text format (e.g. the agent gateway's), merged into
    /// `/metrics`.
    fn extra_metrics(&self) -> Option<String> {
        None
    }
}

/// Joins two OpenMetrics texts into one exposition (one `# EOF`).
pub fn merge_metrics(main: &str, extra: &str) -> String {
    let strip = |t: &str| -> String {
        t.trim_end()
            .strip_suffix("# EOF")
            .unwrap_or(t.trim_end())
            .trim_end()
            .to_string()
    };
    let mut out = strip(main);
    let extra = strip(extra);
    if !extra.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&extra);
    }
    out.push_str("\n# EOF\n");
    out
}

/// The admin routes over `state`, all open: [`probes_router`] and [`metrics_router`].
pub fn router<S: AdminState>(state: Arc<S>) -> Router {
    probes_router(state.clone()).merge(metrics_router(state))
}

/// `/healthz` and `/readyz`: what the kubelet's probes read, never behind authentication.
pub fn probes_router<S: AdminState>(state: Arc<S>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
        .with_state(state)
}

/// `/metrics` alone.
pub fn metrics_router<S: AdminState>(state: Arc<S>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

async fn readyz<S: AdminState>(State(state): State<Arc<S>>) -> impl IntoResponse {
    if state.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

async fn metrics<S: AdminState>(State(state): State<Arc<S>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        match state.extra_metrics() {
            Some(extra) => merge_metrics(&state.metrics().encode(), &extra),
            None => state.metrics().encode(),
        },
    )
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve<S: AdminState>(
    listener: TcpListener,
    state: Arc<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` (e.g. [`router`] merged with more routes) on `listener` until `shutdown`
/// resolves.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::merge_metrics;

    #[test]
    fn merged_metrics_end_with_one_eof() {
        let m = merge_metrics("# TYPE a counter\na_total 1\n# EOF\n", "b 2\n# EOF\n");
        assert_eq!(m, "# TYPE a counter\na_total 1\nb 2\n# EOF\n");
        assert_eq!(merge_metrics("a 1\n# EOF\n", ""), "a 1\n# EOF\n");
    }
}

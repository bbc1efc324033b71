//! The admin HTTP server every replica runs: `/healthz` (the process serves), `/readyz` (every
//! watch has finished its first list) and `/metrics` (Prometheus text format).

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
}

/// The admin routes over `state`.
pub fn router<S: AdminState>(state: Arc<S>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
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
        state.metrics().encode(),
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

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

//! The HTTP endpoints on `--metrics-addr`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive and its loop turns), `/readyz` (streaming from the slot with the
//! broker connected: the active relay) and `/standbyz` (streaming, or standing by to take
//! over: the readiness probe for an orchestrator's rolling update).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::Telemetry;
use crate::error::{Error, Result};

/// Bind `addr` (failing at once if it is taken) and serve in the background. Returns the
/// address actually bound, which differs from `addr` when its port is 0.
pub(crate) async fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|error| {
        Error::definite(format!(
            "cannot listen on --metrics-addr {addr}: {error}. Choose a free address, or \
             --metrics-addr none to serve no metrics"
        ))
    })?;
    let bound = listener.local_addr().map_err(Error::definite)?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/standbyz", get(standbyz))
        .with_state(telemetry);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "the metrics and health server stopped");
        }
    });
    info!(address = %bound, "serving /metrics, /healthz, /readyz and /standbyz");
    Ok(bound)
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        telemetry.metrics.render(&telemetry.health),
    )
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let quiet = telemetry.health.since_last_beat();
    if telemetry.health.alive() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: the relay loop has not turned for {quiet:?}\n"),
        )
    }
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let state = telemetry.health.state();
    if telemetry.health.ready() {
        (StatusCode::OK, format!("{}\n", state.name()))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.name()),
        )
    }
}

async fn standbyz(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    let state = telemetry.health.state();
    if telemetry.health.available() {
        (StatusCode::OK, format!("{}\n", state.name()))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not available: {}\n", state.name()),
        )
    }
}

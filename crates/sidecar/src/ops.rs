//! The operations listener (`--ops-listen`): `/healthz`, `/readyz`, `/metrics`. No token: it is
//! for the kubelet and Prometheus.

use crate::server::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The ops router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// 200 once every file is created or attached, the API serves and every prefetched table
/// (`--prefetch`) finished its first load; 503 before and while shutting down, and once a file
/// was deleted or replaced under the sidecar (naming it).
async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Acquire) || s.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string());
    }
    if s.near.as_ref().is_some_and(|n| !n.prefetched()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: prefetch loading\n".to_string());
    }
    let lost = s.lost_files();
    if lost.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", lost.join("; ")))
    }
}

/// 200 while the process serves; 503 once a file was deleted or replaced under it (see
/// `filecheck`), so the livenessProbe restarts the container and the file is created anew.
async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let lost = s.lost_files();
    if lost.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {}\n", lost.join("; ")))
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match crate::metrics::render(&s) {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            text,
        ),
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], "encoding failed\n".to_string())
        }
    }
}

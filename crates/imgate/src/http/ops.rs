//! `/healthz` (the process answers), `/readyz` (it can take messages), `/metrics` (in token
//! mode, for an API key only).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::{error_frame, ok_frame};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

pub async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ok_frame(&json!({"status": "alive"}))).into_response()
}

/// Ready when the store takes a real write now (SQLite commits a probe row; Redis
/// answers and is subscribed), not when the last write happened to succeed.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.conn.shutdown.is_cancelled() {
        return not_ready("shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ready()).await {
        Ok(Ok(())) => {
            ([(header::CONTENT_TYPE, "application/json")], ok_frame(&json!({"store": "ok"}))).into_response()
        }
        Ok(Err(e)) => not_ready(&format!("not ready: {e}")),
        Err(_) => not_ready("store did not answer within 2 s"),
    }
}

/// 503 without a log line: load balancers poll this every few seconds, and the cause is
/// logged where it happens, in the store, at most once a minute while it lasts.
fn not_ready(reason: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], error_frame(reason))
        .into_response()
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    // Read when scraped: the hub keeps it in an atomic for its own bound.
    metrics::gauge!("imgate_socket_queued_bytes").set(state.hub.budget().used() as f64);
    // What /readyz answers, as a series an alert can watch (a real write, as there).
    let ready = !state.conn.shutdown.is_cancelled()
        && matches!(tokio::time::timeout(Duration::from_secs(2), state.store.ready()).await, Ok(Ok(())));
    metrics::gauge!("imgate_store_ready").set(if ready { 1.0 } else { 0.0 });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
        .into_response())
}

//! `/healthz` (the process answers), `/readyz` (it can take messages), `/metrics` (in token
//! mode, for an API key only).

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::ok_frame;
use serde_json::json;

use super::{AppState, error::ApiError};

pub async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ok_frame(&json!({"status": "alive"}))).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.conn.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ready()).await {
        Ok(Ok(())) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&json!({"store": "ok"})))
                .into_response())
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Unavailable("store did not answer within 2 s".into())),
    }
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
        .into_response())
}

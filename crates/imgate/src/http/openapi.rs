//! `GET /openapi.json`: the OpenAPI 3.1 description of every HTTP endpoint, written by hand
//! (openapi.json beside this file) and held to the router by tests/openapi.rs: every route
//! is described and every described operation is routed, and its example bodies are
//! accepted. `scripts/api-check` runs schemathesis against a live server from it.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The description, as served.
pub const DESCRIPTION: &str = include_str!("openapi.json");

pub async fn description() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DESCRIPTION).into_response()
}

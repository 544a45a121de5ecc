//! WebSocket upgrades at `/` (the seed's test page) and `P/msg` (the seed's production path).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, Params, error::ApiError};
use crate::hub::conn;

/// `/`: a WebSocket when the request asks for one, else a page saying how to connect.
pub async fn root(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(state, headers, query, ws).await.unwrap_or_else(IntoResponse::into_response),
        Err(_) => super::console::index(),
    }
}

/// `P/msg?userid=U`: WebSocket only.
pub async fn msg(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(state, headers, query, ws).await.unwrap_or_else(IntoResponse::into_response),
        Err(e) => {
            ApiError::BadRequest(format!("this path takes WebSocket upgrades only ({e})")).into_response()
        }
    }
}

async fn upgrade(
    state: AppState,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    state.auth.check_origin(&headers)?;
    let authorized = state.auth.authorize(&headers, params.get("token"), params.userid())?;
    let user = authorized
        .caller
        .user()
        .ok_or_else(|| {
            ApiError::BadRequest("missing userid: connect with ?userid=YOUR_ID (or ?userId=)".into())
        })?
        .to_owned();
    imgate_protocol::check_id("userid", &user).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let since = params.number("since")?;
    let hub_cfg = &state.config.hub;
    // The place is held from here: connections racing in cannot pass the limit together.
    let place = state.hub.reserve(&user.as_str().into()).map_err(|e| {
        ApiError::TooMany(format!("user {user:?} already has {} connections, the most allowed", e.0))
    })?;
    let frame_max = state.config.limits.ws_frame_max;
    let mut ws = ws
        .read_buffer_size(hub_cfg.read_buffer_size)
        .write_buffer_size(hub_cfg.write_buffer_size)
        // One frame must always fit, however large a message the HTTP limit let in.
        .max_write_buffer_size(state.config.socket_write_buffer_max())
        .max_message_size(frame_max)
        .max_frame_size(frame_max);
    // Browsers drop a connection whose answer names none of the sub-protocols they
    // offered (the seed's page offers "echo"): select the first one offered.
    if let Some(p) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').map(str::trim).find(|p| !p.is_empty()))
    {
        ws = ws.protocols([p.to_owned()]);
    }
    let ctx = state.conn.clone();
    // Live commits of the user reach this node from here on (with Redis, its channel is
    // subscribed to): the replay that starts the connection reads what came before.
    let watch = ctx.store.watch(&user).await;
    let mut start = conn::Start::decide(&ctx, &user, since).await?;
    // The socket lives no longer than its token: it is closed (4001) when the token
    // expires, and the client reconnects with a fresh one.
    start.expires = authorized.expires.and_then(|at| {
        let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        // A deadline past what the clock can hold is no deadline.
        tokio::time::Instant::now().checked_add(left)
    });
    let token = state.tasks.token();
    let inbox = state.inbox.clone();
    Ok(ws.on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed")).on_upgrade(
        move |socket| async move {
            // An agent is online while any of its sockets is open (the team inbox).
            if let Some(i) = &inbox {
                i.connected(&user).await;
            }
            conn::serve(ctx, socket, user.clone(), start, place).await;
            drop(watch);
            if let Some(i) = &inbox {
                i.disconnected(&user).await;
            }
            drop(token);
        },
    ))
}

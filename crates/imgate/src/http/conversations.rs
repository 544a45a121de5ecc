//! The team inbox's endpoints (docs/inbox.md): conversations and their actions, canned
//! replies, presence. Each names its agent as every endpoint does (`?userid=`, or the
//! token's subject) and answers with the seed's envelope.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::ok_frame;
use serde_json::Value;

use super::server::read_body;
use super::{AppState, Params, error::ApiError};
use crate::inbox::Inbox;
use crate::inbox::model::{ConvState, ListQuery, Rank, View};

type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Most conversations one page lists.
const PAGE_MAX: usize = 200;

fn ok(data: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], ok_frame(data)).into_response()
}

/// The inbox and the calling agent.
fn agent(state: &AppState, headers: &HeaderMap, query: Q) -> Result<(Arc<Inbox>, Params, String), ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(headers, &params)?;
    let user = caller
        .user()
        .ok_or_else(|| ApiError::BadRequest("missing userid: which agent asks?".into()))?
        .to_owned();
    let inbox = state.inbox.clone().ok_or_else(|| {
        ApiError::NoSuch("the team inbox needs a WeChat account ([[wechat.accounts]])".into())
    })?;
    Ok((inbox, params, user))
}

/// The body as JSON (null when blank). Taken as a `Result` so that a body over the limit or
/// too slow is answered with the error frame, not axum's text/plain rejection.
fn json_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = read_body(body, state.config.limits.http_body_max)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: not JSON ({e})")))
}

fn text_field<'a>(v: &'a Value, key: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::BadRequest(format!("{key} must be a string"))),
    }
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap, query: Q) -> Result<Response, ApiError> {
    let (inbox, params, user) = agent(&state, &headers, query)?;
    let view = match params.get("view") {
        None => View::All,
        Some(v) => View::parse(v).ok_or_else(|| {
            ApiError::BadRequest(format!("view={v:?}: give mine, unassigned, all or waiting"))
        })?,
    };
    let conv_state = match params.get("state") {
        None | Some("") => None,
        Some("open") => Some(ConvState::Open),
        Some("resolved") => Some(ConvState::Resolved),
        Some(s) => return Err(ApiError::BadRequest(format!("state={s:?}: give open or resolved"))),
    };
    let cursor = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            Rank::parse(c).ok_or_else(|| ApiError::BadRequest(format!("cursor={c:?} is not one we gave")))?,
        ),
    };
    let limit = params.number("limit")?.map_or(50, |l| l.min(PAGE_MAX as u64) as usize).max(1);
    let q = params.get("q").map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned);
    let query = ListQuery { view, state: conv_state, q, limit, cursor };
    Ok(ok(&inbox.list(&user, &query).await?))
}

pub async fn one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(contact): Path<String>,
    query: Q,
) -> Result<Response, ApiError> {
    let (inbox, _, user) = agent(&state, &headers, query)?;
    Ok(ok(&inbox.get(&user, &contact).await?))
}

pub async fn act(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((contact, action)): Path<(String, String)>,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (inbox, _, user) = agent(&state, &headers, query)?;
    let body = json_body(&state, body)?;
    let data = match action.as_str() {
        "claim" => inbox.claim(&user, &contact).await?,
        "transfer" => {
            let to = text_field(&body, "to")?
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::BadRequest("transfer: give {\"to\":\"AGENT\"}".into()))?;
            let note = text_field(&body, "note")?.map(str::trim).filter(|n| !n.is_empty());
            inbox.transfer(&user, &contact, to, note).await?
        }
        "resolve" => inbox.resolve(&user, &contact).await?,
        "reopen" => inbox.reopen(&user, &contact).await?,
        "notes" => {
            let text = text_field(&body, "text")?.unwrap_or_default();
            inbox.note(&user, &contact, text).await?
        }
        "read" => {
            // `{"seq":N}`, `[{"seq":N}]`, or nothing (all of it).
            let item = match &body {
                Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            // Anything else (`42`, `[[…]]`) is refused: read as "all of it", a malformed
            // body would clear unread counts it never named.
            let seq = match &item {
                Value::Null => None,
                Value::Object(o) => match o.get("seq") {
                    None | Some(Value::Null) => None,
                    Some(v) => {
                        Some(v.as_u64().ok_or_else(|| ApiError::BadRequest("seq must be a number".into()))?)
                    }
                },
                _ => {
                    return Err(ApiError::BadRequest(
                        "read: give {\"seq\":N}, [{\"seq\":N}] or no body".into(),
                    ));
                }
            };
            inbox.read(&user, &contact, seq).await?
        }
        other => return Err(ApiError::NotFound(format!("conversation action {other:?}"))),
    };
    Ok(ok(&data))
}

pub async fn canned(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
) -> Result<Response, ApiError> {
    let (inbox, params, user) = agent(&state, &headers, query)?;
    Ok(ok(&inbox.canned(&user, params.get("appid")).await?))
}

pub async fn set_canned(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (inbox, params, user) = agent(&state, &headers, query)?;
    let body = json_body(&state, body)?;
    Ok(ok(&inbox.set_canned(&user, params.get("appid"), &body).await?))
}

pub async fn presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
) -> Result<Response, ApiError> {
    let (inbox, _, user) = agent(&state, &headers, query)?;
    Ok(ok(&inbox.presence_list(&user).await?))
}

pub async fn set_presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (inbox, _, user) = agent(&state, &headers, query)?;
    let body = json_body(&state, body)?;
    let status = text_field(&body, "status")?.unwrap_or_default();
    Ok(ok(&inbox.set_presence(&user, status).await?))
}

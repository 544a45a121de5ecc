//! `GET P/history?userid=U[&contact_id=C][&before=SEQ][&limit=N]`: a user's past messages,
//! newest page first, each page oldest-to-newest, as the frames the socket carried.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{AppState, Params, error::ApiError};

#[derive(Serialize)]
struct Page {
    data: PageData,
    result: imgate_protocol::FrameResult,
}

#[derive(Serialize)]
struct PageData {
    user: String,
    contact_id: Option<String>,
    messages: Vec<Box<RawValue>>,
    /// Pass as `before` for the next (older) page; null when there is none.
    next_before: Option<u64>,
}

pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let user = caller
        .user()
        .ok_or_else(|| ApiError::BadRequest("missing userid: whose history?".into()))?
        .to_owned();
    let contact = params.get("contact_id").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
    let before = params.number("before")?;
    let max = state.config.limits.history_page_max;
    let limit = params.number("limit")?.map_or(50, |l| l as usize).clamp(1, max);
    let mut rows = state.store.history(&user, contact.as_deref(), before, limit + 1).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_before = if more { rows.last().map(|r| r.seq) } else { None };
    rows.reverse();
    let messages = rows
        .into_iter()
        .map(|r| RawValue::from_string(r.frame.with_seq(r.seq)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Unavailable(format!("a stored message is damaged: {e}")))?;
    let page = Page {
        data: PageData { user, contact_id: contact, messages, next_before },
        result: imgate_protocol::FrameResult { code: imgate_protocol::Code::OK, message: "ok".into() },
    };
    let body = serde_json::to_string(&page).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

//! `DELETE P/contacts/{contact_id}`: forget a person (docs/operations.md, "Erasure"). An
//! operator's endpoint: open in open mode, an API key in token mode (a user's token may
//! not erase anyone).
//!
//! `PUT P/contacts/{contact_id}/remark?userid=U`: an agent names a follower (docs/wechat.md,
//! "Follower profiles").
//!
//! `GET P/templates?userid=U&contact_id=C`: the templates of the account follower C
//! follows, for an agent's template message when the window has closed (docs/wechat.md,
//! "Template messages").

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::ok_frame;
use serde_json::{Value, json};

use super::error::ApiError;
use super::server::read_body;
use super::{AppState, Params};
use crate::erase::EraseError;
use crate::wechat::{RemarkError, WechatError};

impl From<EraseError> for ApiError {
    fn from(e: EraseError) -> ApiError {
        match e {
            EraseError::Store(s) => s.into(),
            EraseError::State(s) => s.into(),
        }
    }
}

pub async fn erase(
    State(state): State<AppState>,
    headers: HeaderMap,
    contact: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.auth.operator(&headers)?;
    // A path that does not decode (bad UTF-8) gets the error frame, as every bad input.
    let Path(contact) = contact.map_err(|e| ApiError::BadRequest(format!("the contact id: {e}")))?;
    if contact.trim().is_empty() {
        return Err(ApiError::BadRequest("the contact id is empty".into()));
    }
    imgate_protocol::check_id("the contact id", &contact).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let report =
        crate::erase::erase(&state.store, state.inbox.as_deref(), state.wechat.as_deref(), &contact).await?;
    // The id and the counts, never what the messages said.
    tracing::info!(
        contact = %contact,
        messages = report.messages,
        mailboxes = report.mailboxes,
        media = report.media,
        conversations = report.conversations,
        follower = report.follower,
        "contact erased"
    );
    let body = serde_json::to_value(&report).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&body)).into_response())
}

/// `PUT P/contacts/{contact_id}/remark?userid=U` with `{"remark":"…"}`: WeChat's
/// `user/info/updateremark`, by an agent of the account the follower follows. Answers the
/// profile afterwards.
pub async fn remark(
    State(state): State<AppState>,
    headers: HeaderMap,
    contact: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let user =
        caller.user().ok_or_else(|| ApiError::BadRequest("missing userid: which agent asks?".into()))?;
    let Path(contact) = contact.map_err(|e| ApiError::BadRequest(format!("the contact id: {e}")))?;
    imgate_protocol::check_id("the contact id", &contact).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let body = read_body(body, state.config.limits.http_body_max)?;
    let body: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: not JSON ({e})")))?;
    let remark = match body.get("remark") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(ApiError::BadRequest(
                "body: give {\"remark\": \"…\"} (a string; empty clears it)".into(),
            ));
        }
    };
    let w = state
        .wechat
        .as_ref()
        .ok_or_else(|| ApiError::NoSuch("no WeChat account is configured (wechat.accounts)".into()))?;
    let acct = w.follower_account(&contact).await?.ok_or_else(|| {
        ApiError::NoSuch(format!("{contact} is not a follower known here (they have not written)"))
    })?;
    if !w.is_agent(user, &acct.config.appid) {
        return Err(ApiError::Forbidden(format!(
            "{user} is not an agent of the WeChat account {contact} follows"
        )));
    }
    let profile = w.set_remark(acct, &contact, remark).await.map_err(remark_error)?;
    tracing::info!(contact = %contact, by = %user, "follower's remark set");
    if let Some(inbox) = &state.inbox
        && let Err(e) = inbox.remarked(&acct.config.appid, &contact, user, profile.to_json()).await
    {
        // WeChat has the remark and the follower's record too: consoles learn it later.
        tracing::warn!(contact = %contact, error = %e, "agents not told of the remark");
    }
    let data = json!({"contact_id": contact, "profile": profile.to_json()});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

/// WeChat's refusals as the agent can act on them: an unknown follower 404, the API quota
/// 429, another refusal 422 (with WeChat's code), WeChat out of reach 502.
fn remark_error(e: RemarkError) -> ApiError {
    let api = match e {
        RemarkError::TooLong(_) | RemarkError::Control => return ApiError::BadRequest(e.to_string()),
        RemarkError::NotFollower(_) => return ApiError::NoSuch(e.to_string()),
        RemarkError::Wechat(WechatError::State(s)) => return s.into(),
        RemarkError::Wechat(WechatError::Api(api)) => api,
        RemarkError::Wechat(other) => return ApiError::Unprocessable(other.to_string()),
    };
    let reason = format!("the remark was not set: {}", api.explain());
    match api.errcode() {
        Some(40003) => ApiError::NoSuch(reason),
        Some(45009 | 45011) => ApiError::TooMany(reason),
        Some(code) => ApiError::Delivery { refused: true, reason, details: json!({"errcode": code}) },
        None => ApiError::Delivery { refused: false, reason, details: json!({}) },
    }
}

pub async fn templates(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let user =
        caller.user().ok_or_else(|| ApiError::BadRequest("missing userid: which agent asks?".into()))?;
    let w = state
        .wechat
        .as_ref()
        .ok_or_else(|| ApiError::NoSuch("no WeChat account is configured (wechat.accounts)".into()))?;
    let contact = params.get("contact_id").unwrap_or_default();
    if contact.is_empty() {
        return Err(ApiError::BadRequest("missing contact_id: the follower the template is for".into()));
    }
    imgate_protocol::check_id("the contact id", contact).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let acct = w.follower_account(contact).await?.ok_or_else(|| {
        ApiError::NoSuch(format!("{contact} is not a follower known here (they have not written)"))
    })?;
    if !w.is_agent(user, &acct.config.appid) {
        return Err(ApiError::Forbidden(format!(
            "{user} is not an agent of the WeChat account {contact} follows"
        )));
    }
    let want = params.get("template_id").filter(|t| !t.is_empty());
    let list = w.templates(acct, want).await.map_err(|e| match e {
        WechatError::Api(api) => {
            let reason = format!("the templates could not be fetched: {}", api.explain());
            match api.errcode() {
                Some(45009 | 45011) => ApiError::TooMany(reason),
                Some(code) => ApiError::Delivery { refused: true, reason, details: json!({"errcode": code}) },
                None => ApiError::Delivery { refused: false, reason, details: json!({}) },
            }
        }
        other => ApiError::Unprocessable(other.to_string()),
    })?;
    let templates: Vec<Value> = list
        .iter()
        .map(|t| {
            json!({"template_id": t.template_id, "title": t.title, "content": t.content, "example": t.example,
                "primary_industry": t.primary_industry, "deputy_industry": t.deputy_industry, "fields": t.fields()})
        })
        .collect();
    let data = json!({"appid": acct.config.appid, "contact_id": contact, "templates": templates});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

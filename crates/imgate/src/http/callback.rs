//! `GET`/`POST P/callback/{appid}` (and `P/callback` with one account): the URL set in
//! the WeChat admin console.
//!
//! A message is committed to the agents' mailboxes before WeChat is told `success`; if
//! the commit fails WeChat gets an error and retries, and the retry is deduplicated.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use imgate_wechat::{CallbackError, CallbackQuery};

use super::server::read_body;
use super::{AppState, error::ApiError};
use crate::wechat::{Account, Wechat, WechatError};

type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

pub async fn verify(State(state): State<AppState>, query: Q) -> Result<Response, ApiError> {
    verify_as(state, None, query)
}

pub async fn verify_for(
    State(state): State<AppState>,
    Path(appid): Path<String>,
    query: Q,
) -> Result<Response, ApiError> {
    verify_as(state, Some(appid), query)
}

pub async fn receive(
    State(state): State<AppState>,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    receive_as(state, None, query, body).await
}

pub async fn receive_for(
    State(state): State<AppState>,
    Path(appid): Path<String>,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    receive_as(state, Some(appid), query, body).await
}

fn channel(state: &AppState) -> Result<&std::sync::Arc<Wechat>, ApiError> {
    state
        .wechat
        .as_ref()
        .ok_or_else(|| ApiError::NoSuch("no WeChat account is configured (wechat.accounts)".into()))
}

fn account<'a>(w: &'a Wechat, appid: Option<&str>) -> Result<&'a Account, ApiError> {
    w.account(appid).ok_or_else(|| match appid {
        Some(id) => ApiError::NoSuch(format!("no WeChat account with appid {id:?} is configured")),
        None => ApiError::NoSuch("several WeChat accounts are configured: use /callback/APPID".into()),
    })
}

fn callback_query(query: Q) -> Result<CallbackQuery, ApiError> {
    let q = query.map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?.0;
    let get = |k: &str| q.get(k).cloned();
    Ok(CallbackQuery {
        signature: get("signature"),
        timestamp: get("timestamp"),
        nonce: get("nonce"),
        echostr: get("echostr"),
        encrypt_type: get("encrypt_type"),
        msg_signature: get("msg_signature"),
        openid: get("openid"),
    })
}

fn refused(e: WechatError) -> ApiError {
    metrics::counter!("imgate_wechat_callbacks_refused_total").increment(1);
    match e {
        WechatError::Callback(CallbackError::BadSignature) => ApiError::Unauthorized(e.to_string()),
        // Not the caller's fault: WeChat sends it again later.
        WechatError::NonceUnknown(_) | WechatError::State(_) => ApiError::Unavailable(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn verify_as(state: AppState, appid: Option<String>, query: Q) -> Result<Response, ApiError> {
    let w = channel(&state)?;
    let acct = account(w, appid.as_deref())?;
    let q = callback_query(query)?;
    let echo = w.verify_url(acct, &q).map_err(|e| refused(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], echo.to_owned()).into_response())
}

/// One callback, counted by outcome in `imgate_wechat_callbacks_total`: `stored`,
/// `duplicate` (WeChat's retry of one already stored), `dropped` (an event the account
/// does not deliver), `refused` (4xx: signature, content,
/// account), `unavailable` (503: WeChat sends it again later) or `failed`.
async fn receive_as(
    state: AppState,
    appid: Option<String>,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = receive_once(state, appid, query, body).await;
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(e) if e.status().is_client_error() => "refused",
        Err(_) => "failed",
    };
    metrics::counter!("imgate_wechat_callbacks_total", "outcome" => outcome).increment(1);
    result?;
    // "success" stops WeChat's retries and shows the follower nothing.
    Ok(([(header::CONTENT_TYPE, "text/plain")], "success").into_response())
}

/// What became of the callback (`stored`, `duplicate`, `dropped`), or why it was refused.
async fn receive_once(
    state: AppState,
    appid: Option<String>,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<&'static str, ApiError> {
    let w = channel(&state)?;
    let acct = account(w, appid.as_deref())?;
    let q = callback_query(query)?;
    let body = read_body(body, state.config.limits.http_body_max)?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;
    let xml = w.open(acct, &q, text).map_err(refused)?;
    w.check_nonce(acct, &q, &xml).await.map_err(refused)?;
    // The outcome of a template message imgate sent: its status frame. The event itself
    // then goes as `deliver_events` says (by default, nowhere).
    if let Some(done) = w.template_finished(acct, &xml).await {
        state.ingest.template_done(done).await?;
    }
    let Some(inbound) = w.inbound(acct, &xml).await.map_err(refused)? else {
        return Ok("dropped");
    };
    let due = inbound.profile_due.then(|| (inbound.appid.clone(), inbound.openid.clone()));
    let duplicate = state.ingest.wechat_inbound(inbound, &xml).await?.duplicate;
    // Once committed (and its conversation made), so the profile lands on it.
    if let Some((appid, openid)) = due {
        w.refresh_profile(&appid, &openid);
    }
    Ok(if duplicate { "duplicate" } else { "stored" })
}

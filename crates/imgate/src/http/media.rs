//! Media of WeChat messages (`GET P/media/{id}`), uploads from agents (`POST P/media`),
//! and what the console shows about a contact (`GET P/contact`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::{error_frame, ok_frame};
use serde_json::{Value, json};

use super::{AppState, Params, error::ApiError};
use crate::wechat::MEDIA_PATH;

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    state.caller(&headers, &params)?;
    let w = state.wechat.as_ref().ok_or_else(|| ApiError::NotFound(format!("media {id}")))?;
    let (rec, path) = w.media_file(&id).await.ok_or_else(|| ApiError::NotFound(format!("media {id}")))?;
    match rec.status.as_str() {
        "ready" => {
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| ApiError::Unavailable(format!("media {id}: {e}")))?;
            let ct = if rec.content_type.is_empty() {
                "application/octet-stream".to_owned()
            } else {
                rec.content_type
            };
            // Served from the console's own origin: never as a document that could run
            // script (an SVG, HTML sniffed from bytes).
            Ok((
                [
                    (header::CONTENT_TYPE, ct),
                    (header::CACHE_CONTROL, "private, max-age=86400".into()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
                    (header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'".into()),
                ],
                bytes,
            )
                .into_response())
        }
        "pending" => {
            let reason = if rec.error.is_empty() {
                "media is still being downloaded from WeChat; try again shortly".to_owned()
            } else {
                format!(
                    "media is still being downloaded from WeChat (last attempt: {}); try again shortly",
                    rec.error
                )
            };
            Ok((
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "application/json"), (header::RETRY_AFTER, "2")],
                error_frame(&reason),
            )
                .into_response())
        }
        _ => Ok((
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "application/json")],
            error_frame(&format!("media could not be downloaded from WeChat: {}", rec.error)),
        )
            .into_response()),
    }
}

/// `GET P/media/{id}/status`: where a media file stands, always answered 200 (so a page
/// waiting for a download does not log errors while it waits).
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    state.caller(&headers, &params)?;
    let rec = match &state.wechat {
        Some(w) => w.media_file(&id).await.map(|(r, _)| r),
        None => None,
    };
    let data = match rec {
        Some(r) => json!({"id": r.id, "status": r.status, "content_type": r.content_type, "error": r.error}),
        None => json!({"id": id, "status": "unknown", "error": "no such media"}),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    caller.user().ok_or_else(|| ApiError::BadRequest("missing userid: who uploads?".into()))?;
    let w = state
        .wechat
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no WeChat account is configured: nowhere to send media".into()))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(w.media_max),
        _ => ApiError::BadRequest(format!("cannot read the body: {e}")),
    })?;
    let ct =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let ct = ct.split(';').next().unwrap_or("").trim().to_owned();
    // Types a browser shows but never runs (no SVG: it is a document that can script).
    const ALLOWED: &[&str] = &[
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/bmp",
        "audio/amr",
        "audio/mpeg",
        "audio/mp3",
        "audio/ogg",
        "audio/wav",
        "audio/x-wav",
        "video/mp4",
    ];
    if !ALLOWED.contains(&ct.as_str()) {
        return Err(ApiError::UnsupportedMedia(format!(
            "upload a picture (JPEG, PNG, GIF, WebP, BMP), audio (AMR, MP3, Ogg, WAV) or an MP4 video \
             with its Content-Type (got {ct:?})"
        )));
    }
    if body.is_empty() {
        return Err(ApiError::BadRequest("empty upload".into()));
    }
    let rec = w
        .save_upload(body, &ct)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot save media: {e}")))?;
    let data = json!({"id": rec.id, "media_path": format!("{MEDIA_PATH}{}", rec.id), "content_type": rec.content_type});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

/// `GET P/contact?userid=U&contact_id=C`: the WeChat account a contact follows and their
/// customer-service window, or `wechat: null` for a gateway user.
pub async fn contact(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    caller.user().ok_or_else(|| ApiError::BadRequest("missing userid".into()))?;
    let contact = params
        .get("contact_id")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing contact_id".into()))?;
    let mut wechat = None;
    if let Some(w) = &state.wechat
        && let Some(acct) = w.follower_account(contact).await?
    {
        let window = w.window(contact).await.unwrap_or(Value::Null);
        wechat = Some(json!({"appid": acct.config.appid, "original_id": acct.config.original_id,
            "company_id": acct.config.company_id, "window": window}));
    }
    let data = json!({"contact_id": contact, "wechat": wechat});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

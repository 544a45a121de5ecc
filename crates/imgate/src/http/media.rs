//! Media of WeChat messages (`GET P/media/{id}`), uploads from agents (`POST P/media`),
//! and what the console shows about a contact (`GET P/contact`).

use std::collections::HashMap;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use imgate_protocol::{error_frame, ok_frame};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::server::read_body;
use super::{AppState, Params, error::ApiError};
use crate::auth::Caller;
use crate::config::{AuthMode, Config};
use crate::wechat::state::MediaRecord;
use crate::wechat::{MEDIA_PATH, UploadError, Wechat};

/// How long a signed media URL works. Long enough to load a page of pictures or play a
/// voice message; the console asks again (`…/status`) each time it shows one.
pub const MEDIA_URL_TTL: Duration = Duration::from_secs(600);

/// The key media URLs are signed with: derived from `auth.jwt_secret` (so that every node
/// of a deployment checks what another signed), and never the secret itself (so that a
/// media signature is no JWT signature). None without a secret.
fn url_key(config: &Config) -> Option<Hmac<Sha256>> {
    let secret = config.auth.jwt_secret.as_bytes();
    if secret.is_empty() {
        return None;
    }
    let mut k = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    k.update(b"imgate media url");
    Hmac::<Sha256>::new_from_slice(&k.finalize().into_bytes()).ok()
}

fn url_mac(key: Hmac<Sha256>, id: &str, exp: i64) -> Hmac<Sha256> {
    let mut m = key;
    m.update(format!("{id}:{exp}").as_bytes());
    m
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The URL a page may load media `id` from without a token: signed and short-lived, or,
/// in open mode with no secret to sign with, the path with the reader's userid (checked
/// like any other open-mode request). None when neither applies.
fn media_url(config: &Config, id: &str, user: Option<&str>) -> Option<String> {
    if let Some(key) = url_key(config) {
        let exp = now() + MEDIA_URL_TTL.as_secs() as i64;
        let sig = hex(&url_mac(key, id, exp).finalize().into_bytes());
        return Some(format!("{MEDIA_PATH}{id}?exp={exp}&sig={sig}"));
    }
    match (config.auth.mode, user) {
        (AuthMode::Open, Some(u)) => Some(format!(
            "{MEDIA_PATH}{id}?userid={}",
            url::form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>()
        )),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A signed URL's `exp` and `sig`, checked (the HMAC in constant time).
fn check_signature(config: &Config, id: &str, params: &Params) -> Result<(), ApiError> {
    let refused = |why: &str| Err(ApiError::Forbidden(format!("media URL refused: {why}")));
    let Some(key) = url_key(config) else {
        return refused("this gateway signs no media URLs (no auth.jwt_secret)");
    };
    let (Some(exp), Some(sig)) = (params.get("exp"), params.get("sig")) else {
        return refused("a signed media URL needs both exp and sig");
    };
    let (Ok(exp), Some(sig)) = (exp.parse::<i64>(), unhex(sig)) else {
        return refused("bad signature");
    };
    if url_mac(key, id, exp).verify_slice(&sig).is_err() {
        return refused("bad signature");
    }
    if exp < now() {
        return refused("the link has expired; ask for a new one (…/status)");
    }
    Ok(())
}

/// Who reads media: a user, or a backend holding an API key (which may read anything).
enum Reader {
    User(String),
    Backend,
}

fn reader(state: &AppState, headers: &HeaderMap, params: &Params) -> Result<Reader, ApiError> {
    match state.caller(headers, params)? {
        Caller::User(u) | Caller::Named(u) => Ok(Reader::User(u)),
        // In open mode an anonymous caller is anybody: it must say who it is.
        Caller::Backend if state.config.auth.mode == AuthMode::Open => {
            Err(ApiError::BadRequest("missing userid: who reads this media?".into()))
        }
        Caller::Backend => Ok(Reader::Backend),
    }
}

async fn may_read(w: &Wechat, reader: &Reader, rec: &MediaRecord) -> bool {
    match reader {
        Reader::Backend => true,
        Reader::User(u) => w.may_read(u, rec).await,
    }
}

/// The voice file at `path` as Ogg, with its failure as an answer.
async fn playable(path: &std::path::Path) -> Result<std::path::PathBuf, ApiError> {
    use crate::wechat::voice::{VoiceError, playable};
    playable(path).await.map_err(|e| match e {
        VoiceError::NoFfmpeg => ApiError::NotImplemented(e.to_string()),
        VoiceError::Failed(_) => ApiError::Unprocessable(e.to_string()),
        VoiceError::Io(_) => ApiError::Unavailable(e.to_string()),
    })
}

/// `GET P/media/{id}`: with credentials (the reader must be allowed), or a signed URL.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let signed = params.get("sig").is_some() || params.get("exp").is_some();
    let who = if signed {
        check_signature(&state.config, &id, &params)?;
        None
    } else {
        Some(reader(&state, &headers, &params)?)
    };
    let w = state.wechat.as_ref().ok_or_else(|| ApiError::NoSuch(format!("no such media: {id}")))?;
    let (rec, path) =
        w.media_file(&id).await.ok_or_else(|| ApiError::NoSuch(format!("no such media: {id}")))?;
    if let Some(who) = &who
        && !may_read(w, who, &rec).await
    {
        return Err(ApiError::Forbidden(format!(
            "media {id} is not yours to see: only its uploader, the agents of its account and \
             those it was sent to may"
        )));
    }
    match rec.status.as_str() {
        "ready" => {
            let (path, ct) = match params.get("format") {
                None => {
                    let ct = if rec.content_type.is_empty() {
                        "application/octet-stream".to_owned()
                    } else {
                        rec.content_type
                    };
                    (path, ct)
                }
                // A follower's voice as a browser can play it (wechat/voice.rs).
                Some("ogg") if rec.kind == "voice" => (playable(&path).await?, "audio/ogg".to_owned()),
                Some("ogg") => {
                    return Err(ApiError::BadRequest(format!(
                        "format=ogg is for voice messages; media {id} is {}",
                        rec.kind
                    )));
                }
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "format={other}: the only format is ogg (voice)"
                    )));
                }
            };
            serve_file(&path, ct, headers.get(header::RANGE))
                .await
                .map_err(|e| ApiError::Unavailable(format!("media {id}: {e}")))
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
/// waiting for a download does not log errors while it waits). Ready media comes with
/// `url`, a short-lived signed URL the page loads it from (no token in it). Media the
/// caller may not see reads as unknown, as media that does not exist.
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let who = reader(&state, &headers, &params)?;
    let rec = match &state.wechat {
        Some(w) => match w.media_file(&id).await {
            Some((r, _)) if may_read(w, &who, &r).await => Some(r),
            _ => None,
        },
        None => None,
    };
    let data = match rec {
        Some(r) => {
            let user = match &who {
                Reader::User(u) => Some(u.as_str()),
                Reader::Backend => None,
            };
            let url = (r.status == "ready").then(|| media_url(&state.config, &r.id, user)).flatten();
            json!({"id": r.id, "status": r.status, "content_type": r.content_type, "error": r.error, "url": url})
        }
        None => json!({"id": id, "status": "unknown", "error": "no such media"}),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

/// A file from disk, streamed (never read whole), with one `Range` when asked.
async fn serve_file(
    path: &std::path::Path,
    ct: String,
    range: Option<&HeaderValue>,
) -> std::io::Result<Response> {
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    // Served from the console's own origin: never as a document that could run script
    // (an SVG, HTML sniffed from bytes).
    let headers = [
        (header::CONTENT_TYPE, ct),
        (header::CACHE_CONTROL, "private, max-age=86400".into()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        (header::CONTENT_SECURITY_POLICY, "sandbox; default-src 'none'".into()),
        (header::ACCEPT_RANGES, "bytes".into()),
    ];
    let (status, start, count) = match range.and_then(|r| r.to_str().ok()).and_then(|r| byte_range(r, len)) {
        None => (StatusCode::OK, 0, len),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(None) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                Body::empty(),
            )
                .into_response());
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), 64 << 10));
    let mut resp = (status, headers, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// One `bytes=` range of a file of `len` bytes: None to ignore the header (not bytes, more
/// than one range, or malformed: the whole file is served), Some(None) when it cannot be
/// satisfied, else the first and last byte.
pub(crate) fn byte_range(header: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (n > 0 && len > 0).then(|| (len.saturating_sub(n), len - 1))
    } else {
        let start: u64 = a.parse().ok()?;
        let end = if b.is_empty() { u64::MAX } else { b.parse().ok()? };
        if end < start {
            return None;
        }
        (start < len).then(|| (start, end.min(len - 1)))
    };
    Some(range)
}

pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let owner = caller.user().ok_or_else(|| ApiError::BadRequest("missing userid: who uploads?".into()))?;
    let w = state
        .wechat
        .as_ref()
        .ok_or_else(|| ApiError::NoSuch("no WeChat account is configured: nowhere to send media".into()))?;
    let body = read_body(body, w.media_max)?;
    let ct =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let ct = ct.split(';').next().unwrap_or("").trim().to_owned();
    if body.is_empty() {
        return Err(ApiError::BadRequest("empty upload".into()));
    }
    // What WeChat would refuse at send time is refused now, by the bytes themselves (no
    // SVG or HTML either: only formats a browser shows but never runs).
    let thumb = match params.get("type") {
        None | Some("") => false,
        Some("thumb") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "type={other:?}: leave it out, or type=thumb for a video's thumbnail"
            )));
        }
    };
    let checked = imgate_wechat::limits::check(&body, &ct, thumb).map_err(|e| match e {
        imgate_wechat::limits::Refused::Type(why) => ApiError::UnsupportedMedia(why),
        imgate_wechat::limits::Refused::Size(why) => ApiError::PayloadTooLarge(why),
    })?;
    let ct = checked.format.content_type();
    let rec = match w.save_upload(owner, body, ct, checked.kind).await {
        Ok(rec) => rec,
        Err(e @ UploadError::OverQuota { .. }) => {
            // The quota is per UTC day: say when it starts again.
            let mut resp = ApiError::TooMany(e.to_string()).into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(86_400 - now().rem_euclid(86_400)));
            return Ok(resp);
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    let data = json!({"id": rec.id, "media_path": format!("{MEDIA_PATH}{}", rec.id), "content_type": rec.content_type});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

/// `GET P/contact?userid=U&contact_id=C`: the WeChat account a contact follows, their
/// customer-service window and profile, or `wechat: null` for a gateway user.
pub async fn contact(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let user = caller.user().ok_or_else(|| ApiError::BadRequest("missing userid".into()))?;
    let contact = params
        .get("contact_id")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing contact_id".into()))?;
    let mut wechat = None;
    if let Some(w) = &state.wechat
        && let Some(acct) = w.follower_account(contact).await?
    {
        // A follower's window and account are their account's agents' business (a backend
        // holding an API key names the agent it asks for).
        if !w.is_agent(user, &acct.config.appid) {
            return Err(ApiError::Forbidden(format!(
                "{user} is not an agent of the WeChat account {contact} follows"
            )));
        }
        let window = w.window(contact).await.unwrap_or(Value::Null);
        let subscribed = w.subscribed(contact).await;
        // What user/info said (null until first fetched), with the agents' remark.
        let profile = w.profile(contact).await.map(|p| p.to_json());
        wechat = Some(json!({"appid": acct.config.appid, "original_id": acct.config.original_id,
            "company_id": acct.config.company_id, "window": window, "subscribed": subscribed,
            "profile": profile}));
    }
    let data = json!({"contact_id": contact, "wechat": wechat});
    Ok(([(header::CONTENT_TYPE, "application/json")], ok_frame(&data)).into_response())
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_ranges() {
        let check = |header: &str, len: u64, want: Option<Option<(u64, u64)>>| {
            assert_eq!(byte_range(header, len), want, "{header:?} of {len}");
        };
        check("bytes=0-9", 100, Some(Some((0, 9))));
        check("bytes=90-", 100, Some(Some((90, 99))));
        check("bytes=90-1000", 100, Some(Some((90, 99))));
        check("bytes=-10", 100, Some(Some((90, 99))));
        check("bytes=-1000", 100, Some(Some((0, 99))));
        check("bytes=100-", 100, Some(None));
        check("bytes=-0", 100, Some(None));
        check("bytes=0-", 0, Some(None));
        // Ignored: the whole file is served.
        check("bytes=9-0", 100, None);
        check("bytes=0-1,5-6", 100, None);
        check("items=0-1", 100, None);
        check("bytes=a-b", 100, None);
        check("bytes=", 100, None);
    }
}

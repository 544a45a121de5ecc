//! `POST /send`, `POST P/send` (JSON or XML) and `POST P/send_xml` (XML); and, with
//! `bench.noop_route`, `POST /bench/noop`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::{SYSTEM_CONTACT, SendRequest, XmlMessage, ack_frame, parse_send_json};

use super::server::read_body;
use super::{AppState, Params, error::ApiError};
use crate::auth::Caller;
use crate::ingest::{Accepted, Sender};

type Q = Result<Query<HashMap<String, String>>, QueryRejection>;

/// A request's body, read and parsed.
enum Body {
    Json(SendRequest),
    Xml(XmlMessage),
}

pub async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (caller, body) = read(&state, &headers, query, body, false)?;
    limit(&state, sender(&caller, &body, &state.config.protocol.default_sender))?;
    let accepted = match body {
        Body::Json(req) => send_json(&state, &caller, req).await?,
        Body::Xml(xml) => send_xml_body(&state, &caller, &xml).await?,
    };
    Ok(answer(&accepted))
}

pub async fn send_xml(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (caller, body) = read(&state, &headers, query, body, true)?;
    let Body::Xml(xml) = body else {
        return Err(ApiError::UnsupportedMedia("send_xml takes WeChat XML".into()));
    };
    let default_sender = state.config.protocol.default_sender.as_str();
    limit(&state, Some(caller.user().or_else(|| xml.non_empty("FromUserName")).unwrap_or(default_sender)))?;
    Ok(answer(&send_xml_body(&state, &caller, &xml).await?))
}

/// `POST /bench/noop` (with `bench.noop_route`): everything `/send` does before the
/// store — read, parse, check, serialise the frame — and an answer, but no commit and no
/// delivery. The ceiling the benchmark compares `/send` with.
pub async fn noop(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (caller, body) = read(&state, &headers, query, body, false)?;
    let (to, content) = match body {
        Body::Json(req) => (req.to, req.content),
        Body::Xml(xml) => {
            let to = xml.non_empty("ToUserName").unwrap_or_default().to_owned();
            (to, imgate_protocol::content_from_xml(&xml).map_err(|e| ApiError::BadRequest(e.to_string()))?)
        }
    };
    let data = imgate_protocol::MessageData {
        id: uuid::Uuid::now_v7().simple().to_string(),
        name: String::new(),
        avatar: String::new(),
        msg_type: content.msg_type,
        contact_id: caller.user().unwrap_or_default().to_owned(),
        company_id: String::new(),
        send_time: 0,
        msg: content.msg,
        direction: None,
        status: None,
        window: None,
    };
    let frame = imgate_protocol::EncodedMessage::encode(&data, content.code);
    std::hint::black_box(frame.with_seq(1));
    Ok(answer(&Accepted { id: data.id, seq: 0, to, duplicate: false }))
}

/// Who calls, and what they sent: JSON or XML by `Content-Type` when it says, else by
/// the first non-blank byte (XML only, for `send_xml`).
fn read(
    state: &AppState,
    headers: &HeaderMap,
    query: Q,
    body: Result<Bytes, BytesRejection>,
    xml_only: bool,
) -> Result<(Caller, Body), ApiError> {
    let body = read_body(body, state.config.limits.http_body_max)?;
    let params = Params::from(query)?;
    if params.userid_blank() {
        return Err(ApiError::BadRequest(
            "userid is empty: name the sender, or leave userid out to send as protocol.default_sender".into(),
        ));
    }
    let caller = state.caller(headers, &params)?;
    let ct =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let json = !xml_only
        && (ct.contains("json")
            || (!ct.contains("xml")
                && match body.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') => true,
                    Some(b'<') => false,
                    None => {
                        return Err(ApiError::BadRequest(
                            "empty body: send a JSON send request or WeChat XML".into(),
                        ));
                    }
                    Some(_) => {
                        return Err(ApiError::UnsupportedMedia(
                            "body is neither JSON ({\"data\":…}) nor WeChat XML (<xml>…</xml>)".into(),
                        ));
                    }
                }));
    let parsed = if json {
        Body::Json(parse_send_json(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?)
    } else {
        let text =
            std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;
        Body::Xml(XmlMessage::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?)
    };
    Ok((caller, parsed))
}

/// Who sends, as ingest takes it: the caller's user (a token's subject, the `?userid=`
/// of open mode or of an API key), else XML's `FromUserName`, else `system01` for a
/// backend's system message, else `protocol.default_sender` for JSON. None when ingest
/// will refuse the send for want of one.
fn sender<'a>(caller: &'a Caller, body: &'a Body, default_sender: &'a str) -> Option<&'a str> {
    match (caller.user(), body) {
        (Some(u), _) => Some(u),
        (None, Body::Xml(xml)) => xml.non_empty("FromUserName").or(Some(default_sender)),
        (None, Body::Json(req)) if req.content.msg_type == "system" => Some(SYSTEM_CONTACT),
        (None, Body::Json(_)) => Some(default_sender),
    }
}

/// Take from the sender's token bucket, before anything is stored, so that what is
/// refused is not kept.
fn limit(state: &AppState, sender: Option<&str>) -> Result<(), ApiError> {
    let Some(sender) = sender else { return Ok(()) };
    state.senders.take(sender).map_err(|wait| {
        let (reason, retry_after) = state.senders.refusal(sender, wait);
        ApiError::RateLimited { reason, retry_after }
    })
}

async fn send_json(state: &AppState, caller: &Caller, req: SendRequest) -> Result<Accepted, ApiError> {
    let from = match caller {
        Caller::User(u) => Sender::User(u),
        Caller::Named(u) => Sender::Outside(u),
        // A system message needs no sender: its frame says it comes from system01.
        Caller::Backend if req.content.msg_type == "system" => Sender::Outside(SYSTEM_CONTACT),
        // The seed's §2.1 request names no sender: it is the system's.
        Caller::Backend => Sender::Outside(&state.config.protocol.default_sender),
    };
    Ok(state.ingest.send(from, req).await?)
}

async fn send_xml_body(state: &AppState, caller: &Caller, xml: &XmlMessage) -> Result<Accepted, ApiError> {
    let from = match caller {
        Caller::User(u) => Some(Sender::User(u)),
        Caller::Named(u) => Some(Sender::Outside(u)),
        // The seed's §2.2 XML names no FromUserName: then it is the system's.
        Caller::Backend => Some(Sender::Outside(
            xml.non_empty("FromUserName").unwrap_or(&state.config.protocol.default_sender),
        )),
    };
    Ok(state.ingest.send_xml(from, xml).await?)
}

fn answer(a: &Accepted) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        ack_frame(&a.id, a.seq, &a.to, a.duplicate),
    )
        .into_response()
}

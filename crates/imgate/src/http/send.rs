//! `POST /send`, `POST P/send` (JSON or XML) and `POST P/send_xml` (XML).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::{SYSTEM_CONTACT, XmlMessage, ack_frame, parse_send_json};

use super::{AppState, Params, error::ApiError};
use crate::auth::Caller;
use crate::ingest::{Accepted, Sender};

enum Body {
    Json,
    Xml,
}

pub async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body)?;
    match kind(&headers, &body)? {
        Body::Json => send_json(state, headers, query, body).await,
        Body::Xml => send_xml_body(state, headers, query, body).await,
    }
}

pub async fn send_xml(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body)?;
    send_xml_body(state, headers, query, body).await
}

/// `POST /bench/noop` (with `bench.noop_route`): everything `/send` does before the
/// store — read, parse, check, serialise the frame — and an answer, but no commit and no
/// delivery. The ceiling the benchmark compares `/send` with.
pub async fn noop(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body)?;
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let (to, content) = match kind(&headers, &body)? {
        Body::Json => {
            let req = parse_send_json(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            (req.to, req.content)
        }
        Body::Xml => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;
            let xml = XmlMessage::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
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

fn read_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.config.limits.http_body_max),
        _ => ApiError::BadRequest(format!("cannot read the body: {e}")),
    })
}

/// JSON or XML: by `Content-Type` when it says, else by the first non-blank byte.
fn kind(headers: &HeaderMap, body: &[u8]) -> Result<Body, ApiError> {
    let ct =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    if ct.contains("json") {
        return Ok(Body::Json);
    }
    if ct.contains("xml") {
        return Ok(Body::Xml);
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(Body::Json),
        Some(b'<') => Ok(Body::Xml),
        None => Err(ApiError::BadRequest("empty body: send a JSON send request or WeChat XML".into())),
        Some(_) => Err(ApiError::UnsupportedMedia(
            "body is neither JSON ({\"data\":…}) nor WeChat XML (<xml>…</xml>)".into(),
        )),
    }
}

async fn send_json(
    state: AppState,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let req = parse_send_json(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let from = match &caller {
        Caller::User(u) => Sender::User(u),
        Caller::Named(u) => Sender::Outside(u),
        // A system message needs no sender: its frame says it comes from system01.
        Caller::Backend if req.content.msg_type == "system" => Sender::Outside(SYSTEM_CONTACT),
        Caller::Backend => {
            return Err(ApiError::BadRequest(
                "who sends this message? Give ?userid=YOUR_ID (or use WeChat XML with FromUserName)".into(),
            ));
        }
    };
    let accepted = state.ingest.send(from, req).await?;
    Ok(answer(&accepted))
}

async fn send_xml_body(
    state: AppState,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = Params::from(query)?;
    let caller = state.caller(&headers, &params)?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("body is not valid UTF-8".into()))?;
    let xml = XmlMessage::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let from = match &caller {
        Caller::User(u) => Some(Sender::User(u)),
        Caller::Named(u) => Some(Sender::Outside(u)),
        Caller::Backend => None,
    };
    let accepted = state.ingest.send_xml(from, &xml).await?;
    Ok(answer(&accepted))
}

fn answer(a: &Accepted) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        ack_frame(&a.id, a.seq, &a.to, a.duplicate),
    )
        .into_response()
}

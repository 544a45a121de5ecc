//! What a message says, independent of who sends it to whom: `msg_type`, `code`, `msg`.
//!
//! WeChat XML maps to frames as in the README's protocol table. Each known type has a
//! few named fields with snake_case names in `msg`; every other element is kept under its
//! XML name in `msg.extra`. A type nobody knows (the seed's `enim`) keeps all its elements
//! under their XML names directly in `msg`, except `Content`, which is `msg.content` for
//! every type, so that a client showing text finds it in one place. Nothing a sender
//! wrote is dropped.

use serde_json::{Map, Value};

use crate::send::{is_type_name, shown};
use crate::xml::{XmlMessage, fields_to_json};
use crate::{Code, code_for_type};

/// The content of a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Content {
    pub msg_type: String,
    pub code: Code,
    /// Always a JSON object.
    pub msg: Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    #[error("MsgType is missing or empty")]
    MissingType,
    #[error("MsgType {0:?} is not a valid type name (at most 64 letters, digits, _ or -)")]
    BadType(String),
    #[error("MsgId {0:?} is not an unsigned integer of at most 64 bits")]
    BadMsgId(String),
}

/// Elements that address the message rather than make up its content.
const ENVELOPE: &[&str] =
    &["ToUserName", "FromUserName", "CreateTime", "MsgType", "MsgId", "MsgID", "Encrypt"];

enum Kind {
    Str,
    /// A number when it reads as one (coordinates), else the text.
    Num,
}

/// Known fields per type: XML name, `msg` key, kind.
fn known_fields(msg_type: &str) -> &'static [(&'static str, &'static str, Kind)] {
    use Kind::*;
    match msg_type {
        // A follower's choice in a menu message (msgmenu) comes back as text naming it.
        "text" => &[("Content", "content", Str), ("bizmsgmenuid", "bizmsgmenuid", Str)],
        "image" => &[("PicUrl", "pic_url", Str), ("MediaId", "media_id", Str)],
        "voice" => &[
            ("MediaId", "media_id", Str),
            ("Format", "format", Str),
            ("Recognition", "recognition", Str),
            ("MediaId16K", "media_id_16k", Str),
        ],
        "video" | "shortvideo" => &[("MediaId", "media_id", Str), ("ThumbMediaId", "thumb_media_id", Str)],
        "location" => &[
            ("Location_X", "latitude", Num),
            ("Location_Y", "longitude", Num),
            ("Scale", "scale", Num),
            ("Label", "label", Str),
        ],
        "link" => &[("Title", "title", Str), ("Description", "description", Str), ("Url", "url", Str)],
        "event" => &[
            ("Event", "event", Str),
            ("EventKey", "event_key", Str),
            ("Ticket", "ticket", Str),
            ("Latitude", "latitude", Num),
            ("Longitude", "longitude", Num),
            ("Precision", "precision", Num),
            ("MenuId", "menu_id", Str),
        ],
        _ => &[],
    }
}

/// Types whose frames carry `msg.media_path` (the seed's shape for 1002–1004).
fn has_media(msg_type: &str) -> bool {
    matches!(msg_type, "image" | "voice" | "video" | "shortvideo")
}

/// The content of a WeChat XML message.
pub fn content_from_xml(x: &XmlMessage) -> Result<Content, ContentError> {
    let msg_type = x.non_empty("MsgType").ok_or(ContentError::MissingType)?.to_owned();
    // As the JSON path checks `msg_type` and its ids: the type is a short word, and WeChat's
    // ids are integers, kept as written.
    if !is_type_name(&msg_type) {
        return Err(ContentError::BadType(shown(&msg_type)));
    }
    if let Some(id) = msg_id(x)
        && !(id.bytes().all(|b| b.is_ascii_digit()) && id.parse::<u64>().is_ok())
    {
        return Err(ContentError::BadMsgId(shown(id)));
    }
    let known = known_fields(&msg_type);
    let rest = x
        .fields
        .iter()
        .filter(|(n, _)| !ENVELOPE.contains(&n.as_str()) && !known.iter().any(|(k, _, _)| k == n));
    let code = code_for_type(&msg_type);
    if known.is_empty() {
        // Unknown type: everything, as written, with its text where every client looks.
        let mut msg = Map::new();
        if let Some(c) = x.get("Content") {
            msg.insert("content".into(), Value::String(c.to_owned()));
        }
        if let Value::Object(others) = fields_to_json(rest.filter(|(n, _)| n != "Content")) {
            msg.extend(others);
        }
        return Ok(Content { msg_type, code, msg: Value::Object(msg) });
    }
    let mut msg = Map::new();
    for (xml_name, key, kind) in known {
        if let Some(v) = x.get(xml_name) {
            let value = match kind {
                Kind::Num => v.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
                Kind::Str => None,
            };
            msg.insert((*key).to_owned(), value.unwrap_or_else(|| Value::String(v.to_owned())));
        }
    }
    if has_media(&msg_type) {
        // Until the media is fetched and served by imgate, the best path is WeChat's own.
        let path = x.get("PicUrl").unwrap_or_default().to_owned();
        msg.insert("media_path".into(), Value::String(path));
    }
    if msg_type == "text" && !msg.contains_key("content") {
        msg.insert("content".into(), Value::String(String::new()));
    }
    let extra = fields_to_json(rest);
    if extra.as_object().is_some_and(|m| !m.is_empty()) {
        msg.insert("extra".into(), extra);
    }
    Ok(Content { msg_type, code, msg: Value::Object(msg) })
}

/// WeChat's message id: `MsgId`, or `MsgID` as some events spell it.
pub fn msg_id(x: &XmlMessage) -> Option<&str> {
    x.non_empty("MsgId").or_else(|| x.non_empty("MsgID"))
}

/// The key under which WeChat's retries of one message are recognised. `MsgId` alone has
/// collided (WxJava, concurrent voice), so the sender and time are part of it; events have
/// no id at all. Each part is prefixed with its length, so that parts holding `:` cannot
/// make two messages one key. The key says nothing of who posted the XML: the server
/// puts it in the namespace of its source.
pub fn dedupe_key_for_xml(x: &XmlMessage) -> Option<String> {
    let from = x.get("FromUserName").unwrap_or_default();
    let time = x.get("CreateTime").unwrap_or_default().trim();
    if let Some(id) = msg_id(x) {
        return Some(length_prefixed("wx", &[from, time, id]));
    }
    if x.get("MsgType") == Some("event") {
        let event = x.get("Event").unwrap_or_default();
        let key = x.get("EventKey").unwrap_or_default();
        return Some(length_prefixed("wxe", &[from, time, event, key]));
    }
    None
}

fn length_prefixed(tag: &str, parts: &[&str]) -> String {
    let mut k = String::from(tag);
    for p in parts {
        k.push_str(&format!("|{}:{p}", p.len()));
    }
    k
}

#[cfg(test)]
mod tests;

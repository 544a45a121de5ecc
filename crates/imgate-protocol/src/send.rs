//! The send request (seed §2.1): `{"data":{"msg_type","contact_id","msg"},"result":{"code"}}`,
//! posted over HTTP or written by a client on its WebSocket.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::{Code, Content, code_for_type};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("body is not a send request: {0}")]
    Json(String),
    #[error("data.contact_id is missing or empty: say who receives the message")]
    MissingRecipient,
    #[error("data.msg_type is missing and result.code {0} names no type")]
    MissingType(i32),
    #[error("data.msg must be an object, e.g. {{\"content\":\"hello\"}}")]
    MsgNotObject,
    #[error("a text message needs data.msg.content, a string")]
    MissingContent,
    #[error("a {0} message needs data.msg.media_path or data.msg.media_id")]
    MissingMedia(String),
    #[error("data.msg_type {0:?} is not a valid type name")]
    BadType(String),
    #[error("a {msg_type} message needs {field}: {want}")]
    BadField { msg_type: String, field: String, want: &'static str },
    #[error("data.msg_type \"status\" is imgate's own (the outcome of a reply to WeChat): it cannot be sent")]
    Reserved,
}

/// A send request, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SendRequest {
    /// `contact_id`: the recipient.
    pub to: String,
    pub content: Content,
    /// `data.id`, when the client gives one: retries with the same id are one message.
    pub client_id: Option<String>,
    pub name: Option<String>,
    pub avatar: Option<String>,
    pub company_id: Option<String>,
}

#[derive(Deserialize)]
struct Wire {
    data: WireData,
    #[serde(default)]
    result: Option<WireResult>,
}

#[derive(Deserialize)]
struct WireData {
    #[serde(default)]
    msg_type: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    contact_id: Option<String>,
    #[serde(default)]
    msg: Option<Value>,
    #[serde(default, deserialize_with = "string_or_number")]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    avatar: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    company_id: Option<String>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    code: Option<Code>,
}

/// Ids are strings, but a JavaScript client writes `"contact_id": 1` as readily as `"1"`.
/// A number must be an integer that 64 bits hold: anything else reads as a float, and its
/// text (`1.2345678901234568e+29`) would be a different id than the one sent.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(Some(n.to_string())),
        Some(Value::Number(n)) => Err(serde::de::Error::custom(format!(
            "an id given as a number must be an integer of at most 64 bits, not {}; send it as a string",
            shown(&n.to_string())
        ))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or an integer, found {}",
            shown(&other.to_string())
        ))),
    }
}

/// A type name: what `msg_type` (and WeChat's `MsgType`) may be. It becomes a JSON value,
/// a console label and a CSS-free display string, so it is a short word.
pub(crate) fn is_type_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A value as an error message repeats it: at most 64 characters of it.
pub(crate) fn shown(v: &str) -> String {
    match v.char_indices().nth(64) {
        Some((at, _)) => format!("{}… ({} bytes)", &v[..at], v.len()),
        None => v.to_owned(),
    }
}

/// Parse and check a send request.
pub fn parse_send_json(body: &[u8]) -> Result<SendRequest, SendError> {
    let wire: Wire = serde_json::from_slice(body).map_err(|e| SendError::Json(e.to_string()))?;
    let d = wire.data;
    let to = d
        .contact_id
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .ok_or(SendError::MissingRecipient)?;
    let code = wire.result.and_then(|r| r.code);
    let msg_type = match d.msg_type.filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => {
            let c = code.unwrap_or(Code(0));
            c.msg_type().ok_or(SendError::MissingType(c.0))?.to_owned()
        }
    };
    if !is_type_name(&msg_type) {
        return Err(SendError::BadType(shown(&msg_type)));
    }
    if msg_type == "status" || code == Some(Code::STATUS) {
        return Err(SendError::Reserved);
    }
    let msg = match d.msg {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(SendError::MsgNotObject),
    };
    match msg_type.as_str() {
        "text" if !msg.get("content").is_some_and(Value::is_string) => {
            return Err(SendError::MissingContent);
        }
        "image" | "voice" | "video" | "shortvideo"
            if !["media_path", "media_id"]
                .iter()
                .any(|k| msg.get(*k).is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()))) =>
        {
            return Err(SendError::MissingMedia(msg_type));
        }
        _ => check_reply(&msg_type, &msg)?,
    }
    let code = code_for_type(&msg_type);
    Ok(SendRequest {
        to,
        content: Content { msg_type, code, msg },
        client_id: d.id.filter(|s| !s.is_empty()),
        name: d.name,
        avatar: d.avatar,
        company_id: d.company_id,
    })
}

/// The fields WeChat's customer-service API needs of the reply types beyond text and
/// media (`news`, `mpnewsarticle`, `msgmenu`, `miniprogrampage`; `typing` needs none), and
/// of a `template` (`message/template/send`):
/// checked here, the one place a send request is read, so that what WeChat would refuse is
/// refused before anything is kept. The first field wrong is named.
fn check_reply(msg_type: &str, msg: &Value) -> Result<(), SendError> {
    let bad = |field: String, want| Err(SendError::BadField { msg_type: msg_type.to_owned(), field, want });
    let filled = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty());
    // Optional text: absent, or a string.
    let text_or_none = |v: &Value, k: &str| v.get(k).is_none_or(|x| x.is_null() || x.is_string());
    const FILLED: &str = "a non-empty string";
    const TEXT: &str = "a string when given";
    let required: &[&str] = match msg_type {
        "news" => &["title", "url"],
        "mpnewsarticle" => &["article_id"],
        "miniprogrampage" => &["title", "appid", "pagepath"],
        "msgmenu" => &[],
        "template" => &["template_id"],
        _ => return Ok(()),
    };
    for k in required {
        if !filled(msg, k) {
            return bad(format!("data.msg.{k}"), FILLED);
        }
    }
    match msg_type {
        "news" => {
            for k in ["description", "picurl"] {
                if !text_or_none(msg, k) {
                    return bad(format!("data.msg.{k}"), TEXT);
                }
            }
        }
        // The card's picture: an upload of this gateway (`thumb`), or WeChat's id of one.
        "miniprogrampage" if !filled(msg, "thumb") && !filled(msg, "thumb_media_id") => {
            return bad("data.msg.thumb".into(), "the media_path of an uploaded image");
        }
        "msgmenu" => {
            for k in ["head_content", "tail_content"] {
                if !text_or_none(msg, k) {
                    return bad(format!("data.msg.{k}"), TEXT);
                }
            }
            let list = msg.get("list").and_then(Value::as_array).filter(|l| !l.is_empty());
            let Some(list) = list else {
                return bad("data.msg.list".into(), "a non-empty list of {\"id\",\"content\"} choices");
            };
            for (i, item) in list.iter().enumerate() {
                for k in ["id", "content"] {
                    if !filled(item, k) {
                        return bad(format!("data.msg.list[{i}].{k}"), FILLED);
                    }
                }
            }
        }
        "template" => {
            if !text_or_none(msg, "url") {
                return bad("data.msg.url".into(), TEXT);
            }
            match msg.get("miniprogram") {
                None | Some(Value::Null) => {}
                Some(m @ Value::Object(_)) => {
                    if !filled(m, "appid") {
                        return bad("data.msg.miniprogram.appid".into(), FILLED);
                    }
                    if !text_or_none(m, "pagepath") {
                        return bad("data.msg.miniprogram.pagepath".into(), TEXT);
                    }
                }
                Some(_) => {
                    return bad(
                        "data.msg.miniprogram".into(),
                        "an object {\"appid\",\"pagepath\"} when given",
                    );
                }
            }
            // The template's fields: `{{first.DATA}}` in its content is `data.first.value`.
            let Some(data) = msg.get("data").and_then(Value::as_object) else {
                return bad(
                    "data.msg.data".into(),
                    "an object of the template's fields, {\"KEY\":{\"value\":\"…\"}}",
                );
            };
            for (k, field) in data {
                if !field.is_object() {
                    return bad(format!("data.msg.data.{}", shown(k)), "an object {\"value\":\"…\"}");
                }
                if !field.get("value").is_some_and(Value::is_string) {
                    return bad(format!("data.msg.data.{}.value", shown(k)), "a string");
                }
                if !text_or_none(field, "color") {
                    return bad(format!("data.msg.data.{}.color", shown(k)), TEXT);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: &str, want: Result<(&str, &str, i32, Value), SendError>) {
        let got = parse_send_json(body.as_bytes())
            .map(|r| (r.to, r.content.msg_type, r.content.code.0, r.content.msg));
        let want = want.map(|(to, t, c, m)| (to.to_owned(), t.to_owned(), c, m));
        assert_eq!(got, want, "body {body}");
    }

    #[test]
    fn seed_send_request() {
        check(
            r#"{"data":{"msg_type":"text","contact_id":"1","msg":{"content":"hi"}},"result":{"code":1001,"message":"common"}}"#,
            Ok(("1", "text", 1001, json!({"content": "hi"}))),
        );
        // contact as a number, code as a string, no msg_type: the code names it.
        check(
            r#"{"data":{"contact_id":7,"msg":{"media_path":"/m/1"}},"result":{"code":"1002"}}"#,
            Ok(("7", "image", 1002, json!({"media_path": "/m/1"}))),
        );
        check(
            r#"{"data":{"msg_type":"card","contact_id":"u","msg":{"a":1}}}"#,
            Ok(("u", "card", 1099, json!({"a": 1}))),
        );
    }

    #[test]
    fn wechat_reply_types_name_the_first_field_that_is_wrong() {
        let bad = |t: &str, field: &str, want: &'static str| {
            Err(SendError::BadField { msg_type: t.into(), field: field.into(), want })
        };
        let req = |t: &str, msg: Value| {
            json!({"data": {"msg_type": t, "contact_id": "o1", "msg": msg}}).to_string()
        };
        let news = json!({"title": "t", "url": "https://e.com", "description": null});
        check(&req("news", news.clone()), Ok(("o1", "news", 1099, news)));
        check(
            &req("news", json!({"title": " ", "url": "u"})),
            bad("news", "data.msg.title", "a non-empty string"),
        );
        check(
            &req("news", json!({"title": "t", "url": "u", "description": 1})),
            bad("news", "data.msg.description", "a string when given"),
        );
        check(
            &req("mpnewsarticle", json!({})),
            bad("mpnewsarticle", "data.msg.article_id", "a non-empty string"),
        );
        check(
            &req("msgmenu", json!({"list": {"id": "1"}})),
            bad("msgmenu", "data.msg.list", "a non-empty list of {\"id\",\"content\"} choices"),
        );
        check(
            &req("msgmenu", json!({"list": [{"id": 1, "content": "yes"}]})),
            bad("msgmenu", "data.msg.list[0].id", "a non-empty string"),
        );
        check(
            &req("miniprogrampage", json!({"title": "t", "appid": "wx1", "pagepath": "p"})),
            bad("miniprogrampage", "data.msg.thumb", "the media_path of an uploaded image"),
        );
        let card = json!({"title": "t", "appid": "wx1", "pagepath": "p", "thumb_media_id": "M"});
        check(&req("miniprogrampage", card.clone()), Ok(("o1", "miniprogrampage", 1099, card)));
        check(&req("typing", json!({})), Ok(("o1", "typing", 1099, json!({}))));
        let tpl = json!({"template_id": "T", "data": {"first": {"value": "x", "color": "#173177"}}});
        check(&req("template", tpl.clone()), Ok(("o1", "template", 1099, tpl)));
        check(
            &req("template", json!({"template_id": "T", "data": {"first": {"value": 2}}})),
            bad("template", "data.msg.data.first.value", "a string"),
        );
        check(
            &req("template", json!({"template_id": "T", "miniprogram": {"appid": ""}, "data": {}})),
            bad("template", "data.msg.miniprogram.appid", "a non-empty string"),
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        check("{", Err(SendError::Json("EOF while parsing an object at line 1 column 1".into())));
        check(r#"{"data":{"msg_type":"text","msg":{"content":"x"}}}"#, Err(SendError::MissingRecipient));
        check(
            r#"{"data":{"msg_type":"text","contact_id":" ","msg":{"content":"x"}}}"#,
            Err(SendError::MissingRecipient),
        );
        check(r#"{"data":{"contact_id":"1","msg":{}},"result":{"code":5}}"#, Err(SendError::MissingType(5)));
        check(r#"{"data":{"msg_type":"text","contact_id":"1","msg":"hi"}}"#, Err(SendError::MsgNotObject));
        check(
            r#"{"data":{"msg_type":"text","contact_id":"1","msg":{"content":3}}}"#,
            Err(SendError::MissingContent),
        );
        check(
            r#"{"data":{"msg_type":"image","contact_id":"1","msg":{}}}"#,
            Err(SendError::MissingMedia("image".into())),
        );
        check(
            r#"{"data":{"msg_type":"a b","contact_id":"1","msg":{}}}"#,
            Err(SendError::BadType("a b".into())),
        );
        check(
            r#"{"data":{"msg_type":"status","contact_id":"1","msg":{"ref":"x"}}}"#,
            Err(SendError::Reserved),
        );
        assert!(matches!(parse_send_json(br#"{"data":"x"}"#), Err(SendError::Json(_))));
        assert!(matches!(parse_send_json(br#"{"data":{"contact_id":[1]}}"#), Err(SendError::Json(_))));
        assert!(matches!(parse_send_json(b"\xff\xfe"), Err(SendError::Json(_))));
        // Numbers as ids: integers of 64 bits, kept as written; floats refused.
        for bad in ["123456789012345678901234567890", "1.5", "1e3", "-0.0"] {
            let body =
                format!(r#"{{"data":{{"msg_type":"text","contact_id":{bad},"msg":{{"content":"x"}}}}}}"#);
            assert!(matches!(parse_send_json(body.as_bytes()), Err(SendError::Json(_))), "{bad}");
        }
        check(
            r#"{"data":{"msg_type":"text","contact_id":18446744073709551615,"msg":{"content":"x"}}}"#,
            Ok(("18446744073709551615", "text", 1001, json!({"content": "x"}))),
        );
        check(
            r#"{"data":{"msg_type":"text","contact_id":-9223372036854775808,"msg":{"content":"x"}}}"#,
            Ok(("-9223372036854775808", "text", 1001, json!({"content": "x"}))),
        );
        let long = "t".repeat(100_000);
        let body = format!(r#"{{"data":{{"msg_type":"{long}","contact_id":"1","msg":{{}}}}}}"#);
        let err = parse_send_json(body.as_bytes()).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}

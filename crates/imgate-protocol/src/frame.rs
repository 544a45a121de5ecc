//! The frames a user receives (seed §1) and the answers imgate gives, as bytes.
//!
//! A message frame is serialised once, when it is accepted, into an [`EncodedMessage`]:
//! the frame without its `data.seq`. The seq is known only at commit, and prefixing it
//! is a copy, not a second serialisation — every connection and every replay reuses the
//! same bytes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Code;

/// `data` of a message frame (seed §1.1–1.2), except `seq`, which the mailbox assigns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageData {
    pub id: String,
    pub name: String,
    pub avatar: String,
    pub msg_type: String,
    pub contact_id: String,
    pub company_id: String,
    pub send_time: i64,
    pub msg: Value,
    /// `"out"` on the sender's own copy of what it sent (so its other tabs and its
    /// history show both sides of a conversation); absent on received messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// On an outgoing message to a WeChat follower: `sending`; the outcome follows as a
    /// status frame (code 103).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// On messages with a WeChat follower: the customer-service window as it stands now
    /// (`open`, `closes_at`, `remaining`), for the console to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Value>,
}

/// `result` of every frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameResult {
    pub code: Code,
    pub message: String,
}

/// Any frame, for readers of frames (clients, tests, `imgate tail`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame<T = Value> {
    pub data: T,
    pub result: FrameResult,
}

/// A message frame serialised without its seq; see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedMessage {
    /// Everything after `{"data":{"seq":N,`.
    tail: String,
}

const SEQ_PREFIX: &str = "{\"data\":{\"seq\":";

impl EncodedMessage {
    pub fn encode(data: &MessageData, code: Code) -> EncodedMessage {
        let json = serde_json::to_string(data).expect("MessageData serialises");
        let mut tail = String::with_capacity(json.len() + 48);
        // `json` starts with `{` and has at least one field.
        tail.push_str(&json[1..]);
        tail.push_str(",\"result\":{\"code\":");
        tail.push_str(&code.0.to_string());
        tail.push_str(",\"message\":\"common\"}}");
        EncodedMessage { tail }
    }

    /// Bytes as they were stored by [`as_stored`](Self::as_stored).
    pub fn from_stored(tail: String) -> EncodedMessage {
        EncodedMessage { tail }
    }

    pub fn as_stored(&self) -> &str {
        &self.tail
    }

    /// The frame for mailbox position `seq`.
    pub fn with_seq(&self, seq: u64) -> String {
        let mut s = String::with_capacity(SEQ_PREFIX.len() + 21 + self.tail.len());
        s.push_str(SEQ_PREFIX);
        s.push_str(&seq.to_string());
        s.push(',');
        s.push_str(&self.tail);
        s
    }

    /// The frame decoded again (for tests and tools; the server never needs this).
    pub fn decode(&self, seq: u64) -> Result<Frame<MessageData>, serde_json::Error> {
        serde_json::from_str(&self.with_seq(seq))
    }
}

fn result_frame(data: &Value, code: Code, message: &str) -> String {
    serde_json::to_string(&Frame { data, result: FrameResult { code, message: message.to_owned() } })
        .expect("frame serialises")
}

/// The seed's error frame, with a reason a person can act on.
pub fn error_frame(reason: &str) -> String {
    result_frame(&Value::Object(Default::default()), Code::ERROR, reason)
}

/// An error frame carrying details in `data`.
pub fn error_frame_with(details: &Value, reason: &str) -> String {
    result_frame(details, Code::ERROR, reason)
}

/// A success answer: `{"data":…,"result":{"code":0,"message":"ok"}}`.
pub fn ok_frame(data: &Value) -> String {
    result_frame(data, Code::OK, "ok")
}

/// The answer to a send, over HTTP or the sender's socket: the message's id, its seq in
/// the recipient's mailbox, and whether it had been accepted before (a retry).
pub fn ack_frame(id: &str, seq: u64, contact_id: &str, duplicate: bool) -> String {
    // Written by hand: it is on every request's path, and its shape is fixed.
    let mut s = String::with_capacity(96 + id.len() + contact_id.len());
    s.push_str("{\"data\":{\"id\":");
    push_json_str(&mut s, id);
    s.push_str(",\"seq\":");
    s.push_str(&seq.to_string());
    s.push_str(",\"contact_id\":");
    push_json_str(&mut s, contact_id);
    if duplicate {
        s.push_str(",\"duplicate\":true");
    }
    s.push_str("},\"result\":{\"code\":0,\"message\":\"ok\"}}");
    s
}

fn push_json_str(out: &mut String, v: &str) {
    out.push_str(&serde_json::to_string(v).expect("strings serialise"));
}

/// Heartbeat (seed §1.3), always the same bytes.
pub fn heartbeat_frame() -> &'static str {
    r#"{"data":{},"result":{"code":101,"message":"heartbeat"}}"#
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> MessageData {
        MessageData {
            id: "19".into(),
            name: "魏秀兰".into(),
            avatar: String::new(),
            msg_type: "text".into(),
            contact_id: "魏秀兰".into(),
            company_id: "c1".into(),
            send_time: 1678688556,
            msg: json!({"content": "hi \"there\""}),
            direction: None,
            status: None,
            window: None,
        }
    }

    #[test]
    fn message_frame_has_seed_shape_and_seq() {
        let enc = EncodedMessage::encode(&sample(), Code::TEXT);
        let v: Value = serde_json::from_str(&enc.with_seq(42)).unwrap();
        assert_eq!(
            v,
            json!({"data": {"seq": 42, "id": "19", "name": "魏秀兰", "avatar": "", "msg_type": "text",
                "contact_id": "魏秀兰", "company_id": "c1", "send_time": 1678688556,
                "msg": {"content": "hi \"there\""}},
                "result": {"code": 1001, "message": "common"}})
        );
        let back = EncodedMessage::from_stored(enc.as_stored().to_owned());
        assert_eq!(back.decode(42).unwrap().data, sample());
    }

    #[test]
    fn fixed_frames() {
        let hb: Value = serde_json::from_str(heartbeat_frame()).unwrap();
        assert_eq!(hb, json!({"data": {}, "result": {"code": 101, "message": "heartbeat"}}));
        let err: Value = serde_json::from_str(&error_frame("missing userid")).unwrap();
        assert_eq!(err, json!({"data": {}, "result": {"code": -1, "message": "missing userid"}}));
        let ack: Value = serde_json::from_str(&ack_frame("a", 3, "u2", true)).unwrap();
        let plain: Value = serde_json::from_str(&ack_frame("q\"\\", 1, "中", false)).unwrap();
        assert_eq!(
            plain,
            json!({"data": {"id": "q\"\\", "seq": 1, "contact_id": "中"}, "result": {"code": 0, "message": "ok"}})
        );
        assert_eq!(
            ack,
            json!({"data": {"id": "a", "seq": 3, "contact_id": "u2", "duplicate": true}, "result": {"code": 0, "message": "ok"}})
        );
    }

    #[test]
    fn frames_with_string_codes_parse() {
        let f: Frame =
            serde_json::from_str(r#"{"data":{},"result":{"code":"102","message":"common"}}"#).unwrap();
        assert_eq!(f.result.code, Code::SYSTEM);
    }
}

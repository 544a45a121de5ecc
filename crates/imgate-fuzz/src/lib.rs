//! The properties imgate's parsers of untrusted bytes keep, as functions that panic when
//! one is broken: the property tests (`tests/prop_*.rs`, stable Rust, in `scripts/test`)
//! and the cargo-fuzz targets (`fuzz/`, nightly, in `scripts/fuzz`) call the same ones.
//!
//! Two properties for every parser: it never panics, whatever the bytes; and what it
//! accepts survives the rest of the path — it becomes a frame that serialises to JSON and
//! reads back as the same data, WeChat XML that reads back as the same message, an
//! envelope that encrypts back to what was opened. An input that is accepted and then
//! fails further on is a bug here, not at the later step.
//!
//! Owns no parser: everything checked lives in `imgate-protocol` and `imgate-wechat`.

use imgate_protocol::{
    Code, EncodedMessage, MessageData, XmlMessage, content_from_xml, dedupe_key_for_xml, msg_id,
    parse_create_time, parse_send_json,
};
use imgate_wechat::callback::{CallbackQuery, Keys, open_callback, seal};
use imgate_wechat::{Cipher, sign};
use serde_json::Value;
use time::UtcOffset;

/// The key, token and AppID of WeChat's own decrypt sample (V3 of shared/wechat/vectors.md).
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const TOKEN: &str = "spamtest";
pub const APPID: &str = "wx2c2769f8efd9abc2";

/// China's offset, the default of `protocol.create_time_zone`.
fn zone() -> UtcOffset {
    UtcOffset::from_hms(8, 0, 0).unwrap_or(UtcOffset::UTC)
}

/// WeChat XML as `POST /send`, `POST P/send_xml` and the callback read it: a message the
/// parser accepts writes back to XML that reads as the same message, and, when it has a
/// type, becomes a frame that reads back as the same data.
pub fn xml(data: &[u8]) {
    // The HTTP handlers refuse a body that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(x) = XmlMessage::parse(text) else { return };
    accepted_xml(&x);
}

/// What every accepted message must survive.
pub fn accepted_xml(x: &XmlMessage) {
    let written = x.to_xml();
    match XmlMessage::parse(&written) {
        Ok(back) => {
            assert_eq!(&back, x, "XML written from an accepted message reads differently: {written:?}")
        }
        Err(e) => panic!("XML written from an accepted message does not parse ({e}): {written:?}"),
    }
    let _ = dedupe_key_for_xml(x);
    let Ok(content) = content_from_xml(x) else { return };
    // As ingest builds it: the time may still refuse the message, which is fine (400).
    let send_time = match x.non_empty("CreateTime") {
        Some(t) => match parse_create_time(t, zone()) {
            Ok(t) => t,
            Err(_) => return,
        },
        None => 0,
    };
    let data = MessageData {
        id: msg_id(x).unwrap_or("id").to_owned(),
        name: String::new(),
        avatar: String::new(),
        msg_type: content.msg_type,
        contact_id: x.get("FromUserName").unwrap_or_default().to_owned(),
        company_id: String::new(),
        send_time,
        msg: content.msg,
        direction: None,
        status: None,
        window: None,
    };
    frame_round_trip(&data, content.code);
}

/// The JSON send request, as `POST /send` and a client's WebSocket frame read it: an
/// accepted request becomes a frame that reads back as the same data, and its ack is JSON.
pub fn send(data: &[u8]) {
    let Ok(req) = parse_send_json(data) else { return };
    assert!(!req.to.is_empty() && req.content.msg.is_object(), "accepted without recipient or msg object");
    let msg = MessageData {
        id: req.client_id.clone().unwrap_or_else(|| "id".into()),
        name: req.name.clone().unwrap_or_default(),
        avatar: req.avatar.clone().unwrap_or_default(),
        msg_type: req.content.msg_type.clone(),
        contact_id: "sender".into(),
        company_id: req.company_id.clone().unwrap_or_default(),
        send_time: 0,
        msg: req.content.msg.clone(),
        direction: Some("out".into()),
        status: None,
        window: None,
    };
    frame_round_trip(&msg, req.content.code);
    let ack = imgate_protocol::ack_frame(&msg.id, 1, &req.to, false);
    let ack: Value = serde_json::from_str(&ack).unwrap_or_else(|e| panic!("ack is not JSON ({e}): {ack}"));
    assert_eq!(ack["data"]["contact_id"].as_str(), Some(req.to.as_str()));
}

/// A frame as the store keeps it and every client reads it: valid JSON, the same data.
pub fn frame_round_trip(data: &MessageData, code: Code) {
    let encoded = EncodedMessage::encode(data, code);
    let stored = EncodedMessage::from_stored(encoded.as_stored().to_owned());
    let text = stored.with_seq(u64::MAX);
    let value: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"));
    assert_eq!(value["data"]["seq"].as_u64(), Some(u64::MAX), "frame lost its seq: {text}");
    assert_eq!(value["result"]["code"].as_i64(), Some(i64::from(code.0)), "frame lost its code: {text}");
    match stored.decode(u64::MAX) {
        Ok(frame) => assert_eq!(&frame.data, data, "frame reads back differently: {text}"),
        Err(e) => panic!("frame does not decode ({e}): {text}"),
    }
}

/// The AES envelope: whatever opens encrypts back to something that opens the same; the
/// message inside goes on to the XML parser.
pub fn envelope(data: &[u8]) {
    let Ok(cipher) = Cipher::new(AES_KEY) else { panic!("the sample key is valid") };
    let encrypted = String::from_utf8_lossy(data);
    let Ok((msg, appid)) = cipher.decrypt(&encrypted) else { return };
    let again = cipher.encrypt_with(&msg, &appid, [7; 16]);
    assert_eq!(
        cipher.decrypt(&again),
        Ok((msg.clone(), appid.clone())),
        "a decrypted envelope does not survive encryption"
    );
    if let Ok(x) = XmlMessage::parse(&msg) {
        accepted_xml(&x);
    }
}

/// A callback as WeChat's servers (or anyone holding the token) post it. The bytes are
/// read as `mode ‖ timestamp \0 nonce \0 body`:
/// - mode even: `body` is the message; it is sealed as WeChat does (signed, and encrypted
///   in safe mode), and the callback must open to exactly what the parser makes of it;
/// - mode odd: `body` is the POST body itself, signed over its `Encrypt` element (or over
///   nothing in plaintext mode), so that the envelope's own parsing is reached.
pub fn callback(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\0');
    let timestamp = parts.next().unwrap_or_default();
    let nonce = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let Ok(cipher) = Cipher::new(AES_KEY) else { panic!("the sample key is valid") };
    let keys = Keys { token: TOKEN, appid: APPID, cipher: (mode & 2 == 0).then_some(&cipher) };
    if mode & 1 == 0 {
        let (sealed, query) = seal(body, keys, timestamp, nonce);
        let q = query_of(&query);
        let opened = open_callback(&q, &sealed, keys);
        if timestamp.is_empty() || nonce.is_empty() {
            assert!(opened.is_err(), "a callback without timestamp or nonce was accepted");
            return;
        }
        match (XmlMessage::parse(body), opened) {
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "a sealed callback opens to another message");
                accepted_xml(&got);
            }
            (Err(_), Err(_)) => {}
            (want, got) => panic!("parser and callback disagree on {body:?}: {want:?} vs {got:?}"),
        }
        return;
    }
    let encrypted = XmlMessage::parse(body).ok().and_then(|x| x.get("Encrypt").map(str::to_owned));
    let mut q = CallbackQuery {
        signature: Some(sign(&[TOKEN, timestamp, nonce])),
        timestamp: Some(timestamp.to_owned()),
        nonce: Some(nonce.to_owned()),
        ..Default::default()
    };
    if keys.cipher.is_some() {
        q.encrypt_type = Some("aes".into());
        q.msg_signature = Some(sign(&[TOKEN, timestamp, nonce, encrypted.as_deref().unwrap_or("")]));
    }
    if let Ok(x) = open_callback(&q, body, keys) {
        accepted_xml(&x);
    }
}

fn query_of(pairs: &[(String, String)]) -> CallbackQuery {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    CallbackQuery {
        signature: get("signature"),
        timestamp: get("timestamp"),
        nonce: get("nonce"),
        echostr: get("echostr"),
        encrypt_type: get("encrypt_type"),
        msg_signature: get("msg_signature"),
        openid: None,
    }
}

/// The inputs kept in `fuzz/corpus/TARGET/` and `fuzz/regressions/TARGET/`: the official
/// samples the fuzzers start from and every input that once broke a property.
pub fn corpus(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Mutations of kept inputs, as a fuzzer makes them, for the property tests (which draw
/// the edits) and the server's tests (which post the results).
pub mod mutate {
    /// Pieces that break parsers: markup, CDATA edges, references, line ends, control and
    /// non-BMP characters, numbers at the edges of their types.
    pub const TOKENS: &[&str] = &[
        "<",
        ">",
        "</",
        "/>",
        "<xml>",
        "</xml>",
        "<![CDATA[",
        "]]>",
        "]]]]><![CDATA[>",
        "&",
        "&amp;",
        "&lt;",
        "&#13;",
        "&#x0;",
        "&#1;",
        "&#xD800;",
        "&#x10FFFF;",
        "&#xFFFE;",
        "&#65;",
        "&e;",
        "&#;",
        "<!DOCTYPE x>",
        "<!--",
        "-->",
        "<?xml version=\"1.0\"?>",
        "<?pi x?>",
        "\r\n",
        "\r",
        "\n",
        "\t",
        " ",
        "\u{0}",
        "\u{1}",
        "\u{7f}",
        "\u{85}",
        "\u{2028}",
        "\u{feff}",
        "\u{fffe}",
        "😀",
        "中",
        "\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "\\uDBFF\\uDFFF",
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "null",
        "true",
        "-0",
        "1e400",
        "-1e-400",
        "1.7976931348623157e308",
        "5e-324",
        "0.1",
        "123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
        "9223372036854775807",
        "-9223372036854775808",
        "NaN",
        "inf",
        "1976-04-10 12:21:47",
        "9999-12-31 23:59:59",
        "-9999-01-01 00:00:00",
        "0000-00-00 00:00:00",
        "\"msg_type\":",
        "\"contact_id\":",
        "\"msg\":",
        "\"code\":",
        "\"data\":",
        "\"result\":",
        "\"id\":",
        "\"status\"",
        "\"system\"",
        "\"text\"",
        "\"image\"",
        "<MsgType>",
        "</MsgType>",
        "<MsgId>",
        "<CreateTime>",
        "<Content>",
        "<Encrypt>",
        "<FromUserName>",
        "<ToUserName>",
        "=",
        "AAAA",
        "\0",
    ];

    /// One edit; positions are taken modulo the input's length.
    #[derive(Clone, Copy, Debug)]
    pub enum Edit {
        /// Insert `TOKENS[t]` at a position.
        Insert(usize, usize),
        /// Delete up to `n` bytes at a position.
        Delete(usize, usize),
        /// Set the byte at a position.
        Set(usize, u8),
        /// Repeat up to `n` bytes at a position.
        Duplicate(usize, usize),
        /// Cut here, and go on with another kept input from a position of its own.
        Splice(usize, usize),
    }

    /// `seed` with `edits` applied; `others` are what `Splice` takes from.
    pub fn apply(seed: &[u8], edits: &[Edit], others: &[Vec<u8>]) -> Vec<u8> {
        let mut b = seed.to_vec();
        let at = |i: usize, len: usize| i % (len + 1);
        for e in edits {
            match *e {
                Edit::Insert(i, t) => {
                    let p = at(i, b.len());
                    b.splice(p..p, TOKENS[t % TOKENS.len()].bytes());
                }
                Edit::Delete(i, n) => {
                    let p = at(i, b.len());
                    let end = (p + n).min(b.len());
                    b.drain(p..end);
                }
                Edit::Set(i, v) => {
                    if !b.is_empty() {
                        let p = i % b.len();
                        b[p] = v;
                    }
                }
                Edit::Duplicate(i, n) => {
                    let p = at(i, b.len());
                    let end = (p + n).min(b.len());
                    let piece = b[p..end].to_vec();
                    b.splice(end..end, piece);
                }
                Edit::Splice(i, other) => {
                    if let Some(o) = others.get(other % others.len().max(1)) {
                        let p = at(i, b.len());
                        let q = at(i / 3, o.len());
                        b.truncate(p);
                        b.extend_from_slice(&o[q..]);
                    }
                }
            }
        }
        b
    }
}

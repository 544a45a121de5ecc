//! Bad input gets the seed's error frame and the right status, stores nothing, and leaves
//! the server serving everyone else.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

fn assert_error(status: u16, body: &Value, want_status: u16, reason_has: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["result"]["code"], -1, "{body}");
    let reason = body["result"]["message"].as_str().unwrap();
    assert!(reason.contains(reason_has), "reason {reason:?} should mention {reason_has:?}");
}

fn quoted_xml(n: usize) -> Vec<u8> {
    let quotes = "\"".repeat(n);
    format!("<xml><ToUserName>1</ToUserName><FromUserName>a</FromUserName><MsgType>text</MsgType><Content>{quotes}</Content></xml>")
        .into_bytes()
}

#[tokio::test]
async fn bad_http_bodies_are_refused_and_nothing_is_stored() {
    let s = Server::start_with(|c| c.limits.http_body_max = 64 * 1024).await;
    let mut watcher = s.connect("/?userid=1").await;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("/send?userid=a", "application/json", b"{\"data\":".to_vec(), 400, "not a send request"),
        ("/send?userid=a", "application/json", b"{\"data\":{\"msg_type\":\"text\",\"msg\":{\"content\":\"x\"}}}".to_vec(), 400, "contact_id"),
        ("/send?userid=a", "application/json", b"{\"data\":{\"msg_type\":\"text\",\"contact_id\":\"1\",\"msg\":\"x\"}}".to_vec(), 400, "data.msg"),
        ("/send?userid=", "application/json", text_to("1", "empty sender").into_bytes(), 400, "userid"),
        ("/send", "application/xml", b"<xml><ToUserName>1</ToUserName>".to_vec(), 400, "XML"),
        ("/send", "application/xml", b"<xml><ToUserName>1</ToUserName><FromUserName>a</FromUserName></xml>".to_vec(), 400, "MsgType"),
        ("/send", "application/xml", b"<xml><FromUserName>a</FromUserName><MsgType>text</MsgType></xml>".to_vec(), 400, "ToUserName"),
        (
            "/send",
            "application/xml",
            b"<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><ToUserName>1</ToUserName><FromUserName>a</FromUserName><MsgType>text</MsgType><Content>&x;</Content></xml>".to_vec(),
            400,
            "DOCTYPE",
        ),
        ("/send", "application/xml", b"<xml><ToUserName>1</ToUserName><FromUserName>a</FromUserName><MsgType>text</MsgType><Content>&x;</Content></xml>".to_vec(), 400, "entity"),
        ("/send", "application/xml", b"<xml><ToUserName>1</ToUserName><FromUserName>a\xff\xfe</FromUserName><MsgType>text</MsgType></xml>".to_vec(), 400, "UTF-8"),
        ("/send", "application/xml", b"<xml><ToUserName>1</ToUserName><FromUserName>a</FromUserName><MsgType>text</MsgType><CreateTime>soon</CreateTime></xml>".to_vec(), 400, "CreateTime"),
        ("/send", "text/plain", b"hello".to_vec(), 415, "neither JSON"),
        ("/send", "text/plain", b"   ".to_vec(), 400, "empty body"),
        ("/im_component/wx_official_account/send_xml", "application/json", b"{}".to_vec(), 400, "XML"),
        ("/send?userid=a", "application/json", text_to("1", &"x".repeat(70 * 1024)).into_bytes(), 413, "limit"),
        // Under the body limit, but JSON escapes each `"`: the frame would be twice the
        // size a socket's write buffer is made for.
        ("/send", "application/xml", quoted_xml(40 * 1024), 413, "once encoded"),
    ];
    for (path, ct, body, status, reason) in cases {
        let (got_status, got) = s.post(path, ct, body).await;
        assert_error(got_status, &got, status, reason);
    }
    // Nothing reached the user; the next good message is the first it sees.
    let (status, ack) = s.post("/send?userid=a", "application/json", text_to("1", "good")).await;
    assert_eq!(status, 200);
    assert_eq!(content(&watcher.frame().await), "good");
    let (_, history) = s.get("/im_component/wx_official_account/history?userid=1").await;
    let messages = history["data"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "only the good message is stored: {history}");
    assert_eq!(messages[0]["data"]["id"], ack["data"]["id"]);
}

#[tokio::test]
async fn unknown_paths_methods_and_missing_users() {
    let s = Server::start().await;
    let (status, body) = s.get("/nope").await;
    assert_error(status, &body, 404, "/nope");
    let (status, body) = s.get("/send").await;
    assert_error(status, &body, 405, "/send");
    let (status, body) = s.get("/im_component/wx_official_account/msg?userid=u").await;
    assert_error(status, &body, 400, "WebSocket");
    for path in ["/", "/?userid=", "/?userId=%20", "/im_component/wx_official_account/msg"] {
        let err =
            Client::try_connect(&s.ws(path), None).await.err().unwrap_or_else(|| panic!("{path} connected"));
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(r.status(), 400);
                let body: Value = serde_json::from_slice(r.body().as_deref().unwrap()).unwrap();
                assert_error(400, &body, 400, "missing userid");
            }
            other => panic!("{path}: {other}"),
        }
    }
    // Ids are names: a control character (here a newline) is refused.
    let err = Client::try_connect(&s.ws("/?userid=a%0Ab"), None).await.err().unwrap();
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400));
    let (status, body) = s.post("/send?userid=x", "application/json", text_to("b\n99", "hi")).await;
    assert_error(status, &body, 400, "control character");
    let err = Client::try_connect(&s.ws("/?userid=u&since=abc"), None).await.err().unwrap();
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400));
    // GET / without an upgrade is a page, not an error.
    let r = reqwest::get(s.http("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

#[tokio::test]
async fn bad_frames_get_an_error_frame_and_the_connection_stays() {
    let s = Server::start().await;
    let mut c = s.connect("/?userid=u").await;
    for (frame, reason) in [
        ("hello", "JSON"),
        ("{\"data\":", "not a send request"),
        ("{\"data\":{\"msg_type\":\"text\",\"msg\":{\"content\":\"x\"}}}", "contact_id"),
        ("[1,2]", "JSON"),
    ] {
        c.send(frame).await;
        let f = c.frame().await;
        assert_eq!(f["result"]["code"], -1, "{frame}: {f}");
        assert!(f["result"]["message"].as_str().unwrap().contains(reason), "{frame}: {f}");
    }
    // A user is not the system, nor imgate's status frames.
    c.send(r#"{"data":{"msg_type":"system","contact_id":"v","msg":{"text":"fake"}}}"#).await;
    let f = c.frame().await;
    assert!(f["result"]["message"].as_str().unwrap().contains("backends"), "{f}");
    c.send(r#"{"data":{"msg_type":"status","contact_id":"v","msg":{"ref":"x"}}}"#).await;
    let f = c.frame().await;
    assert!(f["result"]["message"].as_str().unwrap().contains("imgate's own"), "{f}");
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.frame().await["result"]["code"], -1);
    // pong, ping and heartbeat echoes are not errors.
    c.send("pong").await;
    c.send("ping").await;
    c.send("{\"data\":{},\"result\":{\"code\":101,\"message\":\"heartbeat\"}}").await;
    c.send(&text_to("v", "still works")).await;
    // The ack and the sender's own copy, in either order; no error among them.
    let codes: Vec<i64> = c.frames(2).await.iter().map(|f| f["result"]["code"].as_i64().unwrap()).collect();
    assert!(codes.contains(&0) && codes.contains(&1001), "{codes:?}");
}

use futures_util::SinkExt;

/// Write a raw, masked client frame.
async fn raw_frame(c: &mut Client, first_byte: u8, payload: &[u8]) {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut bytes = vec![first_byte, 0x80 | payload.len() as u8];
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    match c.ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(&bytes).await.unwrap(),
        _ => unreachable!(),
    }
}

async fn close_code(c: &mut Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.expect("the server closes") {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the connection broke instead of closing: {e}"),
            None => return None,
        }
    }
}

#[tokio::test]
async fn protocol_errors_close_with_the_right_code() {
    let s = Server::start_with(|c| c.limits.ws_frame_max = 1024).await;
    let mut other = s.connect("/?userid=other").await;

    let mut c = s.connect("/?userid=u").await;
    raw_frame(&mut c, 0x81, b"ok \xff\xfe").await; // text, invalid UTF-8
    assert_eq!(close_code(&mut c).await, Some(1007));

    let mut c = s.connect("/?userid=u").await;
    raw_frame(&mut c, 0x83, b"x").await; // reserved opcode
    assert_eq!(close_code(&mut c).await, Some(1002));

    let mut c = s.connect("/?userid=u").await;
    c.send(&"y".repeat(2000)).await; // over ws_frame_max
    assert_eq!(close_code(&mut c).await, Some(1009));

    // Everyone else is still served.
    s.post("/send?userid=a", "application/json", text_to("other", "fine")).await;
    assert_eq!(content(&other.frame().await), "fine");
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);
}

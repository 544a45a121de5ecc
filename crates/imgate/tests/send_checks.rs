//! What the send paths refuse, and which sends are one message: dedupe keys that cannot
//! collide, ids kept as written, XML fields checked as the JSON ones are.

mod common;

use common::*;
use serde_json::Value;

async fn history(s: &Server, user: &str) -> Vec<Value> {
    let (status, h) = s.get(&format!("/im_component/wx_official_account/history?userid={user}")).await;
    assert_eq!(status, 200, "{h}");
    h["data"]["messages"].as_array().unwrap().clone()
}

fn contents(h: &[Value]) -> Vec<String> {
    h.iter().map(|m| m["data"]["msg"]["content"].as_str().unwrap_or_default().to_owned()).collect()
}

fn text_with_id(to: &str, id: &str, content: &str) -> String {
    serde_json::json!({"data": {"msg_type": "text", "contact_id": to, "id": id, "msg": {"content": content}}})
        .to_string()
}

#[tokio::test]
async fn client_ids_with_colons_do_not_collide_across_senders() {
    let s = Server::start().await;
    // `c:{sender}:{id}` made "a:b" + "c" and "a" + "b:c" one key.
    let (status, first) =
        s.post("/send?userid=a:b", "application/json", text_with_id("r", "c", "from a:b")).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) =
        s.post("/send?userid=a", "application/json", text_with_id("r", "b:c", "from a")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["data"]["duplicate"], Value::Null, "not a duplicate: {second}");
    assert_eq!(contents(&history(&s, "r").await), ["from a:b", "from a"]);
    // A true retry is still one message.
    let (_, again) = s.post("/send?userid=a", "application/json", text_with_id("r", "b:c", "from a")).await;
    assert_eq!(again["data"]["duplicate"], true, "{again}");
    assert_eq!(history(&s, "r").await.len(), 2);
}

fn xml(to: &str, from: &str, time: &str, msg_type: &str, msg_id: &str) -> String {
    format!(
        "<xml><ToUserName>{to}</ToUserName><FromUserName>{from}</FromUserName><CreateTime>{time}</CreateTime>\
         <MsgType><![CDATA[{msg_type}]]></MsgType><Content>hi</Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// Each bad XML field: 400 with the seed's error frame, nothing stored.
#[tokio::test]
async fn bad_xml_fields_are_refused_and_store_nothing() {
    let s = Server::start().await;
    let long_type = format!("a<b{}", "x".repeat(60 * 1024));
    let cases: Vec<(String, &str)> = vec![
        (xml("r", "f", "1700000000", &long_type, "1"), "MsgType"),
        (xml("r", "f", "1700000000", "a<b", "1"), "MsgType"),
        (xml("r", "f", "1700000000", "te xt", "1"), "MsgType"),
        (xml("r", "f", "1000000000000000000", "text", "1"), "CreateTime"),
        (xml("r", "f", "-1000000000000000000", "text", "1"), "CreateTime"),
        (xml("r", "f", "1700000000", "text", "12.5"), "MsgId"),
        (xml("r", "f", "1700000000", "text", "123456789012345678901234567890"), "MsgId"),
        (xml("r", "f", "1700000000", "text", "-3"), "MsgId"),
    ];
    for (body, field) in &cases {
        let r = reqwest::Client::new()
            .post(s.http("/im_component/wx_official_account/send_xml"))
            .header("content-type", "text/xml")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{field}: {}", &text[..text.len().min(300)]);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["result"]["code"], -1);
        let reason = v["result"]["message"].as_str().unwrap();
        assert!(reason.contains(field), "{field}: {reason}");
        assert!(reason.len() < 400, "the reason does not repeat a huge value: {} bytes", reason.len());
    }
    assert_eq!(history(&s, "r").await.len(), 0);
    // The good one still goes through, its id as written.
    let (status, ack) = s
        .post(
            "/im_component/wx_official_account/send_xml",
            "text/xml",
            xml("r", "f", "1700000000", "text", "0042"),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    let h = history(&s, "r").await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["data"]["id"], "0042");
}

/// JSON ids as numbers: integers, kept as written; anything else is refused.
#[tokio::test]
async fn numeric_json_ids_are_integers_kept_as_written() {
    let s = Server::start().await;
    for bad in ["123456789012345678901234567890", "1.5", "1e3", "-1.0"] {
        let body = format!(r#"{{"data":{{"msg_type":"text","contact_id":{bad},"msg":{{"content":"x"}}}}}}"#);
        let (status, err) = s.post("/send?userid=u", "application/json", body).await;
        assert_eq!(status, 400, "{bad}: {err}");
        assert_eq!(err["result"]["code"], -1);
        assert!(err["result"]["message"].as_str().unwrap().contains("integer"), "{err}");
        let body = format!(
            r#"{{"data":{{"msg_type":"text","contact_id":"r","id":{bad},"msg":{{"content":"x"}}}}}}"#
        );
        let (status, err) = s.post("/send?userid=u", "application/json", body).await;
        assert_eq!(status, 400, "id {bad}: {err}");
    }
    assert_eq!(history(&s, "r").await.len(), 0);
    let body =
        r#"{"data":{"msg_type":"text","contact_id":18446744073709551615,"id":-7,"msg":{"content":"x"}}}"#;
    let (status, ack) = s.post("/send?userid=u", "application/json", body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["data"]["contact_id"], "18446744073709551615");
    assert_eq!(ack["data"]["id"], "-7");
}

//! The seed's §2.1 JSON and §2.2 XML requests, exactly as it writes them: neither names a
//! sender, and both are accepted as from `protocol.default_sender` (the seed's system id,
//! `system01`, unless configured).

mod common;

use common::*;

/// §2.1, as the seed writes it (its comment aside), to user 1.
const SEED_JSON: &str = r#"{
    "data":{
        "msg_type": "text",
        "contact_id": "1",
        "msg":{
            "content":"from the seed's 2.1"
        }
    },
    "result":{
        "code":1001,
        "message":"common"
    }
}"#;

/// §2.2, as the seed writes it, to user 1: no FromUserName.
const SEED_XML: &str = "<xml>
  <ToUserName><![CDATA[1]]></ToUserName>
  <CreateTime>1348831860</CreateTime>
  <MsgType><![CDATA[text]]></MsgType>
  <Content><![CDATA[this is a test]]></Content>
  <MsgId>1234567890123456</MsgId>
</xml>";

#[tokio::test]
async fn the_seeds_requests_without_a_sender_come_from_system01() {
    let s = Server::start().await;
    let mut one = s.connect("/?userid=1").await;
    for (path, ct, body, content) in [
        ("/send", "application/json", SEED_JSON, "from the seed's 2.1"),
        ("/im_component/wx_official_account/send", "application/json", SEED_JSON, "from the seed's 2.1"),
        ("/im_component/wx_official_account/send_xml", "text/xml", SEED_XML, "this is a test"),
    ] {
        let (status, ack) = s.post(path, ct, body).await;
        assert_eq!(status, 200, "{path}: {ack}");
        let f = one.frame().await;
        assert_eq!(f["data"]["contact_id"], "system01", "{path}: {f}");
        assert_eq!(f["data"]["msg"]["content"], content);
        assert_eq!(f["data"]["id"], ack["data"]["id"]);
    }
}

#[tokio::test]
async fn the_default_sender_is_configurable_and_checked() {
    let s = Server::start_with(|c| c.protocol.default_sender = "ops-desk".into()).await;
    let mut one = s.connect("/?userid=1").await;
    let (status, _) = s.post("/send", "application/json", SEED_JSON).await;
    assert_eq!(status, 200);
    assert_eq!(one.frame().await["data"]["contact_id"], "ops-desk");
    // A named sender still wins.
    let (status, _) = s.post("/send?userid=alice", "application/json", SEED_JSON).await;
    assert_eq!(status, 200);
    assert_eq!(one.frame().await["data"]["contact_id"], "alice");
    let mut bad = imgate::config::Config::default();
    bad.protocol.default_sender = String::new();
    assert!(bad.validate().is_err(), "an empty default_sender is refused");
}

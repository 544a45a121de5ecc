//! Live delivery over both WebSocket paths, both spellings of the user id, several tabs.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn json_send_reaches_a_connected_user_on_every_path_and_spelling() {
    let s = Server::start().await;
    for path in [
        "/?userId=u1",
        "/?userid=u1",
        "/im_component/wx_official_account/msg?userid=u1",
        "/im_component/wx_official_account/msg?userId=u1",
    ] {
        let mut c = s.connect(path).await;
        let body = text_to("u1", path);
        let (status, ack) =
            s.post("/im_component/wx_official_account/send?userid=agent", "application/json", body).await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["result"]["code"], 0);
        let f = c.frame().await;
        assert_eq!(content(&f), path);
        assert_eq!(f["result"], json!({"code": 1001, "message": "common"}));
        assert_eq!(f["data"]["msg_type"], "text");
        assert_eq!(f["data"]["contact_id"], "agent", "the recipient sees the sender as its contact");
        assert_eq!(f["data"]["id"], ack["data"]["id"]);
        assert_eq!(f["data"]["seq"], ack["data"]["seq"]);
        for key in ["id", "name", "avatar", "company_id", "send_time", "seq"] {
            assert!(f["data"].get(key).is_some(), "frame lacks data.{key}: {f}");
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_offered_subprotocol_is_selected() {
    let s = Server::start().await;
    let c = Client::try_connect(&s.ws("/?userId=1"), Some("echo")).await.unwrap();
    assert_eq!(c.protocol.as_deref(), Some("echo"));
    let c = Client::try_connect(&s.ws("/?userId=1"), Some("v2.imgate, echo")).await.unwrap();
    assert_eq!(c.protocol.as_deref(), Some("v2.imgate"));
    let c = Client::try_connect(&s.ws("/?userId=1"), None).await.unwrap();
    assert_eq!(c.protocol, None);
}

#[tokio::test]
async fn two_tabs_of_one_user_both_receive_in_order() {
    let s = Server::start().await;
    let mut a = s.connect("/?userid=u").await;
    let mut b = s.connect("/im_component/wx_official_account/msg?userid=u").await;
    for i in 0..20 {
        let (status, _) = s.post("/send?userid=x", "application/json", text_to("u", &i.to_string())).await;
        assert_eq!(status, 200);
    }
    for tab in [&mut a, &mut b] {
        let got: Vec<String> = tab.frames(20).await.iter().map(|f| content(f).to_owned()).collect();
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn a_frame_sent_over_the_socket_is_a_send_from_that_user() {
    let s = Server::start().await;
    let mut alice = s.connect("/?userid=alice").await;
    let mut alice_tab2 = s.connect("/?userid=alice").await;
    let mut bob = s.connect("/?userid=bob").await;
    alice.send(&text_to("bob", "hi bob")).await;
    // The ack and alice's own copy of the message arrive in either order.
    let mut two = alice.frames(2).await;
    two.sort_by_key(|f| f["result"]["code"].as_i64());
    let (ack, mine_here) = (two[0].clone(), two[1].clone());
    assert_eq!(ack["result"], json!({"code": 0, "message": "ok"}), "{ack}");
    assert_eq!(ack["data"]["contact_id"], "bob");
    let f = bob.frame().await;
    assert_eq!(content(&f), "hi bob");
    assert_eq!(f["data"]["contact_id"], "alice");
    assert_eq!(f["data"]["id"], ack["data"]["id"]);
    // Alice's own copy, for her other tabs and her history.
    let mine = alice_tab2.frame().await;
    assert_eq!(content(&mine), "hi bob");
    assert_eq!(mine["data"]["contact_id"], "bob");
    assert_eq!(mine["data"]["direction"], "out");
    assert_eq!(mine_here["data"]["id"], ack["data"]["id"]);
    assert_eq!(mine_here["data"]["direction"], "out");
}

#[tokio::test]
async fn seed_xml_and_system_messages() {
    let s = Server::start().await;
    let mut c = s.connect("/?userId=1").await;
    let (status, ack) = s.post("/send", "text/plain", SEED_XML).await;
    assert_eq!(status, 200, "{ack}");
    let f = c.frame().await;
    assert_eq!(f["result"]["code"], 1099);
    assert_eq!(f["data"]["msg_type"], "enim");
    assert_eq!(f["data"]["contact_id"], "魏秀兰");
    assert_eq!(f["data"]["id"], "19");
    assert_eq!(f["data"]["send_time"], 197958107, "1976-04-10 12:21:47 in UTC+8");
    assert_eq!(
        f["data"]["msg"],
        json!({"content": "occaecat ut in fugiat dolor", "MsgDataId": "27", "Idx": "74"})
    );
    // The same XML at send_xml, and a system message with its code as a string.
    let xml = SEED_XML.replace("<MsgId>19</MsgId>", "<MsgId>20</MsgId>").replace("enim", "text");
    let (status, _) = s.post("/im_component/wx_official_account/send_xml", "application/xml", xml).await;
    assert_eq!(status, 200);
    assert_eq!(c.frame().await["data"]["msg"]["content"], "occaecat ut in fugiat dolor");
    let sys = r#"{"data":{"msg_type":"system","contact_id":"1","msg":{"text":"maintenance at 22:00"}},"result":{"code":"102","message":"common"}}"#;
    let (status, ack) = s.post("/send", "application/json", sys).await;
    assert_eq!(status, 200, "{ack}");
    let f = c.frame().await;
    assert_eq!(f["result"]["code"], 102);
    assert_eq!(f["data"]["contact_id"], "system01");
    assert_eq!(f["data"]["name"], "系统消息");
}

#[tokio::test]
async fn retries_with_the_same_id_are_one_message() {
    let s = Server::start().await;
    let mut c = s.connect("/?userId=1").await;
    let (_, first) = s.post("/send", "application/xml", SEED_XML).await;
    let (status, again) = s.post("/send", "application/xml", SEED_XML).await;
    assert_eq!(status, 200);
    assert_eq!(again["data"]["duplicate"], true);
    assert_eq!(again["data"]["seq"], first["data"]["seq"]);
    let body = r#"{"data":{"id":"client-7","msg_type":"text","contact_id":"1","msg":{"content":"once"}}}"#;
    let (_, a) = s.post("/send?userid=agent", "application/json", body).await;
    let (_, b) = s.post("/send?userid=agent", "application/json", body).await;
    assert_eq!(a["data"]["id"], "client-7");
    assert_eq!(b["data"]["duplicate"], true);
    let (_, marker) = s.post("/send?userid=agent", "application/json", text_to("1", "marker")).await;
    let got = c.frames(3).await;
    assert_eq!(got[0]["data"]["id"], "19");
    assert_eq!(got[1]["data"]["id"], "client-7");
    assert_eq!(got[2]["data"]["id"], marker["data"]["id"]);
}

//! Template messages (issue #10, "when the window is closed"): `msg_type: "template"`
//! through `message/template/send`, which needs no window; its outcome as a status frame;
//! WeChat's later TEMPLATESENDJOBFINISH turning it into delivered or failed; the account's
//! templates for the console. Against the stand-in, which answers and calls back as
//! WeChat does.

mod common;

use common::*;
use imgate::wechat::standin::StandIn;
use serde_json::{Value, json};

use common::wechat::{APPID, ORIGINAL, TOKEN, text_from};

struct Rig {
    s: Server,
    wechat: StandIn,
}

const TPL: &str = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY";

async fn rig() -> Rig {
    let (wechat, base) = common::wechat::standin().await;
    let s = Server::start_with(|c| common::wechat::aim(c, &base, &["agent1", "agent2"])).await;
    // Where the stand-in posts its event callbacks, as WeChat posts to the URL the admin
    // console names.
    wechat.0.lock().callback = Some(imgate::wechat::standin::CallbackTarget {
        url: s.http(&format!("/im_component/wx_official_account/callback/{APPID}")),
        token: TOKEN.into(),
        original_id: ORIGINAL.into(),
    });
    Rig { s, wechat }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn template(to: &str, msg: Value) -> String {
    json!({"data": {"msg_type": "template", "contact_id": to, "msg": msg}}).to_string()
}

fn order_shipped() -> Value {
    json!({"template_id": TPL, "url": "https://example.com/order/1",
        "data": {"first": {"value": "您的订单已发货"}, "keyword1": {"value": "A1001", "color": "#173177"},
            "remark": {"value": "感谢惠顾"}}})
}

async fn history(s: &Server, contact: &str) -> Vec<Value> {
    let (_, h) =
        s.get(&format!("/im_component/wx_official_account/history?userid=agent1&contact_id={contact}")).await;
    h["data"]["messages"].as_array().unwrap().clone()
}

fn types(h: &[Value]) -> Vec<String> {
    h.iter().map(|m| m["data"]["msg_type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_template_goes_out_with_the_window_closed_and_its_outcome_is_a_status_frame() {
    let r = rig().await;
    let mut agent = r.s.connect("/?userid=agent2").await;
    text_from(&r.s.http(""), now(), "oF", "hi", 1).await;
    // The 48 hours are over: a text is refused, a template is not.
    r.wechat.0.lock().closed.push("oF".into());
    let (status, _) =
        post(&r.s.http("/send?userid=agent1"), "application/json", text_to("oF", "hello")).await;
    assert_eq!(status, 422);
    let (status, ack) =
        post(&r.s.http("/send?userid=agent1"), "application/json", template("oF", order_shipped())).await;
    assert_eq!(status, 200, "{ack}");
    let sent = r.wechat.0.lock().template_sent.clone();
    assert_eq!(
        sent,
        [json!({"touser": "oF", "template_id": TPL, "url": "https://example.com/order/1",
            "data": {"first": {"value": "您的订单已发货"}, "keyword1": {"value": "A1001", "color": "#173177"},
                "remark": {"value": "感谢惠顾"}}})]
    );
    let msgid = r.wechat.0.lock().template_msgids.keys().next().copied().unwrap();
    // The colleague sees the copy, then its outcome with WeChat's msgid (after the
    // follower's text, and the refused text with its status).
    let frames = agent.frames(5).await[3..].to_vec();
    assert_eq!(frames[0]["data"]["msg_type"], "template");
    assert_eq!(frames[0]["data"]["status"], "sending");
    assert_eq!(frames[1]["result"]["code"], 103);
    assert_eq!(
        frames[1]["data"]["msg"],
        json!({"ref": frames[0]["data"]["id"], "status": "sent", "msgid": msgid.to_string()})
    );
    let h = history(&r.s, "oF").await;
    assert_eq!(types(&h), ["text", "text", "status", "template", "status"]);
}

#[tokio::test]
async fn template_fields_are_checked_naming_the_field_and_nothing_is_kept() {
    let r = rig().await;
    text_from(&r.s.http(""), now(), "oF", "hi", 1).await;
    for (msg, field) in [
        (json!({"data": {"first": {"value": "x"}}}), "data.msg.template_id"),
        (json!({"template_id": " ", "data": {}}), "data.msg.template_id"),
        (json!({"template_id": TPL}), "data.msg.data"),
        (json!({"template_id": TPL, "data": []}), "data.msg.data"),
        (json!({"template_id": TPL, "data": {"first": "x"}}), "data.msg.data.first"),
        (json!({"template_id": TPL, "data": {"first": {"value": 1}}}), "data.msg.data.first.value"),
        (
            json!({"template_id": TPL, "data": {"first": {"value": "x", "color": 3}}}),
            "data.msg.data.first.color",
        ),
        (json!({"template_id": TPL, "url": 1, "data": {}}), "data.msg.url"),
        (
            json!({"template_id": TPL, "miniprogram": {"pagepath": "p"}, "data": {}}),
            "data.msg.miniprogram.appid",
        ),
    ] {
        let (status, err) =
            post(&r.s.http("/send?userid=agent1"), "application/json", template("oF", msg)).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["result"]["code"], -1, "{err}");
        let words = err["result"]["message"].as_str().unwrap();
        assert!(words.contains(field), "{words} should name {field}");
    }
    assert_eq!(types(&history(&r.s, "oF").await), ["text"]);
    assert!(r.wechat.0.lock().template_sent.is_empty());
}

#[tokio::test]
async fn wechat_refusals_of_templates_are_explained() {
    let r = rig().await;
    for (i, o) in ["oF", "oGone", "wxNotOurs"].into_iter().enumerate() {
        text_from(&r.s.http(""), now(), o, "hi", i as u64 + 1).await;
    }
    let send = |to: &'static str, msg: Value| {
        let url = r.s.http("/send?userid=agent1");
        async move { post(&url, "application/json", template(to, msg)).await }
    };
    let mut unknown = order_shipped();
    unknown["template_id"] = json!("no-such-template");
    let (status, err) = send("oF", unknown).await;
    assert_eq!((status, err["data"]["errcode"].clone()), (422, json!(40037)), "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("template_id"), "{err}");

    r.wechat.0.lock().refusing.insert("oGone".into(), 43004);
    let (status, err) = send("oGone", order_shipped()).await;
    assert_eq!((status, err["data"]["errcode"].clone()), (422, json!(43004)), "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("unfollowed"), "{err}");

    let (status, err) = send("wxNotOurs", order_shipped()).await;
    assert_eq!((status, err["data"]["errcode"].clone()), (422, json!(40003)), "{err}");

    r.wechat.0.lock().template_quota = Some(0);
    let (status, err) = send("oF", order_shipped()).await;
    assert_eq!((status, err["data"]["errcode"].clone()), (422, json!(45009)), "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("quota"), "{err}");
    // Each is in the history with its failed status.
    let h = history(&r.s, "oF").await;
    let outcomes: Vec<&str> = h
        .iter()
        .filter(|m| m["data"]["msg_type"] == "status")
        .map(|m| m["data"]["msg"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed"]);
    assert!(r.wechat.0.lock().template_sent.is_empty());
}

#[tokio::test]
async fn templatesendjobfinish_makes_a_template_delivered_or_failed() {
    let r = rig().await;
    let mut agent = r.s.connect("/?userid=agent2").await;
    for (i, o) in ["oA", "oB", "oC"].into_iter().enumerate() {
        text_from(&r.s.http(""), now(), o, "hi", i as u64 + 1).await;
    }
    let mut ids = Vec::new();
    for o in ["oA", "oB", "oC"] {
        let (status, ack) =
            post(&r.s.http("/send?userid=agent1"), "application/json", template(o, order_shipped())).await;
        assert_eq!(status, 200, "{ack}");
        ids.push(ack["data"]["id"].as_str().unwrap().to_owned());
    }
    let msgids: Vec<u64> = {
        let st = r.wechat.0.lock();
        let mut m: Vec<(u64, String)> = st.template_msgids.iter().map(|(k, v)| (*k, v.clone())).collect();
        m.sort_by(|a, b| a.1.cmp(&b.1));
        m.into_iter().map(|(k, _)| k).collect()
    };
    agent.frames(3 * 3).await; // the texts, the copies and their statuses
    for (msgid, how) in msgids.iter().zip(["success", "failed:user block", "failed: system failed"]) {
        let answer = r.wechat.finish_template(*msgid, how).await.unwrap();
        assert_eq!(answer, "success");
    }
    // WeChat retries a callback it thinks was not taken: one frame still.
    let again = r.wechat.finish_template(msgids[0], "success").await.unwrap();
    assert_eq!(again, "success");
    // A msgid imgate never sent: answered, stored nowhere.
    assert_eq!(r.wechat.finish_template(999_999, "success").await.unwrap(), "success");
    let frames = agent.frames(3).await;
    let got: Vec<Value> = frames.iter().map(|f| f["data"]["msg"].clone()).collect();
    assert_eq!(
        got,
        [
            json!({"ref": ids[0], "status": "delivered", "msgid": msgids[0].to_string()}),
            json!({"ref": ids[1], "status": "failed", "msgid": msgids[1].to_string(), "wechat_status": "failed:user block",
                "reason": "the follower has blocked template messages from this account"}),
            json!({"ref": ids[2], "status": "failed", "msgid": msgids[2].to_string(), "wechat_status": "failed: system failed",
                "reason": "WeChat could not deliver it (a failure on WeChat's side)"}),
        ]
    );
    assert!(frames.iter().all(|f| f["result"]["code"] == 103));
    assert_eq!(frames[0]["data"]["contact_id"], "oA");
    let h = history(&r.s, "oA").await;
    assert_eq!(types(&h), ["text", "template", "status", "status"]);
}

#[tokio::test]
async fn agents_list_the_accounts_templates_with_their_fields_cached() {
    let r = rig().await;
    text_from(&r.s.http(""), now(), "oF", "hi", 1).await;
    let path = "/im_component/wx_official_account/templates?userid=agent1&contact_id=oF";
    let (status, body) = r.s.get(path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["code"], 0);
    assert_eq!(body["data"]["appid"], APPID);
    let list = body["data"]["templates"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|t| t["template_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [TPL, "iPk5sOIt5X_flOVKn5GrTFpncEYTojx6ddbt8WYoV5s"]);
    assert_eq!(list[0]["title"], "订单发货提醒");
    assert_eq!(list[0]["fields"], json!(["first", "keyword1", "keyword2", "remark"]));
    assert!(list[0]["content"].as_str().unwrap().contains("{{keyword1.DATA}}"));
    // Cached: asked again, WeChat is not.
    let (status, _) = r.s.get(path).await;
    assert_eq!(status, 200);
    assert_eq!(r.wechat.0.lock().template_list_calls, 1);
    // A template added since: asking for its id fetches the list again.
    let mut added = r.wechat.0.lock().templates[0].clone();
    added.template_id = "newTemplate1".into();
    r.wechat.0.lock().templates.push(added);
    let (status, body) = r.s.get(&format!("{path}&template_id=newTemplate1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["templates"].as_array().unwrap().len(), 3);
    assert_eq!(r.wechat.0.lock().template_list_calls, 2);
    // A template WeChat no longer knows (deleted since): the list is asked for again.
    let mut gone = order_shipped();
    gone["template_id"] = json!("deletedTemplate");
    let (status, _) = post(&r.s.http("/send?userid=agent1"), "application/json", template("oF", gone)).await;
    assert_eq!(status, 422);
    let (status, _) = r.s.get(path).await;
    assert_eq!(status, 200);
    assert_eq!(r.wechat.0.lock().template_list_calls, 3);
    // Only the account's agents.
    let (status, body) =
        r.s.get("/im_component/wx_official_account/templates?userid=mallory&contact_id=oF").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["result"]["code"], -1);
    let (status, _) =
        r.s.get("/im_component/wx_official_account/templates?userid=agent1&contact_id=oNobody").await;
    assert_eq!(status, 404);
}

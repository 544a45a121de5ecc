//! The WeChat channel end to end, against a stand-in for WeChat's API: callbacks in every
//! mode, deduplication, replies through the customer-service API, token refresh, errors
//! in plain words, media.

mod common;

use std::time::Duration;

use common::*;
use imgate::wechat::standin::{Misbehave, StandIn};
use imgate_protocol::XmlMessage;
use imgate_wechat::Cipher;
use imgate_wechat::callback::{Keys, seal};
use serde_json::Value;

use common::wechat::{AES_KEY, APPID, ORIGINAL, SECRET, TOKEN};

/// WeChat stamps each callback with the time it sent it; imgate refuses stale ones.
fn now_ts() -> String {
    time::OffsetDateTime::now_utc().unix_timestamp().to_string()
}

struct Rig {
    s: Server,
    wechat: StandIn,
    cipher: Option<Cipher>,
}

async fn rig(safe_mode: bool) -> Rig {
    rig_with(safe_mode, |_| {}).await
}

async fn rig_with(safe_mode: bool, tune: impl FnOnce(&mut imgate::config::Config)) -> Rig {
    let (wechat, base) = common::wechat::standin().await;
    let s = Server::start_with(|c| {
        common::wechat::aim(c, &base, &["agent1"]);
        if safe_mode {
            c.wechat.accounts[0].encoding_aes_key = AES_KEY.into();
        }
        tune(c);
    })
    .await;
    Rig { s, wechat, cipher: safe_mode.then(|| Cipher::new(AES_KEY).unwrap()) }
}

impl Rig {
    fn keys(&self) -> Keys<'_> {
        Keys { token: TOKEN, appid: APPID, cipher: self.cipher.as_ref() }
    }

    /// Post `xml` as WeChat would; the status and the body.
    async fn callback(&self, xml: &str) -> (u16, String) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        common::wechat::post_sealed(&self.s.http(""), xml, self.cipher.as_ref(), now).await
    }

    async fn post_callback(&self, body: &str, query: &[(String, String)]) -> (u16, String) {
        common::wechat::post_callback(&self.s.http(""), body, query).await
    }
}

fn text_from(openid: &str, content: &str, msg_id: u64) -> String {
    let now = now_ts();
    format!(
        "<xml><ToUserName><![CDATA[{ORIGINAL}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
         <CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>"
    )
}

#[tokio::test]
async fn url_verification_answers_echostr() {
    let r = rig(true).await;
    let q = [
        ("signature", "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"),
        ("timestamp", "1409735669"),
        ("nonce", "1320562132"),
        ("echostr", "abc123"),
    ];
    for path in [
        format!("/im_component/wx_official_account/callback/{APPID}"),
        "/im_component/wx_official_account/callback".into(),
    ] {
        let resp = reqwest::Client::new().get(r.s.http(&path)).query(&q).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "abc123");
    }
    let bad =
        [("signature", "0000"), ("timestamp", "1409735669"), ("nonce", "1320562132"), ("echostr", "abc123")];
    let resp = reqwest::Client::new()
        .get(r.s.http("/im_component/wx_official_account/callback"))
        .query(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_safe_mode_callback_reaches_the_agent_once_however_often_wechat_retries() {
    let r = rig(true).await;
    let mut agent = r.s.connect("/?userid=agent1").await;
    let xml = text_from("oFollower1", "你好 👋", 6054768590064713728);
    for _ in 0..3 {
        let (status, body) = r.callback(&xml).await;
        assert_eq!((status, body.as_str()), (200, "success"));
    }
    let f = agent.frame().await;
    assert_eq!(f["data"]["contact_id"], "oFollower1");
    assert_eq!(f["data"]["company_id"], "acme");
    assert_eq!(f["data"]["id"], "6054768590064713728");
    assert_eq!(content(&f), "你好 👋");
    assert_eq!(f["data"]["window"]["open"], true);
    assert_eq!(f["data"]["window"]["remaining"], 5);
    // Nothing more: the next frame is a later message, not a retry.
    r.callback(&text_from("oFollower1", "second", 2)).await;
    assert_eq!(content(&agent.frame().await), "second");
    // Events are system frames with every field.
    let now = now_ts();
    r.callback(&format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oFollower2</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_7</EventKey><Ticket>T</Ticket></xml>"
    ))
    .await;
    let e = agent.frame().await;
    assert_eq!(e["result"]["code"], 102);
    assert_eq!(e["data"]["msg"]["event"], "subscribe");
    assert_eq!(e["data"]["msg"]["event_key"], "qrscene_7");
    assert_eq!(e["data"]["contact_id"], "oFollower2");
}

#[tokio::test]
async fn an_agent_reply_reaches_wechat_as_utf8_json() {
    let r = rig(true).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let mut agent = r.s.connect("/?userid=agent1").await;
    agent.frame().await;
    agent.send(&text_to("oF", "您好，有什么可以帮您？😀")).await;
    let frames = agent.frames(3).await; // the copy (sending), the status, the ack: any order
    let ack = frames.iter().find(|f| f["result"]["code"] == 0).expect("an ack");
    let status = frames.iter().find(|f| f["result"]["code"] == 103).expect("a status frame");
    assert_eq!(status["data"]["msg"]["status"], "sent");
    assert_eq!(status["data"]["msg"]["ref"], ack["data"]["id"]);
    let sent = r.wechat.0.lock().sent.clone();
    assert_eq!(sent.len(), 1);
    let raw = std::str::from_utf8(&sent[0]).unwrap();
    assert!(
        raw.contains("您好，有什么可以帮您？😀"),
        "Chinese and emoji go as UTF-8, not \\u escapes: {raw}"
    );
    let v: Value = serde_json::from_str(raw).unwrap();
    assert_eq!(v["touser"], "oF");
    assert_eq!(v["msgtype"], "text");
    assert_eq!(v["text"]["content"], "您好，有什么可以帮您？😀");
    // The window counts the reply.
    let (_, c) = r.s.get("/im_component/wx_official_account/contact?userid=agent1&contact_id=oF").await;
    assert_eq!(c["data"]["wechat"]["window"]["remaining"], 4);
    assert_eq!(c["data"]["wechat"]["appid"], APPID);
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_and_the_send_retried() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let send = |body: String| {
        let url = r.s.http("/send?userid=agent1");
        async move { post(&url, "application/json", body).await }
    };
    let (status, _) = send(text_to("oF", "first")).await;
    assert_eq!(status, 200);
    let fetched = r.wechat.0.lock().token_fetches;
    // Another caller invalidated the token: one refresh, one retry, success.
    r.wechat.expire_tokens();
    let (status, ack) = send(text_to("oF", "second")).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(r.wechat.0.lock().token_fetches, fetched + 1);
    assert_eq!(r.wechat.0.lock().sent.len(), 2);
    // 40001 again on the retry too: no loop, an error.
    r.wechat.expire_tokens();
    {
        let mut w = r.wechat.0.lock();
        w.send_errors.push_back((40001, "invalid credential".into()));
        w.send_errors.push_back((40001, "invalid credential".into()));
    }
    let (status, err) = send(text_to("oF", "third")).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 40001);
}

#[tokio::test]
async fn a_closed_window_is_explained_to_the_agent() {
    let r = rig(true).await;
    r.callback(&text_from("oLate", "hi", 1)).await;
    r.wechat.0.lock().closed.push("oLate".into());
    let mut agent = r.s.connect("/?userid=agent1").await;
    agent.frame().await;
    agent.send(&text_to("oLate", "sorry for the wait")).await;
    let frames = agent.frames(3).await;
    let err = frames.iter().find(|f| f["result"]["code"] == -1).expect("an error frame");
    let reason = err["result"]["message"].as_str().unwrap();
    assert!(reason.contains("48-hour window"), "{reason}");
    assert_eq!(err["data"]["errcode"], 45015);
    let status = frames.iter().find(|f| f["result"]["code"] == 103).unwrap();
    assert_eq!(status["data"]["msg"]["status"], "failed");
    assert!(r.wechat.0.lock().sent.is_empty());
}

#[tokio::test]
async fn an_image_callback_serves_the_bytes() {
    let r = rig(true).await;
    let png = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
    r.wechat.0.lock().media.insert("MEDIA-IMG".into(), (png.clone().into(), "image/png".into()));
    r.wechat.0.lock().media_failures.insert("MEDIA-IMG".into(), 1); // the first download fails
    let mut agent = r.s.connect("/?userid=agent1").await;
    let now = now_ts();
    r.callback(&format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oPic</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>image</MsgType><PicUrl>http://mmbiz.qpic.cn/x</PicUrl><MediaId>MEDIA-IMG</MediaId><MsgId>77</MsgId></xml>"
    ))
    .await;
    let f = agent.frame().await;
    assert_eq!(f["result"]["code"], 1002);
    let path = f["data"]["msg"]["media_path"].as_str().unwrap().to_owned();
    assert!(path.starts_with("/im_component/wx_official_account/media/"), "{path}");
    // Delivery did not wait for the download; the media becomes available after a retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let resp = reqwest::get(r.s.http(&format!("{path}?userid=agent1"))).await.unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.headers()["content-type"], "image/png");
            assert_eq!(resp.bytes().await.unwrap().to_vec(), png);
            break;
        }
        assert_eq!(resp.status(), 503, "pending media answers 503");
        assert!(tokio::time::Instant::now() < deadline, "the media never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_agent_sends_an_uploaded_image() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "send me the picture", 1)).await;
    let up = reqwest::Client::new()
        .post(r.s.http("/im_component/wx_official_account/media?userid=agent1"))
        .header("content-type", "image/jpeg")
        .body(b"\xff\xd8\xff jpeg bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let up: Value = up.json().await.unwrap();
    let path = up["data"]["media_path"].as_str().unwrap();
    let body =
        serde_json::json!({"data": {"msg_type": "image", "contact_id": "oF", "msg": {"media_path": path}}})
            .to_string();
    let (status, ack) = post(&r.s.http("/send?userid=agent1"), "application/json", body).await;
    assert_eq!(status, 200, "{ack}");
    let sent = r.wechat.0.lock().sent.clone();
    let v: Value = serde_json::from_slice(&sent[0]).unwrap();
    assert_eq!(v["msgtype"], "image");
    let media_id = v["image"]["media_id"].as_str().unwrap();
    assert_eq!(r.wechat.0.lock().media[media_id].0.to_vec(), b"\xff\xd8\xff jpeg bytes".to_vec());
}

#[tokio::test]
async fn bad_callbacks_are_refused_and_store_nothing() {
    let r = rig(true).await;
    let mut agent = r.s.connect("/?userid=agent1").await;
    let xml = text_from("oX", "should never arrive", 9);
    let (body, query) = seal(&xml, r.keys(), &now_ts(), "1320562132");
    let with = |k: &str, v: &str| -> Vec<(String, String)> {
        query.iter().map(|(n, old)| (n.clone(), if n == k { v.to_owned() } else { old.clone() })).collect()
    };
    // Bad signature.
    let (status, answer) = r.post_callback(&body, &with("msg_signature", &"0".repeat(40))).await;
    assert_eq!(status, 401, "{answer}");
    // Sealed for another AppID.
    let other = Keys { appid: "wx0000000000000000", ..r.keys() };
    let (b, q) = seal(&xml, other, &now_ts(), "1320562132");
    let (status, answer) = r.post_callback(&b, &q).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("AppID"), "{answer}");
    // Truncated and garbage Encrypt, correctly signed so that decryption is attempted.
    let outer = XmlMessage::parse(&body).unwrap();
    let enc = outer.get("Encrypt").unwrap();
    for bad in [&enc[..enc.len() / 2], "garbage!!", "QUFBQQ==", ""] {
        let body =
            format!("<xml><ToUserName>{ORIGINAL}</ToUserName><Encrypt><![CDATA[{bad}]]></Encrypt></xml>");
        let ts = &query.iter().find(|(n, _)| n == "timestamp").unwrap().1;
        let sig = imgate_wechat::sign(&[TOKEN, ts, "1320562132", bad]);
        let (status, answer) = r.post_callback(&body, &with("msg_signature", &sig)).await;
        assert_eq!(status, 400, "{bad:?}: {answer}");
    }
    // Plaintext (taken where safe mode is configured: the mode is each callback's), but
    // signed with another token.
    let plain = Keys { cipher: None, token: "another-token", ..r.keys() };
    let (b, q) = seal(&xml, plain, &now_ts(), "1320562132");
    let (status, answer) = r.post_callback(&b, &q).await;
    assert_eq!(status, 401, "{answer}");
    // Not XML at all, and an unknown account.
    let (status, _) = r.post_callback("{\"json\": true}", &query).await;
    assert_eq!(status, 400);
    let resp = reqwest::Client::new()
        .post(r.s.http("/im_component/wx_official_account/callback/wxNOPE"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Nothing reached the agent or its mailbox; the server still works.
    let (_, h) = r.s.get("/im_component/wx_official_account/history?userid=agent1").await;
    assert_eq!(h["data"]["messages"].as_array().unwrap().len(), 0, "{h}");
    let (status, _) = r.callback(&text_from("oX", "good one", 10)).await;
    assert_eq!(status, 200);
    assert_eq!(content(&agent.frame().await), "good one");
}

#[tokio::test]
async fn compatible_mode_trusts_only_the_encrypted_copy() {
    let r = rig(true).await;
    let mut agent = r.s.connect("/?userid=agent1").await;
    let real = text_from("oCompat", "the real text", 41);
    let (safe_body, query) = seal(&real, r.keys(), &now_ts(), "1320562132");
    let enc = XmlMessage::parse(&safe_body).unwrap().get("Encrypt").unwrap().to_owned();
    // Compatible mode: clear fields beside Encrypt — here forged ones.
    let body = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oForged</FromUserName><CreateTime>1</CreateTime>\
         <MsgType>text</MsgType><Content>forged</Content><MsgId>42</MsgId><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
    );
    let (status, _) = r.post_callback(&body, &query).await;
    assert_eq!(status, 200);
    let f = agent.frame().await;
    assert_eq!(content(&f), "the real text");
    assert_eq!(f["data"]["contact_id"], "oCompat");
}

#[tokio::test]
async fn imgate_wechat_simulate_posts_like_wechat() {
    let r = rig(true).await;
    let (standin, standin_url) = common::wechat::standin().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("imgate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\n[wechat]\napi_base = \"{standin_url}\"\n[[wechat.accounts]]\noriginal_id = \"{ORIGINAL}\"\n\
             appid = \"{APPID}\"\nsecret = \"{SECRET}\"\ntoken = \"{TOKEN}\"\nencoding_aes_key = \"{AES_KEY}\"\n",
            r.s.addr
        ),
    )
    .unwrap();
    let mut agent = r.s.connect("/?userid=agent1").await;
    // The server runs on this test's runtime: run the command without blocking it.
    let simulate = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
                .args(["wechat", "simulate", "--config"])
                .arg(&config)
                .args(["--from", "oSim"])
                .args(args)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(simulate(args(&["--text", "from the command line"])).await.trim(), "success");
    let f = agent.frame().await;
    assert_eq!(content(&f), "from the command line");
    assert_eq!(f["data"]["contact_id"], "oSim");
    simulate(args(&["--event", "subscribe"])).await;
    assert_eq!(agent.frame().await["data"]["msg"]["event"], "subscribe");
    // An image: uploaded to the stand-in, then fetched back by the gateway... from its own
    // WeChat (here a different stand-in, which does not know the media: the download
    // fails and the error is visible, delivery is not held up).
    let img = dir.path().join("p.png");
    std::fs::write(&img, b"\x89PNG\r\n\x1a\n fake").unwrap();
    simulate(args(&["--image", img.to_str().unwrap()])).await;
    let f = agent.frame().await;
    assert_eq!(f["result"]["code"], 1002);
    assert_eq!(standin.0.lock().media.len(), 1);
    // The download's error shows in the media's status (the first attempt is at once).
    let path = f["data"]["msg"]["media_path"].as_str().unwrap_or_else(|| panic!("no media_path in {f}"));
    let st = eventually("the download error never showed", || async {
        let (status, st) = r.s.get(&format!("{path}/status?userid=agent1")).await;
        assert_eq!(status, 200, "{st}");
        st["data"]["error"].as_str().is_some_and(|e| !e.is_empty()).then_some(st)
    })
    .await;
    assert_eq!(st["data"]["status"], "pending", "retried later: {st}");
    assert!(st["data"]["error"].as_str().unwrap().contains("media"), "{st}");
}

#[tokio::test]
async fn what_wechat_cannot_carry_is_refused_before_anything_is_kept() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let body = serde_json::json!({"data": {"msg_type": "location", "contact_id": "oF",
        "msg": {"latitude": 1.0, "longitude": 2.0}}})
    .to_string();
    let (status, err) = post(&r.s.http("/send?userid=agent1"), "application/json", body).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("cannot be sent"), "{err}");
    let image = serde_json::json!({"data": {"msg_type": "image", "contact_id": "oF",
        "msg": {"media_path": "/im_component/wx_official_account/media/nope"}}})
    .to_string();
    let (status, _) = post(&r.s.http("/send?userid=agent1"), "application/json", image).await;
    assert_eq!(status, 400);
    let (_, h) = r.s.get("/im_component/wx_official_account/history?userid=agent1&contact_id=oF").await;
    let kinds: Vec<&str> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["msg_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text"], "only the follower's message is in the history");
    assert!(r.wechat.0.lock().sent.is_empty());
}

#[tokio::test]
async fn the_accounts_other_agents_see_a_colleagues_reply() {
    let (wechat, base) = common::wechat::standin().await;
    let s = Server::start_with(|c| common::wechat::aim(c, &base, &["amy", "ben"])).await;
    let r = Rig { s, wechat, cipher: None };
    r.callback(&text_from("oF", "hello team", 1)).await;
    let mut ben = r.s.connect("/?userid=ben").await;
    assert_eq!(content(&ben.frame().await), "hello team");
    let (status, _) =
        post(&r.s.http("/send?userid=amy"), "application/json", text_to("oF", "Amy here")).await;
    assert_eq!(status, 200);
    let copy = ben.frame().await;
    assert_eq!(content(&copy), "Amy here");
    assert_eq!(copy["data"]["direction"], "out");
    assert_eq!(copy["data"]["name"], "amy", "who answered");
    assert_eq!(ben.frame().await["data"]["msg"]["status"], "sent");
}

#[tokio::test]
async fn only_the_accounts_agents_reply_to_its_followers() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let (status, err) =
        post(&r.s.http("/send?userid=mallory"), "application/json", text_to("oF", "phish")).await;
    assert_eq!(status, 403, "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("not an agent"), "{err}");
    assert!(r.wechat.0.lock().sent.is_empty());
}

#[tokio::test]
async fn a_stale_callback_is_refused_as_a_replay() {
    let r = rig(false).await;
    let old = (time::OffsetDateTime::now_utc().unix_timestamp() - 3600).to_string();
    let (body, query) = seal(&text_from("oOld", "replayed", 5), r.keys(), &old, "n");
    let (status, answer) = r.post_callback(&body, &query).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("clock"), "{answer}");
    let (_, h) = r.s.get("/im_component/wx_official_account/history?userid=agent1").await;
    assert_eq!(h["data"]["messages"].as_array().unwrap().len(), 0);
}

/// The texts in `user`'s mailbox, oldest first.
async fn texts(s: &Server, user: &str) -> Vec<String> {
    let (status, h) = s.get(&format!("/im_component/wx_official_account/history?userid={user}")).await;
    assert_eq!(status, 200, "{h}");
    h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["msg"]["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn xml_naming_a_followers_msgid_does_not_suppress_the_real_callback() {
    let r = rig(false).await;
    let real = text_from("oFollower", "the real one", 6054768590064713999);
    // A gateway user, and an anonymous poster, post XML with the follower's envelope
    // (FromUserName, CreateTime, MsgId) to the agent first.
    let to_agent = real.replace(ORIGINAL, "agent1");
    let forged = to_agent.replace("the real one", "forged by mallory");
    let (status, ack) = post(&r.s.http("/send?userid=mallory"), "text/xml", forged).await;
    assert_eq!(status, 200, "{ack}");
    let anonymous = to_agent.replace("the real one", "forged anonymously");
    let (status, ack) = post(&r.s.http("/send"), "text/xml", anonymous).await;
    assert_eq!(status, 200, "{ack}");
    let (status, body) = r.callback(&real).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(texts(&r.s, "agent1").await, ["forged by mallory", "forged anonymously", "the real one"]);
    // WeChat's own retry is still one message.
    r.callback(&real).await;
    assert_eq!(texts(&r.s, "agent1").await.len(), 3);
}

#[tokio::test]
async fn a_plaintext_callback_url_cannot_be_replayed_with_another_body() {
    let r = rig(false).await;
    let genuine = text_from("oGenuine", "genuine", 1);
    let (body, query) = seal(&genuine, r.keys(), &now_ts(), "1357924680");
    let (status, answer) = r.post_callback(&body, &query).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    // The captured URL with another body, "from" another follower.
    let forged = text_from("oVictim", "forged", 2);
    let (status, answer) = r.post_callback(&forged, &query).await;
    assert_eq!(status, 400, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["result"]["code"], -1);
    assert!(v["result"]["message"].as_str().unwrap().contains("nonce"), "{answer}");
    // The same nonce with the same body is WeChat's retry: success, nothing new.
    let (status, answer) = r.post_callback(&body, &query).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    assert_eq!(texts(&r.s, "agent1").await, ["genuine"]);
    let (_, c) = r.s.get("/im_component/wx_official_account/contact?userid=agent1&contact_id=oVictim").await;
    assert_eq!(c["data"]["wechat"], Value::Null, "the forged sender was not recorded as a follower: {c}");
    // Another nonce is another callback.
    let (b2, q2) = seal(&text_from("oGenuine", "later", 3), r.keys(), &now_ts(), "2468013579");
    assert_eq!(r.post_callback(&b2, &q2).await.0, 200);
    assert_eq!(texts(&r.s, "agent1").await, ["genuine", "later"]);
}

const MEDIA_MAX: usize = 64 << 10;
/// What a misbehaving stand-in offers: far more than MEDIA_MAX and than any socket
/// buffers hold, so that what it could hand over shows whether the download read on.
const OFFERED: u64 = 256 << 20;
/// Generous room for what the kernel and the HTTP stacks buffer before the reader stops.
const BUFFERED: u64 = 32 << 20;

/// An image callback whose media/get misbehaves as `m`. The message reaches the agent at
/// once, as for any download error; its media path.
async fn image_with_bad_media(r: &Rig, m: Misbehave) -> String {
    r.wechat.0.lock().media_misbehave.insert("MEDIA-BAD".into(), m);
    let mut agent = r.s.connect("/?userid=agent1").await;
    let now = now_ts();
    let (status, _) = r
        .callback(&format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oPic</FromUserName><CreateTime>{now}</CreateTime>\
             <MsgType>image</MsgType><PicUrl>http://mmbiz.qpic.cn/x</PicUrl><MediaId>MEDIA-BAD</MediaId><MsgId>78</MsgId></xml>"
        ))
        .await;
    assert_eq!(status, 200);
    let f = agent.frame().await;
    assert_eq!(f["result"]["code"], 1002);
    f["data"]["msg"]["media_path"].as_str().unwrap().to_owned()
}

/// Ask for the media until it answers `want` with a reason containing `words`; the reason.
async fn media_answer(r: &Rig, path: &str, want: u16, words: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let resp = reqwest::get(r.s.http(&format!("{path}?userid=agent1"))).await.unwrap();
        let status = resp.status().as_u16();
        last = format!("{status} {}", resp.text().await.unwrap());
        if status == want && last.contains(words) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the media never answered {want} with {words:?}; last: {last}");
}

#[tokio::test]
async fn media_declared_over_media_max_is_not_read() {
    let r = rig_with(false, |c| c.wechat.media_max = MEDIA_MAX).await;
    let path = image_with_bad_media(&r, Misbehave::Declares(OFFERED)).await;
    // Failed for good at once: a file too large stays too large.
    media_answer(&r, &path, 502, "wechat.media_max").await;
    let served = r.wechat.0.lock().media_served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served < BUFFERED, "{served} bytes were taken from a body declared over the cap");
}

#[tokio::test]
async fn media_of_no_declared_length_is_cut_off_at_media_max() {
    let r = rig_with(false, |c| c.wechat.media_max = MEDIA_MAX).await;
    let path = image_with_bad_media(&r, Misbehave::Undeclared(OFFERED)).await;
    media_answer(&r, &path, 502, "wechat.media_max").await;
    let served = r.wechat.0.lock().media_served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served < BUFFERED, "{served} bytes were read past the cap of {MEDIA_MAX}");
}

#[tokio::test]
async fn a_stalled_media_download_is_cut_off() {
    let r = rig_with(false, |c| {
        c.wechat.media_max = MEDIA_MAX;
        c.wechat.api_timeout = Duration::from_secs(1);
    })
    .await;
    let stalls = Misbehave::Stalls { declared: MEDIA_MAX as u64, sent: 8 << 10 };
    let path = image_with_bad_media(&r, stalls).await;
    // The attempt is given up and said so; the download stays pending for its retries.
    media_answer(&r, &path, 503, "cut off").await;
    // Pending, with when to ask again.
    let resp = reqwest::get(r.s.http(&format!("{path}?userid=agent1"))).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    // The gateway is not held up meanwhile.
    let (status, body) = r.callback(&text_from("oPic", "still here", 79)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
}

#[tokio::test]
async fn a_callback_with_bad_fields_records_nothing() {
    let r = rig(false).await;
    let now = now_ts();
    let long_type = format!("a<b{}", "x".repeat(60 * 1024));
    for (from, time, msg_type, msg_id) in [
        ("oBad1", now.as_str(), long_type.as_str(), "1"),
        ("oBad2", "1000000000000000000", "text", "2"),
        ("oBad3", now.as_str(), "text", "123456789012345678901234567890"),
    ] {
        let xml = format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>{from}</FromUserName><CreateTime>{time}</CreateTime>\
             <MsgType><![CDATA[{msg_type}]]></MsgType><Content>x</Content><MsgId>{msg_id}</MsgId></xml>"
        );
        let (status, answer) = r.callback(&xml).await;
        assert_eq!(status, 400, "{from}: {}", &answer[..answer.len().min(300)]);
        let (_, c) =
            r.s.get(&format!("/im_component/wx_official_account/contact?userid=agent1&contact_id={from}"))
                .await;
        assert_eq!(c["data"]["wechat"], Value::Null, "{from} was recorded as a follower: {c}");
    }
    assert_eq!(texts(&r.s, "agent1").await.len(), 0);
}

#[tokio::test]
async fn legacy_token_mode_fetches_from_cgi_bin_token() {
    let r = rig_with(false, |c| c.wechat.token_mode = imgate::config::TokenMode::Legacy).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let (status, body) =
        post(&r.s.http("/send?userid=agent1"), "application/json", text_to("oF", "hello")).await;
    assert_eq!(status, 200, "{body}");
    let w = r.wechat.0.lock();
    assert_eq!((w.token_fetches, w.legacy_token_fetches, w.sent.len()), (1, 1, 1));
}

#[tokio::test]
async fn shutdown_waits_for_a_send_already_begun() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    r.wechat.0.lock().hold_sends = Some(gate.clone());
    let url = r.s.http("/send?userid=agent1");
    let send = tokio::spawn(async move { post(&url, "application/json", text_to("oF", "bye")).await });
    eventually("the send never reached WeChat", || async {
        (r.wechat.0.lock().held_sends > 0).then_some(())
    })
    .await;
    let wechat = r.wechat.clone();
    let stopping = tokio::spawn(r.s.stop());
    // Only a server that does not wait could be done by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stopping.is_finished(), "stopped with a send in flight");
    gate.add_permits(1);
    let (status, ack) = tokio::time::timeout(PATIENCE, send).await.expect("the send ends").unwrap();
    assert_eq!(status, 200, "{ack}");
    tokio::time::timeout(PATIENCE, stopping).await.expect("the server stops").unwrap().unwrap();
    assert_eq!(wechat.0.lock().sent.len(), 1);
}

/// A send request of `msg_type` with `msg` to `to`, as JSON.
fn reply(to: &str, msg_type: &str, msg: Value) -> String {
    serde_json::json!({"data": {"msg_type": msg_type, "contact_id": to, "msg": msg}}).to_string()
}

/// What agent1 has in its history with `contact`: each message's type.
async fn history_types(s: &Server, contact: &str) -> Vec<String> {
    let (_, h) =
        s.get(&format!("/im_component/wx_official_account/history?userid=agent1&contact_id={contact}")).await;
    h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["msg_type"].as_str().unwrap().to_owned())
        .collect()
}

/// Upload `bytes` as agent1; the media path.
async fn upload(r: &Rig, content_type: &str, bytes: &[u8]) -> String {
    let up = reqwest::Client::new()
        .post(r.s.http("/im_component/wx_official_account/media?userid=agent1"))
        .header("content-type", content_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let up: Value = up.json().await.unwrap();
    up["data"]["media_path"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn news_article_menu_and_mini_program_replies_go_as_wechat_documents_them() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    let thumb = upload(&r, "image/jpeg", b"\xff\xd8\xff a card picture").await;
    let news = serde_json::json!({"title": "Happy Day", "description": "Is Really A Happy Day",
        "url": "https://example.com/a", "picurl": "https://example.com/a.jpg"});
    let menu = serde_json::json!({"head_content": "您对本次服务是否满意呢?",
        "list": [{"id": "101", "content": "满意"}, {"id": "102", "content": "不满意"}], "tail_content": "欢迎再次光临"});
    let card = serde_json::json!({"title": "A card", "appid": "wxminiapp01", "pagepath": "pages/index?x=1", "thumb": thumb});
    for (t, m) in [
        ("news", news),
        ("mpnewsarticle", serde_json::json!({"article_id": "ARTICLE_ID_1"})),
        ("msgmenu", menu),
        ("miniprogrampage", card),
    ] {
        let (status, ack) =
            post(&r.s.http("/send?userid=agent1"), "application/json", reply("oF", t, m)).await;
        assert_eq!(status, 200, "{t}: {ack}");
    }
    let sent: Vec<Value> =
        r.wechat.0.lock().sent.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[0],
        serde_json::json!({"touser": "oF", "msgtype": "news", "news": {"articles": [{"title": "Happy Day",
            "description": "Is Really A Happy Day", "url": "https://example.com/a", "picurl": "https://example.com/a.jpg"}]}})
    );
    assert_eq!(
        sent[1],
        serde_json::json!({"touser": "oF", "msgtype": "mpnewsarticle", "mpnewsarticle": {"article_id": "ARTICLE_ID_1"}})
    );
    assert_eq!(
        sent[2],
        serde_json::json!({"touser": "oF", "msgtype": "msgmenu", "msgmenu": {"head_content": "您对本次服务是否满意呢?",
            "list": [{"id": "101", "content": "满意"}, {"id": "102", "content": "不满意"}], "tail_content": "欢迎再次光临"}})
    );
    let media_id = sent[3]["miniprogrampage"]["thumb_media_id"].as_str().unwrap().to_owned();
    assert_eq!(
        sent[3],
        serde_json::json!({"touser": "oF", "msgtype": "miniprogrampage", "miniprogrampage": {"title": "A card",
            "appid": "wxminiapp01", "pagepath": "pages/index?x=1", "thumb_media_id": media_id}})
    );
    assert_eq!(r.wechat.0.lock().media[&media_id].0.to_vec(), b"\xff\xd8\xff a card picture".to_vec());
    // Each is in the history as sent, with its status.
    assert_eq!(
        history_types(&r.s, "oF").await,
        [
            "text",
            "news",
            "status",
            "mpnewsarticle",
            "status",
            "msgmenu",
            "status",
            "miniprogrampage",
            "status"
        ]
    );
}

#[tokio::test]
async fn a_reply_with_bad_fields_is_refused_naming_the_field_and_nothing_is_kept() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    for (t, m, field) in [
        ("news", serde_json::json!({"url": "https://example.com"}), "data.msg.title"),
        ("news", serde_json::json!({"title": "t"}), "data.msg.url"),
        ("news", serde_json::json!({"title": "t", "url": "https://e.com", "picurl": 3}), "data.msg.picurl"),
        ("mpnewsarticle", serde_json::json!({"article_id": ""}), "data.msg.article_id"),
        ("msgmenu", serde_json::json!({"head_content": "h"}), "data.msg.list"),
        ("msgmenu", serde_json::json!({"list": []}), "data.msg.list"),
        ("msgmenu", serde_json::json!({"list": [{"id": "1"}]}), "data.msg.list[0].content"),
        (
            "msgmenu",
            serde_json::json!({"list": [{"id": "1", "content": "a"}, {"content": "b"}]}),
            "data.msg.list[1].id",
        ),
        (
            "miniprogrampage",
            serde_json::json!({"title": "t", "pagepath": "p", "thumb": "x"}),
            "data.msg.appid",
        ),
        (
            "miniprogrampage",
            serde_json::json!({"title": "t", "appid": "wx1", "pagepath": "p"}),
            "data.msg.thumb",
        ),
    ] {
        let (status, err) =
            post(&r.s.http("/send?userid=agent1"), "application/json", reply("oF", t, m)).await;
        assert_eq!(status, 400, "{t}: {err}");
        assert_eq!(err["result"]["code"], -1, "{err}");
        let words = err["result"]["message"].as_str().unwrap();
        assert!(words.contains(field), "{t}: {words} should name {field}");
    }
    // A thumb that is no upload of this gateway.
    let card = serde_json::json!({"title": "t", "appid": "wx1", "pagepath": "p",
        "thumb": "/im_component/wx_official_account/media/nope"});
    let (status, err) =
        post(&r.s.http("/send?userid=agent1"), "application/json", reply("oF", "miniprogrampage", card))
            .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(history_types(&r.s, "oF").await, ["text"]);
    assert!(r.wechat.0.lock().sent.is_empty());
}

#[tokio::test]
async fn wechat_refusals_of_the_new_types_are_explained() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    // WeChat takes one article: more is 45008.
    r.wechat.0.lock().send_errors.push_back((45008, "article size out of limit".into()));
    let news = serde_json::json!({"title": "t", "url": "https://example.com"});
    let (status, err) =
        post(&r.s.http("/send?userid=agent1"), "application/json", reply("oF", "news", news.clone())).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 45008);
    assert!(err["result"]["message"].as_str().unwrap().contains("one article"), "{err}");
    // An out-of-window reply of a new type: 45015, in words.
    r.wechat.0.lock().closed.push("oF".into());
    let (status, err) = post(
        &r.s.http("/send?userid=agent1"),
        "application/json",
        reply("oF", "msgmenu", serde_json::json!({"list": [{"id": "1", "content": "yes"}]})),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 45015);
    assert!(err["result"]["message"].as_str().unwrap().contains("48-hour"), "{err}");
}

#[tokio::test]
async fn a_followers_menu_choice_reaches_the_agent_as_an_answer_to_the_menu() {
    let r = rig(false).await;
    let mut agent = r.s.connect("/?userid=agent1").await;
    let now = now_ts();
    r.callback(&format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oF</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>text</MsgType><Content>满意</Content><MsgId>77</MsgId><bizmsgmenuid>101</bizmsgmenuid></xml>"
    ))
    .await;
    let f = agent.frame().await;
    assert_eq!(f["data"]["msg_type"], "text");
    assert_eq!(f["data"]["msg"], serde_json::json!({"content": "满意", "bizmsgmenuid": "101"}));
}

#[tokio::test]
async fn typing_is_sent_once_per_conversation_every_few_seconds_and_stored_nowhere() {
    let clock = imgate_wechat::Clock::default();
    let r = rig_with(false, |c| c.wechat.clock = clock.clone()).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    r.callback(&text_from("oG", "hi", 2)).await;
    let typing = |to: &str| post_typing(&r, to.to_owned());
    let (status, ack) = typing("oF").await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["data"]["seq"], 0, "nothing stored: {ack}");
    assert_eq!(ack["data"]["contact_id"], "oF");
    // Within the throttle: answered, not sent again. Another conversation is its own.
    assert_eq!(typing("oF").await.0, 200);
    assert_eq!(typing("oG").await.0, 200);
    let sent = |r: &Rig| r.wechat.0.lock().typing.clone();
    assert_eq!(
        sent(&r),
        [
            serde_json::json!({"touser": "oF", "command": "Typing"}),
            serde_json::json!({"touser": "oG", "command": "Typing"})
        ]
    );
    clock.advance(imgate::wechat::TYPING_EVERY_SECS);
    assert_eq!(typing("oF").await.0, 200);
    assert_eq!(sent(&r).len(), 3);
    assert_eq!(history_types(&r.s, "oF").await, ["text"]);
    assert!(r.wechat.0.lock().sent.is_empty(), "typing is not a message");
    // A closed window is WeChat's refusal, in words.
    r.wechat.0.lock().closed.push("oG".into());
    clock.advance(imgate::wechat::TYPING_EVERY_SECS);
    let (status, err) = typing("oG").await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 45015);
    // Only the account's agents.
    let (status, _) = post(
        &r.s.http("/send?userid=mallory"),
        "application/json",
        reply("oF", "typing", serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 403);
}

async fn post_typing(r: &Rig, to: String) -> (u16, Value) {
    post(&r.s.http("/send?userid=agent1"), "application/json", reply(&to, "typing", serde_json::json!({})))
        .await
}

#[tokio::test]
async fn an_agents_kf_account_signs_its_replies() {
    let (wechat, base) = common::wechat::standin().await;
    let s = Server::start_with(|c| {
        common::wechat::aim(c, &base, &["amy", "ben"]);
        c.wechat.accounts[0].kf_accounts = [("amy".to_owned(), "kf2001@gh_x".to_owned())].into();
    })
    .await;
    wechat.0.lock().kf_accounts.insert("kf2001@gh_x".into());
    let r = Rig { s, wechat, cipher: None };
    r.callback(&text_from("oF", "hi", 1)).await;
    for who in ["amy", "ben"] {
        let (status, ack) =
            post(&r.s.http(&format!("/send?userid={who}")), "application/json", text_to("oF", who)).await;
        assert_eq!(status, 200, "{ack}");
    }
    let news = serde_json::json!({"title": "t", "url": "https://example.com"});
    let (status, ack) =
        post(&r.s.http("/send?userid=amy"), "application/json", reply("oF", "news", news)).await;
    assert_eq!(status, 200, "{ack}");
    let sent: Vec<Value> =
        r.wechat.0.lock().sent.iter().map(|b| serde_json::from_slice(b).unwrap()).collect();
    let signed: Vec<&Value> = sent.iter().map(|v| &v["customservice"]).collect();
    assert_eq!(
        signed,
        [
            &serde_json::json!({"kf_account": "kf2001@gh_x"}),
            &Value::Null,
            &serde_json::json!({"kf_account": "kf2001@gh_x"})
        ]
    );
    // A kf account WeChat does not know: its refusal, in words.
    r.wechat.0.lock().kf_accounts.clear();
    let (status, err) = post(&r.s.http("/send?userid=amy"), "application/json", text_to("oF", "again")).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 65401);
    assert!(err["result"]["message"].as_str().unwrap().contains("kf_accounts"), "{err}");
}

#[test]
fn kf_accounts_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[[wechat.accounts]]\noriginal_id = \"{ORIGINAL}\"\nappid = \"{APPID}\"\ntoken = \"t\"\n\
                 agents = [\"agent1\", \"agent2\"]\n{extra}"
            ),
        )
        .unwrap();
        imgate::config::Config::load(Some(&file), &Default::default())
    };
    let c = write("").unwrap();
    assert!(c.wechat.accounts[0].kf_accounts.is_empty());
    let c = write("kf_accounts = { agent1 = \"kf2001@gh_x\" }\n").unwrap();
    assert_eq!(c.wechat.accounts[0].kf_accounts["agent1"], "kf2001@gh_x");
    for bad in [
        "kf_accounts = { mallory = \"kf2001@gh_x\" }\n",
        "kf_accounts = { agent1 = \"kf2001\" }\n",
        "kf_accounts = { agent1 = \"@gh_x\" }\n",
        "kf_accounts = { agent1 = \"kf 1@gh_x\" }\n",
    ] {
        let err = write(bad).unwrap_err().to_string();
        assert!(err.contains("kf_accounts"), "{bad}: {err}");
    }
    // And the binary says so with 64.
    write("kf_accounts = { agent1 = \"nope\" }\n").unwrap_err();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn used_up_replies_refuse_the_new_types_in_words() {
    let r = rig(false).await;
    r.callback(&text_from("oF", "hi", 1)).await;
    r.wechat.0.lock().replies_left.insert("oF".into(), 1);
    let article = serde_json::json!({"article_id": "A1"});
    let (status, ack) = post(
        &r.s.http("/send?userid=agent1"),
        "application/json",
        reply("oF", "mpnewsarticle", article.clone()),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let (status, err) =
        post(&r.s.http("/send?userid=agent1"), "application/json", reply("oF", "mpnewsarticle", article))
            .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 45047);
    assert!(err["result"]["message"].as_str().unwrap().contains("wait for them to write again"), "{err}");
    assert_eq!(r.wechat.0.lock().sent.len(), 1);
}

//! WeChat's rules that an agent's send would otherwise run into, against the stand-in:
//! temporary media ids expire, uploads WeChat refuses, optional video fields, the
//! customer-service windows, the encryption mode of each callback, event noise.

mod common;

use common::*;
use imgate::wechat::standin::StandIn;
use imgate_wechat::callback::{Keys, seal};
use imgate_wechat::{Cipher, Clock};
use serde_json::{Value, json};

use common::wechat::{AES_KEY, APPID, ORIGINAL, TOKEN};

const P: &str = "/im_component/wx_official_account";

struct Rig {
    s: Server,
    wechat: StandIn,
    /// The server's WeChat clock: the tests move it days ahead.
    clock: Clock,
    /// How callbacks are sealed (the account's key, or none).
    cipher: Option<Cipher>,
}

async fn rig_with(tune: impl FnOnce(&mut imgate::config::Config)) -> Rig {
    let (wechat, base) = common::wechat::standin().await;
    let clock = Clock::default();
    let c2 = clock.clone();
    let s = Server::start_with(|c| {
        common::wechat::aim(c, &base, &["agent1"]);
        c.wechat.clock = c2;
        tune(c);
    })
    .await;
    Rig { s, wechat, clock, cipher: None }
}

async fn rig() -> Rig {
    rig_with(|_| {}).await
}

impl Rig {
    /// Post `xml` as WeChat would, stamped with the server's clock; the status and body.
    async fn callback(&self, xml: &str) -> (u16, String) {
        common::wechat::post_sealed(&self.s.http(""), xml, self.cipher.as_ref(), self.clock.now()).await
    }

    async fn post_callback(&self, body: &str, query: &[(String, String)]) -> (u16, String) {
        common::wechat::post_callback(&self.s.http(""), body, query).await
    }

    fn text_from(&self, openid: &str, content: &str, msg_id: u64) -> String {
        format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>{openid}</FromUserName>\
             <CreateTime>{}</CreateTime><MsgType>text</MsgType><Content><![CDATA[{content}]]></Content>\
             <MsgId>{msg_id}</MsgId></xml>",
            self.clock.now()
        )
    }

    fn event_from(&self, openid: &str, event: &str, extra: &str) -> String {
        format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>{openid}</FromUserName>\
             <CreateTime>{}</CreateTime><MsgType>event</MsgType><Event>{event}</Event>{extra}</xml>",
            self.clock.now()
        )
    }

    async fn upload(&self, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.upload_to(&format!("{P}/media?userid=agent1"), content_type, bytes).await
    }

    async fn upload_to(&self, path: &str, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.s.http(path))
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn send(&self, data: Value) -> (u16, Value) {
        post(&self.s.http("/send?userid=agent1"), "application/json", json!({ "data": data }).to_string())
            .await
    }

    /// What the stand-in accepted through custom/send, as JSON.
    fn sent(&self) -> Vec<Value> {
        self.wechat.0.lock().sent.iter().map(|b| serde_json::from_slice(b).unwrap()).collect()
    }

    async fn window(&self, openid: &str) -> Value {
        let (status, c) = self.s.get(&format!("{P}/contact?userid=agent1&contact_id={openid}")).await;
        assert_eq!(status, 200, "{c}");
        c["data"]["wechat"].clone()
    }

    /// The frames in agent1's mailbox from `openid`, as (msg_type, event or content).
    async fn mailbox(&self, openid: &str) -> Vec<(String, String)> {
        let (status, h) = self.s.get(&format!("{P}/history?userid=agent1&contact_id={openid}")).await;
        assert_eq!(status, 200, "{h}");
        h["data"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["data"]["direction"] != "out")
            .map(|m| {
                let d = &m["data"];
                let what = d["msg"]["event"].as_str().or(d["msg"]["content"].as_str()).unwrap_or_default();
                (d["msg_type"].as_str().unwrap().to_owned(), what.to_owned())
            })
            .collect()
    }
}

fn png(len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.resize(len, 1);
    v
}

fn mp4(len: usize) -> Vec<u8> {
    let mut v = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    v.resize(len, 0);
    v
}

/// `seconds` of AMR-NB (12.2 kbit/s: 50 frames of 32 bytes a second).
fn amr(seconds: usize) -> Vec<u8> {
    let mut v = b"#!AMR\n".to_vec();
    for _ in 0..seconds * 50 {
        v.push(0x3C);
        v.extend([0u8; 31]);
    }
    v
}

fn media_files(s: &Server) -> usize {
    std::fs::read_dir(s.dir.path().join("media")).map(|d| d.count()).unwrap_or(0)
}

// ---- 2. Uploads are checked against WeChat's temporary media limits ----

#[tokio::test]
async fn an_upload_wechat_would_refuse_is_refused_at_upload_in_words() {
    let r = rig_with(|c| c.wechat.media_max = 12 << 20).await;
    // (declared type, bytes, query) → status, and words the reason must hold.
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("image/webp", b"RIFF\0\0\0\0WEBPVP8 xxxxxxxx".to_vec(), "", 415, "PNG, JPEG or GIF"),
        ("image/png", b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(), "", 415, "none of them"),
        ("audio/amr", png(100), "", 415, "a PNG image"),
        ("audio/ogg", b"OggS\0\x02xxxxxxxxxxxxxxx".to_vec(), "", 415, "AMR or MP3"),
        ("image/png", png(10 << 20 | 1), "", 413, "10 MB"),
        (
            "audio/mpeg",
            {
                let mut v = b"ID3\x04".to_vec();
                v.resize((2 << 20) + 1, 0);
                v
            },
            "",
            413,
            "2 MB",
        ),
        ("audio/amr", amr(61), "", 413, "60 seconds"),
        ("video/mp4", mp4((10 << 20) + 1), "", 413, "10 MB"),
        ("image/png", png(100), "&type=thumb", 415, "JPEG"),
        (
            "image/jpeg",
            {
                let mut v = b"\xff\xd8\xff".to_vec();
                v.resize((64 << 10) + 1, 0);
                v
            },
            "&type=thumb",
            413,
            "64 KB",
        ),
    ];
    for (ct, bytes, query, want, words) in cases {
        let (status, answer) = r.upload_to(&format!("{P}/media?userid=agent1{query}"), ct, bytes).await;
        assert_eq!(status, want, "{ct}{query}: {answer}");
        assert_eq!(answer["result"]["code"], -1, "{answer}");
        let why = answer["result"]["message"].as_str().unwrap();
        assert!(why.contains(words), "{ct}{query}: {why}");
    }
    assert_eq!(media_files(&r.s), 0, "nothing kept");
    // What WeChat takes is kept, with the type its bytes are.
    for (ct, bytes, kept) in [
        ("image/png", png(10 << 20), "image/png"),
        ("audio/amr", amr(60), "audio/amr"),
        ("image/jpg", b"\xff\xd8\xff\xe0 jpeg".to_vec(), "image/jpeg"),
        ("video/mp4", mp4(1000), "video/mp4"),
    ] {
        let (status, up) = r.upload(ct, bytes).await;
        assert_eq!(status, 200, "{ct}: {up}");
        assert_eq!(up["data"]["content_type"], kept);
    }
    assert_eq!(media_files(&r.s), 4);
}

#[tokio::test]
async fn media_sent_as_another_kind_is_refused_before_anything_is_kept() {
    let r = rig().await;
    r.callback(&r.text_from("oK", "hi", 1)).await;
    let (_, up) = r.upload("image/png", png(100)).await;
    let path = up["data"]["media_path"].as_str().unwrap();
    let (status, err) =
        r.send(json!({"msg_type": "voice", "contact_id": "oK", "msg": {"media_path": path}})).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["result"]["message"].as_str().unwrap().contains("send it as msg_type \"image\""), "{err}");
    let uploads = r.wechat.0.lock().uploads;
    assert_eq!((uploads, r.sent().len()), (0, 0));
    assert_eq!(
        r.send(json!({"msg_type": "image", "contact_id": "oK", "msg": {"media_path": path}})).await.0,
        200
    );
}

/// The stand-in refuses what WeChat refuses, with WeChat's codes, for clients that upload
/// to it directly (`imgate wechat simulate`).
#[tokio::test]
async fn the_stand_in_refuses_uploads_as_wechat_does() {
    let (_wechat, base) = common::wechat::standin().await;
    let api = imgate_wechat::Api::new(&base, std::time::Duration::from_secs(10));
    let token = api.stable_token(APPID, common::wechat::SECRET, false).await.unwrap().value;
    let mut voice = b"ID3".to_vec();
    voice.resize((2 << 20) + 1, 0);
    for (kind, bytes, want) in [
        ("voice", voice, Some(40010)),
        ("image", mp4(100), Some(40005)),
        ("voice", amr(61), Some(45007)),
        ("image", png(100), None),
    ] {
        let got = api.media_upload(&token, kind, "f", "application/octet-stream", bytes.into()).await;
        assert_eq!(got.err().and_then(|e| e.errcode()), want, "{kind}");
    }
}

// ---- 3. Video replies carry only what the agent gave ----

#[tokio::test]
async fn a_video_reply_leaves_out_what_the_agent_did_not_give() {
    let r = rig().await;
    r.callback(&r.text_from("oV", "a video please", 1)).await;
    let (status, up) = r.upload("video/mp4", mp4(2000)).await;
    assert_eq!(status, 200, "{up}");
    let path = up["data"]["media_path"].as_str().unwrap();
    let (status, ack) =
        r.send(json!({"msg_type": "video", "contact_id": "oV", "msg": {"media_path": path}})).await;
    assert_eq!(status, 200, "{ack}");
    let (status, ack) = r
        .send(json!({"msg_type": "video", "contact_id": "oV", "msg": {"media_path": path, "title": "How to",
            "description": ""}}))
        .await;
    assert_eq!(status, 200, "{ack}");
    let sent = r.sent();
    let keys = |v: &Value| v["video"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&sent[0]), ["media_id"], "{}", sent[0]);
    assert_eq!(keys(&sent[1]), ["media_id", "title"], "{}", sent[1]);
    assert_eq!(sent[1]["video"]["title"], "How to");
}

// ---- 1. Temporary media ids expire after 3 days ----

const HOUR: i64 = 3600;

/// The rig with the stand-in on the server's clock: its media ids expire after 3 days of it.
async fn rig_one_clock() -> Rig {
    let r = rig().await;
    r.wechat.0.lock().clock = r.clock.clone();
    r
}

fn image_id(v: &Value) -> String {
    v["image"]["media_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_media_id_is_reused_for_70_hours_then_uploaded_again() {
    let r = rig_one_clock().await;
    r.callback(&r.text_from("oM", "the picture?", 1)).await;
    let (_, up) = r.upload("image/png", png(500)).await;
    let image =
        json!({"msg_type": "image", "contact_id": "oM", "msg": {"media_path": up["data"]["media_path"]}});
    assert_eq!(r.send(image.clone()).await.0, 200);
    assert_eq!(r.send(image.clone()).await.0, 200);
    assert_eq!(r.wechat.0.lock().uploads, 1, "reused");
    r.clock.advance(69 * HOUR);
    assert_eq!(r.send(image.clone()).await.0, 200);
    assert_eq!(r.wechat.0.lock().uploads, 1, "still reused at 69 h");
    r.clock.advance(2 * HOUR);
    let (status, ack) = r.send(image.clone()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(r.wechat.0.lock().uploads, 2, "uploaded again at 71 h, before WeChat forgets it at 72 h");
    let ids: Vec<String> = r.sent().iter().map(image_id).collect();
    assert_eq!(ids[..3], [ids[0].clone(), ids[0].clone(), ids[0].clone()]);
    assert_ne!(ids[3], ids[0]);
    // A follower's picture, forwarded 3 days later: WeChat's own id has expired, imgate
    // still has the bytes.
    r.wechat.0.lock().media.insert("MEDIA-IN".into(), (png(300).into(), "image/png".into()));
    r.wechat.0.lock().media_created.insert("MEDIA-IN".into(), r.clock.now());
    let mut agent = r.s.connect("/?userid=agent1").await;
    r.callback(&format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oM</FromUserName><CreateTime>{}</CreateTime>\
         <MsgType>image</MsgType><PicUrl>http://mmbiz.qpic.cn/x</PicUrl><MediaId>MEDIA-IN</MediaId><MsgId>2</MsgId></xml>",
        r.clock.now()
    ))
    .await;
    // The frames before it (the mailbox so far) come first.
    let image = loop {
        let f = agent.frame().await;
        if f["data"]["msg_type"] == "image" && f["data"]["direction"] != "out" {
            break f;
        }
    };
    let path = image["data"]["msg"]["media_path"].as_str().unwrap().to_owned();
    eventually("the follower's picture never downloaded", || async {
        let (_, st) = r.s.get(&format!("{path}/status?userid=agent1")).await;
        (st["data"]["status"] == "ready").then_some(())
    })
    .await;
    let forward = json!({"msg_type": "image", "contact_id": "oM", "msg": {"media_path": path}});
    assert_eq!(r.send(forward.clone()).await.0, 200);
    assert_eq!(image_id(r.sent().last().unwrap()), "MEDIA-IN", "WeChat's id, while it lives");
    r.clock.advance(73 * HOUR);
    r.callback(&r.text_from("oM", "still there?", 3)).await;
    let (status, ack) = r.send(forward).await;
    assert_eq!(status, 200, "{ack}");
    assert_ne!(image_id(r.sent().last().unwrap()), "MEDIA-IN");
}

#[tokio::test]
async fn on_40007_the_media_is_uploaded_again_once_and_the_send_retried() {
    let r = rig_one_clock().await;
    r.callback(&r.text_from("oM", "the picture?", 1)).await;
    let (_, up) = r.upload("image/png", png(500)).await;
    let image =
        json!({"msg_type": "image", "contact_id": "oM", "msg": {"media_path": up["data"]["media_path"]}});
    assert_eq!(r.send(image.clone()).await.0, 200);
    // WeChat forgot it early (a clock apart, or dropped).
    r.wechat.expire_media();
    let (status, ack) = r.send(image.clone()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(r.wechat.0.lock().uploads, 2);
    assert_eq!(r.sent().len(), 2);
    // 40007 again after the new upload: once only, then the agent is told.
    {
        let mut w = r.wechat.0.lock();
        w.send_errors.push_back((40007, "invalid media_id".into()));
        w.send_errors.push_back((40007, "invalid media_id".into()));
    }
    let (status, err) = r.send(image.clone()).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["data"]["errcode"], 40007);
    assert!(err["result"]["message"].as_str().unwrap().contains("expired"), "{err}");
    assert_eq!(r.wechat.0.lock().uploads, 3, "one upload more, no loop");
    // A media_id the agent gave is WeChat's own: nothing to upload again.
    let (status, err) =
        r.send(json!({"msg_type": "image", "contact_id": "oM", "msg": {"media_id": "MEDIA-GONE"}})).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(r.wechat.0.lock().uploads, 3);
}

// ---- 5. The encryption mode is each callback's ----

#[tokio::test]
async fn a_signed_plaintext_callback_is_taken_on_an_account_with_a_key() {
    let mut r = rig_with(|c| c.wechat.accounts[0].encoding_aes_key = AES_KEY.into()).await;
    // The console in plaintext mode, the key pasted anyway: signed, not encrypted.
    let (status, answer) = r.callback(&r.text_from("oP", "in the clear", 1)).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    // Safe mode on the same account.
    r.cipher = Some(Cipher::new(AES_KEY).unwrap());
    let (status, answer) = r.callback(&r.text_from("oP", "sealed", 2)).await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    assert_eq!(
        r.mailbox("oP").await,
        [("text".to_owned(), "in the clear".to_owned()), ("text".to_owned(), "sealed".to_owned())]
    );
    // Plaintext still needs its signature.
    r.cipher = None;
    let keys = Keys { token: "not-the-token", appid: APPID, cipher: None };
    let (body, query) = seal(&r.text_from("oP", "forged", 3), keys, &r.clock.now().to_string(), "42");
    assert_eq!(r.post_callback(&body, &query).await.0, 401);
}

#[tokio::test]
async fn an_encrypted_callback_still_needs_the_key() {
    let mut r = rig().await;
    r.cipher = Some(Cipher::new(AES_KEY).unwrap());
    let (status, answer) = r.callback(&r.text_from("oP", "sealed", 1)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("no encoding_aes_key"), "{answer}");
    assert_eq!(r.mailbox("oP").await, []);
}

// ---- 4. Windows ----

fn text(content: &str, to: &str) -> Value {
    json!({"msg_type": "text", "contact_id": to, "msg": {"content": content}})
}

#[tokio::test]
async fn unsubscribe_closes_the_window_and_marks_the_follower() {
    let r = rig().await;
    r.callback(&r.text_from("oU", "hello", 1)).await;
    let w = r.window("oU").await;
    assert_eq!((w["window"]["open"].clone(), w["subscribed"].clone()), (json!(true), json!(true)), "{w}");
    let (status, _) = r.callback(&r.event_from("oU", "unsubscribe", "")).await;
    assert_eq!(status, 200);
    let w = r.window("oU").await;
    assert_eq!(w["window"]["open"], false, "{w}");
    assert_eq!(w["window"]["remaining"], 0, "{w}");
    assert_eq!(w["subscribed"], false, "{w}");
    // Following again opens a short window.
    r.callback(&r.event_from("oU", "subscribe", "")).await;
    let w = r.window("oU").await;
    assert_eq!((w["window"]["open"].clone(), w["window"]["quota"].clone()), (json!(true), json!(3)), "{w}");
    assert_eq!(w["subscribed"], true, "{w}");
}

#[tokio::test]
async fn errcodes_43004_and_48002_close_the_window() {
    let r = rig().await;
    for (openid, code) in [("o43004", 43004), ("o48002", 48002)] {
        r.callback(&r.text_from(openid, "hi", code as u64)).await;
        // The follower unfollowed, or turned messages from the account off.
        r.wechat.0.lock().refusing.insert(openid.into(), code);
        let (status, err) = r.send(text("hello?", openid)).await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["data"]["errcode"], code);
        let words = if code == 43004 { "unfollowed" } else { "turned off messages" };
        assert!(err["result"]["message"].as_str().unwrap().contains(words), "{err}");
        let w = r.window(openid).await;
        assert_eq!(
            (w["window"]["open"].clone(), w["window"]["remaining"].clone()),
            (json!(false), json!(0)),
            "{code}: {w}"
        );
        assert_eq!(w["subscribed"], json!(code != 43004), "{code}: {w}");
    }
}

#[tokio::test]
async fn scan_events_of_the_menu_open_a_short_window_as_click_does() {
    let r = rig().await;
    for (openid, event) in [("oClick", "CLICK"), ("oPush", "scancode_push"), ("oWait", "scancode_waitmsg")] {
        let at = r.clock.now();
        let info = "<EventKey>rselfmenu_0_1</EventKey><ScanCodeInfo><ScanType>qrcode</ScanType>\
                    <ScanResult>1</ScanResult></ScanCodeInfo>";
        let (status, _) = r.callback(&r.event_from(openid, event, info)).await;
        assert_eq!(status, 200);
        let w = r.window(openid).await;
        assert_eq!(w["window"]["open"], true, "{event}: {w}");
        assert_eq!(
            (w["window"]["quota"].clone(), w["window"]["remaining"].clone()),
            (json!(3), json!(3)),
            "{event}: {w}"
        );
        let closes = w["window"]["closes_at"].as_i64().unwrap();
        assert!((at + 60..=at + 61).contains(&closes), "{event}: {w}");
    }
}

#[tokio::test]
async fn overlapping_windows_show_the_longer_one_and_each_quota() {
    let r = rig().await;
    let t0 = r.clock.now();
    r.callback(&r.text_from("oO", "hi", 1)).await;
    r.callback(&r.event_from("oO", "CLICK", "<EventKey>menu</EventKey>")).await;
    let each = |w: &Value| -> Vec<(String, bool, u64, u64)> {
        w["window"]["windows"]
            .as_array()
            .unwrap_or_else(|| panic!("no windows in {w}"))
            .iter()
            .map(|x| {
                let n = |k: &str| x[k].as_u64().unwrap();
                (
                    x["kind"].as_str().unwrap().to_owned(),
                    x["open"].as_bool().unwrap(),
                    n("remaining"),
                    n("quota"),
                )
            })
            .collect()
    };
    let w = r.window("oO").await;
    assert_eq!(w["window"]["closes_at"].as_i64().unwrap() - t0, 48 * 3600, "the longer leads: {w}");
    assert_eq!((w["window"]["remaining"].clone(), w["window"]["quota"].clone()), (json!(5), json!(5)));
    assert_eq!(each(&w), [("message".into(), true, 5, 5), ("event".into(), true, 3, 3)]);
    // A reply uses the window that closes first.
    assert_eq!(r.send(text("one", "oO")).await.0, 200);
    assert_eq!(each(&r.window("oO").await), [("message".into(), true, 5, 5), ("event".into(), true, 2, 3)]);
    // Past the click's minute, replies come from the 48 hours.
    r.clock.advance(120);
    assert_eq!(r.send(text("two", "oO")).await.0, 200);
    let w = r.window("oO").await;
    assert_eq!(each(&w), [("message".into(), true, 4, 5), ("event".into(), false, 0, 3)]);
    // The 48 hours used up: a click still allows 3, and leads.
    for i in 0..4 {
        assert_eq!(r.send(text(&format!("more {i}"), "oO")).await.0, 200);
    }
    assert_eq!(r.window("oO").await["window"]["open"], false);
    r.callback(&r.event_from("oO", "CLICK", "<EventKey>menu</EventKey>")).await;
    let w = r.window("oO").await;
    assert_eq!(
        (w["window"]["open"].clone(), w["window"]["remaining"].clone()),
        (json!(true), json!(3)),
        "{w}"
    );
    let left = w["window"]["closes_at"].as_i64().unwrap() - r.clock.now();
    assert!((59..=60).contains(&left), "{w}");
    assert_eq!(each(&w), [("message".into(), false, 0, 5), ("event".into(), true, 3, 3)]);
}

// ---- 6. Event noise ----

/// The value of `name{event="EVENT"}` on /metrics, 0 when absent.
async fn dropped(s: &Server, event: &str) -> u64 {
    let text = reqwest::get(s.http("/metrics")).await.unwrap().text().await.unwrap();
    let prefix = format!("imgate_wechat_events_dropped_total{{event=\"{event}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
}

fn ev(kind: &str, what: &str) -> (String, String) {
    (kind.to_owned(), what.to_owned())
}

#[tokio::test]
async fn by_default_only_the_events_an_agent_acts_on_are_delivered() {
    let r = rig().await;
    let before = (dropped(&r.s, "TEMPLATESENDJOBFINISH").await, dropped(&r.s, "MASSSENDJOBFINISH").await);
    let location =
        "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>";
    let job = "<MsgID>200163836</MsgID><Status>success</Status>";
    for (event, extra) in [
        ("subscribe", ""),
        ("TEMPLATESENDJOBFINISH", job),
        ("LOCATION", location),
        ("MASSSENDJOBFINISH", job),
        ("LOCATION", location),
        ("CLICK", "<EventKey>menu</EventKey>"),
        ("VIEW", "<EventKey>https://example.com</EventKey>"),
        ("scancode_waitmsg", "<EventKey>rselfmenu_0_0</EventKey>"),
        ("LOCATION", location),
    ] {
        let (status, answer) = r.callback(&r.event_from("oN", event, extra)).await;
        assert_eq!((status, answer.as_str()), (200, "success"), "{event}");
    }
    // An hour later, a LOCATION reaches the agents again.
    r.clock.advance(3600);
    r.callback(&r.event_from("oN", "LOCATION", location)).await;
    r.callback(&r.event_from("oN", "unsubscribe", "")).await;
    r.callback(&r.text_from("oN", "sentinel", 9)).await;
    assert_eq!(
        r.mailbox("oN").await,
        [
            ev("event", "subscribe"),
            ev("event", "LOCATION"),
            ev("event", "CLICK"),
            ev("event", "VIEW"),
            ev("event", "scancode_waitmsg"),
            ev("event", "LOCATION"),
            ev("event", "unsubscribe"),
            ev("text", "sentinel"),
        ]
    );
    assert_eq!(dropped(&r.s, "TEMPLATESENDJOBFINISH").await, before.0 + 1);
    assert_eq!(dropped(&r.s, "MASSSENDJOBFINISH").await, before.1 + 1);
    assert!(dropped(&r.s, "LOCATION").await >= 2);
    // A follower whose only word was a dropped event is no follower.
    r.callback(&r.event_from("oJob", "TEMPLATESENDJOBFINISH", job)).await;
    assert_eq!(r.window("oJob").await, Value::Null);
}

#[tokio::test]
async fn deliver_events_chooses_the_events_of_an_account() {
    let r = rig_with(|c| c.wechat.accounts[0].deliver_events = vec!["templatesendjobfinish".into()]).await;
    r.callback(&r.event_from("oT", "subscribe", "")).await;
    r.callback(&r.event_from("oT", "TEMPLATESENDJOBFINISH", "<MsgID>1</MsgID><Status>success</Status>"))
        .await;
    r.callback(&r.text_from("oT", "sentinel", 2)).await;
    assert_eq!(r.mailbox("oT").await, [ev("event", "TEMPLATESENDJOBFINISH"), ev("text", "sentinel")]);
    // The dropped subscribe still opened its window.
    assert_eq!(r.window("oT").await["window"]["windows"][1]["kind"], "event");
}

#[tokio::test]
async fn a_bad_deliver_events_entry_stops_the_server_with_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    std::fs::write(
        &file,
        format!(
            "[[wechat.accounts]]\noriginal_id = \"{ORIGINAL}\"\nappid = \"{APPID}\"\ntoken = \"{TOKEN}\"\n\
             deliver_events = [\"CLICK\", \"\"]\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deliver_events"));
}

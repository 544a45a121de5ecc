//! A follower's voice, as an agent's browser can play it: WeChat sends AMR-NB, which no
//! browser decodes; `GET P/media/{id}?format=ogg` answers it as Opus in Ogg (ffmpeg, on
//! the gateway's PATH), keeping the original. `tests/e2e/console.test.mjs` plays it in
//! Chromium.

mod common;

use std::time::Duration;

use common::wechat::{APPID, ORIGINAL, TOKEN};
use common::*;
use imgate_wechat::callback::{Keys, seal};

/// 3 s of real AMR-NB (tests/fixtures/make-voice-amr.py).
const VOICE: &[u8] = include_bytes!("../../../tests/fixtures/voice.amr");
const P: &str = "/im_component/wx_official_account";

async fn voice_callback(s: &Server, media_id: &str, msg_id: u64) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let xml = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oVoice</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>voice</MsgType><MediaId>{media_id}</MediaId><Format>amr</Format>\
         <Recognition>我的快递到哪了</Recognition><MsgId>{msg_id}</MsgId></xml>"
    );
    let keys = Keys { token: TOKEN, appid: APPID, cipher: None };
    let (body, q) = seal(&xml, keys, &now.to_string(), "4242");
    let r = reqwest::Client::new()
        .post(s.http(&format!("{P}/callback/{APPID}")))
        .query(&q)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// GET `url` until the download from WeChat is done (503 while pending), or fail.
async fn fetch(url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = reqwest::get(url).await.unwrap();
        if r.status() != 503 {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the media never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_followers_voice_is_served_as_ogg_and_the_original_kept() {
    let (wechat, base) = common::wechat::standin().await;
    wechat.0.lock().media.insert("MEDIA-VOICE".into(), (VOICE.to_vec().into(), "audio/amr".into()));
    let s = Server::start_with(|c| common::wechat::aim(c, &base, &["agent1"])).await;
    let mut agent = s.connect("/?userid=agent1").await;
    voice_callback(&s, "MEDIA-VOICE", 91).await;
    let f = agent.frame().await;
    assert_eq!(f["result"]["code"], 1003);
    assert_eq!(f["data"]["msg"]["recognition"], "我的快递到哪了", "WeChat's recognition travels with it");
    let path = f["data"]["msg"]["media_path"].as_str().unwrap().to_owned();
    // The original, as WeChat sent it.
    let original = fetch(&s.http(&format!("{path}?userid=agent1"))).await;
    assert_eq!(original.status(), 200);
    assert_eq!(original.headers()["content-type"], "audio/amr");
    assert_eq!(original.bytes().await.unwrap().to_vec(), VOICE);
    // As Ogg: an Ogg stream of Opus, once made kept beside the original.
    let ogg = fetch(&s.http(&format!("{path}?userid=agent1&format=ogg"))).await;
    assert_eq!(ogg.status(), 200, "{}", ogg.text().await.unwrap());
    assert_eq!(ogg.headers()["content-type"], "audio/ogg");
    let bytes = ogg.bytes().await.unwrap();
    assert_eq!(&bytes[..4], b"OggS");
    assert!(bytes.windows(8).any(|w| w == b"OpusHead"), "Opus in the Ogg stream");
    let id = path.rsplit('/').next().unwrap();
    let kept = s.dir.path().join("media").join(format!("{id}.ogg"));
    assert!(kept.exists(), "the transcode is kept: {}", kept.display());
    // A second ask is the same file (served, not transcoded again).
    let again = fetch(&s.http(&format!("{path}?userid=agent1&format=ogg"))).await;
    assert_eq!(again.bytes().await.unwrap(), bytes);
    // Only voice, only ogg; and still only for who may read it.
    assert_eq!(fetch(&s.http(&format!("{path}?userid=agent1&format=mp3"))).await.status(), 400);
    assert_eq!(fetch(&s.http(&format!("{path}?userid=stranger&format=ogg"))).await.status(), 403);
}

#[tokio::test]
async fn a_voice_that_does_not_decode_is_refused_in_words() {
    let (wechat, base) = common::wechat::standin().await;
    wechat
        .0
        .lock()
        .media
        .insert("MEDIA-BAD".into(), (b"#!AMR\nthis is not speech".to_vec().into(), "audio/amr".into()));
    let s = Server::start_with(|c| common::wechat::aim(c, &base, &["agent1"])).await;
    let mut agent = s.connect("/?userid=agent1").await;
    voice_callback(&s, "MEDIA-BAD", 92).await;
    let path = agent.frame().await["data"]["msg"]["media_path"].as_str().unwrap().to_owned();
    let r = fetch(&s.http(&format!("{path}?userid=agent1&format=ogg"))).await;
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["result"]["code"], -1);
    assert!(body["result"]["message"].as_str().unwrap().contains("could not be transcoded"), "{body}");
    let id = path.rsplit('/').next().unwrap();
    let media = s.dir.path().join("media");
    let left: Vec<_> = std::fs::read_dir(&media)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(id) && n != id)
        .collect();
    assert!(left.is_empty(), "no half-made file is left: {left:?}");
}

//! Media for those who may see it: uploads and a follower's media are served only to their
//! readers, files stream from disk (with ranges), uploads have a daily quota, media URLs
//! can be signed and expire, and the console is served so that it cannot be framed.

mod common;

use std::time::Duration;

use common::jwt::now;
use common::wechat::{APPID, ORIGINAL, TOKEN};
use common::*;
use hmac::{KeyInit, Mac};
use imgate::config::AuthMode;
use imgate::wechat::standin::StandIn;
use serde_json::Value;

const P: &str = "/im_component/wx_official_account";
const JWT_SECRET: &str = "a jwt secret of at least thirty-two bytes";

fn jwt(sub: &str) -> String {
    common::jwt::jwt(JWT_SECRET, sub, 600)
}

/// A gateway with one account (agents: agent1, agent2) aimed at a stand-in for WeChat.
async fn rig(token_mode: bool, tune: impl FnOnce(&mut imgate::config::Config)) -> (Server, StandIn) {
    let (wechat, base) = common::wechat::standin().await;
    let s = Server::start_with(|c| {
        common::wechat::aim(c, &base, &["agent1", "agent2"]);
        if token_mode {
            c.auth.mode = AuthMode::Token;
            c.auth.jwt_secret = JWT_SECRET.into();
        }
        tune(c);
    })
    .await;
    (s, wechat)
}

/// A request as `user` (a JWT in token mode, `?userid=` in open mode).
fn get_as(s: &Server, path: &str, user: Option<&str>, token_mode: bool) -> reqwest::RequestBuilder {
    let c = reqwest::Client::new();
    match (user, token_mode) {
        (Some(u), true) => c.get(s.http(path)).bearer_auth(jwt(u)),
        (Some(u), false) => c.get(s.http(path)).query(&[("userid", u)]),
        (None, _) => c.get(s.http(path)),
    }
}

/// The status of media `path` (`P/media/{id}/status`) as `user` sees it.
async fn media_status(s: &Server, path: &str, user: &str, token_mode: bool) -> Value {
    get_as(s, &format!("{path}/status"), Some(user), token_mode).send().await.unwrap().json().await.unwrap()
}

/// Upload `bytes` as a PNG, as `user`.
async fn upload_response(s: &Server, user: &str, token_mode: bool, bytes: Vec<u8>) -> reqwest::Response {
    let mut r =
        reqwest::Client::new().post(s.http(&format!("{P}/media"))).header("content-type", "image/png");
    r = if token_mode { r.bearer_auth(jwt(user)) } else { r.query(&[("userid", user)]) };
    r.body(bytes).send().await.unwrap()
}

async fn upload(s: &Server, user: &str, token_mode: bool, bytes: Vec<u8>) -> (u16, Value) {
    let r = upload_response(s, user, token_mode, bytes).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Send `body` (a send request) with `user`'s JWT.
async fn send_as(s: &Server, user: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(s.http("/send")).bearer_auth(jwt(user)).json(body).send().await.unwrap()
}

fn png(len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend((0..len.saturating_sub(8)).map(|i| (i % 251) as u8));
    v
}

#[tokio::test]
async fn an_upload_is_read_by_its_uploader_and_whom_it_was_sent_to_only() {
    let (s, _w) = rig(true, |_| {}).await;
    let bytes = png(1000);
    let (status, up) = upload(&s, "alice", true, bytes.clone()).await;
    assert_eq!(status, 200, "{up}");
    let path = up["data"]["media_path"].as_str().unwrap().to_owned();

    let r = get_as(&s, &path, Some("alice"), true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    for who in ["bob", "agent1"] {
        let r = get_as(&s, &path, Some(who), true).send().await.unwrap();
        assert_eq!(r.status(), 403, "{who} read alice's upload");
        let st = media_status(&s, &path, who, true).await;
        assert_eq!(st["data"]["status"], "unknown", "{who}: {st}");
    }
    let r = get_as(&s, &path, None, true).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Bob cannot make it his by sending it to himself, or to a friend.
    let msg = |to: &str| serde_json::json!({"data": {"msg_type": "image", "contact_id": to, "msg": {"media_path": path}}});
    assert_eq!(send_as(&s, "bob", &msg("carol")).await.status(), 403);
    assert_eq!(get_as(&s, &path, Some("carol"), true).send().await.unwrap().status(), 403);

    // Sent by alice to bob, it is bob's to read too.
    assert_eq!(send_as(&s, "alice", &msg("bob")).await.status(), 200);
    let r = get_as(&s, &path, Some("bob"), true).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    assert_eq!(get_as(&s, &path, Some("carol"), true).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn an_agents_upload_belongs_to_the_account() {
    let (s, _w) = rig(false, |_| {}).await;
    let (status, up) = upload(&s, "agent1", false, png(100)).await;
    assert_eq!(status, 200, "{up}");
    let path = up["data"]["media_path"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    for u in ["agent1", "agent2", "eve"] {
        got.push(get_as(&s, &path, Some(u), false).send().await.unwrap().status().as_u16());
    }
    assert_eq!(got, vec![200, 200, 403]);
    // Open mode still wants to know who asks.
    assert_eq!(get_as(&s, &path, None, false).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn a_followers_media_and_window_are_for_the_accounts_agents() {
    let (s, w) = rig(false, |_| {}).await;
    let pic = png(64);
    w.0.lock().media.insert("MEDIA-IMG".into(), (pic.clone().into(), "image/png".into()));
    let mut agent = s.connect("/?userid=agent1").await;
    let path = image_from_follower(&s, &mut agent).await;

    eventually("the follower's image was never downloaded", || async {
        (media_status(&s, &path, "agent2", false).await["data"]["status"] == "ready").then_some(())
    })
    .await;
    let r = get_as(&s, &path, Some("agent2"), false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pic);
    assert_eq!(get_as(&s, &path, Some("eve"), false).send().await.unwrap().status(), 403);
    assert_eq!(media_status(&s, &path, "eve", false).await["data"]["status"], "unknown");

    let contact = format!("{P}/contact?contact_id=oPic");
    let (status, c) = s.get(&format!("{contact}&userid=agent2")).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["data"]["wechat"]["window"]["open"], true);
    let (status, c) = s.get(&format!("{contact}&userid=eve")).await;
    assert_eq!(status, 403, "{c}");
    assert!(c["data"].get("wechat").is_none(), "{c}");
}

fn sign_callback(timestamp: &str, nonce: &str) -> String {
    imgate_wechat::sign(&[TOKEN, timestamp, nonce])
}

/// Follower oPic sends an image (WeChat's media MEDIA-IMG) through the callback; the
/// `media_path` the agent's socket is given for it.
async fn image_from_follower(s: &Server, agent: &mut Client) -> String {
    let xml = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oPic</FromUserName><CreateTime>{}</CreateTime>\
         <MsgType>image</MsgType><PicUrl>http://mmbiz.qpic.cn/x</PicUrl><MediaId>MEDIA-IMG</MediaId><MsgId>77</MsgId></xml>",
        now()
    );
    let ts = now().to_string();
    let r = reqwest::Client::new()
        .post(s.http(&format!("{P}/callback/{APPID}")))
        .query(&[("signature", sign_callback(&ts, "2")), ("timestamp", ts.clone()), ("nonce", "2".into())])
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let f = agent.frame().await;
    f["data"]["msg"]["media_path"].as_str().unwrap().to_owned()
}

/// A downloaded file the media directory refuses is this server's failure, and its status
/// says so, rather than blaming WeChat's answer.
#[tokio::test]
async fn a_download_the_disk_refuses_is_not_blamed_on_wechat() {
    let (s, w) = rig(false, |_| {}).await;
    w.0.lock().media.insert("MEDIA-IMG".into(), (png(64).into(), "image/png".into()));
    // Once the server has started (and made its media directory), the directory becomes
    // a file: every write under it fails, even as root.
    s.ready().await;
    let media = s.dir.path().join("media");
    std::fs::remove_dir_all(&media).unwrap();
    std::fs::write(&media, b"not a directory").unwrap();
    let mut agent = s.connect("/?userid=agent1").await;
    let path = image_from_follower(&s, &mut agent).await;
    let error = eventually("the failed download is never reported", || async {
        let st = media_status(&s, &path, "agent1", false).await;
        st["data"]["error"].as_str().filter(|e| !e.is_empty()).map(str::to_owned)
    })
    .await;
    assert!(error.starts_with("cannot save media: "), "{error}");
    assert!(!error.contains("WeChat"), "{error}");
}

#[tokio::test]
async fn media_is_streamed_with_its_length_and_ranges() {
    let (s, _w) = rig(false, |_| {}).await;
    let bytes = png(3 << 20);
    let (status, up) = upload(&s, "agent1", false, bytes.clone()).await;
    assert_eq!(status, 200, "{up}");
    let path = up["data"]["media_path"].as_str().unwrap().to_owned();

    let r = get_as(&s, &path, Some("agent1"), false).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], bytes.len().to_string());
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().len(), bytes.len());

    let ranged = |range: &'static str| get_as(&s, &path, Some("agent1"), false).header("range", range);
    let r = ranged("bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{}", bytes.len()));
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes[1000..2000].to_vec());
    let r = ranged("bytes=-10").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes[bytes.len() - 10..].to_vec());
    let r = ranged("bytes=3145720-").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes[3145720..].to_vec());
    let r = ranged("bytes=99999999-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], format!("bytes */{}", bytes.len()));
}

fn media_files(s: &Server) -> usize {
    std::fs::read_dir(s.dir.path().join("media")).unwrap().filter(|e| e.is_ok()).count()
}

#[tokio::test]
async fn the_upload_quota_refuses_with_a_reason_and_keeps_nothing() {
    let (s, _w) = rig(false, |c| c.wechat.upload_quota_bytes = 1500).await;
    let (status, up) = upload(&s, "agent1", false, png(1000)).await;
    assert_eq!(status, 200, "{up}");
    assert_eq!(media_files(&s), 1);
    let (status, refused) = upload(&s, "agent1", false, png(1000)).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["result"]["code"], -1);
    let reason = refused["result"]["message"].as_str().unwrap();
    assert!(reason.contains("wechat.upload_quota_bytes"), "{reason}");
    assert!(reason.contains("1000 of 1500"), "{reason}");
    let r = upload_response(&s, "agent1", false, png(1000)).await;
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "until the next UTC day: {wait}");
    assert_eq!(media_files(&s), 1, "nothing kept");
    // Another user has a quota of their own; what fits still fits.
    assert_eq!(upload(&s, "agent2", false, png(1000)).await.0, 200);
    assert_eq!(upload(&s, "agent1", false, png(500)).await.0, 200);
    assert_eq!(media_files(&s), 3);
}

#[tokio::test]
async fn an_upload_over_media_max_is_refused_with_413_and_nothing_kept() {
    let (s, _w) = rig(false, |c| c.wechat.media_max = 4096).await;
    assert_eq!(upload(&s, "agent1", false, png(4096)).await.0, 200, "at the limit");
    assert_eq!(upload_response(&s, "agent1", false, png(4097)).await.status(), 413);
    assert_eq!(media_files(&s), 1, "nothing kept");
}

/// The server's media URL signature, computed independently.
fn signature(id: &str, exp: i64) -> String {
    let mut k = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    k.update(b"imgate media url");
    let key = k.finalize().into_bytes();
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    m.update(format!("{id}:{exp}").as_bytes());
    m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_signed_media_url_works_until_it_expires() {
    let (s, _w) = rig(true, |_| {}).await;
    let bytes = png(300);
    let (_, up) = upload(&s, "alice", true, bytes.clone()).await;
    let id = up["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("{P}/media/{id}");
    let st = media_status(&s, &path, "alice", true).await;
    let url = st["data"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{path}?exp=")), "{url}");
    assert!(!url.contains("token"), "{url}");
    let base = s.http("");
    let anon = |u: String| {
        let url = format!("{base}{u}");
        async move { reqwest::get(url).await.unwrap() }
    };
    let r = anon(url.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);

    let exp = now() + 60;
    assert_eq!(anon(format!("{path}?exp={exp}&sig={}", signature(&id, exp))).await.status(), 200);
    let past = now() - 1;
    let r = anon(format!("{path}?exp={past}&sig={}", signature(&id, past))).await;
    assert_eq!(r.status(), 403);
    let reason: Value = r.json().await.unwrap();
    assert!(reason["result"]["message"].as_str().unwrap().contains("expired"), "{reason}");
    // Tampered: another expiry, another id, a changed signature.
    assert_eq!(anon(format!("{path}?exp={}&sig={}", exp + 1, signature(&id, exp))).await.status(), 403);
    let other = format!("{P}/media/{}", "0".repeat(32));
    assert_eq!(anon(format!("{other}?exp={exp}&sig={}", signature(&id, exp))).await.status(), 403);
    let mut bad = signature(&id, exp);
    bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
    assert_eq!(anon(format!("{path}?exp={exp}&sig={bad}")).await.status(), 403);
}

#[tokio::test]
async fn the_console_carries_a_csp_and_cannot_be_framed() {
    let s = Server::start().await;
    for path in ["/", "/console/app.js", "/console/client.js", "/console/style.css"] {
        let r = reqwest::get(s.http(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for want in ["script-src 'self'", "frame-ancestors 'none'", "object-src 'none'"] {
            assert!(csp.split(';').any(|d| d.trim() == want), "{path}: {csp} lacks {want}");
        }
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
}

/// With Redis, what one node recorded (owners, readers, quota use) holds on every node,
/// and a URL one node signed loads from another.
#[tokio::test]
async fn nodes_on_one_redis_share_readers_quota_and_signatures() {
    let redis = Redis::start();
    let media = tempfile::tempdir().unwrap();
    let node = || {
        let (url, media) = (redis.url(), media.path().to_owned());
        rig(true, move |c| {
            c.store.engine = imgate::config::Engine::Redis;
            c.store.redis_url = url;
            c.wechat.media_dir = media;
            c.wechat.upload_quota_bytes = 1500;
        })
    };
    let ((a, _wa), (b, _wb)) = (node().await, node().await);
    a.ready().await;
    b.ready().await;
    let (status, up) = upload(&a, "alice", true, png(1000)).await;
    assert_eq!(status, 200, "{up}");
    let path = up["data"]["media_path"].as_str().unwrap().to_owned();
    assert_eq!(get_as(&b, &path, Some("alice"), true).send().await.unwrap().status(), 200);
    assert_eq!(get_as(&b, &path, Some("bob"), true).send().await.unwrap().status(), 403);
    let body =
        serde_json::json!({"data": {"msg_type": "image", "contact_id": "bob", "msg": {"media_path": path}}});
    assert_eq!(send_as(&b, "alice", &body).await.status(), 200);
    assert_eq!(get_as(&a, &path, Some("bob"), true).send().await.unwrap().status(), 200);
    let st = media_status(&a, &path, "bob", true).await;
    let url = st["data"]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(b.http(url)).await.unwrap().status(), 200);
    let (status, refused) = upload(&b, "alice", true, png(1000)).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(upload(&b, "bob", true, png(1000)).await.0, 200);
}

/// Retention (`store.retention_max_age`) removes media files older than it from the
/// media directory, and only those.
#[tokio::test]
async fn retention_removes_media_files_older_than_the_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = imgate::config::WechatConfig::default();
    cfg.accounts.push(common::wechat::account(&["agent1"]));
    let day = Duration::from_secs(86_400);
    let w =
        imgate::wechat::Wechat::new(&cfg, dir.path(), None, day).unwrap().expect("an account is configured");
    let media = dir.path().join("media");
    let (old, new) = (media.join("old"), media.join("new"));
    for f in [&old, &new] {
        std::fs::write(f, b"bytes").unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - 2 * day;
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_days_ago).unwrap();
    w.trim(day).await;
    assert!(!old.exists(), "a file older than the max age is removed");
    assert!(new.exists(), "a newer one stays");
}

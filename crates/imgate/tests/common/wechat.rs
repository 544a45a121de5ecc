//! A stand-in for WeChat's API on 127.0.0.1:0, and an account aimed at it.

use imgate::config::{AccountConfig, Config};
use imgate::wechat::standin::StandIn;

pub const APPID: &str = "wx2c2769f8efd9abc2";
pub const SECRET: &str = "the-app-secret";
pub const TOKEN: &str = "spamtest";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const ORIGINAL: &str = "gh_10f6c3c3ac5a";

/// The stand-in, serving until the test ends, and its base URL (for `wechat.api_base`).
pub async fn standin() -> (StandIn, String) {
    super::tls();
    let wechat = StandIn::new(&[(APPID, SECRET)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wechat.clone().serve(listener));
    (wechat, base)
}

/// The test account (plaintext callbacks, company "acme") with these agents.
pub fn account(agents: &[&str]) -> AccountConfig {
    AccountConfig {
        original_id: ORIGINAL.into(),
        appid: APPID.into(),
        secret: SECRET.into(),
        token: TOKEN.into(),
        encoding_aes_key: String::new(),
        company_id: "acme".into(),
        agents: agents.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// Aim `c` at the stand-in at `base` with the test account.
pub fn aim(c: &mut Config, base: &str, agents: &[&str]) {
    c.wechat.api_base = base.to_owned();
    c.wechat.accounts.push(account(agents));
}

/// A follower's text through the test account's (plaintext) callback on the server at
/// `http` (its base URL), stamped `now` (the channel's clock, which a test may move).
pub async fn text_from(http: &str, now: i64, from: &str, text: &str, msg_id: u64) {
    let inner = format!("<MsgType>text</MsgType><Content>{text}</Content><MsgId>{msg_id}</MsgId>");
    callback(http, now, from, &inner, &msg_id.to_string()).await;
}

/// A follower's event (`subscribe`, `unsubscribe`, …), as [`text_from`] posts a text.
pub async fn event_from(http: &str, now: i64, from: &str, event: &str) {
    let inner = format!("<MsgType>event</MsgType><Event>{event}</Event>");
    callback(http, now, from, &inner, &format!("{event}{now}")).await;
}

/// The callback of a message from `from` whose XML inside `<xml>` after CreateTime is
/// `inner`, with `nonce`.
pub async fn callback(http: &str, now: i64, from: &str, inner: &str, nonce: &str) {
    use imgate_wechat::callback::{Keys, seal};
    let xml = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>{from}</FromUserName><CreateTime>{now}</CreateTime>{inner}</xml>"
    );
    let keys = Keys { token: TOKEN, appid: APPID, cipher: None };
    let (body, q) = seal(&xml, keys, &now.to_string(), nonce);
    let r = reqwest::Client::new()
        .post(format!("{http}/im_component/wx_official_account/callback/{APPID}"))
        .query(&q)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// Seal `xml` as WeChat would, with a fresh random nonce (as each callback WeChat sends,
/// a retry included), stamped `timestamp`, encrypted when `cipher` is given; post it to the
/// server at `http`: the status and the body.
pub async fn post_sealed(
    http: &str,
    xml: &str,
    cipher: Option<&imgate_wechat::Cipher>,
    timestamp: i64,
) -> (u16, String) {
    let keys = imgate_wechat::callback::Keys { token: TOKEN, appid: APPID, cipher };
    let nonce = rand::random::<u64>() % 10_000_000_000;
    let (body, query) = imgate_wechat::callback::seal(xml, keys, &timestamp.to_string(), &nonce.to_string());
    post_callback(http, &body, &query).await
}

/// Post a sealed callback (`body` and `query` as `seal` makes them) to the server at
/// `http`: the status and the body.
pub async fn post_callback(http: &str, body: &str, query: &[(String, String)]) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("{http}/im_component/wx_official_account/callback/{APPID}"))
        .query(query)
        .header("content-type", "text/xml")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

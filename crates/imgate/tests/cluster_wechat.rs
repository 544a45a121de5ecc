//! The WeChat channel across nodes on one Redis: a follower known to one node is known to
//! all, the access token is fetched once for all, media fetched by one is served by any.

mod common;

use std::time::Duration;

use common::*;
use imgate::config::{AccountConfig, Engine};
use imgate::wechat::standin::StandIn;
use imgate_wechat::callback::{Keys, seal};

const APPID: &str = "wx2c2769f8efd9abc2";
const ORIGINAL: &str = "gh_10f6c3c3ac5a";

#[tokio::test]
async fn two_nodes_share_followers_tokens_and_media() {
    let redis = Redis::start();
    let wechat = StandIn::new(&[(APPID, "secret")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wechat.clone().serve(listener));
    let media = tempfile::tempdir().unwrap();
    let node = || {
        let (api, url, media) = (api.clone(), redis.url(), media.path().to_owned());
        Server::start_with(move |c| {
            c.store.engine = Engine::Redis;
            c.store.redis_url = url;
            c.wechat.api_base = api;
            c.wechat.media_dir = media;
            c.wechat.accounts.push(AccountConfig {
                original_id: ORIGINAL.into(),
                appid: APPID.into(),
                secret: "secret".into(),
                token: "tok".into(),
                agents: vec!["agent".into()],
                ..Default::default()
            });
        })
    };
    let (a, b) = (node().await, node().await);
    for n in [&a, &b] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while n.get("/readyz").await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "node never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let keys = Keys { token: "tok", appid: APPID, cipher: None };
    let post_to = |server: &Server, body: String, q: Vec<(String, String)>| {
        let url = server.http(&format!("/im_component/wx_official_account/callback/{APPID}"));
        async move {
            let r = reqwest::Client::new().post(url).query(&q).body(body).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let sealed = |xml: &str| {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
        seal(xml, keys, &ts, &(rand::random::<u64>() % 10_000_000_000).to_string())
    };
    let callback = |server: &Server, xml: String| {
        let (body, q) = sealed(&xml);
        let sent = post_to(server, body, q);
        async move { assert_eq!(sent.await.0, 200) }
    };
    // The follower writes through node A, with a picture.
    wechat.0.lock().media.insert("MID".into(), (b"GIF89a...".to_vec().into(), "image/gif".into()));
    let mut agent_on_b = b.connect("/?userid=agent").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    callback(&a, format!("<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>")).await;
    callback(&a, format!("<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime><MsgType>image</MsgType><PicUrl>x</PicUrl><MediaId>MID</MediaId><MsgId>2</MsgId></xml>")).await;
    assert_eq!(content(&agent_on_b.frame().await), "hi");
    let img = agent_on_b.frame().await;
    // A callback's URL taken through node A and replayed through node B: with another
    // body it is refused (the nodes share the nonce), with the same one it is WeChat's
    // retry and adds nothing.
    let xml = |text: &str| {
        format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime><MsgType>text</MsgType><Content>{text}</Content><MsgId>3</MsgId></xml>"
        )
    };
    let (body, q) = sealed(&xml("once"));
    assert_eq!(post_to(&a, body.clone(), q.clone()).await, (200, "success".to_owned()));
    let forged = xml("forged").replace("oX", "oVictim").replace("<MsgId>3", "<MsgId>4");
    let (status, answer) = post_to(&b, forged, q.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("nonce"), "{answer}");
    assert_eq!(post_to(&b, body, q).await, (200, "success".to_owned()));
    callback(&a, xml("sentinel").replace("<MsgId>3", "<MsgId>5")).await;
    assert_eq!(content(&agent_on_b.frame().await), "once");
    assert_eq!(content(&agent_on_b.frame().await), "sentinel", "nothing between: no forgery, no second copy");
    let path = img["data"]["msg"]["media_path"].as_str().unwrap().to_owned();
    // Node B serves the media node A downloaded.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = reqwest::get(b.http(&format!("{path}?userid=agent"))).await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.bytes().await.unwrap().to_vec(), b"GIF89a...".to_vec());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node B never served the media");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replies through both nodes go to WeChat: node B knows the follower node A met, and
    // the token is fetched once for both.
    for (n, text) in [(&b, "from b"), (&a, "from a"), (&b, "from b again")] {
        let (status, ack) =
            post(&n.http("/send?userid=agent"), "application/json", text_to("oX", text)).await;
        assert_eq!(status, 200, "{ack}");
    }
    assert_eq!(wechat.0.lock().sent.len(), 3);
    assert_eq!(wechat.0.lock().token_fetches, 1, "one token for every node");
    let (_, c) = a.get("/im_component/wx_official_account/contact?userid=agent&contact_id=oX").await;
    assert_eq!(c["data"]["wechat"]["window"]["remaining"], 2, "both nodes counted the replies: {c}");
}

/// A token WeChat stopped taking is refreshed once for every node, however many sends on
/// however many nodes find it refused at once.
#[tokio::test]
async fn a_refused_token_is_refreshed_once_for_all_nodes() {
    let redis = Redis::start();
    let wechat = StandIn::new(&[(APPID, "secret")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wechat.clone().serve(listener));
    let media = tempfile::tempdir().unwrap();
    let node = || {
        let (api, url, media) = (api.clone(), redis.url(), media.path().to_owned());
        Server::start_with(move |c| {
            c.store.engine = Engine::Redis;
            c.store.redis_url = url;
            c.wechat.api_base = api;
            c.wechat.media_dir = media;
            c.wechat.accounts.push(AccountConfig {
                original_id: ORIGINAL.into(),
                appid: APPID.into(),
                secret: "secret".into(),
                token: "tok".into(),
                agents: vec!["agent".into()],
                ..Default::default()
            });
        })
    };
    let nodes = [node().await, node().await];
    for n in &nodes {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while n.get("/readyz").await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "node never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let xml = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"
    );
    let keys = Keys { token: "tok", appid: APPID, cipher: None };
    let (body, q) = seal(&xml, keys, &now.to_string(), "1320562132");
    let url = nodes[0].http(&format!("/im_component/wx_official_account/callback/{APPID}"));
    let r = reqwest::Client::new().post(url).query(&q).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Both nodes hold the token.
    for n in &nodes {
        let (status, ack) =
            post(&n.http("/send?userid=agent"), "application/json", text_to("oX", "warm")).await;
        assert_eq!(status, 200, "{ack}");
    }
    let tokens = |w: &StandIn| {
        let w = w.0.lock();
        (w.token_fetches, w.token_requests)
    };
    assert_eq!(tokens(&wechat), (1, 1), "one fetch for both");
    wechat.expire_tokens();
    let sends = (0..8).map(|i| {
        let url = nodes[i % 2].http("/send?userid=agent");
        tokio::spawn(async move { post(&url, "application/json", text_to("oX", &format!("m{i}"))).await })
    });
    for s in sends.collect::<Vec<_>>() {
        let (status, ack) = tokio::time::timeout(PATIENCE, s).await.expect("the send ends").unwrap();
        assert_eq!(status, 200, "{ack}");
    }
    assert_eq!(wechat.0.lock().sent.len(), 10);
    assert_eq!(tokens(&wechat), (2, 2), "one refresh for both");
}

//! The WeChat channel across nodes on one Redis: a follower known to one node is known to
//! all, the access token is fetched once for all, media fetched by one is served by any.
//! Each test runs on one Redis and on a three-master Redis Cluster (`…_on_a_cluster`),
//! where the WeChat state's keys share one hash tag.

mod common;

use common::wechat::{APPID, ORIGINAL, TOKEN};
use common::*;
use imgate::config::Engine;
use imgate::wechat::standin::StandIn;
use imgate_wechat::callback::{Keys, seal};

/// What the nodes share: one Redis, or a Redis Cluster.
#[allow(dead_code)]
enum Backing {
    One(Redis),
    Cluster(RedisCluster),
}

/// Two nodes on one Redis or a cluster (and one media directory), aimed at one stand-in,
/// both ready.
struct Cluster {
    _redis: Backing,
    _media: tempfile::TempDir,
    wechat: StandIn,
    a: Server,
    b: Server,
}

async fn cluster(on_a_cluster: bool) -> Cluster {
    let redis =
        if on_a_cluster { Backing::Cluster(RedisCluster::start(3, 0)) } else { Backing::One(Redis::start()) };
    let (wechat, api) = common::wechat::standin().await;
    let media = tempfile::tempdir().unwrap();
    let node = || {
        let (api, media) = (api.clone(), media.path().to_owned());
        let (url, urls) = match &redis {
            Backing::One(r) => (Some(r.url()), Vec::new()),
            Backing::Cluster(c) => (None, c.urls()),
        };
        Server::start_with(move |c| {
            c.store.engine = Engine::Redis;
            match url {
                Some(url) => c.store.redis_url = url,
                None => {
                    c.store.redis_mode = imgate::config::RedisMode::Cluster;
                    c.store.redis_urls = urls;
                }
            }
            c.wechat.media_dir = media;
            common::wechat::aim(c, &api, &["agent"]);
        })
    };
    let (a, b) = (node().await, node().await);
    a.ready().await;
    b.ready().await;
    Cluster { _redis: redis, _media: media, wechat, a, b }
}

#[tokio::test]
async fn two_nodes_share_followers_tokens_and_media() {
    two_nodes_share_followers_tokens_and_media_on(false).await
}

#[tokio::test]
async fn two_nodes_share_followers_tokens_and_media_on_a_cluster() {
    two_nodes_share_followers_tokens_and_media_on(true).await
}

async fn two_nodes_share_followers_tokens_and_media_on(on_a_cluster: bool) {
    // Bound, not `..`: Redis and the media directory live as long as the test.
    let Cluster { wechat, a, b, _redis, _media } = cluster(on_a_cluster).await;
    let keys = Keys { token: TOKEN, appid: APPID, cipher: None };
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
    let url = b.http(&format!("{path}?userid=agent"));
    let bytes = eventually("node B never served the media", || async {
        let r = reqwest::get(&url).await.unwrap();
        if r.status() == 200 { Some(r.bytes().await.unwrap().to_vec()) } else { None }
    })
    .await;
    assert_eq!(bytes, b"GIF89a...".to_vec());
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
    // A click through node B opens a window beside the message window; an unsubscribe
    // closes both, and node A shows it.
    let ev = |e: &str| {
        format!(
            "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime><MsgType>event</MsgType><Event>{e}</Event></xml>"
        )
    };
    callback(&b, ev("CLICK")).await;
    let (_, c) = a.get("/im_component/wx_official_account/contact?userid=agent&contact_id=oX").await;
    let kinds: Vec<&str> = c["data"]["wechat"]["window"]["windows"]
        .as_array()
        .unwrap_or_else(|| panic!("{c}"))
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["message", "event"], "{c}");
    callback(&b, ev("unsubscribe")).await;
    let (_, c) = a.get("/im_component/wx_official_account/contact?userid=agent&contact_id=oX").await;
    assert_eq!(c["data"]["wechat"]["window"]["open"], false, "{c}");
    assert_eq!(c["data"]["wechat"]["subscribed"], false, "{c}");
}

/// A token WeChat stopped taking is refreshed once for every node, however many sends on
/// however many nodes find it refused at once.
#[tokio::test]
async fn a_refused_token_is_refreshed_once_for_all_nodes() {
    a_refused_token_is_refreshed_once_for_all_nodes_on(false).await
}

#[tokio::test]
async fn a_refused_token_is_refreshed_once_for_all_nodes_on_a_cluster() {
    a_refused_token_is_refreshed_once_for_all_nodes_on(true).await
}

async fn a_refused_token_is_refreshed_once_for_all_nodes_on(on_a_cluster: bool) {
    // Bound, not `..`: Redis and the media directory live as long as the test.
    let Cluster { wechat, a, b, _redis, _media } = cluster(on_a_cluster).await;
    let nodes = [a, b];
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let xml = format!(
        "<xml><ToUserName>{ORIGINAL}</ToUserName><FromUserName>oX</FromUserName><CreateTime>{now}</CreateTime>\
         <MsgType>text</MsgType><Content>hi</Content><MsgId>1</MsgId></xml>"
    );
    let keys = Keys { token: TOKEN, appid: APPID, cipher: None };
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
    // One new token for both nodes. A node that cannot hear Redis in time (a loaded
    // machine) asks WeChat itself rather than not at all: stable_token then hands it the
    // same token, so a request more or less is allowed, a refresh per send is not.
    let (fetches, requests) = tokens(&wechat);
    assert_eq!(fetches, 2, "one refresh for both");
    assert!(requests <= 4, "{requests} token requests for 8 refused sends");
}

/// A template sent through node A; WeChat's TEMPLATESENDJOBFINISH reaches node B, which
/// finds the msgid A kept in Redis and tells the agents it was delivered.
#[tokio::test]
async fn a_templates_outcome_is_found_by_any_node() {
    a_templates_outcome_is_found_by_any_node_on(false).await
}

#[tokio::test]
async fn a_templates_outcome_is_found_by_any_node_on_a_cluster() {
    a_templates_outcome_is_found_by_any_node_on(true).await
}

async fn a_templates_outcome_is_found_by_any_node_on(on_a_cluster: bool) {
    let Cluster { wechat, a, b, _redis, _media } = cluster(on_a_cluster).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    common::wechat::text_from(&a.http(""), now, "oX", "hi", 1).await;
    let msg = serde_json::json!({"data": {"msg_type": "template", "contact_id": "oX", "msg": {
        "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY", "data": {"first": {"value": "x"}}}}});
    let (status, ack) = post(&a.http("/send?userid=agent"), "application/json", msg.to_string()).await;
    assert_eq!(status, 200, "{ack}");
    let msgid = *wechat.0.lock().template_msgids.keys().next().unwrap();
    wechat.0.lock().callback = Some(imgate::wechat::standin::CallbackTarget {
        url: b.http(&format!("/im_component/wx_official_account/callback/{APPID}")),
        token: TOKEN.into(),
        original_id: ORIGINAL.into(),
    });
    // After the copy and its `sent` status.
    let since = ack["data"]["seq"].as_u64().unwrap() + 1;
    let mut agent = b.connect(&format!("/?userid=agent&since={since}")).await;
    assert_eq!(wechat.finish_template(msgid, "success").await.unwrap(), "success");
    let f = agent.frame().await;
    assert_eq!(
        f["data"]["msg"],
        serde_json::json!({"ref": ack["data"]["id"], "status": "delivered", "msgid": msgid.to_string()})
    );
}

//! Forgetting a person (`DELETE P/contacts/{id}`, docs/operations.md "Erasure") against a
//! real server on each engine: a follower's messages leave every mailbox, their media
//! leaves the disk, their conversation leaves the team inbox and the WeChat channel
//! forgets them, while everyone else's stays exactly; open sockets are told (code 107);
//! a second call finds nothing; token mode needs an API key.

mod common;

use std::collections::BTreeSet;

use common::*;
use imgate::config::{Config, Engine};
use serde_json::Value;

const P: &str = "/im_component/wx_official_account";
const SECRET: &str = "a-test-secret-of-32-bytes-or-more";
const KEY: &str = "backend-key-1-of-32-characters-or-more";

/// A follower's message through WeChat's (plaintext) callback, now.
async fn callback(s: &Server, from: &str, inner: &str, msg_id: u64) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let inner = format!("{inner}<MsgId>{msg_id}</MsgId>");
    common::wechat::callback(&s.http(""), now, from, &inner, &msg_id.to_string()).await;
}

async fn text_from(s: &Server, from: &str, text: &str, msg_id: u64) {
    callback(s, from, &format!("<MsgType>text</MsgType><Content>{text}</Content>"), msg_id).await;
}

/// DELETE with these headers: the status and the body.
async fn delete(s: &Server, contact: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().delete(s.http(&format!("{P}/contacts/{contact}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// Every frame of `user`'s history, oldest first, as (code, contact_id, content or id).
async fn history(s: &Server, user: &str) -> Vec<(i64, String, String)> {
    let (status, h) = s.get(&format!("{P}/history?userid={user}&limit=200")).await;
    assert_eq!(status, 200, "{h}");
    h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let d = &f["data"];
            let what = d["msg"]["content"].as_str().or(d["msg"]["media_path"].as_str()).unwrap_or("");
            let what = if what.is_empty() { d["msg_type"].as_str().unwrap() } else { what };
            (
                f["result"]["code"].as_i64().unwrap(),
                d["contact_id"].as_str().unwrap().to_owned(),
                what.to_owned(),
            )
        })
        .collect()
}

/// The next frame with `code`, skipping others (presence, heartbeats), within PATIENCE.
async fn frame_with(c: &mut Client, code: i64) -> Value {
    loop {
        let f = c.frame().await;
        if f["result"]["code"] == code {
            return f;
        }
    }
}

struct Rig {
    s: Server,
    _redis: Option<Redis>,
    wechat: imgate::wechat::standin::StandIn,
}

async fn rig(engine: Engine, tune: impl FnOnce(&mut Config) + Send + 'static) -> Rig {
    let redis = (engine == Engine::Redis).then(Redis::start);
    let url = redis.as_ref().map(Redis::url);
    let (wechat, api) = common::wechat::standin().await;
    let s = Server::start_with(move |c| {
        if let Some(url) = url {
            c.store.engine = Engine::Redis;
            c.store.redis_url = url;
            // Several nodes share one media directory; this test has one node.
            c.wechat.media_dir = c.data_dir.join("media");
        }
        common::wechat::aim(c, &api, &["agent1", "agent2"]);
        tune(c);
    })
    .await;
    s.ready().await;
    Rig { s, _redis: redis, wechat }
}

/// The whole erasure on one engine.
async fn a_follower_is_forgotten_everywhere(engine: Engine) {
    let r = rig(engine, |_| {}).await;
    let s = &r.s;
    r.wechat.0.lock().media.insert("MID-F".into(), (b"GIF89a F's face".to_vec().into(), "image/gif".into()));
    let mut live = s.connect("/?userid=agent1&since=0").await;
    // F writes, with a picture; G writes; agent1 answers both; a gateway user writes too.
    text_from(s, "oF", "F says hi", 1).await;
    callback(s, "oF", "<MsgType>image</MsgType><PicUrl>x</PicUrl><MediaId>MID-F</MediaId>", 2).await;
    // F's position report: the channel remembers when F's last one was delivered. (Its
    // MsgId is the callback's nonce here: one no other callback of this test uses.)
    callback(
        s,
        "oF",
        "<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>31.2</Latitude><Longitude>121.5</Longitude><Precision>65</Precision>",
        9,
    )
    .await;
    text_from(s, "oG", "G says hi", 3).await;
    for (to, text) in [("oF", "hello F"), ("oG", "hello G")] {
        let (status, ack) = post(&s.http("/send?userid=agent1"), "application/json", text_to(to, text)).await;
        assert_eq!(status, 200, "{ack}");
    }
    // A template message to F (WeChat's msgid names F until its finish event).
    let tpl = serde_json::json!({"data": {"msg_type": "template", "contact_id": "oF", "msg": {
        "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY", "data": {"first": {"value": "shipped"}}}}});
    let (status, ack) = post(&s.http("/send?userid=agent1"), "application/json", tpl.to_string()).await;
    assert_eq!(status, 200, "{ack}");
    let (status, ack) =
        post(&s.http("/send?userid=u1"), "application/json", text_to("agent1", "from u1")).await;
    assert_eq!(status, 200, "{ack}");
    // F's picture, downloaded.
    let img = history(s, "agent1").await.into_iter().find(|(c, _, _)| *c == 1002).unwrap().2;
    let media_id = img.rsplit('/').next().unwrap().to_owned();
    let file = s.dir.path().join("media").join(&media_id);
    eventually("F's picture was never downloaded", || async { file.exists().then_some(()) }).await;
    let (_, conv) = s.get(&format!("{P}/conversations/oF?userid=agent1")).await;
    assert_eq!(conv["data"]["contact_id"], "oF", "{conv}");
    // F's profile (user/info), fetched when F first wrote.
    let unionid = eventually("F's profile was never fetched", || async {
        let (_, c) = s.get(&format!("{P}/contact?userid=agent1&contact_id=oF")).await;
        c["data"]["wechat"]["profile"]["unionid"].as_str().map(str::to_owned)
    })
    .await;
    let before = [history(s, "agent1").await, history(s, "agent2").await];
    assert!(before[1].iter().any(|(_, c, _)| c == "oF"), "{:?}", before[1]);

    let (status, body) = delete(s, "oF", &[]).await;
    assert_eq!(status, 200, "{body}");
    let d = &body["data"];
    // F's two messages and position report, agent1's reply and template and their status
    // frames, in both agents' mailboxes.
    assert_eq!(
        (d["contact_id"].as_str(), d["messages"].as_u64(), d["mailboxes"].as_u64()),
        (Some("oF"), Some(14), Some(2)),
        "{body}"
    );
    assert_eq!(
        (d["media"].as_u64(), d["conversations"].as_u64(), d["follower"].as_bool()),
        (Some(1), Some(1), Some(true))
    );

    // Every mailbox: exactly what it held without F, then one erased frame naming F.
    for (user, was) in ["agent1", "agent2"].iter().zip(before) {
        let mut want: Vec<_> = was.into_iter().filter(|(_, c, _)| c != "oF").collect();
        want.push((107, "oF".to_owned(), "erased".to_owned()));
        assert_eq!(history(s, user).await, want, "{user}");
    }
    assert_eq!(
        s.get(&format!("{P}/history?userid=agent1&contact_id=oF")).await.1["data"]["messages"],
        Value::Array(vec![])
    );
    if engine == Engine::Sqlite {
        // The files of the team inbox (which kept F's words for search) and of the WeChat
        // channel (F's media record) keep nothing of them in freed pages either.
        let file = |name: &str| {
            let mut bytes = std::fs::read(s.dir.path().join(name)).unwrap();
            bytes.extend(std::fs::read(s.dir.path().join(format!("{name}-wal"))).unwrap_or_default());
            bytes
        };
        let has = |bytes: &[u8], needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!has(&file("inbox.sqlite3"), "F says hi"), "inbox.sqlite3 keeps F's words");
        assert!(has(&file("inbox.sqlite3"), "G says hi"), "inbox.sqlite3 keeps G's conversation");
        assert!(!has(&file("wechat.sqlite3"), &media_id), "wechat.sqlite3 keeps F's media record");
        assert!(!has(&file("wechat.sqlite3"), &unionid), "wechat.sqlite3 keeps F's profile");
    }
    // The picture's file and record are gone.
    assert!(!file.exists(), "{} is still on disk", file.display());
    let (_, st) = s.get(&format!("{P}/media/{media_id}/status?userid=agent1")).await;
    assert_eq!(st["data"]["status"], "unknown", "{st}");
    // The team inbox has no row for F, G's stays.
    let (status, _) = s.get(&format!("{P}/conversations/oF?userid=agent1")).await;
    assert_eq!(status, 404);
    let (_, list) = s.get(&format!("{P}/conversations?userid=agent1&view=all")).await;
    // (Followers' rows: u1's message to agent1 is a gateway users' pair, listed too.)
    let rows: Vec<&str> = list["data"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "follower")
        .map(|c| c["contact_id"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["oG"], "{list}");
    // The channel no longer knows F as a follower.
    let (_, contact) = s.get(&format!("{P}/contact?userid=agent1&contact_id=oF")).await;
    assert_eq!(contact["data"]["wechat"], Value::Null, "{contact}");
    if let Some(redis) = &r._redis {
        // Nothing of F's profile is left in Redis either.
        let mut c =
            redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("imgate:wx:*").query_async(&mut c).await.unwrap();
        let mut left = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with("imgate:wx:f:") || k.starts_with("imgate:wx:m:")) {
            // Not every key is a hash (a set of pending media): those answer an error.
            let v: Vec<String> = redis::cmd("HGETALL").arg(k).query_async(&mut c).await.unwrap_or_default();
            if v.iter().any(|x| x.contains(&unionid)) {
                left.push(k.clone());
            }
        }
        assert_eq!(left, Vec::<String>::new(), "F's profile is still in Redis");
        // Nor any key that names F (the follower, the LOCATION throttle, a profile claim).
        let named: Vec<&String> =
            keys.iter().filter(|k| k.ends_with(":oF") || k.starts_with("imgate:wx:tpl:")).collect();
        assert_eq!(named, Vec::<&String>::new(), "{keys:?}");
    }
    // The open socket was told.
    let told = frame_with(&mut live, 107).await;
    assert_eq!(
        (told["data"]["contact_id"].as_str(), told["data"]["msg_type"].as_str()),
        (Some("oF"), Some("erased"))
    );
    // A reconnect from the start replays none of F's messages: everything up to a
    // sentinel, exactly.
    let mut again = s.connect("/?userid=agent2&since=0").await;
    let (status, _) =
        post(&s.http("/send?userid=u1"), "application/json", text_to("agent2", "sentinel")).await;
    assert_eq!(status, 200);
    let mut replayed = Vec::new();
    loop {
        let f = again.frame().await;
        if f["result"]["code"] == 106 {
            continue;
        }
        let text = f["data"]["msg"]["content"].as_str().unwrap_or("").to_owned();
        replayed.push((
            f["result"]["code"].as_i64().unwrap(),
            f["data"]["contact_id"].as_str().unwrap().to_owned(),
        ));
        if text == "sentinel" {
            break;
        }
    }
    let contacts: BTreeSet<_> = replayed.iter().filter(|(c, _)| *c != 107).map(|(_, c)| c.as_str()).collect();
    assert!(!contacts.contains("oF"), "{replayed:?}");
    assert_eq!(replayed.iter().filter(|(c, _)| *c == 107).count(), 1, "{replayed:?}");

    // Idempotent: a second erasure finds nothing, and tells nobody.
    let (status, body) = delete(s, "oF", &[]).await;
    assert_eq!(status, 200, "{body}");
    let d = &body["data"];
    assert_eq!(
        [&d["messages"], &d["mailboxes"], &d["media"], &d["conversations"], &d["follower"]],
        [&Value::from(0), &Value::from(0), &Value::from(0), &Value::from(0), &Value::from(false)],
        "{body}"
    );
    let (status, _) =
        post(&s.http("/send?userid=u1"), "application/json", text_to("agent1", "sentinel 2")).await;
    assert_eq!(status, 200);
    loop {
        let f = live.frame().await;
        assert_ne!(f["result"]["code"], 107, "told twice: {f}");
        if f["data"]["msg"]["content"] == "sentinel 2" {
            break;
        }
    }
    // F may write again: a new conversation, from an empty one.
    text_from(s, "oF", "F is back", 4).await;
    let back: Vec<_> = history(s, "agent1").await.into_iter().filter(|(_, c, _)| c == "oF").collect();
    assert_eq!(back, [(107, "oF".into(), "erased".into()), (1001, "oF".into(), "F is back".into())]);
}

#[tokio::test]
async fn a_follower_is_forgotten_everywhere_sqlite() {
    a_follower_is_forgotten_everywhere(Engine::Sqlite).await;
}

#[tokio::test]
async fn a_follower_is_forgotten_everywhere_redis() {
    a_follower_is_forgotten_everywhere(Engine::Redis).await;
}

/// In token mode only an API key erases; an agent's token is refused and nothing goes.
async fn only_an_api_key_erases(engine: Engine) {
    let r = rig(engine, |c| {
        c.auth.mode = imgate::config::AuthMode::Token;
        c.auth.jwt_secret = SECRET.into();
        c.auth.api_keys = vec![KEY.into()];
    })
    .await;
    let s = &r.s;
    text_from(s, "oF", "F says hi", 1).await;
    let agent = format!("Bearer {}", common::jwt::jwt(SECRET, "agent1", 600));
    for headers in [vec![], vec![("authorization", agent.as_str())], vec![("x-api-key", "not-the-key")]] {
        let (status, body) = delete(s, "oF", &headers).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(body["result"]["code"], -1, "{body}");
    }
    let (status, body) = delete(s, "oF", &[("x-api-key", KEY)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["messages"], 2, "{body}");
    // A bad id is refused by the id check, with the error frame.
    let long = "o".repeat(300);
    for bad in [long.as_str(), "o%01F", "%20"] {
        let (status, body) = delete(s, bad, &[("x-api-key", KEY)]).await;
        assert_eq!((status, &body["result"]["code"]), (400, &Value::from(-1)), "{bad}: {body}");
    }
}

#[tokio::test]
async fn only_an_api_key_erases_sqlite() {
    only_an_api_key_erases(Engine::Sqlite).await;
}

#[tokio::test]
async fn only_an_api_key_erases_redis() {
    only_an_api_key_erases(Engine::Redis).await;
}

/// Without a WeChat account (no inbox, no media): gateway users' messages go the same way.
#[tokio::test]
async fn a_gateway_user_is_forgotten_without_wechat() {
    let s = Server::start().await;
    for (from, to, text) in [("u1", "u2", "one"), ("u3", "u2", "three"), ("u2", "u1", "back")] {
        let (status, _) =
            post(&s.http(&format!("/send?userid={from}")), "application/json", text_to(to, text)).await;
        assert_eq!(status, 200);
    }
    // The team inbox lists the pairs (written off the send path: wait for them).
    let listed = |user: &'static str| {
        let url = s.http(&format!("/im_component/wx_official_account/conversations?userid={user}"));
        async move {
            let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            let mut ids: Vec<String> = v["data"]["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["contact_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    eventually("u2 lists u1 and u3, u1 lists u2", || async {
        (listed("u2").await == ["u1", "u3"] && listed("u1").await == ["u2"]).then_some(())
    })
    .await;
    let (status, body) = delete(&s, "u1", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed("u2").await, ["u3"], "u2's row of u1 is gone");
    assert!(listed("u1").await.is_empty(), "u1's own rows are gone");
    // u2's message from u1, and u1's own mailbox (u2's message to it).
    assert_eq!(
        (body["data"]["messages"].as_u64(), body["data"]["mailboxes"].as_u64()),
        (Some(2), Some(2)),
        "{body}"
    );
    assert_eq!(
        history(&s, "u2").await,
        [(1001, "u3".into(), "three".into()), (107, "u1".into(), "erased".into())]
    );
    assert_eq!(history(&s, "u1").await, []);
}

//! Followers with names (issue #10, capability 2) against a real server and the stand-in,
//! on each engine: a follower's `user/info` profile is fetched when they first write (beside
//! the delivery, which never waits for it) and again once a day, kept in the store (with
//! Redis, one fetch for every node), shown by `P/contact` and the team inbox; an agent's
//! remark goes to WeChat's `updateremark` and becomes the follower's `data.name`.

mod common;

use common::wechat::{event_from, text_from};
use common::*;
use imgate::config::{Config, Engine};
use imgate::wechat::standin::StandIn;
use imgate_wechat::UserInfo;
use serde_json::{Value, json};

const P: &str = "/im_component/wx_official_account";

struct Rig {
    nodes: Vec<Server>,
    _redis: Option<Redis>,
    _media: tempfile::TempDir,
    wechat: StandIn,
    clock: imgate_wechat::Clock,
}

/// `n` nodes (more than one only on Redis) on one stand-in, agents agent1 and agent2. No
/// daily sweep after the first (at start): the tests here count every `user/info` call.
async fn rig(engine: Engine, n: usize) -> Rig {
    rig_sweeping(engine, n, std::time::Duration::from_secs(365 * 24 * 3600)).await
}

/// As [`rig`], the daily refresh looking for old profiles every `sweep`.
async fn rig_sweeping(engine: Engine, n: usize, sweep: std::time::Duration) -> Rig {
    let redis = (engine == Engine::Redis).then(Redis::start);
    let (wechat, api) = common::wechat::standin().await;
    let clock = wechat.0.lock().clock.clone();
    wechat.0.lock().users.insert(
        "oAnna".into(),
        UserInfo {
            subscribe: 1,
            openid: "oAnna".into(),
            subscribe_time: 1_700_000_000,
            subscribe_scene: "ADD_SCENE_SEARCH".into(),
            unionid: "oUnionAnna".into(),
            remark: String::new(),
            tagid_list: vec![2, 101],
            language: "en".into(),
        },
    );
    // Nodes on one Redis share a media directory.
    let media = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let (url, api, clock) = (redis.as_ref().map(Redis::url), api.clone(), clock.clone());
        let media_dir = media.path().to_owned();
        let s = Server::start_with(move |c: &mut Config| {
            if let Some(url) = url {
                c.store.engine = Engine::Redis;
                c.store.redis_url = url;
                c.wechat.media_dir = media_dir;
            }
            common::wechat::aim(c, &api, &["agent1", "agent2"]);
            c.wechat.clock = clock;
            c.wechat.profile_sweep_every = sweep;
        })
        .await;
        s.ready().await;
        nodes.push(s);
    }
    Rig { nodes, _redis: redis, _media: media, wechat, clock }
}

async fn put_remark(s: &Server, user: &str, contact: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(s.http(&format!("{P}/contacts/{contact}/remark?userid={user}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// `P/contact`'s profile of `contact` once it has one.
async fn profile_of(s: &Server, contact: &str) -> Value {
    eventually(&format!("no profile of {contact}"), || async {
        let (status, c) = s.get(&format!("{P}/contact?userid=agent1&contact_id={contact}")).await;
        assert_eq!(status, 200, "{c}");
        let p = &c["data"]["wechat"]["profile"];
        (!p.is_null()).then(|| p.clone())
    })
    .await
}

/// The next message frame (a follower's, code 1001) an agent's socket carries.
async fn next_text(c: &mut Client) -> Value {
    loop {
        let f = c.frame().await;
        if f["result"]["code"] == 1001 {
            return f;
        }
    }
}

/// First message: the profile is fetched once, shared by every node, shown by P/contact and
/// the conversation; a day later the follower's next message fetches it again.
async fn a_followers_profile_is_fetched_once_and_daily(engine: Engine) {
    let n = if engine == Engine::Redis { 2 } else { 1 };
    let r = rig(engine, n).await;
    let (a, b) = (&r.nodes[0], &r.nodes[n - 1]);
    let mut live = a.connect("/?userid=agent1&since=0").await;
    text_from(&a.http(""), r.clock.now(), "oAnna", "hello", 1).await;
    // Delivered with no name yet: WeChat gives none, and no agent named her.
    let f = next_text(&mut live).await;
    assert_eq!(
        (f["data"]["msg"]["content"].as_str(), f["data"]["name"].as_str()),
        (Some("hello"), Some("")),
        "{f}"
    );
    let want = json!({"remark": "", "unionid": "oUnionAnna", "subscribed": true, "subscribe_time": 1_700_000_000,
        "subscribe_scene": "ADD_SCENE_SEARCH", "tags": [2, 101], "language": "en"});
    for s in [a, b] {
        let mut p = profile_of(s, "oAnna").await;
        assert!(p["fetched_at"].as_i64().unwrap() > 0, "{p}");
        p.as_object_mut().unwrap().remove("fetched_at");
        assert_eq!(p, want);
    }
    // The team inbox's conversation shows it.
    let conv = eventually("the conversation has no profile", || async {
        let (_, c) = b.get(&format!("{P}/conversations/oAnna?userid=agent2")).await;
        (c["data"]["profile"]["unionid"] == "oUnionAnna").then_some(c)
    })
    .await;
    assert_eq!(conv["data"]["profile"]["name"], "", "{conv}");
    // More messages, to either node, within the day: no more fetches.
    text_from(&b.http(""), r.clock.now(), "oAnna", "again", 2).await;
    text_from(&a.http(""), r.clock.now(), "oAnna", "and again", 3).await;
    assert_eq!(next_text(&mut live).await["data"]["msg"]["content"], "again");
    assert_eq!(next_text(&mut live).await["data"]["msg"]["content"], "and again");
    assert_eq!(r.wechat.0.lock().user_info_calls, 1);
    // A day later WeChat has news (a tag); her next message fetches it.
    r.wechat.0.lock().users.get_mut("oAnna").unwrap().tagid_list = vec![2, 101, 7];
    r.clock.advance(24 * 3600);
    text_from(&b.http(""), r.clock.now(), "oAnna", "a day later", 4).await;
    eventually("the profile was not fetched again after a day", || async {
        (profile_of(a, "oAnna").await["tags"] == json!([2, 101, 7])).then_some(())
    })
    .await;
    assert_eq!(r.wechat.0.lock().user_info_calls, 2);
    // She is named, then unfollows: asked again at once, WeChat says only that she left,
    // and what was known of her (her name too) stays.
    let (status, body) = put_remark(a, "agent1", "oAnna", r#"{"remark":"Anna"}"#).await;
    assert_eq!(status, 200, "{body}");
    r.wechat.0.lock().users.get_mut("oAnna").unwrap().subscribe = 0;
    event_from(&b.http(""), r.clock.now(), "oAnna", "unsubscribe").await;
    let p = eventually("the profile did not follow the unsubscribe", || async {
        let p = profile_of(a, "oAnna").await;
        (p["subscribed"] == false).then_some(p)
    })
    .await;
    assert_eq!(
        (p["remark"].as_str(), p["unionid"].as_str(), p["tags"].clone()),
        (Some("Anna"), Some("oUnionAnna"), json!([2, 101, 7]))
    );
    assert_eq!(r.wechat.0.lock().user_info_calls, 3);
}

#[tokio::test]
async fn a_followers_profile_is_fetched_once_and_daily_sqlite() {
    a_followers_profile_is_fetched_once_and_daily(Engine::Sqlite).await;
}

#[tokio::test]
async fn a_followers_profile_is_fetched_once_and_daily_redis() {
    a_followers_profile_is_fetched_once_and_daily(Engine::Redis).await;
}

/// A follower who never writes again is still asked for once a day (the sweep), by one
/// node; one who unfollowed is not asked again until they follow again.
async fn a_quiet_followers_profile_is_refreshed_daily(engine: Engine) {
    let n = if engine == Engine::Redis { 2 } else { 1 };
    // A sweep every 50 ms: many sweeps within each day of the stand-in's clock.
    let r = rig_sweeping(engine, n, std::time::Duration::from_millis(50)).await;
    let (a, b) = (&r.nodes[0], &r.nodes[n - 1]);
    text_from(&a.http(""), r.clock.now(), "oAnna", "hello", 1).await;
    text_from(&b.http(""), r.clock.now(), "oBob", "hi", 2).await;
    profile_of(a, "oAnna").await;
    profile_of(a, "oBob").await;
    // oBob unfollows (asked again at once: WeChat says he left).
    r.wechat.0.lock().users.get_mut("oBob").unwrap().subscribe = 0;
    event_from(&a.http(""), r.clock.now(), "oBob", "unsubscribe").await;
    eventually("oBob's leaving is not in his profile", || async {
        (profile_of(b, "oBob").await["subscribed"] == false).then_some(())
    })
    .await;
    let calls = |who: &str| r.wechat.0.lock().user_info_asked.iter().filter(|o| *o == who).count();
    assert_eq!((calls("oAnna"), calls("oBob")), (1, 2));
    // Neither writes again. A day later WeChat has news of oAnna (a tag): the sweep asks.
    let tags = [2, 101, 101, 102];
    for day in 1..=2usize {
        r.wechat.0.lock().users.get_mut("oAnna").unwrap().tagid_list.push(tags[day + 1]);
        r.clock.advance(24 * 3600 + 1);
        let want = json!(tags[..day + 2]);
        eventually(&format!("day {day}: oAnna's profile was not fetched again"), || async {
            (profile_of(b, "oAnna").await["tags"] == want).then_some(())
        })
        .await;
        assert_eq!(calls("oAnna"), 1 + day, "day {day}: asked once a day, on one node");
    }
    assert_eq!(calls("oBob"), 2, "who unfollowed is not asked again");
}

#[tokio::test]
async fn a_quiet_followers_profile_is_refreshed_daily_sqlite() {
    a_quiet_followers_profile_is_refreshed_daily(Engine::Sqlite).await;
}

#[tokio::test]
async fn a_quiet_followers_profile_is_refreshed_daily_redis() {
    a_quiet_followers_profile_is_refreshed_daily(Engine::Redis).await;
}

/// Two nodes see a new follower at once: only one asks WeChat (the other sees its claim).
#[tokio::test]
async fn one_node_fetches_a_profile_for_all() {
    let r = rig(Engine::Redis, 2).await;
    let (a, b) = (&r.nodes[0], &r.nodes[1]);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    r.wechat.0.lock().hold_user_info = Some(gate.clone());
    let asked = || r.wechat.0.lock().user_info_asked.clone();
    text_from(&a.http(""), r.clock.now(), "oAnna", "hello", 1).await;
    eventually("node a never asked for oAnna's profile", || async { (asked() == ["oAnna"]).then_some(()) })
        .await;
    // While a's fetch is under way, oAnna writes to b, then oBob does: b's fetch of oBob
    // comes after any of oAnna's it would make (one account's calls go in turn).
    text_from(&b.http(""), r.clock.now(), "oAnna", "still there?", 2).await;
    text_from(&b.http(""), r.clock.now(), "oBob", "hi", 3).await;
    eventually("node b never asked for oBob's profile", || async {
        asked().contains(&"oBob".to_owned()).then_some(())
    })
    .await;
    assert_eq!(asked(), ["oAnna", "oBob"], "b asked for oAnna's profile too");
    gate.add_permits(10);
    assert_eq!(profile_of(b, "oAnna").await["unionid"], "oUnionAnna");
    assert_eq!(asked(), ["oAnna", "oBob"]);
}

/// An agent's remark: to WeChat, into the profile (every node), and onto the follower's
/// frames as `data.name`; refusals answered plainly, nothing changed.
async fn an_agents_remark_names_the_follower(engine: Engine) {
    let n = if engine == Engine::Redis { 2 } else { 1 };
    let r = rig(engine, n).await;
    let (a, b) = (&r.nodes[0], &r.nodes[n - 1]);
    let mut live = b.connect("/?userid=agent2&since=0").await;
    text_from(&a.http(""), r.clock.now(), "oAnna", "hello", 1).await;
    next_text(&mut live).await;
    profile_of(a, "oAnna").await;

    let (status, body) = put_remark(a, "agent1", "oAnna", r#"{"remark":"Anna Li 李安娜"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["profile"]["remark"], "Anna Li 李安娜", "{body}");
    assert_eq!(body["data"]["profile"]["unionid"], "oUnionAnna", "{body}");
    assert_eq!(r.wechat.0.lock().users["oAnna"].remark, "Anna Li 李安娜", "WeChat has it");
    assert_eq!(profile_of(b, "oAnna").await["remark"], "Anna Li 李安娜");
    eventually("the conversation is not named", || async {
        let (_, c) = b.get(&format!("{P}/conversations/oAnna?userid=agent2")).await;
        (c["data"]["profile"]["name"] == "Anna Li 李安娜").then_some(())
    })
    .await;
    // Every agent hears it at once (on every node): a conversation frame saying who named her.
    let told = loop {
        let f = live.frame().await;
        if f["result"]["code"] == 104 {
            break f;
        }
    };
    let m = &told["data"]["msg"];
    assert_eq!(
        (m["action"].as_str(), m["by"].as_str(), m["name"].as_str(), told["data"]["contact_id"].as_str()),
        (Some("remark"), Some("agent1"), Some("Anna Li 李安娜"), Some("oAnna")),
        "{told}"
    );
    // Her frames carry it from now on, and the list finds her by it.
    text_from(&a.http(""), r.clock.now(), "oAnna", "named now", 2).await;
    let f = next_text(&mut live).await;
    assert_eq!(
        (f["data"]["msg"]["content"].as_str(), f["data"]["name"].as_str()),
        (Some("named now"), Some("Anna Li 李安娜"))
    );
    let (_, list) = b.get(&format!("{P}/conversations?userid=agent2&view=all&q=anna%20li")).await;
    let rows: Vec<&str> = list["data"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contact_id"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["oAnna"], "{list}");

    // Refusals: each with the error frame and its status; the remark stays as it was.
    let long = format!(r#"{{"remark":"{}"}}"#, "名".repeat(31));
    for (user, contact, body, want, words) in [
        ("agent1", "oAnna", long.as_str(), 400, "31 characters"),
        ("agent1", "oAnna", r#"{"remark":"two\nlines"}"#, 400, "control character"),
        ("agent1", "oAnna", r#"{"name":"x"}"#, 400, "remark"),
        ("agent1", "oAnna", "not json", 400, "not JSON"),
        ("outsider", "oAnna", r#"{"remark":"x"}"#, 403, "not an agent"),
        ("agent1", "oNobody", r#"{"remark":"x"}"#, 404, "not a follower"),
    ] {
        let (status, body) = put_remark(a, user, contact, body).await;
        assert_eq!((status, &body["result"]["code"]), (want, &json!(-1)), "{user} {contact}: {body}");
        let reason = body["result"]["message"].as_str().unwrap();
        assert!(reason.contains(words), "{reason}");
    }
    assert_eq!(r.wechat.0.lock().users["oAnna"].remark, "Anna Li 李安娜");
    // WeChat's daily quota of the user APIs used up: 429, saying so.
    r.wechat.0.lock().user_quota = Some(0);
    let (status, body) = put_remark(a, "agent1", "oAnna", r#"{"remark":"Anna"}"#).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["result"]["message"].as_str().unwrap().contains("45009"), "{body}");
    assert_eq!(profile_of(b, "oAnna").await["remark"], "Anna Li 李安娜");
    r.wechat.0.lock().user_quota = None;
    // A follower imgate knows but WeChat does not (40003): 404, in plain words. Her message
    // was still delivered, without a profile.
    text_from(&a.http(""), r.clock.now(), "x-stranger", "who am I", 3).await;
    assert_eq!(next_text(&mut live).await["data"]["contact_id"], "x-stranger");
    let (status, body) = put_remark(a, "agent1", "x-stranger", r#"{"remark":"x"}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["result"]["message"].as_str().unwrap().contains("40003"), "{body}");
    let (_, c) = a.get(&format!("{P}/contact?userid=agent1&contact_id=x-stranger")).await;
    assert_eq!(c["data"]["wechat"]["profile"], Value::Null, "{c}");
    // An empty remark clears the name.
    let (status, body) = put_remark(a, "agent2", "oAnna", r#"{"remark":""}"#).await;
    assert_eq!((status, &body["data"]["profile"]["remark"]), (200, &json!("")), "{body}");
    text_from(&b.http(""), r.clock.now(), "oAnna", "nameless again", 4).await;
    assert_eq!(next_text(&mut live).await["data"]["name"], "");
}

#[tokio::test]
async fn an_agents_remark_names_the_follower_sqlite() {
    an_agents_remark_names_the_follower(Engine::Sqlite).await;
}

#[tokio::test]
async fn an_agents_remark_names_the_follower_redis() {
    an_agents_remark_names_the_follower(Engine::Redis).await;
}

/// WeChat refusing user/info (the day's quota used up) delays nothing: the message is
/// delivered, and there is no profile until a later fetch succeeds.
#[tokio::test]
async fn a_failed_fetch_does_not_hold_the_message() {
    let r = rig(Engine::Sqlite, 1).await;
    let s = &r.nodes[0];
    r.wechat.0.lock().user_quota = Some(0);
    let mut live = s.connect("/?userid=agent1&since=0").await;
    text_from(&s.http(""), r.clock.now(), "oAnna", "hello", 1).await;
    assert_eq!(next_text(&mut live).await["data"]["msg"]["content"], "hello");
    eventually("user/info was never asked", || async {
        (r.wechat.0.lock().user_info_calls >= 1).then_some(())
    })
    .await;
    let (_, c) = s.get(&format!("{P}/contact?userid=agent1&contact_id=oAnna")).await;
    assert_eq!(c["data"]["wechat"]["profile"], Value::Null, "{c}");
}

//! The team inbox (docs/inbox.md) against a real server: several agents as separate
//! WebSocket and HTTP clients, the WeChat stand-in as the follower's side, and two nodes
//! on one Redis where the point is across nodes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::wechat::{APPID, ORIGINAL, standin, text_from};
use common::*;
use imgate::config::{AccountConfig, Config, Engine, Routing};
use imgate::wechat::standin::StandIn;
use serde_json::{Value, json};

const P: &str = "/im_component/wx_official_account";

fn account(routing: Routing, agents: &[&str]) -> AccountConfig {
    AccountConfig { routing, ..common::wechat::account(agents) }
}

fn configure(c: &mut Config, api: &str, acct: AccountConfig) {
    c.wechat.api_base = api.to_owned();
    c.wechat.accounts.push(acct);
}

async fn gateway(routing: Routing, agents: &[&str]) -> (Server, StandIn) {
    let (wechat, api) = standin().await;
    let acct = account(routing, agents);
    (Server::start_with(move |c| configure(c, &api, acct)).await, wechat)
}

/// Two nodes on one Redis serving the test account (`routing`, `agents`), sharing the
/// stand-in and the media directory, both ready. The servers go before what they use.
struct TwoNodes {
    a: Server,
    b: Server,
    _redis: Redis,
    _wechat: StandIn,
    _media: tempfile::TempDir,
}

async fn two_nodes(routing: Routing, agents: &[&str]) -> TwoNodes {
    let redis = Redis::start();
    let (wechat, api) = standin().await;
    let media = tempfile::tempdir().unwrap();
    let node = || {
        let (api, url, media) = (api.clone(), redis.url(), media.path().to_owned());
        let acct = account(routing, agents);
        Server::start_with(move |c| {
            c.store.engine = Engine::Redis;
            c.store.redis_url = url;
            c.wechat.media_dir = media;
            configure(c, &api, acct);
        })
    };
    let (a, b) = (node().await, node().await);
    for base in [a.http(""), b.http("")] {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while reqwest::get(format!("{base}/readyz")).await.unwrap().status() != 200 {
            assert!(tokio::time::Instant::now() < deadline, "node never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    TwoNodes { a, b, _redis: redis, _wechat: wechat, _media: media }
}

/// A follower's text message through WeChat's (plaintext) callback, stamped now.
async fn say(base: &str, openid: &str, text: &str, msg_id: u64) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    text_from(base, now, openid, text, msg_id).await;
}

async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{base}{P}{path}");
    let c = reqwest::Client::new();
    let req = match method {
        "GET" => c.get(url),
        "PUT" => c.put(url),
        _ => c.post(url),
    };
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(b.to_string()),
        None => req,
    };
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn reply(base: &str, agent: &str, to: &str, text: &str) -> (u16, Value) {
    post(&format!("{base}/send?userid={agent}"), "application/json", text_to(to, text)).await
}

async fn conversation(base: &str, agent: &str, contact: &str) -> Value {
    let (status, c) = call(base, "GET", &format!("/conversations/{contact}?userid={agent}"), None).await;
    assert_eq!(status, 200, "{c}");
    c["data"].clone()
}

/// Wait until `check` holds for the conversation, or fail.
async fn until(base: &str, agent: &str, contact: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let c = conversation(base, agent, contact).await;
        if check(&c) {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {what}: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connect `agent` and wait until the server counts it online.
async fn online(base: &str, server: &Server, agent: &str) -> Client {
    let c = server.connect(&format!("/?userid={agent}")).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, p) = call(base, "GET", &format!("/presence?userid={agent}"), None).await;
        let me = p["data"]["agents"].as_array().unwrap().iter().find(|a| a["agent"] == agent).cloned();
        if me.is_some_and(|m| m["status"] != "offline") {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agent} never online: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the server counts `agent` offline.
async fn offline(base: &str, agent: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, p) = call(base, "GET", &format!("/presence?userid={agent}"), None).await;
        let me = p["data"]["agents"].as_array().unwrap().iter().find(|a| a["agent"] == agent).cloned();
        if me.is_some_and(|m| m["status"] == "offline") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agent} never offline: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `n` frames that are not presence (106).
async fn inbox_frames(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let f = c.frame().await;
        if f["result"]["code"] != 106 {
            out.push(f);
        }
    }
    out
}

/// The next frame with `code`, skipping others (presence of other agents, heartbeats).
async fn next_code(c: &mut Client, code: i64) -> Value {
    loop {
        let f = c.frame().await;
        if f["result"]["code"] == code {
            return f;
        }
    }
}

fn sent_texts(w: &StandIn) -> Vec<String> {
    w.0.lock()
        .sent
        .iter()
        .map(|b| {
            serde_json::from_slice::<Value>(b).unwrap()["text"]["content"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_claim_race_is_won_by_exactly_one() {
    let agents = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let (s, _w) = gateway(Routing::Claim, &agents).await;
    let base = s.http("");
    let mut watcher = s.connect("/?userid=a6").await;
    say(&base, "oRace", "hello", 1).await;
    next_code(&mut watcher, 1001).await;
    let claims = agents.iter().map(|a| {
        let (base, path) = (base.clone(), format!("/conversations/oRace/claim?userid={a}"));
        async move { call(&base, "POST", &path, None).await }
    });
    let answers = futures_util::future::join_all(claims).await;
    let winners: Vec<&str> =
        agents.iter().zip(&answers).filter(|(_, (status, _))| *status == 200).map(|(a, _)| *a).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0];
    for (a, (status, body)) in agents.iter().zip(&answers) {
        if *a != winner {
            assert_eq!(*status, 409, "{a}: {body}");
            assert_eq!(body["data"]["assignee"], winner, "{body}");
            assert_eq!(body["result"]["code"], -1);
        }
    }
    let f = next_code(&mut watcher, 104).await;
    assert_eq!(f["data"]["msg_type"], "conversation");
    assert_eq!(f["data"]["contact_id"], "oRace");
    assert_eq!(f["data"]["msg"]["action"], "claim");
    assert_eq!(f["data"]["msg"]["by"], winner);
    assert_eq!(f["data"]["msg"]["assignee"], winner);
    assert_eq!(conversation(&base, "a1", "oRace").await["assignee"], winner);
}

#[tokio::test]
async fn a_claim_race_across_two_nodes_on_one_redis_is_won_by_exactly_one() {
    let agents = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"];
    let nodes = two_nodes(Routing::Claim, &agents).await;
    let (base_a, base_b) = (nodes.a.http(""), nodes.b.http(""));
    for round in 0..5u64 {
        let contact = format!("oRace{round}");
        say(&base_a, &contact, "hello", 100 + round).await;
        until(&base_b, "a1", &contact, "listed on node B", |c| c["waiting_since"].is_number()).await;
        // Half the agents claim through node A, half through node B, all at once.
        let claims = agents.iter().enumerate().map(|(i, ag)| {
            let base = if i % 2 == 0 { base_a.clone() } else { base_b.clone() };
            let path = format!("/conversations/{contact}/claim?userid={ag}");
            async move { call(&base, "POST", &path, None).await }
        });
        let answers = futures_util::future::join_all(claims).await;
        let winners: Vec<&str> =
            agents.iter().zip(&answers).filter(|(_, (status, _))| *status == 200).map(|(a, _)| *a).collect();
        assert_eq!(winners.len(), 1, "{answers:?}");
        for (ag, (status, body)) in agents.iter().zip(&answers) {
            if *ag != winners[0] {
                assert_eq!((*status, &body["data"]["assignee"]), (409, &json!(winners[0])), "{ag}: {body}");
            }
        }
        assert_eq!(conversation(&base_a, "a2", &contact).await["assignee"], winners[0]);
        assert_eq!(conversation(&base_b, "a3", &contact).await["assignee"], winners[0]);
    }
}

#[tokio::test]
async fn round_robin_spreads_new_conversations_and_skips_an_away_agent() {
    let (s, _w) = gateway(Routing::RoundRobin, &["a", "b", "c"]).await;
    let base = s.http("");
    let _a = online(&base, &s, "a").await;
    let _b = online(&base, &s, "b").await;
    let _c = online(&base, &s, "c").await;
    let (status, p) = call(&base, "PUT", "/presence?userid=c", Some(json!({"status": "away"}))).await;
    assert_eq!((status, &p["data"]["status"]), (200, &json!("away")), "{p}");
    for (i, f) in ["o1", "o2", "o3", "o4"].iter().enumerate() {
        say(&base, f, "hi", i as u64 + 1).await;
    }
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for f in ["o1", "o2", "o3", "o4"] {
        let c = until(&base, "a", f, "assigned", |c| c["assignee"].is_string()).await;
        *load.entry(c["assignee"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(load, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)]));
    let (_, p) = call(&base, "GET", "/presence?userid=a", None).await;
    assert_eq!(
        p["data"]["agents"],
        json!([{"agent": "a", "status": "online"}, {"agent": "b", "status": "online"}, {"agent": "c", "status": "away"}])
    );
}

#[tokio::test]
async fn a_non_assignee_reply_is_refused_and_the_standin_receives_nothing() {
    let (s, w) = gateway(Routing::Claim, &["a", "b"]).await;
    let base = s.http("");
    say(&base, "oF", "help", 1).await;
    until(&base, "a", "oF", "listed", |c| c["waiting_since"].is_number()).await;
    // Unassigned: nobody replies before claiming.
    let (status, body) = reply(&base, "b", "oF", "too early").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(call(&base, "POST", "/conversations/oF/claim?userid=a", None).await.0, 200);
    let (status, body) = reply(&base, "b", "oF", "not mine").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["result"]["code"], -1);
    assert!(body["result"]["message"].as_str().unwrap().contains("assigned to a"), "{body}");
    assert!(sent_texts(&w).is_empty(), "the stand-in received {:?}", sent_texts(&w));
    // Nothing stored: b's history with the follower holds the message and the claim only.
    let (_, h) = s.get(&format!("{P}/history?userid=b&contact_id=oF")).await;
    let codes: Vec<i64> = h["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["result"]["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, vec![1001, 104], "{h}");
    let (status, body) = reply(&base, "a", "oF", "mine").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sent_texts(&w), vec!["mine"]);
    let c = conversation(&base, "a", "oF").await;
    assert_eq!(c["waiting_since"], Value::Null, "answered: {c}");
    assert_eq!(c["last_message"]["direction"], "out");
}

#[tokio::test]
async fn after_a_transfer_the_new_assignee_replies_and_the_old_one_cannot() {
    let (s, w) = gateway(Routing::Claim, &["a", "b"]).await;
    let base = s.http("");
    // A message to b from a colleague: b's mailbox numbers its copies one ahead of a's.
    let (status, _) =
        post(&format!("{base}/send?userid=boss"), "application/json", text_to("b", "hi b")).await;
    assert_eq!(status, 200);
    let mut b = s.connect("/?userid=b").await;
    say(&base, "oT", "help", 1).await;
    next_code(&mut b, 1001).await;
    assert_eq!(call(&base, "POST", "/conversations/oT/claim?userid=a", None).await.0, 200);
    // Only the assignee hands it over.
    let (status, _) =
        call(&base, "POST", "/conversations/oT/transfer?userid=b", Some(json!({"to": "b"}))).await;
    assert_eq!(status, 403);
    let (status, c) = call(
        &base,
        "POST",
        "/conversations/oT/transfer?userid=a",
        Some(json!({"to": "b", "note": "VIP, be kind"})),
    )
    .await;
    assert_eq!((status, &c["data"]["assignee"]), (200, &json!("b")), "{c}");
    assert_eq!(next_code(&mut b, 104).await["data"]["msg"]["action"], "claim");
    let t = next_code(&mut b, 104).await;
    assert_eq!(
        t["data"]["msg"],
        json!({"action": "transfer", "by": "a", "to": "b", "note": "VIP, be kind", "state": "open", "assignee": "b"})
    );
    assert_eq!(reply(&base, "a", "oT", "old owner").await.0, 403);
    let (status, ack) = reply(&base, "b", "oT", "new owner").await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(sent_texts(&w), vec!["new owner"]);
    // Each agent's last_message.seq is its own mailbox's.
    let b_seq = ack["data"]["seq"].as_u64().unwrap();
    assert_eq!(conversation(&base, "b", "oT").await["last_message"]["seq"], b_seq);
    assert_eq!(conversation(&base, "a", "oT").await["last_message"]["seq"], b_seq - 1);
    // Transfer to someone who is no agent is refused.
    let (status, _) =
        call(&base, "POST", "/conversations/oT/transfer?userid=b", Some(json!({"to": "mallory"}))).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_note_reaches_the_other_agents_and_never_the_standin() {
    let (s, w) = gateway(Routing::Claim, &["a", "b", "c"]).await;
    let base = s.http("");
    let mut b = s.connect("/?userid=b").await;
    let mut c = s.connect("/?userid=c").await;
    say(&base, "oN", "help", 1).await;
    next_code(&mut b, 1001).await;
    next_code(&mut c, 1001).await;
    let (status, body) =
        call(&base, "POST", "/conversations/oN/notes?userid=a", Some(json!({"text": "refund approved"})))
            .await;
    assert_eq!(status, 200, "{body}");
    for client in [&mut b, &mut c] {
        let n = next_code(client, 105).await;
        assert_eq!(n["data"]["msg_type"], "note");
        assert_eq!(n["data"]["name"], "a");
        assert_eq!(n["data"]["contact_id"], "oN");
        assert_eq!(n["data"]["company_id"], "acme");
        assert_eq!(n["data"]["msg"], json!({"text": "refund approved"}));
    }
    assert!(w.0.lock().sent.is_empty());
    // An empty note and a stranger's note are refused.
    assert_eq!(
        call(&base, "POST", "/conversations/oN/notes?userid=a", Some(json!({"text": " "}))).await.0,
        400
    );
    assert_eq!(
        call(&base, "POST", "/conversations/oN/notes?userid=eve", Some(json!({"text": "x"}))).await.0,
        403
    );
    assert_eq!(
        call(&base, "POST", "/conversations/oNobody/notes?userid=a", Some(json!({"text": "x"}))).await.0,
        404
    );
}

#[tokio::test]
async fn resolve_then_a_follower_message_reopens() {
    let (s, _w) = gateway(Routing::Claim, &["a", "b"]).await;
    let base = s.http("");
    let mut b = s.connect("/?userid=b").await;
    say(&base, "oR", "help", 1).await;
    assert_eq!(call(&base, "POST", "/conversations/oR/claim?userid=a", None).await.0, 200);
    let (status, c) = call(&base, "POST", "/conversations/oR/resolve?userid=a", None).await;
    assert_eq!((status, &c["data"]["state"]), (200, &json!("resolved")), "{c}");
    say(&base, "oR", "one more thing", 2).await;
    let c = conversation(&base, "b", "oR").await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["assignee"], "a");
    assert!(c["waiting_since"].is_number(), "{c}");
    let codes: Vec<(i64, Value)> = inbox_frames(&mut b, 5)
        .await
        .into_iter()
        .map(|f| (f["result"]["code"].as_i64().unwrap(), f["data"]["msg"]["action"].clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (1001, Value::Null),
            (104, json!("claim")),
            (104, json!("resolve")),
            (1001, Value::Null),
            (104, json!("reopen")),
        ]
    );
    // And an agent reopens by hand.
    assert_eq!(call(&base, "POST", "/conversations/oR/resolve?userid=a", None).await.0, 200);
    let (status, c) = call(&base, "POST", "/conversations/oR/reopen?userid=b", None).await;
    assert_eq!((status, &c["data"]["state"]), (200, &json!("open")));
}

fn short_reassign(routing: Routing, agents: &[&str]) -> AccountConfig {
    AccountConfig { reassign_after: Duration::from_secs(1), ..account(routing, agents) }
}

#[tokio::test]
async fn an_assignee_offline_past_reassign_after_loses_a_waiting_conversation() {
    let (_w, api) = standin().await;
    let acct = short_reassign(Routing::Claim, &["a", "b"]);
    let s = Server::start_with(move |c| configure(c, &api, acct)).await;
    let base = s.http("");
    let a = online(&base, &s, "a").await;
    let mut b = online(&base, &s, "b").await;
    say(&base, "oW", "anyone?", 1).await;
    assert_eq!(call(&base, "POST", "/conversations/oW/claim?userid=a", None).await.0, 200);
    // Online for three times reassign_after: it stays a's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(conversation(&base, "b", "oW").await["assignee"], "a");
    drop(a);
    until(&base, "b", "oW", "unassigned", |c| c["assignee"].is_null()).await;
    let f = next_code(&mut b, 104).await;
    assert_eq!(f["data"]["msg"]["action"], "claim");
    let f = next_code(&mut b, 104).await;
    assert_eq!(
        f["data"]["msg"],
        json!({"action": "unassign", "by": null, "to": null, "note": null,
        "state": "open", "assignee": null})
    );
}

#[tokio::test]
async fn under_round_robin_an_offline_assignee_hands_on_to_the_next_agent() {
    let (_w, api) = standin().await;
    let acct = short_reassign(Routing::RoundRobin, &["a", "b"]);
    let s = Server::start_with(move |c| configure(c, &api, acct)).await;
    let base = s.http("");
    let a = online(&base, &s, "a").await;
    say(&base, "oW", "anyone?", 1).await;
    until(&base, "a", "oW", "assigned to a", |c| c["assignee"] == "a").await;
    let _b = online(&base, &s, "b").await;
    drop(a);
    until(&base, "b", "oW", "handed to b", |c| c["assignee"] == "b").await;
    // The new assignee replies; a new conversation goes to the one online agent.
    assert_eq!(reply(&base, "b", "oW", "here").await.0, 200);
    say(&base, "oQ", "quiet", 2).await;
    until(&base, "b", "oQ", "assigned to b", |c| c["assignee"] == "b").await;
}

#[tokio::test]
async fn the_list_pages_through_152_followers_and_unread_survives_a_restart() {
    let (_w, api) = standin().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    configure(&mut config, &api, account(Routing::Claim, &["a", "b"]));
    let s = Server::start_in(tempfile::tempdir().unwrap(), config.clone()).await;
    let base = s.http("");
    let mut id = 0;
    let mut followers = BTreeSet::new();
    for n in 0..152 {
        let f = format!("oF{n:03}");
        id += 1;
        say(&base, &f, &format!("hello from {f}"), id).await;
        followers.insert(f);
    }
    for _ in 0..499 {
        id += 1;
        say(&base, "oF007", "again", id).await;
    }
    let mut listed = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (status, page) =
            call(&base, "GET", &format!("/conversations?userid=a&view=all&limit=50&cursor={cursor}"), None)
                .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert_eq!(page["data"]["counts"]["all"], 152);
        assert_eq!(page["data"]["counts"]["waiting"], 152);
        listed.extend(
            page["data"]["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["contact_id"].as_str().unwrap().to_owned()),
        );
        match page["data"]["next"].as_str() {
            Some(n) => cursor = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(listed.len(), 152, "each once");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), followers);
    // Waiting first, the longest waiting first: the first follower heads the list.
    assert_eq!(listed[0], "oF000");
    // q searches the text.
    let (_, found) = call(&base, "GET", "/conversations?userid=a&q=from%20oF151", None).await;
    let found: Vec<&str> = found["data"]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contact_id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec!["oF151"]);
    assert_eq!(conversation(&base, "a", "oF007").await["unread"], 500);
    s.stop().await.unwrap();
    let s = Server::start_in(tempfile::tempdir().unwrap(), config.clone()).await;
    let base = s.http("");
    assert_eq!(conversation(&base, "a", "oF007").await["unread"], 500, "unread survives a restart");
    let (status, c) =
        call(&base, "POST", "/conversations/oF007/read?userid=a", Some(json!([{"seq": 1_000_000}]))).await;
    assert_eq!((status, &c["data"]["unread"]), (200, &json!(0)), "{c}");
    assert_eq!(conversation(&base, "b", "oF007").await["unread"], 500, "b has not read it");
    s.stop().await.unwrap();
    let s = Server::start_in(tempfile::tempdir().unwrap(), config).await;
    assert_eq!(conversation(&s.http(""), "a", "oF007").await["unread"], 0);
}

#[tokio::test]
async fn a_reconnect_with_since_gets_every_inbox_frame_it_missed() {
    let (s, _w) = gateway(Routing::Claim, &["a", "b"]).await;
    let base = s.http("");
    let mut b = online(&base, &s, "b").await;
    say(&base, "oS", "hi", 1).await;
    let first = next_code(&mut b, 1001).await;
    let since = seq(&first);
    drop(b);
    offline(&base, "b").await;
    // While b is away: a comes and goes (106), claims and transfers (104), notes (105).
    let a = online(&base, &s, "a").await;
    assert_eq!(call(&base, "POST", "/conversations/oS/claim?userid=a", None).await.0, 200);
    call(&base, "POST", "/conversations/oS/notes?userid=a", Some(json!({"text": "n1"}))).await;
    call(&base, "POST", "/conversations/oS/transfer?userid=a", Some(json!({"to": "b"}))).await;
    call(&base, "PUT", "/presence?userid=a", Some(json!({"status": "away"}))).await;
    drop(a);
    offline(&base, "a").await;
    // A sentinel after everything: a follower's message.
    say(&base, "oS", "sentinel", 2).await;
    let mut b = s.connect(&format!("/?userid=b&since={since}")).await;
    let mut got = Vec::new();
    loop {
        let f = b.frame().await;
        let code = f["result"]["code"].as_i64().unwrap();
        if code == 1001 {
            assert_eq!(content(&f), "sentinel");
            break;
        }
        let what = match code {
            104 => f["data"]["msg"]["action"].clone(),
            105 => f["data"]["msg"]["text"].clone(),
            106 => json!(format!(
                "{}:{}",
                f["data"]["msg"]["agent"].as_str().unwrap(),
                f["data"]["msg"]["status"].as_str().unwrap()
            )),
            _ => f.clone(),
        };
        got.push((code, what));
    }
    assert_eq!(
        got,
        vec![
            (106, json!("b:offline")),
            (106, json!("a:online")),
            (104, json!("claim")),
            (105, json!("n1")),
            (104, json!("transfer")),
            (106, json!("a:away")),
            (106, json!("a:offline")),
        ]
    );
}

#[tokio::test]
async fn routing_all_keeps_todays_behaviour_and_bad_requests_get_error_frames() {
    let (s, w) = gateway(Routing::All, &["a", "b"]).await;
    let base = s.http("");
    // Presence is kept, but no presence frame is sent: consoles see nothing new.
    let mut a = online(&base, &s, "a").await;
    say(&base, "oA", "hi", 1).await;
    assert_eq!(a.frame().await["result"]["code"], 1001);
    assert_eq!(reply(&base, "b", "oA", "anyone answers").await.0, 200);
    assert_eq!(sent_texts(&w), vec!["anyone answers"]);
    for (method, path, body, want) in [
        ("GET", "/conversations?userid=a&view=nope", None, 400),
        ("GET", "/conversations?userid=a&cursor=garbage", None, 400),
        ("GET", "/conversations?userid=a&state=closed", None, 400),
        ("POST", "/conversations/oA/claim?userid=eve", None, 403),
        ("GET", "/conversations", None, 400),
        ("POST", "/conversations/oA/dance?userid=a", None, 404),
        ("POST", "/conversations/oA/transfer?userid=a", Some(json!({"to": 3})), 400),
        ("PUT", "/presence?userid=a", Some(json!({"status": "asleep"})), 400),
        ("PUT", "/canned?userid=a", Some(json!({"canned": [{"shortcut": "", "text": "x"}]})), 400),
        ("PUT", "/canned?userid=a", Some(json!("nope")), 400),
    ] {
        let (status, body) = call(&base, method, path, body).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert_eq!(body["result"]["code"], -1, "{body}");
    }
}

#[tokio::test]
async fn canned_replies_are_kept_per_account() {
    let (s, _w) = gateway(Routing::Claim, &["a", "b"]).await;
    let base = s.http("");
    let (_, empty) = call(&base, "GET", "/canned?userid=a", None).await;
    assert_eq!(empty["data"], json!({"canned": []}));
    let canned = json!({"canned": [{"shortcut": "hi", "text": "您好，请问有什么可以帮您？"}]});
    let (status, body) = call(&base, "PUT", "/canned?userid=a", Some(canned.clone())).await;
    assert_eq!(status, 200, "{body}");
    let (_, got) = call(&base, "GET", "/canned?userid=b", None).await;
    assert_eq!(got["data"], canned);
    // Someone of no account has none, and keeps none.
    let (status, none) = call(&base, "GET", "/canned?userid=eve", None).await;
    assert_eq!((status, &none["data"]), (200, &json!({"canned": []})));
    assert_eq!(call(&base, "PUT", "/canned?userid=eve", Some(canned)).await.0, 403);
    let (_, list) = call(&base, "GET", "/conversations?userid=eve", None).await;
    assert_eq!(list["data"]["conversations"], json!([]), "eve's own conversations: none");
}

#[tokio::test]
async fn above_max_open_per_agent_a_conversation_waits_unassigned() {
    let (_w, api) = standin().await;
    let acct = AccountConfig { max_open_per_agent: 1, ..account(Routing::RoundRobin, &["a", "b"]) };
    let s = Server::start_with(move |c| configure(c, &api, acct)).await;
    let base = s.http("");
    // Nobody online: a new conversation waits.
    say(&base, "o1", "first", 1).await;
    assert_eq!(conversation(&base, "a", "o1").await["assignee"], Value::Null);
    // a comes online: the waiting one is a's at once.
    let _a = online(&base, &s, "a").await;
    until(&base, "a", "o1", "assigned to a", |c| c["assignee"] == "a").await;
    say(&base, "o2", "second", 2).await;
    let (_, page) = call(&base, "GET", "/conversations?userid=a&view=unassigned", None).await;
    assert_eq!(page["data"]["conversations"][0]["contact_id"], "o2", "a holds its one: {page}");
    assert_eq!(page["data"]["counts"]["mine"], 1);
    // a resolves its one: the waiting one comes to a.
    assert_eq!(call(&base, "POST", "/conversations/o1/resolve?userid=a", None).await.0, 200);
    until(&base, "a", "o2", "assigned to a", |c| c["assignee"] == "a").await;
}

#[tokio::test]
async fn in_token_mode_agents_act_as_their_token_and_a_crm_with_an_api_key() {
    const SECRET: &str = "a-test-secret-of-32-bytes-or-more";
    const KEY: &str = "backend-key-1-of-32-characters-or-more";
    let jwt = |sub: &str| {
        let claims = json!({"sub": sub, "exp": time::OffsetDateTime::now_utc().unix_timestamp() + 600});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let (_w, api) = standin().await;
    let acct = account(Routing::Claim, &["a", "b"]);
    let s = Server::start_with(move |c| {
        c.auth.mode = imgate::config::AuthMode::Token;
        c.auth.jwt_secret = SECRET.into();
        c.auth.api_keys = vec![KEY.into()];
        configure(c, &api, acct);
    })
    .await;
    let base = s.http("");
    say(&base, "oK", "hi", 1).await;
    let http = reqwest::Client::new();
    let claim = |auth: Option<String>, query: &str| {
        let mut r = http.post(format!("{base}{P}/conversations/oK/claim{query}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = claim(None, "?userid=a").await;
    assert_eq!((status, &body["result"]["code"]), (401, &json!(-1)), "{body}");
    let (status, _) = claim(Some(format!("Bearer {}", jwt("a"))), "?userid=b").await;
    assert_eq!(status, 403, "a's token does not act as b");
    let (status, body) = claim(Some(format!("Bearer {}", jwt("b"))), "").await;
    assert_eq!((status, &body["data"]["assignee"]), (200, &json!("b")), "{body}");
    // A CRM holding an API key acts as the agent it names.
    let (status, body) = claim(Some(format!("Bearer {KEY}")), "?userid=a").await;
    assert_eq!((status, &body["data"]["assignee"]), (409, &json!("b")), "{body}");
}

#[tokio::test]
async fn round_robin_counts_agents_online_on_either_node() {
    let nodes = two_nodes(Routing::RoundRobin, &["a", "b", "c"]).await;
    let (n1, n2) = (&nodes.a, &nodes.b);
    let (b1, b2) = (n1.http(""), n2.http(""));
    // a on node 1, b on node 2; c nowhere.
    let _a = online(&b2, n1, "a").await;
    let _b = online(&b1, n2, "b").await;
    for (i, f) in ["o1", "o2", "o3", "o4"].iter().enumerate() {
        let base = if i % 2 == 0 { &b1 } else { &b2 };
        say(base, f, "hi", i as u64 + 1).await;
    }
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for f in ["o1", "o2", "o3", "o4"] {
        let c = until(&b1, "c", f, "assigned", |c| c["assignee"].is_string()).await;
        *load.entry(c["assignee"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(load, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 2)]));
}

#[test]
fn routing_keys_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[[wechat.accounts]]\noriginal_id = \"{ORIGINAL}\"\nappid = \"{APPID}\"\ntoken = \"t\"\n\
                 agents = [\"a\"]\n{extra}"
            ),
        )
        .unwrap();
        Config::load(Some(&file), &Default::default())
    };
    let c = write("").unwrap();
    let a = &c.wechat.accounts[0];
    assert_eq!(
        (a.routing, a.max_open_per_agent, a.reassign_after),
        (Routing::All, 20, Duration::from_secs(300))
    );
    let c = write("routing = \"round_robin\"\nmax_open_per_agent = 3\nreassign_after = \"90s\"\n").unwrap();
    let a = &c.wechat.accounts[0];
    assert_eq!(
        (a.routing, a.max_open_per_agent, a.reassign_after),
        (Routing::RoundRobin, 3, Duration::from_secs(90))
    );
    c.validate().unwrap();
    assert!(write("routing = \"first_come\"\n").is_err(), "an unknown routing is refused");
    for bad in ["max_open_per_agent = 0\n", "reassign_after = \"0s\"\n"] {
        let err = write(bad).unwrap_err().to_string();
        assert!(err.contains("max_open_per_agent"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn nobody_sends_a_frame_that_passes_for_a_note() {
    let (s, _w) = gateway(Routing::Claim, &["a", "b"]).await;
    for kind in ["note", "conversation", "presence"] {
        let body = json!({"data": {"msg_type": kind, "contact_id": "a", "msg": {"text": "I am your boss"}},
            "result": {"code": 105, "message": "common"}})
        .to_string();
        let (status, ack) = post(&s.http("/send?userid=mallory"), "application/json", body).await;
        assert_eq!(status, 403, "{kind}: {ack}");
    }
    let (_, h) = s.get(&format!("{P}/history?userid=a")).await;
    assert_eq!(h["data"]["messages"], json!([]), "nothing stored");
}

/// Wait until `agent`'s list (all of it, paged) is `want`, or fail: conversations between
/// gateway users are indexed off the send path, a batch after the send's answer.
async fn listed_until(base: &str, agent: &str, want: &[&str]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut rows = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) =
                call(base, "GET", &format!("/conversations?userid={agent}&limit=50&cursor={cursor}"), None)
                    .await;
            assert_eq!(status, 200, "{page}");
            rows.extend(page["data"]["conversations"].as_array().unwrap().iter().cloned());
            match page["data"]["next"].as_str() {
                Some(n) => cursor = n.to_owned(),
                None => break,
            }
        }
        let ids: BTreeSet<&str> = rows.iter().map(|c| c["contact_id"].as_str().unwrap()).collect();
        if ids == want.iter().copied().collect() && rows.len() == want.len() {
            return rows;
        }
        assert!(tokio::time::Instant::now() < deadline, "{agent} never listed {want:?}: {ids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A conversation between two gateway users (docs/inbox.md): each side lists it, unread
/// and 待回复 count for the side that was written to, an answer clears them, nobody can be
/// assigned, and it survives a restart. No WeChat account is configured: the index serves
/// plain gateway users too.
async fn gateway_users_conversations(config: Config, restart: bool) {
    let s = Server::start_in(tempfile::tempdir().unwrap(), config.clone()).await;
    let base = s.http("");
    // A pair not (yet) in the index is not found — the console asks again a second later —
    // rather than forbidden (a 403 once made the console report errors under load).
    let (status, r) = call(&base, "GET", "/conversations/u000?userid=bob", None).await;
    assert_eq!(status, 404, "{r}");
    // 120 users write to bob: every one is listed (the console's list once showed 38).
    let users: Vec<String> = (0..120).map(|n| format!("u{n:03}")).collect();
    for u in &users {
        let (status, r) =
            post(&format!("{base}/send?userid={u}"), "application/json", text_to("bob", "hi bob")).await;
        assert_eq!(status, 200, "{r}");
    }
    for _ in 0..3 {
        post(&format!("{base}/send?userid=u007"), "application/json", text_to("bob", "are you there?")).await;
    }
    let want: Vec<&str> = users.iter().map(String::as_str).collect();
    listed_until(&base, "bob", &want).await;
    // Written once a second: a row may hold the first of u007's messages before the rest.
    let u7 = until(&base, "bob", "u007", "all four of u007's messages counted", |c| c["unread"] == 4).await;
    assert_eq!(
        (&u7["kind"], &u7["appid"], &u7["assignee"]),
        (&json!("user"), &json!(""), &Value::Null),
        "{u7}"
    );
    assert_eq!(u7["unread"], 4, "{u7}");
    assert!(u7["waiting_since"].is_number(), "bob has not answered u007: {u7}");
    assert_eq!(u7["last_message"]["preview"], "are you there?");
    // A user's own send over its socket is in its own mailbox too: its side is listed,
    // answered and read.
    let mut alice = s.connect("/?userid=alice").await;
    alice.send(&text_to("bob", "hello from alice")).await;
    listed_until(&base, "alice", &["bob"]).await;
    let mine = conversation(&base, "alice", "bob").await;
    assert_eq!(
        (&mine["unread"], &mine["waiting_since"]),
        (&json!(0), &Value::Null),
        "alice wrote last: {mine}"
    );
    assert_eq!(mine["last_message"]["direction"], "out");
    let mut want = want.clone();
    want.push("alice");
    let want = &want;
    listed_until(&base, "bob", want).await;
    // The views: a user's own conversations are "mine", never "unassigned".
    let (_, page) = call(&base, "GET", "/conversations?userid=bob&view=unassigned", None).await;
    assert_eq!(page["data"]["counts"], json!({"mine": 121, "unassigned": 0, "all": 121, "waiting": 121}));
    // Bob answers u007: it no longer waits, and u007's side counts one unread.
    let mut bob = s.connect("/?userid=bob").await;
    bob.send(&text_to("u007", "here")).await;
    until(&base, "bob", "u007", "answered", |c| c["waiting_since"].is_null() && c["unread"] == 0).await;
    until(&base, "u007", "bob", "unread on the other side", |c| {
        c["unread"] == 1 && c["waiting_since"].is_number()
    })
    .await;
    // Nobody is assigned between gateway users: actions are refused with a reason; reading works.
    for action in ["claim", "resolve", "reopen"] {
        let (status, r) =
            call(&base, "POST", &format!("/conversations/u001/{action}?userid=bob"), None).await;
        assert_eq!(status, 400, "{action}: {r}");
        assert!(r["result"]["message"].as_str().unwrap().contains("two gateway users"), "{r}");
    }
    let (status, r) = call(&base, "POST", "/conversations/u001/read?userid=bob", None).await;
    assert_eq!((status, &r["data"]["unread"]), (200, &json!(0)), "{r}");
    if restart {
        s.stop().await.unwrap();
        let s = Server::start_in(tempfile::tempdir().unwrap(), config).await;
        let base = s.http("");
        assert_eq!(listed_until(&base, "bob", want).await.len(), 121, "the index survives a restart");
        assert_eq!(conversation(&base, "bob", "u002").await["unread"], 1);
        assert_eq!(conversation(&base, "bob", "u001").await["unread"], 0);
    }
}

#[tokio::test]
async fn conversations_between_gateway_users_are_listed_with_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    gateway_users_conversations(config, true).await;
}

#[tokio::test]
async fn conversations_between_gateway_users_are_listed_with_redis() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.engine = Engine::Redis;
    config.store.redis_url = redis.url();
    gateway_users_conversations(config, true).await;
}

/// New conversations arriving at once, on one node and across two: round robin still
/// spreads them evenly, because routing one account is serialised (a lock in Redis across
/// nodes). Without it, every router read the same loads and chose the same agent.
#[tokio::test]
async fn round_robin_spreads_conversations_arriving_at_once_on_two_nodes() {
    let nodes = two_nodes(Routing::RoundRobin, &["a", "b"]).await;
    let (n1, n2) = (&nodes.a, &nodes.b);
    let (b1, b2) = (n1.http(""), n2.http(""));
    let _a = online(&b1, n1, "a").await;
    let _b = online(&b2, n2, "b").await;
    let followers: Vec<String> = (0..16).map(|i| format!("oBurst{i:02}")).collect();
    let says = followers.iter().enumerate().map(|(i, f)| {
        let base = if i % 2 == 0 { b1.clone() } else { b2.clone() };
        async move { say(&base, f, "hi", 500 + i as u64).await }
    });
    futures_util::future::join_all(says).await;
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for f in &followers {
        let c = until(&b1, "a", f, "assigned", |c| c["assignee"].is_string()).await;
        *load.entry(c["assignee"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(load, BTreeMap::from([("a".to_owned(), 8), ("b".to_owned(), 8)]));
}

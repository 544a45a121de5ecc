//! Fuzzed input through the real server, where the parsers meet the rest of the path:
//! mutated WeChat callbacks (signed, so that they reach the parser), send requests over
//! HTTP and a client's frames over its WebSocket. Whatever comes in gets an answer — an
//! ack, or the seed's error frame with a 4xx — never a dropped connection (a panic) or a
//! 5xx; and what was accepted reads back from the mailbox as JSON.
//!
//! The inputs are the kept ones of `fuzz/corpus`, mutated as `imgate_fuzz::mutate`
//! does; `PROPTEST_CASES` sets how many per test.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use imgate::config::AccountConfig;
use imgate::wechat::standin::StandIn;
use imgate_fuzz::corpus;
use imgate_fuzz::mutate::{Edit, TOKENS, apply};
use imgate_wechat::Cipher;
use imgate_wechat::callback::{Keys, seal};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const APPID: &str = "wx2c2769f8efd9abc2";
const TOKEN: &str = "spamtest";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The `ToUserName` of the official samples in fuzz/corpus/xml.
const ORIGINAL: &str = "toUser";

/// Cases per test; each is a request or two to a server in this process.
const CASES: u32 = 150;

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    TestRunner::new(RunnerConfig {
        cases,
        rng_seed: seed(),
        failure_persistence: None,
        ..RunnerConfig::default()
    })
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1usize..24).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, o)| Edit::Splice(at, o)),
    ];
    proptest::collection::vec(edit, 0..5)
}

/// A kept input of `target`, mutated; UTF-8 as HTTP and WebSocket text require.
fn mutated(target: &str) -> impl Strategy<Value = String> + use<> {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    let n = seeds.len();
    (0..n, edits())
        .prop_map(move |(i, e)| String::from_utf8_lossy(&apply(&seeds[i], &e, &seeds)).into_owned())
}

fn now_ts() -> String {
    time::OffsetDateTime::now_utc().unix_timestamp().to_string()
}

struct Rig {
    s: Server,
    cipher: Cipher,
}

async fn rig() -> Rig {
    let wechat = StandIn::new(&[(APPID, "secret")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wechat.serve(listener));
    let s = Server::start_with(|c| {
        c.wechat.api_base = base;
        c.wechat.accounts.push(AccountConfig {
            original_id: ORIGINAL.into(),
            appid: APPID.into(),
            secret: "secret".into(),
            token: TOKEN.into(),
            encoding_aes_key: AES_KEY.into(),
            company_id: "acme".into(),
            agents: vec!["agent1".into()],
            ..Default::default()
        });
    })
    .await;
    Rig { s, cipher: Cipher::new(AES_KEY).unwrap() }
}

impl Rig {
    fn keys(&self) -> Keys<'_> {
        Keys { token: TOKEN, appid: APPID, cipher: Some(&self.cipher) }
    }

    /// A callback as WeChat's servers sign and encrypt it; the status and the body.
    async fn callback(&self, xml: &str, timestamp: &str) -> Result<(u16, String), reqwest::Error> {
        let (body, query) = seal(xml, self.keys(), timestamp, "1320562132");
        let r = reqwest::Client::new()
            .post(self.s.http(&format!("/im_component/wx_official_account/callback/{APPID}")))
            .query(&query)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// Every message in `user`'s history, each checked to be a frame.
    async fn history(&self, user: &str) -> Result<Vec<Value>, TestCaseError> {
        let url = self.s.http("/im_component/wx_official_account/history");
        let r = reqwest::Client::new()
            .get(url)
            .query(&[("userid", user), ("limit", "200")])
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("history of {user:?}: {e}")))?;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        prop_assert_eq!(status, 200, "history of {:?}: {}", user, text);
        let page: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let messages = page["data"]["messages"].as_array().cloned().unwrap_or_default();
        for m in &messages {
            let frame: Result<imgate_protocol::Frame<imgate_protocol::MessageData>, _> =
                serde_json::from_value(m.clone());
            prop_assert!(frame.is_ok(), "a stored frame does not read as a message: {}", m);
        }
        Ok(messages)
    }
}

/// An answer over HTTP: a 2xx, or a 4xx carrying the seed's error frame.
fn answered(status: u16, body: &str) -> Result<(), TestCaseError> {
    prop_assert!(status < 500, "{} for a request: {}", status, body);
    if status >= 400 {
        let v: Value = serde_json::from_str(body)
            .map_err(|_| TestCaseError::fail(format!("{status} without an error frame: {body}")))?;
        prop_assert_eq!(v["result"]["code"].as_i64(), Some(-1), "{}", body);
    }
    Ok(())
}

/// Found by this test: a callback signed with the account's token and stamped
/// `i64::MIN` overflowed the age check (a panic; in a release build, a stale callback
/// taken as fresh).
#[tokio::test]
async fn a_callback_stamped_at_the_ends_of_time_is_refused() {
    let r = rig().await;
    let xml = "<xml><ToUserName>toUser</ToUserName><FromUserName>oF</FromUserName><MsgType>text</MsgType>\
               <Content>hi</Content><MsgId>1</MsgId></xml>";
    for ts in ["-9223372036854775808", "9223372036854775807", "-1"] {
        let (status, body) = r.callback(xml, ts).await.unwrap_or_else(|e| panic!("timestamp {ts}: {e}"));
        assert_eq!(status, 400, "timestamp {ts}: {body}");
        assert!(body.contains("clock"), "{body}");
    }
    assert_eq!(r.history("agent1").await.unwrap(), Vec::<Value>::new());
}

#[test]
fn fuzzed_callbacks_are_answered_and_what_is_accepted_reads_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(rig());
    let accepted = std::cell::Cell::new(0u32);
    runner()
        .run(&mutated("xml"), |xml| {
            rt.block_on(async {
                let (status, body) = r
                    .callback(&xml, &now_ts())
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{e}: {xml:?}")))?;
                answered(status, &body)?;
                if status == 200 {
                    prop_assert_eq!(body.as_str(), "success");
                    accepted.set(accepted.get() + 1);
                }
                Ok(())
            })
        })
        .unwrap();
    let stored = rt.block_on(r.history("agent1")).unwrap();
    let accepted = accepted.get();
    assert!(accepted == 0 || !stored.is_empty(), "{accepted} callbacks accepted, none stored");
}

#[test]
fn fuzzed_sends_over_http_are_answered_and_what_is_accepted_reads_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(rig());
    let input = prop_oneof![mutated("send"), mutated("xml")];
    runner()
        .run(&input, |body| {
            rt.block_on(async {
                let url = r.s.http("/im_component/wx_official_account/send?userid=fuzzer");
                let resp = reqwest::Client::new()
                    .post(url)
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{e}: {body:?}")))?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                answered(status, &text)?;
                if status == 200 {
                    let ack: Value =
                        serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let to = ack["data"]["contact_id"].as_str().unwrap_or_default().to_owned();
                    let id = ack["data"]["id"].as_str().unwrap_or_default().to_owned();
                    let stored = r.history(&to).await?;
                    prop_assert!(
                        stored.iter().any(|m| m["data"]["id"] == id.as_str()),
                        "accepted {} for {:?}, not in its history: {}",
                        id,
                        to,
                        body
                    );
                }
                Ok(())
            })
        })
        .unwrap();
}

#[test]
fn fuzzed_client_frames_are_answered_on_a_socket_that_stays_open() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(rig());
    let ws = tokio::sync::Mutex::new(rt.block_on(r.s.connect("/?userid=fuzzer")));
    let n = std::cell::Cell::new(0u64);
    let input = prop_oneof![mutated("send"), mutated("xml"), "[a-z]{0,6}"];
    runner()
        .run(&input, |frame| {
            n.set(n.get() + 1);
            let sentinel = format!("sentinel-{}", n.get());
            rt.block_on(async {
                let mut ws = ws.lock().await;
                ws.ws.send(Message::Text(frame.clone().into())).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let probe = serde_json::json!({"data": {"id": sentinel, "msg_type": "text", "contact_id": "peer",
                    "msg": {"content": "after the fuzzed frame"}}});
                ws.ws
                    .send(Message::Text(probe.to_string().into()))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                // Answers to the fuzzed frame, copies of what was sent, heartbeats: all
                // frames, until the probe's ack.
                loop {
                    let next = tokio::time::timeout(PATIENCE, ws.ws.next())
                        .await
                        .map_err(|_| TestCaseError::fail(format!("no answer after {frame:?}")))?;
                    let text = match next {
                        Some(Ok(Message::Text(t))) => t.to_string(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        other => return Err(TestCaseError::fail(format!("socket ended after {frame:?}: {other:?}"))),
                    };
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {text}")))?;
                    prop_assert!(v["result"]["code"].is_i64(), "a frame without result.code: {}", text);
                    if v["data"]["id"] == sentinel.as_str() && v["result"]["code"] == 0 {
                        return Ok(());
                    }
                }
            })
        })
        .unwrap();
    let stored = rt.block_on(r.history("fuzzer")).unwrap();
    assert!(!stored.is_empty());
}

/// The same inputs on every run of scripts/test, unless PROPTEST_RNG_SEED says otherwise
/// (scripts/fuzz draws one).
fn seed() -> RngSeed {
    match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => RunnerConfig::default().rng_seed,
        None => RngSeed::Fixed(20_261_130),
    }
}

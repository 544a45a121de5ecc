//! Configuration under generated values: a config either loads and then serves — its
//! first request and its first WebSocket get answers — or is refused with a message
//! naming the key (the binary exits 64). Never a config that loads and then panics or
//! dies at the first connection.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use imgate::config::{Config, Overrides};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// Found by this test: each loaded, then failed at the first WebSocket — a process
/// killed allocating its read buffer, a panic computing the write buffer's bound.
#[test]
fn values_that_broke_the_first_connection_exit_64() {
    for (key, value, named) in [
        ("IMGATE_HUB__READ_BUFFER_SIZE", "1000000000000", "hub.read_buffer_size"),
        ("IMGATE_HUB__WRITE_BUFFER_SIZE", "1000000000000", "hub.write_buffer_size"),
        ("IMGATE_LIMITS__HTTP_BODY_MAX", "9223372036854775807", "limits.http_body_max"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env(key, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(64), "{key}={value} was accepted: {err}");
        assert!(err.contains(named), "{key}={value}: {err}");
    }
}

/// Values at the edges of each kind of key.
const DURATIONS: &[&str] = &[
    "\"0s\"",
    "\"1ms\"",
    "\"25s\"",
    "\"61s\"",
    "\"30d\"",
    "\"100y\"",
    "\"101y\"",
    "\"292277100000y\"",
    "\"584000000000y\"",
    "\"x\"",
    "5",
];
const SIZES: &[&str] = &[
    "0",
    "1",
    "255",
    "256",
    "4096",
    "65536",
    "16777216",
    "16777217",
    "1073741824",
    "1073741825",
    "9223372036854775807",
    "-1",
    "\"1\"",
];

fn keys() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let d = || DURATIONS.to_vec();
    let n = || SIZES.to_vec();
    vec![
        ("", "shutdown_grace", d()),
        ("", "log", vec!["\"imgate=info\"", "\"imgate=[{\"", "\"\"", "\"off\""]),
        ("store", "retention_max_age", d()),
        ("store", "dedupe_window", d()),
        ("store", "retention_max_messages", n()),
        ("store", "max_batch", n()),
        ("store", "sync", vec!["\"normal\"", "\"full\"", "\"none\""]),
        (
            "hub",
            "heartbeat_interval",
            vec!["\"1ms\"", "\"25s\"", "\"61s\"", "\"100y\"", "\"292277100000y\"", "0"],
        ),
        ("hub", "idle_timeout", d()),
        ("hub", "queue_capacity", n()),
        ("hub", "max_connections_per_user", n()),
        ("hub", "write_buffer_size", n()),
        ("hub", "read_buffer_size", n()),
        ("limits", "http_body_max", n()),
        ("limits", "ws_frame_max", n()),
        ("limits", "history_page_max", n()),
        ("bench", "noop_route", vec!["true", "false", "\"yes\""]),
        ("wechat", "api_timeout", d()),
        ("wechat", "callback_max_age", d()),
        ("wechat", "media_max", n()),
        ("wechat", "token_mode", vec!["\"stable\"", "\"legacy\"", "\"x\""]),
        (
            "protocol",
            "create_time_zone",
            vec!["\"+08:00\"", "\"+25:00\"", "\"-00:00\"", "\"Z\"", "\"+8\"", "\"\""],
        ),
        ("protocol", "company_id", vec!["\"\"", "\"acme\"", "\"\\u0000\""]),
    ]
}

/// A TOML file setting one to three keys, each to one of its edge values.
fn toml() -> impl Strategy<Value = String> {
    let table = keys();
    let n = table.len();
    proptest::collection::vec((0..n, any::<usize>()), 1..4).prop_map(move |picks| {
        let mut top = String::new();
        let mut sections: Vec<(&str, String)> = Vec::new();
        for (k, v) in picks {
            let (section, key, values) = &table[k];
            let line = format!("{key} = {}\n", values[v % values.len()]);
            if section.is_empty() {
                top.push_str(&line);
            } else {
                match sections.iter_mut().find(|(s, _)| s == section) {
                    Some((_, body)) if !body.contains(&format!("{key} =")) => body.push_str(&line),
                    Some(_) => {}
                    None => sections.push((section, line)),
                }
            }
        }
        for (s, body) in sections {
            top.push_str(&format!("[{s}]\n{body}"));
        }
        top
    })
}

/// The server `config` runs answers a send over HTTP and a WebSocket's first frame.
async fn serves(config: Config) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), data_dir: dir.path().to_owned(), ..config };
    let s = Server::start_in(dir, config).await;
    let fail = |what: &str, e: &dyn std::fmt::Display| TestCaseError::fail(format!("{what}: {e}"));
    let resp = reqwest::Client::new()
        .post(s.http("/send?userid=a"))
        .header("content-type", "application/json")
        .body(text_to("b", "hello"))
        .send()
        .await
        .map_err(|e| fail("POST /send", &e))?;
    let status = resp.status().as_u16();
    prop_assert!(status == 200 || status == 413, "POST /send: {}", status);
    let mut ws = Client::try_connect(&s.ws("/?userid=b"), None).await.map_err(|e| fail("connect", &e))?;
    ws.ws.send(Message::Text(text_to("a", "hi").into())).await.map_err(|e| fail("send a frame", &e))?;
    // An ack or the message just posted, or a close with its code; not a dropped socket.
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| TestCaseError::fail("no frame on the WebSocket"))?;
    match first {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).map_err(|e| fail("frame", &e))?;
            prop_assert!(v["result"]["code"].is_i64(), "{}", t);
        }
        Some(Ok(Message::Close(Some(c)))) => prop_assert!(u16::from(c.code) >= 1000, "{:?}", c),
        other => return Err(TestCaseError::fail(format!("the socket ended without a close: {other:?}"))),
    }
    let _ = ws.ws.close(None).await;
    tokio::time::timeout(PATIENCE, s.stop())
        .await
        .map_err(|_| TestCaseError::fail("the server does not stop"))?
        .map_err(|e| fail("run", &e))?;
    Ok(())
}

#[test]
fn a_config_that_loads_serves() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        rng_seed: seed(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    runner
        .run(&toml(), |text| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("imgate.toml");
            std::fs::write(&file, &text).unwrap();
            match Config::load(Some(&file), &Overrides::default()) {
                Err(e) => {
                    prop_assert!(e.to_string().starts_with("config"), "{}", e);
                    Ok(())
                }
                Ok(config) => {
                    rt.block_on(serves(config)).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))
                }
            }
        })
        .unwrap();
}

/// The same inputs on every run of scripts/test, unless PROPTEST_RNG_SEED says otherwise
/// (scripts/fuzz draws one).
fn seed() -> RngSeed {
    match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => RunnerConfig::default().rng_seed,
        None => RngSeed::Fixed(20_261_130),
    }
}

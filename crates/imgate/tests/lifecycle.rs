//! The binary: SIGTERM/SIGINT drain and exit 0; `serve --help` documents every key;
//! `tail` prints frames; bad configuration exits 64.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok);
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    for sig in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let mut bin = Binary::start(dir.path(), &[]).await;
        let mut a = Client::connect(&bin.ws("/?userid=a")).await;
        let mut b = Client::connect(&bin.ws("/im_component/wx_official_account/msg?userid=b")).await;
        let (_, ack) = post(&bin.http("/send?userid=x"), "application/json", text_to("a", "before")).await;
        assert_eq!(content(&a.frame().await), "before");
        signal(bin.pid(), sig);
        for c in [&mut a, &mut b] {
            let close = c.closed().await.expect("a close frame");
            assert_eq!(u16::from(close.code), 1001, "{sig}");
        }
        let status = tokio::time::timeout(PATIENCE, bin.child.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(0), "{sig}");
        // What was acknowledged is there after the restart.
        let bin = Binary::start(dir.path(), &[]).await;
        let mut again = Client::connect(&bin.ws("/?userid=a&since=0")).await;
        assert_eq!(again.frame().await["data"]["id"], ack["data"]["id"]);
    }
}

#[tokio::test]
async fn serve_help_documents_every_key() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_imgate")).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for key in [
        "--listen",
        "--data-dir",
        "--config",
        "listen =",
        "data_dir =",
        "[store]",
        "sync =",
        "retention_max_messages =",
        "retention_max_age =",
        "[hub]",
        "heartbeat_interval =",
        "idle_timeout =",
        "queue_capacity =",
        "[limits]",
        "http_body_max =",
        "ws_frame_max =",
        "[auth]",
        "mode =",
        "jwt_secret =",
        "api_keys =",
        "allowed_origins =",
        "[protocol]",
        "create_time_zone =",
    ] {
        assert!(help.contains(key), "serve --help does not mention {key}");
    }
}

#[tokio::test]
async fn bad_configuration_exits_64_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    std::fs::write(&file, "[hub]\nheartbeat_interval = \"0s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat_interval"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["serve", "--data-dir", "/tmp/x"])
        .env("IMGATE_STORE__SYNC", "sometimes")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
}

#[tokio::test]
async fn tail_prints_frames_as_they_arrive() {
    let s = Server::start().await;
    s.post("/send?userid=agent", "application/json", text_to("t", "waiting")).await;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["tail", "--userid", "t", "--since", "0", "--url"])
        .arg(s.ws("/im_component/wx_official_account/msg"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(content(&first), "waiting");
    s.post("/send?userid=agent", "application/json", text_to("t", "live")).await;
    let next: serde_json::Value = serde_json::from_str(
        &tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(content(&next), "live");
}

#[test]
fn the_configuration_doc_shows_the_keys_serve_help_shows() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md")).unwrap();
    assert!(
        doc.contains(imgate::config::KEYS_HELP.trim_end()),
        "docs/configuration.md's block is not `imgate serve --help`'s: copy it over"
    );
}

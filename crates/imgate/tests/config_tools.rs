//! The operator's tools around the configuration: `imgate --version`, `config init` (a
//! commented file with every key and its default), `config check` (exit 0 and the
//! effective configuration with secrets masked, or 64 with the problem), and
//! `log_format = "json"` with the request id HTTP answers carry.

mod common;

use std::process::{Command, Output, Stdio};

use common::PATIENCE;
use tokio::io::{AsyncBufReadExt, BufReader};

fn imgate(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgate"));
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG");
    // The test's own environment must not leak a setting into the checked configuration.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("IMGATE_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = imgate(&["--version"], dir.path(), &[]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), format!("imgate {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn config_init_writes_every_key_with_its_default_and_check_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    let out = imgate(&["config", "init", "--out", file.to_str().unwrap()], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let example = std::fs::read_to_string(&file).unwrap();
    // Every key serve --help documents is in the file.
    for line in imgate::config::KEYS_HELP.lines().skip(1) {
        if let Some((key, _)) = line.trim().split_once(" = ")
            && !line.starts_with(&" ".repeat(30))
            && !line.trim().starts_with('[')
        {
            assert!(example.contains(&format!("# {} = ", key.trim())), "{key} missing from config init");
        }
    }
    // As written (all commented) it is the defaults...
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let defaults = imgate(&["config", "check", "--config", empty.to_str().unwrap()], dir.path(), &[]);
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    let checked = imgate(&["config", "check", "--config", file.to_str().unwrap()], dir.path(), &[]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert_eq!(text(&checked.stdout), text(&defaults.stdout));
    // ...and with every key outside the account uncommented, still the defaults: the
    // values it shows are the ones the server uses.
    // A key is the last line of its block (its description comes first).
    let lines: Vec<&str> = example.lines().collect();
    let mut in_account = false;
    let mut uncommented = String::new();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("# [[") {
            in_account = true;
        } else if l.starts_with('[') {
            in_account = false;
        }
        let last_of_block = lines.get(i + 1).is_none_or(|n| n.is_empty());
        match l.strip_prefix("# ") {
            Some(kv) if last_of_block && !in_account && kv.contains(" = ") => uncommented.push_str(kv),
            _ => uncommented.push_str(l),
        }
        uncommented.push('\n');
    }
    assert!(uncommented.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")).count() > 40);
    std::fs::write(&file, &uncommented).unwrap();
    let all = imgate(&["config", "check", "--config", file.to_str().unwrap()], dir.path(), &[]);
    assert!(all.status.success(), "{}\n{uncommented}", text(&all.stderr));
    assert_eq!(text(&all.stdout), text(&defaults.stdout));
    // An operator's file is never overwritten.
    let again = imgate(&["config", "init", "--out", file.to_str().unwrap()], dir.path(), &[]);
    assert!(!again.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), uncommented);
}

#[test]
fn config_check_masks_secrets_and_exits_64_on_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    let secret = "a-jwt-secret-of-at-least-32-bytes-0001";
    let key = "an-api-key-of-at-least-32-characters-0002";
    std::fs::write(
        &file,
        format!(
            r#"[auth]
mode = "token"
jwt_secret = "{secret}"
api_keys = ["{key}"]
[store]
redis_url = "redis://:hunter2-redis@127.0.0.1:6379"
[[wechat.accounts]]
original_id = "gh_1"
appid = "wx1"
token = "callback-token-0003"
agents = ["agent1"]
"#
        ),
    )
    .unwrap();
    let out = imgate(
        &["config", "check", "--config", file.to_str().unwrap()],
        dir.path(),
        &[("IMGATE_WECHAT_WX1_SECRET", "app-secret-0004")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for s in [secret, key, "hunter2-redis", "callback-token-0003", "app-secret-0004"] {
        assert!(!printed.contains(s), "{s} printed:\n{printed}");
    }
    assert!(printed.contains(r#"mode = "token""#), "{printed}");
    assert!(printed.contains(r#"agents = ["agent1"]"#), "{printed}");
    assert_eq!(printed.matches(imgate::config_file::MASK).count(), 5, "{printed}");
    // A problem: exit 64, and the reason names the key.
    std::fs::write(&file, "[auth]\nmode = \"token\"\njwt_secret = \"short\"\n").unwrap();
    let bad = imgate(&["config", "check", "--config", file.to_str().unwrap()], dir.path(), &[]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(text(&bad.stderr).contains("jwt_secret"), "{}", text(&bad.stderr));
    assert!(bad.stdout.is_empty());
}

#[tokio::test]
async fn json_logs_carry_the_request_id_http_answers_return() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .env("IMGATE_LOG_FORMAT", "json")
        .env("IMGATE_LOG", "imgate=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = async || -> serde_json::Value {
        let line =
            tokio::time::timeout(PATIENCE, lines.next_line()).await.unwrap().unwrap().expect("a log line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    };
    let addr = loop {
        let l = next().await;
        if let Some(a) = l["addr"].as_str() {
            break a.to_owned();
        }
    };
    common::tls();
    let h = reqwest::Client::new();
    let given = h
        .get(format!("http://{addr}/nowhere?token=secret-in-query"))
        .header("x-request-id", "proxy-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), 404);
    assert_eq!(given.headers()["x-request-id"], "proxy-7f3a");
    let made = h.get(format!("http://{addr}/healthz")).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    // Each answer is logged with its status, in the request's span: its id, and its path
    // without the query.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let l = next().await;
        if l["message"] == "answered" {
            assert!(!l.to_string().contains("secret-in-query"), "{l}");
            let span = &l["span"];
            seen.push((
                span["request_id"].as_str().unwrap().to_owned(),
                span["path"].clone(),
                l["status"].clone(),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("proxy-7f3a".to_owned(), serde_json::json!("/nowhere"), serde_json::json!(404)),
            (id, serde_json::json!("/healthz"), serde_json::json!(200)),
        ]
    );
}

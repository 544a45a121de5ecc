//! The real binary refuses to start with authentication foot-guns: token mode with a
//! short or empty API key or a short JWT secret, and open mode on a non-loopback address
//! unless the configuration chose it (Redis's protected mode).

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::PATIENCE;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &str = "a-test-secret-of-32-bytes-or-more";
const KEY: &str = "backend-key-1-of-32-characters-or-more";

fn imgate(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imgate"));
    // A directory of its own: no ./imgate.toml but the test's, no IMGATE_* of the caller's.
    cmd.current_dir(dir).arg("serve").arg("--data-dir").arg(dir.join("data"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("IMGATE_")) {
        cmd.env_remove(k);
    }
    cmd
}

/// `imgate serve` with `toml` as its configuration file, expected to exit at once.
fn serve_with(toml: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cmd = imgate(dir.path());
    cmd.arg("--config").arg(&file).args(args).stdin(Stdio::null());
    // A gateway that does start is a failure of this test, which must not hang on it.
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("imgate started with {toml:?} {args:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn check_refused(toml: &str, args: &[&str], says: &[&str]) {
    let out = serve_with(toml, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{toml:?} {args:?}: {stderr}");
    for s in says {
        assert!(stderr.contains(s), "{toml:?} {args:?}: stderr does not say {s:?}: {stderr}");
    }
}

const LOOPBACK: &[&str] = &["--listen", "127.0.0.1:0"];

#[test]
fn token_mode_refuses_weak_keys_and_secrets() {
    let token = |secret: &str, keys: &str| {
        format!("[auth]\nmode = \"token\"\njwt_secret = \"{secret}\"\napi_keys = {keys}\n")
    };
    // The reported foot-guns: an empty key, and a short secret beside a good key.
    check_refused(&token(SECRET, "[\"\"]"), LOOPBACK, &["auth.api_keys", "32"]);
    check_refused(&token("abc", &format!("[\"{KEY}\"]")), LOOPBACK, &["auth.jwt_secret", "32"]);
    // A key of 31 characters, beside a good one; a secret of 31 bytes alone.
    let short_key = &KEY[..31];
    check_refused(
        &token(SECRET, &format!("[\"{KEY}\", \"{short_key}\"]")),
        LOOPBACK,
        &["auth.api_keys", "32"],
    );
    check_refused(&token(&SECRET[..31], "[]"), LOOPBACK, &["auth.jwt_secret", "32"]);
    // Nothing at all to check callers with.
    check_refused(&token("", "[]"), LOOPBACK, &["auth.jwt_secret"]);
    // Neither key nor secret is printed.
    let out = serve_with(&token("abc", &format!("[\"{KEY}\"]")), LOOPBACK);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(KEY));
}

#[test]
fn open_mode_on_a_public_address_must_be_chosen() {
    // The default mode, on every interface: refused.
    check_refused("", &["--listen", "0.0.0.0:0"], &["auth.mode", "0.0.0.0"]);
    check_refused("[hub]\nqueue_capacity = 8\n", &["--listen", "[::]:0"], &["auth.mode"]);
    check_refused("listen = \"0.0.0.0:0\"\n", &[], &["auth.mode"]);
}

/// With `auth.mode = "open"` written, it starts and says loudly what that means.
#[tokio::test]
async fn open_mode_chosen_on_a_public_address_starts_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    std::fs::write(&file, "[auth]\nmode = \"open\"\n").unwrap();
    let mut cmd = tokio::process::Command::from(imgate(dir.path()));
    cmd.arg("--config").arg(&file).args(["--listen", "0.0.0.0:0"]);
    let mut child = cmd
        .env("RUST_LOG", "imgate=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let listening = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("imgate listening");
            log.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await
    .expect("imgate starts");
    // Stop it at once: it listens on every interface.
    child.kill().await.unwrap();
    assert!(listening, "imgate exited: {log:#?}");
    let warning = log.iter().find(|l| l.contains("WARN") && l.contains("auth.mode"));
    let warning = warning.unwrap_or_else(|| panic!("no warning about open mode: {log:#?}"));
    assert!(warning.contains("any user"), "{warning}");
}

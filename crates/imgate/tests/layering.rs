//! ARCHITECTURE.md's layering rules, checked against the code rather than only written:
//! which module of the server may name which (`crate::…` paths), which files may speak
//! axum, and what the two library crates may depend on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level module → the modules it must never name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    // "the store imports nothing from hub, http, ingest or auth" (and holds no WeChat).
    ("store", &["hub", "http", "ingest", "auth", "wechat"]),
    // "the channel does not touch mailboxes: wechat/ imports nothing from store, hub or ingest"
    ("wechat", &["store", "hub", "ingest", "http", "auth"]),
    // "Ingest knows nothing of HTTP, WebSockets or the hub"
    ("ingest", &["http", "hub", "auth"]),
    // Auth decides who is calling; HTTP maps its errors.
    ("auth", &["http", "hub", "store", "ingest", "wechat"]),
    // The hub delivers frames; it knows nothing of routes, credentials or WeChat.
    ("hub", &["http", "auth", "wechat"]),
    // The team inbox owns conversations; it commits frames through the store and knows
    // nothing of routes, sockets, credentials or WeChat's API.
    ("inbox", &["http", "hub", "auth", "wechat", "ingest"]),
    // Configuration is read first and passed down: it depends on nothing.
    ("config", &["http", "hub", "store", "ingest", "auth", "wechat"]),
    // How to reach Redis: made from the configuration alone, for the store, the inbox and
    // the channel alike.
    ("redis_conn", &["http", "hub", "store", "ingest", "auth", "wechat", "inbox"]),
    // The file an operator reads and writes is made from the configuration alone.
    ("config_file", &["http", "hub", "store", "ingest", "auth", "wechat"]),
    // A backup copies files: it needs to know where they are, nothing of what runs on them.
    ("backup", &["http", "hub", "store", "ingest", "auth", "wechat"]),
];

/// Files that may speak axum: the router and responses (`http/`), the WebSocket the
/// connection task drives (`hub/`), the server's entry (`lib.rs`) and the WeChat
/// stand-in, which is a separate server.
fn may_use_axum(rel: &str) -> bool {
    rel.starts_with("http/") || rel.starts_with("hub/") || rel == "lib.rs" || rel == "wechat/standin.rs"
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::NAME` paths a file names, outside comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let name: String =
                rest[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = &rest[i + 7..];
        }
    }
    out
}

fn top_module(rel: &str) -> &str {
    rel.split('/').next().unwrap().trim_end_matches(".rs")
}

#[test]
fn modules_name_only_what_architecture_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(files.len() > 10, "found {} source files under {}", files.len(), root.display());
    let mut broken = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(f).unwrap();
        let module = top_module(&rel);
        if let Some((_, forbidden)) = FORBIDDEN.iter().find(|(m, _)| *m == module) {
            for name in crate_paths(&text) {
                if forbidden.contains(&name.as_str()) {
                    broken.push(format!("{rel} names crate::{name}, which `{module}` must not"));
                }
            }
        }
        if !may_use_axum(&rel) && text.lines().any(|l| l.split("//").next().unwrap_or("").contains("axum::"))
        {
            broken.push(format!("{rel} speaks axum, which only http/, hub/ and lib.rs may"));
        }
    }
    assert!(broken.is_empty(), "layering rules broken:\n  {}", broken.join("\n  "));
}

/// `[dependencies]` names of a crate's manifest.
fn dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
        } else if in_deps && !t.is_empty() && !t.starts_with('#') {
            out.insert(t.split(['=', '.', ' ']).next().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn the_protocol_crate_does_no_io_and_the_wechat_crate_knows_no_server() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let protocol = dependencies(&crates.join("imgate-protocol/Cargo.toml"));
    let allowed: BTreeSet<String> =
        ["serde", "serde_json", "quick-xml", "thiserror", "time"].iter().map(|s| s.to_string()).collect();
    assert!(protocol.is_subset(&allowed), "imgate-protocol depends on {:?}", protocol.difference(&allowed));
    let wechat = dependencies(&crates.join("imgate-wechat/Cargo.toml"));
    assert!(!wechat.contains("imgate"), "imgate-wechat depends on the server");
    assert!(!wechat.contains("axum"), "imgate-wechat speaks HTTP as a server");
}

#[test]
fn the_checker_sees_what_it_checks() {
    // The checker itself must be able to fail: a forbidden path in a line of code is seen,
    // one in a comment is not.
    assert!(crate_paths("use crate::hub::Hub;").contains("hub"));
    assert!(crate_paths("let x = crate::store::StoreError::Closed;").contains("store"));
    assert!(!crate_paths("// crate::hub is not named here").contains("hub"));
}

//! `imgate backup` under load: the copy, served as a data dir of its own, holds every
//! message acknowledged before the backup began, while the server kept accepting.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use parking_lot::Mutex;

const USERS: usize = 8;

/// Every message id in `user`'s mailbox, paging back through history.
async fn ids_of(h: &reqwest::Client, bin: &Binary, user: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut before = String::new();
    loop {
        let url =
            bin.http(&format!("/im_component/wx_official_account/history?userid={user}&limit=200{before}"));
        let page: serde_json::Value = h.get(url).send().await.unwrap().json().await.unwrap();
        let messages = page["data"]["messages"].as_array().unwrap();
        for m in messages {
            ids.insert(m["data"]["id"].as_str().unwrap().to_owned());
        }
        match page["data"]["next_before"].as_u64() {
            Some(b) if !messages.is_empty() => before = format!("&before={b}"),
            _ => return ids,
        }
    }
}

fn backup(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_imgate")).arg("backup").args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_message_acknowledged_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let copy = dir.path().join("copy");
    let bin = Binary::start(&data, &[]).await;
    let acked: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut posters = Vec::new();
    for p in 0..4 {
        let (acked, stop, url) = (acked.clone(), stop.clone(), bin.http("/send?userid=poster"));
        posters.push(tokio::spawn(async move {
            let h = reqwest::Client::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let user = (p + n) % USERS;
                let body = text_to(&format!("u{user}"), &format!("p{p} n{n}"));
                let r =
                    h.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let ack: serde_json::Value = r.json().await.unwrap();
                acked.lock().push((user, ack["data"]["id"].as_str().unwrap().to_owned()));
                n += 1;
            }
        }));
    }
    // Load first, so the backup copies a store being written to.
    tokio::time::timeout(PATIENCE, async {
        while acked.lock().len() < 200 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("200 messages acknowledged");
    let before: Vec<(usize, String)> = acked.lock().clone();
    let (data_s, copy_s) = (data.to_str().unwrap().to_owned(), copy.to_str().unwrap().to_owned());
    let out = tokio::task::spawn_blocking(move || backup(&["--data-dir", &data_s, "--out", &copy_s]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let during = acked.lock().len() - before.len();
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.await.unwrap();
    }
    assert!(during > 0, "the server kept accepting while the backup ran");
    drop(bin);
    // Restore: serve from the copy.
    let restored = Binary::start(&copy, &[]).await;
    let h = reqwest::Client::new();
    let mut missing = Vec::new();
    for u in 0..USERS {
        let ids = ids_of(&h, &restored, &format!("u{u}")).await;
        missing.extend(before.iter().filter(|(user, id)| *user == u && !ids.contains(id)).cloned());
    }
    assert_eq!(missing, vec![], "acknowledged before the backup began, missing from it");
    // A new message after the restore continues each mailbox's seqs.
    let (status, ack) =
        post(&restored.http("/send?userid=poster"), "application/json", text_to("u0", "after")).await;
    assert_eq!(status, 200);
    assert!(ack["data"]["seq"].as_u64().unwrap() > before.iter().filter(|(u, _)| *u == 0).count() as u64);
}

#[test]
fn a_backup_refuses_a_used_directory_and_a_missing_store() {
    let dir = tempfile::tempdir().unwrap();
    let used = dir.path().join("used");
    std::fs::create_dir_all(&used).unwrap();
    std::fs::write(used.join("keep"), "mine").unwrap();
    let empty_data = dir.path().join("nothing");
    let out = backup(&[
        "--data-dir",
        empty_data.to_str().unwrap(),
        "--out",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no imgate store"));
    std::fs::create_dir_all(&empty_data).unwrap();
    std::fs::write(empty_data.join("imgate.sqlite3"), "").unwrap();
    let out = backup(&["--data-dir", empty_data.to_str().unwrap(), "--out", used.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(std::fs::read_to_string(used.join("keep")).unwrap(), "mine");
}

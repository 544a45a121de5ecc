//! The embedded engine's own promises, beyond the shared contract: one process per data
//! dir, a journal that refuses a seq given twice and never drops what it holds, memory
//! bounded however many users appear, a WAL that shrinks after a burst, and readiness that
//! means "a write gets through".

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::store::{msg, msg_sized};
use common::*;
use imgate::config::StoreConfig;
use imgate::store::sqlite::SqliteStore;
use imgate::store::{Appended, DynStore, Fanout, Store};
use imgate_protocol::EncodedMessage;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Nobody;
impl Fanout for Nobody {
    fn committed(&self, _: &str, _: u64, _: &EncodedMessage) {}
}

fn open(dir: &std::path::Path, config: &StoreConfig) -> Arc<SqliteStore> {
    SqliteStore::open(dir, config, Arc::new(Nobody)).unwrap()
}

async fn ids(store: &dyn Store, user: &str) -> Vec<(u64, String)> {
    store
        .read_after(user, 0, 1000, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.seq, s.frame.decode(s.seq).unwrap().data.id))
        .collect()
}

/// Spawn `imgate serve` on `dir`, with its stderr lines collected.
fn serve(dir: &std::path::Path) -> (tokio::process::Child, Arc<parking_lot::Mutex<Vec<String>>>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "imgate=info")
        .env_remove("IMGATE_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let keep = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            keep.lock().push(l);
        }
    });
    (child, lines)
}

/// Wait until a line matching `f` is logged; return it.
async fn logged(lines: &parking_lot::Mutex<Vec<String>>, f: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(l) = lines.lock().iter().find(|l| f(l)) {
            return l.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never logged; got {:?}", lines.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = Binary::start(dir.path(), &[]).await;
    let (mut second, lines) = serve(dir.path());
    let status = tokio::time::timeout(PATIENCE, second.wait()).await.expect("the second exits").unwrap();
    assert_eq!(status.code(), Some(1));
    let why = logged(&lines, |l| l.contains("held by another imgate process")).await;
    assert!(why.contains(&format!("pid {}", first.pid())), "{why}");
    // The first is unharmed and alone: seqs go on from 1.
    for want in 1..=3 {
        let (status, ack) =
            post(&first.http("/send?userid=agent"), "application/json", text_to("u", "m")).await;
        assert_eq!((status, ack["data"]["seq"].as_u64()), (200, Some(want)));
    }
}

#[tokio::test]
async fn the_journal_refuses_a_seq_given_twice() {
    // Two stores on one directory, as two processes without the lock would be.
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default();
    let (a, b) = (open(dir.path(), &config), open(dir.path(), &config));
    assert_eq!(b.append(vec![msg("u", "b1", "x", None)]).await.unwrap()[0].seq, 1);
    assert_eq!(a.append(vec![msg("u", "a1", "x", None)]).await.unwrap()[0].seq, 2);
    // b still believes u's last seq is 1: its seq 2 is refused, not stored beside a's.
    assert!(b.append(vec![msg("u", "b2", "x", None)]).await.is_err());
    assert_eq!(ids(&*a, "u").await, [(1, "b1".into()), (2, "a1".into())]);
}

#[tokio::test]
async fn a_journal_with_a_seq_given_twice_keeps_every_message() {
    // What two processes on one data dir wrote before the lock and the unique index:
    // seqs 1,1,2,2,3,3 for six acknowledged messages.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join("imgate.sqlite3")).unwrap();
        db.execute_batch(
            "CREATE TABLE journal (id INTEGER PRIMARY KEY, user TEXT NOT NULL, seq INTEGER NOT NULL, \
             contact TEXT NOT NULL, created_at INTEGER NOT NULL, dedupe TEXT, msg_id TEXT NOT NULL, \
             frame TEXT NOT NULL);",
        )
        .unwrap();
        for (i, seq) in [1, 1, 2, 2, 3, 3].into_iter().enumerate() {
            let m = msg("u", &format!("m{i}"), "x", None);
            db.execute(
                "INSERT INTO journal (user, seq, contact, created_at, msg_id, frame) VALUES ('u', ?1, 'x', 0, ?2, ?3)",
                rusqlite::params![seq, m.id, m.frame.as_stored()],
            )
            .unwrap();
        }
    }
    let store = open(
        dir.path(),
        &StoreConfig { retention_max_age: Duration::from_secs(1 << 40), ..Default::default() },
    );
    let got = ids(&*store, "u").await;
    let mut kept: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    kept.sort_unstable();
    assert_eq!(kept, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(store.append(vec![msg("u", "next", "x", None)]).await.unwrap()[0].seq, 7);
}

#[tokio::test]
async fn the_index_stays_bounded_and_an_evicted_mailbox_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { index_max_mailboxes: 64, ..StoreConfig::default() };
    let store = open(dir.path(), &config);
    store
        .append(vec![msg("first", "f1", "x", Some("k1")), msg("first", "f2", "y", Some("k2"))])
        .await
        .unwrap();
    store.set_delivered("first", 1).await.unwrap();
    for batch in 0..100 {
        let msgs = (0..50).map(|i| msg(&format!("user{batch}-{i}"), "m", "x", Some("k"))).collect();
        store.append(msgs).await.unwrap();
        assert!(store.cached_mailboxes() <= 64, "{} mailboxes held", store.cached_mailboxes());
    }
    let dynamic: DynStore = store.clone();
    // "first" left memory long ago; it reads back whole.
    assert_eq!(dynamic.last_seq("first").await.unwrap(), 2);
    assert_eq!(dynamic.delivered("first").await.unwrap(), 1);
    let got = dynamic
        .append(vec![msg("first", "f2-retry", "y", Some("k2")), msg("first", "f3", "x", Some("k3"))])
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            Appended { seq: 2, id: "f2".into(), duplicate: true },
            Appended { seq: 3, id: "f3".into(), duplicate: false }
        ]
    );
    assert_eq!(ids(&*dynamic, "first").await, [(1, "f1".into()), (2, "f2".into()), (3, "f3".into())]);
    let history: Vec<u64> =
        dynamic.history("first", Some("x"), None, 10).await.unwrap().into_iter().map(|s| s.seq).collect();
    assert_eq!(history, [3, 1]);
    assert!(store.cached_mailboxes() <= 64);
}

#[tokio::test]
async fn the_wal_shrinks_after_a_burst_that_readers_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreConfig::default());
    store.append(vec![msg("u", "0", "x", None)]).await.unwrap();
    let wal = dir.path().join("imgate.sqlite3-wal");
    // A long read holds its snapshot: no checkpoint can finish, and the WAL grows.
    let reader = rusqlite::Connection::open(dir.path().join("imgate.sqlite3")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader.query_row("SELECT count(*) FROM journal", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    let big = "x".repeat(1 << 20);
    for i in 0..80 {
        store.append(vec![msg_sized("u", &i.to_string(), "x", None, &big)]).await.unwrap();
    }
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(grown > imgate::store::sqlite::WAL_LIMIT, "the burst left a WAL of only {grown} bytes");
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if len <= imgate::store::sqlite::WAL_LIMIT {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the WAL stayed at {len} bytes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.read_after("u", 79, 10, usize::MAX).await.unwrap().len(), 2);
}

/// Makes a file unwritable, even for root, until dropped.
struct Unwritable(std::path::PathBuf);

impl Unwritable {
    fn new(path: std::path::PathBuf) -> Unwritable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        // Root ignores permissions; the immutable flag stops it too (where chattr works).
        let _ = std::process::Command::new("chattr").arg("+i").arg(&path).status();
        Unwritable(path)
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o644));
    }
}

#[tokio::test]
async fn a_read_only_store_is_not_ready_and_says_so_without_flooding_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bin = Binary::start(dir.path(), &[]).await;
        let (status, _) = post(&bin.http("/send?userid=agent"), "application/json", text_to("u", "m")).await;
        assert_eq!(status, 200);
        let pid = bin.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let mut bin = bin;
        tokio::time::timeout(PATIENCE, bin.child.wait()).await.unwrap().unwrap();
    }
    let _ro = Unwritable::new(dir.path().join("imgate.sqlite3"));
    let (child, lines) = serve(dir.path());
    let line = logged(&lines, |l| l.contains("addr=")).await;
    let addr = line.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let url = |p: &str| format!("http://{addr}{p}");
    // Not ready before anything was sent: ready means a write would get through now.
    let status = reqwest::get(url("/readyz")).await.unwrap().status().as_u16();
    assert_eq!(status, 503);
    let (status, _) = post(&url("/send?userid=agent"), "application/json", text_to("u", "m2")).await;
    assert_eq!(status, 503);
    // And it keeps saying no, for two seconds at least (twenty checkpoint attempts).
    for _ in 0..20 {
        let status = reqwest::get(url("/readyz")).await.unwrap().status().as_u16();
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = post(&url("/send?userid=agent"), "application/json", text_to("u", "m3")).await;
    assert_eq!(status, 503);
    drop(child);
    let lines = lines.lock().clone();
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    // The same failure, over and over, is logged once (then once a minute, with a count):
    // one ERROR from the store for twenty probes and two sends, and no line per probe.
    assert_eq!(count("ERROR"), 1, "{lines:#?}");
    assert!(count("checkpoint failed") <= 1, "{lines:#?}");
    assert_eq!(count("request failed status=503"), 2, "{lines:#?}");
}

/// Erasure leaves nothing of what the person said in the database file: the freed pages
/// are overwritten (`secure_delete`), not only unlinked, while a message kept stays.
#[tokio::test]
async fn an_erased_message_leaves_no_trace_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreConfig::default());
    // Large enough to fill pages of its own, so freed pages would keep it whole.
    let secret = format!("my-secret-address-{}", "x".repeat(3000));
    store
        .append(vec![
            msg_sized("agent", "1", "oF", None, &secret),
            msg_sized("agent", "2", "oG", None, "kept-words"),
        ])
        .await
        .unwrap();
    assert_eq!(store.erase("oF").await.unwrap().messages, 1);
    // Close: the WAL is checkpointed into the file and truncated.
    store.close().await;
    drop(store);
    let mut bytes = std::fs::read(dir.path().join("imgate.sqlite3")).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("imgate.sqlite3-wal")) {
        bytes.extend(wal);
    }
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"kept-words"), "the kept message is in the file");
    assert!(!has(b"my-secret-address"), "the erased message is still in the file");
}

//! Memory of the embedded store as distinct recipients grow: appends one message to each
//! of N new users (default 1,000,000) through the real `SqliteStore`, from 64 concurrent
//! senders so that group commit forms batches as it does under load, and prints the
//! process's RSS as it goes. A benchmark, not a test: it prints figures and asserts
//! nothing.
//!
//! `cargo run --release -p imgate --example store_memory -- [N] [DIR]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use imgate::config::StoreConfig;
use imgate::store::sqlite::SqliteStore;
use imgate::store::{Fanout, NewMessage, Store};
use imgate_protocol::{Code, EncodedMessage, MessageData};

// The server's allocator, so that RSS means the same as in `imgate serve`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Nobody;
impl Fanout for Nobody {
    fn committed(&self, _: &str, _: u64, _: &EncodedMessage) {}
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn message(user: String, i: u64) -> NewMessage {
    let id = format!("m{i:016x}");
    let data = MessageData {
        id: id.clone(),
        name: String::new(),
        avatar: String::new(),
        msg_type: "text".into(),
        contact_id: format!("sender{}", i % 100),
        company_id: String::new(),
        send_time: 1,
        msg: serde_json::json!({"content": "hello"}),
        direction: None,
        status: None,
        window: None,
    };
    NewMessage {
        user,
        id: id.clone(),
        contact: format!("sender{}", i % 100),
        dedupe_key: Some(id),
        frame: EncodedMessage::encode(&data, Code::TEXT),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = args.next().map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_owned());
    let config = StoreConfig::default();
    let store = SqliteStore::open(&dir, &config, Arc::new(Nobody)).expect("the store opens");
    let base = rss_mib();
    println!("store_memory: {n} distinct recipients, index_max_mailboxes = {}", config.index_max_mailboxes);
    println!("{:>12} {:>10} {:>12} {:>10} {:>12}", "recipients", "RSS MiB", "+MiB", "msg/s", "in index");
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut mark = n / 10;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, next) = (store.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                store.append(vec![message(format!("recipient-{i}"), i)]).await.expect("append");
            }
        }));
    }
    while mark <= n {
        while next.load(Ordering::Relaxed) < mark.min(n) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let done = next.load(Ordering::Relaxed).min(n);
        let rss = rss_mib();
        println!(
            "{done:>12} {rss:>10.1} {:>12.1} {:>10.0} {:>12}",
            rss - base,
            done as f64 / start.elapsed().as_secs_f64(),
            store.cached_mailboxes()
        );
        mark += (n / 10).max(1);
    }
    for t in tasks {
        t.await.expect("sender");
    }
    // The first recipient left memory long ago: it reads back, and its key still dedupes.
    let back = store.read_after("recipient-0", 0, 10, usize::MAX).await.expect("read back");
    let again = store.append(vec![message("recipient-0".into(), 0)]).await.expect("retry");
    println!(
        "recipient-0 read back: {} message(s); its retry a duplicate: {}; RSS {:.1} MiB (+{:.1})",
        back.len(),
        again[0].duplicate,
        rss_mib(),
        rss_mib() - base
    );
    store.close().await;
}

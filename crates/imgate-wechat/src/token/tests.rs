//! The token cache against a token endpoint on loopback that counts, stalls and refuses
//! on command, and against an in-memory stand-in for the nodes' shared store.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::AtomicUsize;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;

/// Every wait in these tests ends: a hung cache fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy)]
enum Answer {
    Token,
    Refuse,
}

struct Endpoint {
    base: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<StdMutex<Vec<String>>>,
    /// Answers wait for this when `stall` is set.
    release: Arc<Notify>,
}

async fn endpoint(answer: Answer, stall: bool) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(StdMutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let (h, p, r) = (hits.clone(), paths.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let (h, p, r) = (h.clone(), p.clone(), r.clone());
            tokio::spawn(async move {
                // One request per connection (answered with `Connection: close`).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").split('?').next().unwrap().to_owned();
                p.lock().unwrap().push(path);
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                if stall {
                    r.notified().await;
                }
                let body = match answer {
                    Answer::Token => format!(r#"{{"access_token":"T{n}","expires_in":7200}}"#),
                    Answer::Refuse => r#"{"errcode":40013,"errmsg":"invalid appid"}"#.to_owned(),
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    Endpoint { base, hits, paths, release }
}

fn cache(e: &Endpoint, mode: TokenMode, shared: Option<Arc<dyn SharedTokens>>) -> Arc<TokenCache> {
    Arc::new(TokenCache::new(Api::new(&e.base, PATIENCE), "wxapp", "secret", mode, shared))
}

async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("waited too long for {what}"));
}

#[tokio::test]
async fn many_callers_share_one_refresh() {
    let e = endpoint(Answer::Token, true).await;
    let c = cache(&e, TokenMode::Stable, None);
    let callers: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn({
                let c = c.clone();
                async move { c.get().await }
            })
        })
        .collect();
    until("the first fetch", || e.hits.load(Ordering::SeqCst) == 1).await;
    e.release.notify_waiters();
    for t in callers {
        assert_eq!(tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap(), Ok("T1".to_owned()));
    }
    assert_eq!(e.hits.load(Ordering::SeqCst), 1, "one fetch for twenty callers");
    assert_eq!(*e.paths.lock().unwrap(), ["/cgi-bin/stable_token"]);
}

#[tokio::test]
async fn a_refused_refresh_is_shared_not_repeated_per_caller() {
    let e = endpoint(Answer::Refuse, true).await;
    let c = cache(&e, TokenMode::Stable, None);
    let callers: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let c = c.clone();
                async move { c.get().await }
            })
        })
        .collect();
    until("the first fetch", || e.hits.load(Ordering::SeqCst) == 1).await;
    // Let the callers queue behind it before it answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.release.notify_waiters();
    for t in callers {
        let r = tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        assert_eq!(r.unwrap_err().errcode(), Some(40013));
    }
    assert_eq!(e.hits.load(Ordering::SeqCst), 1);
    // A later caller tries again.
    let again = tokio::spawn({
        let c = c.clone();
        async move { c.get().await }
    });
    until("a second fetch", || e.hits.load(Ordering::SeqCst) == 2).await;
    e.release.notify_waiters();
    assert!(tokio::time::timeout(PATIENCE, again).await.unwrap().unwrap().is_err());
}

#[tokio::test]
async fn invalidating_does_not_wait_for_a_refresh_in_flight() {
    let e = endpoint(Answer::Token, true).await;
    let c = cache(&e, TokenMode::Stable, None);
    let refreshing = tokio::spawn({
        let c = c.clone();
        async move { c.get().await }
    });
    until("the fetch", || e.hits.load(Ordering::SeqCst) == 1).await;
    // The fetch is stalled until released; invalidating must not wait for it.
    tokio::time::timeout(PATIENCE, c.invalidate("T0")).await.expect("invalidate returns during a refresh");
    e.release.notify_waiters();
    assert_eq!(tokio::time::timeout(PATIENCE, refreshing).await.unwrap().unwrap(), Ok("T1".to_owned()));
}

#[tokio::test]
async fn legacy_mode_asks_cgi_bin_token() {
    let e = endpoint(Answer::Token, false).await;
    let c = cache(&e, TokenMode::Legacy, None);
    assert_eq!(c.get().await, Ok("T1".to_owned()));
    assert_eq!(c.get().await, Ok("T1".to_owned()), "cached");
    assert_eq!(*e.paths.lock().unwrap(), ["/cgi-bin/token"]);
}

/// The nodes' shared store, in memory.
#[derive(Default)]
struct Peers {
    token: StdMutex<Option<String>>,
    locked: StdMutex<bool>,
}

#[async_trait::async_trait]
impl SharedTokens for Peers {
    async fn get(&self, _: &str) -> Option<(String, u64)> {
        self.token.lock().unwrap().clone().map(|t| (t, 3600))
    }
    async fn lock(&self, _: &str) -> bool {
        let mut l = self.locked.lock().unwrap();
        !std::mem::replace(&mut *l, true)
    }
    async fn put(&self, _: &str, token: &str, _: u64) {
        *self.token.lock().unwrap() = Some(token.to_owned());
        *self.locked.lock().unwrap() = false;
    }
    async fn unlock(&self, _: &str) {
        *self.locked.lock().unwrap() = false;
    }
    async fn forget(&self, _: &str, token: &str) {
        let mut t = self.token.lock().unwrap();
        if t.as_deref() == Some(token) {
            *t = None;
        }
    }
}

#[tokio::test]
async fn a_failed_refresh_releases_the_nodes_lock_at_once() {
    let refusing = endpoint(Answer::Refuse, false).await;
    let peers = Arc::new(Peers::default());
    let a = cache(&refusing, TokenMode::Stable, Some(peers.clone()));
    assert_eq!(a.get().await.unwrap_err().errcode(), Some(40013));
    assert!(!*peers.locked.lock().unwrap(), "the lock is released after the failure");
    // So another node refreshes at once instead of waiting out the lock.
    let working = endpoint(Answer::Token, false).await;
    let b = cache(&working, TokenMode::Stable, Some(peers.clone()));
    assert_eq!(b.get().await, Ok("T1".to_owned()));
    assert_eq!(peers.token.lock().unwrap().as_deref(), Some("T1"), "shared with every node");
}

#[tokio::test]
async fn a_node_takes_the_token_another_node_shared() {
    let e = endpoint(Answer::Token, false).await;
    let peers = Arc::new(Peers::default());
    *peers.token.lock().unwrap() = Some("FROM-PEER".into());
    let c = cache(&e, TokenMode::Stable, Some(peers));
    assert_eq!(c.get().await, Ok("FROM-PEER".to_owned()));
    assert_eq!(e.hits.load(Ordering::SeqCst), 0, "no fetch of its own");
}

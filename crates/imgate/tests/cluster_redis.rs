//! Several imgate nodes, separate processes, sharing one real redis-server: any node
//! takes any connection and any post, and together they keep the single node's promises.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite;

async fn node(dir: &Path, redis: &Redis) -> Binary {
    node_at(dir, &redis.url()).await
}

async fn node_at(dir: &Path, url: &str) -> Binary {
    Binary::start(
        dir,
        &[
            ("IMGATE_STORE__ENGINE", "redis"),
            ("IMGATE_STORE__REDIS_URL", url),
            ("IMGATE_HUB__HEARTBEAT_INTERVAL", "500ms"),
            ("IMGATE_HUB__IDLE_TIMEOUT", "60s"),
        ],
    )
    .await
}

/// Two nodes on `redis`, each with its own data directory (kept while the tuple lives),
/// both ready.
async fn two_nodes(redis: &Redis) -> (Binary, Binary, [tempfile::TempDir; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(dirs[0].path(), redis).await;
    let b = node(dirs[1].path(), redis).await;
    ready(&a, true).await;
    ready(&b, true).await;
    (a, b, dirs)
}

/// Wait until a node's `/readyz` says `want`.
async fn ready(bin: &Binary, want: bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ok = reqwest::get(bin.http("/readyz")).await.map(|r| r.status() == 200).unwrap_or(false);
        if ok == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never became {want}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn posts_to_any_node_reach_connections_on_every_node_in_commit_order() {
    let redis = Redis::start();
    let (a, b, _dirs) = two_nodes(&redis).await;
    let mut on_b = Client::connect(&b.ws("/?userid=u")).await;
    let mut on_a = Client::connect(&a.ws("/?userid=u")).await;
    // Two posters, one per node, at the same time.
    let mut posters = Vec::new();
    for (name, url) in [("pa", a.http("/send?userid=pa")), ("pb", b.http("/send?userid=pb"))] {
        posters.push(tokio::spawn(async move {
            for i in 0..150 {
                let (status, _) = post(&url, "application/json", text_to("u", &format!("{name}-{i}"))).await;
                assert_eq!(status, 200);
            }
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    for c in [&mut on_b, &mut on_a] {
        let frames = c.frames(300).await;
        let seqs: Vec<u64> = frames.iter().map(seq).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "every frame once, in commit order");
        for name in ["pa", "pb"] {
            let mine: Vec<String> =
                frames.iter().map(|f| content(f).to_owned()).filter(|t| t.starts_with(name)).collect();
            let want: Vec<String> = (0..150).map(|i| format!("{name}-{i}")).collect();
            assert_eq!(mine, want, "each poster's messages in the order it posted");
        }
    }
    // A duplicate is recognised whichever node it comes through.
    let body = r#"{"data":{"id":"once","msg_type":"text","contact_id":"u","msg":{"content":"x"}}}"#;
    let (_, first) = post(&a.http("/send?userid=pa"), "application/json", body).await;
    let (_, again) = post(&b.http("/send?userid=pa"), "application/json", body).await;
    assert_eq!(again["data"]["duplicate"], true);
    assert_eq!(again["data"]["seq"], first["data"]["seq"]);
}

#[tokio::test]
async fn a_node_killed_with_kill_9_loses_nothing_acknowledged() {
    let redis = Redis::start();
    let (a, b, _dirs) = two_nodes(&redis).await;
    a_killed_node_loses_nothing_acknowledged(a, b).await;
}

#[tokio::test]
async fn redis_down_means_errors_not_false_acks_and_delivery_resumes_by_itself() {
    let mut redis = Redis::start();
    let (a, b, _dirs) = two_nodes(&redis).await;
    let mut c = Client::connect(&a.ws("/?userid=u")).await;
    let url = b.http("/send?userid=p");
    let mut acked = Vec::new();
    let send = |i: u32| {
        let url = url.clone();
        async move { post(&url, "application/json", text_to("u", &format!("m{i}"))).await }
    };
    for i in 0..20 {
        let (status, v) = send(i).await;
        assert_eq!(status, 200);
        acked.push(v["data"]["seq"].as_u64().unwrap());
    }
    redis.stop();
    ready(&a, false).await;
    ready(&b, false).await;
    // While it is down: a clear error, never a 2xx.
    for i in 20..30 {
        let (status, v) = send(i).await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["result"]["code"], -1);
        assert!(v["result"]["message"].as_str().unwrap().contains("not confirmed"), "{v}");
    }
    // The live socket stays open: what was delivered before, then heartbeats.
    let mut seen = BTreeSet::new();
    let mut beats = 0;
    while beats < 3 {
        let f = c.any_frame().await;
        if f["result"]["code"] == 101 {
            beats += 1;
        } else {
            assert!(seen.insert(seq(&f)), "nothing twice");
        }
    }
    redis.restart();
    ready(&a, true).await;
    ready(&b, true).await;
    // Delivery resumes on the same socket, without restarting imgate or reconnecting.
    for i in 30..40 {
        let (status, v) = send(i).await;
        assert_eq!(status, 200, "{v}");
        acked.push(v["data"]["seq"].as_u64().unwrap());
    }
    while seen.len() < acked.len() {
        let f: Value = c.frame().await;
        assert!(seen.insert(seq(&f)), "nothing twice");
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), acked, "every acknowledged message, in order");
}

#[tokio::test]
async fn a_node_that_lost_its_subscription_catches_its_connections_up() {
    let redis = Redis::start();
    let (a, b, _dirs) = two_nodes(&redis).await;
    let mut c = Client::connect(&a.ws("/?userid=u")).await;
    let url = b.http("/send?userid=p");
    let (_, first) = post(&url, "application/json", text_to("u", "before")).await;
    assert_eq!(content(&c.frame().await), "before");
    // Every subscription dropped at once; what is published until the nodes resubscribe
    // reaches nobody through pub/sub.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    assert!(killed >= 2, "both nodes were subscribed ({killed})");
    let mut acked = vec![first["data"]["seq"].as_u64().unwrap()];
    for i in 0..20 {
        let (status, v) = post(&url, "application/json", text_to("u", &format!("during {i}"))).await;
        assert_eq!(status, 200);
        acked.push(v["data"]["seq"].as_u64().unwrap());
    }
    // The same socket gets every one of them, once, in order.
    let mut got = vec![acked[0]];
    while got.len() < acked.len() {
        got.push(seq(&c.frame().await));
    }
    assert_eq!(got, acked);
}

/// A TCP proxy in front of Redis that can make the pub/sub connections it carries go
/// quiet: from then on it forwards nothing on them, either way, and closes nothing, as a
/// half-dead network path (a NAT that forgot the flow, a hung middlebox) would. Other
/// connections, and those opened later, pass untouched.
struct QuietProxy {
    port: u16,
    links: Arc<parking_lot::Mutex<Vec<Arc<Link>>>>,
}

#[derive(Default)]
struct Link {
    /// The client sent SUBSCRIBE on it.
    subscriber: AtomicBool,
    quiet: AtomicBool,
}

impl QuietProxy {
    async fn start(upstream: u16) -> QuietProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<parking_lot::Mutex<Vec<Arc<Link>>>> = Arc::default();
        let all = links.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { continue };
                let link = Arc::new(Link::default());
                all.lock().push(link.clone());
                let ((dr, dw), (ur, uw)) = (down.into_split(), up.into_split());
                tokio::spawn(pump(dr, uw, link.clone(), true));
                tokio::spawn(pump(ur, dw, link, false));
            }
        });
        QuietProxy { port, links }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Connections that have subscribed, ever.
    fn subscriptions(&self) -> usize {
        self.links.lock().iter().filter(|l| l.subscriber.load(Ordering::SeqCst)).count()
    }

    /// Make every subscribed connection quiet; how many there were.
    fn silence_subscriptions(&self) -> usize {
        let links = self.links.lock();
        let subs: Vec<_> = links.iter().filter(|l| l.subscriber.load(Ordering::SeqCst)).collect();
        for l in &subs {
            l.quiet.store(true, Ordering::SeqCst);
        }
        subs.len()
    }
}

/// Copy bytes one way until either side closes; on a quiet link, read and drop them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
    from_client: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = &buf[..n];
        if from_client && bytes.windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
            link.subscriber.store(true, Ordering::SeqCst);
        }
        if link.quiet.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(bytes).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The subscription path goes quiet without closing (no error, no EOF): the node notices
/// the silence of its own pings, subscribes again and catches its connections up from the
/// mailboxes. Every acknowledged message reaches the live socket exactly once, in order:
/// those committed while it was deaf, and one published after the recovery.
#[tokio::test]
async fn a_subscription_that_goes_quiet_is_replaced_and_nothing_acknowledged_is_lost() {
    // The node calls a subscription dead after 7 s without a message (its pings come every
    // 2 s): give the whole recovery more than ten times that before failing.
    const RECOVERY: std::time::Duration = std::time::Duration::from_secs(90);
    let redis = Redis::start();
    let proxy = QuietProxy::start(redis.port).await;
    let dir = tempfile::tempdir().unwrap();
    let a = node_at(dir.path(), &proxy.url()).await;
    ready(&a, true).await;
    let mut c = Client::connect(&a.ws("/?userid=u")).await;
    let url = a.http("/send?userid=p");
    let mut acked = Vec::new();
    let mut send = async |text: &str| {
        let (status, v) = post(&url, "application/json", text_to("u", text)).await;
        assert_eq!(status, 200, "{v}");
        acked.push(v["data"]["seq"].as_u64().unwrap());
    };
    send("before").await;
    assert_eq!(content(&c.frame().await), "before");
    assert_eq!(proxy.subscriptions(), 1, "one subscription, through the proxy");
    assert_eq!(proxy.silence_subscriptions(), 1);
    // Commands have connections of their own: sends are still accepted, and stored.
    for i in 0..5 {
        send(&format!("while quiet {i}")).await;
    }
    // The node gives up on the quiet connection and subscribes on a new one.
    let deadline = tokio::time::Instant::now() + RECOVERY;
    while proxy.subscriptions() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the node never noticed its subscription went quiet");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ready(&a, true).await;
    send("after").await;
    send("end").await;
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("every acknowledged message arrives")
            .expect("the socket stays open")
            .expect("the socket stays healthy");
        let tungstenite::Message::Text(t) = m else { continue };
        let f: Value = serde_json::from_str(&t).unwrap();
        if f["result"]["code"] == 101 {
            continue;
        }
        got.push(seq(&f));
        if content(&f) == "end" {
            break;
        }
    }
    assert_eq!(got, acked[1..], "each acknowledged message once, in commit order");
}

/// How many subscribers Redis counts on `user`'s channel.
async fn listeners(redis: &Redis, user: &str) -> i64 {
    let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let n: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("imgate:u:{}:{user}", user.len()))
        .query_async(&mut c)
        .await
        .unwrap();
    n[0].1
}

/// A node hears only its own users (#12): per-user channels, subscribed while the node
/// holds a connection of the user. Shown by each node's own count of what it heard.
#[tokio::test]
async fn a_node_hears_none_of_the_messages_of_users_it_does_not_hold() {
    let redis = Redis::start();
    let (a, b, _dirs) = two_nodes(&redis).await;
    let mut u1 = Client::connect(&a.ws("/?userid=u1")).await;
    let mut u2 = Client::connect(&b.ws("/?userid=u2")).await;
    let mut u3 = Client::connect(&a.ws("/?userid=u3")).await;
    let send = |bin: &Binary, to: &str, text: &str| {
        let (url, body) = (bin.http("/send?userid=p"), text_to(to, text));
        async move { assert_eq!(post(&url, "application/json", body).await.0, 200) }
    };
    // Someone connected nowhere, then u1 (held by a) through b, u2 (held by b) through a.
    for i in 0..4 {
        send(&a, "nobody", &format!("n{i}")).await;
    }
    for i in 0..5 {
        send(&b, "u1", &format!("a{i}")).await;
    }
    for i in 0..3 {
        send(&a, "u2", &format!("b{i}")).await;
    }
    for i in 0..5 {
        assert_eq!(u1.frame().await["data"]["msg"]["content"], format!("a{i}"));
    }
    for i in 0..3 {
        assert_eq!(u2.frame().await["data"]["msg"]["content"], format!("b{i}"));
    }
    // Each node heard its own users' messages, and no other (a channel carries its
    // messages in order: what a node heard of "nobody" came before the last of its own).
    assert_eq!((heard(&a).await, heard(&b).await), (5.0, 3.0));
    // u1's only connection closes: a stops listening for u1.
    drop(u1);
    eventually("a still listens for u1 after its connection closed", || async {
        (listeners(&redis, "u1").await == 0).then_some(())
    })
    .await;
    assert_eq!(listeners(&redis, "u3").await, 1, "a listens for u3, which it still holds");
    send(&b, "u1", "unheard").await;
    send(&b, "u3", "heard").await;
    assert_eq!(u3.frame().await["data"]["msg"]["content"], "heard");
    assert_eq!(heard(&a).await, 6.0, "a heard u3's message, not u1's");
    // u1 is still reachable: its mailbox has it for its next connection, on any node.
    let mut again = Client::connect(&b.ws("/?userid=u1&since=5")).await;
    assert_eq!(again.frame().await["data"]["msg"]["content"], "unheard");
}

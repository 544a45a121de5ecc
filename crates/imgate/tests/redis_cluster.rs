//! `store.redis_mode = "cluster"`: imgate nodes (the real binary) on a Redis Cluster of
//! this test's own, on loopback. Posts to any node reach connections on every node in
//! order; a node hears only the users it holds (sharded channels), shown by its metric; a
//! node killed with kill -9 loses nothing acknowledged; and when a master dies and its
//! replica is promoted, nothing acknowledged and replicated (`WAIT`) is lost and delivery
//! resumes by itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A failover takes the cluster's node timeout (1 s) plus an election: seconds. This
/// bounds the wait generously for a loaded machine; it is not a measure.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

async fn node(dir: &Path, cluster: &RedisCluster) -> Binary {
    let urls = cluster.urls_env();
    let bin = Binary::start(
        dir,
        &[
            ("IMGATE_STORE__ENGINE", "redis"),
            ("IMGATE_STORE__REDIS_MODE", "cluster"),
            ("IMGATE_STORE__REDIS_URLS", &urls),
            ("IMGATE_HUB__HEARTBEAT_INTERVAL", "500ms"),
            ("IMGATE_HUB__IDLE_TIMEOUT", "60s"),
        ],
    )
    .await;
    until("the node never became ready", PATIENCE, async || is_ready(&bin).await).await;
    bin
}

/// `user`'s sharded channel, and the master whose slot holds it.
fn channel(cluster: &RedisCluster, user: &str) -> (String, u16) {
    let ch = format!("imgate:u:{{{}:{user}}}", user.len());
    let at = cluster.masters[cluster.master_of(&ch)];
    (ch, at)
}

/// How many subscribers the shard counts on `user`'s channel.
fn listeners(cluster: &RedisCluster, user: &str) -> i64 {
    let (ch, at) = channel(cluster, user);
    let out = cluster.cli(at, &["pubsub", "shardnumsub", &ch]);
    out.lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("shardnumsub: {out:?}"))
}

#[tokio::test]
async fn posts_to_any_node_reach_connections_on_every_node_in_commit_order() {
    let cluster = RedisCluster::start(3, 0);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(dirs[0].path(), &cluster).await;
    let b = node(dirs[1].path(), &cluster).await;
    let mut on_b = Client::connect(&b.ws("/?userid=u")).await;
    let mut on_a = Client::connect(&a.ws("/?userid=u")).await;
    // Two posters, one per node, at the same time.
    let mut posters = Vec::new();
    for (name, url) in [("pa", a.http("/send?userid=pa")), ("pb", b.http("/send?userid=pb"))] {
        posters.push(tokio::spawn(async move {
            for i in 0..100 {
                let (status, v) = post(&url, "application/json", text_to("u", &format!("{name}-{i}"))).await;
                assert_eq!(status, 200, "{v}");
            }
        }));
    }
    for p in posters {
        p.await.unwrap();
    }
    for c in [&mut on_b, &mut on_a] {
        let frames = c.frames(200).await;
        let seqs: Vec<u64> = frames.iter().map(seq).collect();
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "every frame once, in commit order");
        for name in ["pa", "pb"] {
            let mine: Vec<String> =
                frames.iter().map(|f| content(f).to_owned()).filter(|t| t.starts_with(name)).collect();
            let want: Vec<String> = (0..100).map(|i| format!("{name}-{i}")).collect();
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

/// A node hears only its own users (#12): sharded channels, subscribed while the node
/// holds a connection of the user. Shown by each node's own count of what it heard.
#[tokio::test]
async fn a_node_hears_none_of_the_messages_of_users_it_does_not_hold() {
    let cluster = RedisCluster::start(3, 0);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(dirs[0].path(), &cluster).await;
    let b = node(dirs[1].path(), &cluster).await;
    let mut u1 = Client::connect(&a.ws("/?userid=u1")).await;
    let mut u2 = Client::connect(&b.ws("/?userid=u2")).await;
    let mut u3 = Client::connect(&a.ws("/?userid=u3")).await;
    let send = |bin: &Binary, to: &str, text: &str| {
        let (url, body) = (bin.http("/send?userid=p"), text_to(to, text));
        async move { assert_eq!(post(&url, "application/json", body).await.0, 200) }
    };
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
    // Channels of several shards: what a node heard of others would have come before its
    // own users' last message only on the same shard, so wait for the sentinel-free
    // count to settle by sending one more to each held user, last.
    send(&a, "u3", "c0").await;
    assert_eq!(u3.frame().await["data"]["msg"]["content"], "c0");
    assert_eq!((heard(&a).await, heard(&b).await), (6.0, 3.0), "each node heard its own users' only");
    drop(u1);
    until("a still listens for u1 after its connection closed", PATIENCE, async || {
        listeners(&cluster, "u1") == 0
    })
    .await;
    assert_eq!(listeners(&cluster, "u3"), 1, "a listens for u3, which it still holds");
    send(&b, "u1", "unheard").await;
    send(&b, "u3", "heard").await;
    assert_eq!(u3.frame().await["data"]["msg"]["content"], "heard");
    assert_eq!(heard(&a).await, 7.0, "a heard u3's message, not u1's");
    let mut again = Client::connect(&b.ws("/?userid=u1&since=5")).await;
    assert_eq!(again.frame().await["data"]["msg"]["content"], "unheard");
}

#[tokio::test]
async fn a_node_killed_with_kill_9_loses_nothing_acknowledged() {
    let cluster = RedisCluster::start(3, 0);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(dirs[0].path(), &cluster).await;
    let b = node(dirs[1].path(), &cluster).await;
    a_killed_node_loses_nothing_acknowledged(a, b).await;
}

/// The master holding a user's mailbox dies (kill -9); the cluster promotes its replica.
/// Sends meanwhile are refused, not acknowledged; then they go through again by
/// themselves, the connection opened before gets them live, and the whole mailbox, as far
/// as it was replicated, is there.
#[tokio::test]
async fn a_promoted_replica_takes_over_and_nothing_replicated_is_lost() {
    let mut cluster = RedisCluster::start(3, 1);
    let dir = tempfile::tempdir().unwrap();
    let bin = node(dir.path(), &cluster).await;
    let (_, master) = channel(&cluster, "u");
    let mut live = Client::connect(&bin.ws("/?userid=u")).await;
    let send = bin.http("/send?userid=p");
    for i in 0..20 {
        let (status, v) = post(&send, "application/json", text_to("u", &format!("m{i}"))).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["seq"], i + 1);
    }
    let seqs: Vec<u64> = live.frames(20).await.iter().map(seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Everything acknowledged so far is on the replica too: this is what a failover keeps.
    assert_eq!(
        cluster.cli(master, &["wait", "1", "5000"]).trim(),
        "1",
        "the replica acknowledged the writes"
    );

    cluster.kill9(master);
    // Sends until one is taken again: each is refused (503) or, once the replica is
    // master, acknowledged; none is acknowledged and then lost.
    let mut want: Vec<(u64, String)> = (0..20).map(|i| (i + 1, format!("m{i}"))).collect();
    let mut refused = 0;
    let mut n = 0;
    until("sends were never taken again after the failover", FAILOVER_PATIENCE, async || {
        let text = format!("after{n}");
        n += 1;
        let (status, v) = post(&send, "application/json", text_to("u", &text)).await;
        match status {
            200 => {
                // Past any seq the dead master can have handed out (seq safety).
                let s = v["data"]["seq"].as_u64().unwrap();
                let before = want.last().unwrap().0;
                assert!(s > before + 1_000_000, "seqs jump after a failover: {s} after {before}");
                want.push((s, text));
                true
            }
            503 => {
                refused += 1;
                false
            }
            other => panic!("a send during the failover got {other}: {v}"),
        }
    })
    .await;
    eprintln!("failover: {refused} sends refused before one was taken");
    assert!(refused > 0, "the master's death went unnoticed");
    // The connection opened before the failover gets it live.
    let live_after: Vec<(u64, String)> =
        live.frames(want.len() - 20).await.iter().map(|f| (seq(f), content(f).to_owned())).collect();
    assert_eq!(live_after, want[20..]);
    // Nothing acknowledged was lost: the whole mailbox replays from the new master.
    let mut replay = Client::connect(&bin.ws("/?userid=u&since=0")).await;
    let got: Vec<(u64, String)> =
        replay.frames(want.len()).await.iter().map(|f| (seq(f), content(f).to_owned())).collect();
    assert_eq!(got, want);
}

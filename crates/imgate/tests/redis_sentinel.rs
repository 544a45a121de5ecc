//! `store.redis_mode = "sentinel"`: a real master, its replica and a sentinel on loopback.
//! imgate finds the master through the sentinel; when the master dies (kill -9) and the
//! sentinel promotes the replica, the node becomes ready again by itself, takes posts
//! and delivers them live, and nothing acknowledged and replicated (`WAIT`) is lost.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

/// A failover takes the sentinel's down-after (1 s) plus an election and a promotion:
/// seconds. This bounds the wait generously for a loaded machine; it is not a measure.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server (or sentinel) process of this test's own, killed when dropped.
struct Proc {
    port: u16,
    child: Child,
}

impl Proc {
    fn start(port: u16, args: &[&str]) -> Proc {
        Proc { port, child: redis_server(port, None, args) }
    }

    fn server(port: u16, dir: &Path, extra: &[&str]) -> Proc {
        let p = port.to_string();
        let mut args = vec!["--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        args.extend(["--dir", dir.to_str().unwrap()]);
        args.extend(extra);
        Proc::start(port, &args)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `redis-cli -p PORT ARGS...` (as `auth`'s password if given), its output.
async fn cli_as(auth: Option<&str>, port: u16, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if let Some(pw) = auth {
        cmd.args(["--no-auth-warning", "-a", pw]);
    }
    let out = cmd.args(args).output().await.expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn cli(port: u16, args: &[&str]) -> String {
    cli_as(None, port, args).await
}

/// A master, its replica and one sentinel watching them as `mymaster`, on loopback.
/// With `passwords`, the data nodes take the first (`requirepass`) and the sentinel the
/// second.
struct Topology {
    master: Proc,
    replica: Proc,
    sentinel: Proc,
    _dir: tempfile::TempDir,
}

impl Topology {
    async fn start(passwords: Option<(&str, &str)>) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let (m, r, s) = (free_port(), free_port(), free_port());
        let (md, rd) = (dir.path().join("m"), dir.path().join("r"));
        std::fs::create_dir_all(&md).unwrap();
        std::fs::create_dir_all(&rd).unwrap();
        let data_pw = passwords.map(|p| p.0);
        let auth: Vec<&str> = match data_pw {
            Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
            None => vec![],
        };
        let master = Proc::server(m, &md, &auth);
        let replica_of = m.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &replica_of];
        args.extend(&auth);
        let replica = Proc::server(r, &rd, &args);
        until("the replica never synced", PATIENCE, async || {
            cli_as(data_pw, r, &["info", "replication"]).await.contains("master_link_status:up")
        })
        .await;
        // And the master lists it, online: that list is what the sentinel reads.
        until("the master never listed its replica", PATIENCE, async || {
            let info = cli_as(data_pw, m, &["info", "replication"]).await;
            info.contains(&format!("port={r},state=online"))
        })
        .await;
        // The sentinel starts after the replica is linked, so that its first look at the
        // master already lists the replica (it looks again only every 10 s).
        let mut conf = format!(
            "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {m} 1\n\
             sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
            dir.path().display()
        );
        if let Some((data, sentinel)) = passwords {
            conf.push_str(&format!("sentinel auth-pass mymaster {data}\nrequirepass {sentinel}\n"));
        }
        let path = dir.path().join("sentinel.conf");
        std::fs::write(&path, conf).unwrap();
        let sentinel = Proc::start(s, &[path.to_str().unwrap(), "--sentinel"]);
        let sentinel_pw = passwords.map(|p| p.1);
        // A sentinel that missed it at its first look sees it at its next, 10 s later.
        until("the sentinel never saw the replica", FAILOVER_PATIENCE, async || {
            cli_as(sentinel_pw, s, &["sentinel", "replicas", "mymaster"]).await.contains(&r.to_string())
        })
        .await;
        Topology { master, replica, sentinel, _dir: dir }
    }
}

async fn node(data: &Path, sentinels: &str, master: &str) -> Binary {
    Binary::start(
        data,
        &[
            ("IMGATE_STORE__ENGINE", "redis"),
            ("IMGATE_STORE__REDIS_MODE", "sentinel"),
            ("IMGATE_STORE__REDIS_URLS", sentinels),
            ("IMGATE_STORE__REDIS_SENTINEL_MASTER", master),
            ("IMGATE_HUB__HEARTBEAT_INTERVAL", "500ms"),
        ],
    )
    .await
}

#[tokio::test]
async fn a_promoted_replica_takes_over_and_nothing_replicated_is_lost() {
    let mut t = Topology::start(None).await;
    let (m, r, s) = (t.master.port, t.replica.port, t.sentinel.port);
    let data = tempfile::tempdir().unwrap();
    let node = node(data.path(), &format!("[\"redis://127.0.0.1:{s}\"]"), "mymaster").await;
    until("the node never became ready", PATIENCE, async || is_ready(&node).await).await;
    let mut live = Client::connect(&node.ws("/?userid=u")).await;
    let send = node.http("/send?userid=p");
    for i in 0..20 {
        let (status, v) = post(&send, "application/json", text_to("u", &format!("m{i}"))).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["seq"], i + 1);
    }
    let seqs: Vec<u64> = live.frames(20).await.iter().map(seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Everything acknowledged so far is on the replica too: this is what a failover keeps.
    assert_eq!(cli(m, &["wait", "1", "5000"]).await.trim(), "1", "the replica acknowledged the writes");

    t.master.kill9();
    let killed = Instant::now();
    until("the node still said ready with its master dead", PATIENCE, async || !is_ready(&node).await).await;
    let promoted = r.to_string();
    // Meanwhile a send is refused, not acknowledged: nothing is committed anywhere (unless,
    // on a slow machine, the promotion already happened: then it went to the new master).
    let (during, v) = post(&send, "application/json", text_to("u", "during")).await;
    let early = cli(s, &["sentinel", "get-master-addr-by-name", "mymaster"]).await.contains(&promoted);
    assert!(during == 503 || (during == 200 && early), "{during} {v}");
    let mut want: Vec<(u64, String)> = (0..20).map(|i| (i + 1, format!("m{i}"))).collect();
    if during == 200 {
        // On the new master: past every seq the old one handed out (seq safety).
        let s = v["data"]["seq"].as_u64().unwrap();
        assert!(s > 20, "{v}");
        want.push((s, "during".to_owned()));
    }
    until("the sentinel never promoted the replica", FAILOVER_PATIENCE, async || {
        cli(s, &["sentinel", "get-master-addr-by-name", "mymaster"]).await.contains(&promoted)
    })
    .await;
    let switched = killed.elapsed();
    until("the node never became ready again", FAILOVER_PATIENCE, async || is_ready(&node).await).await;
    let ready_again = killed.elapsed();
    eprintln!(
        "failover: a send meanwhile got {during}; the sentinel switched after {switched:?}; the node was ready after {ready_again:?}"
    );

    // A new post goes to the new master, and the connection opened before the failover
    // gets it live (the node caught it up when it resubscribed; it had missed nothing).
    let (status, v) = post(&send, "application/json", text_to("u", "after")).await;
    assert_eq!(status, 200, "{v}");
    // The mailbox was last written under the old master: its seqs jump past any the old
    // master can have handed out, so a seq it acknowledged and lost is never reused.
    let next = v["data"]["seq"].as_u64().unwrap();
    let before = want.last().unwrap().0;
    assert!(next > before + 1_000_000, "seqs jump after a failover: {next} after {before}");
    want.push((next, "after".to_owned()));
    let live_after: Vec<(u64, String)> =
        live.frames(want.len() - 20).await.iter().map(|f| (seq(f), content(f).to_owned())).collect();
    assert_eq!(live_after, want[20..]);

    // Nothing acknowledged was lost: the whole mailbox replays from the new master.
    let mut replay = Client::connect(&node.ws("/?userid=u&since=0")).await;
    let frames = replay.frames(want.len()).await;
    let got: Vec<(u64, String)> = frames.iter().map(|f| (seq(f), content(f).to_owned())).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_sentinels_and_the_master_may_have_passwords_of_their_own() {
    let t = Topology::start(Some(("data-pw", "sentinel-pw"))).await;
    let data = tempfile::tempdir().unwrap();
    let sentinels = format!("[\"redis://:sentinel-pw@127.0.0.1:{}\"]", t.sentinel.port);
    let node = node(data.path(), &sentinels, "redis://:data-pw@mymaster").await;
    until("the node never became ready", PATIENCE, async || is_ready(&node).await).await;
    let mut c = Client::connect(&node.ws("/?userid=u")).await;
    let (status, v) = post(&node.http("/send?userid=p"), "application/json", text_to("u", "hi")).await;
    assert_eq!(status, 200, "{v}");
    let f = c.frame().await;
    assert_eq!((seq(&f), content(&f)), (1, "hi"));
    // It went to the master, through the master's password.
    let on_master = cli_as(Some("data-pw"), t.master.port, &["dbsize"]).await;
    assert_ne!(on_master.trim(), "0");
}

#[tokio::test]
async fn after_a_planned_failover_sends_go_to_the_new_master_by_themselves() {
    let t = Topology::start(None).await;
    let (m, r, s) = (t.master.port, t.replica.port, t.sentinel.port);
    let data = tempfile::tempdir().unwrap();
    let node = node(data.path(), &format!("[\"redis://127.0.0.1:{s}\"]"), "mymaster").await;
    until("the node never became ready", PATIENCE, async || is_ready(&node).await).await;
    let mut live = Client::connect(&node.ws("/?userid=u")).await;
    let send = node.http("/send?userid=p");
    let (status, v) = post(&send, "application/json", text_to("u", "before")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(cli(m, &["wait", "1", "5000"]).await.trim(), "1");

    // The old master lives on, as a replica of the new one (it would refuse writes:
    // READONLY).
    // The sentinel takes a replica as promotable only once it has its recent INFO (asked
    // every 10 s): until then it answers NOGOODSLAVE, and asking again is safe.
    until("the sentinel never took the failover", FAILOVER_PATIENCE, async || {
        let answer = cli(s, &["sentinel", "failover", "mymaster"]).await;
        let answer = answer.trim();
        assert!(answer == "OK" || answer.starts_with("NOGOODSLAVE"), "sentinel failover: {answer}");
        answer == "OK"
    })
    .await;
    let promoted = r.to_string();
    until("the sentinel never promoted the replica", FAILOVER_PATIENCE, async || {
        cli(s, &["sentinel", "get-master-addr-by-name", "mymaster"]).await.contains(&promoted)
    })
    .await;
    until("the old master never became a replica", FAILOVER_PATIENCE, async || {
        cli(m, &["info", "replication"]).await.contains("role:slave")
    })
    .await;
    // A send may meet the demoted master once (503); the next goes to the new one.
    let deadline = tokio::time::Instant::now() + FAILOVER_PATIENCE;
    let mut refused = 0;
    let seq_after = loop {
        let (status, v) = post(&send, "application/json", text_to("u", "after")).await;
        if status == 200 {
            break v["data"]["seq"].as_u64().unwrap();
        }
        assert_eq!(status, 503, "{v}");
        eprintln!("refused: {v}");
        refused += 1;
        assert!(tokio::time::Instant::now() < deadline, "sends never reached the new master");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("planned failover: {refused} send(s) refused before the new master took them");
    // The demoted master closed its clients' connections: the one send on its way then
    // fails; the node asks the sentinels again before the next.
    assert!(refused <= 1, "{refused} sends refused");
    // Under the new master's lineage the mailbox's seqs jump (seq safety: a planned
    // failover loses nothing, but the node cannot tell it from one that did).
    assert!(seq_after > 1_000_000, "seqs jump after a failover: {seq_after}");
    let got: Vec<(u64, String)> =
        live.frames(2).await.iter().map(|f| (seq(f), content(f).to_owned())).collect();
    assert_eq!(got, [(1, "before".to_owned()), (seq_after, "after".to_owned())]);
    assert!(cli(r, &["info", "replication"]).await.contains("role:master"));
}

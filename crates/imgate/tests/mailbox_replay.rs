//! Mailboxes: an offline user gets its messages on connect, `since` replays exactly what
//! is missing, and nothing acknowledged is lost to `kill -9`.

mod common;

use common::*;

#[tokio::test]
async fn an_offline_user_receives_on_connect_and_only_once() {
    let s = Server::start().await;
    for i in 0..5 {
        let (status, _) =
            s.post("/send?userid=agent", "application/json", text_to("off", &format!("m{i}"))).await;
        assert_eq!(status, 200);
    }
    let mut c = s.connect("/?userid=off").await;
    let got: Vec<String> = c.frames(5).await.iter().map(|f| content(f).to_owned()).collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    // Those reached a connection: a second tab opened now does not get them again...
    let mut tab = s.connect("/?userid=off").await;
    let (_, ack) = s.post("/send?userid=agent", "application/json", text_to("off", "new")).await;
    let f = tab.frame().await;
    assert_eq!(content(&f), "new");
    assert_eq!(f["data"]["seq"], ack["data"]["seq"]);
    drop(c);
    drop(tab);
    // ...and neither does a connection after they all closed.
    let mut later = s.connect("/?userid=off").await;
    let (_, ack) = s.post("/send?userid=agent", "application/json", text_to("off", "after")).await;
    let f = later.frame().await;
    assert_eq!(content(&f), "after");
    assert_eq!(f["data"]["seq"], ack["data"]["seq"]);
}

#[tokio::test]
async fn since_replays_exactly_the_missing_ones_in_order_then_live() {
    let s = Server::start().await;
    let mut c = s.connect("/?userid=u").await;
    for i in 1..=10 {
        s.post("/send?userid=a", "application/json", text_to("u", &i.to_string())).await;
    }
    let seen = c.frames(4).await;
    let last = seq(&seen[3]);
    assert_eq!(last, 4);
    drop(c);
    let mut again = s.connect(&format!("/im_component/wx_official_account/msg?userid=u&since={last}")).await;
    let replayed = again.frames(6).await;
    assert_eq!(replayed.iter().map(seq).collect::<Vec<_>>(), [5, 6, 7, 8, 9, 10]);
    assert_eq!(
        replayed.iter().map(|f| content(f).to_owned()).collect::<Vec<_>>(),
        ["5", "6", "7", "8", "9", "10"]
    );
    s.post("/send?userid=a", "application/json", text_to("u", "live")).await;
    let f = again.frame().await;
    assert_eq!((seq(&f), content(&f)), (11, "live"));
    // since=0 is the whole mailbox.
    let mut all = s.connect("/?userid=u&since=0").await;
    assert_eq!(all.frames(11).await.iter().map(seq).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn replay_and_live_traffic_interleave_without_gaps_or_repeats() {
    let s = Server::start().await;
    for i in 0..300 {
        s.post("/send?userid=a", "application/json", text_to("busy", &i.to_string())).await;
    }
    let poster = {
        let url = s.http("/send?userid=a");
        tokio::spawn(async move {
            for i in 300..600 {
                post(&url, "application/json", text_to("busy", &i.to_string())).await;
            }
        })
    };
    let mut c = s.connect("/?userid=busy&since=0").await;
    let got = c.frames(600).await;
    poster.await.unwrap();
    assert_eq!(got.iter().map(seq).collect::<Vec<_>>(), (1..=600).collect::<Vec<_>>());
}

#[tokio::test]
async fn kill_9_loses_nothing_that_was_acknowledged() {
    acknowledged_survive_kill_9(&[]).await;
}

/// `store.sync = "full"` (fsync per commit) keeps the same promise; what it adds, power
/// loss, no test here can cause.
#[tokio::test]
async fn kill_9_loses_nothing_acknowledged_with_sync_full() {
    acknowledged_survive_kill_9(&[("IMGATE_STORE__SYNC", "full")]).await;
}

async fn acknowledged_survive_kill_9(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), env).await;
    // Concurrent posters, then kill -9 while they are still posting.
    let mut acked = Vec::new();
    let mut posters = Vec::new();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for p in 0..4 {
        let url = bin.http("/send?userid=agent");
        let count = count.clone();
        posters.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ok = Vec::new();
            for i in 0..10_000 {
                let body = text_to("victim", &format!("{p}-{i}"));
                match client.post(&url).header("content-type", "application/json").body(body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        ok.push(v["data"]["seq"].as_u64().unwrap());
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            ok
        }));
    }
    // Let a few hundred acknowledgements happen, then kill without warning.
    let mut watcher = Client::connect(&bin.ws("/?userid=victim")).await;
    while count.load(std::sync::atomic::Ordering::Relaxed) < 300 {
        watcher.frame().await;
    }
    bin.kill9().await;
    for p in posters {
        acked.extend(p.await.unwrap());
    }
    assert!(acked.len() >= 300, "posters got {} acks", acked.len());
    acked.sort_unstable();

    let bin = Binary::start(dir.path(), env).await;
    let mut c = Client::connect(&bin.ws("/?userid=victim&since=0")).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < acked.len() || seen.last() < acked.last() {
        seen.insert(seq(&c.frame().await));
    }
    for s in &acked {
        assert!(seen.contains(s), "acknowledged seq {s} lost after kill -9");
    }
    // Seqs continue after the restart, never reused.
    let (_, ack) =
        post(&bin.http("/send?userid=agent"), "application/json", text_to("victim", "after")).await;
    assert!(ack["data"]["seq"].as_u64().unwrap() > *acked.last().unwrap());
}

#[tokio::test]
async fn a_restart_delivers_what_was_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let s = Server::start_in(tempfile::tempdir().unwrap(), config.clone()).await;
    let (_, ack) = s.post("/send?userid=a", "application/json", text_to("sleeper", "kept")).await;
    s.stop().await.unwrap();
    let s = Server::start_in(tempfile::tempdir().unwrap(), config).await;
    let mut c = s.connect("/?userid=sleeper").await;
    let f = c.frame().await;
    assert_eq!(content(&f), "kept");
    assert_eq!(f["data"]["id"], ack["data"]["id"]);
}

#[tokio::test]
async fn a_since_ahead_of_the_mailbox_does_not_hide_new_messages() {
    let s = Server::start().await;
    s.post("/send?userid=a", "application/json", text_to("fresh", "one")).await;
    // A client remembering seq 500 from a data dir that is gone.
    let mut c = s.connect("/?userid=fresh&since=500").await;
    let (_, ack) = s.post("/send?userid=a", "application/json", text_to("fresh", "two")).await;
    let f = c.frame().await;
    assert_eq!(content(&f), "two");
    assert_eq!(f["data"]["seq"], ack["data"]["seq"]);
}

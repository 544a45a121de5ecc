//! Gauges of state, each test alone in its binary's recorder where it needs to be: the
//! connections by state (`replaying`, `live`, `closing`), and the broker's lag with Redis.
//! (Gauges are process-wide: this binary's other test opens no socket.)

mod common;

use common::*;

async fn scrape(s: &Server) -> String {
    reqwest::get(s.http("/metrics")).await.unwrap().text().await.unwrap()
}

fn gauge(text: &str, line: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(line)).map_or(0.0, |v| v.trim().parse().unwrap())
}

fn by_state(text: &str, state: &str) -> f64 {
    gauge(text, &format!("imgate_connections_by_state{{state=\"{state}\"}} "))
}

/// A connection replaying a mailbox larger than the socket buffers, to a client that does
/// not read yet, is `replaying`; once read to the end it is `live`; closed, it is nothing.
#[tokio::test]
async fn connections_are_counted_by_state() {
    let s = Server::start().await;
    // 16 MiB in the mailbox: more than loopback's socket buffers hold.
    let big = "x".repeat(60_000);
    for _ in 0..280 {
        assert_eq!(s.post("/send?userid=a", "application/json", text_to("reader", &big)).await.0, 200);
    }
    let mut c = s.connect("/?userid=reader&since=0").await;
    eventually("the connection counted as replaying", || async {
        let t = scrape(&s).await;
        (by_state(&t, "replaying") == 1.0 && by_state(&t, "live") == 0.0).then_some(())
    })
    .await;
    for _ in 0..280 {
        assert_eq!(content(&c.frame().await).len(), 60_000);
    }
    eventually("the connection counted as live", || async {
        let t = scrape(&s).await;
        (by_state(&t, "replaying") == 0.0 && by_state(&t, "live") == 1.0).then_some(())
    })
    .await;
    assert_eq!(gauge(&scrape(&s).await, "imgate_connections "), 1.0, "the states add up to the connections");
    drop(c);
    eventually("the connection gone from every state", || async {
        let t = scrape(&s).await;
        ["replaying", "live", "closing"].iter().all(|st| by_state(&t, st) == 0.0).then_some(())
    })
    .await;
}

/// With Redis, each node hears its own ping back through the broker: the lag is exported.
#[tokio::test]
async fn the_broker_lag_is_exported_with_redis() {
    let redis = Redis::start();
    let s = Server::start_with(|c| {
        c.store.engine = imgate::config::Engine::Redis;
        c.store.redis_url = redis.url();
    })
    .await;
    let lag = eventually("a broker lag measured", || async {
        scrape(&s)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("imgate_broker_lag_seconds "))
            .map(|v| v.parse::<f64>().unwrap())
    })
    .await;
    assert!(lag >= 0.0, "{lag}");
}

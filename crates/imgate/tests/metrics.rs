//! What `/metrics` exports for a dashboard: durations as Prometheus histograms
//! (`_seconds`, with buckets), labelled by route pattern rather than by path.

mod common;

use common::*;

async fn scrape(s: &Server) -> String {
    reqwest::get(s.http("/metrics")).await.unwrap().text().await.unwrap()
}

/// The value of the sample `name{labels}` (labels as Prometheus prints them, in order).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&head)).map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn http_requests_are_timed_by_route_method_and_status() {
    let s = Server::start().await;
    let before = scrape(&s).await;
    let count = |t: &str, labels: &str| {
        sample(t, "imgate_http_request_duration_seconds_count", labels).unwrap_or(0.0)
    };
    let ok = r#"route="/send",method="POST",status="200""#;
    let bad = r#"route="/send",method="POST",status="400""#;
    let history = r#"route="/im_component/wx_official_account/history",method="GET",status="200""#;
    for i in 0..3 {
        assert_eq!(s.post("/send?userid=a", "application/json", text_to("b", &i.to_string())).await.0, 200);
    }
    assert_eq!(s.post("/send?userid=a", "application/json", "{}").await.0, 400);
    assert_eq!(s.get("/im_component/wx_official_account/history?userid=b").await.0, 200);
    assert_eq!(s.get("/no/such/path/12345").await.0, 404);
    let after = scrape(&s).await;
    // The recorder is shared by the servers of this test binary: compare with before (and
    // no other test here sends to /send or reads history).
    assert_eq!(count(&after, ok) - count(&before, ok), 3.0, "{after}");
    assert_eq!(count(&after, bad) - count(&before, bad), 1.0);
    assert_eq!(count(&after, history) - count(&before, history), 1.0);
    // A histogram, with buckets from 100 µs, whose +Inf bucket is the count.
    let inf = sample(&after, "imgate_http_request_duration_seconds_bucket", &format!("{ok},le=\"+Inf\""));
    assert_eq!(inf, Some(count(&after, ok)));
    assert!(
        sample(&after, "imgate_http_request_duration_seconds_bucket", &format!("{ok},le=\"0.0001\""))
            .is_some()
    );
    // Unknown paths share one label, so a scanner cannot grow the series.
    assert!(!after.contains("12345"), "a path became a label");
    assert!(after.contains(r#"route="unmatched""#));
}

#[tokio::test]
async fn commits_and_socket_bytes_are_exported() {
    let s = Server::start().await;
    // Not /send: the other test counts /send's requests on the same recorder.
    assert_eq!(
        s.post("/im_component/wx_official_account/send?userid=a", "application/json", text_to("b", "x"))
            .await
            .0,
        200
    );
    let text = scrape(&s).await;
    let commits = sample(&text, "imgate_store_commit_duration_seconds_count", r#"engine="sqlite""#);
    assert!(commits.is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, "imgate_store_commits_total", r#"engine="sqlite",outcome="committed""#).is_some());
    assert!(text.lines().any(|l| l.starts_with("imgate_socket_queued_bytes ")), "{text}");
}

#[tokio::test]
async fn live_delivery_is_timed_and_replays_are_counted_while_they_run() {
    let s = Server::start().await;
    let mut live = s.connect("/?userid=metrics-live").await;
    // The server times a delivery once its write returns, which may be after the client
    // has the frame. And a connection joins the live fan-out only after its first replay,
    // a moment after the handshake: a message committed before that reaches it by the
    // replay, untimed. So: send, read, look; until a delivery is timed.
    let delivered = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("imgate_delivery_duration_seconds_count "))
            .map(|v| v.parse::<f64>().unwrap())
    };
    let mut sent = 0;
    loop {
        sent += 1;
        let body = format!("x{sent}");
        let (status, _) = s
            .post(
                "/im_component/wx_official_account/send?userid=a",
                "application/json",
                text_to("metrics-live", &body),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(content(&live.frame().await), body);
        if delivered(&scrape(&s).await).is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(sent < 500, "no live delivery was timed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A replay from the start, run to its end.
    let mut replayed = s.connect("/?userid=metrics-live&since=0").await;
    assert_eq!(content(&replayed.frame().await), "x1");
    let text = scrape(&s).await;
    let labelled = sample(&text, "imgate_delivery_duration_seconds_count", "");
    assert!(labelled.is_none(), "labelled without labels: {text}");
    // The replay ends after the frame, once a page comes back empty: wait for the gauge
    // to come back to 0 (it is 1 while the replay runs).
    let replays = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("imgate_replays_in_progress "))
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert!(replays(&text).is_some(), "{text}");
    eventually("every replay ended", || async { (replays(&scrape(&s).await) == Some(0.0)).then_some(()) })
        .await;
}

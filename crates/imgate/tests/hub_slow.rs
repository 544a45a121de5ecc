//! A client that stops reading is closed with 4008 and never holds up anyone else.

mod common;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

// Two threads: the server's connection tasks never wait behind the test's reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_without_delaying_others() {
    let s = Server::start_with(|c| {
        c.hub.queue_capacity = 16;
        c.hub.write_buffer_size = 4096;
    })
    .await;
    // The slow client completes the handshake, then never reads a byte.
    let mut slow = s.connect("/?userid=slow").await;
    let mut fast = s.connect("/?userid=fast").await;
    let big = "x".repeat(60_000);
    // Enough to fill the socket buffers on both ends, and then the queue. The hub kicks
    // the slow client while committing a message to it (the commit offers the frame to
    // its full queue), so the kick is known when that post returns. Its close frame then
    // waits behind what the socket holds, for the server's close wait (2 s) only: the
    // check comes right after each post to the slow client, and reading starts at once,
    // a few milliseconds after the kick rather than after another round of posts.
    let mut posted: u64 = 0;
    loop {
        assert!(posted < 400, "the slow client was never cut off");
        posted += 1;
        let (status, _) =
            s.post("/send?userid=a", "application/json", text_to("slow", &format!("{posted}{big}"))).await;
        assert_eq!(status, 200);
        if kicked(&s).await {
            break;
        }
        // Every message to the fast user arrives while the slow one is stuck.
        let (_, ack) =
            s.post("/send?userid=a", "application/json", text_to("fast", &posted.to_string())).await;
        let f = fast.frame().await;
        assert_eq!(f["data"]["id"], ack["data"]["id"]);
    }
    // Now read the slow client: what was buffered, then the close, all under one deadline
    // (heartbeats keep arriving, so a deadline per frame could be put off for ever).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut got = 0u64;
    let mut last_seq = 0;
    let close = loop {
        match tokio::time::timeout_at(deadline, slow.ws.next()).await.expect("the slow client is closed") {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["result"]["code"] != 101 {
                    got += 1;
                    last_seq = seq(&v);
                }
            }
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(got < posted, "the slow client was never cut off");
    assert_eq!(close, Some(4008), "closed with the slow-consumer code");
    // It catches up from its mailbox.
    let mut back = s.connect(&format!("/?userid=slow&since={last_seq}")).await;
    let rest = back.frames((posted - got) as usize).await;
    assert_eq!(rest.iter().map(seq).collect::<Vec<_>>(), (last_seq + 1..=posted).collect::<Vec<_>>());
}

/// The hub has closed a slow consumer (its counter is past zero).
async fn kicked(s: &Server) -> bool {
    let (_, metrics) = s.get("/metrics").await;
    metrics.as_str().unwrap().lines().any(|l| {
        l.starts_with("imgate_slow_consumers_closed_total")
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v > 0.0)
    })
}

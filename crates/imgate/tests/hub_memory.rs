//! What a client that stops reading can pin is bounded in bytes: per connection
//! (`hub.queue_max_bytes`) and for the whole process (`hub.total_queue_max_bytes`). Past a
//! bound the connection is closed with 4008, and it resumes with `since`, losing nothing.

mod common;

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

/// A message of about 60 kB (under `limits.http_body_max`).
fn big(i: u64) -> String {
    format!("{i} {}", "x".repeat(60_000))
}

/// Connect as `user` with a small receive buffer, so that a client that never reads fills
/// its socket after a few hundred kB rather than several MB.
async fn connect_small(s: &Server, user: &str) -> Client {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(32 << 10).unwrap();
    let tcp = sock.connect(s.addr).await.unwrap();
    let url = s.ws(&format!("/?userid={user}"));
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await.unwrap();
    Client { ws, protocol: None }
}

/// Connections closed so far for passing `over` (frames, bytes, total), from /metrics.
/// The recorder is shared by every server of this test binary: each test passes its own
/// bound only.
async fn kicks(h: &reqwest::Client, s: &Server, over: &str) -> u64 {
    let m = h.get(s.http("/metrics")).send().await.unwrap().text().await.unwrap();
    let label = format!("over=\"{over}\"");
    m.lines()
        .find(|l| l.starts_with("imgate_slow_consumers_closed_total") && l.contains(&label))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
}

/// Read a client that was not reading: the seqs of what its socket held, then the code of
/// the close frame (`None` if there was none).
async fn drain(c: &mut Client) -> (Vec<u64>, Option<u16>) {
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.expect("the server closes in time") {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["result"]["code"] != 101 {
                    seqs.push(seq(&v));
                }
            }
            Some(Ok(Message::Close(c))) => return (seqs, c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (seqs, None),
        }
    }
}

/// Reconnect `user` with `since` = the last seq it got, send it a sentinel, and add every
/// seq up to the sentinel's to `seqs`.
async fn resume(h: &reqwest::Client, s: &Server, user: &str, seqs: &mut Vec<u64>) {
    let since = seqs.last().copied().unwrap_or(0);
    let mut back = s.connect(&format!("/?userid={user}&since={since}")).await;
    send(h, s, user, "sentinel").await;
    loop {
        let f = back.frame().await;
        seqs.push(seq(&f));
        if content(&f) == "sentinel" {
            return;
        }
    }
}

/// Send `content` to `to` through one HTTP client (a new one per request costs ~100 ms).
async fn send(h: &reqwest::Client, s: &Server, to: &str, content: &str) -> serde_json::Value {
    let r = h
        .post(s.http("/send?userid=a"))
        .header("content-type", "application/json")
        .body(text_to(to, content))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_socket_that_never_reads_is_closed_past_its_bytes_and_resumes_without_loss() {
    // Far below the frame bound (1024): only the byte bound can close it.
    let s = Server::start_with(|c| c.hub.queue_max_bytes = 300_000).await;
    let h = reqwest::Client::new();
    let mut slow = connect_small(&s, "slow").await;
    let before = kicks(&h, &s, "bytes").await;
    let mut sent = 0u64;
    while kicks(&h, &s, "bytes").await == before {
        assert!(sent < 300, "not closed after 18 MB offered to a socket that never reads");
        sent += 1;
        send(&h, &s, "slow", &big(sent)).await;
    }
    let (mut seqs, code) = drain(&mut slow).await;
    assert_eq!(code, Some(4008));
    assert!(seqs.len() < sent as usize, "closed, yet everything arrived");
    resume(&h, &s, "slow", &mut seqs).await;
    assert_eq!(seqs, (1..=sent + 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_process_wide_bound_closes_the_connection_offered_to_while_others_keep_receiving() {
    // The total binds first: no connection comes near its own byte bound.
    let s = Server::start_with(|c| {
        c.hub.queue_max_bytes = 64 << 20;
        c.hub.total_queue_max_bytes = 2 << 20;
    })
    .await;
    let h = reqwest::Client::new();
    let mut slow = connect_small(&s, "slow").await;
    let mut fast = s.connect("/?userid=fast").await;
    let before = kicks(&h, &s, "total").await;
    let mut sent = 0u64;
    while kicks(&h, &s, "total").await == before {
        assert!(sent < 300, "not closed after 18 MB offered to a socket that never reads");
        sent += 1;
        send(&h, &s, "slow", &big(sent)).await;
        // The reader that keeps up gets each of its messages while the other is stuck.
        let ack = send(&h, &s, "fast", &sent.to_string()).await;
        assert_eq!(fast.frame().await["data"]["id"], ack["data"]["id"]);
    }
    let (mut seqs, code) = drain(&mut slow).await;
    assert_eq!(code, Some(4008));
    // ...and after it was closed.
    let ack = send(&h, &s, "fast", "after").await;
    assert_eq!(fast.frame().await["data"]["id"], ack["data"]["id"]);
    resume(&h, &s, "slow", &mut seqs).await;
    assert_eq!(seqs, (1..=sent + 1).collect::<Vec<_>>());
}

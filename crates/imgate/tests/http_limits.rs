//! Connections on the open internet: every stage of a connection has a time limit, a
//! declared body over the limit is refused before it is sent, and the number of
//! connections has a cap that still lets `/healthz` answer. Real sockets against a real
//! server; timeouts of 1 s, and waits of 10 s or more before a test calls it a failure.

mod common;

use std::time::Duration;

use common::{PATIENCE, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The timeouts under test; every wait for their effect is 10 times as long.
const SHORT: Duration = Duration::from_secs(1);
const LONG: Duration = Duration::from_secs(60);
const CUT_WITHIN: Duration = Duration::from_secs(10);

async fn server(tune: impl FnOnce(&mut imgate::config::Config)) -> Server {
    Server::start_with(|c| {
        c.http.header_read_timeout = LONG;
        c.http.keepalive_timeout = LONG;
        c.http.body_timeout = LONG;
        tune(c);
    })
    .await
}

async fn open(s: &Server) -> TcpStream {
    TcpStream::connect(s.addr).await.unwrap()
}

/// Everything the server sends until it closes the connection; fails if it does not
/// close within `within`.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(read.is_ok(), "the server did not close the connection within {within:?}; it sent {got:?}");
    got
}

/// One answer on a kept-alive connection: its status line and body.
async fn answer(tcp: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                    })
                    .map_or(0, |v| v.parse().unwrap());
                if got.len() >= end + 4 + len {
                    return;
                }
            }
        }
    })
    .await
    .expect("an answer arrives");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let s = server(|c| c.http.header_read_timeout = SHORT).await;
    let mut tcp = open(&s).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: imgate\r\nX-Slow: ").await.unwrap();
    let got = until_closed(&mut tcp, CUT_WITHIN).await;
    assert!(!got.contains("200 OK"), "{got}");
    // The server goes on serving everyone else.
    assert_eq!(s.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_silent_tcp_connection_is_closed() {
    let s = server(|c| c.http.header_read_timeout = SHORT).await;
    let mut tcp = open(&s).await;
    assert_eq!(until_closed(&mut tcp, CUT_WITHIN).await, "");
}

#[tokio::test]
async fn an_idle_keepalive_connection_is_closed() {
    // The header timeout is long: what closes the connection is the keep-alive timeout.
    let s = server(|c| c.http.keepalive_timeout = SHORT).await;
    let mut tcp = open(&s).await;
    for _ in 0..2 {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: imgate\r\n\r\n").await.unwrap();
        let (status, _) = answer(&mut tcp).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    assert_eq!(until_closed(&mut tcp, CUT_WITHIN).await, "");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_before_any_body_byte() {
    let s = server(|_| {}).await;
    for (path, expect) in [("/send?userid=a", ""), ("/send?userid=a", "Expect: 100-continue\r\n")] {
        let mut tcp = open(&s).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: imgate\r\nContent-Type: application/json\r\n\
             Content-Length: 10737418240\r\n{expect}\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let (status, body) = answer(&mut tcp).await;
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large", "{expect}");
        let frame: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(frame["result"]["code"], -1, "{frame}");
        let limit = imgate::config::Config::default().limits.http_body_max.to_string();
        assert!(frame["result"]["message"].as_str().unwrap().contains(&limit), "{frame}");
    }
    // The media upload has its own, larger limit, refused the same way.
    let mut tcp = open(&s).await;
    tcp.write_all(
        b"POST /im_component/wx_official_account/media?userid=a HTTP/1.1\r\nHost: imgate\r\n\
          Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 10737418240\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(answer(&mut tcp).await.0, "HTTP/1.1 413 Payload Too Large");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_gets_408() {
    let (_wechat, base) = common::wechat::standin().await;
    let s = server(|c| {
        c.http.body_timeout = SHORT;
        common::wechat::aim(c, &base, &["a"]);
    })
    .await;
    // Every handler that reads a body answers alike: a send, WeChat's callback, an upload.
    for (path, content_type) in [
        ("/send?userid=a", "application/json"),
        ("/im_component/wx_official_account/callback", "text/xml"),
        ("/im_component/wx_official_account/media?userid=a", "image/png"),
    ] {
        let mut tcp = open(&s).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: imgate\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n<xml>"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let got = tokio::time::timeout(CUT_WITHIN, answer(&mut tcp)).await.expect("answered within 10 s");
        assert_eq!(got.0, "HTTP/1.1 408 Request Timeout", "{path}: {}", got.1);
        let frame: serde_json::Value = serde_json::from_str(&got.1).unwrap();
        assert_eq!(frame["result"]["code"], -1, "{path}: {frame}");
    }
}

#[tokio::test]
async fn a_websocket_upgrade_that_never_completes_is_cut() {
    let s = server(|c| {
        c.http.header_read_timeout = SHORT;
        c.http.handshake_timeout = SHORT;
    })
    .await;
    let mut tcp = open(&s).await;
    tcp.write_all(
        b"GET /?userid=u HTTP/1.1\r\nHost: imgate\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n",
    )
    .await
    .unwrap();
    let got = until_closed(&mut tcp, CUT_WITHIN).await;
    assert!(!got.contains("101"), "{got}");
    // A whole handshake still succeeds.
    let mut c = s.connect("/?userid=u").await;
    c.send("ping").await;
}

#[tokio::test]
async fn at_the_connection_cap_only_healthz_answers_and_a_freed_slot_serves_again() {
    let s = server(|c| c.http.max_connections = 4).await;
    // Two WebSockets and two silent connections: WebSockets count as long as they are open.
    let _ws1 = s.connect("/?userid=w1").await;
    let _ws2 = s.connect("/?userid=w2").await;
    let silent = open(&s).await;
    let _silent2 = open(&s).await;
    // Past the cap: /healthz answers, anything else gets 503 and the connection is closed.
    let mut tcp = open(&s).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: imgate\r\n\r\n").await.unwrap();
    assert_eq!(answer(&mut tcp).await.0, "HTTP/1.1 200 OK");
    let mut tcp = open(&s).await;
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: imgate\r\n\r\n").await.unwrap();
    let got = until_closed(&mut tcp, CUT_WITHIN).await;
    assert!(got.starts_with("HTTP/1.1 503 Service Unavailable"), "{got}");
    assert!(got.contains("http.max_connections"), "{got}");
    // Past the reserve too: closed without a word.
    let mut reserve = Vec::new();
    for _ in 0..imgate::http::server::RESERVE {
        reserve.push(open(&s).await);
    }
    let mut tcp = open(&s).await;
    assert_eq!(until_closed(&mut tcp, CUT_WITHIN).await, "");
    drop(reserve);
    // A connection that closes frees its slot.
    drop(silent);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut tcp = open(&s).await;
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: imgate\r\nConnection: close\r\n\r\n").await.unwrap();
        if until_closed(&mut tcp, CUT_WITHIN).await.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the freed slot was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answers_is_closed_after_the_write_timeout() {
    let s = server(|c| c.http.write_timeout = SHORT).await;
    let tcp = open(&s).await;
    let (mut rx, mut tx) = tcp.into_split();
    // Pipelined requests for answers (about 40 MB) far beyond what the socket buffers hold,
    // and nothing read: the server's writes block.
    let writer = tokio::spawn(async move {
        for _ in 0..2000 {
            if tx.write_all(b"GET /console/app.js HTTP/1.1\r\nHost: imgate\r\n\r\n").await.is_err() {
                break;
            }
        }
        tx
    });
    tokio::time::sleep(10 * SHORT).await;
    // Then read: what was buffered, then the close, well before 2000 answers came.
    let mut answers = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut carry = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    carry.extend_from_slice(&buf[..n]);
                    answers += carry.windows(17).filter(|w| w == b"HTTP/1.1 200 OK\r\n").count();
                    let keep = carry.len().saturating_sub(16);
                    carry.drain(..keep);
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after {answers} answers");
    assert!(answers < 2000, "all {answers} answers were written");
    drop(writer.await.unwrap());
}

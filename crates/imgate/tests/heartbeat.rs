//! Heartbeat frames and pings keep live clients connected and close dead ones.
//!
//! Timer-driven, so tested in tokio's paused time with the production periods: the clock
//! moves only when every task waits, so a stall of the machine cannot close a live client,
//! and minutes of heartbeats pass in milliseconds. (These tests store nothing: a commit
//! waits on the store's own thread, during which paused time would jump ahead.)

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// Shorter than production (25 s, 60 s) only so that a beat comes within the harness's
// patience (20 s); in paused time the length costs nothing.
const BEAT: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(30);

async fn server() -> Server {
    Server::start_with(|c| {
        c.hub.heartbeat_interval = BEAT;
        c.hub.idle_timeout = IDLE;
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn heartbeats_arrive_with_the_seed_shape() {
    let s = server().await;
    let mut c = s.connect("/?userid=u").await;
    let f = c.any_frame().await;
    assert_eq!(f, serde_json::json!({"data": {}, "result": {"code": 101, "message": "heartbeat"}}));
}

#[tokio::test(start_paused = true)]
async fn a_client_answering_pings_stays_connected_without_writing() {
    let s = server().await;
    // tokio-tungstenite answers pings while it is being read, as a browser does.
    let mut c = s.connect("/?userid=u").await;
    let start = tokio::time::Instant::now();
    // Twenty beats: more than eight idle timeouts, and still heartbeats, not a close.
    c.quiet_for_beats(20).await;
    assert!(start.elapsed() > IDLE * 5, "the beats came faster than configured");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_only_sends_pong_text_stays_connected() {
    let s = server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws("/?userId=1")).await.unwrap();
    let mut beats = 0;
    let start = tokio::time::Instant::now();
    while beats < 15 {
        match tokio::time::timeout(IDLE * 2, ws.next()).await.expect("a heartbeat").unwrap().unwrap() {
            Message::Text(t) if t.contains("\"code\":101") => {
                beats += 1;
                ws.send(Message::text("pong")).await.unwrap();
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert!(start.elapsed() > IDLE * 4);
}

#[tokio::test(start_paused = true)]
async fn a_dead_client_is_closed_with_the_idle_code() {
    let s = server().await;
    // A dead client: the handshake, then nothing, not even pongs (a WebSocket client
    // library would answer pings as soon as it read; a raw socket never does).
    let mut dead = raw_ws(&s, "/?userid=dead").await;
    let mut watcher = s.connect("/?userid=watcher").await;
    let start = tokio::time::Instant::now();
    while start.elapsed() < IDLE * 3 {
        watcher.any_frame().await;
    }
    // What the server wrote before it hung up: pings, then the close frame.
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, dead.read_to_end(&mut bytes)).await.expect("the server hangs up").unwrap();
    let frames = server_frames(&bytes);
    let (opcode, payload) = frames.last().expect("frames before the close");
    assert_eq!(*opcode, 0x8, "the last frame is a close frame: {frames:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4000);
    assert!(frames[..frames.len() - 1].iter().all(|(op, _)| *op == 0x9 || *op == 0x1), "{frames:?}");
    assert_eq!(watcher.any_frame().await["result"]["code"], 101, "the watcher is still served");
}

async fn raw_ws(s: &Server, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 answer up to its blank line, and not a byte further.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut b)).await.expect("an answer").unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// Unmasked server-to-client frames: (opcode, payload).
fn server_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let opcode = b[0] & 0x0f;
        let (len, head) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => (usize::try_from(u64::from_be_bytes(b[2..10].try_into().unwrap())).unwrap(), 10),
            n => (usize::from(n), 2),
        };
        out.push((opcode, b[head..head + len].to_vec()));
        b = &b[head + len..];
    }
    out
}

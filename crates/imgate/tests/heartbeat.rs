//! Heartbeat frames and pings keep live clients connected and close dead ones.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

async fn quick_beats() -> Server {
    Server::start_with(|c| {
        c.hub.heartbeat_interval = Duration::from_millis(100);
        c.hub.idle_timeout = Duration::from_millis(350);
    })
    .await
}

#[tokio::test]
async fn heartbeats_arrive_with_the_seed_shape() {
    let s = quick_beats().await;
    let mut c = s.connect("/?userid=u").await;
    let f = c.any_frame().await;
    assert_eq!(f, serde_json::json!({"data": {}, "result": {"code": 101, "message": "heartbeat"}}));
}

#[tokio::test]
async fn a_client_answering_pings_stays_connected_without_writing() {
    let s = quick_beats().await;
    // tokio-tungstenite answers pings while it is being read, as a browser does.
    let mut c = s.connect("/?userid=u").await;
    c.quiet_for_beats(20).await; // many idle timeouts long
    s.post("/send?userid=a", "application/json", text_to("u", "still here")).await;
    assert_eq!(content(&c.frame().await), "still here");
}

#[tokio::test]
async fn a_client_that_only_sends_pong_text_stays_connected() {
    let s = quick_beats().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws("/?userId=1")).await.unwrap();
    let mut beats = 0;
    while beats < 15 {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) if t.contains("\"code\":101") => {
                beats += 1;
                ws.send(Message::text("pong")).await.unwrap();
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_dead_client_is_closed_with_the_idle_code() {
    let s = quick_beats().await;
    let mut c = s.connect("/?userid=dead").await;
    let mut watcher = s.connect("/?userid=watcher").await;
    // Stay silent (not reading means not answering pings) for several idle timeouts.
    for _ in 0..12 {
        watcher.any_frame().await;
    }
    let close = c.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
}

//! What `push` and `cluster` share: a ledger of every message (when it was due, whether it
//! was acknowledged, how often and where it arrived), the readers that fill it from the
//! users' sockets, and the seed's JSON body.
//!
//! Every message carries its index in `msg.content`, and message `i` goes to user
//! `i % users`, so a reader knows each frame's message and whether it is on the right
//! socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{Error, ws_config};

pub struct Ledger {
    base: Instant,
    users: usize,
    /// When each message was due (ns after `base`); 0 = not sent.
    due: Vec<AtomicU64>,
    /// How many times each message arrived.
    seen: Vec<AtomicU8>,
    acked: Vec<AtomicU8>,
    received: AtomicU64,
    /// Frames of a message that arrived on another user's socket.
    misrouted: AtomicU64,
}

/// What arrived, counted once the readers stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    /// Acknowledged, never arrived.
    pub lost: u64,
    /// Arrivals past the first.
    pub duplicated: u64,
    pub misrouted: u64,
}

impl Ledger {
    /// A ledger of `messages` messages to `users` users.
    pub fn new(messages: usize, users: usize) -> Arc<Ledger> {
        Arc::new(Ledger {
            base: Instant::now(),
            users: users.max(1),
            due: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..messages).map(|_| AtomicU8::new(0)).collect(),
            acked: (0..messages).map(|_| AtomicU8::new(0)).collect(),
            received: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
        })
    }

    /// Message `i` was due at `due` (the latency's start).
    pub fn sent(&self, i: usize, due: Instant) {
        self.due[i]
            .store(due.saturating_duration_since(self.base).as_nanos().max(1) as u64, Ordering::Release);
    }

    /// The server answered 200 to message `i`.
    pub fn ack(&self, i: usize) {
        self.acked[i].store(1, Ordering::Release);
    }

    pub fn acked(&self) -> u64 {
        self.acked.iter().filter(|x| x.load(Ordering::Acquire) == 1).count() as u64
    }

    /// Wait for frames still on their way: until every acknowledged message arrived, for at
    /// most `secs`, and no longer than 2 s without a new one.
    pub async fn drain(&self, secs: u64) {
        let acked = self.acked();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = self.received.load(Ordering::Acquire);
        let mut still = Instant::now();
        while self.received.load(Ordering::Acquire) < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.received.load(Ordering::Acquire);
            if now != last {
                last = now;
                still = Instant::now();
            } else if still.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }

    pub fn delivery(&self) -> Delivery {
        let seen = |i: usize| self.seen[i].load(Ordering::Acquire);
        let n = self.seen.len();
        Delivery {
            delivered: (0..n).filter(|&i| seen(i) > 0).count() as u64,
            lost: (0..n).filter(|&i| self.acked[i].load(Ordering::Acquire) == 1 && seen(i) == 0).count()
                as u64,
            duplicated: (0..n).map(|i| u64::from(seen(i).saturating_sub(1))).sum(),
            misrouted: self.misrouted.load(Ordering::Acquire),
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects user `index` (named `name`) at `ws_base` and reads its frames into the ledger
/// until `stop`; the task answers the latency of each message's first arrival.
pub async fn connect_reader(
    ws_base: &str,
    name: &str,
    index: usize,
    ledger: Arc<Ledger>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Histogram<u64>>, Error> {
    let url = format!("{}/?userid={name}", ws_base.trim_end_matches('/'));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    Ok(tokio::spawn(read_frames(ws, index, ledger, stop)))
}

async fn read_frames(
    mut ws: Ws,
    user: usize,
    ledger: Arc<Ledger>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("histogram");
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let Some(Ok(m)) = m else { break };
        let Message::Text(t) = m else { continue };
        let Some(i) = message_index(t.as_str()) else { continue };
        if i >= ledger.seen.len() {
            continue;
        }
        if i % ledger.users != user {
            ledger.misrouted.fetch_add(1, Ordering::AcqRel);
            continue;
        }
        let now = ledger.base.elapsed().as_nanos() as u64;
        let due = ledger.due[i].load(Ordering::Acquire);
        if ledger.seen[i].fetch_add(1, Ordering::AcqRel) == 0 {
            ledger.received.fetch_add(1, Ordering::AcqRel);
            if due > 0 {
                hist.saturating_record((now.saturating_sub(due) / 1000).max(1));
            }
        }
    }
    hist
}

/// The index in `"content":"<i>:…"`.
fn message_index(frame: &str) -> Option<usize> {
    let at = frame.find("\"content\":\"")? + "\"content\":\"".len();
    let digits = &frame[at..];
    let end = digits.find(':')?;
    digits[..end].parse().ok()
}

/// Message `i` to `user` in the seed's JSON (§2.1).
pub fn json_body(user: &str, i: usize, filler: &str) -> String {
    format!(
        "{{\"data\":{{\"msg_type\":\"text\",\"contact_id\":\"{user}\",\"msg\":{{\"content\":\"{i}:{filler}\"}}}},\
         \"result\":{{\"code\":1001,\"message\":\"common\"}}}}"
    )
}

/// Readers' histograms, merged once they stopped.
pub async fn merge(readers: Vec<tokio::task::JoinHandle<Histogram<u64>>>) -> Result<Histogram<u64>, Error> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for r in readers {
        hist.add(r.await?).ok();
    }
    Ok(hist)
}

pub fn latency(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "count": h.len(),
    })
}

//! `push`: K users connected over WebSocket, C posters over keep-alive HTTP.
//!
//! Every message carries its index in `msg.content`. The posters record when each message
//! was due (open loop: its place in the schedule, so a stalled server shows up as latency
//! instead of as fewer requests; closed loop: when its POST started), the readers look the
//! index up when the frame arrives, so latency is POST-start (or due time) → frame
//! received, and loss and duplicates are counted per message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::poster::Poster;
use crate::{Error, nonce, proc, ws_config};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:1234")]
    pub http: String,
    /// The server's WebSocket base URL.
    #[arg(long, default_value = "ws://127.0.0.1:1234")]
    pub ws: String,
    /// A name for the server in the summary.
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Connected users; messages go round-robin to them.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Concurrent posters, each on its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    pub posters: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Offered rate in messages per second (open loop); without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The path posted to.
    #[arg(long, default_value = "/send")]
    pub path: String,
    /// Body format: json (seed §2.1) or xml (seed §2.2).
    #[arg(long, default_value = "json")]
    pub body: String,
    /// Bytes of filler text in each message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Don't connect users: measure posting alone (for a route that delivers nothing).
    #[arg(long)]
    pub no_delivery: bool,
    /// The server's PID, for its CPU time and memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// How long to wait for frames still on their way after the last answer.
    #[arg(long, default_value = "5")]
    pub drain_secs: u64,
}

struct Shared {
    base: Instant,
    /// When each message was due (ns after `base`); 0 = not sent.
    due: Vec<AtomicU64>,
    /// How many times each message arrived.
    seen: Vec<AtomicU8>,
    acked: Vec<AtomicU8>,
    received: AtomicU64,
}

pub async fn run(a: Args) -> Result<(), Error> {
    let tag = nonce();
    let n = a.messages;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        due: (0..n).map(|_| AtomicU64::new(0)).collect(),
        seen: (0..n).map(|_| AtomicU8::new(0)).collect(),
        acked: (0..n).map(|_| AtomicU8::new(0)).collect(),
        received: AtomicU64::new(0),
    });
    let users: Vec<String> = (0..a.users).map(|i| format!("b{tag}u{i}")).collect();

    // Connect every user before posting.
    let mut readers = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if !a.no_delivery {
        for u in &users {
            let url = format!("{}/?userid={u}", a.ws.trim_end_matches('/'));
            let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
            let shared = shared.clone();
            readers.push(tokio::spawn(read_frames(ws, shared, stopped.clone())));
        }
    }
    let filler = "x".repeat(a.size);
    let mut posters = Vec::new();
    for _ in 0..a.posters {
        posters.push(Poster::connect(&a.http).await?);
    }
    let cpu0 = a.pid.and_then(proc::cpu_us);
    let started = Instant::now();
    // Open loop: a pacer thread releases each message at its due time (a plain thread
    // sleeps with ~0.1 ms precision; the runtime's timers have 1 ms) to the poster that
    // owns it. A poster still busy with an earlier one makes it wait, and that wait counts:
    // latency is measured from the due time.
    let mut queues: Vec<Option<tokio::sync::mpsc::UnboundedReceiver<usize>>> = Vec::new();
    if let Some(rate) = a.rate {
        let mut senders = Vec::new();
        for _ in 0..a.posters {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            queues.push(Some(rx));
        }
        let total = a.messages;
        std::thread::spawn(move || {
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if due > now + Duration::from_micros(50) {
                    std::thread::sleep(due - now);
                }
                let _ = senders[i % senders.len()].send(i);
            }
        });
    } else {
        queues.resize_with(a.posters, || None);
    }
    let mut tasks = Vec::new();
    for ((p, mut poster), queue) in posters.into_iter().enumerate().zip(queues) {
        let a = a.clone();
        let shared = shared.clone();
        let users = users.clone();
        let filler = filler.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            let (ct, path) = match a.body.as_str() {
                "xml" => ("application/xml", a.path.clone()),
                _ => ("application/json", format!("{}?userid=bench{tag}", a.path)),
            };
            let mut queue = queue;
            let mut next_closed = p;
            loop {
                let (i, due) = match (&mut queue, a.rate) {
                    (Some(q), Some(rate)) => match q.recv().await {
                        Some(i) => (i, started + Duration::from_secs_f64(i as f64 / rate)),
                        None => break,
                    },
                    _ => {
                        if next_closed >= a.messages {
                            break;
                        }
                        next_closed += a.posters;
                        (next_closed - a.posters, Instant::now())
                    }
                };
                let user = &users[i % users.len()];
                shared.due[i].store((due - shared.base).as_nanos() as u64, Ordering::Release);
                let body = match a.body.as_str() {
                    "xml" => format!(
                        "<xml><ToUserName><![CDATA[{user}]]></ToUserName><FromUserName><![CDATA[f{tag}]]></FromUserName>\
                         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                         <Content><![CDATA[{i}:{filler}]]></Content><MsgId>{i}</MsgId></xml>"
                    ),
                    _ => format!(
                        "{{\"data\":{{\"msg_type\":\"text\",\"contact_id\":\"{user}\",\"msg\":{{\"content\":\"{i}:{filler}\"}}}},\
                         \"result\":{{\"code\":1001,\"message\":\"common\"}}}}"
                    ),
                };
                match poster.post(&path, ct, Bytes::from(body)).await {
                    Ok(200) => shared.acked[i].store(1, Ordering::Release),
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await?;
    }
    let post_secs = started.elapsed().as_secs_f64();
    let cpu1 = a.pid.and_then(proc::cpu_us);
    let acked = shared.acked.iter().filter(|x| x.load(Ordering::Acquire) == 1).count() as u64;

    // Let frames still in flight arrive.
    if !a.no_delivery {
        let deadline = Instant::now() + Duration::from_secs(a.drain_secs);
        let mut last = shared.received.load(Ordering::Acquire);
        let mut still = Instant::now();
        while shared.received.load(Ordering::Acquire) < acked && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = shared.received.load(Ordering::Acquire);
            if now != last {
                last = now;
                still = Instant::now();
            } else if still.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let _ = stop.send(true);
    for r in readers {
        hist.add(r.await?).ok();
    }
    let lat = latency(&hist);
    let delivered = shared.seen.iter().filter(|x| x.load(Ordering::Acquire) > 0).count() as u64;
    let lost = (0..n)
        .filter(|&i| {
            shared.acked[i].load(Ordering::Acquire) == 1 && shared.seen[i].load(Ordering::Acquire) == 0
        })
        .count() as u64;
    let duplicated: u64 =
        shared.seen.iter().map(|x| u64::from(x.load(Ordering::Acquire).saturating_sub(1))).sum();
    let cpu_per_msg = match (cpu0, cpu1) {
        (Some(c0), Some(c1)) if acked > 0 => Some((c1 - c0) as f64 / acked as f64),
        _ => None,
    };
    let summary = json!({
        "workload": "push",
        "server": a.label,
        "mode": if a.rate.is_some() { "open" } else { "closed" },
        "offered_rate": a.rate,
        "users": a.users,
        "posters": a.posters,
        "messages": n,
        "body": a.body,
        "acked": acked,
        "failed": failures,
        "seconds": post_secs,
        "acked_per_sec": acked as f64 / post_secs,
        "delivered": if a.no_delivery { None } else { Some(delivered) },
        "lost": if a.no_delivery { None } else { Some(lost) },
        "duplicated": if a.no_delivery { None } else { Some(duplicated) },
        "latency_us": lat,
        "server_cpu_us_per_msg": cpu_per_msg,
        "server_rss_kib": a.pid.and_then(proc::rss_kib),
    });
    let delivery = if a.no_delivery {
        "no delivery".to_owned()
    } else {
        format!("delivered {delivered}, lost {lost}, dup {duplicated}")
    };
    eprintln!(
        "{}: {} acked in {:.2}s = {:.0}/s, {delivery}, p50 {} p99 {} max {} µs, cpu {:?} µs/msg",
        a.label,
        acked,
        post_secs,
        acked as f64 / post_secs,
        lat["p50"],
        lat["p99"],
        lat["max"],
        cpu_per_msg.map(|c| (c * 100.0).round() / 100.0)
    );
    println!("{summary}");
    Ok(())
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

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Read frames until told to stop; the latency of each message's first arrival.
async fn read_frames(
    mut ws: Ws,
    shared: Arc<Shared>,
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
        if i >= shared.seen.len() {
            continue;
        }
        let now = shared.base.elapsed().as_nanos() as u64;
        let due = shared.due[i].load(Ordering::Acquire);
        if shared.seen[i].fetch_add(1, Ordering::AcqRel) == 0 {
            shared.received.fetch_add(1, Ordering::AcqRel);
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

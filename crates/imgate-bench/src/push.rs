//! `push`: K users connected over WebSocket, C posters over keep-alive HTTP.
//!
//! Every message carries its index in `msg.content`. The posters record when each message
//! was due (open loop: its place in the schedule, so a stalled server shows up as latency
//! instead of as fewer requests; closed loop: when its POST started), the readers look the
//! index up when the frame arrives, so latency is POST-start (or due time) → frame
//! received, and loss and duplicates are counted per message.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::ledger::{self, Delivery, Ledger, latency};
use crate::poster::Poster;
use crate::{Error, nonce, proc};

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

pub async fn run(a: Args) -> Result<(), Error> {
    let tag = nonce();
    let n = a.messages;
    let ledger = Ledger::new(n, a.users);
    let users: Vec<String> = (0..a.users).map(|i| format!("b{tag}u{i}")).collect();

    // Connect every user before posting.
    let mut readers = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if !a.no_delivery {
        for (k, u) in users.iter().enumerate() {
            readers.push(ledger::connect_reader(&a.ws, u, k, ledger.clone(), stopped.clone()).await?);
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
        let ledger = ledger.clone();
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
                ledger.sent(i, due);
                let body = match a.body.as_str() {
                    "xml" => format!(
                        "<xml><ToUserName><![CDATA[{user}]]></ToUserName><FromUserName><![CDATA[f{tag}]]></FromUserName>\
                         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                         <Content><![CDATA[{i}:{filler}]]></Content><MsgId>{i}</MsgId></xml>"
                    ),
                    _ => ledger::json_body(user, i, &filler),
                };
                match poster.post(&path, ct, Bytes::from(body)).await {
                    Ok(200) => ledger.ack(i),
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
    let acked = ledger.acked();

    // Let frames still in flight arrive.
    if !a.no_delivery {
        ledger.drain(a.drain_secs).await;
    }
    let _ = stop.send(true);
    let lat = latency(&ledger::merge(readers).await?);
    let Delivery { delivered, lost, duplicated, misrouted } = ledger.delivery();
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
        "misrouted": if a.no_delivery { None } else { Some(misrouted) },
        "latency_us": lat,
        "server_cpu_us_per_msg": cpu_per_msg,
        "server_rss_kib": a.pid.and_then(proc::rss_kib),
    });
    let delivery = if a.no_delivery {
        "no delivery".to_owned()
    } else {
        format!("delivered {delivered}, lost {lost}, dup {duplicated}, misrouted {misrouted}")
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

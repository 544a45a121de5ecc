//! `reconnect`: N clients connected; they drop; a message arrives for each; they all
//! reconnect with `since` at once. Time until every one has caught up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::poster::Poster;
use crate::{Error, nonce, proc, ws_config};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "http://127.0.0.1:1234")]
    pub http: String,
    #[arg(long, default_value = "ws://127.0.0.1:1234")]
    pub ws: String,
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Clients.
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Handshakes in flight at once (the listen backlog is finite).
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Messages posted to each client while it is away.
    #[arg(long, default_value_t = 1)]
    pub missed: usize,
    #[arg(long)]
    pub pid: Option<u32>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Read until a frame whose content starts with `want`; the last `data.seq` seen.
async fn wait_for(ws: &mut Ws, want: &str) -> Result<u64, Error> {
    let mut seq = 0;
    while let Some(m) = ws.next().await {
        if let Message::Text(t) = m?
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
        {
            seq = v["data"]["seq"].as_u64().unwrap_or(seq);
            if v["data"]["msg"]["content"].as_str().is_some_and(|c| c.starts_with(want)) {
                return Ok(seq);
            }
        }
    }
    Err("connection ended".into())
}

async fn post_to_all(http: &str, users: &[String], content: &str) -> Result<(), Error> {
    let chunks = users.chunks(users.len().div_ceil(16));
    let mut tasks = Vec::new();
    for chunk in chunks {
        let chunk = chunk.to_vec();
        let http = http.to_owned();
        let content = content.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut p = Poster::connect(&http).await?;
            for u in chunk {
                let body =
                    json!({"data": {"msg_type": "text", "contact_id": u, "msg": {"content": content}}});
                let s =
                    p.post("/send?userid=bench", "application/json", Bytes::from(body.to_string())).await?;
                if s != 200 {
                    return Err::<(), Error>(format!("POST answered {s}").into());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run(a: Args) -> Result<(), Error> {
    let tag = nonce();
    let users: Vec<String> = (0..a.clients).map(|i| format!("r{tag}u{i}")).collect();
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let base = a.ws.trim_end_matches('/').to_owned();
    let connect = |user: String, since: Option<u64>| {
        let gate = gate.clone();
        let base = base.clone();
        async move {
            let _p = gate.acquire().await?;
            let url = match since {
                Some(s) => format!("{base}/?userid={user}&since={s}"),
                None => format!("{base}/?userid={user}"),
            };
            let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
            Ok::<_, Error>(ws)
        }
    };
    // Connect everyone and let each see one message.
    let mut first = Vec::new();
    for u in &users {
        first.push(tokio::spawn(connect(u.clone(), None)));
    }
    let mut socks = Vec::new();
    for t in first {
        socks.push(t.await??);
    }
    post_to_all(&a.http, &users, "hello").await?;
    let mut seqs = Vec::new();
    for ws in socks.iter_mut() {
        seqs.push(tokio::time::timeout(Duration::from_secs(30), wait_for(ws, "hello")).await??);
    }
    // Drop everyone, then messages arrive while they are away.
    for ws in socks.iter_mut() {
        let _ = ws.close(None).await;
    }
    drop(socks);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in 0..a.missed {
        post_to_all(&a.http, &users, &format!("missed{m}")).await?;
    }
    let cpu0 = a.pid.and_then(proc::cpu_us);
    // Everyone reconnects at once.
    let t0 = Instant::now();
    let want = format!("missed{}", a.missed - 1);
    let mut tasks = Vec::new();
    for (u, s) in users.iter().zip(&seqs) {
        let c = connect(u.clone(), Some(*s));
        let want = want.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = c.await?;
            wait_for(&mut ws, &want).await?;
            Ok::<_, Error>((t0.elapsed(), ws))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut failed = 0;
    let mut keep = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok((d, ws)))) => {
                hist.saturating_record(d.as_micros() as u64);
                keep.push(ws);
            }
            _ => failed += 1,
        }
    }
    let all_secs = t0.elapsed().as_secs_f64();
    let cpu1 = a.pid.and_then(proc::cpu_us);
    let summary = json!({
        "workload": "reconnect",
        "server": a.label,
        "clients": a.clients,
        "caught_up": hist.len(),
        "failed": failed,
        "all_caught_up_secs": all_secs,
        "catch_up_us": crate::ledger::latency(&hist),
        "server_cpu_ms": match (cpu0, cpu1) { (Some(x), Some(y)) => Some((y - x) / 1000), _ => None },
    });
    eprintln!("{}: {} of {} caught up in {all_secs:.2}s ({failed} failed)", a.label, hist.len(), a.clients);
    println!("{summary}");
    Ok(())
}

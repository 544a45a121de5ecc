//! `idle`: N connections held open, spread over several source addresses (one address
//! has about 28k ephemeral ports), and the server's memory per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::{Error, nonce, proc, ws_config};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// host:port of the server.
    #[arg(long, default_value = "127.0.0.1:1234")]
    pub addr: SocketAddr,
    #[arg(long, default_value = "server")]
    pub label: String,
    /// Connections to hold.
    #[arg(long, default_value_t = 18_000)]
    pub connections: usize,
    /// Connections opened first and not counted (the server's one-time growth).
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Local source addresses, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    pub sources: Vec<IpAddr>,
    /// The server's PID.
    #[arg(long)]
    pub pid: u32,
    /// How long to hold the connections before measuring.
    #[arg(long, default_value_t = 3)]
    pub hold_secs: u64,
}

pub async fn run(a: Args) -> Result<(), Error> {
    let tag = nonce();
    let gate = Arc::new(Semaphore::new(256));
    let mut held = Vec::with_capacity(a.connections);
    let open = |i: usize| {
        let gate = gate.clone();
        let src = a.sources[i % a.sources.len()];
        let addr = a.addr;
        let url = format!("ws://{addr}/?userid=i{tag}u{i}");
        async move {
            let _permit = gate.acquire().await?;
            let sock = if src.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(src, 0))?;
            let tcp = sock.connect(addr).await?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config())).await?;
            // Keep reading, so pings are answered as a live client would.
            Ok::<_, Error>(tokio::spawn(async move {
                let (_w, mut r) = ws.split();
                while let Some(Ok(_)) = r.next().await {}
            }))
        }
    };
    let connect_all = |from: usize, to: usize| {
        let tasks: Vec<_> = (from..to).map(|i| tokio::spawn(open(i))).collect();
        async move {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await??);
            }
            Ok::<_, Error>(out)
        }
    };
    held.extend(connect_all(0, a.warmup).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = proc::rss_kib(a.pid).ok_or("cannot read the server's memory")?;
    let t0 = Instant::now();
    held.extend(connect_all(a.warmup, a.connections).await?);
    let connect_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    let alive = held.iter().filter(|h| !h.is_finished()).count();
    let rss1 = proc::rss_kib(a.pid).ok_or("cannot read the server's memory")?;
    let counted = (a.connections - a.warmup) as f64;
    let per_conn = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / counted;
    for h in &held {
        h.abort();
    }
    let summary = json!({
        "workload": "idle",
        "server": a.label,
        "connections": a.connections,
        "alive": alive,
        "connect_secs": connect_secs,
        "server_rss_kib_before": rss0,
        "server_rss_kib_after": rss1,
        "bytes_per_connection": per_conn.round(),
    });
    eprintln!(
        "{}: {alive}/{} connections alive, RSS {rss0} → {rss1} KiB = {:.0} B per connection",
        a.label, a.connections, per_conn
    );
    println!("{summary}");
    Ok(())
}

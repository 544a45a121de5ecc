//! `imgate-bench`: a load generator for any server that speaks the seed's protocol —
//! WebSocket at `/?userid=U`, `POST /send` with the seed's JSON — so that imgate and the
//! designs it replaces are measured by the same client.
//!
//! Each run prints a human summary on stderr and one JSON line on stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster;
mod idle;
mod ledger;
mod plot;
mod poster;
mod proc;
mod push;
mod reconnect;
mod report;
mod soak;

#[derive(Parser)]
#[command(name = "imgate-bench", about = "Load generator for servers speaking the seed's protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Users on WebSockets, posters over keep-alive HTTP: throughput, latency, loss.
    Push(push::Args),
    /// Several nodes on one broker, users spread by shares: what each node hears from the
    /// broker (its /metrics) against its share of connections, acks/s, POST → frame.
    Cluster(cluster::Args),
    /// Many idle connections: the server's memory per connection.
    Idle(idle::Args),
    /// Clients drop, messages arrive, clients reconnect with `since`: time to catch up.
    Reconnect(reconnect::Args),
    /// A side-by-side table (markdown) from result lines.
    Report(report::Args),
    /// Latency against offered rate (SVG) from result lines.
    Plot(plot::Args),
    /// Minutes of mixed load (users, stallers, slowloris, a flood) with a kill -9 and a
    /// restart of the server it starts: RSS over time, acknowledged against delivered.
    Soak(soak::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Sockets are files: lift our own limit as far as the machine allows.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Push(a) => push::run(a).await,
            Command::Cluster(a) => cluster::run(a).await,
            Command::Idle(a) => idle::run(a).await,
            Command::Reconnect(a) => reconnect::run(a).await,
            Command::Report(a) => report::run(a),
            Command::Plot(a) => plot::run(a),
            Command::Soak(a) => soak::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A WebSocket client config with small buffers: the generator holds thousands.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// A short random tag so that runs never share user names or message ids.
pub fn nonce() -> String {
    format!("{:08x}", rand::random::<u32>())
}

//! The `imgate` command: parse the command line, load the configuration, start tracing,
//! run. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imgate::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "imgate",
    version,
    about = "Real-time message gateway: WeChat Official Accounts ⇄ agent consoles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded store, no other service needed).
    #[command(after_long_help = imgate::config::KEYS_HELP)]
    Serve {
        /// Address to listen on [default: 127.0.0.1:1234]
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Directory of the embedded store [default: ./data]
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file [default: ./imgate.toml when present]
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the frames a user receives, one per line, as they arrive.
    Tail(imgate::tail::TailArgs),
    /// Try the WeChat channel without WeChat.
    #[command(subcommand)]
    Wechat(WechatCommand),
}

#[derive(Subcommand)]
enum WechatCommand {
    /// Post a callback to a running gateway, signed and encrypted exactly as WeChat does.
    Simulate(imgate::wechat::cli::SimulateArgs),
    /// Run a stand-in for WeChat's API (tokens, customer-service messages, media).
    Standin(imgate::wechat::cli::StandinArgs),
}

// Many small allocations on many threads: mimalloc spends a fraction of glibc's time on them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("imgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { listen, data_dir, config } => {
            let config = match Config::load(config.as_deref(), &Overrides { listen, data_dir }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("imgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing(&config.log);
            runtime.block_on(serve(config))
        }
        Command::Tail(args) => runtime.block_on(imgate::tail::run(args)),
        Command::Wechat(WechatCommand::Simulate(args)) => {
            runtime.block_on(imgate::wechat::cli::simulate(args))
        }
        Command::Wechat(WechatCommand::Standin(args)) => runtime.block_on(imgate::wechat::cli::standin(args)),
    }
}

async fn serve(config: Config) -> ExitCode {
    let listener = match listen(config.listen) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %config.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match imgate::run(listener, config, signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "imgate failed");
            ExitCode::FAILURE
        }
    }
}

/// Pending connections the kernel may hold before accepting: a reconnect storm of
/// thousands of clients must not overflow into SYN retries (1 s each). The kernel caps it
/// at net.core.somaxconn.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// SIGTERM or SIGINT.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

//! The `imgate` command: parse the command line, load the configuration, start tracing,
//! run. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imgate::config::{Config, LogFormat, Overrides};

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
    /// Copy the embedded store (and media) consistently while the server runs. The copy
    /// is a data dir: restore by serving from it (docs/operations.md).
    Backup {
        /// A new or empty directory to write the copy to
        #[arg(long)]
        out: PathBuf,
        /// Configuration file, for data_dir and wechat.media_dir [default: ./imgate.toml when present]
        #[arg(long)]
        config: Option<PathBuf>,
        /// The data dir to copy [default: the configuration's]
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Write a commented configuration file, or check one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the frames a user receives, one per line, as they arrive.
    Tail(imgate::tail::TailArgs),
    /// Try the WeChat channel without WeChat.
    #[command(subcommand)]
    Wechat(WechatCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented imgate.toml with every key and its default (or write it to --out).
    Init {
        /// Write here instead of standard output (never over an existing file)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the configuration `serve` would run with (the file, then IMGATE_* variables)
    /// and print it, secrets masked. Exit 0, or 64 with the problem.
    Check {
        /// Configuration file [default: ./imgate.toml when present]
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
// Parsed once at startup: the size of the arguments does not matter.
#[allow(clippy::large_enum_variant)]
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
    // HTTPS to WeChat goes through rustls with ring: chosen once, before any client.
    imgate_wechat::install_tls_provider();
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
            init_tracing(&config.log, config.log_format);
            runtime.block_on(serve(config))
        }
        Command::Config(ConfigCommand::Init { out }) => init_config(out),
        Command::Backup { out, config, data_dir } => {
            let config = match Config::load(config.as_deref(), &Overrides { listen: None, data_dir }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("imgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match imgate::backup::run(&config, &out) {
                Ok(copied) => {
                    for f in &copied.files {
                        eprintln!("imgate: backed up {}", f.display());
                    }
                    eprintln!(
                        "imgate: {} media files; restore by serving with data_dir = {}",
                        copied.media,
                        out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("imgate: backup failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Check { config }) => {
            match Config::load(config.as_deref(), &Overrides::default()) {
                Ok(c) => match imgate::config_file::effective(&c) {
                    Ok(text) => {
                        print!("{text}");
                        eprintln!("imgate: the configuration is valid");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("imgate: cannot print the configuration: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("imgate: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Tail(args) => runtime.block_on(imgate::tail::run(args)),
        Command::Wechat(WechatCommand::Simulate(args)) => {
            runtime.block_on(imgate::wechat::cli::simulate(args))
        }
        Command::Wechat(WechatCommand::Standin(args)) => runtime.block_on(imgate::wechat::cli::standin(args)),
    }
}

fn init_config(out: Option<PathBuf>) -> ExitCode {
    let text = imgate::config_file::example();
    let Some(path) = out else {
        print!("{text}");
        return ExitCode::SUCCESS;
    };
    // create_new: an operator's file is never overwritten by an example.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    match written {
        Ok(()) => {
            eprintln!("imgate: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imgate: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
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

fn init_tracing(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // One object per line, the current span's fields (request_id…) flattened in.
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
}

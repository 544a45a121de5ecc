//! `imgate tail`: a terminal client that prints the frames a user receives.

use std::process::ExitCode;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// The user to connect as.
    #[arg(long)]
    pub userid: String,
    /// The gateway's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:1234/im_component/wx_official_account/msg")]
    pub url: String,
    /// Replay the mailbox after this seq first.
    #[arg(long)]
    pub since: Option<u64>,
    /// A JWT, when the gateway runs with auth.mode = "token".
    #[arg(long, env = "IMGATE_TOKEN")]
    pub token: Option<String>,
    /// Print heartbeat frames too.
    #[arg(long)]
    pub heartbeats: bool,
}

pub async fn run(args: TailArgs) -> ExitCode {
    let url = match tail_url(&args) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("imgate tail: {e}");
            return ExitCode::from(64);
        }
    };
    let (ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imgate tail: cannot connect to {}: {e}", args.url);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("connected as {}", args.userid);
    let (mut tx, mut rx) = ws.split();
    while let Some(msg) = rx.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                if !args.heartbeats && t.contains("\"code\":101,") {
                    let _ = tx.send(Message::text("pong")).await;
                    continue;
                }
                println!("{t}");
            }
            Ok(Message::Close(c)) => {
                match c {
                    Some(c) => {
                        eprintln!("closed by the server: {} {}", u16::from(c.code), c.reason)
                    }
                    None => eprintln!("closed by the server"),
                }
                return ExitCode::SUCCESS;
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("imgate tail: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn tail_url(args: &TailArgs) -> Result<url::Url, url::ParseError> {
    let mut url = url::Url::parse(&args.url)?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("userid", &args.userid);
        if let Some(s) = args.since {
            q.append_pair("since", &s.to_string());
        }
        if let Some(t) = &args.token {
            q.append_pair("token", t);
        }
    }
    Ok(url)
}

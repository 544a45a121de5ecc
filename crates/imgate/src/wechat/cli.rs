//! `imgate wechat simulate` (post a callback exactly as WeChat would) and `imgate wechat
//! standin` (a stand-in for WeChat's API): imgate's WeChat channel, tried without WeChat.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use imgate_protocol::XmlMessage;
use imgate_wechat::callback::{Keys, seal};
use imgate_wechat::{Api, Cipher};

use crate::config::{AccountConfig, Config, Overrides};

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// The gateway's configuration (its accounts and secrets).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The account (its appid); needed when several are configured.
    #[arg(long)]
    pub account: Option<String>,
    /// The follower's openid.
    #[arg(long)]
    pub from: String,
    /// A text message.
    #[arg(long, group = "kind")]
    pub text: Option<String>,
    /// With --text: the follower's tap on a menu message's item (`bizmsgmenuid`, the
    /// item's id), as WeChat sends it.
    #[arg(long, requires = "text")]
    pub menu_choice: Option<String>,
    /// An image message: the file is uploaded to WeChat's API (`wechat.api_base`, e.g. a
    /// stand-in) and its media id sent, as WeChat does.
    #[arg(long, group = "kind")]
    pub image: Option<PathBuf>,
    /// A voice message: an AMR file (what WeChat's app records), uploaded as --image is.
    #[arg(long, group = "kind")]
    pub voice: Option<PathBuf>,
    /// With --voice: WeChat's speech recognition of it (the `Recognition` element).
    #[arg(long, requires = "voice")]
    pub recognition: Option<String>,
    /// An event: subscribe, unsubscribe, CLICK, VIEW, SCAN, LOCATION…
    #[arg(long, group = "kind")]
    pub event: Option<String>,
    /// EventKey of the event.
    #[arg(long)]
    pub event_key: Option<String>,
    /// The running gateway [default: http://<listen> from the configuration].
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct StandinArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:18900")]
    pub listen: SocketAddr,
    /// The gateway's configuration: its accounts' appids and secrets are accepted.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("imgate wechat: {msg}");
    ExitCode::from(64)
}

pub async fn simulate(a: SimulateArgs) -> ExitCode {
    let config = match Config::load(a.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let Some(acct) = account(&config, a.account.as_deref()) else {
        return fail("no such account: configure [[wechat.accounts]] and pick one with --account APPID");
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let x = match message(&a, &config, acct, now).await {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let cipher = if acct.encoding_aes_key.is_empty() {
        None
    } else {
        match Cipher::new(&acct.encoding_aes_key) {
            Ok(c) => Some(c),
            Err(e) => return fail(e),
        }
    };
    let keys = Keys { token: &acct.token, appid: &acct.appid, cipher: cipher.as_ref() };
    let nonce = format!("{}", rand::random::<u32>());
    let (body, query) = seal(&x.to_xml(), keys, &now.to_string(), &nonce);
    let base = a.url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let url =
        format!("{}/im_component/wx_official_account/callback/{}", base.trim_end_matches('/'), acct.appid);
    match reqwest_post(&url, &query, body).await {
        Ok((200, answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok((status, answer)) => {
            eprintln!("imgate answered {status}: {answer}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("imgate wechat simulate: cannot reach {base}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The account `--account` names, or the only one.
fn account<'c>(config: &'c Config, appid: Option<&str>) -> Option<&'c AccountConfig> {
    match appid {
        Some(id) => config.wechat.accounts.iter().find(|x| x.appid == id),
        None if config.wechat.accounts.len() == 1 => config.wechat.accounts.first(),
        None => None,
    }
}

/// The message the follower sends, as WeChat's callback carries it (in clear).
async fn message(
    a: &SimulateArgs,
    config: &Config,
    acct: &AccountConfig,
    now: i64,
) -> Result<XmlMessage, String> {
    let mut x = XmlMessage::default();
    x.set("ToUserName", acct.original_id.clone());
    x.set("FromUserName", a.from.clone());
    x.set("CreateTime", now.to_string());
    let msg_id = || format!("{}", rand::random::<u64>() >> 1);
    if let Some(text) = &a.text {
        x.set("MsgType", "text");
        x.set("Content", text.clone());
        if let Some(id) = &a.menu_choice {
            x.set("bizmsgmenuid", id.clone());
        }
        x.set("MsgId", msg_id());
    } else if let Some(file) = &a.image {
        x.set("MsgType", "image");
        x.set("PicUrl", String::new());
        let ct = if file.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
            "image/png"
        } else {
            "image/jpeg"
        };
        x.set("MediaId", upload(config, acct, file, "image", ct).await?);
        x.set("MsgId", msg_id());
    } else if let Some(file) = &a.voice {
        x.set("MsgType", "voice");
        x.set("MediaId", upload(config, acct, file, "voice", "audio/amr").await?);
        x.set("Format", "amr");
        if let Some(r) = &a.recognition {
            x.set("Recognition", r.clone());
        }
        x.set("MsgId", msg_id());
    } else if let Some(event) = &a.event {
        x.set("MsgType", "event");
        x.set("Event", event.clone());
        if let Some(k) = &a.event_key {
            x.set("EventKey", k.clone());
        }
    } else {
        return Err("say what the follower sends: --text, --image, --voice or --event".into());
    }
    Ok(x)
}

/// Upload `file` to WeChat's API (`wechat.api_base`) as the follower's picture or voice:
/// its media id.
async fn upload(
    config: &Config,
    acct: &AccountConfig,
    file: &std::path::Path,
    kind: &str,
    ct: &str,
) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let api = Api::new(&config.wechat.api_base, config.wechat.api_timeout);
    let base = &config.wechat.api_base;
    let token = api
        .stable_token(&acct.appid, &acct.secret, false)
        .await
        .map_err(|e| format!("access token from {base}: {e}"))?;
    api.media_upload(&token.value, kind, kind, ct, bytes.into())
        .await
        .map_err(|e| format!("uploading the {kind} to {base}: {e}"))
}

pub(crate) async fn reqwest_post(
    url: &str,
    query: &[(String, String)],
    body: String,
) -> Result<(u16, String), String> {
    let mut u = url::Url::parse(url).map_err(|e| e.to_string())?;
    u.query_pairs_mut().extend_pairs(query);
    // A plain HTTP/1.1 POST over a socket: WeChat's servers are no fancier.
    let host = u.host_str().ok_or("no host")?.to_owned();
    let port = u.port_or_known_default().ok_or("no port")?;
    let path = format!("{}?{}", u.path(), u.query().unwrap_or(""));
    let mut stream =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let answer = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, answer))
}

pub async fn standin(a: StandinArgs) -> ExitCode {
    let config = match Config::load(a.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let apps: Vec<(String, String)> =
        config.wechat.accounts.iter().map(|x| (x.appid.clone(), x.secret.clone())).collect();
    let pairs: Vec<(&str, &str)> = apps.iter().map(|(a, s)| (a.as_str(), s.as_str())).collect();
    let s = super::standin::StandIn::new(&pairs);
    // Events (TEMPLATESENDJOBFINISH) go to the first account's callback on the gateway
    // the configuration describes, as WeChat's go to the URL its admin console names.
    if let Some(acct) = config.wechat.accounts.first() {
        s.0.lock().callback = Some(super::standin::CallbackTarget {
            url: format!("http://{}/im_component/wx_official_account/callback/{}", config.listen, acct.appid),
            token: acct.token.clone(),
            original_id: acct.original_id.clone(),
        });
    }
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot listen on {}: {e}", a.listen)),
    };
    eprintln!(
        "WeChat API stand-in on http://{} for {} account(s); set wechat.api_base to it",
        a.listen,
        apps.len()
    );
    match s.serve(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

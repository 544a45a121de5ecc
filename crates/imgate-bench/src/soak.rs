//! `soak`: the load a shared customer-service gateway sees, for minutes, with a `kill -9`
//! and a restart in the middle. This command starts the server itself (the command line
//! after `--`, with `IMGATE_LISTEN` set), so that it can kill it, start it again on the
//! same address and data, and follow the new PID.
//!
//! The load, all at once:
//! - *users*: well-behaved clients on WebSockets. They read, echo heartbeats, and after any
//!   close reconnect with `since` = the last seq they saw. Every message posted to them
//!   carries an id of ours; each frame is matched to it, so a message the server
//!   acknowledged (200, `code` 0) and never delivered, or delivered twice, is counted.
//! - *posters*: a steady modest rate of sends from several senders over keep-alive HTTP,
//!   to random users. A send that fails for want of a server (the restart), or with 5xx,
//!   is retried with the same id, as a backend would; a 429 is retried after its
//!   `Retry-After`.
//! - *stallers*: clients that connect, then stop reading while messages (some large) keep
//!   coming. After a while they read again, to see how the server ended the connection
//!   (its close code), then connect again.
//! - *slowloris*: TCP connections that send half an HTTP request, a byte every few seconds.
//! - *flood*: one sender posting as fast as it can, ignoring `Retry-After`.
//!
//! The figures: the server's RSS every second (an SVG plot), acknowledged against delivered
//! for the users, the users' largest POST → frame latency (outside the restart; the
//! restart's own reported apart), and every outcome counted by kind (statuses, close
//! codes). A human summary goes to stderr, one JSON line to stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::poster::{Answer, Poster};
use crate::{Error, nonce, proc, ws_config};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// How long the load runs (600, 90s, 10m); the restart is at half time.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the server listens (given to it as IMGATE_LISTEN); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// A name for the server in the summary.
    #[arg(long, default_value = "imgate")]
    pub label: String,
    /// Well-behaved users on WebSockets.
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Messages per second to the users, from all posters together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Keep-alive connections the users' messages are posted on.
    #[arg(long, default_value_t = 8)]
    pub posters: usize,
    /// Distinct senders (`?userid=`) of the users' messages.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Bytes of text in each message to a user.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Clients that stop reading.
    #[arg(long, default_value_t = 50)]
    pub stallers: usize,
    /// Messages per second to the stallers, all together.
    #[arg(long, default_value_t = 10.0)]
    pub staller_rate: f64,
    /// Every Nth message to a staller is large.
    #[arg(long, default_value_t = 10)]
    pub large_every: u64,
    /// Bytes of text in a large message.
    #[arg(long, default_value_t = 48 * 1024)]
    pub large_size: usize,
    /// How long a staller stops reading before it looks at how its connection ended.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub stall: Duration,
    /// Slowloris connections.
    #[arg(long, default_value_t = 300)]
    pub slowloris: usize,
    /// A slowloris connection sends one byte this often.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub slowloris_interval: Duration,
    /// Connections the flooding sender posts on, each as fast as it is answered (0: no flood).
    #[arg(long, default_value_t = 2)]
    pub flood_conns: usize,
    /// Recipients of the flood (offline mailboxes, so retention bounds the disk it takes).
    #[arg(long, default_value_t = 20)]
    pub flood_recipients: usize,
    /// Don't kill and restart the server.
    #[arg(long)]
    pub no_restart: bool,
    /// How long the server stays dead after kill -9.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub restart_delay: Duration,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long to wait, after the load stops, for frames still on their way.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub drain: Duration,
    /// The RSS plot.
    #[arg(long, default_value = "docs/soak-rss.svg")]
    pub plot: PathBuf,
    /// The server's stdout and stderr go here.
    #[arg(long, default_value = "soak-server.log")]
    pub server_log: PathBuf,
    /// The running server's PID is kept in this file (for a script's cleanup).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// The server's command line, e.g. `-- target/release/imgate serve --config soak.toml`.
    #[arg(last = true, required = true)]
    pub server: Vec<String>,
}

/// `600`, `600s`, `10m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 10m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("{s:?} must be above zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------
// The server process

struct Server {
    cmd: Vec<String>,
    addr: SocketAddr,
    log: PathBuf,
    pid_file: Option<PathBuf>,
    child: Option<std::process::Child>,
    /// The running server's PID, 0 while there is none: what the RSS sampler reads.
    pid: Arc<AtomicU32>,
}

impl Server {
    /// Start it and wait until `/healthz` answers 200.
    async fn start(&mut self) -> Result<(), Error> {
        use std::fs::OpenOptions;
        let out = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let child = std::process::Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .env("IMGATE_LISTEN", self.addr.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", self.cmd[0]))?;
        let pid = child.id();
        self.child = Some(child);
        if let Some(f) = &self.pid_file {
            std::fs::write(f, format!("{pid}\n"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                return Err(
                    format!("the server exited at start ({status}); see {}", self.log.display()).into()
                );
            }
            if healthy(self.addr).await {
                self.pid.store(pid, Ordering::Release);
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the server did not answer /healthz within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash would end it.
    fn kill9(&mut self) -> Result<(), Error> {
        self.pid.store(0, Ordering::Release);
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for it to drain (SIGKILL after 60 s); how it exited.
    async fn stop(&mut self) -> Option<String> {
        let mut c = self.child.take()?;
        let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            match c.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break "did not stop within 60 s of SIGTERM: killed".to_owned();
                }
            }
        };
        self.pid.store(0, Ordering::Release);
        if let Some(f) = &self.pid_file {
            let _ = std::fs::remove_file(f);
        }
        Some(status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // An error on the way must not leave a server running.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn healthy(addr: SocketAddr) -> bool {
    let probe = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Ok(true)))
}

// ---------------------------------------------------------------------------------------
// What the clients saw

/// A message posted to a well-behaved user.
struct Msg {
    to: u32,
    /// When its first POST started (ns after `base`).
    posted: u64,
    acked: bool,
    /// When it first arrived (ns after `base`); 0 = not yet.
    first_seen: u64,
    seen: u32,
}

/// Outcomes counted by kind ("close 4008", "http 429", "reset", …).
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, kind: impl Into<String>) {
        *self.0.lock().expect("tally").entry(kind.into()).or_default() += 1;
    }
    fn json(&self) -> Value {
        json!(*self.0.lock().expect("tally"))
    }
    fn line(&self) -> String {
        let m = self.0.lock().expect("tally");
        if m.is_empty() {
            return "none".into();
        }
        m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Default)]
struct Stats {
    /// Users: how their connections ended, and why connecting failed.
    user_closes: Tally,
    user_connect_failures: Tally,
    user_connects: AtomicU64,
    connected: AtomicUsize,
    misdelivered: AtomicU64,
    seq_gaps: AtomicU64,
    seq_repeats: AtomicU64,
    /// Posters: answers other than an acknowledgement, and connection errors.
    poster_outcomes: Tally,
    /// Messages the posters gave up on (no answer before the end).
    abandoned: AtomicU64,
    /// Stallers: how their connections ended.
    staller_ends: Tally,
    staller_connect_failures: Tally,
    staller_max_drained: AtomicU64,
    staller_posts: Tally,
    /// Slowloris: how the server ended each connection, and how long it lived.
    slow_ends: Tally,
    slow_opened: AtomicU64,
    slow_open_now: AtomicU64,
    slow_open_max: AtomicU64,
    slow_max_life_ms: AtomicU64,
    slow_connect_failures: Tally,
    /// Flood: answers by kind.
    flood: Tally,
    flood_acked: AtomicU64,
    flood_retry_after: AtomicU64,
}

struct Soak {
    base: Instant,
    /// The running server's PID, 0 while there is none.
    pid: Arc<AtomicU32>,
    /// Which server process a connection was made to: 1 for the first, 2 after the restart.
    epoch: AtomicU32,
    tag: String,
    http: String,
    ws: String,
    msgs: Mutex<Vec<Msg>>,
    stats: Stats,
}

impl Soak {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn user(&self, i: usize) -> String {
        format!("s{}u{i}", self.tag)
    }
    fn msg_id(&self, i: usize) -> String {
        format!("s{}m{i}", self.tag)
    }
    /// How a connection that ended without a close frame is counted: as the work of the
    /// kill -9 when its server is gone, apart from what the server did on purpose.
    fn unclean_end(&self, epoch: u32, kind: String) -> String {
        if self.pid.load(Ordering::Acquire) == 0 || self.epoch.load(Ordering::Acquire) != epoch {
            "ended by the kill -9".to_owned()
        } else {
            kind
        }
    }
    /// A failure to connect, marked when it happened while the server was down.
    fn connect_failure(&self, kind: impl Into<String>) -> String {
        let kind = kind.into();
        if self.pid.load(Ordering::Acquire) == 0 { format!("{kind} (server down)") } else { kind }
    }
    /// The index in one of our message ids.
    fn msg_index(&self, id: &str) -> Option<usize> {
        id.strip_prefix('s')?.strip_prefix(self.tag.as_str())?.strip_prefix('m')?.parse().ok()
    }
}

/// A phase ends: everyone waiting on it stops.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn is_set(&self) -> bool {
        *self.0.borrow()
    }
    async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
    /// Sleep, or return early (false) when the phase ends.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wait() => false,
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        ConnectionAborted => "aborted".into(),
        BrokenPipe => "broken pipe".into(),
        UnexpectedEof => "eof".into(),
        TimedOut => "timeout".into(),
        k => format!("io {k:?}"),
    }
}

fn ws_error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!("http {}", resp.status().as_u16()),
        tungstenite::Error::Io(io) => io_kind(io),
        tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            "reset without a close frame".into()
        }
        tungstenite::Error::Protocol(p) => format!("protocol: {p}"),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        other => format!("{other}"),
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_ws(url: String, gate: &Semaphore) -> Result<Ws, String> {
    let _p = gate.acquire().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(ws_error_kind(&e)),
        Err(_) => Err("timeout".into()),
    }
}

/// Backoff after the nth failure in a row: doubling from 100 ms to 2 s, with jitter so that
/// thousands of clients do not come back in step.
fn backoff(n: u32) -> Duration {
    let base = 100u64 << n.min(5);
    Duration::from_millis(base.min(2000) / 2 + rand::random_range(0..=base.min(2000)))
}

// ---------------------------------------------------------------------------------------
// Well-behaved users

async fn user(s: Arc<Soak>, u: usize, gate: Arc<Semaphore>, mut end: Stop) {
    let name = s.user(u);
    let mut last_seq = 0u64;
    let mut failures = 0u32;
    while !end.is_set() {
        let url = if last_seq > 0 {
            format!("{}/?userid={name}&since={last_seq}", s.ws)
        } else {
            format!("{}/?userid={name}", s.ws)
        };
        let mut ws = tokio::select! {
            r = connect_ws(url, &gate) => match r {
                Ok(ws) => ws,
                Err(kind) => {
                    s.stats.user_connect_failures.add(s.connect_failure(kind));
                    failures += 1;
                    end.sleep(backoff(failures)).await;
                    continue;
                }
            },
            _ = end.wait() => break,
        };
        failures = 0;
        let epoch = s.epoch.load(Ordering::Acquire);
        s.stats.user_connects.fetch_add(1, Ordering::Relaxed);
        s.stats.connected.fetch_add(1, Ordering::AcqRel);
        let ended = loop {
            let m = tokio::select! {
                m = ws.next() => m,
                _ = end.wait() => break None,
            };
            let t = match m {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => {
                    break Some(
                        f.map_or("close without code".into(), |f| format!("close {}", u16::from(f.code))),
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(s.unclean_end(epoch, ws_error_kind(&e))),
                None => break Some(s.unclean_end(epoch, "eof".into())),
            };
            let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
            if v["result"]["code"] == 101 {
                // Echo the heartbeat, as the seed's clients do.
                let _ = ws.send(Message::Text(t)).await;
                continue;
            }
            let Some(seq) = v["data"]["seq"].as_u64() else { continue };
            if seq <= last_seq {
                s.stats.seq_repeats.fetch_add(1, Ordering::Relaxed);
            } else if last_seq > 0 && seq > last_seq + 1 {
                s.stats.seq_gaps.fetch_add(1, Ordering::Relaxed);
            }
            last_seq = last_seq.max(seq);
            let Some(i) = v["data"]["id"].as_str().and_then(|id| s.msg_index(id)) else { continue };
            let now = s.now();
            let mut msgs = s.msgs.lock().expect("msgs");
            match msgs.get_mut(i) {
                Some(m) if m.to as usize == u => {
                    m.seen += 1;
                    if m.first_seen == 0 {
                        m.first_seen = now;
                    }
                }
                _ => {
                    s.stats.misdelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        s.stats.connected.fetch_sub(1, Ordering::AcqRel);
        match ended {
            Some(kind) => s.stats.user_closes.add(kind),
            None => {
                let _ = ws.close(None).await;
                break;
            }
        }
        end.sleep(backoff(0)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Posters: the users' messages

/// Post until acknowledged, refused, or `give_up`; whether it was acknowledged.
async fn post_until_answered(
    s: &Soak,
    poster: &mut Option<Poster>,
    path: &str,
    body: &Bytes,
    tally: &Tally,
    give_up: &mut Stop,
) -> bool {
    let mut failures = 0u32;
    loop {
        if give_up.is_set() {
            return false;
        }
        if poster.is_none() {
            match Poster::connect(&s.http).await {
                Ok(p) => *poster = Some(p),
                Err(_) => {
                    tally.add(s.connect_failure("connect failed"));
                    failures += 1;
                    give_up.sleep(backoff(failures)).await;
                    continue;
                }
            }
        }
        let p = poster.as_mut().expect("connected above");
        let answer =
            tokio::time::timeout(Duration::from_secs(30), p.send(path, "application/json", body.clone()))
                .await;
        match answer {
            Ok(Ok(a)) if a.status == 200 && acknowledged(&a) => {
                let dup = b"\"duplicate\":true";
                if a.body.windows(dup.len()).any(|w| w == dup) {
                    // A retry of a send the server had committed before it went away.
                    tally.add("acknowledged as a duplicate of an earlier attempt");
                }
                return true;
            }
            Ok(Ok(Answer { status: 429, retry_after, .. })) => {
                tally.add(if retry_after.is_some() { "http 429 (Retry-After)" } else { "http 429" });
                give_up.sleep(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30))).await;
            }
            Ok(Ok(a)) if a.status >= 500 => {
                tally.add(format!("http {} (retried)", a.status));
                failures += 1;
                give_up.sleep(backoff(failures)).await;
            }
            Ok(Ok(a)) => {
                tally.add(format!("http {} (refused)", a.status));
                return false;
            }
            Ok(Err(_)) | Err(_) => {
                // The connection broke (the restart) or hung: retry the same id on a new
                // one; the server drops the copy if the first attempt was committed.
                tally.add("connection lost or no answer in 30 s (retried)");
                *poster = None;
                failures += 1;
                give_up.sleep(backoff(failures)).await;
            }
        }
    }
}

fn acknowledged(a: &Answer) -> bool {
    serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| v["result"]["code"] == 0)
}

async fn poster(s: Arc<Soak>, p: usize, a: Args, t0: Instant, mut stop: Stop, mut give_up: Stop) {
    let filler = "x".repeat(a.size);
    let every = Duration::from_secs_f64(a.posters as f64 / a.rate);
    let offset = Duration::from_secs_f64(p as f64 / a.rate);
    let mut conn: Option<Poster> = None;
    for k in 0u32.. {
        // Open loop: message k is due at its place in the schedule; one that is late (after
        // the restart) goes at once.
        let due = t0 + offset + every * k;
        if !stop.sleep(due.saturating_duration_since(Instant::now())).await {
            break;
        }
        let to = rand::random_range(0..a.users);
        let sender = rand::random_range(0..a.senders);
        let i = {
            let mut msgs = s.msgs.lock().expect("msgs");
            msgs.push(Msg { to: to as u32, posted: s.now(), acked: false, first_seen: 0, seen: 0 });
            msgs.len() - 1
        };
        let body = json!({
            "data": {"id": s.msg_id(i), "msg_type": "text", "contact_id": s.user(to), "msg": {"content": filler}},
            "result": {"code": 1001, "message": "common"},
        });
        let path = format!("/send?userid=s{}agent{sender}", s.tag);
        let body = Bytes::from(body.to_string());
        if post_until_answered(&s, &mut conn, &path, &body, &s.stats.poster_outcomes, &mut give_up).await {
            s.msgs.lock().expect("msgs")[i].acked = true;
        } else if give_up.is_set() {
            s.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stallers: connect, stop reading, look later

async fn staller(s: Arc<Soak>, k: usize, a: Args, addr: SocketAddr, gate: Arc<Semaphore>, mut stop: Stop) {
    let name = format!("s{}st{k}", s.tag);
    // Stagger the first stall so that the stallers do not all look at once.
    let mut stall = a.stall.mul_f64(rand::random_range(0.5..=1.0));
    let mut failures = 0u32;
    while !stop.is_set() {
        let connected = {
            let _p = gate.acquire().await;
            tokio::time::timeout(Duration::from_secs(10), raw_ws_connect(addr, &name)).await
        };
        let (mut tcp, mut buf) = match connected {
            Ok(Ok(c)) => c,
            Ok(Err(kind)) => {
                s.stats.staller_connect_failures.add(s.connect_failure(kind));
                failures += 1;
                stop.sleep(backoff(failures)).await;
                continue;
            }
            Err(_) => {
                s.stats.staller_connect_failures.add(s.connect_failure("timeout"));
                failures += 1;
                stop.sleep(backoff(failures)).await;
                continue;
            }
        };
        failures = 0;
        let epoch = s.epoch.load(Ordering::Acquire);
        stop.sleep(stall).await;
        stall = a.stall;
        // Read again: whatever the server had buffered, then how it ended the connection.
        let mut drained = buf.len() as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut chunk = vec![0u8; 64 * 1024];
        let end = loop {
            if let Some(code) = skip_frames(&mut buf) {
                break code.map_or("close without code".to_owned(), |c| format!("close {c}"));
            }
            match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
                Err(_) => break "still open after the stall".to_owned(),
                Ok(Ok(0)) => break s.unclean_end(epoch, "dropped without a close frame (eof)".to_owned()),
                Ok(Ok(n)) => {
                    drained += n as u64;
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok(Err(e)) => {
                    break s.unclean_end(epoch, format!("dropped without a close frame ({})", io_kind(&e)));
                }
            }
        };
        s.stats.staller_max_drained.fetch_max(drained, Ordering::Relaxed);
        s.stats.staller_ends.add(end);
    }
}

/// A WebSocket opened by hand, for a client that will not read: tungstenite answers pings
/// on its next read and fails on that write once the server has gone, before handing over
/// the close frame behind it. The socket, and bytes read past the handshake.
async fn raw_ws_connect(addr: SocketAddr, user: &str) -> Result<(tokio::net::TcpStream, Vec<u8>), String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| io_kind(&e))?;
    let req = format!(
        "GET /?userid={user} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: c29hay1zdGFsbGVyLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.map_err(|e| io_kind(&e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("answer without an end of headers".into());
        }
        match tcp.read(&mut chunk).await {
            Ok(0) => return Err("eof".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io_kind(&e)),
        }
    };
    match buf.get(9..12) {
        Some(b"101") => Ok((tcp, buf.split_off(head_end))),
        Some(code) => Err(format!("http {}", String::from_utf8_lossy(code))),
        None => Err("not HTTP".into()),
    }
}

/// Drop the whole server frames at the front of `buf`. At a close frame: `Some(its code)`.
fn skip_frames(buf: &mut Vec<u8>) -> Option<Option<u16>> {
    let mut at = 0;
    let found = loop {
        let Some(&[b0, b1]) = buf.get(at..at + 2) else { break None };
        let (len, head) = match b1 & 0x7f {
            126 => match buf.get(at + 2..at + 4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => break None,
            },
            127 => match buf.get(at + 2..at + 10) {
                Some(l) => (u64::from_be_bytes(l.try_into().expect("8 bytes")), 10),
                None => break None,
            },
            n => (u64::from(n), 2),
        };
        // Servers do not mask; a mask would be 4 more bytes of header.
        let head = head + if b1 & 0x80 != 0 { 4 } else { 0 };
        let Some(end) = usize::try_from(len).ok().and_then(|l| (at + head).checked_add(l)) else {
            break None;
        };
        if buf.len() < end {
            break None;
        }
        if b0 & 0x0f == 0x8 {
            let code = buf.get(at + head..at + head + 2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            break Some(code);
        }
        at = end;
    };
    buf.drain(..at);
    found
}

/// The stallers' messages, some of them large, on one keep-alive connection.
async fn staller_poster(s: Arc<Soak>, a: Args, t0: Instant, mut stop: Stop) {
    let small = "y".repeat(a.size);
    let large = "z".repeat(a.large_size);
    let every = Duration::from_secs_f64(1.0 / a.staller_rate);
    let mut conn: Option<Poster> = None;
    for n in 0u32.. {
        if !stop.sleep((t0 + every * n).saturating_duration_since(Instant::now())).await {
            break;
        }
        let content = if a.large_every > 0 && u64::from(n) % a.large_every == a.large_every - 1 {
            &large
        } else {
            &small
        };
        let body = json!({"data": {"msg_type": "text", "contact_id": format!("s{}st{}", s.tag, n as usize % a.stallers),
            "msg": {"content": content}}});
        if conn.is_none() {
            match Poster::connect(&s.http).await {
                Ok(p) => conn = Some(p),
                Err(_) => {
                    s.stats.staller_posts.add(s.connect_failure("connect failed"));
                    continue;
                }
            }
        }
        let p = conn.as_mut().expect("connected above");
        let path = format!("/send?userid=s{}bulk", s.tag);
        match tokio::time::timeout(
            Duration::from_secs(30),
            p.send(&path, "application/json", Bytes::from(body.to_string())),
        )
        .await
        {
            Ok(Ok(a)) if a.status == 200 && acknowledged(&a) => s.stats.staller_posts.add("acked"),
            Ok(Ok(a)) => s.stats.staller_posts.add(format!("http {}", a.status)),
            _ => {
                s.stats.staller_posts.add("connection lost");
                conn = None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Slowloris

async fn slowloris(s: Arc<Soak>, addr: SocketAddr, interval: Duration, mut stop: Stop) {
    // Half a request: the headers never end.
    let head = b"POST /send?userid=slowloris HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: ";
    let mut failures = 0u32;
    // Spread the first bytes over one interval.
    stop.sleep(interval.mul_f64(rand::random_range(0.0..1.0))).await;
    while !stop.is_set() {
        let mut tcp =
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    s.stats.slow_connect_failures.add(s.connect_failure(io_kind(&e)));
                    failures += 1;
                    stop.sleep(backoff(failures)).await;
                    continue;
                }
                Err(_) => {
                    s.stats.slow_connect_failures.add("timeout");
                    failures += 1;
                    stop.sleep(backoff(failures)).await;
                    continue;
                }
            };
        failures = 0;
        let epoch = s.epoch.load(Ordering::Acquire);
        let opened = Instant::now();
        s.stats.slow_opened.fetch_add(1, Ordering::Relaxed);
        let now = s.stats.slow_open_now.fetch_add(1, Ordering::AcqRel) + 1;
        s.stats.slow_open_max.fetch_max(now, Ordering::Relaxed);
        let mut sent = 0usize;
        let mut buf = [0u8; 512];
        let mut tick = tokio::time::interval(interval);
        let end: Option<String> = loop {
            tokio::select! {
                _ = stop.wait() => break None,
                r = tcp.read(&mut buf) => break Some(match r {
                    Ok(0) => "closed by the server (eof)".to_owned(),
                    Ok(n) => {
                        let answer = String::from_utf8_lossy(&buf[..n]);
                        match answer.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)) {
                            Some(code) => format!("answered {code}"),
                            None => "answered something".to_owned(),
                        }
                    }
                    Err(e) => io_kind(&e),
                }),
                _ = tick.tick() => {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if let Err(e) = tcp.write_all(&[byte]).await {
                        break Some(format!("write failed ({})", io_kind(&e)));
                    }
                    sent += 1;
                }
            }
        };
        s.stats.slow_open_now.fetch_sub(1, Ordering::AcqRel);
        let Some(end) = end else {
            s.stats.slow_ends.add("still open at the end");
            break;
        };
        let end = if end.starts_with("answered") { end } else { s.unclean_end(epoch, end) };
        let by_restart = end == "ended by the kill -9";
        s.stats.slow_ends.add(end);
        if by_restart {
            stop.sleep(Duration::from_secs(1)).await;
            continue;
        }
        s.stats.slow_max_life_ms.fetch_max(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        stop.sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Flood

async fn flood(s: Arc<Soak>, a: Args, mut stop: Stop) {
    let mut conn: Option<Poster> = None;
    let path = format!("/send?userid=s{}flood", s.tag);
    for n in 0usize.. {
        if stop.is_set() {
            break;
        }
        if conn.is_none() {
            match Poster::connect(&s.http).await {
                Ok(p) => conn = Some(p),
                Err(_) => {
                    s.stats.flood.add(s.connect_failure("connect failed"));
                    stop.sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let body = format!(
            "{{\"data\":{{\"msg_type\":\"text\",\"contact_id\":\"s{}fl{}\",\"msg\":{{\"content\":\"flood {n}\"}}}}}}",
            s.tag,
            n % a.flood_recipients.max(1)
        );
        let p = conn.as_mut().expect("connected above");
        let answer = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(30), p.send(&path, "application/json", Bytes::from(body))) => r,
            _ = stop.wait() => break,
        };
        match answer {
            Ok(Ok(a)) if a.status == 200 && acknowledged(&a) => {
                s.stats.flood_acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(a)) => {
                if a.retry_after.is_some() {
                    s.stats.flood_retry_after.fetch_add(1, Ordering::Relaxed);
                }
                s.stats.flood.add(format!("http {}", a.status));
            }
            _ => {
                s.stats.flood.add("connection lost");
                conn = None;
                stop.sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run

struct Sample {
    t: f64,
    pid: u32,
    rss_kib: u64,
}

pub async fn run(a: Args) -> Result<(), Error> {
    let addr = if a.listen.port() == 0 {
        // Ask the kernel for a free port, then hand it to the server: the restart must
        // come back on the same address, where the clients reconnect.
        std::net::TcpListener::bind(a.listen)?.local_addr()?
    } else {
        a.listen
    };
    let tag = nonce();
    let pid = Arc::new(AtomicU32::new(0));
    let s = Arc::new(Soak {
        base: Instant::now(),
        pid: pid.clone(),
        epoch: AtomicU32::new(1),
        tag,
        http: format!("http://{addr}"),
        ws: format!("ws://{addr}"),
        msgs: Mutex::new(Vec::new()),
        stats: Stats::default(),
    });
    let mut server = Server {
        cmd: a.server.clone(),
        addr,
        log: a.server_log.clone(),
        pid_file: a.pid_file.clone(),
        child: None,
        pid: pid.clone(),
    };
    server.start().await?;
    let ms = |t: Instant| t.duration_since(s.base).as_secs_f64();
    eprintln!("soak: server {} on {addr} (log {})", pid.load(Ordering::Acquire), a.server_log.display());

    // RSS every second, from whichever process is running.
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let (end_tx, end_rx) = watch::channel(false);
    let end = Stop(end_rx);
    let sampler = {
        let (samples, pid, base, mut end) = (samples.clone(), pid.clone(), s.base, end.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = end.wait() => break,
                }
                let p = pid.load(Ordering::Acquire);
                if let Some(rss_kib) = (p != 0).then(|| proc::rss_kib(p)).flatten() {
                    samples.lock().expect("samples").push(Sample {
                        t: base.elapsed().as_secs_f64(),
                        pid: p,
                        rss_kib,
                    });
                }
            }
        })
    };

    // The users connect first.
    let gate = Arc::new(Semaphore::new(a.connect_concurrency));
    let mut users = Vec::new();
    for u in 0..a.users {
        users.push(tokio::spawn(user(s.clone(), u, gate.clone(), end.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while s.stats.connected.load(Ordering::Acquire) < a.users && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "soak: {} of {} users connected; load for {:?}",
        s.stats.connected.load(Ordering::Acquire),
        a.users,
        a.duration
    );

    // Then the load, all at once.
    let t0 = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let (give_up_tx, give_up_rx) = watch::channel(false);
    let give_up = Stop(give_up_rx);
    let mut load = Vec::new();
    for p in 0..a.posters {
        load.push(tokio::spawn(poster(s.clone(), p, a.clone(), t0, stop.clone(), give_up.clone())));
    }
    if a.stallers > 0 {
        for k in 0..a.stallers {
            load.push(tokio::spawn(staller(s.clone(), k, a.clone(), addr, gate.clone(), stop.clone())));
        }
        load.push(tokio::spawn(staller_poster(s.clone(), a.clone(), t0, stop.clone())));
    }
    for _ in 0..a.slowloris {
        load.push(tokio::spawn(slowloris(s.clone(), addr, a.slowloris_interval, stop.clone())));
    }
    for _ in 0..a.flood_conns {
        load.push(tokio::spawn(flood(s.clone(), a.clone(), stop.clone())));
    }

    // kill -9 at half time, and a restart on the same address and data.
    let mut restart: Option<(Instant, Instant, Option<Instant>)> = None;
    if !a.no_restart {
        tokio::time::sleep_until((t0 + a.duration / 2).into()).await;
        let old = pid.load(Ordering::Acquire);
        let killed = Instant::now();
        server.kill9()?;
        s.epoch.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(a.restart_delay).await;
        server.start().await?;
        let ready = Instant::now();
        eprintln!(
            "soak: killed {old} (kill -9) at {:.1}s; {} ready {:.2}s later",
            ms(killed),
            pid.load(Ordering::Acquire),
            ready.duration_since(killed).as_secs_f64()
        );
        let deadline = ready + Duration::from_secs(60);
        while s.stats.connected.load(Ordering::Acquire) < a.users && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let back = (s.stats.connected.load(Ordering::Acquire) >= a.users).then(Instant::now);
        match back {
            Some(b) => eprintln!(
                "soak: every user reconnected {:.2}s after the kill",
                b.duration_since(killed).as_secs_f64()
            ),
            None => eprintln!("soak: users still away 60 s after the restart"),
        }
        restart = Some((killed, ready, back));
    }
    tokio::time::sleep_until((t0 + a.duration).into()).await;
    let _ = stop_tx.send(true);
    let load_secs = t0.elapsed().as_secs_f64();
    // Posters still retrying get a last chance, then give up.
    let give_up_at = Instant::now() + Duration::from_secs(10);
    for t in load.drain(..a.posters) {
        let left = give_up_at.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            let _ = give_up_tx.send(true);
        }
    }
    let _ = give_up_tx.send(true);
    for t in load {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }

    // Let frames on their way arrive: until every acknowledged message was seen, or nothing
    // new arrived for 5 s, or the drain time is up.
    let missing = || {
        let msgs = s.msgs.lock().expect("msgs");
        (msgs.iter().filter(|m| m.acked && m.seen == 0).count(), msgs.iter().filter(|m| m.seen > 0).count())
    };
    let drain_end = Instant::now() + a.drain;
    let (mut last_seen, mut still) = (missing().1, Instant::now());
    loop {
        let (miss, seen) = missing();
        if miss == 0 || Instant::now() > drain_end || still.elapsed() > Duration::from_secs(5) {
            break;
        }
        if seen != last_seen {
            (last_seen, still) = (seen, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_end = proc::rss_kib(pid.load(Ordering::Acquire));
    let _ = end_tx.send(true);
    for u in users {
        let _ = tokio::time::timeout(Duration::from_secs(10), u).await;
    }
    let _ = sampler.await;
    let server_exit = server.stop().await;

    // The figures.
    let msgs = std::mem::take(&mut *s.msgs.lock().expect("msgs"));
    let posted = msgs.len() as u64;
    let acked = msgs.iter().filter(|m| m.acked).count() as u64;
    let delivered_once = msgs.iter().filter(|m| m.acked && m.seen == 1).count() as u64;
    let lost = msgs.iter().filter(|m| m.acked && m.seen == 0).count() as u64;
    let duplicated = msgs.iter().filter(|m| m.seen > 1).count() as u64;
    let extra_copies: u64 = msgs.iter().map(|m| u64::from(m.seen.saturating_sub(1))).sum();
    let delivered_unacked = msgs.iter().filter(|m| !m.acked && m.seen > 0).count() as u64;
    // A message whose way from POST to frame overlaps the restart (kill → every user back)
    // measures the restart, not the gateway at work: it is reported apart.
    let gap = restart.map(|(k, r, back)| {
        let until = back.unwrap_or(r + Duration::from_secs(60));
        (k.duration_since(s.base).as_nanos() as u64, until.duration_since(s.base).as_nanos() as u64)
    });
    let mut steady = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut across = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for m in msgs.iter().filter(|m| m.first_seen > 0) {
        let us = (m.first_seen.saturating_sub(m.posted) / 1000).max(1);
        if overlaps(m.posted, m.first_seen, gap) {
            across.saturating_record(us);
        } else {
            steady.saturating_record(us);
        }
    }
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last_pid = 0;
    for x in &samples {
        if x.pid != last_pid {
            segments.push(Vec::new());
            last_pid = x.pid;
        }
        segments.last_mut().expect("pushed above").push((x.t, x.rss_kib as f64 / 1024.0));
    }
    let max_of = |it: &mut dyn Iterator<Item = &Sample>| it.map(|x| x.rss_kib).max();
    let first_pid = samples.first().map(|x| x.pid);
    let rss = json!({
        "samples": samples.len(),
        "start_kib": samples.first().map(|x| x.rss_kib),
        "max_kib": max_of(&mut samples.iter()),
        "max_before_kill_kib": max_of(&mut samples.iter().filter(|x| Some(x.pid) == first_pid)),
        "max_after_restart_kib": max_of(&mut samples.iter().filter(|x| Some(x.pid) != first_pid)),
        "end_kib": rss_end.or(samples.last().map(|x| x.rss_kib)),
    });
    let mut marks = Vec::new();
    if let Some((k, r, _)) = restart {
        marks.push((ms(k), "kill -9".to_owned()));
        marks.push((ms(r), "restarted".to_owned()));
    }
    let caption = format!(
        "{} RSS: {} users, {} stallers, {} slowloris, flood ×{}, {:.0} msg/s",
        a.label, a.users, a.stallers, a.slowloris, a.flood_conns, a.rate
    );
    if let Some(dir) = a.plot.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::plot::rss_svg(&a.plot, &caption, &segments, &marks)?;

    let st = &s.stats;
    let flood_acked = st.flood_acked.load(Ordering::Relaxed);
    let summary = json!({
        "workload": "soak",
        "server": a.label,
        "load_secs": load_secs,
        "users": a.users,
        "rate": a.rate,
        "posters": a.posters,
        "senders": a.senders,
        "stallers": a.stallers,
        "slowloris": a.slowloris,
        "flood_conns": a.flood_conns,
        "restart": restart.map(|(k, r, back)| json!({
            "kill_at_secs": ms(k),
            "down_secs": r.duration_since(k).as_secs_f64(),
            "all_users_back_secs": back.map(|b| b.duration_since(k).as_secs_f64()),
        })),
        "rss": rss,
        "well_behaved": {
            "posted": posted,
            "acked": acked,
            "delivered_once": delivered_once,
            "lost": lost,
            "duplicated": duplicated,
            "extra_copies": extra_copies,
            "delivered_unacked": delivered_unacked,
            "abandoned": st.abandoned.load(Ordering::Relaxed),
            "misdelivered": st.misdelivered.load(Ordering::Relaxed),
            "seq_gaps": st.seq_gaps.load(Ordering::Relaxed),
            "seq_repeats": st.seq_repeats.load(Ordering::Relaxed),
            "post_outcomes": st.poster_outcomes.json(),
            "connects": st.user_connects.load(Ordering::Relaxed),
            "connect_failures": st.user_connect_failures.json(),
            "closes": st.user_closes.json(),
        },
        "latency_us": crate::ledger::latency(&steady),
        "latency_restart_us": crate::ledger::latency(&across),
        "stallers_detail": {
            "ends": st.staller_ends.json(),
            "connect_failures": st.staller_connect_failures.json(),
            "max_drained_bytes": st.staller_max_drained.load(Ordering::Relaxed),
            "posts": st.staller_posts.json(),
        },
        "slowloris_detail": {
            "opened": st.slow_opened.load(Ordering::Relaxed),
            "max_open": st.slow_open_max.load(Ordering::Relaxed),
            "ends": st.slow_ends.json(),
            "longest_closed_ms": st.slow_max_life_ms.load(Ordering::Relaxed),
            "connect_failures": st.slow_connect_failures.json(),
        },
        "flood": {
            "acked": flood_acked,
            "acked_per_sec": flood_acked as f64 / load_secs,
            "refused": st.flood.json(),
            "with_retry_after": st.flood_retry_after.load(Ordering::Relaxed),
        },
        "server_exit": server_exit,
    });

    let mib = |k: &Value| k.as_u64().map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    let lat = |v: &Value| {
        if v.is_null() {
            return "none".to_owned();
        }
        format!("p50 {:.1} / p99 {:.1} / max {:.1} ms", ms_of(&v["p50"]), ms_of(&v["p99"]), ms_of(&v["max"]))
    };
    let lat_steady = &summary["latency_us"];
    let lat_restart = &summary["latency_restart_us"];
    eprintln!();
    eprintln!("### Soak: {} for {load_secs:.0} s", a.label);
    eprintln!();
    eprintln!(
        "- load: {} users ({:.0} msg/s from {} senders on {} connections), {} stallers ({:.0} msg/s, every {}th {} KiB), {} slowloris (a byte every {:?}), flood on {} connections",
        a.users,
        a.rate,
        a.senders,
        a.posters,
        a.stallers,
        a.staller_rate,
        a.large_every,
        a.large_size / 1024,
        a.slowloris,
        a.slowloris_interval,
        a.flood_conns
    );
    match restart {
        Some((k, r, back)) => eprintln!(
            "- restart: kill -9 at {:.0} s, ready {:.2} s later, every user back after {}",
            ms(k) - ms(t0),
            r.duration_since(k).as_secs_f64(),
            back.map_or("never (60 s)".to_owned(), |b| format!("{:.2} s", b.duration_since(k).as_secs_f64()))
        ),
        None => eprintln!("- restart: none"),
    }
    eprintln!(
        "- RSS MiB: start {}, max {} (first process {}, after restart {}), end {} — plot {}",
        mib(&rss["start_kib"]),
        mib(&rss["max_kib"]),
        mib(&rss["max_before_kill_kib"]),
        mib(&rss["max_after_restart_kib"]),
        mib(&rss["end_kib"]),
        a.plot.display()
    );
    eprintln!(
        "- users: {posted} posted, {acked} acknowledged, {delivered_once} delivered exactly once, {lost} lost, {duplicated} duplicated ({extra_copies} extra copies); {delivered_unacked} delivered without an answer, {} abandoned, {} misdelivered, seq gaps {}, seq repeats {}",
        st.abandoned.load(Ordering::Relaxed),
        st.misdelivered.load(Ordering::Relaxed),
        st.seq_gaps.load(Ordering::Relaxed),
        st.seq_repeats.load(Ordering::Relaxed)
    );
    eprintln!("- users' latency, POST → frame: {} (restart apart: {})", lat(lat_steady), lat(lat_restart));
    eprintln!("- users' posts, other answers: {}", st.poster_outcomes.line());
    eprintln!(
        "- users' connections: {} connects; ends: {}; failed connects: {}",
        st.user_connects.load(Ordering::Relaxed),
        st.user_closes.line(),
        st.user_connect_failures.line()
    );
    eprintln!(
        "- stallers: ends: {}; failed connects: {}; most drained {} KiB; their posts: {}",
        st.staller_ends.line(),
        st.staller_connect_failures.line(),
        st.staller_max_drained.load(Ordering::Relaxed) / 1024,
        st.staller_posts.line()
    );
    eprintln!(
        "- slowloris: {} opened, at most {} open at once; ends: {}; longest before the server ended one: {}; failed connects: {}",
        st.slow_opened.load(Ordering::Relaxed),
        st.slow_open_max.load(Ordering::Relaxed),
        st.slow_ends.line(),
        match st.slow_max_life_ms.load(Ordering::Relaxed) {
            0 => "none ended".to_owned(),
            ms => format!("{:.1} s", ms as f64 / 1000.0),
        },
        st.slow_connect_failures.line()
    );
    eprintln!(
        "- flood: {flood_acked} acknowledged ({:.0}/s); refused: {} ({} with Retry-After)",
        flood_acked as f64 / load_secs,
        st.flood.line(),
        st.flood_retry_after.load(Ordering::Relaxed)
    );
    eprintln!("- server exit after SIGTERM: {}", server_exit.as_deref().unwrap_or("?"));
    println!("{summary}");
    if lost > 0 || duplicated > 0 {
        return Err(format!("{lost} acknowledged messages lost, {duplicated} duplicated").into());
    }
    Ok(())
}

/// Whether a message's way, from its POST (`posted`) to its frame (`seen`), overlaps the
/// restart (`gap`, from the kill until every user was back).
fn overlaps(posted: u64, seen: u64, gap: Option<(u64, u64)>) -> bool {
    gap.is_some_and(|(from, to)| posted <= to && seen >= from)
}

fn ms_of(us: &Value) -> f64 {
    us.as_f64().unwrap_or(0.0) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let check = |s: &str, want: Option<f64>| {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs_f64()), want, "{s}");
        };
        check("600", Some(600.0));
        check("60s", Some(60.0));
        check("10m", Some(600.0));
        check("1h", Some(3600.0));
        check("500ms", Some(0.5));
        check("1.5m", Some(90.0));
        check("0s", None);
        check("ten", None);
        check("10d", None);
        check("", None);
    }

    #[test]
    fn frames_skipped_up_to_the_close() {
        let check = |bytes: &[u8], want: Option<Option<u16>>, left: usize| {
            let mut buf = bytes.to_vec();
            assert_eq!(skip_frames(&mut buf), want, "{bytes:?}");
            assert_eq!(buf.len(), left, "{bytes:?}");
        };
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend([b'x'; 256]);
        check(b"", None, 0);
        check(&[0x81, 2, b'h', b'i'], None, 0);
        check(&[0x81, 2, b'h'], None, 3); // incomplete: kept
        check(&[0x81, 2, b'h', b'i', 0x88, 2, 0x0f, 0xa8], Some(Some(4008)), 4);
        check(&[0x88, 0], Some(None), 2);
        check(&[&long[..], &[0x88, 4, 0x0f, 0xa0, b'o', b'k']].concat(), Some(Some(4000)), 6);
        check(&long[..100], None, 100);
        check(&[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], None, 10);
    }

    #[test]
    fn the_restart_gap() {
        let gap = Some((100, 200));
        let check = |posted: u64, seen: u64, want: bool| {
            assert_eq!(overlaps(posted, seen, gap), want, "{posted}..{seen}");
        };
        check(10, 20, false); // before the kill
        check(90, 110, true); // posted before, delivered after the kill
        check(120, 150, true); // within
        check(190, 250, true); // posted before everyone was back
        check(50, 250, true); // across the whole gap
        check(210, 220, false); // after
        assert!(!overlaps(120, 150, None), "no restart, no gap");
    }
}

//! One WebSocket connection: replay from the mailbox, then live frames, heartbeats and
//! pings on one side; client frames (sends, `pong`) on the other.
//!
//! Exactly one task writes to the socket (the seed's Go prototype crashed on concurrent
//! writers). A second task reads, and reaches the writer through a small channel. Every
//! write can be interrupted: by a kick from the hub (queue full), by shutdown, or by the
//! idle timeout, so a client that stops reading never holds anything up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use imgate_protocol::{ack_frame, error_frame, heartbeat_frame, parse_send_json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{CLOSE_IDLE, CLOSE_SLOW, Hub, Outbound, Registration};
use crate::config::HubConfig;
use crate::ingest::{Ingest, Sender};
use crate::store::{DynStore, StoreError};

/// Messages read from the mailbox per query while replaying.
const REPLAY_PAGE: usize = 256;
/// Live frames written before one flush.
const WRITE_BATCH: usize = 64;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Everything a connection needs from the server.
pub struct ConnContext {
    pub hub: Arc<Hub>,
    pub store: DynStore,
    pub ingest: Arc<Ingest>,
    pub config: HubConfig,
    pub shutdown: CancellationToken,
}

/// What the reader asks the writer to do.
enum Ctl {
    Frame(String),
    Close(u16, &'static str),
    /// The client closed, or its stream ended.
    Gone,
}

/// Why writing stopped.
enum Stop {
    Close(u16, String),
    Gone,
}

type Sink = SplitSink<WebSocket, Message>;

/// Where a connection's replay starts.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// Replay what comes after this seq.
    pub after: u64,
}

impl Start {
    /// Decided before the handshake completes, so that whatever is committed once the
    /// client sees itself connected is after it. Without `since`, the connection starts
    /// after the user's delivered mark: what its other connections showed or the store
    /// recorded, whichever is later.
    pub async fn decide(ctx: &ConnContext, user: &str, since: Option<u64>) -> Result<Start, StoreError> {
        let after = match since {
            // A client ahead of the mailbox (its data dir was replaced, or its since came
            // from elsewhere) would skip new messages until they pass it: start it at the
            // mailbox's end instead.
            Some(since) => since.min(ctx.store.last_seq(user).await?),
            None => {
                let stored = ctx.store.delivered(user).await?;
                stored.max(ctx.hub.delivered(user).unwrap_or(0))
            }
        };
        Ok(Start { after })
    }
}

/// Serve one connection of `user` until it ends.
pub async fn serve(ctx: Arc<ConnContext>, socket: WebSocket, user: String, start: Start) {
    let (sink, stream) = socket.split();
    let activity = Arc::new(AtomicU64::new(0));
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let mut reader = tokio::spawn(read_loop(ctx.clone(), stream, user.clone(), ctl_tx, activity.clone()));
    let mut w = Writer {
        ctx: ctx.clone(),
        sink,
        user,
        last_sent: 0,
        persisted: 0,
        activity,
        mark: None,
        kicked: CancellationToken::new(),
    };
    let (stop, reg) = w.run(start, ctl_rx).await;
    // Persist the mark before leaving the hub: a connection starting meanwhile reads
    // the hub's mark, one starting after reads the store's.
    if w.last_sent > w.persisted {
        let _ = ctx.store.set_delivered(&w.user, w.last_sent).await;
    }
    drop(reg);
    if let Stop::Close(code, reason) = stop {
        tracing::debug!(user = %w.user, code, %reason, "closing connection");
        let close = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }));
        let _ = tokio::time::timeout(CLOSE_WAIT, w.sink.send(close)).await;
        // Let the client answer the close, so it sees the code rather than a reset.
        if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
            reader.abort();
        }
    } else {
        let _ = tokio::time::timeout(CLOSE_WAIT, w.sink.close()).await;
        reader.abort();
    }
}

struct Writer {
    ctx: Arc<ConnContext>,
    sink: Sink,
    user: String,
    /// Highest seq written to this socket.
    last_sent: u64,
    /// Highest seq reported to the store as delivered.
    persisted: u64,
    /// Bumped by the reader on every frame or pong from the client.
    activity: Arc<AtomicU64>,
    /// The user's shared delivered mark in the hub, once registered.
    mark: Option<Arc<AtomicU64>>,
    /// The hub's kick, once registered: it must interrupt a write stuck on a full socket.
    kicked: CancellationToken,
}

impl Writer {
    async fn run(&mut self, start: Start, ctl: mpsc::Receiver<Ctl>) -> (Stop, Option<Registration>) {
        if let Err(stop) = self.start(start).await {
            return (stop, None);
        }
        // Register only now: a long replay must not fill the live queue. A second replay
        // covers what was committed in between; duplicates are skipped by seq.
        let mut reg = match self.ctx.hub.register(&self.user) {
            Ok(r) => r,
            Err(e) => return (Stop::Close(1008, e.to_string()), None),
        };
        self.mark = Some(reg.delivered.clone());
        self.kicked = reg.kicked.clone();
        let stop = self.live_loop(&mut reg, ctl).await;
        (stop, Some(reg))
    }

    async fn live_loop(&mut self, reg: &mut Registration, mut ctl: mpsc::Receiver<Ctl>) -> Stop {
        if let Err(stop) = self.replay().await {
            return stop;
        }
        let ctx = self.ctx.clone();
        let cfg = &ctx.config;
        let period = cfg.heartbeat_interval;
        // Jitter the first beat so that a reconnect storm does not beat in lockstep.
        let first = period.mul_f64(rand::random::<f64>().max(0.05));
        let mut beat = tokio::time::interval_at(Instant::now() + first, period);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.activity.load(Ordering::Relaxed);
        let mut last_alive = Instant::now();
        let shutdown = self.ctx.shutdown.clone();
        // Made once: a fresh `cancelled()` per turn would register with the token again
        // for every frame.
        let stopping = shutdown.cancelled();
        let kicked = reg.kicked.clone();
        let kicked = kicked.cancelled();
        tokio::pin!(stopping, kicked);
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut stopping => return Stop::Close(1001, "server shutting down; reconnect with since".into()),
                _ = &mut kicked => return Stop::Close(CLOSE_SLOW, format!("too slow to read; reconnect with since={}", self.last_sent)),
                c = ctl.recv() => match c {
                    Some(Ctl::Frame(f)) => self.write(Message::Text(f.into())).await,
                    Some(Ctl::Close(code, reason)) => return Stop::Close(code, reason.into()),
                    Some(Ctl::Gone) | None => return Stop::Gone,
                },
                Some(first) = reg.rx.recv() => self.live(first, &mut reg.rx).await,
                _ = beat.tick() => {
                    let now_seen = self.activity.load(Ordering::Relaxed);
                    if now_seen != seen {
                        seen = now_seen;
                        last_alive = Instant::now();
                    } else if last_alive.elapsed() >= cfg.idle_timeout {
                        return Stop::Close(CLOSE_IDLE, "no frame or pong within the idle timeout".into());
                    }
                    self.beat().await
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// The first replay.
    async fn start(&mut self, start: Start) -> Result<(), Stop> {
        self.last_sent = start.after;
        self.persisted = start.after;
        self.replay().await?;
        Ok(())
    }

    /// Write everything after `last_sent` that the mailbox holds.
    async fn replay(&mut self) -> Result<(), Stop> {
        loop {
            let page = self
                .ctx
                .store
                .read_after(&self.user, self.last_sent, REPLAY_PAGE)
                .await
                .map_err(store_stop)?;
            let n = page.len();
            for m in page {
                self.feed(Message::Text(m.frame.with_seq(m.seq).into())).await?;
                self.last_sent = m.seq;
            }
            self.flush().await?;
            if n < REPLAY_PAGE {
                return Ok(());
            }
        }
    }

    /// Live frames: the first, and whatever else is already queued.
    async fn live(&mut self, first: Outbound, rx: &mut mpsc::Receiver<Outbound>) -> Result<(), Stop> {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            if out.seq > self.last_sent + 1 {
                // A gap: something committed earlier has not arrived (or never will, if
                // retention took it). The mailbox is the truth.
                let gap = self
                    .ctx
                    .store
                    .read_after(&self.user, self.last_sent, (out.seq - self.last_sent - 1) as usize)
                    .await
                    .map_err(store_stop)?;
                for m in gap.into_iter().filter(|m| m.seq < out.seq) {
                    self.feed(Message::Text(m.frame.with_seq(m.seq).into())).await?;
                    self.last_sent = m.seq;
                }
            }
            if out.seq > self.last_sent {
                self.feed(Message::Text(out.frame)).await?;
                self.last_sent = out.seq;
            }
            n += 1;
            if n < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        self.flush().await
    }

    async fn beat(&mut self) -> Result<(), Stop> {
        if self.last_sent > self.persisted
            && self.ctx.store.set_delivered(&self.user, self.last_sent).await.is_ok()
        {
            self.persisted = self.last_sent;
        }
        self.feed(Message::Text(Utf8Bytes::from_static(heartbeat_frame()))).await?;
        self.feed(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    async fn write(&mut self, m: Message) -> Result<(), Stop> {
        self.feed(m).await?;
        self.flush().await
    }

    async fn feed(&mut self, m: Message) -> Result<(), Stop> {
        let fut = self.sink.feed(m);
        guard(fut, &self.ctx, &self.kicked, self.last_sent).await
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        let fut = self.sink.flush();
        guard(fut, &self.ctx, &self.kicked, self.last_sent).await?;
        if let Some(mark) = &self.mark {
            mark.fetch_max(self.last_sent, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// A socket write that shutdown, a kick from the hub or a client that has stopped
/// reading (the idle timeout) can interrupt.
async fn guard(
    fut: impl Future<Output = Result<(), axum::Error>>,
    ctx: &ConnContext,
    kicked: &CancellationToken,
    last_sent: u64,
) -> Result<(), Stop> {
    let slow = || Stop::Close(CLOSE_SLOW, format!("too slow to read; reconnect with since={last_sent}"));
    // The write first: when the socket takes it at once (the usual case), the other
    // branches are never polled and no timer is armed.
    tokio::select! {
        biased;
        r = fut => r.map_err(|_| Stop::Gone),
        _ = ctx.shutdown.cancelled() => Err(Stop::Close(1001, "server shutting down; reconnect with since".into())),
        _ = kicked.cancelled() => Err(slow()),
        _ = tokio::time::sleep(ctx.config.idle_timeout) => Err(slow()),
    }
}

fn store_stop(e: crate::store::StoreError) -> Stop {
    tracing::warn!(error = %e, "closing a connection: its mailbox could not be read");
    Stop::Close(1011, "mailbox unavailable; reconnect later".into())
}

async fn read_loop(
    ctx: Arc<ConnContext>,
    mut stream: SplitStream<WebSocket>,
    user: String,
    ctl: mpsc::Sender<Ctl>,
    activity: Arc<AtomicU64>,
) {
    while let Some(msg) = stream.next().await {
        activity.fetch_add(1, Ordering::Relaxed);
        let reply = match msg {
            Ok(Message::Text(t)) => on_text(&ctx, &user, t.as_str()).await,
            Ok(Message::Binary(_)) => Some(error_frame("binary frames are not understood: send JSON text")),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) => break,
            Err(e) => {
                if let Some((code, reason)) = close_for(e) {
                    let _ = ctl.send(Ctl::Close(code, reason)).await;
                    return;
                }
                break;
            }
        };
        if let Some(frame) = reply
            && ctl.send(Ctl::Frame(frame)).await.is_err()
        {
            return;
        }
    }
    let _ = ctl.send(Ctl::Gone).await;
}

/// The answer to a text frame from the client, if it needs one.
async fn on_text(ctx: &ConnContext, user: &str, text: &str) -> Option<String> {
    let t = text.trim();
    // The seed's page answers with `pong`; some clients say `ping`.
    if t.is_empty() || t.eq_ignore_ascii_case("pong") || t.eq_ignore_ascii_case("ping") {
        return None;
    }
    if !t.starts_with('{') {
        return Some(error_frame(
            "text frames must be a JSON send request ({\"data\":{\"msg_type\",\"contact_id\",\"msg\"}}) or \"pong\"",
        ));
    }
    if is_heartbeat_reply(t) {
        return None;
    }
    let req = match parse_send_json(t.as_bytes()) {
        Ok(r) => r,
        Err(e) => return Some(error_frame(&e.to_string())),
    };
    match ctx.ingest.send(Sender::User(user), req).await {
        Ok(a) => Some(ack_frame(&a.id, a.seq, &a.to, a.duplicate)),
        Err(e) => Some(error_frame(&e.to_string())),
    }
}

/// A client echoing a heartbeat frame back (`result.code` 101) is only saying it is alive.
fn is_heartbeat_reply(t: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct R {
        result: Option<imgate_protocol::FrameResult>,
    }
    serde_json::from_str::<R>(t)
        .ok()
        .and_then(|r| r.result)
        .is_some_and(|r| r.code == imgate_protocol::Code::HEARTBEAT)
}

/// The close code for a read error, when the client should get one.
fn close_for(e: axum::Error) -> Option<(u16, &'static str)> {
    let inner = e.into_inner();
    let t = inner.downcast_ref::<tungstenite::Error>()?;
    match t {
        tungstenite::Error::Utf8(_) => Some((1007, "text frame is not valid UTF-8")),
        tungstenite::Error::Capacity(_) => Some((1009, "frame is larger than the limit")),
        tungstenite::Error::Protocol(_) => Some((1002, "WebSocket protocol error")),
        _ => None,
    }
}

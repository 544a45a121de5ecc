//! One WebSocket connection, served by one task: replay from the mailbox, then live
//! frames, heartbeats and pings out; client frames (sends, `pong`) in.
//!
//! One task, so exactly one writer per socket (the seed's Go prototype crashed on
//! concurrent writers), and an idle connection costs one small future. A send from the
//! client is processed while live frames keep flowing; the next client frame is read
//! once it is answered, which keeps a client's sends in order. Every write can be
//! interrupted — by a kick from the hub (queue full), by shutdown, or by the idle timeout
//! — so a client that stops reading never holds anything up.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use imgate_protocol::{ack_frame, error_frame, error_frame_with, heartbeat_frame, parse_send_json};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{CLOSE_IDLE, CLOSE_SLOW, CLOSE_TOKEN_EXPIRED, Charge, Hub, Next, Outbound, Queue, Reservation};
use crate::config::HubConfig;
use crate::ingest::{Ingest, Sender};
use crate::store::{DynStore, Store, StoreError, Stored, Unavailable};

/// Messages read from the mailbox per query while replaying (and at most
/// `hub.queue_max_bytes` of them).
const REPLAY_PAGE: usize = 256;
/// How often a replay short of budget (`hub.total_queue_max_bytes`) looks again.
const BUDGET_RETRY: Duration = Duration::from_millis(50);
/// How long a replay keeps asking a mailbox the store cannot read right now (a Redis
/// failover, a reconnect) before it closes the connection, and the first pause between
/// tries (doubling, at most a second).
const READ_PATIENCE: Duration = Duration::from_secs(10);
const READ_RETRY: Duration = Duration::from_millis(100);
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
    /// Tasks shutdown waits for (within its grace): sends begun by clients among them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Per-sender rate limits, shared with HTTP sends.
    pub senders: Arc<crate::rate::Senders>,
}

/// Why the connection ends.
enum Stop {
    Close(u16, String),
    Gone,
}

fn shutting_down() -> Stop {
    Stop::Close(1001, "server shutting down; reconnect with since".into())
}

fn too_slow(last_sent: u64) -> Stop {
    Stop::Close(CLOSE_SLOW, format!("too slow to read; reconnect with since={last_sent}"))
}

fn no_budget(last_sent: u64) -> Stop {
    Stop::Close(
        CLOSE_SLOW,
        format!("server short of memory for queued frames; reconnect with since={last_sent}"),
    )
}

/// Where a connection's replay starts.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    /// Replay what comes after this seq.
    pub after: u64,
    /// When the connection's credentials expire, if they do.
    pub expires: Option<Instant>,
}

impl Start {
    /// Decided before the handshake completes, so that whatever is committed once the
    /// client sees itself connected is after it. Without `since`, the connection starts
    /// after the user's delivered mark (see [`delivered_mark`]).
    pub async fn decide(ctx: &ConnContext, user: &str, since: Option<u64>) -> Result<Start, StoreError> {
        let after = match since {
            // A client ahead of the mailbox (its data dir was replaced, or its since came
            // from elsewhere) would skip new messages until they pass it: start it at the
            // mailbox's end instead.
            Some(since) => since.min(ctx.store.last_seq(user).await?),
            None => delivered_mark(&ctx.hub, ctx.store.as_ref(), user).await?,
        };
        Ok(Start { after, expires: None })
    }
}

/// The user's delivered mark: what its open connections showed or the store recorded,
/// whichever is later.
///
/// The hub first, then the store. A closing connection does the reverse — saves its mark
/// to the store, then leaves the hub (see [`serve`]) — so wherever this falls between
/// those two steps, one of the reads sees the mark. Read the other way round, the store
/// could be read before the save and the hub after the leave: both miss the mark, and
/// the new connection replays what was already shown.
async fn delivered_mark(hub: &Hub, store: &dyn Store, user: &str) -> Result<u64, StoreError> {
    let live = hub.delivered(user).unwrap_or(0);
    let stored = store.delivered(user).await?;
    Ok(stored.max(live))
}

type Pending = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Serve one connection of `user` until it ends, in the hub's `place` held for it.
pub async fn serve(ctx: Arc<ConnContext>, socket: WebSocket, user: String, start: Start, place: Reservation) {
    let mut c = Conn {
        ctx,
        socket,
        user: user.into(),
        last_sent: start.after,
        flushed: start.after,
        persisted: start.after,
        mark: None,
        queue: None,
        expires: start.expires,
    };
    let mut state = Counted::new("replaying");
    // Replay before registering: a long replay must not fill the live queue. A second
    // pass after registering covers what was committed in between; the seq check drops
    // what then also arrives live.
    let stop = match Box::pin(c.replay()).await {
        Err(stop) => stop,
        Ok(()) => {
            let reg = c.ctx.hub.register(place);
            state.now("live");
            c.mark = Some(reg.delivered.clone());
            c.queue = Some(reg.queue.clone());
            let stop = c.run().await;
            // Persist the mark before leaving the hub: a connection starting
            // meanwhile reads the hub's mark, one starting after reads the store's
            // (the reads go in the other order: see `delivered_mark`).
            c.persist().await;
            drop(reg);
            stop
        }
    };
    if let Stop::Close(code, reason) = stop {
        state.now("closing");
        tracing::debug!(user = %c.user, code, %reason, "closing connection");
        Box::pin(c.close(code, reason)).await;
    }
}

struct Conn {
    ctx: Arc<ConnContext>,
    socket: WebSocket,
    /// Shared with the hub's registry: one allocation per connection, not three.
    user: Arc<str>,
    /// Highest seq handed to the socket (perhaps still in its buffer)...
    last_sent: u64,
    /// ...and the highest one flushed to the client: the only one reported as delivered
    /// or offered as `since`.
    flushed: u64,
    /// Highest seq reported to the store as delivered.
    persisted: u64,
    /// The user's shared delivered mark in the hub, once registered.
    mark: Option<Arc<std::sync::atomic::AtomicU64>>,
    queue: Option<Arc<Queue>>,
    expires: Option<Instant>,
}

impl Conn {
    async fn run(&mut self) -> Stop {
        if let Err(stop) = Box::pin(self.replay()).await {
            return stop;
        }
        let ctx = self.ctx.clone();
        let queue = self.queue.clone().expect("registered");
        let period = ctx.config.heartbeat_interval;
        // Jitter the first beat so that a reconnect storm does not beat in lockstep.
        let first = period.mul_f64(rand::random::<f64>().max(0.05));
        let mut beat = tokio::time::interval_at(Instant::now() + first, period);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Anything from the client since the last beat; when it went quiet.
        let mut heard = false;
        let mut last_alive = Instant::now();
        let mut pending: Option<Pending> = None;
        let expiry = self.expires;
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        // Shutdown comes through the queue (Next::Shutdown); one that began before this
        // connection registered is seen here.
        if ctx.shutdown.is_cancelled() {
            return shutting_down();
        }
        loop {
            // Not biased: a user whose queue never empties must still be read (its pongs,
            // its sends) and still get heartbeats.
            let step = tokio::select! {
                next = queue.next() => match next {
                    Next::Shutdown => return shutting_down(),
                    Next::Frame(first) => Box::pin(self.live(first, &queue)).await,
                    Next::CatchUp => Box::pin(self.replay()).await,
                    Next::Kicked => return too_slow(self.flushed),
                },
                answer = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    match answer {
                        Some(frame) => Box::pin(self.write(Message::Text(frame.into()))).await,
                        None => Ok(()),
                    }
                }
                msg = self.socket.recv(), if pending.is_none() => {
                    heard = true;
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            pending = on_text(&self.ctx, &self.user, t);
                            Ok(())
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let e = error_frame("binary frames are not understood: send JSON text");
                            Box::pin(self.write(Message::Text(e.into()))).await
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Close(_))) | None => return Stop::Gone,
                        Some(Err(e)) => return close_for(e).map_or(Stop::Gone, |(c, r)| Stop::Close(c, r.into())),
                    }
                }
                () = &mut expired => return Stop::Close(CLOSE_TOKEN_EXPIRED, "token expired".into()),
                _ = beat.tick() => {
                    // While a send is pending the socket is not read: the client is not
                    // silent, we are not listening.
                    if heard || pending.is_some() {
                        heard = false;
                        last_alive = Instant::now();
                    } else if last_alive.elapsed() >= ctx.config.idle_timeout {
                        return Stop::Close(CLOSE_IDLE, "no frame or pong within the idle timeout".into());
                    }
                    Box::pin(self.beat()).await
                }
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Write everything after `last_sent` that the mailbox holds.
    ///
    /// (Counted in `imgate_replays_in_progress` while it runs.)
    async fn replay(&mut self) -> Result<(), Stop> {
        self.replay_until(u64::MAX).await
    }

    /// Write what the mailbox holds after `last_sent` and before `before`, a page at a
    /// time. Each page is bounded in bytes and charged to the process's budget until it
    /// is flushed: a client that stops reading mid-replay pins one page, not its mailbox.
    async fn replay_until(&mut self, before: u64) -> Result<(), Stop> {
        let _replaying = Replaying::start();
        // Never more than the whole budget: a reservation past it would wait for an empty one.
        let max_bytes = self.ctx.config.queue_max_bytes.min(self.ctx.config.total_queue_max_bytes);
        loop {
            let left = before.saturating_sub(1).saturating_sub(self.last_sent);
            let limit = REPLAY_PAGE.min(usize::try_from(left).unwrap_or(usize::MAX));
            if limit == 0 {
                return Ok(());
            }
            let mut charge = reserve(&self.ctx, max_bytes, self.flushed).await?;
            let page = read_page(
                self.ctx.store.as_ref(),
                &self.ctx.shutdown,
                &self.user,
                self.last_sent,
                limit,
                max_bytes,
            )
            .await?;
            charge.resize(page.iter().map(|m| m.frame.as_stored().len()).sum());
            // A short page usually means the end; but retention may have taken rows from
            // under this one, so only an empty page is sure.
            let mut more = !page.is_empty();
            for m in page {
                if m.seq >= before {
                    more = false;
                    break;
                }
                self.feed(Message::Text(m.frame.with_seq(m.seq).into())).await?;
                self.last_sent = m.seq;
            }
            self.flush().await?;
            drop(charge);
            if !more {
                return Ok(());
            }
        }
    }

    /// Live frames: the first, and whatever else is already queued.
    async fn live(&mut self, first: Outbound, queue: &Queue) -> Result<(), Stop> {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            if out.seq > self.last_sent + 1 {
                // A gap: something committed earlier has not arrived (or never will, if
                // retention took it). The mailbox is the truth.
                self.replay_until(out.seq).await?;
            }
            if out.seq > self.last_sent {
                self.feed(Message::Text(out.frame)).await?;
                self.last_sent = out.seq;
                // From the commit to this socket's write: the fan-out and the queue.
                metrics::histogram!("imgate_delivery_duration_seconds")
                    .record(out.committed.elapsed().as_secs_f64());
            }
            n += 1;
            if n < WRITE_BATCH {
                next = match queue.try_next() {
                    Some(Next::Frame(f)) => Some(f),
                    Some(Next::Shutdown) => return Err(shutting_down()),
                    Some(Next::CatchUp) => {
                        self.flush().await?;
                        return self.replay().await;
                    }
                    Some(Next::Kicked) => return Err(too_slow(self.flushed)),
                    None => None,
                };
            }
        }
        self.flush().await
    }

    async fn beat(&mut self) -> Result<(), Stop> {
        self.persist().await;
        self.feed(Message::Text(Utf8Bytes::from_static(heartbeat_frame()))).await?;
        self.feed(Message::Ping(Default::default())).await?;
        self.flush().await
    }

    async fn persist(&mut self) {
        if self.flushed > self.persisted
            && self.ctx.store.set_delivered(&self.user, self.flushed).await.is_ok()
        {
            self.persisted = self.flushed;
        }
    }

    async fn write(&mut self, m: Message) -> Result<(), Stop> {
        self.feed(m).await?;
        self.flush().await
    }

    async fn feed(&mut self, m: Message) -> Result<(), Stop> {
        let fut = self.socket.feed(m);
        guard(fut, &self.ctx, self.queue.as_deref(), self.flushed).await
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        let fut = self.socket.flush();
        guard(fut, &self.ctx, self.queue.as_deref(), self.flushed).await?;
        if let Some(q) = &self.queue {
            q.written();
        }
        self.flushed = self.last_sent;
        if let Some(mark) = &self.mark {
            mark.fetch_max(self.flushed, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Send the close frame, then let the client answer it, so that it sees the code
    /// rather than a reset.
    async fn close(mut self, code: u16, reason: String) {
        let close = Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }));
        if tokio::time::timeout(CLOSE_WAIT, self.socket.send(close)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(m)) = self.socket.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A socket write that shutdown, a kick from the hub or a client that has stopped
/// reading (the idle timeout) can interrupt.
async fn guard(
    fut: impl Future<Output = Result<(), axum::Error>>,
    ctx: &ConnContext,
    queue: Option<&Queue>,
    last_sent: u64,
) -> Result<(), Stop> {
    let kicked = async {
        match queue {
            Some(q) => q.kicked().await,
            None => std::future::pending().await,
        }
    };
    // The write first: when the socket takes it at once (the usual case), the other
    // branches are never polled and no timer is armed.
    tokio::select! {
        biased;
        r = fut => r.map_err(|_| Stop::Gone),
        _ = ctx.shutdown.cancelled() => Err(shutting_down()),
        _ = kicked => Err(too_slow(last_sent)),
        _ = tokio::time::sleep(ctx.config.idle_timeout) => Err(too_slow(last_sent)),
    }
}

/// Room for a replay page in the process's budget. Waits for it, unlike fan-out: a
/// replay holds nobody else up; but not past the idle timeout, nor shutdown.
async fn reserve(ctx: &ConnContext, bytes: usize, flushed: u64) -> Result<Charge, Stop> {
    let budget = ctx.hub.budget();
    if let Some(c) = Charge::try_new(budget, bytes) {
        return Ok(c);
    }
    let deadline = Instant::now() + ctx.config.idle_timeout;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Err(shutting_down()),
            _ = tokio::time::sleep(BUDGET_RETRY) => {}
        }
        if let Some(c) = Charge::try_new(budget, bytes) {
            return Ok(c);
        }
        if Instant::now() >= deadline {
            return Err(no_budget(flushed));
        }
    }
}

/// A page of `user`'s mailbox after `after`. A store that cannot answer for a moment (a
/// Redis failover closes every client's connection; the next call reconnects) is asked
/// again for up to `READ_PATIENCE`, so that a live connection rides through it instead of
/// making every client reconnect at once. A damaged record will not heal: no retry.
async fn read_page(
    store: &dyn Store,
    shutdown: &CancellationToken,
    user: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Stored>, Stop> {
    let give_up = Instant::now() + READ_PATIENCE;
    let mut pause = READ_RETRY;
    loop {
        match store.read_after(user, after, limit, max_bytes).await {
            Ok(page) => return Ok(page),
            Err(StoreError::Closed) => return Err(shutting_down()),
            Err(e @ StoreError::Unavailable(Unavailable::Damaged(_))) => return Err(store_stop(e)),
            Err(e) if Instant::now() + pause > give_up => return Err(store_stop(e)),
            Err(e) => {
                tracing::debug!(error = %e, user, "a mailbox could not be read; asking again");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(shutting_down()),
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn store_stop(e: StoreError) -> Stop {
    tracing::warn!(error = %e, "closing a connection: its mailbox could not be read");
    Stop::Close(1011, "mailbox unavailable; reconnect later".into())
}

/// What to do with a text frame: nothing (it only shows the client is alive), or an
/// answer to compute — an error frame, or a send's ack.
fn on_text(ctx: &Arc<ConnContext>, user: &str, text: Utf8Bytes) -> Option<Pending> {
    let t = text.as_str().trim();
    // The seed's page answers with `pong`; some clients say `ping`.
    if t.is_empty() || t.eq_ignore_ascii_case("pong") || t.eq_ignore_ascii_case("ping") {
        return None;
    }
    if !t.starts_with('{') {
        let e = error_frame(
            "text frames must be a JSON send request ({\"data\":{\"msg_type\",\"contact_id\",\"msg\"}}) or \"pong\"",
        );
        return Some(Box::pin(std::future::ready(Some(e))));
    }
    if is_heartbeat_reply(t) {
        return None;
    }
    let req = match parse_send_json(t.as_bytes()) {
        Ok(r) => r,
        Err(e) => return Some(Box::pin(std::future::ready(Some(error_frame(&e.to_string()))))),
    };
    // The same bucket as the user's HTTP sends: refused, nothing is stored.
    if let Err(wait) = ctx.senders.take(user) {
        let (reason, _) = ctx.senders.refusal(user, wait);
        return Some(Box::pin(std::future::ready(Some(error_frame(&reason)))));
    }
    let ingest: Arc<Ingest> = ctx.ingest.clone();
    let user = user.to_owned();
    // A task of its own: a send that has begun finishes (a reply to WeChat is sent and its
    // outcome recorded) even if this connection ends before the answer.
    let task = ctx.tasks.spawn(async move {
        match ingest.send(Sender::User(&user), req).await {
            Ok(a) => ack_frame(&a.id, a.seq, &a.to, a.duplicate),
            Err(e) => error_frame_with(&e.details(), &e.to_string()),
        }
    });
    Some(Box::pin(async move { task.await.ok() }))
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

/// Counts a connection in `imgate_connections_by_state` under the state it is in: its first
/// replay (`replaying`, before it joins the hub), `live` (in the hub, replaying any gap
/// there), or `closing` (its close frame sent, waiting for the answer); until it ends.
struct Counted(&'static str);

impl Counted {
    fn new(state: &'static str) -> Counted {
        metrics::gauge!("imgate_connections_by_state", "state" => state).increment(1.0);
        Counted(state)
    }

    fn now(&mut self, state: &'static str) {
        metrics::gauge!("imgate_connections_by_state", "state" => self.0).decrement(1.0);
        metrics::gauge!("imgate_connections_by_state", "state" => state).increment(1.0);
        self.0 = state;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("imgate_connections_by_state", "state" => self.0).decrement(1.0);
    }
}

/// Counts a replay in `imgate_replays_in_progress` for as long as it lives (a replay may
/// end in any of its awaits).
struct Replaying;

impl Replaying {
    fn start() -> Replaying {
        metrics::gauge!("imgate_replays_in_progress").increment(1.0);
        Replaying
    }
}

impl Drop for Replaying {
    fn drop(&mut self) {
        metrics::gauge!("imgate_replays_in_progress").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;
    use crate::store::{Appended, NewMessage, Stored};

    /// A store for the connection's logic alone. `delivered` reads the mark, says so
    /// (`read`), and returns it only when let go (`go`): a connection's start can be held
    /// between its two reads. `read_after` fails with `error()` `fails` times, then reads
    /// an empty page. The rest is refused.
    struct Stub {
        mark: AtomicU64,
        read: Notify,
        go: Notify,
        fails: AtomicU64,
        calls: AtomicU64,
        error: fn() -> Unavailable,
    }

    impl Stub {
        fn new(fails: u64, error: fn() -> Unavailable) -> Stub {
            Stub {
                mark: AtomicU64::new(0),
                read: Notify::new(),
                go: Notify::new(),
                fails: AtomicU64::new(fails),
                calls: AtomicU64::new(0),
                error,
            }
        }
    }

    #[async_trait]
    impl Store for Stub {
        async fn delivered(&self, _: &str) -> Result<u64, StoreError> {
            let mark = self.mark.load(Ordering::Acquire);
            self.read.notify_one();
            self.go.notified().await;
            Ok(mark)
        }
        async fn set_delivered(&self, _: &str, seq: u64) -> Result<(), StoreError> {
            self.mark.fetch_max(seq, Ordering::AcqRel);
            Ok(())
        }
        async fn append(&self, _: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
            Err(StoreError::Closed)
        }
        async fn read_after(&self, _: &str, _: u64, _: usize, _: usize) -> Result<Vec<Stored>, StoreError> {
            self.calls.fetch_add(1, Ordering::AcqRel);
            if self.fails.load(Ordering::Acquire) > 0 {
                self.fails.fetch_sub(1, Ordering::AcqRel);
                return Err(StoreError::Unavailable((self.error)()));
            }
            Ok(Vec::new())
        }
        async fn history(
            &self,
            _: &str,
            _: Option<&str>,
            _: Option<u64>,
            _: usize,
        ) -> Result<Vec<Stored>, StoreError> {
            Err(StoreError::Closed)
        }
        async fn last_seq(&self, _: &str) -> Result<u64, StoreError> {
            Err(StoreError::Closed)
        }
        async fn trim(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn erase(&self, _: &str) -> Result<crate::store::Erased, StoreError> {
            Err(StoreError::Closed)
        }
        async fn ready(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn close(&self) {}
    }

    /// A connection starts while the user's only other one closes, the close's two steps
    /// (save the mark, leave the hub) falling between the start's reads: it still starts
    /// after what the closing one showed.
    #[tokio::test(start_paused = true)]
    async fn a_start_during_a_close_does_not_replay_what_was_shown() {
        let hub = Hub::new(&HubConfig::default());
        let store = Arc::new(Stub::new(0, redis_gone));
        let closing = hub.register(hub.reserve(&"u".into()).unwrap());
        closing.delivered.store(5, Ordering::Release);
        let start = tokio::spawn({
            let (hub, store) = (hub.clone(), store.clone());
            async move { delivered_mark(&hub, store.as_ref(), "u").await.unwrap() }
        });
        let patience = Duration::from_secs(10);
        tokio::time::timeout(patience, store.read.notified()).await.expect("the start reads the store");
        // The closing connection, as `serve` ends it.
        store.set_delivered("u", 5).await.unwrap();
        drop(closing);
        assert_eq!(hub.delivered("u"), None);
        store.go.notify_one();
        assert_eq!(tokio::time::timeout(patience, start).await.expect("the start ends").unwrap(), 5);
    }

    fn redis_gone() -> Unavailable {
        Unavailable::Redis(::redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }

    fn code(stop: Result<Vec<Stored>, Stop>) -> Option<u16> {
        match stop {
            Err(Stop::Close(code, _)) => Some(code),
            Err(Stop::Gone) => Some(0),
            Ok(_) => None,
        }
    }

    /// A failover: the first reads fail, a later one answers, and the connection lives on.
    #[tokio::test(start_paused = true)]
    async fn a_replay_rides_through_a_store_that_fails_for_a_moment() {
        let store = Stub::new(3, redis_gone);
        let page = read_page(&store, &CancellationToken::new(), "u", 0, 10, 1 << 20).await;
        assert_eq!(code(page), None);
        assert_eq!(store.calls.load(Ordering::Acquire), 4);
    }

    /// A store that stays away: the connection is closed (1011, reconnect later), after
    /// READ_PATIENCE and not before.
    #[tokio::test(start_paused = true)]
    async fn a_replay_gives_up_on_a_store_that_stays_away() {
        let store = Stub::new(u64::MAX, redis_gone);
        let began = Instant::now();
        let page = read_page(&store, &CancellationToken::new(), "u", 0, 10, 1 << 20).await;
        assert_eq!(code(page), Some(1011));
        let waited = began.elapsed();
        assert!(waited <= READ_PATIENCE && waited >= READ_PATIENCE - Duration::from_secs(1), "{waited:?}");
    }

    /// A damaged record is not asked for again; a shutdown ends the waiting at once.
    #[tokio::test(start_paused = true)]
    async fn a_damaged_mailbox_closes_at_once_and_shutdown_ends_the_wait() {
        let store = Stub::new(u64::MAX, || Unavailable::Damaged("bad record".into()));
        let page = read_page(&store, &CancellationToken::new(), "u", 0, 10, 1 << 20).await;
        assert_eq!((code(page), store.calls.load(Ordering::Acquire)), (Some(1011), 1));

        let store = Stub::new(u64::MAX, redis_gone);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let page = read_page(&store, &shutdown, "u", 0, 10, 1 << 20).await;
        assert_eq!((code(page), store.calls.load(Ordering::Acquire)), (Some(1001), 1));
    }
}

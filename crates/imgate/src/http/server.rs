//! Accepting and serving connections: our own accept loop over hyper's HTTP/1, so that
//! every stage of a connection has a limit (`[http]`), and the number of connections has
//! a cap below the open-file limit. What a request means is the router's business, not
//! this module's.
//!
//! - **Heads.** hyper's header timer: a connection's first request head must arrive within
//!   `header_read_timeout` (a silent TCP connection is one whose head never comes); after
//!   an answer, the next head within `keepalive_timeout` ([`ConnTimer`]).
//! - **Bodies.** The whole body within `body_timeout` of its head ([`Deadline`]); a declared
//!   length over the route's limit is answered 413 before a byte is read ([`DeclaredLength`]).
//! - **Writes.** A write blocked for `write_timeout` fails the connection ([`Socket`]). Once a
//!   connection is a WebSocket, the hub times its writes (`hub.idle_timeout`, 4008).
//! - **WebSocket handshakes.** The upgrade's handler must answer within `handshake_timeout`.
//! - **The cap.** Each connection holds a permit for as long as its socket is open,
//!   WebSockets included (the permit lives in the socket, which the upgrade hands to the
//!   hub): descriptors are what runs out. Past the cap, [`RESERVE`] more connections are
//!   served `/healthz` only, so that a probe still sees the process alive; past those, a
//!   connection is closed as soon as it is accepted.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready as ready_poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::rt::{Sleep as HyperSleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::ApiError;
use crate::config::HttpConfig;

/// Connections past the cap that are still read, for `/healthz` only.
pub const RESERVE: usize = 16;

/// Descriptors kept for everything that is not a client connection: the store's files,
/// Redis, WeChat's API, media files being served, the reserve.
const FD_HEADROOM: u64 = 256;

/// A reserve connection gets this long, at most, to send its head: a health probe sends
/// it at once, and the reserve must not stay held by silent connections.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest pause after a failed `accept` (out of descriptors, memory): the loop backs off
/// instead of spinning, and tries again as connections close.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The limits of one server, shared by its connections.
struct Settings {
    router: Router,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    body_timeout: Duration,
    write_timeout: Duration,
    handshake_timeout: Duration,
}

/// The connection cap for `configured`: no more than the open-file limit allows. The soft
/// limit is raised to the hard one first, as Go's runtime does: the soft default (often
/// 1024) is far below what a gateway needs.
pub fn connection_cap(configured: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; the connection cap is as configured");
            return configured;
        }
    };
    let cap = fit(configured, soft);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_file_limit = soft,
            "http.max_connections lowered to fit the open-file limit (raise it with ulimit -n or LimitNOFILE=)"
        );
    }
    cap
}

/// The most connections `soft` descriptors leave room for, after the headroom and the
/// reserve (at least half of them, however small the limit).
fn fit(configured: usize, soft: u64) -> usize {
    let room = soft.saturating_sub(FD_HEADROOM + RESERVE as u64).max(soft / 2).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serve `router` on `listener` until `stop` is cancelled; then stop accepting, let
/// requests in flight finish, and return once every HTTP connection has ended (upgraded
/// WebSockets are the hub's to close).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    stop: CancellationToken,
) -> io::Result<()> {
    let cap = connection_cap(config.max_connections);
    let settings = Arc::new(Settings {
        router,
        header_read_timeout: config.header_read_timeout,
        keepalive_timeout: config.keepalive_timeout,
        body_timeout: config.body_timeout,
        write_timeout: config.write_timeout,
        handshake_timeout: config.handshake_timeout,
    });
    let permits = Arc::new(Semaphore::new(cap));
    let reserve = Arc::new(Semaphore::new(RESERVE));
    let connections = TaskTracker::new();
    let mut backoff = Backoff::default();
    // When the cap was last reported: once a minute at most while it is being hit.
    let mut reported: Option<Instant> = None;
    loop {
        let Some(tcp) = accept(|| listener.accept(), &mut backoff, &stop).await else { break };
        let (permit, overflow) = match permits.clone().try_acquire_owned() {
            Ok(p) => (p, false),
            Err(_) => {
                if reported.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    reported = Some(Instant::now());
                    tracing::warn!(max_connections = cap, "connection cap reached; answering /healthz only");
                }
                metrics::counter!("imgate_http_connections_refused_total").increment(1);
                match reserve.clone().try_acquire_owned() {
                    Ok(p) => (p, true),
                    // Closed at once: its descriptor is the one thing we must not keep.
                    Err(_) => continue,
                }
            }
        };
        // No Nagle: a frame or an answer goes out when written, not after the peer's
        // delayed ACK (40 ms on Linux) for the previous one.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(tcp, permit, overflow, settings.clone(), stop.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The pause before the next `accept` after one that failed: 5 ms, doubling up to
/// [`ACCEPT_BACKOFF_MAX`], back to 5 ms after a success.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(5))
    }
}

/// The next connection, or `None` once `stop` is cancelled. An `accept` that fails for
/// the server's own reasons (out of descriptors, of memory) is followed by a pause, so
/// that the loop does not spin at 100% CPU while nothing can be accepted; one the peer
/// gave up on is not.
async fn accept<S, F, Fut>(mut next: F, backoff: &mut Backoff, stop: &CancellationToken) -> Option<S>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<(S, std::net::SocketAddr)>>,
{
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            accepted = next() => accepted,
        };
        match accepted {
            Ok((tcp, _)) => {
                *backoff = Backoff::default();
                return Some(tcp);
            }
            // The peer gave up before we took it: nothing to back off from.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                tracing::error!(error = %e, pause = ?backoff.0, "accept failed; pausing before the next");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(backoff.0) => {}
                }
                backoff.0 = (backoff.0 * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

async fn connection(
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    overflow: bool,
    settings: Arc<Settings>,
    stop: CancellationToken,
) {
    let upgraded = Arc::new(AtomicBool::new(false));
    let socket = Socket {
        tcp,
        write_timeout: settings.write_timeout,
        stall: None,
        stalled: false,
        upgraded: upgraded.clone(),
        _permit: permit,
    };
    let header = if overflow {
        settings.header_read_timeout.min(RESERVE_HEADER_TIMEOUT)
    } else {
        settings.header_read_timeout
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(ConnTimer {
            first: AtomicBool::new(true),
            header_read_timeout: header,
            keepalive_timeout: settings.keepalive_timeout,
        })
        .header_read_timeout(header)
        .keep_alive(!overflow);
    let handler = Handler { settings, overflow, upgraded };
    let conn = builder.serve_connection(TokioIo::new(socket), handler).with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = stop.cancelled() => {
            // Idle connections close now; a request in flight finishes first.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended");
    }
}

/// hyper's header timer, with a different limit for the first request of a connection
/// (`header_read_timeout`: it covers a silent connection and a slow head) and for the
/// next ones (`keepalive_timeout`: the idle wait after an answer, and the head).
struct ConnTimer {
    first: AtomicBool,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
}

impl ConnTimer {
    /// hyper asks for `now + header_read_timeout`; after the first request, the wait is
    /// the keep-alive one.
    fn deadline(&self, asked: std::time::Instant, first: bool) -> std::time::Instant {
        if first {
            return asked;
        }
        asked.checked_sub(self.header_read_timeout).map_or(asked, |start| start + self.keepalive_timeout)
    }
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn HyperSleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn HyperSleep>> {
        let first = self.first.swap(false, Ordering::Relaxed);
        TokioTimer::new().sleep_until(self.deadline(deadline, first))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn HyperSleep>>, deadline: std::time::Instant) {
        self.first.store(false, Ordering::Relaxed);
        TokioTimer::new().reset(sleep, self.deadline(deadline, false));
    }

    fn now(&self) -> std::time::Instant {
        TokioTimer::new().now()
    }
}

/// A client's TCP stream, holding its connection permit for as long as it is open, and
/// failing a write that stays blocked for `write_timeout` (nginx's `send_timeout`: the
/// time between two successful writes, not for a whole answer).
struct Socket {
    tcp: TcpStream,
    write_timeout: Duration,
    /// Armed when a write is blocked; created the first time one is.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// Set when the connection became a WebSocket: the hub times its writes then.
    upgraded: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
}

impl Socket {
    fn progress<T>(&mut self, done: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.stalled = false;
        done
    }

    /// A write is blocked: start (or check) the stall timer.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.upgraded.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let deadline = Instant::now() + self.write_timeout;
        let sleep = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.stalled {
            self.stalled = true;
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a write stayed blocked for {:?} (http.write_timeout)", self.write_timeout),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
            Poll::Pending => this.blocked(cx),
            done => this.progress(done),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.blocked(cx),
            done => this.progress(done),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// hyper's service for one connection: the router, with the body's deadline, the
/// handshake's, and for a reserve connection `/healthz` only.
struct Handler {
    settings: Arc<Settings>,
    overflow: bool,
    upgraded: Arc<AtomicBool>,
}

type Answer = Result<Response, Infallible>;
type Upgrade = Pin<Box<dyn Future<Output = Answer> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Answer>, Either<axum::routing::future::RouteFuture<Infallible>, Upgrade>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if self.overflow && req.uri().path() != "/healthz" {
            let mut r = ApiError::Unavailable(
                "the server is at its connection limit (http.max_connections); try again later".into(),
            )
            .into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Either::Left(ready(Ok(r)));
        }
        let s = &self.settings;
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let req = req.map(|body| Body::new(Deadline::new(body, s.body_timeout)));
        let mut router = s.router.clone();
        let served = tower::Service::call(&mut router, req);
        if !upgrade {
            return Either::Right(Either::Left(served));
        }
        let (limit, upgraded) = (s.handshake_timeout, self.upgraded.clone());
        Either::Right(Either::Right(Box::pin(async move {
            match tokio::time::timeout(limit, served).await {
                Ok(Ok(r)) => {
                    if r.status() == axum::http::StatusCode::SWITCHING_PROTOCOLS {
                        upgraded.store(true, Ordering::Relaxed);
                    }
                    Ok(r)
                }
                Ok(Err(never)) => match never {},
                Err(_) => Ok(ApiError::Unavailable(format!(
                    "the WebSocket handshake took longer than {limit:?} (http.handshake_timeout); try again"
                ))
                .into_response()),
            }
        })))
    }
}

/// A request body that must arrive within `timeout` of its head.
struct Deadline {
    body: Incoming,
    at: Instant,
    timeout: Duration,
    /// Created only when the body has to be waited for: most arrive with their head.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(body: Incoming, timeout: Duration) -> Deadline {
        Deadline { body, at: Instant::now() + timeout, timeout, sleep: None }
    }
}

/// The body did not arrive within `http.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the body did not arrive within {0:?} (http.body_timeout)")]
pub struct BodyTimeout(pub Duration);

impl BodyTimeout {
    /// Whether `e`, or what caused it, is a body timeout: handlers answer 408 then.
    pub fn caused<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
        let mut e = Some(e);
        while let Some(err) = e {
            if let Some(t) = err.downcast_ref::<BodyTimeout>() {
                return Some(t);
            }
            e = err.source();
        }
        None
    }
}

/// A handler's body, or the error frame for why it could not be read: 413 over `limit`,
/// 408 past `http.body_timeout`, 400 otherwise (not axum's text/plain rejections).
pub fn read_body(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit),
        _ => match BodyTimeout::caused(&e) {
            Some(t) => ApiError::Timeout(t.to_string()),
            None => ApiError::BadRequest(format!("cannot read the body: {e}")),
        },
    })
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = this.at;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        ready_poll!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimeout(this.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A route's body limit, applied to the declared `Content-Length` before the body is
/// read: 413 at once, instead of after reading up to the limit or waiting for bytes that
/// will never be accepted. (`DefaultBodyLimit` still bounds a chunked body as it is read.)
#[derive(Clone, Copy)]
pub struct DeclaredLength(pub usize);

impl<S> tower::Layer<S> for DeclaredLength {
    type Service = DeclaredLengthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeclaredLengthService { inner, max: self.0 }
    }
}

#[derive(Clone)]
pub struct DeclaredLengthService<S> {
    inner: S,
    max: usize,
}

impl<S> tower::Service<Request> for DeclaredLengthService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max as u64) {
            return Either::Left(ready(Ok(ApiError::TooLarge(self.max).into_response())));
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let check = |configured: usize, soft: u64, want: usize| {
            assert_eq!(fit(configured, soft), want, "fit({configured}, {soft})");
        };
        check(50_000, 1_048_576, 50_000);
        check(50_000, 20_000, 20_000 - 256 - RESERVE);
        check(50_000, 1024, 1024 - 256 - RESERVE);
        check(50_000, 300, 150);
        check(10, 20_000, 10);
        check(50_000, 0, 1);
    }

    /// Out of descriptors, `accept` fails at once every time: the loop must pause, not
    /// spin. In paused time, 10 s of failures take 5+10+…+640 ms, then 1 s pauses: 17
    /// attempts, where a loop without pauses makes millions.
    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_instead_of_spinning_and_recover() {
        let attempts = std::cell::Cell::new(0u32);
        let stop = CancellationToken::new();
        let mut backoff = Backoff::default();
        let failing = || {
            attempts.set(attempts.get() + 1);
            // Without pauses the loop would never yield to the clock: fail instead of hanging.
            assert!(attempts.get() < 1000, "accept retried without pausing");
            async { Err::<((), std::net::SocketAddr), _>(io::Error::from_raw_os_error(24)) } // EMFILE
        };
        let got = tokio::time::timeout(Duration::from_secs(10), accept(failing, &mut backoff, &stop)).await;
        assert!(got.is_err(), "no connection can come from a failing accept");
        assert_eq!(attempts.get(), 17);
        assert_eq!(backoff.0, ACCEPT_BACKOFF_MAX);
        // A peer that gave up costs no pause, and a success resets the pause.
        let mut answers = vec![
            Ok(((), "127.0.0.1:1".parse().unwrap())),
            Err(io::Error::from(io::ErrorKind::ConnectionAborted)),
        ];
        let start = Instant::now();
        let next = || std::future::ready(answers.pop().unwrap());
        assert_eq!(accept(next, &mut backoff, &stop).await, Some(()));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(backoff.0, Duration::from_millis(5));
        // Stopping ends a pause at once.
        stop.cancel();
        let failing = || async { Err::<((), std::net::SocketAddr), _>(io::Error::from_raw_os_error(24)) };
        assert_eq!(accept(failing, &mut backoff, &stop).await, None);
    }

    /// An upgrade whose handler does not answer (a store that hangs while the connection's
    /// start is decided) is answered 503 after `handshake_timeout`, and the server serves on.
    #[tokio::test]
    async fn an_upgrade_whose_handler_hangs_gets_503_after_the_handshake_timeout() {
        use axum::routing::get;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let router = Router::new()
            .route("/hang", get(std::future::pending::<&'static str>))
            .route("/healthz", get(|| async { "ok" }));
        let config = HttpConfig { handshake_timeout: Duration::from_millis(200), ..HttpConfig::default() };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, config, stop.clone()));
        let ask = |path: &'static str, upgrade: bool| async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let extra = if upgrade {
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            } else {
                "Connection: close\r\n"
            };
            let req = format!("GET {path} HTTP/1.1\r\nHost: imgate\r\n{extra}\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut head = vec![0; 4096];
            let n = tcp.read(&mut head).await.unwrap();
            String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or_default().to_owned()
        };
        let deadline = Duration::from_secs(20);
        let hung =
            tokio::time::timeout(deadline, ask("/hang", true)).await.expect("answered, not left hanging");
        assert_eq!(hung, "HTTP/1.1 503 Service Unavailable");
        let fine = tokio::time::timeout(deadline, ask("/healthz", false)).await.unwrap();
        assert_eq!(fine, "HTTP/1.1 200 OK");
        stop.cancel();
        tokio::time::timeout(deadline, server).await.unwrap().unwrap().unwrap();
    }

    #[test]
    fn first_request_gets_the_header_timeout_later_ones_the_keepalive_timeout() {
        let t = ConnTimer {
            first: AtomicBool::new(true),
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
        };
        let now = std::time::Instant::now();
        let asked = now + Duration::from_secs(10);
        assert_eq!(t.deadline(asked, true), asked);
        assert_eq!(t.deadline(asked, false), now + Duration::from_secs(75));
    }
}

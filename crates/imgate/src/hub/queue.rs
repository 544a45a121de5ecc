//! A connection's queue of live frames: bounded in frames and in bytes, offered to without
//! waiting, and able to say "you were kicked"; and the process-wide [`Budget`] of bytes
//! held for sockets.
//!
//! Not a tokio mpsc: that allocates a block of 32 slots per channel up front, which is
//! most of an idle connection's memory. This one holds nothing until a frame arrives and
//! gives back its room once it drains.
//!
//! A frame's bytes count from the offer until the socket has flushed it (not until it is
//! taken): while a client does not read, the frame being written sits in tungstenite's
//! write buffer, and that is memory the client pins as much as the queue is.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Outbound;

/// Room kept after the queue drains; anything above is given back.
const KEEP: usize = 8;

/// Bytes of frames held for sockets by the whole process (`hub.total_queue_max_bytes`):
/// queued, being written, or a replay page. An atomic, not a lock: fan-out only adds and
/// compares.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget { used: AtomicUsize::new(0), max }
    }

    /// Take `n` bytes if they fit. When nothing is held they always do, so that one frame
    /// larger than the whole budget still moves.
    pub fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u == 0 || u.saturating_add(n) <= self.max).then(|| u.saturating_add(n))
            })
            .is_ok()
    }

    /// Take `n` bytes whether they fit or not: the rest of a page whose first message
    /// alone is larger than what was reserved for it.
    pub fn force(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    pub fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes taken from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Take `bytes` if they fit now (see [`Budget::try_take`]).
    pub fn try_new(budget: &Arc<Budget>, bytes: usize) -> Option<Charge> {
        budget.try_take(bytes).then(|| Charge { budget: budget.clone(), bytes })
    }

    /// Hold `bytes` instead: give back the surplus, or take what is missing.
    pub fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give(self.bytes - bytes);
        } else {
            self.budget.force(bytes - self.bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// What a connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Frames queued (`hub.queue_capacity`).
    pub frames: usize,
    /// Bytes queued or being written (`hub.queue_max_bytes`).
    pub bytes: usize,
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    /// Bytes of `items`...
    queued: usize,
    /// ...and of frames taken but not yet flushed to the socket.
    in_flight: usize,
    kicked: bool,
    /// Frames may have been missed: read the mailbox before the next one.
    catch_up: bool,
    /// The server is shutting down.
    closing: bool,
}

pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
    bounds: Bounds,
    budget: Arc<Budget>,
}

/// What an offer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// The connection is kicked: why, the first time; `None` when it already was.
    Kicked(Option<Over>),
}

/// Which bound an offer would have passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// `hub.queue_capacity`
    Frames,
    /// `hub.queue_max_bytes`
    Bytes,
    /// `hub.total_queue_max_bytes`
    Total,
}

impl Over {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Over::Frames => "frames",
            Over::Bytes => "bytes",
            Over::Total => "total",
        }
    }
}

/// What the connection gets next.
#[derive(Debug)]
pub enum Next {
    /// The server is shutting down: close with 1001.
    Shutdown,
    Frame(Outbound),
    /// Read the mailbox: frames may have been committed that never reached the queue.
    CatchUp,
    Kicked,
}

impl Queue {
    pub fn new(bounds: Bounds, budget: Arc<Budget>) -> Queue {
        Queue { state: Mutex::default(), notify: Notify::new(), bounds, budget }
    }

    /// Offer a frame; never waits. A frame that would pass a bound kicks the connection
    /// instead, and what it had queued is given back at once. One frame always fits in
    /// a connection that holds nothing, however large.
    pub fn offer(&self, out: Outbound) -> Offer {
        let n = out.frame.len();
        let mut s = self.state.lock();
        if s.kicked {
            return Offer::Kicked(None);
        }
        let held = s.queued + s.in_flight;
        let over = if s.items.len() >= self.bounds.frames {
            Some(Over::Frames)
        } else if held > 0 && held.saturating_add(n) > self.bounds.bytes {
            Some(Over::Bytes)
        } else if !self.budget.try_take(n) {
            Some(Over::Total)
        } else {
            None
        };
        if over.is_some() {
            s.kicked = true;
            s.items = VecDeque::new();
            let queued = std::mem::take(&mut s.queued);
            drop(s);
            self.budget.give(queued);
            self.notify.notify_one();
            return Offer::Kicked(over);
        }
        s.queued += n;
        s.items.push_back(out);
        drop(s);
        self.notify.notify_one();
        Offer::Taken
    }

    /// The next frame, or the kick. Cancel-safe: nothing is taken until it is returned.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(n) = self.try_next() {
                return n;
            }
            self.notify.notified().await;
        }
    }

    /// Like [`next`](Self::next), without waiting. A frame returned stays counted until
    /// [`written`](Self::written).
    pub fn try_next(&self) -> Option<Next> {
        let mut s = self.state.lock();
        if s.closing {
            return Some(Next::Shutdown);
        }
        if s.kicked {
            return Some(Next::Kicked);
        }
        if s.catch_up {
            s.catch_up = false;
            return Some(Next::CatchUp);
        }
        let item = s.items.pop_front();
        match &item {
            Some(out) => {
                let n = out.frame.len();
                s.queued -= n;
                s.in_flight += n;
            }
            None if s.items.capacity() > KEEP => s.items.shrink_to(KEEP),
            None => {}
        }
        item.map(Next::Frame)
    }

    /// The socket flushed: every frame taken so far has left (the connection writes each
    /// frame it takes before it next flushes), and its bytes are given back.
    pub fn written(&self) {
        let n = std::mem::take(&mut self.state.lock().in_flight);
        self.budget.give(n);
    }

    /// Bytes queued or being written.
    pub fn held(&self) -> usize {
        let s = self.state.lock();
        s.queued + s.in_flight
    }

    /// Resolves once the connection is kicked.
    pub async fn kicked(&self) {
        loop {
            if self.state.lock().kicked {
                return;
            }
            // Woken by a frame, perhaps: it stays queued for `next`.
            self.notify.notified().await;
        }
    }

    /// Tell the connection the server is going (see [`Next::Shutdown`]). A flag here, not a
    /// future each idle connection holds: that is memory on every one of them.
    pub fn shut_down(&self) {
        self.state.lock().closing = true;
        self.notify.notify_one();
    }

    /// Ask the connection to read its mailbox (see [`Next::CatchUp`]).
    pub fn catch_up(&self) {
        self.state.lock().catch_up = true;
        self.notify.notify_one();
    }

    pub fn is_kicked(&self) -> bool {
        self.state.lock().kicked
    }
}

/// A connection that ends, however, gives back what it held.
impl Drop for Queue {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        self.budget.give(s.queued + s.in_flight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    /// A frame of `len` bytes.
    fn out(seq: u64, len: usize) -> Outbound {
        Outbound { seq, frame: Utf8Bytes::from("x".repeat(len)), committed: std::time::Instant::now() }
    }

    fn queue(frames: usize, bytes: usize, budget: &Arc<Budget>) -> Queue {
        Queue::new(Bounds { frames, bytes }, budget.clone())
    }

    /// `fut`, or a failure: in paused time a wait that nothing can end times out at once
    /// instead of hanging the test.
    async fn soon<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), fut).await.expect("woken")
    }

    fn frame(n: Option<Next>) -> u64 {
        match n {
            Some(Next::Frame(o)) => o.seq,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_in_order_until_full_then_kicked() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let q = queue(2, usize::MAX, &budget);
        assert_eq!(q.offer(out(1, 1)), Offer::Taken);
        assert_eq!(q.offer(out(2, 1)), Offer::Taken);
        assert!(matches!(soon(q.next()).await, Next::Frame(o) if o.seq == 1));
        assert_eq!(q.offer(out(3, 1)), Offer::Taken);
        assert_eq!(q.offer(out(4, 1)), Offer::Kicked(Some(Over::Frames)));
        assert_eq!(q.offer(out(5, 1)), Offer::Kicked(None));
        assert!(matches!(soon(q.next()).await, Next::Kicked));
        soon(q.kicked()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_is_woken() {
        let q = Arc::new(queue(4, usize::MAX, &Arc::new(Budget::new(usize::MAX))));
        let r = q.clone();
        let t = tokio::spawn(async move { matches!(r.next().await, Next::Frame(o) if o.seq == 7) });
        tokio::task::yield_now().await;
        q.offer(out(7, 1));
        assert!(soon(t).await.unwrap());
    }

    #[test]
    fn bytes_count_from_the_offer_until_the_flush() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let q = queue(100, 1000, &budget);
        assert_eq!(q.offer(out(1, 300)), Offer::Taken);
        assert_eq!(q.offer(out(2, 300)), Offer::Taken);
        assert_eq!((q.held(), budget.used()), (600, 600));
        // Taken is not written: the frame is still in the socket's hands.
        assert_eq!(frame(q.try_next()), 1);
        assert_eq!((q.held(), budget.used()), (600, 600));
        assert_eq!(frame(q.try_next()), 2);
        q.written();
        assert_eq!((q.held(), budget.used()), (0, 0));
        assert!(q.try_next().is_none());
    }

    #[test]
    fn passing_the_byte_bound_kicks_and_gives_back_what_was_queued() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let q = queue(100, 1000, &budget);
        assert_eq!(q.offer(out(1, 400)), Offer::Taken);
        assert_eq!(frame(q.try_next()), 1);
        assert_eq!(q.offer(out(2, 400)), Offer::Taken);
        assert_eq!(q.offer(out(3, 200)), Offer::Taken);
        // 1000 held: one byte more is over.
        assert_eq!(q.offer(out(4, 1)), Offer::Kicked(Some(Over::Bytes)));
        // The queued frames are gone at once; the one being written is still pinned.
        assert_eq!((q.held(), budget.used()), (400, 400));
        assert!(matches!(q.try_next(), Some(Next::Kicked)));
        // Closing the connection gives back the rest.
        drop(q);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_connection_that_ends_gives_back_everything() {
        let budget = Arc::new(Budget::new(usize::MAX));
        let q = queue(100, 1000, &budget);
        q.offer(out(1, 100));
        q.offer(out(2, 200));
        assert_eq!(frame(q.try_next()), 1);
        q.shut_down();
        assert!(matches!(q.try_next(), Some(Next::Shutdown)));
        assert_eq!(budget.used(), 300);
        drop(q);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_large_frame_always_fits_an_empty_queue() {
        let budget = Arc::new(Budget::new(500));
        let q = queue(100, 100, &budget);
        assert_eq!(q.offer(out(1, 5000)), Offer::Taken);
        assert_eq!(q.offer(out(2, 1)), Offer::Kicked(Some(Over::Bytes)));
    }

    #[test]
    fn the_offer_that_would_pass_the_total_kicks_its_own_connection_only() {
        let budget = Arc::new(Budget::new(1000));
        let slow = queue(100, 10_000, &budget);
        let fast = queue(100, 10_000, &budget);
        for seq in 1..=9 {
            assert_eq!(slow.offer(out(seq, 100)), Offer::Taken);
            assert_eq!(fast.offer(out(seq, 10)), Offer::Taken);
            assert_eq!(frame(fast.try_next()), seq);
            fast.written();
        }
        assert_eq!(budget.used(), 900);
        assert_eq!(slow.offer(out(10, 101)), Offer::Kicked(Some(Over::Total)));
        // The kicked connection's queue was given back: the fast one goes on.
        assert_eq!(budget.used(), 0);
        assert_eq!(fast.offer(out(10, 10)), Offer::Taken);
        assert_eq!(frame(fast.try_next()), 10);
        assert!(!fast.is_kicked());
    }

    #[test]
    fn a_charge_is_resized_and_given_back() {
        let budget = Arc::new(Budget::new(1000));
        let mut c = Charge::try_new(&budget, 800).unwrap();
        assert!(Charge::try_new(&budget, 300).is_none());
        c.resize(100);
        assert_eq!(budget.used(), 100);
        // Past the total when it must: the first message of a page always comes.
        c.resize(1500);
        assert_eq!(budget.used(), 1500);
        drop(c);
        assert_eq!(budget.used(), 0);
    }
}

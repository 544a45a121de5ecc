//! A connection's queue of live frames: bounded, offered to without waiting, and able to
//! say "you were kicked".
//!
//! Not a tokio mpsc: that allocates a block of 32 slots per channel up front, which is
//! most of an idle connection's memory. This one holds nothing until a frame arrives and
//! gives back its room once it drains.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Outbound;

/// Room kept after the queue drains; anything above is given back.
const KEEP: usize = 8;

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    kicked: bool,
    /// Frames may have been missed: read the mailbox before the next one.
    catch_up: bool,
    /// The server is shutting down.
    closing: bool,
}

#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    notify: Notify,
}

/// What an offer came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// Full: the connection is kicked (`true` the first time).
    Kicked(bool),
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
    /// Offer a frame; never waits. A queue holding `capacity` frames kicks instead.
    pub fn offer(&self, out: Outbound, capacity: usize) -> Offer {
        let mut s = self.state.lock();
        if s.kicked {
            return Offer::Kicked(false);
        }
        if s.items.len() >= capacity {
            s.kicked = true;
            s.items = VecDeque::new();
            drop(s);
            self.notify.notify_one();
            return Offer::Kicked(true);
        }
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

    /// Like [`next`](Self::next), without waiting.
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
        if item.is_none() && s.items.capacity() > KEEP {
            s.items.shrink_to(KEEP);
        }
        item.map(Next::Frame)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::Utf8Bytes;

    fn out(seq: u64) -> Outbound {
        Outbound { seq, frame: Utf8Bytes::from_static("x") }
    }

    #[tokio::test]
    async fn frames_in_order_until_full_then_kicked() {
        let q = Queue::default();
        assert_eq!(q.offer(out(1), 2), Offer::Taken);
        assert_eq!(q.offer(out(2), 2), Offer::Taken);
        assert!(matches!(q.next().await, Next::Frame(o) if o.seq == 1));
        assert_eq!(q.offer(out(3), 2), Offer::Taken);
        assert_eq!(q.offer(out(4), 2), Offer::Kicked(true));
        assert_eq!(q.offer(out(5), 2), Offer::Kicked(false));
        assert!(matches!(q.next().await, Next::Kicked));
        q.kicked().await;
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken() {
        let q = std::sync::Arc::new(Queue::default());
        let r = q.clone();
        let t = tokio::spawn(async move { matches!(r.next().await, Next::Frame(o) if o.seq == 7) });
        tokio::task::yield_now().await;
        q.offer(out(7), 4);
        assert!(t.await.unwrap());
    }
}

//! Live connections: who is connected, and fan-out of committed messages to them.
//!
//! The registry is sharded by user so that fan-out for different users never contends.
//! Fan-out never waits for a client: each connection has a queue bounded in frames and in
//! bytes, and the process a [`Budget`] of bytes for all of them; a frame is offered
//! without waiting, and a connection that it would take past a bound is kicked — closed
//! with [`CLOSE_SLOW`] — to catch up from its mailbox with `since` when it reconnects.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use imgate_protocol::EncodedMessage;
use parking_lot::RwLock;

use crate::config::HubConfig;
use crate::store::Fanout;

pub mod conn;
mod queue;

pub use queue::{Bounds, Budget, Charge, Next, Offer, Over, Queue};

/// Close code for a connection that did not keep up with its messages.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code for a connection that went silent (no frame, no pong).
pub const CLOSE_IDLE: u16 = 4000;
/// Close code for a connection whose token expired; the client reconnects with a fresh one.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

const SHARDS: usize = 64;

/// A committed message on its way to one connection.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub seq: u64,
    pub frame: Utf8Bytes,
    /// When the store handed it over (for `imgate_delivery_duration_seconds`).
    pub committed: std::time::Instant,
}

struct Slot {
    id: u64,
    queue: Arc<Queue>,
}

/// A user's live connections, and the highest seq any of them wrote: connections that
/// start while others are open begin after it, so nothing is replayed twice.
#[derive(Default)]
struct UserEntry {
    slots: Vec<Slot>,
    delivered: Arc<AtomicU64>,
}

/// Users whose names hash to one shard, and their connections.
type Shard = HashMap<Arc<str>, UserEntry>;

/// Places held for connections being set up, by user (of one shard).
type Held = HashMap<Arc<str>, usize>;

/// A connection's place in the hub; leaves the hub when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    user: Arc<str>,
    id: u64,
    /// Live frames for this connection; says when the hub gave up on it (full).
    pub queue: Arc<Queue>,
    /// Shared by the user's connections; raised after each write.
    pub delivered: Arc<AtomicU64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove(&self.user, self.id);
    }
}

/// A place held for a connection being set up (between the limit check, before the
/// handshake, and its registration, after the replay): counted against the user's limit,
/// so that connections racing in cannot pass it together. Given back when dropped.
pub struct Reservation {
    hub: Arc<Hub>,
    user: Arc<str>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut pending = self.hub.pending[self.hub.index(&self.user)].lock();
        if let Some(n) = pending.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                pending.remove(&self.user);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("user already has {0} connections, the most allowed")]
pub struct TooManyConnections(pub usize);

pub struct Hub {
    shards: Box<[RwLock<Shard>]>,
    /// Places reserved per user, by the shard of the user (see [`Reservation`]).
    pending: Box<[parking_lot::Mutex<Held>]>,
    hasher: RandomState,
    next_id: AtomicU64,
    bounds: Bounds,
    budget: Arc<Budget>,
    max_per_user: usize,
}

impl Hub {
    pub fn new(config: &HubConfig) -> Arc<Hub> {
        Arc::new(Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            pending: (0..SHARDS).map(|_| parking_lot::Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            bounds: Bounds { frames: config.queue_capacity, bytes: config.queue_max_bytes },
            budget: Arc::new(Budget::new(config.total_queue_max_bytes)),
            max_per_user: config.max_connections_per_user,
        })
    }

    /// Bytes held for sockets by the whole process.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn index(&self, user: &str) -> usize {
        self.hasher.hash_one(user) as usize % SHARDS
    }

    fn shard(&self, user: &str) -> &RwLock<Shard> {
        &self.shards[self.index(user)]
    }

    /// Hold a place for a connection of `user`, if the user's live connections and the
    /// places held leave one ([`HubConfig::max_connections_per_user`]).
    pub fn reserve(self: &Arc<Self>, user: &Arc<str>) -> Result<Reservation, TooManyConnections> {
        let i = self.index(user);
        // Registrations take the shard's write lock: none changes the count meanwhile.
        let shard = self.shards[i].read();
        let mut pending = self.pending[i].lock();
        let held = pending.get(user).copied().unwrap_or(0);
        let have = shard.get(user).map_or(0, |e| e.slots.len()) + held;
        if have >= self.max_per_user {
            return Err(TooManyConnections(have));
        }
        pending.insert(user.clone(), held + 1);
        Ok(Reservation { hub: self.clone(), user: user.clone() })
    }

    /// Add the connection `place` was held for. Messages committed from now on are
    /// queued to it.
    pub fn register(self: &Arc<Self>, place: Reservation) -> Registration {
        let user = place.user.clone();
        let queue = Arc::new(Queue::new(self.bounds, self.budget.clone()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let delivered = {
            let mut shard = self.shard(&user).write();
            let entry = shard.entry(user.clone()).or_default();
            // Most users have one connection: room for exactly one, not Vec's four.
            entry.slots.reserve_exact(1);
            entry.slots.push(Slot { id, queue: queue.clone() });
            entry.delivered.clone()
        };
        // The place is a slot now (counted twice for a moment: never too few).
        drop(place);
        metrics::gauge!("imgate_connections").increment(1.0);
        Registration { hub: self.clone(), user, id, queue, delivered }
    }

    fn remove(&self, user: &str, id: u64) {
        let mut shard = self.shard(user).write();
        if let Some(entry) = shard.get_mut(user) {
            let before = entry.slots.len();
            entry.slots.retain(|s| s.id != id);
            if entry.slots.len() < before {
                metrics::gauge!("imgate_connections").decrement(1.0);
            }
            if entry.slots.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Number of live connections of `user`.
    #[cfg(test)]
    pub fn connections(&self, user: &str) -> usize {
        self.shard(user).read().get(user).map_or(0, |e| e.slots.len())
    }

    /// The highest seq a live connection of `user` wrote, while any is open.
    pub fn delivered(&self, user: &str) -> Option<u64> {
        self.shard(user).read().get(user).map(|e| e.delivered.load(Ordering::Acquire))
    }

    /// Offer a frame to every connection of `user`; returns how many took it.
    pub fn publish(&self, user: &str, out: Outbound) -> usize {
        let shard = self.shard(user).read();
        let Some(entry) = shard.get(user) else {
            return 0;
        };
        let mut taken = 0;
        for slot in &entry.slots {
            match slot.queue.offer(out.clone()) {
                Offer::Taken => taken += 1,
                Offer::Kicked(Some(over)) => {
                    metrics::counter!("imgate_slow_consumers_closed_total", "over" => over.label())
                        .increment(1)
                }
                Offer::Kicked(None) => {}
            }
        }
        taken
    }
}

impl Hub {
    /// Shutdown: every connection closes with 1001.
    pub fn shut_down(&self) {
        for shard in self.shards.iter() {
            for entry in shard.read().values() {
                for slot in &entry.slots {
                    slot.queue.shut_down();
                }
            }
        }
    }
}

impl Fanout for Hub {
    fn resync(&self) {
        for shard in self.shards.iter() {
            for entry in shard.read().values() {
                for slot in &entry.slots {
                    slot.queue.catch_up();
                }
            }
        }
    }

    fn committed(&self, user: &str, seq: u64, frame: &EncodedMessage) {
        // Serialise once per message, shared by every connection of the user.
        if self.shard(user).read().contains_key(user) {
            let committed = std::time::Instant::now();
            self.publish(user, Outbound { seq, frame: Utf8Bytes::from(frame.with_seq(seq)), committed });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(hub: &Arc<Hub>, user: &str) -> Registration {
        hub.register(hub.reserve(&user.into()).unwrap())
    }

    fn out(seq: u64) -> Outbound {
        Outbound { seq, frame: Utf8Bytes::from(format!("{seq}")), committed: std::time::Instant::now() }
    }

    /// A queue's next item, or a failure: in paused time a wait nothing can end times
    /// out at once instead of hanging.
    async fn next(q: &Queue) -> Next {
        tokio::time::timeout(std::time::Duration::from_secs(10), q.next()).await.expect("a frame is queued")
    }

    fn hub(queue_capacity: usize, max_connections_per_user: usize) -> Arc<Hub> {
        Hub::new(&HubConfig { queue_capacity, max_connections_per_user, ..HubConfig::default() })
    }

    #[tokio::test(start_paused = true)]
    async fn every_connection_of_a_user_gets_each_frame() {
        let hub = hub(4, 8);
        let a = join(&hub, "u");
        let b = join(&hub, "u");
        let other = join(&hub, "v");
        assert_eq!(hub.publish("u", out(1)), 2);
        for r in [&a, &b] {
            assert!(matches!(next(&r.queue).await, Next::Frame(o) if o.seq == 1));
        }
        assert!(other.queue.try_next().is_none());
        drop(a);
        assert_eq!(hub.connections("u"), 1);
        drop(b);
        assert_eq!(hub.connections("u"), 0);
        assert_eq!(hub.publish("u", out(2)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_kicks_only_that_connection() {
        let hub = hub(2, 8);
        let slow = join(&hub, "u");
        let fast = join(&hub, "u");
        for seq in 1..=3 {
            hub.publish("u", out(seq));
            assert!(matches!(next(&fast.queue).await, Next::Frame(o) if o.seq == seq));
        }
        assert!(slow.queue.is_kicked());
        assert!(!fast.queue.is_kicked());
    }

    #[test]
    fn connection_limit() {
        let hub = hub(2, 2);
        let _a = join(&hub, "u");
        // A place held counts as a connection: two racing in cannot both pass the limit.
        let held = hub.reserve(&"u".into()).unwrap();
        assert!(hub.reserve(&"u".into()).is_err());
        assert!(hub.reserve(&"v".into()).is_ok());
        drop(held);
        let b = hub.reserve(&"u".into()).unwrap();
        let _b = hub.register(b);
        assert!(hub.reserve(&"u".into()).is_err());
        assert_eq!(hub.connections("u"), 2);
    }
}

//! The marks of recently used mailboxes (last seq, delivered mark), held in memory so the
//! writer allocates seqs and connections find their start without a query.
//!
//! It is a cache, not a copy: everything in it is on disk too (the journal's highest
//! seq per user, and the `mailboxes` table), so a mailbox may leave it at any time and is
//! read back when next needed. It holds at most `store.index_max_mailboxes` mailboxes,
//! however many users ever appeared; the least recently used go first. Only the writer
//! thread puts mailboxes in and changes them, always after a commit, so a reader can
//! never put back a value older than the writer's. Readers that miss read the database.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

const SHARDS: usize = 64;

#[derive(Debug)]
struct Marks {
    /// The highest seq ever assigned, retained or not.
    last_seq: u64,
    delivered: u64,
    /// When it was last used (a tick of `Index::clock`), for eviction.
    used: AtomicU64,
}

type Shard = RwLock<HashMap<Box<str>, Marks>>;

pub struct Index {
    shards: Box<[Shard]>,
    hasher: RandomState,
    per_shard: usize,
    clock: AtomicU64,
}

impl Index {
    pub fn new(max_mailboxes: usize) -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            // Rounded down, so the total never exceeds the bound (but one per shard at least).
            per_shard: (max_mailboxes / SHARDS).max(1),
            clock: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// `(last_seq, delivered)` when `user` is held.
    pub fn get(&self, user: &str) -> Option<(u64, u64)> {
        let shard = self.shard(user).read();
        let m = shard.get(user)?;
        m.used.store(self.tick(), Ordering::Relaxed);
        Some((m.last_seq, m.delivered))
    }

    /// How many mailboxes are held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    // --- changed by the writer only, after a commit ---------------------------------

    /// Hold `user` with these marks (raising, never lowering, what is held), making room
    /// by dropping the least recently used mailboxes of its shard.
    pub fn put(&self, user: &str, last_seq: u64, delivered: u64) {
        let now = self.tick();
        let mut shard = self.shard(user).write();
        if let Some(m) = shard.get_mut(user) {
            m.last_seq = m.last_seq.max(last_seq);
            m.delivered = m.delivered.max(delivered);
            m.used.store(now, Ordering::Relaxed);
            return;
        }
        shard.insert(user.into(), Marks { last_seq, delivered, used: AtomicU64::new(now) });
        if shard.len() > self.per_shard {
            // Drop an eighth at once, so that the scan is paid once per many inserts.
            let keep = self.per_shard - self.per_shard / 8;
            let mut ages: Vec<u64> = shard.values().map(|m| m.used.load(Ordering::Relaxed)).collect();
            let drop = shard.len() - keep;
            let (_, nth, _) = ages.select_nth_unstable(drop - 1);
            let oldest_kept = *nth;
            shard.retain(|_, m| m.used.load(Ordering::Relaxed) > oldest_kept);
        }
    }

    /// Raise the delivered mark of `user` if held (if not, the database has it).
    pub fn raise_delivered(&self, user: &str, seq: u64) {
        if let Some(m) = self.shard(user).write().get_mut(user) {
            m.delivered = m.delivered.max(seq);
        }
    }

    /// Drop `user`: what is held may be wrong (a commit for it failed).
    pub fn forget(&self, user: &str) {
        self.shard(user).write().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_rise() {
        let ix = Index::new(1000);
        assert_eq!(ix.get("u"), None);
        ix.put("u", 9, 4);
        ix.put("u", 7, 2);
        assert_eq!(ix.get("u"), Some((9, 4)));
        ix.raise_delivered("u", 6);
        ix.raise_delivered("nobody", 6);
        assert_eq!(ix.get("u"), Some((9, 6)));
        assert_eq!(ix.get("nobody"), None);
        ix.forget("u");
        assert_eq!(ix.get("u"), None);
    }

    #[test]
    fn holds_at_most_its_bound_and_keeps_the_recently_used() {
        let ix = Index::new(128);
        ix.put("hot", 1, 0);
        for i in 0..10_000 {
            ix.put(&format!("user{i}"), 1, 0);
            // Used now and then, as a busy mailbox is.
            assert!(ix.get("hot").is_some(), "the recently used mailbox was dropped at {i}");
            assert!(ix.len() <= 128, "{} held after {i}", ix.len());
        }
        assert_eq!(ix.get("user0"), None);
        assert_eq!(ix.get("user9999"), Some((1, 0)));
    }
}

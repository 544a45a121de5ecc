//! The in-memory map of the journal: for each mailbox, which journal row holds each
//! retained seq, and the mailbox's marks.
//!
//! The journal is one append-only table in commit order, so a commit writes one or two
//! pages however many mailboxes it touches; finding a user's messages is this map's job.
//! It is rebuilt from the journal at start. Only the writer thread changes it, always
//! after a commit; readers take a shard's read lock for as long as it takes to copy a few
//! row ids.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use parking_lot::RwLock;

const SHARDS: usize = 64;

/// A retained message: its journal row and its contact (interned).
#[derive(Clone, Copy, Debug)]
struct Entry {
    row: i64,
    contact: u32,
}

/// One user's mailbox. `entries[i]` holds seq `first + i`: retention removes a prefix,
/// appends add at the end, so the retained seqs are always contiguous.
#[derive(Debug, Default)]
struct Mailbox {
    first: u64,
    entries: VecDeque<Entry>,
    /// The highest seq ever assigned, retained or not.
    last_seq: u64,
    delivered: u64,
}

impl Mailbox {
    fn push(&mut self, seq: u64, e: Entry) {
        if self.entries.is_empty() || seq != self.first + self.entries.len() as u64 {
            // Empty, or a gap (which only a damaged journal can show): restart here.
            self.entries.clear();
            self.first = seq;
        }
        self.entries.push_back(e);
        self.last_seq = self.last_seq.max(seq);
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.first += 1;
        Some(e)
    }
}

/// Interned contact ids: entries hold a number, not a string per message.
#[derive(Default)]
struct Contacts {
    ids: HashMap<String, u32>,
}

pub struct Index {
    shards: Box<[RwLock<HashMap<String, Mailbox>>]>,
    hasher: RandomState,
    contacts: RwLock<Contacts>,
}

impl Index {
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            contacts: RwLock::new(Contacts::default()),
        }
    }

    fn shard(&self, user: &str) -> &RwLock<HashMap<String, Mailbox>> {
        &self.shards[self.hasher.hash_one(user) as usize % SHARDS]
    }

    fn contact_id(&self, contact: &str) -> u32 {
        if let Some(id) = self.contacts.read().ids.get(contact) {
            return *id;
        }
        let mut c = self.contacts.write();
        let next = c.ids.len() as u32;
        *c.ids.entry(contact.to_owned()).or_insert(next)
    }

    pub fn last_seq(&self, user: &str) -> u64 {
        self.shard(user).read().get(user).map_or(0, |m| m.last_seq)
    }

    pub fn delivered(&self, user: &str) -> u64 {
        self.shard(user).read().get(user).map_or(0, |m| m.delivered)
    }

    /// `(seq, row)` of up to `limit` messages after `after`, oldest first.
    pub fn rows_after(&self, user: &str, after: u64, limit: usize) -> Vec<(u64, i64)> {
        let shard = self.shard(user).read();
        let Some(m) = shard.get(user) else { return Vec::new() };
        let skip = after.saturating_add(1).saturating_sub(m.first);
        let Ok(skip) = usize::try_from(skip) else { return Vec::new() };
        m.entries
            .iter()
            .enumerate()
            .skip(skip)
            .take(limit)
            .map(|(i, e)| (m.first + i as u64, e.row))
            .collect()
    }

    /// `(seq, row)` of up to `limit` messages before `before`, newest first, only those
    /// with `contact` when given.
    pub fn rows_before(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Vec<(u64, i64)> {
        let want = match contact {
            Some(c) => match self.contacts.read().ids.get(c) {
                Some(id) => Some(*id),
                None => return Vec::new(),
            },
            None => None,
        };
        let shard = self.shard(user).read();
        let Some(m) = shard.get(user) else { return Vec::new() };
        let end = match before {
            Some(b) => usize::try_from(b.saturating_sub(m.first)).unwrap_or(usize::MAX).min(m.entries.len()),
            None => m.entries.len(),
        };
        m.entries
            .range(..end)
            .enumerate()
            .rev()
            .filter(|(_, e)| want.is_none_or(|w| e.contact == w))
            .take(limit)
            .map(|(i, e)| (m.first + i as u64, e.row))
            .collect()
    }

    // --- changed by the writer only, after a commit ---------------------------------

    pub fn push(&self, user: &str, seq: u64, row: i64, contact: &str) {
        let contact = self.contact_id(contact);
        let mut shard = self.shard(user).write();
        match shard.get_mut(user) {
            Some(m) => m.push(seq, Entry { row, contact }),
            None => {
                let mut m = Mailbox::default();
                m.push(seq, Entry { row, contact });
                shard.insert(user.to_owned(), m);
            }
        }
    }

    /// Marks read from the `mailboxes` table at start.
    pub fn load_marks(&self, user: &str, last_seq: u64, delivered: u64) {
        let mut shard = self.shard(user).write();
        let m = shard.entry(user.to_owned()).or_default();
        m.last_seq = m.last_seq.max(last_seq);
        m.delivered = m.delivered.max(delivered);
        if m.entries.is_empty() {
            m.first = m.last_seq + 1;
        }
    }

    pub fn raise_delivered(&self, user: &str, seq: u64) {
        let mut shard = self.shard(user).write();
        let m = shard.entry(user.to_owned()).or_default();
        m.delivered = m.delivered.max(seq);
    }

    /// The rows to remove so that `user` keeps at most `max` messages.
    pub fn over_count(&self, user: &str, max: u64) -> Vec<i64> {
        let shard = self.shard(user).read();
        let Some(m) = shard.get(user) else { return Vec::new() };
        let excess = (m.entries.len() as u64).saturating_sub(max) as usize;
        m.entries.iter().take(excess).map(|e| e.row).collect()
    }

    /// Users holding rows below `cutoff`, with their last seq (to be kept on disk when
    /// their rows go).
    pub fn users_below(&self, cutoff: i64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (u, m) in shard.read().iter() {
                if m.entries.front().is_some_and(|e| e.row < cutoff) {
                    out.push((u.clone(), m.last_seq));
                }
            }
        }
        out
    }

    /// Forget `user`'s oldest `n` entries.
    pub fn drop_oldest(&self, user: &str, n: usize) {
        if let Some(m) = self.shard(user).write().get_mut(user) {
            for _ in 0..n {
                m.pop_front();
            }
        }
    }

    /// Forget every entry whose row is below `cutoff`; how many went.
    pub fn drop_below(&self, cutoff: i64) -> u64 {
        let mut n = 0;
        for shard in self.shards.iter() {
            for m in shard.write().values_mut() {
                while m.entries.front().is_some_and(|e| e.row < cutoff) {
                    m.pop_front();
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_by_seq_and_by_contact() {
        let ix = Index::new();
        for seq in 1..=6 {
            ix.push("u", seq, 100 + seq as i64, if seq % 2 == 0 { "even" } else { "odd" });
        }
        assert_eq!(ix.last_seq("u"), 6);
        assert_eq!(ix.rows_after("u", 4, 10), [(5, 105), (6, 106)]);
        assert_eq!(ix.rows_after("u", 0, 2), [(1, 101), (2, 102)]);
        assert_eq!(ix.rows_after("u", 6, 10), []);
        assert_eq!(ix.rows_after("u", u64::MAX, 10), []);
        assert_eq!(ix.rows_before("u", None, None, 2), [(6, 106), (5, 105)]);
        assert_eq!(ix.rows_before("u", Some("even"), Some(6), 10), [(4, 104), (2, 102)]);
        assert_eq!(ix.rows_before("u", Some("nobody"), None, 10), []);
        // Retention takes a prefix; seqs stay where they were.
        assert_eq!(ix.over_count("u", 4), [101, 102]);
        ix.drop_oldest("u", 2);
        assert_eq!(ix.rows_after("u", 0, 10).first(), Some(&(3, 103)));
        assert_eq!(ix.drop_below(105), 2);
        assert_eq!(ix.rows_after("u", 0, 10), [(5, 105), (6, 106)]);
        assert_eq!(ix.drop_below(1000), 2);
        assert_eq!(ix.last_seq("u"), 6);
        ix.push("u", 7, 107, "odd");
        assert_eq!(ix.rows_after("u", 0, 10), [(7, 107)]);
    }

    #[test]
    fn marks_survive_an_empty_mailbox() {
        let ix = Index::new();
        ix.load_marks("u", 9, 4);
        assert_eq!((ix.last_seq("u"), ix.delivered("u")), (9, 4));
        assert!(ix.rows_after("u", 0, 10).is_empty());
        ix.raise_delivered("u", 2);
        assert_eq!(ix.delivered("u"), 4);
        ix.push("u", 10, 1, "c");
        assert_eq!(ix.rows_after("u", 0, 10), [(10, 1)]);
    }
}

//! Conversations between two gateway users (docs/inbox.md, "Between gateway users").
//!
//! Each user keeps its own record of each pair, in the same engine and with the same
//! [`Conversation`] shape as a follower's: the account is the user's own (`~` and its id,
//! which no WeChat appid can be), the contact the other user. Nobody is assigned and
//! nothing is routed; unread counts, 待回复 and the last message work as for followers, so
//! the console lists every conversation of a gateway user from the index, paged.
//!
//! The index is written off the send path. A committed message only folds into its pair's
//! [`Pending`] change in memory (a sharded map: no lock shared by all sends, no wait); a
//! task writes the pairs changed since its last pass once a second, in one batch (one
//! transaction with SQLite). So a busy pair costs one write a second, not one per message,
//! and a send never waits for the index. A send is acknowledged when its message is in the
//! mailboxes; its pair's row follows within about a second. A crash can lose the last
//! second's changes to rows, never a message; the pair's next message writes its row again.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use super::model::{ConvState, Conversation};
use super::{DynConversations, Message, edit, now};

/// The account of `owner`'s own conversations.
pub fn account_of(owner: &str) -> String {
    format!("~{owner}")
}

/// Whether a conversation's account is a user's own: a pair of gateway users.
pub fn is_direct(appid: &str) -> bool {
    appid.starts_with('~')
}

/// How often the changed pairs are written.
const EVERY: Duration = Duration::from_secs(1);
/// Changed pairs held before a write is started early: memory stays bounded whatever the
/// rate (each holds a preview and a little text).
const DIRTY_MAX: usize = 50_000;
const SHARDS: usize = 16;
/// Text kept per pending pair for search (the record keeps its own bounded tail).
const TEXT_MAX: usize = 512;

/// The change to one side of a pair since the last write: what applying its messages one
/// by one would do, folded.
struct Pending {
    company_id: String,
    /// An answer (the owner wrote) came: the stored unread count and wait restart here.
    answered: bool,
    /// Messages from the other side since the last answer (or since the last write).
    incoming: u64,
    /// When the first of those came.
    waiting_since: Option<i64>,
    last_in: Option<u64>,
    last_seq: u64,
    last_at: i64,
    last: Value,
    text: String,
}

impl Pending {
    fn new(company_id: &str) -> Pending {
        Pending {
            company_id: company_id.to_owned(),
            answered: false,
            incoming: 0,
            waiting_since: None,
            last_in: None,
            last_seq: 0,
            last_at: 0,
            last: Value::Null,
            text: String::new(),
        }
    }

    /// Fold one more message into the change.
    fn add(&mut self, incoming: bool, seq: u64, at: i64, last: Value, text: &str) {
        if incoming {
            self.incoming += 1;
            self.waiting_since.get_or_insert(at);
            self.last_in = Some(seq);
        } else {
            self.answered = true;
            self.incoming = 0;
            self.waiting_since = None;
        }
        self.last_seq = self.last_seq.max(seq);
        self.last_at = at;
        self.last = last;
        if !text.is_empty() {
            if self.text.len() + text.len() > TEXT_MAX {
                self.text.clear();
            }
            self.text.push('\n');
            self.text.push_str(text);
        }
    }

    /// Apply the change to the stored record of `owner`'s side.
    fn apply(&self, owner: &str, c: &mut Conversation) {
        c.assignee = None;
        c.state = ConvState::Open;
        if self.answered {
            c.unread.insert(owner.to_owned(), self.incoming);
            c.waiting_since = self.waiting_since;
        } else {
            *c.unread.entry(owner.to_owned()).or_default() += self.incoming;
            if let Some(t) = self.waiting_since {
                c.waiting_since.get_or_insert(t);
            }
        }
        if let Some(seq) = self.last_in {
            c.last_in.insert(owner.to_owned(), seq);
        }
        c.last_seq.insert(owner.to_owned(), self.last_seq);
        c.last_at = c.last_at.max(self.last_at);
        c.last_message = Some(self.last.clone());
        c.remember_text(&self.text);
    }
}

type Shard = Mutex<HashMap<(String, String), Pending>>;

struct Dirty {
    shards: Vec<Shard>,
    hasher: RandomState,
    len: AtomicUsize,
    full: Notify,
}

/// The send path's handle: fold committed messages into the pending changes.
pub struct Indexer {
    dirty: Arc<Dirty>,
}

impl Indexer {
    /// Start the task that writes the index; it ends, after a last write, when the last
    /// handle is dropped.
    pub fn spawn(convs: DynConversations) -> Indexer {
        let dirty = Arc::new(Dirty {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            len: AtomicUsize::new(0),
            full: Notify::new(),
        });
        tokio::spawn(run(convs, dirty.clone()));
        Indexer { dirty }
    }

    /// A message from `from` to `to` was committed: seq `to_seq` in `to`'s mailbox, and
    /// `from_seq` in `from`'s when the sender keeps a copy (a gateway user's own send).
    pub fn message(
        &self,
        company_id: &str,
        from: &str,
        to: &str,
        to_seq: u64,
        from_seq: Option<u64>,
        m: Message<'_>,
    ) {
        let at = now();
        let text = m.text();
        self.fold(company_id, to, from, to_seq, true, at, m.last("in"), &text);
        if let Some(seq) = from_seq {
            self.fold(company_id, from, to, seq, false, at, m.last("out"), &text);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fold(
        &self,
        company_id: &str,
        owner: &str,
        other: &str,
        seq: u64,
        incoming: bool,
        at: i64,
        last: Value,
        text: &str,
    ) {
        let key = (owner.to_owned(), other.to_owned());
        let shard = &self.dirty.shards[self.dirty.hasher.hash_one(&key) as usize % SHARDS];
        let mut map = shard.lock();
        let added = !map.contains_key(&key);
        map.entry(key).or_insert_with(|| Pending::new(company_id)).add(incoming, seq, at, last, text);
        drop(map);
        if added && self.dirty.len.fetch_add(1, Ordering::Relaxed) + 1 >= DIRTY_MAX {
            self.dirty.full.notify_one();
        }
    }
}

impl Drop for Indexer {
    /// The server is going away: write what is pending now, not at the next tick.
    fn drop(&mut self) {
        self.dirty.full.notify_one();
    }
}

async fn run(convs: DynConversations, dirty: Arc<Dirty>) {
    loop {
        let last = Arc::strong_count(&dirty) == 1;
        if !last {
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = dirty.full.notified() => {}
            }
        }
        write(&convs, &dirty).await;
        if last || Arc::strong_count(&dirty) == 1 {
            return;
        }
    }
}

/// Write every pending pair, one update each, in one batch.
async fn write(convs: &DynConversations, dirty: &Dirty) {
    let mut edits = Vec::new();
    for shard in &dirty.shards {
        let taken = std::mem::take(&mut *shard.lock());
        dirty.len.fetch_sub(taken.len(), Ordering::Relaxed);
        for ((owner, other), p) in taken {
            let (appid, o, w) = (account_of(&owner), other.clone(), owner);
            let a = appid.clone();
            let e = edit(move |cur| {
                let mut c = cur.unwrap_or_else(|| Conversation::new(&a, &o, &p.company_id));
                p.apply(&w, &mut c);
                Ok(Some(c))
            });
            edits.push((appid, other, e));
        }
    }
    if edits.is_empty() {
        return;
    }
    for r in convs.update_many(edits).await {
        if let Err(e) = r {
            tracing::warn!(error = %e, "a conversation between gateway users not updated");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(incoming: bool, seq: u64, at: i64) -> (bool, u64, i64) {
        (incoming, seq, at)
    }

    /// Folding a run of messages, then applying once, is applying them one by one.
    #[test]
    fn a_folded_change_is_the_messages_applied_in_turn() {
        let runs: Vec<Vec<(bool, u64, i64)>> = vec![
            vec![side(true, 1, 10), side(true, 2, 11)],
            vec![side(true, 1, 10), side(false, 2, 12), side(true, 3, 13)],
            vec![side(false, 5, 20)],
            vec![side(true, 1, 10), side(false, 2, 11)],
        ];
        for start_unread in [0u64, 4] {
            for run in &runs {
                let base = Conversation {
                    unread: [("me".to_owned(), start_unread)].into(),
                    waiting_since: (start_unread > 0).then_some(5),
                    ..Conversation::default()
                };
                // One by one: the rules of docs/inbox.md.
                let mut want = base.clone();
                for &(incoming, seq, at) in run {
                    if incoming {
                        *want.unread.entry("me".into()).or_default() += 1;
                        want.waiting_since.get_or_insert(at);
                        want.last_in.insert("me".into(), seq);
                    } else {
                        want.unread.insert("me".into(), 0);
                        want.waiting_since = None;
                    }
                    want.last_seq.insert("me".into(), seq);
                    want.last_at = at;
                }
                // Folded.
                let mut p = Pending::new("");
                for &(incoming, seq, at) in run {
                    p.add(incoming, seq, at, Value::Null, "");
                }
                let mut got = base.clone();
                p.apply("me", &mut got);
                assert_eq!(
                    (got.unread, got.waiting_since, got.last_in, got.last_seq, got.last_at),
                    (want.unread, want.waiting_since, want.last_in, want.last_seq, want.last_at),
                    "{run:?} from {start_unread}"
                );
            }
        }
    }
}

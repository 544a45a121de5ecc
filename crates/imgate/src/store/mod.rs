//! Mailboxes: the ordered, durable log of messages for each user.
//!
//! [`Store`] is the only way into them. Engines (`sqlite`, embedded; `redis`, shared by several nodes) implement the
//! same narrow contract, written on each method, and pass the same conformance tests
//! (`tests/store_conformance.rs`). The store knows nothing of sockets: after each commit
//! it hands the committed messages to a [`Fanout`], in commit order, and that is all.

use std::sync::Arc;

use async_trait::async_trait;
use imgate_protocol::EncodedMessage;

pub mod lock;
pub mod redis;
pub mod sqlite;

/// A message to commit to one mailbox.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The mailbox: the user who will read it.
    pub user: String,
    /// The message id (`data.id`).
    pub id: String,
    /// The other party, from `user`'s point of view (`data.contact_id`).
    pub contact: String,
    /// Retries carrying the same key for the same mailbox are one message.
    pub dedupe_key: Option<String>,
    /// The frame, serialised once, without its seq.
    pub frame: EncodedMessage,
}

/// What became of a [`NewMessage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub id: String,
    /// The key was already in the mailbox: nothing was stored, and `seq`/`id` are the
    /// original's.
    pub duplicate: bool,
}

/// A message read back from a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub frame: EncodedMessage,
}

/// What [`Store::erase`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    /// Messages removed, in every mailbox.
    pub messages: u64,
    /// The mailboxes that held any of them, sorted (the contact's own included).
    pub mailboxes: Vec<String>,
    /// The distinct, non-empty `msg.media_path`s of the removed messages, sorted: the
    /// caller decides which files go (the store knows nothing of media).
    pub media_paths: Vec<String>,
}

impl Erased {
    /// Count one removed message of `user`'s mailbox.
    pub fn add(&mut self, user: &str, frame: &EncodedMessage) {
        self.messages += 1;
        if let Err(at) = self.mailboxes.binary_search_by(|m| m.as_str().cmp(user)) {
            self.mailboxes.insert(at, user.to_owned());
        }
        // Decoded only for the path: the seq does not matter here.
        let path = frame.decode(0).ok().and_then(|f| match f.data.msg.get("media_path") {
            Some(serde_json::Value::String(p)) if !p.is_empty() => Some(p.clone()),
            _ => None,
        });
        if let Some(p) = path
            && let Err(at) = self.media_paths.binary_search(&p)
        {
            self.media_paths.insert(at, p);
        }
    }
}

/// Why a store call failed. Both kinds tell a caller that nothing was stored and that a
/// retry may succeed (HTTP answers 503); [`Unavailable`] says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    #[error("store is shutting down")]
    Closed,
}

/// What made the store unavailable, typed so that a caller (or a log search) can tell a
/// full disk from a Redis outage from a damaged record without reading a sentence.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The file system: the data directory, a thread of the engine.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// SQLite refused (a full disk, a busy or damaged file); `what` names the file.
    #[error("{what}: {source}")]
    Sqlite {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    /// Redis did not answer in time, refused, or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record, or an engine's answer, this version cannot read.
    #[error("{0}")]
    Damaged(String),
    /// A worker of the engine gave up on the call (it logged why): nothing was stored.
    #[error("{0}")]
    Failed(String),
    /// Redis answers, but this node does not (yet) hear the fan-out channel: a commit
    /// would not reach its live connections.
    #[error("redis: not subscribed to the fan-out channel (yet)")]
    NotSubscribed,
}

impl Unavailable {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Unavailable {
        Unavailable::Io { what: what.into(), source }
    }

    pub fn sqlite(what: impl Into<String>, source: rusqlite::Error) -> Unavailable {
        Unavailable::Sqlite { what: what.into(), source }
    }
}

/// Receives every committed message, once, in commit order (so in seq order per user).
/// It must not block: it is called on the committing thread, or the subscriber's task.
pub trait Fanout: Send + Sync + 'static {
    fn committed(&self, user: &str, seq: u64, frame: &EncodedMessage);

    /// Messages may have been committed without reaching `committed` (the engine lost
    /// its subscription for a while): live connections must catch up from their
    /// mailboxes.
    fn resync(&self) {}
}

/// The mailbox contract. Every engine:
/// - assigns each mailbox's seqs from 1, increasing by 1 per stored message, never reused
///   (not after retention empties a mailbox, not after a restart);
/// - is durable on return: what `append` returned `Ok` for is read back after a crash.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Commit `msgs` and return after the commit is durable (see `store.sync`): `Ok` only
    /// when every message is in its mailbox. All or none, except in a Redis Cluster, where
    /// each mailbox commits its part whole and an `Err` may leave some mailboxes with
    /// theirs; a retry with the same dedupe keys completes it (ARCHITECTURE.md, "Commits
    /// in a Redis Cluster"). Messages for one mailbox get seqs in slice order. A message
    /// whose `dedupe_key` its mailbox already holds (within `store.dedupe_window`) is not
    /// stored: its [`Appended`] repeats the original's seq and id with `duplicate: true`;
    /// a caller treats a send as a duplicate only when all its copies are.
    /// Stored messages go to the [`Fanout`] in commit order per mailbox (across mailboxes
    /// too, but for a cluster's): before this returns with the embedded engine, shortly
    /// after (through Redis pub/sub) with Redis.
    async fn append(&self, msgs: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError>;

    /// Up to `limit` messages of `user` with seq > `after`, oldest first, and no more than
    /// fit in `max_bytes` of frames (`as_stored().len()` summed) — but always the first one
    /// when there is one, however large, so that a reader paging through still progresses.
    async fn read_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Up to `limit` messages of `user` with seq < `before` (all when `None`), newest
    /// first, only those with `contact` when given.
    async fn history(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// The highest seq ever assigned in `user`'s mailbox (0 if none), whether or not
    /// retention has removed it since.
    async fn last_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// The highest seq that reached a live connection of `user` (0 if none did): a
    /// connection that gives no `since` starts after it.
    async fn delivered(&self, user: &str) -> Result<u64, StoreError>;

    /// Raise `user`'s delivered mark to `seq` (never lowers it), returning once it is
    /// committed. Callers report it now and then, not per message: after a crash the mark
    /// may be behind, so a message is delivered twice rather than never.
    async fn set_delivered(&self, user: &str, seq: u64) -> Result<(), StoreError>;

    /// Apply retention now (`store.retention_max_messages`, `retention_max_age`) and
    /// forget dedupe keys older than `store.dedupe_window`; returns how many messages
    /// this call removed (an engine may hold the count limit on every append already).
    /// The server calls it every minute.
    async fn trim(&self) -> Result<u64, StoreError>;

    /// Take the lease `name` for `ttl` unless a process (this one included) holds it:
    /// work over every user (retention) runs on one node at a time, once per period. A
    /// store only one process opens always grants it.
    async fn lease(&self, _name: &str, _ttl: std::time::Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// This node wants `user`'s commits live (a connection of `user` is starting here):
    /// an engine with a broker listens for them, from before this returns until the last
    /// [`Watch`] of `user` is dropped. Never fails: while the broker is out of reach the
    /// interest is kept and taken up when it is back (connections then catch up from the
    /// mailboxes, [`Fanout::resync`]). An engine without a broker needs nothing.
    async fn watch(&self, _user: &str) -> Watch {
        Watch::none()
    }

    /// Erase `contact` (docs/operations.md, "Erasure"): remove every message whose other
    /// party is `contact`, in every mailbox, and every message of `contact`'s own mailbox,
    /// with their dedupe keys. Nothing is fanned out. Seqs are not reused: each mailbox's
    /// highest seq stays its highest, so a reader with `since` sees a gap, as after
    /// retention. Idempotent: a second call removes nothing and returns
    /// `Erased::default()`. Messages committed while it runs may stay.
    async fn erase(&self, contact: &str) -> Result<Erased, StoreError>;

    /// Ok when the store can take writes (for `/readyz`).
    async fn ready(&self) -> Result<(), StoreError>;

    /// Finish pending commits and stop. Later calls fail with [`StoreError::Closed`].
    async fn close(&self);
}

pub type DynStore = Arc<dyn Store>;

/// A node's interest in one user's live commits ([`Store::watch`]); given up when dropped.
#[must_use = "the interest ends when this is dropped"]
pub struct Watch(#[allow(dead_code)] Option<Box<dyn std::any::Any + Send + Sync>>);

impl Watch {
    /// Nothing to give up.
    pub fn none() -> Watch {
        Watch(None)
    }

    /// Held by `guard`, whose drop gives it up.
    pub fn held(guard: impl Send + Sync + 'static) -> Watch {
        Watch(Some(Box::new(guard)))
    }
}

impl From<crate::redis_conn::ConnError> for StoreError {
    fn from(e: crate::redis_conn::ConnError) -> Self {
        match e {
            crate::redis_conn::ConnError::Redis(r) => Unavailable::Redis(r).into(),
            other => Unavailable::Failed(other.to_string()).into(),
        }
    }
}

//! The embedded engine: SQLite in WAL mode, one writer thread doing group commit.
//!
//! Every append goes through one channel to one thread. The thread takes whatever has
//! queued while the previous commit ran (up to `store.max_batch` messages), writes it in
//! one transaction and commits once — so one fsync (in `sync = "full"`) covers many
//! requests, and seqs are allocated without locks because only this thread allocates
//! them. Reads use their own connections: WAL lets them run beside the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use imgate_protocol::EncodedMessage;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, Fanout, NewMessage, Store, StoreError, Stored};
use crate::config::{StoreConfig, Sync};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    contact TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    frame TEXT NOT NULL,
    PRIMARY KEY (user, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_contact ON messages (user, contact, seq);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (created_at);
CREATE TABLE IF NOT EXISTS mailboxes (
    user TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedupe (
    user TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_by_age ON dedupe (created_at);
";

/// How many idle read connections to keep.
const READERS_KEPT: usize = 8;
/// Jobs waiting for the writer before senders wait too: backpressure, not a buffer.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

enum Job {
    Append(Vec<NewMessage>, Reply),
    Delivered(String, u64, oneshot::Sender<bool>),
    Trim(oneshot::Sender<Result<u64, StoreError>>),
    Ping(oneshot::Sender<bool>),
    Close(oneshot::Sender<()>),
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Readers>,
    closed: AtomicBool,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Open (creating if needed) `dir/imgate.sqlite3` and start the writer thread.
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Arc<SqliteStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("imgate.sqlite3");
        let conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
        let sync = match config.sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; {SCHEMA}"
        ))
        .map_err(|e| unavailable(&path, e))?;
        // Every mailbox is a candidate for the first retention pass: one that was over its
        // count before a restart and gets nothing new must still be trimmed.
        let touched = conn
            .prepare("SELECT user, last_seq FROM mailboxes WHERE last_seq > ?1")
            .and_then(|mut s| {
                s.query_map([config.retention_max_messages as i64], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<rusqlite::Result<HashMap<String, u64>>>()
            })
            .map_err(|e| unavailable(&path, e))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            conn,
            fanout,
            last_seq: HashMap::new(),
            touched,
            max_batch: config.max_batch,
            max_messages: config.retention_max_messages,
            max_age: config.retention_max_age,
            dedupe_window: config.dedupe_window,
        };
        std::thread::Builder::new()
            .name("imgate-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(Arc::new(SqliteStore {
            jobs: tx,
            readers: Arc::new(Readers { path, idle: Mutex::new(Vec::new()) }),
            closed: AtomicBool::new(false),
        }))
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match readers.idle.lock().pop() {
                Some(c) => c,
                None => Connection::open_with_flags(
                    &readers.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|_| c))
                .map_err(|e| unavailable(&readers.path, e))?,
            };
            let out = f(&conn).map_err(|e| unavailable(&readers.path, e));
            let mut idle = readers.idle.lock();
            if idle.len() < READERS_KEPT {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store reader failed: {e}")))?
    }
}

fn unavailable(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

fn stored_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Stored>> {
    stmt.query_map(params, |r| {
        Ok(Stored { seq: r.get::<_, i64>(0)? as u64, frame: EncodedMessage::from_stored(r.get(1)?) })
    })?
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, msgs: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Append(msgs, tx)).await?;
        // The writer drops the reply only when the commit failed (and logged why).
        rx.await.map_err(|_| StoreError::Unavailable("the commit failed; nothing was stored".into()))?
    }

    async fn read_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            let mut s = c.prepare_cached(
                "SELECT seq, frame FROM messages WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            stored_rows(&mut s, params![user, after as i64, limit as i64])
        })
        .await
    }

    async fn history(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let user = user.to_owned();
        let contact = contact.map(str::to_owned);
        let before = before.map(|b| b.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX);
        self.read(move |c| match contact {
            Some(contact) => {
                let mut s = c.prepare_cached(
                    "SELECT seq, frame FROM messages WHERE user = ?1 AND contact = ?2 AND seq < ?3 \
                     ORDER BY seq DESC LIMIT ?4",
                )?;
                stored_rows(&mut s, params![user, contact, before, limit as i64])
            }
            None => {
                let mut s = c.prepare_cached(
                    "SELECT seq, frame FROM messages WHERE user = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )?;
                stored_rows(&mut s, params![user, before, limit as i64])
            }
        })
        .await
    }

    async fn delivered(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT delivered FROM mailboxes WHERE user = ?1")?
                .query_row([user], |r| r.get::<_, i64>(0))
                .optional()
                .map(|d| d.unwrap_or(0) as u64)
        })
        .await
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT last_seq FROM mailboxes WHERE user = ?1")?
                .query_row([user], |r| r.get::<_, i64>(0))
                .optional()
                .map(|d| d.unwrap_or(0) as u64)
        })
        .await
    }

    async fn set_delivered(&self, user: &str, seq: u64) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Delivered(user.to_owned(), seq, tx)).await?;
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(StoreError::Unavailable("the commit failed".into())),
        }
    }

    async fn trim(&self) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Trim(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Ping(tx)).await?;
        match rx.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Unavailable("the last commit failed".into())),
            Err(_) => Err(StoreError::Closed),
        }
    }

    async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    conn: Connection,
    fanout: Arc<dyn Fanout>,
    /// Each mailbox's last seq, loaded on first use; only this thread allocates seqs.
    last_seq: HashMap<String, u64>,
    /// Mailboxes appended to since the last retention pass.
    touched: HashMap<String, u64>,
    max_batch: usize,
    max_messages: u64,
    max_age: Duration,
    dedupe_window: Duration,
}

/// A committed append, waiting to be fanned out and answered.
struct Done {
    reply: Reply,
    results: Vec<Appended>,
    /// Indices of `msgs` that were stored (not duplicates), with their seqs.
    stored: Vec<(usize, u64)>,
    msgs: Vec<NewMessage>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut healthy = true;
        while let Some(first) = rx.blocking_recv() {
            let mut appends: Vec<(Vec<NewMessage>, Reply)> = Vec::new();
            let mut delivered: HashMap<String, u64> = HashMap::new();
            let mut pings = Vec::new();
            let mut marks = Vec::new();
            let mut close = None;
            let mut trim = None;
            let mut count = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Append(m, r) => {
                        count += m.len();
                        appends.push((m, r));
                    }
                    Job::Delivered(u, s, done) => {
                        let e = delivered.entry(u).or_default();
                        *e = (*e).max(s);
                        marks.push(done);
                    }
                    Job::Trim(t) => trim = Some(t),
                    Job::Ping(p) => pings.push(p),
                    Job::Close(c) => {
                        close = Some(c);
                        break;
                    }
                }
                if count < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() || !delivered.is_empty() {
                healthy = self.commit(appends, delivered);
            }
            if let Some(t) = trim {
                let _ = t.send(self.trim().map_err(|e| unavailable(Path::new("retention"), e)));
            }
            for p in pings.into_iter().chain(marks) {
                let _ = p.send(healthy);
            }
            if let Some(c) = close {
                // Answer anything that queued behind the close.
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    if let Job::Append(_, r) = job {
                        let _ = r.send(Err(StoreError::Closed));
                    }
                }
                let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                let _ = c.send(());
                return;
            }
        }
    }

    /// One transaction for everything queued. Returns whether it committed.
    fn commit(&mut self, appends: Vec<(Vec<NewMessage>, Reply)>, delivered: HashMap<String, u64>) -> bool {
        let now = unix_now();
        let mut allocated: HashMap<String, u64> = HashMap::new();
        let outcome = (|| -> rusqlite::Result<Vec<Done>> {
            let tx = self.conn.transaction()?;
            let mut done = Vec::with_capacity(appends.len());
            {
                let mut find_dup = tx.prepare_cached(
                    "SELECT seq, id FROM dedupe WHERE user = ?1 AND key = ?2 AND created_at >= ?3",
                )?;
                let mut last = tx.prepare_cached("SELECT last_seq FROM mailboxes WHERE user = ?1")?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (user, seq, contact, created_at, frame) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let mut remember = tx.prepare_cached(
                    "INSERT OR REPLACE INTO dedupe (user, key, seq, id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let dedupe_since = now - self.dedupe_window.as_secs() as i64;
                for (msgs, reply) in appends {
                    let mut results = Vec::with_capacity(msgs.len());
                    let mut stored = Vec::with_capacity(msgs.len());
                    for (i, m) in msgs.iter().enumerate() {
                        if let Some(key) = &m.dedupe_key {
                            let dup = find_dup
                                .query_row(params![m.user, key, dedupe_since], |r| {
                                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                                })
                                .optional()?;
                            if let Some((seq, id)) = dup {
                                results.push(Appended { seq, id, duplicate: true });
                                continue;
                            }
                        }
                        let seq = match allocated.get(&m.user).or_else(|| self.last_seq.get(&m.user)) {
                            Some(s) => s + 1,
                            None => {
                                let s: Option<i64> = last.query_row([&m.user], |r| r.get(0)).optional()?;
                                s.unwrap_or(0) as u64 + 1
                            }
                        };
                        allocated.insert(m.user.clone(), seq);
                        insert.execute(params![m.user, seq as i64, m.contact, now, m.frame.as_stored()])?;
                        if let Some(key) = &m.dedupe_key {
                            remember.execute(params![m.user, key, seq as i64, m.id, now])?;
                        }
                        results.push(Appended { seq, id: m.id.clone(), duplicate: false });
                        stored.push((i, seq));
                    }
                    done.push(Done { reply, results, stored, msgs });
                }
                let mut set_last = tx.prepare_cached(
                    "INSERT INTO mailboxes (user, last_seq) VALUES (?1, ?2) \
                     ON CONFLICT (user) DO UPDATE SET last_seq = excluded.last_seq",
                )?;
                for (user, seq) in &allocated {
                    set_last.execute(params![user, *seq as i64])?;
                }
                let mut set_delivered = tx.prepare_cached(
                    "INSERT INTO mailboxes (user, delivered) VALUES (?1, ?2) \
                     ON CONFLICT (user) DO UPDATE SET delivered = max(delivered, excluded.delivered)",
                )?;
                for (user, seq) in &delivered {
                    set_delivered.execute(params![user, *seq as i64])?;
                }
            }
            tx.commit()?;
            Ok(done)
        })();
        match outcome {
            Ok(done) => {
                for (user, seq) in allocated {
                    self.touched.insert(user.clone(), seq);
                    self.last_seq.insert(user, seq);
                }
                for d in done {
                    for (i, seq) in &d.stored {
                        let m = &d.msgs[*i];
                        self.fanout.committed(&m.user, *seq, &m.frame);
                    }
                    let _ = d.reply.send(Ok(d.results));
                }
                true
            }
            Err(e) => {
                // The transaction rolled back when it was dropped; the replies were dropped
                // with it, so every waiting request sees the store as unavailable.
                tracing::error!(error = %e, "commit failed; the requests in it were refused");
                false
            }
        }
    }

    /// Retention: by count for the mailboxes appended to since the last pass, by age for
    /// all. Returns how many messages went.
    fn trim(&mut self) -> rusqlite::Result<u64> {
        let now = unix_now();
        let tx = self.conn.transaction()?;
        let mut removed = 0;
        {
            let mut by_count = tx.prepare_cached("DELETE FROM messages WHERE user = ?1 AND seq <= ?2")?;
            for (user, last) in &self.touched {
                if *last > self.max_messages {
                    removed += by_count.execute(params![user, (last - self.max_messages) as i64])?;
                }
            }
        }
        removed +=
            tx.execute("DELETE FROM messages WHERE created_at < ?1", [now - self.max_age.as_secs() as i64])?;
        tx.execute("DELETE FROM dedupe WHERE created_at < ?1", [now - self.dedupe_window.as_secs() as i64])?;
        tx.commit()?;
        self.touched.clear();
        Ok(removed as u64)
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

//! The embedded engine: SQLite in WAL mode as an append-only journal, one writer thread
//! doing group commit, and an in-memory [`index`] of where each mailbox's messages are.
//!
//! Every append goes through one channel to one thread. The thread takes whatever has
//! queued while the previous commit ran (up to `store.max_batch` messages), appends it to
//! the journal in one transaction and commits once — one WAL write, and in
//! `sync = "full"` one fsync, for many requests; seqs need no lock because only this
//! thread allocates them. The journal is in commit order, so a commit dirties one or two
//! pages however many mailboxes it touches (a table clustered by mailbox dirtied a page
//! per mailbox and cost three times as much per message). Reads find rows through the
//! index and fetch them on their own connections: WAL lets them run beside the writer.

mod index;

use std::collections::{HashMap, HashSet, VecDeque};
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
use index::Index;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    seq INTEGER NOT NULL,
    contact TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    dedupe TEXT,
    msg_id TEXT NOT NULL,
    frame TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mailboxes (
    user TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

/// Reads running at once, each on its own connection, kept for reuse. More would only
/// queue on two cores — and in a reconnect storm, open thousands of connections.
const READERS: usize = 4;
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
    index: Arc<Index>,
    readers: Arc<Readers>,
    closed: AtomicBool,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

impl SqliteStore {
    /// Open (creating if needed) `dir/imgate.sqlite3`, rebuild the index from the
    /// journal, and start the writer thread.
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Arc<SqliteStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("imgate.sqlite3");
        let conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
        // WAL with synchronous=NORMAL writes every commit to the OS before it returns (a
        // crash of the process loses nothing) and fsyncs at checkpoints only, which keeps
        // the database whole through power loss (the last commits may be lost). FULL adds
        // an fsync per commit: nothing acknowledged is lost even then.
        let sync = match config.sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        };
        // Checkpoints run on their own thread (below), not inside a commit: copying the
        // WAL back into the database stalled the writer for tens of milliseconds.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000; \
             PRAGMA wal_autocheckpoint = 0; {SCHEMA}"
        ))
        .map_err(|e| unavailable(&path, e))?;
        // The checkpointer does the fsyncs NORMAL promises, off the commit path.
        let checkpointer = Connection::open(&path)
            .and_then(|c| c.execute_batch(&format!("PRAGMA synchronous = {sync};")).map(|_| c))
            .map_err(|e| unavailable(&path, e))?;
        let index = Arc::new(Index::new());
        let dedupe = load(&conn, &index, config.dedupe_window).map_err(|e| unavailable(&path, e))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            conn,
            index: index.clone(),
            fanout,
            dedupe,
            // Every mailbox is a candidate for the first count pass: one that was over its
            // count before a restart and gets nothing new must still be trimmed.
            touched: index.users_below(i64::MAX).into_iter().map(|(u, _)| u).collect(),
            max_batch: config.max_batch,
            max_messages: config.retention_max_messages,
            max_age: config.retention_max_age,
        };
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name("imgate-store".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    writer.run(rx);
                    stop.store(true, Ordering::Release);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store thread: {e}")))?;
        std::thread::Builder::new()
            .name("imgate-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, &stop))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Arc::new(SqliteStore {
            jobs: tx,
            index,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(READERS),
            }),
            closed: AtomicBool::new(false),
        }))
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    /// The frames of `rows` (seq, row), in that order; rows retention removed meanwhile
    /// are skipped.
    /// The frames of `rows`, in order, stopping before `max_bytes` would be passed (the
    /// first one always comes).
    async fn frames(&self, rows: Vec<(u64, i64)>, max_bytes: usize) -> Result<Vec<Stored>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let readers = self.readers.clone();
        let _permit = readers.permits.acquire().await.map_err(|_| StoreError::Closed)?;
        let readers = readers.clone();
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
            let out = (|| {
                let mut get = conn.prepare_cached("SELECT frame FROM journal WHERE id = ?1")?;
                let mut out = Vec::with_capacity(rows.len());
                let mut bytes = 0usize;
                for (seq, row) in rows {
                    if let Some(frame) = get.query_row([row], |r| r.get::<_, String>(0)).optional()? {
                        bytes = bytes.saturating_add(frame.len());
                        if bytes > max_bytes && !out.is_empty() {
                            break;
                        }
                        out.push(Stored { seq, frame: EncodedMessage::from_stored(frame) });
                    }
                }
                Ok(out)
            })()
            .map_err(|e| unavailable(&readers.path, e));
            let mut idle = readers.idle.lock();
            if idle.len() < READERS {
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

/// Rebuild the index from the journal and the marks; the dedupe keys still in their
/// window.
fn load(conn: &Connection, index: &Index, window: Duration) -> rusqlite::Result<Dedupe> {
    let mut marks = conn.prepare("SELECT user, last_seq, delivered FROM mailboxes")?;
    let mut rows = marks.query([])?;
    while let Some(r) = rows.next()? {
        index.load_marks(&r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64);
    }
    let mut dedupe = Dedupe::new(window);
    let since = unix_now() - window.as_secs() as i64;
    let mut journal =
        conn.prepare("SELECT id, user, seq, contact, created_at, dedupe, msg_id FROM journal ORDER BY id")?;
    let mut rows = journal.query([])?;
    while let Some(r) = rows.next()? {
        let (row, user, seq, contact) =
            (r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, String>(3)?);
        index.push(&user, seq, row, &contact);
        let at: i64 = r.get(4)?;
        if let Some(key) = r.get::<_, Option<String>>(5)?
            && at >= since
        {
            dedupe.insert(&user, &key, seq, r.get(6)?, at);
        }
    }
    Ok(dedupe)
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

    async fn read_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let rows = self.index.rows_after(user, after, limit);
        self.frames(rows, max_bytes).await
    }

    async fn history(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let rows = self.index.rows_before(user, contact, before, limit);
        self.frames(rows, usize::MAX).await
    }

    async fn delivered(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.index.delivered(user))
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self.index.last_seq(user))
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

/// Dedupe keys of the last `window`, by mailbox: retries are answered from here.
struct Dedupe {
    window: Duration,
    keys: HashMap<String, (u64, String)>,
    /// Keys in the order they expire.
    order: VecDeque<(i64, String)>,
}

impl Dedupe {
    fn new(window: Duration) -> Dedupe {
        Dedupe { window, keys: HashMap::new(), order: VecDeque::new() }
    }

    fn slot(user: &str, key: &str) -> String {
        let mut s = String::with_capacity(user.len() + key.len() + 1);
        s.push_str(user);
        s.push('\0');
        s.push_str(key);
        s
    }

    fn get(&self, user: &str, key: &str) -> Option<&(u64, String)> {
        self.keys.get(&Dedupe::slot(user, key))
    }

    fn insert(&mut self, user: &str, key: &str, seq: u64, id: String, at: i64) {
        let slot = Dedupe::slot(user, key);
        self.order.push_back((at, slot.clone()));
        self.keys.insert(slot, (seq, id));
    }

    fn expire(&mut self, now: i64) {
        let oldest = now - self.window.as_secs() as i64;
        while self.order.front().is_some_and(|(at, _)| *at < oldest) {
            if let Some((_, slot)) = self.order.pop_front() {
                self.keys.remove(&slot);
            }
        }
    }
}

struct Writer {
    conn: Connection,
    index: Arc<Index>,
    fanout: Arc<dyn Fanout>,
    dedupe: Dedupe,
    /// Mailboxes appended to since the last retention pass.
    touched: HashSet<String>,
    max_batch: usize,
    max_messages: u64,
    max_age: Duration,
}

/// A stored message of a committed batch.
struct Placed {
    job: usize,
    msg: usize,
    seq: u64,
    row: i64,
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
        let mut results: Vec<Vec<Appended>> = Vec::with_capacity(appends.len());
        let mut placed: Vec<Placed> = Vec::new();
        // Seqs and keys of this batch, until it commits.
        let mut allocated: HashMap<&str, u64> = HashMap::new();
        let mut new_keys: HashMap<String, (u64, String)> = HashMap::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO journal (user, seq, contact, created_at, dedupe, msg_id, frame) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for (j, (msgs, _)) in appends.iter().enumerate() {
                    let mut res = Vec::with_capacity(msgs.len());
                    for (i, m) in msgs.iter().enumerate() {
                        if let Some(key) = &m.dedupe_key {
                            let slot = Dedupe::slot(&m.user, key);
                            if let Some((seq, id)) =
                                new_keys.get(&slot).or_else(|| self.dedupe.get(&m.user, key))
                            {
                                res.push(Appended { seq: *seq, id: id.clone(), duplicate: true });
                                continue;
                            }
                        }
                        let seq = allocated
                            .get(m.user.as_str())
                            .copied()
                            .unwrap_or_else(|| self.index.last_seq(&m.user))
                            + 1;
                        allocated.insert(&m.user, seq);
                        insert.execute(params![
                            m.user,
                            seq as i64,
                            m.contact,
                            now,
                            m.dedupe_key,
                            m.id,
                            m.frame.as_stored()
                        ])?;
                        let row = tx.last_insert_rowid();
                        if let Some(key) = &m.dedupe_key {
                            new_keys.insert(Dedupe::slot(&m.user, key), (seq, m.id.clone()));
                        }
                        res.push(Appended { seq, id: m.id.clone(), duplicate: false });
                        placed.push(Placed { job: j, msg: i, seq, row });
                    }
                    results.push(res);
                }
                let mut set_delivered = tx.prepare_cached(
                    "INSERT INTO mailboxes (user, delivered) VALUES (?1, ?2) \
                     ON CONFLICT (user) DO UPDATE SET delivered = max(delivered, excluded.delivered)",
                )?;
                for (user, seq) in &delivered {
                    set_delivered.execute(params![user, *seq as i64])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = outcome {
            // The transaction rolled back; dropping the replies tells every waiting
            // request that nothing was stored.
            tracing::error!(error = %e, "commit failed; the requests in it were refused");
            return false;
        }
        // Committed: make it findable, then announce it, then answer.
        for p in &placed {
            let m = &appends[p.job].0[p.msg];
            self.index.push(&m.user, p.seq, p.row, &m.contact);
        }
        for (user, seq) in delivered {
            self.index.raise_delivered(&user, seq);
        }
        for (slot, (seq, id)) in new_keys {
            self.dedupe.order.push_back((now, slot.clone()));
            self.dedupe.keys.insert(slot, (seq, id));
        }
        for p in &placed {
            let m = &appends[p.job].0[p.msg];
            self.fanout.committed(&m.user, p.seq, &m.frame);
        }
        for user in allocated.into_keys() {
            if !self.touched.contains(user) {
                self.touched.insert(user.to_owned());
            }
        }
        for ((_, reply), res) in appends.into_iter().zip(results) {
            let _ = reply.send(Ok(res));
        }
        true
    }

    /// Retention: by count for the mailboxes appended to since the last pass, by age for
    /// all. A mailbox's last seq is written down before its rows go, so seqs are never
    /// reused. Returns how many messages went.
    fn trim(&mut self) -> rusqlite::Result<u64> {
        let now = unix_now();
        self.dedupe.expire(now);
        let by_count: Vec<(String, Vec<i64>)> = self
            .touched
            .iter()
            .map(|u| (u.clone(), self.index.over_count(u, self.max_messages)))
            .filter(|(_, rows)| !rows.is_empty())
            .collect();
        let oldest = now - self.max_age.as_secs() as i64;
        let cutoff: Option<i64> = self
            .conn
            .query_row("SELECT id FROM journal WHERE created_at >= ?1 ORDER BY id LIMIT 1", [oldest], |r| {
                r.get(0)
            })
            .optional()?;
        let cutoff = match cutoff {
            Some(c) => c,
            None => self.conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM journal", [], |r| r.get(0))?,
        };
        let aging = self.index.users_below(cutoff);
        let tx = self.conn.transaction()?;
        let mut removed = 0u64;
        {
            let mut keep_last = tx.prepare_cached(
                "INSERT INTO mailboxes (user, last_seq) VALUES (?1, ?2) \
                 ON CONFLICT (user) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM journal WHERE id = ?1")?;
            for (user, rows) in &by_count {
                keep_last.execute(params![user, self.index.last_seq(user) as i64])?;
                for row in rows {
                    removed += delete.execute([row])? as u64;
                }
            }
            for (user, last) in &aging {
                keep_last.execute(params![user, *last as i64])?;
            }
            removed += tx.execute("DELETE FROM journal WHERE id < ?1", [cutoff])? as u64;
        }
        tx.commit()?;
        for (user, rows) in &by_count {
            self.index.drop_oldest(user, rows.len());
        }
        self.index.drop_below(cutoff);
        self.touched.clear();
        Ok(removed)
    }
}

/// How often the WAL is copied back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copy the WAL into the database now and then, beside the writer (PASSIVE: it never
/// blocks a commit), until the writer stops.
fn checkpoints(conn: Connection, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed; will retry");
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

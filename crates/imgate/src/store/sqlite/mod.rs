//! The embedded engine: SQLite in WAL mode as an append-only journal, one writer thread
//! doing group commit, and an in-memory [`index`] of recently used mailboxes' marks.
//!
//! Every append goes through one channel to one thread. The thread takes whatever has
//! queued while the previous commit ran (up to `store.max_batch` messages), appends it to
//! the journal in one transaction and commits once — one WAL write, and in
//! `sync = "full"` one fsync, for many requests; seqs need no lock because only this
//! thread allocates them. The journal is in commit order; a unique index on
//! `(user, seq)` finds a mailbox's messages and refuses a seq given twice (a second
//! process on the same files, which the data dir's lock should already have stopped).
//! Reads run on their own connections: WAL lets them run beside the writer.
//!
//! Memory does not grow with the number of users: the index holds a bounded number of
//! mailboxes, dedupe keys are looked up in the journal (so they go when retention removes
//! their message, or when their window ends), and reads go to the database.

mod index;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use imgate_protocol::EncodedMessage;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, Erased, Fanout, NewMessage, Store, StoreError, Stored, Unavailable};
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
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v
) WITHOUT ROWID;
";

/// After [`repair_duplicates`]: a seq is given once per mailbox, whoever writes.
const INDEXES: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS journal_mailbox ON journal (user, seq);
CREATE INDEX IF NOT EXISTS journal_dedupe ON journal (user, dedupe) WHERE dedupe IS NOT NULL;
";

/// Reads running at once, each on its own connection, kept for reuse. More would only
/// queue on two cores — and in a reconnect storm, open thousands of connections.
const READERS: usize = 4;
/// Jobs waiting for the writer before senders wait too: backpressure, not a buffer.
const QUEUE: usize = 4096;
/// The WAL is cut back to this size when it restarts, and a WAL grown past it (readers
/// held old snapshots through a burst) is checkpointed with TRUNCATE: disk use returns
/// after a burst instead of staying at its high-water mark.
pub const WAL_LIMIT: u64 = 64 << 20;
/// Mailboxes remembered between retention passes; beyond it the next pass looks at all.
const TOUCHED_MAX: usize = 65_536;
/// Journal rows one step of a full retention pass reads, each step its own short read
/// transaction so that the pass never pins the WAL.
const FULL_PASS_STEP: usize = 20_000;
/// A repeated failure is logged once per this, with how many were not.
const LOG_EVERY: Duration = Duration::from_secs(60);

type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

enum Job {
    Append(Vec<NewMessage>, Reply),
    Delivered(String, u64, oneshot::Sender<bool>),
    /// The mailboxes to count for retention; the writer starts a new set.
    Touched(oneshot::Sender<Touched>),
    Trim(Vec<i64>, oneshot::Sender<Result<u64, StoreError>>),
    /// Erasure: rows a reader found (up to `scanned_to`), and any of `contact`'s since.
    Erase {
        contact: String,
        rows: Vec<i64>,
        scanned_to: i64,
        reply: oneshot::Sender<Result<Erased, StoreError>>,
    },
    Ping(oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// Mailboxes appended to since the last retention pass.
enum Touched {
    Some(HashSet<String>),
    /// Too many to remember, or the first pass since the start: look at every mailbox.
    All,
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    index: Arc<Index>,
    readers: Arc<Readers>,
    max_messages: u64,
    closed: AtomicBool,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

/// Logs a failure that may repeat many times a second at most once per [`LOG_EVERY`],
/// saying how many were not logged.
pub struct Throttle {
    last: Option<Instant>,
    quiet: u64,
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle { last: None, quiet: 0 }
    }

    /// `Some(failures not logged since the last one logged)` when this one is to be logged.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.duration_since(at) < LOG_EVERY => {
                self.quiet += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.quiet))
            }
        }
    }

    /// A success: the next failure is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.quiet = 0;
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl SqliteStore {
    /// Open (creating if needed) `dir/imgate.sqlite3` and start the writer thread.
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Arc<SqliteStore>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Unavailable::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join("imgate.sqlite3");
        let mut conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
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
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {WAL_LIMIT}; {SCHEMA}"
        ))
        .map_err(|e| unavailable(&path, e))?;
        repair_duplicates(&mut conn).map_err(|e| unavailable(&path, e))?;
        conn.execute_batch(INDEXES).map_err(|e| unavailable(&path, e))?;
        // The checkpointer does the fsyncs NORMAL promises, off the commit path. A short
        // busy timeout: a TRUNCATE checkpoint holds new commits back while it waits for
        // readers, so it gives up soon and tries again later.
        let checkpointer = Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(&format!(
                    "PRAGMA synchronous = {sync}; PRAGMA journal_size_limit = {WAL_LIMIT}; \
                     PRAGMA busy_timeout = 100;"
                ))
                .map(|_| c)
            })
            .map_err(|e| unavailable(&path, e))?;
        let index = Arc::new(Index::new(config.index_max_mailboxes));
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            conn,
            index: index.clone(),
            fanout,
            // A mailbox that was over its count before a restart and gets nothing new
            // must still be trimmed.
            touched: Touched::All,
            max_batch: config.max_batch,
            max_age: config.retention_max_age,
            dedupe_window: config.dedupe_window,
            failures: Throttle::new(),
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
            .map_err(|e| Unavailable::io("cannot start the store thread", e))?;
        let wal = dir.join("imgate.sqlite3-wal");
        std::thread::Builder::new()
            .name("imgate-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, &wal, &stop))
            .map_err(|e| Unavailable::io("cannot start the checkpoint thread", e))?;
        Ok(Arc::new(SqliteStore {
            jobs: tx,
            index,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(READERS),
            }),
            max_messages: config.retention_max_messages,
            closed: AtomicBool::new(false),
        }))
    }

    /// How many mailboxes the in-memory index holds now (at most
    /// `store.index_max_mailboxes`).
    pub fn cached_mailboxes(&self) -> usize {
        self.index.len()
    }

    async fn submit(&self, job: Job) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)
    }

    /// Run `f` on a pooled read-only connection, off the runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
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
            let out = f(&conn).map_err(|e| unavailable(&readers.path, e));
            let mut idle = readers.idle.lock();
            if idle.len() < READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| Unavailable::Failed(format!("store reader failed: {e}")))?
    }

    /// Which mailboxes' count to check, in a form `over_count` can walk.
    async fn take_touched(&self) -> Result<Touched, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Touched(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)
    }
}

fn unavailable(path: &Path, e: rusqlite::Error) -> StoreError {
    Unavailable::sqlite(path.display().to_string(), e).into()
}

fn stored(rows: Vec<(u64, String)>) -> Vec<Stored> {
    rows.into_iter().map(|(seq, frame)| Stored { seq, frame: EncodedMessage::from_stored(frame) }).collect()
}

/// Before the unique index exists (a journal written by an older imgate), two processes
/// on one data dir may have given one seq to two messages. Both were acknowledged, so
/// both are kept: every later copy moves to a new seq at the end of its mailbox, and the
/// repair is logged. Nothing is dropped.
fn repair_duplicates(conn: &mut Connection) -> rusqlite::Result<()> {
    let indexed: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'index' AND name = 'journal_mailbox'",
        [],
        |r| r.get(0),
    )?;
    if indexed {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let moved = {
        let mut later = tx.prepare(
            "SELECT j.id, j.user FROM journal j JOIN \
             (SELECT user, seq, min(id) AS first FROM journal GROUP BY user, seq HAVING count(*) > 1) d \
             ON j.user = d.user AND j.seq = d.seq AND j.id > d.first ORDER BY j.id",
        )?;
        let rows: Vec<(i64, String)> =
            later.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut renumber = tx.prepare("UPDATE journal SET seq = ?1 WHERE id = ?2")?;
        for (id, user) in &rows {
            let seq = match next.get(user) {
                Some(s) => s + 1,
                None => disk_marks(&tx, user)?.0 + 1,
            };
            next.insert(user.clone(), seq);
            renumber.execute(params![seq as i64, id])?;
        }
        for (user, seq) in &next {
            tracing::warn!(
                %user,
                last_seq = seq,
                "this mailbox held messages sharing a seq (two processes wrote this data dir); \
                 kept them all, the later copies under new seqs at its end"
            );
        }
        rows.len()
    };
    tx.commit()?;
    if moved > 0 {
        tracing::warn!(messages = moved, "journal repaired: messages moved to new seqs, none dropped");
    }
    Ok(())
}

/// `(last_seq, delivered)` of `user` as the database has them: the highest seq in the
/// journal, or the one written down before retention removed it.
fn disk_marks(conn: &Connection, user: &str) -> rusqlite::Result<(u64, u64)> {
    let top: i64 =
        conn.query_row("SELECT coalesce(max(seq), 0) FROM journal WHERE user = ?1", [user], |r| r.get(0))?;
    let (last, delivered): (i64, i64) = conn
        .query_row("SELECT last_seq, delivered FROM mailboxes WHERE user = ?1", [user], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .unwrap_or((0, 0));
    Ok((top.max(last) as u64, delivered as u64))
}

/// The journal rows over `max` per conversation (mailbox and contact), oldest of each
/// conversation first to go, in the mailboxes of `touched`.
fn over_count(conn: &Connection, touched: Touched, max: u64) -> rusqlite::Result<Vec<i64>> {
    let mut out = Vec::new();
    // Counts of the mailbox being walked, newest first.
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut count = |counts: &mut HashMap<String, u64>, id: i64, contact: String| {
        let n = counts.entry(contact).or_default();
        *n += 1;
        if *n > max {
            out.push(id);
        }
    };
    match touched {
        Touched::Some(users) => {
            let mut rows =
                conn.prepare_cached("SELECT id, contact FROM journal WHERE user = ?1 ORDER BY seq DESC")?;
            for user in users {
                counts.clear();
                let mut q = rows.query([&user])?;
                while let Some(r) = q.next()? {
                    count(&mut counts, r.get(0)?, r.get(1)?);
                }
            }
        }
        Touched::All => {
            // By mailbox, newest first, in steps: each step is its own read transaction.
            let mut step = conn.prepare_cached(
                "SELECT id, user, seq, contact FROM journal WHERE (user, seq) < (?1, ?2) \
                 ORDER BY user DESC, seq DESC LIMIT ?3",
            )?;
            // Above every real key: SQLite sorts any BLOB after any TEXT.
            let mut at: (Option<String>, i64) = (None, i64::MAX);
            loop {
                let mut q = match &at.0 {
                    Some(u) => step.query(params![u, at.1, FULL_PASS_STEP as i64])?,
                    None => step.query(params![
                        rusqlite::types::Value::Blob(Vec::new()),
                        0,
                        FULL_PASS_STEP as i64
                    ])?,
                };
                let mut n = 0;
                while let Some(r) = q.next()? {
                    n += 1;
                    let (id, user, seq, contact): (i64, String, i64, String) =
                        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                    if at.0.as_deref() != Some(user.as_str()) {
                        counts.clear();
                    }
                    at = (Some(user), seq);
                    count(&mut counts, id, contact);
                }
                if n < FULL_PASS_STEP {
                    break;
                }
            }
        }
    }
    Ok(out)
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
        rx.await.map_err(|_| Unavailable::Failed("the commit failed; nothing was stored".into()))?
    }

    async fn read_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        // A caught-up connection asks often; the index answers "nothing new" without a
        // query (what it holds was committed, and nothing newer is unless it says so).
        if limit == 0 || self.index.get(user).is_some_and(|(last, _)| last <= after) {
            return Ok(Vec::new());
        }
        let user = user.to_owned();
        let (after, limit) =
            (i64::try_from(after).unwrap_or(i64::MAX), i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = self
            .read(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT seq, frame FROM journal WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                // Stop before `max_bytes` would be passed; the first frame always comes.
                let mut rows = q.query(params![user, after, limit])?;
                let (mut out, mut bytes) = (Vec::new(), 0usize);
                while let Some(r) = rows.next()? {
                    let frame: String = r.get(1)?;
                    bytes = bytes.saturating_add(frame.len());
                    if bytes > max_bytes && !out.is_empty() {
                        break;
                    }
                    out.push((r.get::<_, i64>(0)? as u64, frame));
                }
                Ok(out)
            })
            .await?;
        Ok(stored(rows))
    }

    async fn history(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let (user, contact) = (user.to_owned(), contact.map(str::to_owned));
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT seq, frame FROM journal WHERE user = ?1 AND seq < ?2 \
                     AND (?3 IS NULL OR contact = ?3) ORDER BY seq DESC LIMIT ?4",
                )?;
                q.query_map(params![user, before, contact, limit], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(stored(rows))
    }

    async fn delivered(&self, user: &str) -> Result<u64, StoreError> {
        if let Some((_, d)) = self.index.get(user) {
            return Ok(d);
        }
        let user = user.to_owned();
        Ok(self.read(move |c| disk_marks(c, &user)).await?.1)
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        if let Some((s, _)) = self.index.get(user) {
            return Ok(s);
        }
        let user = user.to_owned();
        Ok(self.read(move |c| disk_marks(c, &user)).await?.0)
    }

    async fn set_delivered(&self, user: &str, seq: u64) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Delivered(user.to_owned(), seq, tx)).await?;
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(Unavailable::Failed("the commit failed".into()).into()),
        }
    }

    async fn trim(&self) -> Result<u64, StoreError> {
        // Counting reads whole mailboxes, so it runs on a reader, beside the writer; a
        // row it picks stays beyond the count, since later appends only add newer ones.
        let touched = self.take_touched().await?;
        let max = self.max_messages;
        let over = match self.read(move |c| over_count(c, touched, max)).await {
            Ok(rows) => rows,
            Err(e) => {
                // Those mailboxes are not remembered any more: look at all next time.
                let _ = self.jobs.send(Job::Touched(oneshot::channel().0)).await;
                return Err(e);
            }
        };
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Trim(over, tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn erase(&self, contact: &str) -> Result<Erased, StoreError> {
        // Found on a reader, beside the writer: the journal has no index by contact (one
        // would cost every append), and the scan must not hold up commits. The writer then
        // removes those rows, and any committed after the scan.
        let c = contact.to_owned();
        let (rows, scanned_to) = self
            .read(move |conn| {
                let top: i64 =
                    conn.query_row("SELECT coalesce(max(id), 0) FROM journal", [], |r| r.get(0))?;
                let mut q =
                    conn.prepare("SELECT id FROM journal WHERE id <= ?2 AND (contact = ?1 OR user = ?1)")?;
                let ids =
                    q.query_map(params![c, top], |r| r.get::<_, i64>(0))?.collect::<rusqlite::Result<_>>()?;
                Ok((ids, top))
            })
            .await?;
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Erase { contact: contact.to_owned(), rows, scanned_to, reply: tx }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Job::Ping(tx)).await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Unavailable::Failed(format!("cannot write: {e}")).into()),
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
    index: Arc<Index>,
    fanout: Arc<dyn Fanout>,
    touched: Touched,
    max_batch: usize,
    max_age: Duration,
    dedupe_window: Duration,
    /// Failed commits, logged at most once a minute when they repeat.
    failures: Throttle,
}

/// A stored message of a committed batch.
struct Placed {
    job: usize,
    msg: usize,
    seq: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends: Vec<(Vec<NewMessage>, Reply)> = Vec::new();
            let mut delivered: HashMap<String, u64> = HashMap::new();
            let mut pings = Vec::new();
            let mut marks = Vec::new();
            let mut close = None;
            let mut trims = Vec::new();
            let mut erasures = Vec::new();
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
                    Job::Touched(t) => {
                        let taken = std::mem::replace(&mut self.touched, Touched::Some(HashSet::new()));
                        if let Err(back) = t.send(taken) {
                            // Nobody took it (a failed pass): look at everything next time.
                            drop(back);
                            self.touched = Touched::All;
                        }
                    }
                    Job::Trim(rows, t) => trims.push((rows, t)),
                    Job::Erase { contact, rows, scanned_to, reply } => {
                        erasures.push((contact, rows, scanned_to, reply))
                    }
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
            let mut healthy = true;
            if !appends.is_empty() || !delivered.is_empty() {
                healthy = self.commit(appends, delivered);
            }
            for (rows, t) in trims {
                let _ = t.send(self.trim(&rows).map_err(|e| unavailable(Path::new("retention"), e)));
            }
            for (contact, rows, scanned_to, reply) in erasures {
                let _ = reply.send(
                    self.erase(&contact, &rows, scanned_to).map_err(|e| unavailable(Path::new("erasure"), e)),
                );
            }
            if !pings.is_empty() {
                // Ready means a write reaches the disk now, not that the last one did.
                let probe = self.probe().map_err(|e| e.to_string());
                match &probe {
                    Ok(()) => self.failures.reset(),
                    Err(e) => {
                        if let Some(quiet) = self.failures.check(Instant::now()) {
                            tracing::error!(error = %e, not_logged = quiet, "the store cannot write; not ready");
                        }
                    }
                }
                for p in pings {
                    let _ = p.send(probe.clone());
                }
            }
            for m in marks {
                let _ = m.send(healthy);
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

    /// A committed write of one small row: what a send needs, without a message.
    fn probe(&mut self) -> rusqlite::Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (k, v) VALUES ('probe', ?1) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                [unix_now()],
            )
            .map(|_| ())
    }

    /// The marks of `user`: held, or read in `tx` (and then remembered in `loaded`).
    fn marks(
        index: &Index,
        tx: &Transaction<'_>,
        loaded: &mut HashMap<String, (u64, u64)>,
        user: &str,
    ) -> rusqlite::Result<(u64, u64)> {
        if let Some(m) = index.get(user).or_else(|| loaded.get(user).copied()) {
            return Ok(m);
        }
        let m = disk_marks(tx, user)?;
        loaded.insert(user.to_owned(), m);
        Ok(m)
    }

    /// One transaction for everything queued. Returns whether it committed.
    fn commit(&mut self, appends: Vec<(Vec<NewMessage>, Reply)>, delivered: HashMap<String, u64>) -> bool {
        let started = Instant::now();
        let now = unix_now();
        let since = now.saturating_sub(self.dedupe_window.as_secs() as i64);
        let mut results: Vec<Vec<Appended>> = Vec::with_capacity(appends.len());
        let mut placed: Vec<Placed> = Vec::new();
        // Seqs and keys of this batch, until it commits.
        let mut allocated: HashMap<&str, u64> = HashMap::new();
        let mut loaded: HashMap<String, (u64, u64)> = HashMap::new();
        let mut new_keys: HashMap<(&str, &str), (u64, String)> = HashMap::new();
        let index = self.index.clone();
        let outcome = (|| -> rusqlite::Result<()> {
            // IMMEDIATE: the commit reads (dedupe keys, seqs) before it writes, and a
            // deferred transaction upgraded after a checkpoint reset the WAL fails at once
            // with "database is locked" instead of waiting its busy timeout.
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO journal (user, seq, contact, created_at, dedupe, msg_id, frame) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                // The key's newest message still in the journal and within the window.
                let mut seen = tx.prepare_cached(
                    "SELECT seq, msg_id FROM journal WHERE user = ?1 AND dedupe = ?2 AND created_at >= ?3 \
                     ORDER BY id DESC LIMIT 1",
                )?;
                for (j, (msgs, _)) in appends.iter().enumerate() {
                    let mut res = Vec::with_capacity(msgs.len());
                    for (i, m) in msgs.iter().enumerate() {
                        if let Some(key) = &m.dedupe_key {
                            let before = match new_keys.get(&(m.user.as_str(), key.as_str())) {
                                Some(hit) => Some(hit.clone()),
                                None => seen
                                    .query_row(params![m.user, key, since], |r| {
                                        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
                                    })
                                    .optional()?,
                            };
                            if let Some((seq, id)) = before {
                                res.push(Appended { seq, id, duplicate: true });
                                continue;
                            }
                        }
                        let seq = match allocated.get(m.user.as_str()) {
                            Some(s) => *s,
                            None => Writer::marks(&index, &tx, &mut loaded, &m.user)?.0,
                        } + 1;
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
                        if let Some(key) = &m.dedupe_key {
                            new_keys.insert((&m.user, key), (seq, m.id.clone()));
                        }
                        res.push(Appended { seq, id: m.id.clone(), duplicate: false });
                        placed.push(Placed { job: j, msg: i, seq });
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
            // request that nothing was stored. What the index holds for these mailboxes
            // may be what made it fail (a seq another process took): read it again.
            for user in allocated.keys() {
                self.index.forget(user);
            }
            if let Some(quiet) = self.failures.check(Instant::now()) {
                tracing::error!(error = %e, not_logged = quiet, "commit failed; the requests in it were refused");
            }
            metrics::counter!("imgate_store_commits_total", "engine" => "sqlite", "outcome" => "failed")
                .increment(1);
            return false;
        }
        self.failures.reset();
        metrics::histogram!("imgate_store_commit_duration_seconds", "engine" => "sqlite")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("imgate_store_commits_total", "engine" => "sqlite", "outcome" => "committed")
            .increment(1);
        // Committed: make it findable, then announce it, then answer.
        for (user, seq) in &allocated {
            let delivered = self.index.get(user).or_else(|| loaded.get(*user).copied()).map_or(0, |m| m.1);
            self.index.put(user, *seq, delivered);
        }
        for (user, seq) in &delivered {
            self.index.raise_delivered(user, *seq);
        }
        for p in &placed {
            let m = &appends[p.job].0[p.msg];
            self.fanout.committed(&m.user, p.seq, &m.frame);
        }
        if let Touched::Some(set) = &mut self.touched {
            for user in allocated.keys() {
                if !set.contains(*user) {
                    set.insert((*user).to_owned());
                }
            }
            if set.len() > TOUCHED_MAX {
                self.touched = Touched::All;
            }
        }
        drop(new_keys);
        drop(allocated);
        for ((_, reply), res) in appends.into_iter().zip(results) {
            let _ = reply.send(Ok(res));
        }
        true
    }

    /// Erasure: the journal rows `rows` (found by a reader up to row `scanned_to`) and
    /// any with `contact` committed since, in one transaction. Each mailbox's highest seq
    /// is written down first, so that no seq is given twice.
    fn erase(&mut self, contact: &str, rows: &[i64], scanned_to: i64) -> rusqlite::Result<Erased> {
        // Deleted rows would stay readable in the file's freed pages: for this
        // transaction only, SQLite overwrites them with zeros (retention does not pay it).
        self.conn.execute_batch("PRAGMA secure_delete = ON")?;
        let erased = self.erase_rows(contact, rows, scanned_to);
        let off = self.conn.execute_batch("PRAGMA secure_delete = OFF");
        let erased = erased?;
        off?;
        Ok(erased)
    }

    fn erase_rows(&mut self, contact: &str, rows: &[i64], scanned_to: i64) -> rusqlite::Result<Erased> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut erased = Erased::default();
        {
            let mut found: Vec<(i64, String, String)> = Vec::with_capacity(rows.len());
            let mut by_id = tx.prepare_cached("SELECT user, frame FROM journal WHERE id = ?1")?;
            for id in rows {
                if let Some((user, frame)) =
                    by_id.query_row([id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?
                {
                    found.push((*id, user, frame));
                }
            }
            let mut late = tx.prepare_cached(
                "SELECT id, user, frame FROM journal WHERE id > ?2 AND (contact = ?1 OR user = ?1)",
            )?;
            for r in
                late.query_map(params![contact, scanned_to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            {
                found.push(r?);
            }
            let users: HashSet<&str> = found.iter().map(|(_, u, _)| u.as_str()).collect();
            // (WHERE before ON CONFLICT: SQLite's upsert-from-select.)
            let mut mark = tx.prepare_cached(
                "INSERT INTO mailboxes (user, last_seq) SELECT ?1, coalesce(max(seq), 0) FROM journal \
                 WHERE user = ?1 ON CONFLICT (user) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            )?;
            for user in users {
                mark.execute([user])?;
            }
            let mut delete = tx.prepare_cached("DELETE FROM journal WHERE id = ?1")?;
            for (id, user, frame) in found {
                if delete.execute([id])? > 0 {
                    erased.add(&user, &EncodedMessage::from_stored(frame));
                }
            }
        }
        tx.commit()?;
        Ok(erased)
    }

    /// Retention: `over` (rows beyond the count of their conversation), and by age every
    /// row older than `store.retention_max_age`. A mailbox's last seq is written down
    /// before its rows go, so seqs are never reused. Returns how many messages went.
    fn trim(&mut self, over: &[i64]) -> rusqlite::Result<u64> {
        let oldest = unix_now() - self.max_age.as_secs() as i64;
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
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = 0u64;
        {
            // Count retention keeps each conversation's newest message, so a mailbox's
            // highest seq stays in the journal; age retention may take it, so it is
            // written down first. (WHERE before ON CONFLICT: SQLite's upsert-from-select.)
            tx.execute(
                "INSERT INTO mailboxes (user, last_seq) SELECT user, max(seq) FROM journal WHERE id < ?1 \
                 GROUP BY user ON CONFLICT (user) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                [cutoff],
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM journal WHERE id = ?1")?;
            for row in over {
                if *row >= cutoff {
                    removed += delete.execute([row])? as u64;
                }
            }
            removed += tx.execute("DELETE FROM journal WHERE id < ?1", [cutoff])? as u64;
        }
        tx.commit()?;
        Ok(removed)
    }
}

/// How often the WAL is copied back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Copy the WAL into the database now and then, beside the writer (PASSIVE: it never
/// blocks a commit), until the writer stops. A WAL that grew past [`WAL_LIMIT`] is
/// checkpointed with TRUNCATE, which waits briefly for readers and empties the file.
fn checkpoints(conn: Connection, wal: &Path, stop: &AtomicBool) {
    let mut failures = Throttle::new();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(CHECKPOINT_EVERY);
        let big = std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_LIMIT);
        let mode = if big { "TRUNCATE" } else { "PASSIVE" };
        match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            Ok(()) => failures.reset(),
            Err(e) => {
                if let Some(quiet) = failures.check(Instant::now()) {
                    tracing::warn!(error = %e, not_logged = quiet, "checkpoint failed; will retry");
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_a_minute_with_the_count() {
        let mut t = Throttle::new();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Ten a second for two minutes.
        let logged: Vec<(u64, u64)> =
            (0..=1200).filter_map(|i| t.check(at(i * 100)).map(|quiet| (i * 100, quiet))).collect();
        assert_eq!(logged, [(0, 0), (60_000, 599), (120_000, 599)]);
        t.reset();
        assert_eq!(t.check(at(120_100)), Some(0));
    }
}

//! The embedded engine: conversations and canned replies in `inbox.sqlite3` in the data
//! dir (apart from the mailboxes, whose writer thread it never slows), presence in memory
//! (one node holds every socket).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use serde_json::{Value, json};

use super::model::{Conversation, ListQuery, Page, View};
use super::{Conversations, Edit, InboxError, Presence};
use crate::store::{StoreError, Unavailable};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    appid TEXT NOT NULL,
    contact TEXT NOT NULL,
    data TEXT NOT NULL,
    -- the assignee while open (Conversation::load_of), for open_load
    load_of TEXT,
    -- for the list: Conversation::rank, state, assignee, search
    rank_w INTEGER NOT NULL DEFAULT 1,
    rank_k INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'open',
    assignee TEXT,
    search TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (appid, contact)
);
CREATE INDEX IF NOT EXISTS conversations_rank ON conversations (appid, rank_w, rank_k, contact);
CREATE INDEX IF NOT EXISTS conversations_load ON conversations (appid, load_of) WHERE load_of IS NOT NULL;
CREATE TABLE IF NOT EXISTS canned (appid TEXT PRIMARY KEY, data TEXT NOT NULL);
-- agents who set themselves away: that survives a restart, sockets do not
CREATE TABLE IF NOT EXISTS away (agent TEXT PRIMARY KEY);
";

/// A conversation between two gateway users (`model::Conversation::is_direct`), in SQL.
const DIRECT: &str = "substr(appid, 1, 1) = '~'";

pub struct SqliteConversations {
    db: Arc<Mutex<Connection>>,
    presence: Mutex<HashMap<String, Presence>>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    Unavailable::sqlite("inbox.sqlite3", e).into()
}

fn damaged(e: serde_json::Error) -> StoreError {
    Unavailable::Damaged(format!("inbox.sqlite3: a stored conversation is damaged: {e}")).into()
}

impl SqliteConversations {
    pub fn open(dir: &Path) -> Result<Arc<SqliteConversations>, StoreError> {
        let conn = Connection::open(dir.join("inbox.sqlite3")).map_err(unavailable)?;
        // WAL with synchronous NORMAL: a change survives a crash of imgate; the mailboxes
        // hold the messages themselves, this file only who owns them.
        // secure_delete: a removed conversation (erasure) is overwritten, not left readable
        // in a freed page; records are only ever removed that way, so it costs nothing else.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON; {SCHEMA}"
        ))
        .map_err(unavailable)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        let mut presence = HashMap::new();
        {
            let mut s = conn.prepare("SELECT agent FROM away").map_err(unavailable)?;
            for agent in s.query_map([], |r| r.get::<_, String>(0)).map_err(unavailable)? {
                presence.insert(agent.map_err(unavailable)?, Presence { away: true, ..Presence::default() });
            }
        }
        Ok(Arc::new(SqliteConversations { db: Arc::new(Mutex::new(conn)), presence: Mutex::new(presence) }))
    }

    /// Run `f` on the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock()))
            .await
            .map_err(|e| InboxError::Store(Unavailable::Failed(format!("inbox.sqlite3: {e}")).into()))?
    }
}

fn read(conn: &Connection, appid: &str, contact: &str) -> Result<Option<Conversation>, InboxError> {
    let data: Option<String> = conn
        .query_row(
            "SELECT data FROM conversations WHERE appid = ?1 AND contact = ?2",
            params![appid, contact],
            |r| r.get(0),
        )
        .optional()
        .map_err(unavailable)?;
    data.map(|d| serde_json::from_str(&d).map_err(damaged)).transpose().map_err(InboxError::Store)
}

/// Read, edit and write one conversation inside the caller's transaction.
fn apply(
    tx: &Connection,
    a: &str,
    c: &str,
    edit: &Edit,
) -> Result<(Option<Conversation>, Option<Conversation>), InboxError> {
    let before = read(tx, a, c)?;
    let Some(after) = edit(before.clone())? else { return Ok((before, None)) };
    let data = serde_json::to_string(&after).map_err(damaged)?;
    let (w, k, _) = after.rank().parts_owned();
    tx.prepare_cached(
        "INSERT INTO conversations (appid, contact, data, load_of, rank_w, rank_k, state, assignee, search)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (appid, contact) DO UPDATE SET data = excluded.data, load_of = excluded.load_of,
           rank_w = excluded.rank_w, rank_k = excluded.rank_k, state = excluded.state,
           assignee = excluded.assignee, search = excluded.search",
    )
    .and_then(|mut s| {
        s.execute(params![
            a,
            c,
            data,
            after.load_of(),
            w,
            k,
            after.state.as_str(),
            after.assignee,
            after.search()
        ])
    })
    .map_err(unavailable)?;
    Ok((before, Some(after)))
}

fn store_err(e: InboxError) -> StoreError {
    match e {
        InboxError::Store(s) => s,
        other => Unavailable::Failed(format!("inbox.sqlite3: {other}")).into(),
    }
}

#[async_trait]
impl Conversations for SqliteConversations {
    async fn get(&self, appid: &str, contact: &str) -> Result<Option<Conversation>, StoreError> {
        let (a, c) = (appid.to_owned(), contact.to_owned());
        self.with(move |conn| read(conn, &a, &c)).await.map_err(store_err)
    }

    async fn update(
        &self,
        appid: &str,
        contact: &str,
        edit: Edit,
    ) -> Result<(Option<Conversation>, Option<Conversation>), InboxError> {
        let (a, c) = (appid.to_owned(), contact.to_owned());
        // One IMMEDIATE transaction spans the read and the write: updates are serialised,
        // even from another connection to the file.
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let changed = apply(&tx, &a, &c, &edit)?;
            tx.commit().map_err(unavailable)?;
            Ok(changed)
        })
        .await
    }

    /// One transaction for the whole batch: one commit, not one per conversation. An edit
    /// that refuses leaves its conversation as it was and the others written.
    async fn update_many(&self, edits: Vec<(String, String, Edit)>) -> Vec<Result<(), InboxError>> {
        let n = edits.len();
        let done = self
            .with(move |conn| {
                let tx =
                    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
                let out: Vec<Result<(), InboxError>> =
                    edits.iter().map(|(a, c, e)| apply(&tx, a, c, e).map(|_| ())).collect();
                tx.commit().map_err(unavailable)?;
                Ok(out)
            })
            .await;
        match done {
            Ok(out) => out,
            Err(e) => {
                let msg = e.to_string();
                (0..n).map(|_| Err(InboxError::Store(Unavailable::Failed(msg.clone()).into()))).collect()
            }
        }
    }

    async fn remove(&self, appid: &str, contact: &str) -> Result<bool, StoreError> {
        let (a, c) = (appid.to_owned(), contact.to_owned());
        self.with(move |conn| {
            let n = conn
                .execute("DELETE FROM conversations WHERE appid = ?1 AND contact = ?2", params![a, c])
                .map_err(unavailable)?;
            // The WAL holds earlier images of those pages: fold it in and empty it (the
            // file is small; this connection is its only writer).
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
        .map_err(store_err)
    }

    async fn list(&self, appid: &str) -> Result<Vec<Conversation>, StoreError> {
        let a = appid.to_owned();
        self.with(move |conn| {
            let mut s = conn
                .prepare_cached("SELECT data FROM conversations WHERE appid = ?1")
                .map_err(unavailable)?;
            let rows = s.query_map([&a], |r| r.get::<_, String>(0)).map_err(unavailable)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(serde_json::from_str(&r.map_err(unavailable)?).map_err(damaged)?);
            }
            Ok(out)
        })
        .await
        .map_err(store_err)
    }

    /// The list from the table's own columns and index: only the page's records are read.
    async fn page(&self, appids: &[String], viewer: &str, query: &ListQuery) -> Result<Page, StoreError> {
        let (appids, viewer, query) = (appids.to_vec(), viewer.to_owned(), query.clone());
        self.with(move |conn| {
            let mut filter = format!("appid IN ({})", vec!["?"; appids.len()].join(","));
            let mut args: Vec<SqlValue> = appids.iter().map(|a| SqlValue::Text(a.clone())).collect();
            if let Some(state) = query.state {
                filter.push_str(" AND state = ?");
                args.push(SqlValue::Text(state.as_str().into()));
            }
            if let Some(q) = &query.q {
                filter.push_str(" AND instr(search, ?) > 0");
                args.push(SqlValue::Text(q.to_lowercase()));
            }
            let mut count_args = vec![SqlValue::Text(viewer.clone())];
            count_args.extend(args.iter().cloned());
            let (all, mine, unassigned, waiting): (i64, i64, i64, i64) = conn
                .query_row(
                    &format!(
                        "SELECT count(*), coalesce(sum(assignee = ? OR {DIRECT}), 0),
                           coalesce(sum(assignee IS NULL AND state = 'open' AND NOT {DIRECT}), 0),
                           coalesce(sum(rank_w = 0), 0)
                         FROM conversations WHERE {filter}"
                    ),
                    params_from_iter(count_args),
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(unavailable)?;
            match query.view {
                View::Mine => {
                    filter.push_str(&format!(" AND (assignee = ? OR {DIRECT})"));
                    args.push(SqlValue::Text(viewer.clone()));
                }
                View::Unassigned => {
                    filter.push_str(&format!(" AND assignee IS NULL AND state = 'open' AND NOT {DIRECT}"))
                }
                View::Waiting => filter.push_str(" AND rank_w = 0"),
                View::All => {}
            }
            if let Some(after) = &query.cursor {
                let (w, k, contact) = after.parts();
                filter.push_str(" AND (rank_w, rank_k, contact) > (?, ?, ?)");
                args.extend([
                    SqlValue::Integer(w.into()),
                    SqlValue::Integer(k),
                    SqlValue::Text(contact.into()),
                ]);
            }
            args.push(SqlValue::Integer(query.limit as i64 + 1));
            let mut s = conn
                .prepare(&format!(
                    "SELECT data FROM conversations WHERE {filter} ORDER BY rank_w, rank_k, contact LIMIT ?"
                ))
                .map_err(unavailable)?;
            let mut rows: Vec<Conversation> = Vec::new();
            for r in s.query_map(params_from_iter(args), |r| r.get::<_, String>(0)).map_err(unavailable)? {
                rows.push(serde_json::from_str(&r.map_err(unavailable)?).map_err(damaged)?);
            }
            let more = rows.len() > query.limit;
            rows.truncate(query.limit);
            let next = if more { rows.last().map(|c| c.rank().cursor()) } else { None };
            let counts = json!({"mine": mine, "unassigned": unassigned, "all": all, "waiting": waiting});
            Ok((rows, next, counts))
        })
        .await
        .map_err(store_err)
    }

    async fn open_load(&self, appid: &str) -> Result<HashMap<String, usize>, StoreError> {
        let a = appid.to_owned();
        self.with(move |conn| {
            let mut s = conn
                .prepare_cached(
                    "SELECT load_of, count(*) FROM conversations WHERE appid = ?1 AND load_of IS NOT NULL GROUP BY load_of",
                )
                .map_err(unavailable)?;
            let rows = s.query_map([&a], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(unavailable)?;
            let mut out = HashMap::new();
            for r in rows {
                let (agent, n) = r.map_err(unavailable)?;
                out.insert(agent, n.max(0) as usize);
            }
            Ok(out)
        })
        .await
        .map_err(store_err)
    }

    async fn canned(&self, appid: &str) -> Result<Value, StoreError> {
        let a = appid.to_owned();
        self.with(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM canned WHERE appid = ?1", [&a], |r| r.get(0))
                .optional()
                .map_err(unavailable)?;
            Ok(data.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Array(Vec::new())))
        })
        .await
        .map_err(store_err)
    }

    async fn set_canned(&self, appid: &str, canned: Value) -> Result<(), StoreError> {
        let (a, d) = (appid.to_owned(), canned.to_string());
        self.with(move |conn| {
            conn.execute(
                "INSERT INTO canned (appid, data) VALUES (?1, ?2) ON CONFLICT (appid) DO UPDATE SET data = excluded.data",
                params![a, d],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(store_err)
    }

    async fn connected(&self, agent: &str) -> Result<bool, StoreError> {
        let mut all = self.presence.lock();
        let p = all.entry(agent.to_owned()).or_default();
        p.connections += 1;
        Ok(p.connections == 1)
    }

    async fn disconnected(&self, agent: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut all = self.presence.lock();
        let p = all.entry(agent.to_owned()).or_default();
        p.connections = p.connections.saturating_sub(1);
        if p.connections == 0 {
            p.offline_since = Some(now_ms);
            return Ok(true);
        }
        Ok(false)
    }

    async fn set_away(&self, agent: &str, away: bool) -> Result<(), StoreError> {
        let a = agent.to_owned();
        self.with(move |conn| {
            let sql = if away {
                "INSERT INTO away (agent) VALUES (?1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM away WHERE agent = ?1"
            };
            conn.execute(sql, [&a]).map_err(unavailable)?;
            Ok(())
        })
        .await
        .map_err(store_err)?;
        self.presence.lock().entry(agent.to_owned()).or_default().away = away;
        Ok(())
    }

    async fn presence(&self, agent: &str) -> Result<Presence, StoreError> {
        Ok(self.presence.lock().get(agent).cloned().unwrap_or_default())
    }
}

//! What imgate remembers about WeChat between restarts: each follower's account,
//! customer-service window and profile (`user/info`, kept with the follower so that an
//! erasure takes it too), and the media it downloaded or was given.
//!
//! A small SQLite file beside the mailboxes (`wechat.sqlite3`), mirrored in memory; writes
//! are rare (one per WeChat message) and go to disk before they are relied on: one writer
//! thread takes them in the order the memory changed (two updates of one follower reach
//! the file in that order), and a caller that relies on a write gets its error, with the
//! memory put back as it was so that a retry writes it again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::mpsc;

use parking_lot::Mutex;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::StateUnavailable;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS followers (
    openid TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    closes_at INTEGER NOT NULL,
    quota INTEGER NOT NULL,
    sent INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    media_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    content_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS media_readers (
    id TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS template_sends (
    appid TEXT NOT NULL,
    msgid INTEGER NOT NULL,
    ref TEXT NOT NULL,
    openid TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    PRIMARY KEY (appid, msgid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upload_usage (
    user TEXT NOT NULL,
    day INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (user, day)
) WITHOUT ROWID;
";

/// A follower's customer-service window: replies allowed until `closes_at`, at most
/// `quota` of them (`sent` so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    pub opened_at: i64,
    pub closes_at: i64,
    pub quota: u32,
    pub sent: u32,
}

impl Window {
    fn opening(at: i64, secs: i64, quota: u32) -> Window {
        Window { opened_at: at, closes_at: at + secs, quota, sent: 0 }
    }

    pub fn is_open(&self, now: i64) -> bool {
        now < self.closes_at && self.sent < self.quota
    }

    pub fn remaining(&self, now: i64) -> u32 {
        if now < self.closes_at { self.quota.saturating_sub(self.sent) } else { 0 }
    }

    fn json(self, now: i64) -> Value {
        json!({"open": self.is_open(now), "closes_at": self.closes_at, "remaining": self.remaining(now), "quota": self.quota})
    }
}

/// What an inbound message does to the follower's windows (WeChat's rules since 2023-06).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touch {
    /// When the follower acted (their message's CreateTime).
    pub at: i64,
    /// A message opens the message window (48 h, 5 replies); `subscribe`, `SCAN`, `CLICK`
    /// and the menu's scan events (`scancode_push`, `scancode_waitmsg`) an event window
    /// (1 minute, 3 replies).
    pub opens: Option<Opens>,
    /// `Some(false)` for `unsubscribe`, which closes both windows; `Some(true)` for what
    /// only a follower does (a message, `subscribe`).
    pub subscribed: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opens {
    Message,
    Event,
}

impl Touch {
    pub fn of(msg_type: &str, event: Option<&str>, at: i64) -> Touch {
        let (opens, subscribed) = match (msg_type, event) {
            ("event", Some("subscribe")) => (Some(Opens::Event), Some(true)),
            ("event", Some("SCAN" | "CLICK" | "scancode_push" | "scancode_waitmsg")) => {
                (Some(Opens::Event), None)
            }
            ("event", Some("unsubscribe")) => (None, Some(false)),
            ("event", _) => (None, None),
            _ => (Some(Opens::Message), Some(true)),
        };
        Touch { at, opens, subscribed }
    }
}

/// A follower's windows. They run side by side, each with its own quota: a click within
/// a 48-hour window opens a 1-minute one beside it, and a reply may go out while either
/// has replies left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub message: Window,
    pub event: Window,
}

impl Windows {
    /// A window opens unless the one of its kind would close later (WeChat's retry of an
    /// old message does not shorten it); a new one starts its count again.
    pub fn apply(&mut self, t: Touch) {
        if t.subscribed == Some(false) {
            self.close(t.at);
        }
        let (current, new) = match t.opens {
            Some(Opens::Message) => (&mut self.message, Window::opening(t.at, 48 * 3600, 5)),
            Some(Opens::Event) => (&mut self.event, Window::opening(t.at, 60, 3)),
            None => return,
        };
        if new.closes_at > current.closes_at {
            *current = new;
        }
    }

    /// Both windows close at `at` (or stay closed, if they closed before).
    pub fn close(&mut self, at: i64) {
        self.message.closes_at = self.message.closes_at.min(at);
        self.event.closes_at = self.event.closes_at.min(at);
    }

    /// A reply went out: counted against the open window that closes first (its replies
    /// are lost soonest). False when none is open (WeChat took it anyway).
    pub fn use_one(&mut self, now: i64) -> bool {
        let w = match (self.message.is_open(now), self.event.is_open(now)) {
            (true, true) if self.event.closes_at <= self.message.closes_at => &mut self.event,
            (true, _) => &mut self.message,
            (false, true) => &mut self.event,
            (false, false) => return false,
        };
        w.sent = w.sent.saturating_add(1);
        true
    }

    pub fn is_open(&self, now: i64) -> bool {
        self.message.is_open(now) || self.event.is_open(now)
    }

    /// As frames and the console show it: `open`, `closes_at`, `remaining` and `quota` of
    /// the window a reply can use that closes last (or, all closed, the last to close),
    /// and `windows`, each window opened so far with its own.
    pub fn to_json(&self, now: i64) -> Value {
        let all = [("message", &self.message), ("event", &self.event)];
        let open = all.iter().map(|(_, w)| *w).filter(|w| w.is_open(now)).max_by_key(|w| w.closes_at);
        let top = open.unwrap_or(if self.event.closes_at > self.message.closes_at {
            &self.event
        } else {
            &self.message
        });
        let each: Vec<Value> = all
            .iter()
            .filter(|(_, w)| w.closes_at > 0)
            .map(|(kind, w)| {
                let mut v = w.json(now);
                v["kind"] = json!(kind);
                v
            })
            .collect();
        json!({"open": open.is_some(), "closes_at": top.closes_at, "remaining": top.remaining(now),
            "quota": top.quota, "windows": each})
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follower {
    pub appid: String,
    pub window: Windows,
    /// Their last word was `unsubscribe` (or WeChat said 43004).
    pub unsubscribed: bool,
    /// What `user/info` said, once fetched.
    pub profile: Option<Profile>,
}

/// A follower's profile: WeChat's `user/info` answer and when it was fetched. The remark
/// an agent sets is written here too once WeChat took it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    #[serde(flatten)]
    pub info: imgate_wechat::UserInfo,
    /// Unix seconds.
    pub fetched_at: i64,
}

impl Profile {
    /// As `P/contact`, the team inbox and the console show it.
    pub fn to_json(&self) -> Value {
        let i = &self.info;
        json!({"remark": i.remark, "unionid": i.unionid, "subscribed": i.subscribe == 1,
            "subscribe_time": i.subscribe_time, "subscribe_scene": i.subscribe_scene,
            "tags": i.tagid_list, "language": i.language, "fetched_at": self.fetched_at})
    }

    fn encode(p: &Option<Profile>) -> String {
        p.as_ref().and_then(|p| serde_json::to_string(p).ok()).unwrap_or_default()
    }

    fn decode(s: &str) -> Option<Profile> {
        (!s.is_empty()).then(|| serde_json::from_str(s).ok()).flatten()
    }
}

/// A media file's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MediaRecord {
    pub id: String,
    pub appid: String,
    /// WeChat's media id (downloaded from, or uploaded as); empty for local uploads not
    /// yet sent.
    pub media_id: String,
    pub kind: String,
    pub content_type: String,
    /// `pending`, `ready` or `failed`.
    pub status: String,
    pub error: String,
    pub created_at: i64,
    /// Who uploaded it; empty for a follower's media (its readers are `appid`'s agents).
    pub owner: String,
    /// When WeChat gave `media_id` (unix seconds; 0: unknown). WeChat forgets temporary
    /// media 3 days later.
    pub media_at: i64,
}

/// A template message WeChat took (`message/template/send`): which message it was, so
/// that its TEMPLATESENDJOBFINISH (naming WeChat's msgid) can tell its outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSend {
    /// The message's id (`msg.ref` of its status frames).
    pub reference: String,
    pub openid: String,
    pub sent_at: i64,
}

/// A write to the file, and where its outcome goes.
type Job = (Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>, oneshot::Sender<Result<(), String>>);

/// A write submitted to the writer; await it with [`written`].
type Pending = oneshot::Receiver<Result<(), String>>;

/// The embedded backend: a SQLite file, mirrored in memory.
pub struct Local {
    /// The writer thread's queue. Submitted while the memory's lock is held, so the file
    /// changes in the memory's order; the thread ends (and closes the file) when this goes.
    writer: mpsc::Sender<Job>,
    followers: Mutex<HashMap<String, Follower>>,
    media: Mutex<HashMap<String, MediaRecord>>,
    /// Users a media file was sent to, by media id.
    readers: Mutex<HashMap<String, HashSet<String>>>,
    /// Bytes uploaded, by (user, UTC day).
    usage: Mutex<HashMap<(String, i64), u64>>,
    nonces: Mutex<Nonces>,
    /// When each conversation's last LOCATION report was delivered, by appid and openid.
    locations: Mutex<HashMap<(String, String), i64>>,
    /// Template messages sent, by appid and WeChat's msgid.
    templates: Mutex<HashMap<(String, u64), TemplateSend>>,
    /// When the daily sweep last asked for a follower's profile (an answer that never
    /// comes, 40003, is not asked again before the day is over), by openid.
    profile_tried: Mutex<HashMap<String, i64>>,
}

/// How many callback nonces one node remembers at most (the embedded backend). A
/// callback beyond it is answered 503, and WeChat sends it again later: forgetting a
/// nonce early would let its URL be replayed with another body.
pub const NONCE_CAP: usize = 100_000;

/// What a callback's nonce says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceSeen {
    /// Not seen within its lifetime: a new callback.
    New,
    /// Seen with the same message: WeChat's retry.
    Same,
    /// Seen with another message: a captured URL replayed with another body.
    Other,
    /// Too many nonces to remember: try again later.
    Full,
}

/// Callback nonces, each with the hash of its message, until they expire.
#[derive(Default)]
struct Nonces {
    seen: HashMap<String, [u8; 32]>,
    /// Expiry order. A key is inserted once, so each entry here matches one in `seen`.
    order: std::collections::VecDeque<(std::time::Instant, String)>,
}

impl Nonces {
    fn check(
        &mut self,
        key: &str,
        hash: [u8; 32],
        ttl: std::time::Duration,
        now: std::time::Instant,
    ) -> NonceSeen {
        while let Some((at, _)) = self.order.front()
            && *at <= now
        {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        match self.seen.get(key) {
            Some(h) if *h == hash => NonceSeen::Same,
            Some(_) => NonceSeen::Other,
            None if self.seen.len() >= NONCE_CAP => NonceSeen::Full,
            None => {
                self.seen.insert(key.to_owned(), hash);
                self.order.push_back((now + ttl, key.to_owned()));
                NonceSeen::New
            }
        }
    }
}

impl Local {
    pub fn open(dir: &Path) -> rusqlite::Result<Local> {
        let conn = Connection::open(dir.join("wechat.sqlite3"))?;
        // NORMAL: in WAL mode a commit survives the process dying, and costs no fsync
        // (a power cut may lose the last ones).
        // secure_delete: an erased follower or media record is overwritten, not left
        // readable in a freed page (rows here are few and small).
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON; {SCHEMA}"
        ))?;
        // Files written before uploads had owners.
        let has_owner =
            conn.prepare("SELECT 1 FROM pragma_table_info('media') WHERE name = 'owner'")?.exists([])?;
        if !has_owner {
            conn.execute_batch("ALTER TABLE media ADD COLUMN owner TEXT NOT NULL DEFAULT ''")?;
        }
        // Files written before media ids were known to expire: 0 makes the next send
        // upload again.
        let has_media_at =
            conn.prepare("SELECT 1 FROM pragma_table_info('media') WHERE name = 'media_at'")?.exists([])?;
        if !has_media_at {
            conn.execute_batch("ALTER TABLE media ADD COLUMN media_at INTEGER NOT NULL DEFAULT 0")?;
        }
        // Files from before events had a window of their own beside the message's.
        let has_event = conn
            .prepare("SELECT 1 FROM pragma_table_info('followers') WHERE name = 'unsubscribed'")?
            .exists([])?;
        // Files from before follower profiles.
        let has_profile =
            conn.prepare("SELECT 1 FROM pragma_table_info('followers') WHERE name = 'profile'")?.exists([])?;
        if !has_event {
            conn.execute_batch(
                "ALTER TABLE followers ADD COLUMN ev_opened_at INTEGER NOT NULL DEFAULT 0; \
                 ALTER TABLE followers ADD COLUMN ev_closes_at INTEGER NOT NULL DEFAULT 0; \
                 ALTER TABLE followers ADD COLUMN ev_quota INTEGER NOT NULL DEFAULT 0; \
                 ALTER TABLE followers ADD COLUMN ev_sent INTEGER NOT NULL DEFAULT 0; \
                 ALTER TABLE followers ADD COLUMN unsubscribed INTEGER NOT NULL DEFAULT 0;",
            )?;
        }
        if !has_profile {
            conn.execute_batch("ALTER TABLE followers ADD COLUMN profile TEXT NOT NULL DEFAULT ''")?;
        }
        let mut followers = HashMap::new();
        {
            let mut s = conn.prepare(
                "SELECT openid, appid, opened_at, closes_at, quota, sent, ev_opened_at, ev_closes_at, ev_quota, \
                 ev_sent, unsubscribed, profile FROM followers",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let message =
                    Window { opened_at: r.get(2)?, closes_at: r.get(3)?, quota: r.get(4)?, sent: r.get(5)? };
                let event =
                    Window { opened_at: r.get(6)?, closes_at: r.get(7)?, quota: r.get(8)?, sent: r.get(9)? };
                let follower = Follower {
                    appid: r.get(1)?,
                    window: Windows { message, event },
                    unsubscribed: r.get(10)?,
                    profile: Profile::decode(&r.get::<_, String>(11)?),
                };
                followers.insert(r.get(0)?, follower);
            }
        }
        let mut media = HashMap::new();
        {
            let mut s = conn.prepare(
                "SELECT id, appid, media_id, kind, content_type, status, error, created_at, owner, media_at FROM media",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let m = MediaRecord {
                    id: r.get(0)?,
                    appid: r.get(1)?,
                    media_id: r.get(2)?,
                    kind: r.get(3)?,
                    content_type: r.get(4)?,
                    status: r.get(5)?,
                    error: r.get(6)?,
                    created_at: r.get(7)?,
                    owner: r.get(8)?,
                    media_at: r.get(9)?,
                };
                media.insert(m.id.clone(), m);
            }
        }
        let mut readers: HashMap<String, HashSet<String>> = HashMap::new();
        {
            let mut s = conn.prepare("SELECT id, user FROM media_readers")?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                readers.entry(r.get(0)?).or_default().insert(r.get(1)?);
            }
        }
        let mut usage = HashMap::new();
        {
            let mut s = conn.prepare("SELECT user, day, bytes FROM upload_usage")?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                usage
                    .insert((r.get::<_, String>(0)?, r.get::<_, i64>(1)?), r.get::<_, i64>(2)?.max(0) as u64);
            }
        }
        let mut templates = HashMap::new();
        {
            let mut s = conn.prepare("SELECT appid, msgid, ref, openid, sent_at FROM template_sends")?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let t = TemplateSend { reference: r.get(2)?, openid: r.get(3)?, sent_at: r.get(4)? };
                templates.insert((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64), t);
            }
        }
        let (writer, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("wechat-state".into())
            .spawn(move || {
                for (job, reply) in jobs {
                    let r = job(&conn).map_err(|e| e.to_string());
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "cannot record WeChat state");
                    }
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Local {
            writer,
            followers: Mutex::new(followers),
            media: Mutex::new(media),
            readers: Mutex::new(readers),
            usage: Mutex::new(usage),
            nonces: Mutex::new(Nonces::default()),
            locations: Mutex::new(HashMap::new()),
            templates: Mutex::new(templates),
            profile_tried: Mutex::new(HashMap::new()),
        })
    }

    async fn put_template(&self, appid: &str, msgid: u64, t: TemplateSend) -> Result<(), StateUnavailable> {
        let pending = {
            let mut m = self.templates.lock();
            m.insert((appid.to_owned(), msgid), t.clone());
            let appid = appid.to_owned();
            self.submit(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO template_sends (appid, msgid, ref, openid, sent_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![appid, msgid as i64, t.reference, t.openid, t.sent_at],
                )
                .map(|_| ())
            })
        };
        written(pending).await
    }

    /// Queue a write behind those submitted before it. Call it with the memory's lock
    /// held, so that the file changes in the order the memory did.
    fn submit(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static) -> Pending {
        let (reply, pending) = oneshot::channel();
        // A writer that is gone drops the reply: `written` says so.
        let _ = self.writer.send((Box::new(f), reply));
        pending
    }

    pub fn follower(&self, openid: &str) -> Option<Follower> {
        self.followers.lock().get(openid).cloned()
    }

    /// A follower of `appid` wrote (or sent an event): remember them, with what it does to
    /// their windows.
    pub async fn inbound(
        &self,
        appid: &str,
        openid: &str,
        touch: Touch,
    ) -> Result<Follower, StateUnavailable> {
        let (before, now, pending) = {
            let mut f = self.followers.lock();
            let before = f.get(openid).cloned();
            let mut next = before.clone().unwrap_or_else(|| Follower {
                appid: appid.to_owned(),
                window: Windows::default(),
                unsubscribed: false,
                profile: None,
            });
            next.appid = appid.to_owned();
            next.window.apply(touch);
            if let Some(s) = touch.subscribed {
                next.unsubscribed = !s;
            }
            let pending = (before.as_ref() != Some(&next)).then(|| self.save_follower(openid, &next));
            f.insert(openid.to_owned(), next.clone());
            (before, next, pending)
        };
        if let Some(pending) = pending
            && let Err(e) = written(pending).await
        {
            // Not in the file: not in memory either, so that WeChat's retry writes it.
            let mut f = self.followers.lock();
            if f.get(openid) == Some(&now) {
                match before {
                    Some(b) => f.insert(openid.to_owned(), b),
                    None => f.remove(openid),
                };
            }
            return Err(e);
        }
        Ok(now)
    }

    /// A message went out to `openid` at `now`.
    pub async fn sent(&self, openid: &str, now: i64) -> Option<Windows> {
        let (window, pending) = {
            let mut f = self.followers.lock();
            let entry = f.get_mut(openid)?;
            if !entry.window.use_one(now) {
                return Some(entry.window);
            }
            (entry.window, self.save_follower(openid, entry))
        };
        // The message went out whatever the file says: the writer logged a failure.
        let _ = written(pending).await;
        Some(window)
    }

    /// WeChat said the window is over: believe it. 45015 (closed), 48002 (the follower
    /// refuses messages) and 43004 (unfollowed, which marks them so) close both windows;
    /// 45047 (no replies left) uses them up.
    pub async fn refused(&self, openid: &str, errcode: i64, now: i64) {
        let pending = {
            let mut f = self.followers.lock();
            let Some(entry) = f.get_mut(openid) else { return };
            match errcode {
                45015 | 48002 => entry.window.close(now),
                43004 => {
                    entry.window.close(now);
                    entry.unsubscribed = true;
                }
                45047 => {
                    entry.window.message.sent = entry.window.message.quota;
                    entry.window.event.sent = entry.window.event.quota;
                }
                _ => return,
            }
            self.save_follower(openid, entry)
        };
        // WeChat holds the truth here; the writer logged a failure.
        let _ = written(pending).await;
    }

    /// Keep `profile` with follower `openid`; false (nothing kept) when imgate does not
    /// know them (any more: an erasure while it was fetched must not bring them back).
    async fn put_profile(&self, openid: &str, profile: Profile) -> Result<bool, StateUnavailable> {
        let pending = {
            let mut f = self.followers.lock();
            let Some(entry) = f.get_mut(openid) else { return Ok(false) };
            entry.profile = Some(profile);
            self.save_follower(openid, entry)
        };
        written(pending).await?;
        Ok(true)
    }

    /// Followers (openid, appid) whose profile was fetched before `before` and not asked
    /// for since `before` either, oldest first, `limit` at most; each is marked asked at
    /// `now`. Followers who left are not asked: following again fetches it.
    fn stale_profiles(&self, before: i64, now: i64, limit: usize) -> Vec<(String, String)> {
        let mut tried = self.profile_tried.lock();
        let mut due: Vec<(i64, String, String)> = self
            .followers
            .lock()
            .iter()
            .filter(|(_, f)| !f.unsubscribed)
            .filter_map(|(o, f)| {
                let p = f.profile.as_ref().filter(|p| p.info.subscribe == 1 && p.fetched_at < before)?;
                let at = tried.get(o).copied().unwrap_or(0).max(p.fetched_at);
                (at < before).then(|| (at, o.clone(), f.appid.clone()))
            })
            .collect();
        due.sort_unstable();
        due.truncate(limit);
        tried.retain(|_, at| *at >= before);
        due.into_iter()
            .map(|(_, o, a)| {
                tried.insert(o.clone(), now);
                (o, a)
            })
            .collect()
    }

    async fn forget_follower(&self, openid: &str) -> Result<bool, StateUnavailable> {
        let (had, pending) = {
            let mut f = self.followers.lock();
            let had = f.remove(openid).is_some();
            self.templates.lock().retain(|_, t| t.openid != openid);
            let o = openid.to_owned();
            (
                had,
                self.submit(move |c| {
                    c.execute("DELETE FROM template_sends WHERE openid = ?1", [&o])?;
                    c.execute("DELETE FROM followers WHERE openid = ?1", [o])?;
                    // Earlier images of the page are in the WAL: fold it in and empty it.
                    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                }),
            )
        };
        written(pending).await?;
        Ok(had)
    }

    async fn forget_media(&self, id: &str) -> Result<bool, StateUnavailable> {
        let (had, pending) = {
            let mut m = self.media.lock();
            let had = m.remove(id).is_some();
            self.readers.lock().remove(id);
            let id = id.to_owned();
            (
                had,
                self.submit(move |c| {
                    c.execute("DELETE FROM media WHERE id = ?1", [&id])?;
                    c.execute("DELETE FROM media_readers WHERE id = ?1", [&id])?;
                    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                }),
            )
        };
        written(pending).await?;
        Ok(had)
    }

    async fn trim(&self, cutoff: i64) {
        let old_templates = {
            let mut t = self.templates.lock();
            let before = t.len();
            t.retain(|_, s| s.sent_at >= cutoff);
            (t.len() != before).then(|| {
                self.submit(move |c| {
                    c.execute("DELETE FROM template_sends WHERE sent_at < ?1", [cutoff]).map(|_| ())
                })
            })
        };
        if let Some(p) = old_templates {
            let _ = written(p).await;
        }
        let pending = {
            let mut m = self.media.lock();
            let old: Vec<String> =
                m.values().filter(|r| r.created_at < cutoff).map(|r| r.id.clone()).collect();
            if old.is_empty() {
                return;
            }
            let mut readers = self.readers.lock();
            for id in &old {
                m.remove(id);
                readers.remove(id);
            }
            self.submit(move |c| {
                for id in &old {
                    c.execute("DELETE FROM media WHERE id = ?1", [id])?;
                    c.execute("DELETE FROM media_readers WHERE id = ?1", [id])?;
                }
                Ok(())
            })
        };
        // The next pass tries again (the writer logged a failure).
        let _ = written(pending).await;
    }

    fn save_follower(&self, openid: &str, f: &Follower) -> Pending {
        let (openid, appid, m, e, unsubscribed) =
            (openid.to_owned(), f.appid.clone(), f.window.message, f.window.event, f.unsubscribed);
        let profile = Profile::encode(&f.profile);
        self.submit(move |c| {
            c.execute(
                "INSERT INTO followers (openid, appid, opened_at, closes_at, quota, sent, ev_opened_at, ev_closes_at, \
                 ev_quota, ev_sent, unsubscribed, profile) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (openid) DO UPDATE SET appid = excluded.appid, opened_at = excluded.opened_at, \
                 closes_at = excluded.closes_at, quota = excluded.quota, sent = excluded.sent, \
                 ev_opened_at = excluded.ev_opened_at, ev_closes_at = excluded.ev_closes_at, \
                 ev_quota = excluded.ev_quota, ev_sent = excluded.ev_sent, unsubscribed = excluded.unsubscribed, \
                 profile = excluded.profile",
                params![
                    openid,
                    appid,
                    m.opened_at,
                    m.closes_at,
                    m.quota,
                    m.sent,
                    e.opened_at,
                    e.closes_at,
                    e.quota,
                    e.sent,
                    unsubscribed,
                    profile
                ],
            )
            .map(|_| ())
        })
    }

    pub fn media(&self, id: &str) -> Option<MediaRecord> {
        self.media.lock().get(id).cloned()
    }

    /// Media still to download (after a restart).
    pub fn pending_media(&self) -> Vec<MediaRecord> {
        self.media.lock().values().filter(|m| m.status == "pending").cloned().collect()
    }

    pub async fn put_media(&self, m: MediaRecord) -> Result<(), StateUnavailable> {
        let (before, pending) = {
            let mut media = self.media.lock();
            let before = media.insert(m.id.clone(), m.clone());
            let rec = m.clone();
            let pending = self.submit(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO media (id, appid, media_id, kind, content_type, status, error, created_at, owner, media_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        rec.id,
                        rec.appid,
                        rec.media_id,
                        rec.kind,
                        rec.content_type,
                        rec.status,
                        rec.error,
                        rec.created_at,
                        rec.owner,
                        rec.media_at
                    ],
                )
                .map(|_| ())
            });
            (before, pending)
        };
        if let Err(e) = written(pending).await {
            let mut media = self.media.lock();
            if media.get(&m.id) == Some(&m) {
                match before {
                    Some(b) => media.insert(m.id.clone(), b),
                    None => media.remove(&m.id),
                };
            }
            return Err(e);
        }
        Ok(())
    }

    async fn grant(&self, id: &str, user: &str) -> Result<(), StateUnavailable> {
        let pending = {
            let mut readers = self.readers.lock();
            if !readers.entry(id.to_owned()).or_default().insert(user.to_owned()) {
                return Ok(());
            }
            let (id, user) = (id.to_owned(), user.to_owned());
            self.submit(move |c| {
                c.execute("INSERT OR IGNORE INTO media_readers (id, user) VALUES (?1, ?2)", [id, user])
                    .map(|_| ())
            })
        };
        if let Err(e) = written(pending).await {
            if let Some(r) = self.readers.lock().get_mut(id) {
                r.remove(user);
            }
            return Err(e);
        }
        Ok(())
    }

    fn is_reader(&self, id: &str, user: &str) -> bool {
        self.readers.lock().get(id).is_some_and(|r| r.contains(user))
    }

    async fn reserve_upload(&self, user: &str, day: i64, bytes: u64, quota: u64) -> Result<Quota, String> {
        let pending = {
            let mut u = self.usage.lock();
            // Yesterday's counts are of no use any more.
            u.retain(|(_, d), _| *d >= day);
            let used = u.entry((user.to_owned(), day)).or_insert(0);
            if used.saturating_add(bytes) > quota {
                return Ok(Quota::Over { used: *used });
            }
            *used += bytes;
            let (user, used) = (user.to_owned(), *used);
            self.submit(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO upload_usage (user, day, bytes) VALUES (?1, ?2, ?3)",
                    params![user, day, used as i64],
                )?;
                c.execute("DELETE FROM upload_usage WHERE day < ?1", [day]).map(|_| ())
            })
        };
        if let Err(e) = written(pending).await {
            // Not counted after all.
            if let Some(u) = self.usage.lock().get_mut(&(user.to_owned(), day)) {
                *u = u.saturating_sub(bytes);
            }
            return Err(e.0);
        }
        Ok(Quota::Granted)
    }

    async fn release_upload(&self, user: &str, day: i64, bytes: u64) {
        let pending = {
            let mut u = self.usage.lock();
            let Some(used) = u.get_mut(&(user.to_owned(), day)) else { return };
            *used = used.saturating_sub(bytes);
            let (user, used) = (user.to_owned(), *used);
            self.submit(move |c| {
                c.execute(
                    "UPDATE upload_usage SET bytes = ?3 WHERE user = ?1 AND day = ?2",
                    params![user, day, used as i64],
                )
                .map(|_| ())
            })
        };
        // At worst the quota counts a little high until midnight (the writer logged it).
        let _ = written(pending).await;
    }
}

/// The outcome of a submitted write.
async fn written(pending: Pending) -> Result<(), StateUnavailable> {
    match pending.await {
        Ok(r) => r.map_err(|e| StateUnavailable(format!("cannot record WeChat state: {e}"))),
        Err(_) => Err(StateUnavailable("the WeChat state writer has stopped".into())),
    }
}

/// What an upload's quota check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// The bytes are counted against the day's quota.
    Granted,
    /// They would go over it; `used` bytes were uploaded already that day.
    Over { used: u64 },
}

/// Where the WeChat state lives: beside the mailboxes, or in the Redis all nodes share.
// One per process: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum State {
    Local(Local),
    Redis(Shared),
}

impl State {
    /// The follower, if `openid` is one; an error when that cannot be known now (a reply
    /// must not go to a mailbox because Redis did not answer).
    pub async fn follower(&self, openid: &str) -> Result<Option<Follower>, String> {
        match self {
            State::Local(l) => Ok(l.follower(openid)),
            State::Redis(r) => r.follower(openid).await,
        }
    }

    /// The follower wrote (or sent an event): the follower afterwards, once it is recorded.
    pub async fn inbound(
        &self,
        appid: &str,
        openid: &str,
        touch: Touch,
    ) -> Result<Follower, StateUnavailable> {
        match self {
            State::Local(l) => l.inbound(appid, openid, touch).await,
            State::Redis(r) => Ok(r.inbound(appid, openid, touch).await),
        }
    }

    /// A reply went out at `now`: the windows afterwards.
    pub async fn sent(&self, openid: &str, now: i64) -> Option<Windows> {
        match self {
            State::Local(l) => l.sent(openid, now).await,
            State::Redis(r) => r.sent(openid, now).await,
        }
    }

    pub async fn refused(&self, openid: &str, errcode: i64, now: i64) {
        match self {
            State::Local(l) => l.refused(openid, errcode, now).await,
            State::Redis(r) => r.refused(openid, errcode, now).await,
        }
    }

    pub async fn media(&self, id: &str) -> Option<MediaRecord> {
        match self {
            State::Local(l) => l.media(id),
            State::Redis(r) => r.media(id).await,
        }
    }

    pub async fn pending_media(&self) -> Vec<MediaRecord> {
        match self {
            State::Local(l) => l.pending_media(),
            State::Redis(r) => r.pending_media().await,
        }
    }

    /// Record `m`; an error when the embedded file did not take it (Redis errors are
    /// only logged, as before: see [`Shared`]).
    pub async fn put_media(&self, m: MediaRecord) -> Result<(), StateUnavailable> {
        match self {
            State::Local(l) => l.put_media(m).await,
            State::Redis(r) => {
                r.put_media(m).await;
                Ok(())
            }
        }
    }

    /// `user` was sent media `id` in a message: they may read it.
    pub async fn grant(&self, id: &str, user: &str) -> Result<(), StateUnavailable> {
        match self {
            State::Local(l) => l.grant(id, user).await,
            State::Redis(r) => {
                r.grant(id, user).await;
                Ok(())
            }
        }
    }

    /// Whether media `id` was sent to `user`.
    pub async fn is_reader(&self, id: &str, user: &str) -> bool {
        match self {
            State::Local(l) => l.is_reader(id, user),
            State::Redis(r) => r.is_reader(id, user).await,
        }
    }

    /// Count `bytes` against `user`'s uploads on `day` (UTC days since the epoch), unless
    /// that would take them over `quota`. An error when it cannot be known now.
    pub async fn reserve_upload(
        &self,
        user: &str,
        day: i64,
        bytes: u64,
        quota: u64,
    ) -> Result<Quota, String> {
        match self {
            State::Local(l) => l.reserve_upload(user, day, bytes, quota).await,
            State::Redis(r) => r.reserve_upload(user, day, bytes, quota).await,
        }
    }

    /// Give back what [`State::reserve_upload`] counted, for an upload that was not kept.
    pub async fn release_upload(&self, user: &str, day: i64, bytes: u64) {
        match self {
            State::Local(l) => l.release_upload(user, day, bytes).await,
            State::Redis(r) => r.release_upload(user, day, bytes).await,
        }
    }

    /// Remember a callback's nonce (`key`) with its message's hash for `ttl`, and say
    /// whether it was seen before. Several nodes share it through Redis; an error means
    /// it cannot be known now.
    pub async fn nonce(
        &self,
        key: &str,
        hash: [u8; 32],
        ttl: std::time::Duration,
    ) -> Result<NonceSeen, String> {
        match self {
            State::Local(l) => Ok(l.nonces.lock().check(key, hash, ttl, std::time::Instant::now())),
            State::Redis(r) => r.nonce(key, hash, ttl).await,
        }
    }

    /// Keep `profile` with the follower `openid`: false (nothing kept) when not a follower
    /// (erased while it was fetched). Redis errors are logged.
    pub async fn put_profile(&self, openid: &str, profile: Profile) -> Result<bool, StateUnavailable> {
        match self {
            State::Local(l) => l.put_profile(openid, profile).await,
            State::Redis(r) => r.put_profile(openid, &profile).await,
        }
    }

    /// Whether this node may fetch `openid`'s profile now: no other fetch of it is under
    /// way (with Redis, on any node) within `hold`. The claim lapses by itself.
    pub async fn claim_profile_fetch(&self, openid: &str, hold: std::time::Duration) -> bool {
        match self {
            // The embedded engine has one node: the channel's in-flight set is enough.
            State::Local(_) => true,
            State::Redis(r) => r.claim_profile_fetch(openid, hold).await,
        }
    }

    /// The fetch of `openid`'s profile is over (done or failed): another node may fetch it.
    pub async fn release_profile_fetch(&self, openid: &str) {
        if let State::Redis(r) = self {
            let mut c = r.conn.clone();
            let _: Option<i64> =
                Shared::warn(redis::cmd("DEL").arg(format!("{}:pf:{openid}", r.p)).query_async(&mut c).await);
        }
    }

    /// The daily refresh: up to `limit` followers (openid, appid) whose profile is older
    /// than `before` and was not asked for since, oldest first, each marked asked at `now`
    /// (a fetch that fails for good is not asked again before the next day). Followers who
    /// left are not among them.
    pub async fn stale_profiles(&self, before: i64, now: i64, limit: usize) -> Vec<(String, String)> {
        match self {
            State::Local(l) => l.stale_profiles(before, now, limit),
            State::Redis(r) => r.stale_profiles(before, now, limit).await,
        }
    }

    /// Whether this node runs the periodic `job` now: on Redis one node per `hold` (the
    /// lease lapses by itself), embedded always.
    pub async fn lease(&self, job: &str, hold: std::time::Duration) -> bool {
        match self {
            State::Local(_) => true,
            State::Redis(r) => r.take(&format!("{}:lease:{job}", r.p), hold).await,
        }
    }

    /// Erasure: forget the follower `openid` (its account, window and profile). True when
    /// known.
    /// Its LOCATION throttle in each of `appids` goes too.
    pub async fn forget_follower(&self, openid: &str, appids: &[&str]) -> Result<bool, StateUnavailable> {
        match self {
            State::Local(l) => {
                l.locations.lock().retain(|(_, o), _| o != openid);
                l.forget_follower(openid).await
            }
            State::Redis(r) => r.forget_follower(openid, appids).await,
        }
    }

    /// Erasure: forget media record `id` and who may read it. True when known.
    pub async fn forget_media(&self, id: &str) -> Result<bool, StateUnavailable> {
        match self {
            State::Local(l) => l.forget_media(id).await,
            State::Redis(r) => r.forget_media(id).await,
        }
    }

    /// Whether a LOCATION report of `openid` at `now` is the first of its conversation
    /// within `every` seconds (WeChat may send one every 5 seconds). With Redis, where
    /// Redis cannot answer it is taken as the first: one frame too many, rather than none.
    pub async fn first_location(&self, appid: &str, openid: &str, now: i64, every: i64) -> bool {
        match self {
            State::Local(l) => {
                let mut seen = l.locations.lock();
                // Bounded by the conversations of the last period.
                if seen.len() > 10_000 {
                    seen.retain(|_, at| now - *at < every);
                }
                let key = (appid.to_owned(), openid.to_owned());
                match seen.get(&key) {
                    Some(at) if now - *at < every => false,
                    _ => {
                        seen.insert(key, now);
                        true
                    }
                }
            }
            State::Redis(r) => r.first_location(appid, openid, every).await,
        }
    }

    /// Remember a template message WeChat took, by its `msgid`, until retention forgets
    /// it (its finish event comes within seconds, or minutes when WeChat is busy).
    pub async fn put_template(
        &self,
        appid: &str,
        msgid: u64,
        t: TemplateSend,
    ) -> Result<(), StateUnavailable> {
        match self {
            State::Local(l) => l.put_template(appid, msgid, t).await,
            State::Redis(r) => {
                let mut c = r.conn.clone();
                let v = format!("{}\n{}\n{}", t.reference, t.openid, t.sent_at);
                // With a list of them per follower, so that an erasure finds them.
                let of = format!("{}:tpl:of:{}", r.p, t.openid);
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(format!("{}:tpl:{appid}:{msgid}", r.p))
                    .arg(v)
                    .arg("EX")
                    .arg(r.ttl_secs)
                    .ignore()
                    .sadd(&of, format!("{appid}:{msgid}"))
                    .ignore()
                    .expire(&of, r.ttl_secs as i64)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| StateUnavailable(e.to_string()))
            }
        }
    }

    /// The template message `msgid` of `appid`, if imgate sent it.
    pub async fn template(&self, appid: &str, msgid: u64) -> Option<TemplateSend> {
        match self {
            State::Local(l) => l.templates.lock().get(&(appid.to_owned(), msgid)).cloned(),
            State::Redis(r) => {
                let mut c = r.conn.clone();
                let v: Option<String> = Shared::warn(
                    redis::cmd("GET").arg(format!("{}:tpl:{appid}:{msgid}", r.p)).query_async(&mut c).await,
                )
                .flatten();
                let v = v?;
                let mut parts = v.splitn(3, '\n');
                let reference = parts.next()?.to_owned();
                let openid = parts.next()?.to_owned();
                let sent_at = parts.next()?.parse().ok()?;
                Some(TemplateSend { reference, openid, sent_at })
            }
        }
    }

    /// Forget media recorded before `cutoff` (Redis forgets by itself: its keys expire).
    /// Followers are kept: a reply to one imgate forgot would go to a mailbox instead of
    /// failing at WeChat.
    pub async fn trim(&self, cutoff: i64) {
        if let State::Local(l) = self {
            l.trim(cutoff).await;
        }
    }
}

/// The Redis backend: followers as hashes `imgate:wx:f:<openid>`, media records as
/// `imgate:wx:m:<id>` (with a set of those still pending). A node that cannot reach
/// Redis answers as if it knew nothing, and says so in its log.
pub struct Shared {
    conn: crate::redis_conn::Conn,
    /// Every key's prefix, `imgate:wx`: a hash tag in a cluster, where pipelines and
    /// scripts here take several keys at once, so the WeChat state lives on one slot.
    p: String,
    /// How long a media record lives after its last change (store.retention_max_age).
    ttl_secs: u64,
}

/// A follower's hash: the message window as before (`opened_at`…), the event window
/// beside it (`e_opened_at`…), and `unsubscribed`. Every script answers these fields.
const FIELDS: [&str; 9] = [
    "opened_at",
    "closes_at",
    "quota",
    "sent",
    "e_opened_at",
    "e_closes_at",
    "e_quota",
    "e_sent",
    "unsubscribed",
];

/// ARGV: appid, the window opened ('m', 'e' or ''), its opened_at, closes_at and quota,
/// subscribed ('1', '0' or ''), the time of the touch, then FIELDS.
const INBOUND: &str = r#"
local k = KEYS[1]
redis.call('HSET', k, 'appid', ARGV[1])
if redis.call('HEXISTS', k, 'closes_at') == 0 then
  redis.call('HSET', k, 'opened_at', 0, 'closes_at', 0, 'quota', 0, 'sent', 0)
end
local at = tonumber(ARGV[7])
if ARGV[6] == '0' then
  redis.call('HSET', k, 'unsubscribed', 1)
  for _, p in ipairs({'', 'e_'}) do
    local c = tonumber(redis.call('HGET', k, p .. 'closes_at') or '0')
    if at < c then redis.call('HSET', k, p .. 'closes_at', at) end
  end
elseif ARGV[6] == '1' then
  redis.call('HSET', k, 'unsubscribed', 0)
end
if ARGV[2] ~= '' then
  local p = ''
  if ARGV[2] == 'e' then p = 'e_' end
  local cur = tonumber(redis.call('HGET', k, p .. 'closes_at') or '-1')
  if tonumber(ARGV[4]) > cur then
    redis.call('HSET', k, p .. 'opened_at', ARGV[3], p .. 'closes_at', ARGV[4], p .. 'quota', ARGV[5], p .. 'sent', 0)
  end
end
return {redis.call('HMGET', k, unpack(ARGV, 8)), redis.call('HGET', k, 'profile')}
"#;

/// A profile fetched is kept only for a follower still known (not erased meanwhile).
const PUT_PROFILE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'profile', ARGV[1])
return 1
"#;

/// A reply went out at ARGV[1]: counted against the open window that closes first.
const SENT: &str = r#"
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return false end
local now = tonumber(ARGV[1])
local best, closes = nil, nil
for _, p in ipairs({'', 'e_'}) do
  local c = tonumber(redis.call('HGET', k, p .. 'closes_at') or '0')
  local q = tonumber(redis.call('HGET', k, p .. 'quota') or '0')
  local s = tonumber(redis.call('HGET', k, p .. 'sent') or '0')
  if now < c and s < q and (closes == nil or c <= closes) then best, closes = p, c end
end
if best then redis.call('HINCRBY', k, best .. 'sent', 1) end
return redis.call('HMGET', k, unpack(ARGV, 2))
"#;

const REFUSED: &str = r#"
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return 0 end
local code = ARGV[1]
for _, p in ipairs({'', 'e_'}) do
  if code == '45015' or code == '48002' or code == '43004' then
    local c = tonumber(redis.call('HGET', k, p .. 'closes_at') or '0')
    if tonumber(ARGV[2]) < c then redis.call('HSET', k, p .. 'closes_at', ARGV[2]) end
  elseif code == '45047' then
    redis.call('HSET', k, p .. 'sent', redis.call('HGET', k, p .. 'quota') or '0')
  end
end
if code == '43004' then redis.call('HSET', k, 'unsubscribed', 1) end
return 1
"#;

/// SET NX with expiry, and if the nonce was there, whether with the same hash: 1 new,
/// 2 same, 0 other. One script, so two nodes seeing one nonce at once agree.
const NONCE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 2 end
return 0
"#;

/// The windows and `unsubscribed` of FIELDS' values.
fn windows_of(v: &[Option<i64>]) -> (Windows, bool) {
    let g = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
    let w = |i: usize| Window {
        opened_at: g(i),
        closes_at: g(i + 1),
        quota: g(i + 2) as u32,
        sent: g(i + 3) as u32,
    };
    (Windows { message: w(0), event: w(4) }, g(8) != 0)
}

impl Shared {
    /// The followers with a profile, scored by when it was fetched (the daily refresh).
    fn profiles(&self) -> String {
        format!("{}:profiles", self.p)
    }

    pub fn new(conn: crate::redis_conn::Conn, retention: std::time::Duration) -> Shared {
        let p = crate::redis_conn::tag(conn.is_cluster(), "imgate:wx");
        Shared { conn, p, ttl_secs: retention.as_secs().max(60) }
    }

    fn warn<T>(r: redis::RedisResult<T>) -> Option<T> {
        r.map_err(|e| tracing::warn!(error = %e, "redis: WeChat state unavailable")).ok()
    }

    async fn follower(&self, openid: &str) -> Result<Option<Follower>, String> {
        let mut c = self.conn.clone();
        let (appid, w, profile): (Option<String>, Vec<Option<i64>>, Option<String>) = redis::pipe()
            .hget(format!("{}:f:{openid}", self.p), "appid")
            .cmd("HMGET")
            .arg(format!("{}:f:{openid}", self.p))
            .arg(&FIELDS[..])
            .hget(format!("{}:f:{openid}", self.p), "profile")
            .query_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(appid.map(|appid| {
            let (window, unsubscribed) = windows_of(&w);
            Follower { appid, window, unsubscribed, profile: Profile::decode(&profile.unwrap_or_default()) }
        }))
    }

    async fn inbound(&self, appid: &str, openid: &str, touch: Touch) -> Follower {
        let mut c = self.conn.clone();
        let (kind, w) = match touch.opens {
            Some(Opens::Message) => ("m", Window::opening(touch.at, 48 * 3600, 5)),
            Some(Opens::Event) => ("e", Window::opening(touch.at, 60, 3)),
            None => ("", Window::default()),
        };
        let subscribed = match touch.subscribed {
            Some(true) => "1",
            Some(false) => "0",
            None => "",
        };
        let r: Option<(Vec<Option<i64>>, Option<String>)> = Self::warn(
            redis::Script::new(INBOUND)
                .key(format!("{}:f:{openid}", self.p))
                .arg(appid)
                .arg(kind)
                .arg(w.opened_at)
                .arg(w.closes_at)
                .arg(w.quota)
                .arg(subscribed)
                .arg(touch.at)
                .arg(&FIELDS[..])
                .invoke_async(&mut c)
                .await,
        );
        let profile = r.as_ref().and_then(|(_, p)| Profile::decode(p.as_deref().unwrap_or_default()));
        // Redis out of reach: what this message alone would make of a new follower.
        let (window, unsubscribed) = r.map(|(v, _)| windows_of(&v)).unwrap_or_else(|| {
            let mut w = Windows::default();
            w.apply(touch);
            (w, touch.subscribed == Some(false))
        });
        Follower { appid: appid.to_owned(), window, unsubscribed, profile }
    }

    async fn sent(&self, openid: &str, now: i64) -> Option<Windows> {
        let mut c = self.conn.clone();
        let w: Option<Vec<Option<i64>>> = Self::warn(
            redis::Script::new(SENT)
                .key(format!("{}:f:{openid}", self.p))
                .arg(now)
                .arg(&FIELDS[..])
                .invoke_async(&mut c)
                .await,
        )?;
        w.map(|w| windows_of(&w).0)
    }

    async fn refused(&self, openid: &str, errcode: i64, now: i64) {
        let mut c = self.conn.clone();
        let _: Option<i64> = Self::warn(
            redis::Script::new(REFUSED)
                .key(format!("{}:f:{openid}", self.p))
                .arg(errcode)
                .arg(now)
                .invoke_async(&mut c)
                .await,
        );
    }

    async fn nonce(&self, key: &str, hash: [u8; 32], ttl: std::time::Duration) -> Result<NonceSeen, String> {
        let mut c = self.conn.clone();
        let r: i64 = redis::Script::new(NONCE)
            .key(format!("{}:n:{key}", self.p))
            .arg(&hash[..])
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(match r {
            1 => NonceSeen::New,
            2 => NonceSeen::Same,
            _ => NonceSeen::Other,
        })
    }

    async fn put_profile(&self, openid: &str, profile: &Profile) -> Result<bool, StateUnavailable> {
        let mut c = self.conn.clone();
        let n: i64 = redis::Script::new(PUT_PROFILE)
            .key(format!("{}:f:{openid}", self.p))
            .arg(Profile::encode(&Some(profile.clone())))
            .invoke_async(&mut c)
            .await
            .map_err(|e| StateUnavailable(format!("redis: {e}")))?;
        if n == 1 {
            // The daily refresh's index, by when it was fetched (a key of its own: a
            // Cluster keeps it apart from the follower's).
            let _: Option<i64> = Self::warn(
                redis::cmd("ZADD")
                    .arg(self.profiles())
                    .arg(profile.fetched_at)
                    .arg(openid)
                    .query_async(&mut c)
                    .await,
            );
        }
        Ok(n == 1)
    }

    async fn stale_profiles(&self, before: i64, now: i64, limit: usize) -> Vec<(String, String)> {
        let mut c = self.conn.clone();
        // Anything left over (erased, or gone with retention) is dropped on the way.
        let mut due = Vec::new();
        let mut gone = Vec::new();
        let mut start = 0;
        while due.len() < limit {
            let page: Vec<String> = match Self::warn(
                redis::cmd("ZRANGE")
                    .arg(self.profiles())
                    .arg("-inf")
                    .arg(format!("({before}"))
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(start)
                    .arg(limit)
                    .query_async(&mut c)
                    .await,
            ) {
                Some(p) => p,
                None => return Vec::new(),
            };
            if page.is_empty() {
                break;
            }
            start += page.len();
            for openid in page {
                match self.follower(&openid).await {
                    Ok(Some(f))
                        if !f.unsubscribed && f.profile.as_ref().is_some_and(|p| p.info.subscribe == 1) =>
                    {
                        if due.len() < limit {
                            due.push((openid, f.appid));
                        }
                    }
                    Ok(_) => gone.push(openid),
                    Err(_) => return Vec::new(),
                }
            }
        }
        let mut p = redis::pipe();
        for o in &gone {
            p.zrem(self.profiles(), o).ignore();
        }
        // Asked now: not again before the day is over, whatever the answer.
        for (o, _) in &due {
            p.cmd("ZADD").arg(self.profiles()).arg("XX").arg(now).arg(o).ignore();
        }
        let _: Option<()> = Self::warn(p.query_async(&mut c).await);
        due
    }

    async fn claim_profile_fetch(&self, openid: &str, hold: std::time::Duration) -> bool {
        // Redis out of reach: no fetch (its profile could not be kept either).
        self.take(&format!("{}:pf:{openid}", self.p), hold).await
    }

    /// Set `key` for `hold` unless it is set: true when this call set it (false when
    /// another holds it, or Redis is out of reach).
    async fn take(&self, key: &str, hold: std::time::Duration) -> bool {
        let mut c = self.conn.clone();
        let set: Option<Option<String>> = Self::warn(
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis().max(1) as u64)
                .query_async(&mut c)
                .await,
        );
        set.is_some_and(|s| s.is_some())
    }

    async fn forget_follower(&self, openid: &str, appids: &[&str]) -> Result<bool, StateUnavailable> {
        let mut c = self.conn.clone();
        // Unlike the other writes here, a failure is the caller's: an erasure must not
        // answer 200 for what it did not remove. The follower's hash, then the keys that
        // name them: the LOCATION throttle per account and a profile fetch's claim.
        let mut del = redis::pipe();
        del.del(format!("{}:f:{openid}", self.p));
        for appid in appids {
            del.del(format!("{}:loc:{appid}:{openid}", self.p)).ignore();
        }
        del.del(format!("{}:pf:{openid}", self.p)).ignore();
        del.zrem(self.profiles(), openid).ignore();
        // The template messages sent to them (each record names the follower).
        let of = format!("{}:tpl:of:{openid}", self.p);
        let sent: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&of)
            .query_async(&mut c)
            .await
            .map_err(|e| StateUnavailable(format!("redis: {e}")))?;
        for t in sent {
            del.del(format!("{}:tpl:{t}", self.p)).ignore();
        }
        del.del(&of).ignore();
        let (n,): (i64,) =
            del.query_async(&mut c).await.map_err(|e| StateUnavailable(format!("redis: {e}")))?;
        Ok(n > 0)
    }

    async fn forget_media(&self, id: &str) -> Result<bool, StateUnavailable> {
        let mut c = self.conn.clone();
        let (n, _, _): (i64, i64, i64) = redis::pipe()
            .atomic()
            .del(format!("{}:m:{id}", self.p))
            .del(format!("{}:m:{id}:r", self.p))
            .srem(format!("{}:m:pending", self.p), id)
            .query_async(&mut c)
            .await
            .map_err(|e| StateUnavailable(format!("redis: {e}")))?;
        Ok(n > 0)
    }

    async fn media(&self, id: &str) -> Option<MediaRecord> {
        let mut c = self.conn.clone();
        let m: HashMap<String, String> =
            Self::warn(redis::cmd("HGETALL").arg(format!("{}:m:{id}", self.p)).query_async(&mut c).await)?;
        if m.is_empty() {
            return None;
        }
        let g = |k: &str| m.get(k).cloned().unwrap_or_default();
        Some(MediaRecord {
            id: id.to_owned(),
            appid: g("appid"),
            media_id: g("media_id"),
            kind: g("kind"),
            content_type: g("content_type"),
            status: g("status"),
            error: g("error"),
            created_at: g("created_at").parse().unwrap_or(0),
            owner: g("owner"),
            media_at: g("media_at").parse().unwrap_or(0),
        })
    }

    async fn pending_media(&self) -> Vec<MediaRecord> {
        let mut c = self.conn.clone();
        let ids: Vec<String> =
            Self::warn(redis::cmd("SMEMBERS").arg(format!("{}:m:pending", self.p)).query_async(&mut c).await)
                .unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            if let Some(m) = self.media(&id).await {
                out.push(m);
            }
        }
        out
    }

    async fn put_media(&self, m: MediaRecord) {
        let mut c = self.conn.clone();
        let key = format!("{}:m:{}", self.p, m.id);
        let mut p = redis::pipe();
        p.hset_multiple(
            &key,
            &[
                ("appid", m.appid.as_str()),
                ("media_id", &m.media_id),
                ("kind", &m.kind),
                ("content_type", &m.content_type),
                ("status", &m.status),
                ("error", &m.error),
                ("created_at", &m.created_at.to_string()),
                ("owner", &m.owner),
                ("media_at", &m.media_at.to_string()),
            ],
        );
        p.expire(&key, self.ttl_secs as i64);
        if m.status == "pending" {
            p.sadd(format!("{}:m:pending", self.p), &m.id);
        } else {
            p.srem(format!("{}:m:pending", self.p), &m.id);
        }
        let _: Option<()> = Self::warn(p.query_async(&mut c).await);
    }

    async fn grant(&self, id: &str, user: &str) {
        let mut c = self.conn.clone();
        let key = format!("{}:m:{id}:r", self.p);
        let _: Option<()> = Self::warn(
            redis::pipe()
                .sadd(&key, user)
                .ignore()
                .expire(&key, self.ttl_secs as i64)
                .ignore()
                .query_async(&mut c)
                .await,
        );
    }

    async fn is_reader(&self, id: &str, user: &str) -> bool {
        let mut c = self.conn.clone();
        // Redis out of reach: refuse, rather than serve to whoever asks.
        Self::warn(
            redis::cmd("SISMEMBER").arg(format!("{}:m:{id}:r", self.p)).arg(user).query_async(&mut c).await,
        )
        .unwrap_or(false)
    }

    async fn first_location(&self, appid: &str, openid: &str, every: i64) -> bool {
        let mut c = self.conn.clone();
        let set: Option<Option<String>> = Self::warn(
            redis::cmd("SET")
                .arg(format!("{}:loc:{appid}:{openid}", self.p))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(every.max(1))
                .query_async(&mut c)
                .await,
        );
        set.is_none_or(|s| s.is_some())
    }

    async fn reserve_upload(&self, user: &str, day: i64, bytes: u64, quota: u64) -> Result<Quota, String> {
        let mut c = self.conn.clone();
        let used: i64 = redis::Script::new(RESERVE)
            .key(format!("{}:q:{day}:{user}", self.p))
            .arg(bytes)
            .arg(quota)
            .invoke_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(if used < 0 { Quota::Over { used: (-1 - used) as u64 } } else { Quota::Granted })
    }

    async fn release_upload(&self, user: &str, day: i64, bytes: u64) {
        let mut c = self.conn.clone();
        let _: Option<i64> = Self::warn(
            redis::cmd("DECRBY")
                .arg(format!("{}:q:{day}:{user}", self.p))
                .arg(bytes)
                .query_async(&mut c)
                .await,
        );
    }
}

/// Count ARGV[1] bytes unless that passes the quota ARGV[2]: the new total, or -1 - the
/// total so far when refused. The key outlives its day, then goes.
const RESERVE: &str = r#"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if used + n > tonumber(ARGV[2]) then return -1 - used end
used = redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], 172800)
return used
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn after(touches: &[(&str, Option<&str>, i64)]) -> Windows {
        let mut w = Windows::default();
        for (t, e, at) in touches {
            w.apply(Touch::of(t, *e, *at));
        }
        w
    }

    #[test]
    fn windows_follow_wechats_rules() {
        let msg = after(&[("text", None, 1000)]);
        assert_eq!(
            (msg.message.closes_at, msg.message.quota, msg.event),
            (1000 + 48 * 3600, 5, Window::default())
        );
        for event in ["CLICK", "SCAN", "subscribe", "scancode_push", "scancode_waitmsg"] {
            let w = after(&[("event", Some(event), 1000)]);
            assert_eq!(
                (w.event.closes_at, w.event.quota, w.message),
                (1060, 3, Window::default()),
                "{event}"
            );
        }
        for event in ["VIEW", "LOCATION", "TEMPLATESENDJOBFINISH"] {
            assert_eq!(after(&[("event", Some(event), 1000)]), Windows::default(), "{event}");
        }
        // Unsubscribing closes both; a message's retry does not shorten its window.
        let gone = after(&[
            ("text", None, 1000),
            ("event", Some("CLICK"), 1010),
            ("event", Some("unsubscribe"), 1020),
        ]);
        assert_eq!((gone.message.closes_at, gone.event.closes_at), (1020, 1020));
        assert!(!gone.is_open(1020));
        assert_eq!(after(&[("text", None, 1000), ("text", None, 900)]), msg);
        let mut w = msg;
        w.message.sent = 5;
        assert!(!w.is_open(1001));
        assert_eq!(msg.message.remaining(1000 + 48 * 3600), 0);
        assert!(msg.is_open(1001));
    }

    /// Overlapping windows: the one closing last leads, each shows its own quota, and a
    /// reply uses the one closing first.
    #[test]
    fn overlapping_windows_show_each_quota() {
        let mut w = after(&[("text", None, 1000), ("event", Some("CLICK"), 1010)]);
        let j = w.to_json(1011);
        assert_eq!(
            (j["open"].clone(), j["closes_at"].clone(), j["remaining"].clone(), j["quota"].clone()),
            (json!(true), json!(1000 + 48 * 3600), json!(5), json!(5))
        );
        let each: Vec<(String, u64)> = j["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["kind"].as_str().unwrap().to_owned(), x["remaining"].as_u64().unwrap()))
            .collect();
        assert_eq!(each, [("message".to_owned(), 5), ("event".to_owned(), 3)]);
        assert!(w.use_one(1011));
        assert_eq!((w.event.sent, w.message.sent), (1, 0));
        // Past the event window, the message window takes the replies.
        assert!(w.use_one(1070));
        assert_eq!((w.event.sent, w.message.sent), (1, 1));
        // The message window used up: a click still allows 3, and leads.
        w.message.sent = 5;
        w.apply(Touch::of("event", Some("CLICK"), 2000));
        let j = w.to_json(2001);
        assert_eq!(
            (j["open"].clone(), j["closes_at"].clone(), j["remaining"].clone()),
            (json!(true), json!(2060), json!(3))
        );
        assert!(!w.use_one(3000), "all used up or closed");
    }

    #[test]
    fn nonces_are_remembered_until_they_expire_and_capped() {
        let mut n = Nonces::default();
        let ttl = std::time::Duration::from_secs(300);
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        assert_eq!(n.check("a", [1; 32], ttl, at(0)), NonceSeen::New);
        assert_eq!(n.check("a", [1; 32], ttl, at(0)), NonceSeen::Same);
        assert_eq!(n.check("a", [2; 32], ttl, at(1)), NonceSeen::Other);
        assert_eq!(n.check("a", [2; 32], ttl, at(299)), NonceSeen::Other);
        assert_eq!(n.check("a", [2; 32], ttl, at(300)), NonceSeen::New, "expired, then new");
        for i in 1..NONCE_CAP {
            assert_eq!(n.check(&i.to_string(), [0; 32], ttl, at(301)), NonceSeen::New);
        }
        assert_eq!(n.check("one too many", [0; 32], ttl, at(302)), NonceSeen::Full);
        assert_eq!(n.check("a", [2; 32], ttl, at(302)), NonceSeen::Same, "known ones are still answered");
        assert_eq!(n.check("one too many", [0; 32], ttl, at(601)), NonceSeen::New);
        assert_eq!((n.seen.len(), n.order.len()), (1, 1));
    }

    #[tokio::test]
    async fn a_file_from_before_owners_opens_and_keeps_its_media() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("wechat.sqlite3")).unwrap();
            c.execute_batch(
                "CREATE TABLE media (id TEXT PRIMARY KEY, appid TEXT NOT NULL, media_id TEXT NOT NULL, \
                 kind TEXT NOT NULL, content_type TEXT NOT NULL, status TEXT NOT NULL, error TEXT NOT NULL, \
                 created_at INTEGER NOT NULL) WITHOUT ROWID; \
                 INSERT INTO media VALUES ('m0', 'wx1', 'MID', 'image', 'image/png', 'ready', '', 5);",
            )
            .unwrap();
        }
        let s = State::Local(Local::open(dir.path()).unwrap());
        let m = s.media("m0").await.unwrap();
        assert_eq!((m.appid.as_str(), m.owner.as_str()), ("wx1", ""));
        s.grant("m0", "bob").await.unwrap();
        assert!(s.is_reader("m0", "bob").await);
        assert!(!s.is_reader("m0", "eve").await);
        assert_eq!(s.reserve_upload("bob", 7, 60, 100).await, Ok(Quota::Granted));
        assert_eq!(s.reserve_upload("bob", 7, 60, 100).await, Ok(Quota::Over { used: 60 }));
        drop(s);
        let s = State::Local(Local::open(dir.path()).unwrap());
        assert!(s.is_reader("m0", "bob").await, "readers are kept");
        assert_eq!(
            s.reserve_upload("bob", 7, 41, 100).await,
            Ok(Quota::Over { used: 60 }),
            "so is quota use"
        );
        assert_eq!(s.reserve_upload("bob", 8, 100, 100).await, Ok(Quota::Granted), "a new day");
    }

    #[tokio::test]
    async fn followers_and_media_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = State::Local(Local::open(dir.path()).unwrap());
            let w = s.inbound("wx1", "o1", Touch::of("text", None, 1000)).await.unwrap().window;
            assert_eq!(w.message.quota, 5);
            // A click inside a message window opens its own beside it.
            let w2 = s.inbound("wx1", "o1", Touch::of("event", Some("CLICK"), 1010)).await.unwrap().window;
            assert_eq!((w2.message, w2.event.quota), (w.message, 3));
            assert_eq!(s.sent("o1", 2000).await.unwrap().message.sent, 1);
            s.inbound("wx1", "o1", Touch::of("event", Some("unsubscribe"), 2001)).await.unwrap();
            s.put_media(MediaRecord {
                id: "m1".into(),
                appid: "wx1".into(),
                media_id: "MID".into(),
                kind: "image".into(),
                content_type: String::new(),
                status: "pending".into(),
                error: String::new(),
                created_at: 1,
                owner: String::new(),
                media_at: 0,
            })
            .await
            .unwrap();
        }
        let s = State::Local(Local::open(dir.path()).unwrap());
        let f = s.follower("o1").await.unwrap().unwrap();
        assert_eq!((f.appid.as_str(), f.window.message.sent, f.window.event.quota), ("wx1", 1, 3));
        assert_eq!((f.unsubscribed, f.window.message.closes_at), (true, 2001));
        assert_eq!(s.pending_media().await.len(), 1);
        // Retention takes old media records, never followers.
        s.trim(100).await;
        assert!(s.media("m1").await.is_none());
        assert!(s.follower("o1").await.unwrap().is_some());
        drop(s);
        let s = State::Local(Local::open(dir.path()).unwrap());
        assert!(s.media("m1").await.is_none(), "gone from the file too");
    }

    /// A profile is kept with its follower, survives reopening, and is never kept for an
    /// openid the file does not know (an erasure while it was fetched).
    #[tokio::test]
    async fn a_profile_is_kept_with_its_follower_only() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile {
            info: imgate_wechat::UserInfo {
                subscribe: 1,
                openid: "o1".into(),
                unionid: "oU1".into(),
                remark: "Anna".into(),
                tagid_list: vec![2],
                ..Default::default()
            },
            fetched_at: 1234,
        };
        {
            let s = State::Local(Local::open(dir.path()).unwrap());
            assert!(!s.put_profile("o1", profile.clone()).await.unwrap(), "not a follower yet");
            s.inbound("wx1", "o1", Touch::of("text", None, 1000)).await.unwrap();
            assert!(s.put_profile("o1", profile.clone()).await.unwrap());
            // A later message keeps it.
            let f = s.inbound("wx1", "o1", Touch::of("text", None, 1001)).await.unwrap();
            assert_eq!(f.profile.as_ref(), Some(&profile));
        }
        let s = State::Local(Local::open(dir.path()).unwrap());
        assert_eq!(s.follower("o1").await.unwrap().unwrap().profile, Some(profile.clone()));
        assert_eq!(profile.to_json()["remark"], "Anna");
        // Its LOCATION throttle goes with it: a report after the erasure is a first again.
        assert!(s.first_location("wx1", "o1", 2000, 3600).await);
        assert!(!s.first_location("wx1", "o1", 2001, 3600).await);
        assert!(s.forget_follower("o1", &["wx1"]).await.unwrap());
        assert!(s.first_location("wx1", "o1", 2002, 3600).await);
        assert!(!s.put_profile("o1", profile).await.unwrap(), "erased: not brought back");
        assert_eq!(s.follower("o1").await.unwrap(), None);
    }

    /// Many updates of one follower at once: the file ends with the last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_file_takes_a_followers_updates_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = std::sync::Arc::new(State::Local(Local::open(dir.path()).unwrap()));
            let now = 1000 + 3600;
            s.inbound("wx1", "o1", Touch::of("text", None, 1000)).await.unwrap();
            // Quota aside (WeChat would refuse past 5): each reply is counted in order.
            if let State::Local(l) = &*s {
                l.followers.lock().get_mut("o1").unwrap().window.message.quota = 1000;
            }
            let sends: Vec<_> = (0..200)
                .map(|_| {
                    let s = s.clone();
                    tokio::spawn(async move { s.sent("o1", now).await })
                })
                .collect();
            for t in sends {
                t.await.unwrap();
            }
            assert_eq!(s.follower("o1").await.unwrap().unwrap().window.message.sent, 200);
        }
        let s = State::Local(Local::open(dir.path()).unwrap());
        assert_eq!(
            s.follower("o1").await.unwrap().unwrap().window.message.sent,
            200,
            "the file has the last update"
        );
    }

    fn media(id: &str) -> MediaRecord {
        MediaRecord {
            id: id.into(),
            appid: "wx1".into(),
            media_id: "MID".into(),
            kind: "image".into(),
            content_type: String::new(),
            status: "pending".into(),
            error: String::new(),
            created_at: 1,
            owner: String::new(),
            media_at: 0,
        }
    }

    /// A write the file refuses reaches the caller that relies on it, and is not kept in
    /// memory either: the retry writes it.
    #[tokio::test]
    async fn a_refused_write_is_the_callers_error_and_a_retry_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = Local::open(dir.path()).unwrap();
        written(l.submit(|c| c.execute_batch("PRAGMA query_only = ON"))).await.unwrap();
        let opens = Touch::of("text", None, 1000);
        let e = l.inbound("wx1", "o1", opens).await.unwrap_err();
        assert!(e.to_string().contains("cannot record WeChat state"), "{e}");
        assert_eq!(l.follower("o1"), None);
        assert!(l.put_media(media("m1")).await.is_err());
        assert_eq!(l.media("m1"), None);
        assert!(l.grant("m1", "bob").await.is_err());
        assert!(!l.is_reader("m1", "bob"));
        assert!(l.reserve_upload("bob", 7, 10, 100).await.is_err());
        assert_eq!(l.reserve_upload("bob", 7, 100, 100).await, Err(e.0.clone()), "nothing was counted");
        // The file takes writes again: WeChat's retry records the follower.
        written(l.submit(|c| c.execute_batch("PRAGMA query_only = OFF"))).await.unwrap();
        let recorded = l.inbound("wx1", "o1", opens).await.unwrap();
        assert_eq!(recorded.window, after(&[("text", None, 1000)]));
        l.put_media(media("m1")).await.unwrap();
        l.grant("m1", "bob").await.unwrap();
        drop(l);
        let l = Local::open(dir.path()).unwrap();
        assert_eq!(l.follower("o1").map(|f| f.window), Some(recorded.window));
        assert_eq!(l.media("m1"), Some(media("m1")));
        assert!(l.is_reader("m1", "bob"));
    }
}

//! The Redis engine: mailboxes shared by several imgate nodes.
//!
//! Per user, under `{p}:m:<bytes of the user id>:<user id>:` (the length makes every
//! user's keys their own whatever the id contains): a counter (`…:seq`) that allocates
//! seqs atomically and survives retention; a stream (`…:log`) whose entry ids are
//! `<seq>-1`, so that reading "after seq N" is a range query; dedupe keys (`…:d:<key>`)
//! that expire after `store.dedupe_window` or when retention removes their message; per
//! contact, the list of that conversation's seqs (`…:c:<bytes>:<contact>`), which holds
//! count retention to `store.retention_max_messages` per conversation, so that one busy
//! sender never pushes out another's messages; the delivered mark (`…:delivered`). One Lua script
//! commits a whole append — every mailbox of it, dedupe checks included — atomically,
//! and publishes each stored message on its user's channel (`{p}:u:<bytes>:<user>`) as it
//! goes, in commit order. A node listens to a user's channel while it holds a connection
//! of that user ([`Store::watch`], from before the connection's replay to after its end),
//! so it hears only its own users; every node also listens to `{p}:fanout`, where the
//! nodes' pings go. What arrives goes to its [`Fanout`] (the hub); after any outage the
//! node resubscribes by itself and tells the fan-out to catch its connections up from the
//! mailboxes, since what was published meanwhile is gone.
//!
//! One Redis (with replicas and Sentinel for failover: `redis_conn.rs`), not Redis
//! Cluster: the script touches keys of several users at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use imgate_protocol::EncodedMessage;
use redis::aio::ConnectionManagerConfig;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Script};

use super::{Appended, Erased, Fanout, NewMessage, Store, StoreError, Stored, Unavailable};
use crate::config::StoreConfig;
use crate::redis_conn::{Conn, Target};

/// How long one Redis command may take before the request fails (503, nothing stored:
/// the script either ran whole or not at all).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Entries scanned per round trip when looking for one contact's history.
const HISTORY_SCAN: usize = 500;
/// Messages of one mailbox one erasure script removes when it takes the whole mailbox:
/// a script holds Redis while it runs.
const ERASE_BATCH: usize = 500;
/// Mailboxes one erasure script looks through for a contact's messages.
const ERASE_USERS: usize = 100;
/// Every node publishes a ping this often on the fan-out channel...
const PING_EVERY: Duration = Duration::from_secs(2);
/// ...and a subscription that hears nothing for this long is dead, even if its TCP
/// connection never said so: resubscribe and catch up.
const SILENCE: Duration = Duration::from_secs(7);
/// A ping on the fan-out channel: `ping <node> <unix ms>`, no newline, so no message. A
/// node hearing its own ping knows how far behind its subscription is (broker lag).
const PING: &str = "ping";

const APPEND: &str = r#"
local p = ARGV[1]
local now = ARGV[2]
local ttl = tonumber(ARGV[3])
local maxlen = tonumber(ARGV[4])
local keep = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local out = {}
local i = 7
for m = 1, n do
  local user, id, contact, key, frame = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local u = p .. ':m:' .. string.len(user) .. ':' .. user
  local prev = false
  if key ~= '' then prev = redis.call('GET', u .. ':d:' .. key) end
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    out[#out + 1] = string.sub(prev, 1, sp - 1)
    out[#out + 1] = string.sub(prev, sp + 1)
    out[#out + 1] = '1'
  else
    local seq = redis.call('INCR', u .. ':seq')
    local log = u .. ':log'
    redis.call('XADD', log, seq .. '-1', 'f', frame, 'c', contact, 't', now, 'k', key)
    if key ~= '' then redis.call('SET', u .. ':d:' .. key, seq .. ' ' .. id, 'PX', ttl) end
    -- Count retention per conversation: this contact's seqs in this mailbox, oldest
    -- first. It outlives its newest message by the age limit, after which age retention
    -- has removed every message it names.
    local conv = u .. ':c:' .. string.len(contact) .. ':' .. contact
    redis.call('RPUSH', conv, seq)
    redis.call('PEXPIRE', conv, keep)
    local over = redis.call('LLEN', conv) - maxlen
    if over > 0 then
      for _, s in ipairs(redis.call('LPOP', conv, over)) do
        local id = s .. '-1'
        local e = redis.call('XRANGE', log, id, id)
        if e[1] then
          local f = e[1][2]
          for j = 1, #f, 2 do
            if f[j] == 'k' and f[j + 1] ~= '' then
              -- The key goes with its message (unless a later message holds it now).
              local dk = u .. ':d:' .. f[j + 1]
              local v = redis.call('GET', dk)
              if v and string.sub(v, 1, string.len(s) + 1) == s .. ' ' then redis.call('DEL', dk) end
            end
          end
          redis.call('XDEL', log, id)
        end
      end
    end
    redis.call('SADD', p .. ':users', user)
    -- The user's own channel: only nodes with a connection of theirs hear it.
    redis.call('PUBLISH', p .. ':u:' .. string.len(user) .. ':' .. user, user .. '\n' .. seq .. '\n' .. frame)
    out[#out + 1] = tostring(seq)
    out[#out + 1] = id
    out[#out + 1] = '0'
  end
end
return out
"#;

/// Erasure (ARGV: prefix, contact, mode, count, then mailboxes). Mode `contact`: in each
/// mailbox, the messages with `contact`, found through that conversation's list of seqs.
/// Mode `all`: up to `count` of one mailbox's oldest messages (the contact's own, in
/// batches). Each message's dedupe key goes with it (unless a later message holds it
/// now); the seq counters stay. Returns the removed messages as mailbox, frame pairs.
const ERASE: &str = r#"
local p, contact, mode, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV do
  local user = ARGV[i]
  local u = p .. ':m:' .. string.len(user) .. ':' .. user
  local log = u .. ':log'
  local function remove(id, f)
    local frame, key, c = '', '', nil
    for j = 1, #f, 2 do
      if f[j] == 'f' then frame = f[j + 1] elseif f[j] == 'k' then key = f[j + 1] elseif f[j] == 'c' then c = f[j + 1] end
    end
    if key ~= '' then
      local s = string.match(id, '^%d+')
      local dk = u .. ':d:' .. key
      local v = redis.call('GET', dk)
      if v and string.sub(v, 1, string.len(s) + 1) == s .. ' ' then redis.call('DEL', dk) end
    end
    redis.call('XDEL', log, id)
    out[#out + 1] = user
    out[#out + 1] = frame
    return c
  end
  if mode == 'contact' then
    local conv = u .. ':c:' .. string.len(contact) .. ':' .. contact
    for _, s in ipairs(redis.call('LRANGE', conv, 0, -1)) do
      local id = s .. '-1'
      local e = redis.call('XRANGE', log, id, id)
      if e[1] then remove(id, e[1][2]) end
    end
    redis.call('DEL', conv)
  else
    for _, e in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', count)) do
      local c = remove(e[1], e[2])
      if c then redis.call('DEL', u .. ':c:' .. string.len(c) .. ':' .. c) end
    end
  end
end
return out
"#;

const RAISE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"#;

/// A page of one log for `read_after`: bounded in count and in bytes here, in Redis, so
/// that a page of large messages never crosses the network whole. Returns seq-id and
/// frame, pairwise.
const PAGE: &str = r#"
local start = '(' .. ARGV[1] .. '-1'
local limit = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local out, n, bytes = {}, 0, 0
while n < limit do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(limit - n, 64))
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    local f, kv = '', e[2]
    for i = 1, #kv, 2 do if kv[i] == 'f' then f = kv[i + 1] end end
    bytes = bytes + string.len(f)
    if n > 0 and bytes > max then return out end
    out[#out + 1] = e[1]
    out[#out + 1] = f
    n = n + 1
  end
  start = '(' .. batch[#batch][1]
end
return out
"#;

/// The channel of `user`'s commits (`{p}:u:<bytes>:<user>`): a node listens to it while it
/// holds a connection of theirs.
fn user_channel(prefix: &str, user: &str) -> String {
    format!("{prefix}:u:{}:{user}", user.len())
}

/// The users this node listens for, and the subscription it listens through.
struct Interest {
    prefix: String,
    /// Watches held, by user.
    users: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
    /// The live subscription's sink, while there is one.
    sink: parking_lot::Mutex<Option<redis::aio::PubSubSink>>,
    /// (Un)subscriptions go one at a time: a user's come and go keep their order, and a
    /// resubscription after an outage misses no user watched meanwhile.
    turn: tokio::sync::Mutex<()>,
}

impl Interest {
    async fn watch(self: &Arc<Self>, user: &str) -> super::Watch {
        let _turn = self.turn.lock().await;
        let first = {
            let mut users = self.users.lock();
            let n = users.entry(user.to_owned()).or_default();
            *n += 1;
            *n == 1
        };
        let sink = self.sink.lock().clone();
        if let (true, Some(mut sink)) = (first, sink) {
            // Acknowledged by Redis before this returns: whatever is committed after is
            // heard; whatever before, the connection's replay reads.
            match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(user_channel(&self.prefix, user)))
                .await
            {
                Ok(Ok(())) => {}
                // The subscription is broken: its loop resubscribes every watched user and
                // catches connections up.
                Ok(Err(e)) => tracing::warn!(error = %e, "redis: cannot subscribe to a user's channel"),
                Err(_) => tracing::warn!("redis: subscribing to a user's channel timed out"),
            }
        }
        super::Watch::held(Unwatch { interest: self.clone(), user: user.to_owned() })
    }

    fn unwatch(self: &Arc<Self>, user: String) {
        let last = {
            let mut users = self.users.lock();
            match users.get_mut(&user) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => users.remove(&user).is_some(),
                None => false,
            }
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        if last {
            let me = self.clone();
            rt.spawn(async move {
                let _turn = me.turn.lock().await;
                // Watched again meanwhile: stay.
                if me.users.lock().contains_key(&user) {
                    return;
                }
                let sink = me.sink.lock().clone();
                if let Some(mut sink) = sink {
                    let ch = user_channel(&me.prefix, &user);
                    let _ = tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(ch)).await;
                }
            });
        }
    }

    /// A new subscription: every watched user's channel on it, then it is the one
    /// (un)subscriptions go through.
    async fn adopt(&self, mut sink: redis::aio::PubSubSink) -> redis::RedisResult<()> {
        let _turn = self.turn.lock().await;
        let channels: Vec<String> = self.users.lock().keys().map(|u| user_channel(&self.prefix, u)).collect();
        for batch in channels.chunks(500) {
            sink.subscribe(batch).await?;
        }
        *self.sink.lock() = Some(sink);
        Ok(())
    }

    fn drop_sink(&self) {
        *self.sink.lock() = None;
    }
}

/// A connection's watch of its user ([`Interest::watch`]); the last one's drop unsubscribes.
struct Unwatch {
    interest: Arc<Interest>,
    user: String,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        self.interest.unwatch(std::mem::take(&mut self.user));
    }
}

pub struct RedisStore {
    conn: Conn,
    interest: Arc<Interest>,
    prefix: String,
    config: StoreConfig,
    append: Script,
    raise: Script,
    page: Script,
    erase: Script,
    subscribed: Arc<AtomicBool>,
    closed: AtomicBool,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    Unavailable::Redis(e).into()
}

impl RedisStore {
    /// [`RedisStore::open_at`] one server at `url`.
    pub fn open(
        url: &str,
        config: &StoreConfig,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Arc<RedisStore>, StoreError> {
        RedisStore::open_at(&Target::single(url)?, config, fanout)
    }

    /// Connect (lazily: a node starts, not ready, while Redis is down) and subscribe to
    /// the fan-out channel, through `target` (one server, or the master the sentinels name).
    pub fn open_at(
        target: &Target,
        config: &StoreConfig,
        fanout: Arc<dyn Fanout>,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = target.conn(cm)?;
        let prefix = "imgate".to_owned();
        let subscribed = Arc::new(AtomicBool::new(false));
        let node = uuid::Uuid::now_v7().simple().to_string();
        let interest = Arc::new(Interest {
            prefix: prefix.clone(),
            users: Default::default(),
            sink: Default::default(),
            turn: Default::default(),
        });
        tokio::spawn(subscribe(
            target.clone(),
            format!("{prefix}:fanout"),
            fanout,
            subscribed.clone(),
            node.clone(),
            interest.clone(),
        ));
        let (mut pinger, channel) = (conn.clone(), format!("{prefix}:fanout"));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PING_EVERY);
            loop {
                every.tick().await;
                let ping = format!("{PING} {node} {}", unix_ms());
                let _: redis::RedisResult<i64> = pinger.publish(&channel, ping).await;
            }
        });
        Ok(Arc::new(RedisStore {
            conn,
            interest,
            prefix,
            config: config.clone(),
            append: Script::new(APPEND),
            raise: Script::new(RAISE),
            page: Script::new(PAGE),
            erase: Script::new(ERASE),
            subscribed,
            closed: AtomicBool::new(false),
        }))
    }

    fn key(&self, user: &str, what: &str) -> String {
        format!("{}:m:{}:{user}:{what}", self.prefix, user.len())
    }

    /// One call of [`ERASE`] over `users`' mailboxes, counting what it removed into
    /// `erased`; how many it removed.
    async fn erase_in(
        &self,
        users: &[String],
        contact: &str,
        mode: &str,
        erased: &mut Erased,
    ) -> Result<usize, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.erase.prepare_invoke();
        inv.arg(&self.prefix).arg(contact).arg(mode).arg(ERASE_BATCH);
        for u in users {
            inv.arg(u);
        }
        let flat: Vec<String> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        let mut it = flat.into_iter();
        let mut n = 0;
        while let (Some(user), Some(frame)) = (it.next(), it.next()) {
            erased.add(&user, &EncodedMessage::from_stored(frame));
            n += 1;
        }
        Ok(n)
    }

    async fn range(
        &self,
        user: &str,
        start: String,
        end: String,
        rev: bool,
        count: usize,
    ) -> Result<Vec<(u64, String, String, i64)>, StoreError> {
        let mut c = self.conn.clone();
        let key = self.key(user, "log");
        let reply: StreamRangeReply = if rev {
            c.xrevrange_count(&key, end, start, count).await
        } else {
            c.xrange_count(&key, start, end, count).await
        }
        .map_err(unavailable)?;
        Ok(reply
            .ids
            .into_iter()
            .filter_map(|e| {
                let seq = e.id.split('-').next()?.parse::<u64>().ok()?;
                let frame: String = e.get("f")?;
                let contact: String = e.get("c").unwrap_or_default();
                let t: i64 = e.get("t").unwrap_or_default();
                Some((seq, frame, contact, t))
            })
            .collect())
    }
}

/// Follow the nodes' channel (pings) and the channels of the users this node watches for
/// as long as the node runs: reconnect and resubscribe after any failure, and after each
/// (re)subscription ask the fan-out to catch up.
async fn subscribe(
    target: Target,
    channel: String,
    fanout: Arc<dyn Fanout>,
    subscribed: Arc<AtomicBool>,
    node: String,
    interest: Arc<Interest>,
) {
    let own_ping = format!("{PING} {node} ");
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let attempt = async {
            // Through the sentinels each time, if that is the mode: after a failover the
            // master is elsewhere.
            let (mut sink, stream) = target.pubsub().await?.split();
            sink.subscribe(&channel).await?;
            interest.adopt(sink).await?;
            Ok::<_, redis::RedisError>(stream)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, attempt).await {
            Ok(Ok(mut messages)) => {
                subscribed.store(true, Ordering::Release);
                delay = Duration::from_millis(100);
                if !first {
                    tracing::warn!("redis: resubscribed; catching connections up from their mailboxes");
                }
                first = false;
                // Whatever was published while we were away is only in the mailboxes.
                fanout.resync();
                // What this node hears of the broker, whoever it is for (#12: a node that
                // hears every node's users pays for it).
                let received = metrics::counter!("imgate_broker_messages_received_total");
                while let Ok(Some(msg)) = tokio::time::timeout(SILENCE, messages.next()).await {
                    let payload = msg.get_payload_bytes();
                    let Ok(text) = std::str::from_utf8(payload) else { continue };
                    // Our own ping, back through Redis: how long the broker and this
                    // subscription took (one clock, so no skew between nodes).
                    if let Some(sent) = text.strip_prefix(&own_ping).and_then(|t| t.parse::<i64>().ok()) {
                        let lag = (unix_ms() - sent).max(0) as f64 / 1000.0;
                        metrics::gauge!("imgate_broker_lag_seconds").set(lag);
                        continue;
                    }
                    let mut parts = text.splitn(3, '\n');
                    let (Some(user), Some(seq), Some(frame)) = (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let Ok(seq) = seq.parse::<u64>() else { continue };
                    received.increment(1);
                    fanout.committed(user, seq, &EncodedMessage::from_stored(frame.to_owned()));
                }
                subscribed.store(false, Ordering::Release);
                interest.drop_sink();
                tracing::error!("redis: the fan-out subscription went quiet or dropped; resubscribing");
            }
            Ok(Err(e)) => {
                interest.drop_sink();
                subscribed.store(false, Ordering::Release);
                tracing::warn!(error = %e, "redis: cannot subscribe; retrying");
            }
            Err(_) => {
                interest.drop_sink();
                subscribed.store(false, Ordering::Release);
                tracing::warn!("redis: subscribing timed out; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[async_trait]
impl Store for RedisStore {
    async fn append(&self, msgs: Vec<NewMessage>) -> Result<Vec<Appended>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.append.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(unix_now())
            .arg(self.config.dedupe_window.as_millis().max(1) as u64)
            .arg(self.config.retention_max_messages)
            .arg(self.config.retention_max_age.as_millis().clamp(1, i64::MAX as u128) as u64)
            .arg(msgs.len());
        for m in &msgs {
            inv.arg(&m.user)
                .arg(&m.id)
                .arg(&m.contact)
                .arg(m.dedupe_key.as_deref().unwrap_or(""))
                .arg(m.frame.as_stored());
        }
        let mut c = self.conn.clone();
        let started = std::time::Instant::now();
        let out: Vec<String> = match inv.invoke_async(&mut c).await {
            Ok(out) => out,
            Err(e) => {
                metrics::counter!("imgate_store_commits_total", "engine" => "redis", "outcome" => "failed")
                    .increment(1);
                return Err(unavailable(e));
            }
        };
        metrics::histogram!("imgate_store_commit_duration_seconds", "engine" => "redis")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("imgate_store_commits_total", "engine" => "redis", "outcome" => "committed")
            .increment(1);
        if out.len() != 3 * msgs.len() {
            return Err(Unavailable::Damaged(format!(
                "redis: {} values for {} messages",
                out.len(),
                msgs.len()
            ))
            .into());
        }
        out.chunks(3)
            .map(|t| match t {
                [seq, id, dup] => Ok(Appended {
                    seq: seq.parse().map_err(|_| Unavailable::Damaged("redis: a bad seq".into()))?,
                    id: id.clone(),
                    duplicate: dup == "1",
                }),
                _ => Err(Unavailable::Damaged("redis: a short answer".into()).into()),
            })
            .collect()
    }

    async fn read_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut c = self.conn.clone();
        let flat: Vec<String> = self
            .page
            .key(self.key(user, "log"))
            .arg(after)
            .arg(limit)
            .arg(max_bytes)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(frame)) = (it.next(), it.next()) {
            let seq = id.split('-').next().and_then(|s| s.parse().ok());
            let seq = seq.ok_or_else(|| Unavailable::Damaged("redis: a bad entry id".into()))?;
            out.push(Stored { seq, frame: EncodedMessage::from_stored(frame) });
        }
        Ok(out)
    }

    async fn history(
        &self,
        user: &str,
        contact: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        let mut end = match before {
            Some(b) => format!("({b}-1"),
            None => "+".to_owned(),
        };
        // Bounded by the mailbox's length (retention bounds each conversation, not the
        // mailbox: it holds up to retention_max_messages per contact).
        let rounds = match contact {
            Some(_) => {
                let mut c = self.conn.clone();
                let len: usize = c.xlen(self.key(user, "log")).await.map_err(unavailable)?;
                len / HISTORY_SCAN + 2
            }
            None => 1,
        };
        for _ in 0..rounds {
            let count = if contact.is_some() { HISTORY_SCAN } else { limit.max(1) };
            let rows = self.range(user, "-".into(), end.clone(), true, count).await?;
            let n = rows.len();
            let last = rows.last().map(|r| r.0);
            for (seq, frame, c, _) in rows {
                if contact.is_none_or(|want| want == c) && out.len() < limit {
                    out.push(Stored { seq, frame: EncodedMessage::from_stored(frame) });
                }
            }
            match last {
                Some(s) if n == count && out.len() < limit => end = format!("({s}-1"),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delivered(&self, user: &str) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c.get(self.key(user, "delivered")).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }

    async fn last_seq(&self, user: &str) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c.get(self.key(user, "seq")).await.map_err(unavailable)?;
        Ok(v.unwrap_or(0))
    }

    async fn set_delivered(&self, user: &str, seq: u64) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .raise
            .key(self.key(user, "delivered"))
            .arg(seq)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn trim(&self) -> Result<u64, StoreError> {
        // Count is enforced on every append, per conversation (the APPEND script); age here.
        let oldest = unix_now() - self.config.retention_max_age.as_secs() as i64;
        let mut c = self.conn.clone();
        let users: Vec<String> = c.smembers(format!("{}:users", self.prefix)).await.map_err(unavailable)?;
        let mut removed = 0u64;
        for user in users {
            let mut start = "-".to_owned();
            let keep_from = loop {
                let rows = self.range(&user, start.clone(), "+".into(), false, 100).await?;
                if rows.is_empty() {
                    break None;
                }
                if let Some(r) = rows.iter().find(|r| r.3 >= oldest) {
                    break Some(r.0);
                }
                let last = rows.last().map(|r| r.0).unwrap_or(0);
                if rows.len() < 100 {
                    break Some(last + 1);
                }
                start = format!("({last}-1");
            };
            if let Some(min) = keep_from {
                let n: u64 = redis::cmd("XTRIM")
                    .arg(self.key(&user, "log"))
                    .arg("MINID")
                    .arg(format!("{min}-1"))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                removed += n;
            }
        }
        Ok(removed)
    }

    async fn erase(&self, contact: &str) -> Result<Erased, StoreError> {
        let mut c = self.conn.clone();
        let users: Vec<String> = c.smembers(format!("{}:users", self.prefix)).await.map_err(unavailable)?;
        let mut erased = Erased::default();
        let (own, others): (Vec<String>, Vec<String>) = users.into_iter().partition(|u| u == contact);
        // Many mailboxes a call (one round trip each, not one per user), few enough that
        // a script holds Redis only briefly.
        for chunk in others.chunks(ERASE_USERS) {
            self.erase_in(chunk, contact, "contact", &mut erased).await?;
        }
        if !own.is_empty() {
            // The contact's own mailbox, whole, in batches; bounded, since appends may go
            // on meanwhile.
            let len: usize = c.xlen(self.key(contact, "log")).await.map_err(unavailable)?;
            for _ in 0..len / ERASE_BATCH + 2 {
                if self.erase_in(&own, contact, "all", &mut erased).await? < ERASE_BATCH {
                    break;
                }
            }
        }
        Ok(erased)
    }

    async fn watch(&self, user: &str) -> super::Watch {
        self.interest.watch(user).await
    }

    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        // Held until it expires, not released: the period, not the run, is what one node
        // takes. Nodes share the key, so none runs the work twice in one period.
        let taken: Option<String> = redis::cmd("SET")
            .arg(format!("{}:lease:{name}", self.prefix))
            .arg(std::process::id())
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(taken.is_some())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await.map_err(unavailable)?;
        if !self.subscribed.load(Ordering::Acquire) {
            return Err(Unavailable::NotSubscribed.into());
        }
        Ok(())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

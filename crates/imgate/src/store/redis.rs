//! The Redis engine: mailboxes shared by several imgate nodes.
//!
//! Per user, under `{p}:m:<bytes of the user id>:<user id>:` (the length makes every
//! user's keys their own whatever the id contains; in a cluster `{p}:m:{<bytes>:<id>}:`,
//! one hash tag, one slot): a counter (`…:seq`) that allocates seqs atomically and
//! survives retention; the lineage it was last written under (`…:lineage`, seq safety); a
//! stream (`…:log`) whose entry ids are `<seq>-1`, so that reading "after seq N" is a
//! range query; dedupe keys (`…:d:<key>`) that expire after `store.dedupe_window` or when
//! retention removes their message; per contact, the list of that conversation's seqs
//! (`…:c:<bytes>:<contact>`), which holds count retention to
//! `store.retention_max_messages` per conversation, so that one busy sender never pushes
//! out another's messages; the delivered mark (`…:delivered`). One Lua script commits a
//! whole append — every mailbox of it, dedupe checks included — atomically on one server
//! (in a cluster, one script per mailbox: [`RedisStore::append_across_slots`]), and
//! publishes each stored message on its user's channel (`{p}:u:<bytes>:<user>`; sharded in
//! a cluster) as it goes, in commit order. A node listens to a user's channel while it
//! holds a connection of that user ([`Store::watch`], from before the connection's replay
//! to after its end), so it hears only its own users; every node also listens to
//! `{p}:fanout`, where the nodes' pings go. What arrives goes to its [`Fanout`] (the hub);
//! after any outage the node resubscribes by itself and tells the fan-out to catch its
//! connections up from the mailboxes, since what was published meanwhile is gone.
//!
//! One server, a master with replicas under Sentinel, or a Redis Cluster: `redis_conn.rs`.

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

/// ARGV: now, dedupe ttl, count limit, conversation keep (ms), the publish command
/// (`PUBLISH`, or `SPUBLISH` in a cluster), the set of users (or '' when the caller adds
/// them), n, then per message its mailbox's key base, its user's channel, user, id,
/// contact, dedupe key and frame. KEYS[1]: the first mailbox's counter, which routes the
/// call in a cluster (where every mailbox of one call shares a slot).
const APPEND: &str = r#"
local now = ARGV[1]
local ttl = tonumber(ARGV[2])
local maxlen = tonumber(ARGV[3])
local keep = tonumber(ARGV[4])
local publish = ARGV[5]
local users = ARGV[6]
local n = tonumber(ARGV[7])
-- The lineage of this server's data: a promoted replica or a restarted server has a new
-- one (INFO is allowed in scripts).
local lineage = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
local out = {}
local i = 8
for m = 1, n do
  local u, channel, user, id, contact, key, frame =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local prev = false
  if key ~= '' then prev = redis.call('GET', u .. ':d:' .. key) end
  if prev then
    local sp = string.find(prev, ' ', 1, true)
    out[#out + 1] = string.sub(prev, 1, sp - 1)
    out[#out + 1] = string.sub(prev, sp + 1)
    out[#out + 1] = '1'
  else
    -- Seq safety: a mailbox last written under another lineage may have lost its last
    -- writes (asynchronous replication; a restart), and their seqs with them, which a
    -- client may hold. Jump past any seq that lineage can have handed out: to the
    -- server's clock in microseconds, above every seq so far (a counter, or an earlier
    -- jump plus fewer messages than microseconds since). A mailbox first written by an
    -- earlier version has no lineage yet: it is taken as it is.
    local seqk, linek = u .. ':seq', u .. ':lineage'
    local was = redis.call('GET', linek)
    if was ~= lineage then
      if was then
        local t = redis.call('TIME')
        local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
        if floor > tonumber(redis.call('GET', seqk) or '0') then
          redis.call('SET', seqk, string.format('%d', floor))
        end
      end
      redis.call('SET', linek, lineage)
    end
    -- As a string from here on: Lua's own formatting of a number past 10^14 is
    -- exponential ('1.7e+15'), which is no stream id.
    local seq = string.format('%d', redis.call('INCR', seqk))
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
    if users ~= '' then redis.call('SADD', users, user) end
    -- The user's own channel: only nodes with a connection of theirs hear it.
    redis.call(publish, channel, user .. '\n' .. seq .. '\n' .. frame)
    out[#out + 1] = seq
    out[#out + 1] = id
    out[#out + 1] = '0'
  end
end
return out
"#;

/// Erasure (ARGV: contact, mode, count, then per mailbox its user and key base; KEYS[1]
/// the first mailbox's log, which routes the call in a cluster). Mode `contact`: in each
/// mailbox, the messages with `contact`, found through that conversation's list of seqs.
/// Mode `all`: up to `count` of one mailbox's oldest messages (the contact's own, in
/// batches). Each message's dedupe key goes with it (unless a later message holds it
/// now); the seq counters stay. Returns the removed messages as mailbox, frame pairs.
const ERASE: &str = r#"
local contact, mode, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local user, u = ARGV[i], ARGV[i + 1]
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

/// Where one user's keys and channel are: `<bytes of the id>:<id>` (the length makes
/// every user's names their own whatever the id contains), a hash tag in a cluster so
/// that the mailbox's keys and channel share a slot.
#[derive(Clone)]
struct Names {
    prefix: String,
    cluster: bool,
}

impl Names {
    fn user(&self, user: &str) -> String {
        crate::redis_conn::tag(self.cluster, &format!("{}:{user}", user.len()))
    }

    /// The base of `user`'s mailbox keys (`{p}:m:<user>`).
    fn mailbox(&self, user: &str) -> String {
        format!("{}:m:{}", self.prefix, self.user(user))
    }

    /// The channel of `user`'s commits (`{p}:u:<user>`): a node listens to it while it
    /// holds a connection of theirs. A sharded channel in a cluster.
    fn channel(&self, user: &str) -> String {
        format!("{}:u:{}", self.prefix, self.user(user))
    }
}

/// A subscription's way in: a plain one's sink, or the cluster connection that holds
/// the sharded subscriptions.
#[derive(Clone)]
enum Sink {
    Plain(redis::aio::PubSubSink),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Sink {
    async fn join(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Sink::Plain(s) => s.subscribe(channels).await,
            // One at a time: channels of several slots cannot share an SSUBSCRIBE. A few
            // at once, since an outage resubscribes every watched user.
            Sink::Cluster(c) => {
                let owned: Vec<String> = channels.to_vec();
                let c = c.clone();
                let mut joins = futures_util::stream::iter(owned)
                    .map(move |ch| {
                        let mut c = c.clone();
                        async move { c.ssubscribe(ch).await }
                    })
                    .buffer_unordered(32);
                while let Some(r) = joins.next().await {
                    r?;
                }
                Ok(())
            }
        }
    }

    async fn leave(&mut self, channel: String) -> redis::RedisResult<()> {
        match self {
            Sink::Plain(s) => s.unsubscribe(channel).await,
            Sink::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

/// The users this node listens for, and the subscription it listens through.
struct Interest {
    names: Names,
    /// Watches held, by user.
    users: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
    /// The live subscription's sink, while there is one.
    sink: parking_lot::Mutex<Option<Sink>>,
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
            match tokio::time::timeout(COMMAND_TIMEOUT, sink.join(&[self.names.channel(user)])).await {
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
                    let ch = me.names.channel(&user);
                    let _ = tokio::time::timeout(COMMAND_TIMEOUT, sink.leave(ch)).await;
                }
            });
        }
    }

    /// A new subscription: every watched user's channel on it, then it is the one
    /// (un)subscriptions go through.
    async fn adopt(&self, mut sink: Sink) -> redis::RedisResult<()> {
        let _turn = self.turn.lock().await;
        let channels: Vec<String> = self.users.lock().keys().map(|u| self.names.channel(u)).collect();
        for batch in channels.chunks(500) {
            sink.join(batch).await?;
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
    names: Names,
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
        let names = Names { prefix: prefix.clone(), cluster: target.is_cluster() };
        let subscribed = Arc::new(AtomicBool::new(false));
        let node = uuid::Uuid::now_v7().simple().to_string();
        let interest = Arc::new(Interest {
            names: names.clone(),
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
            names,
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
        format!("{}:{what}", self.names.mailbox(user))
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
        let Some(first) = users.first() else { return Ok(0) };
        let mut c = self.conn.clone();
        let mut inv = self.erase.prepare_invoke();
        inv.key(self.key(first, "log")).arg(contact).arg(mode).arg(ERASE_BATCH);
        for u in users {
            inv.arg(u).arg(self.names.mailbox(u));
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

    /// One call of [`APPEND`]: `msgs` in one slot (any mailboxes outside a cluster); with
    /// `keyed`, a message without a dedupe key of its own gets one made of its id. Counted
    /// in the commit metrics.
    async fn commit(
        &self,
        msgs: &[&NewMessage],
        users: &str,
        keyed: bool,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut inv = self.append.prepare_invoke();
        inv.key(self.key(&msgs[0].user, "seq"))
            .arg(unix_now())
            .arg(self.config.dedupe_window.as_millis().max(1) as u64)
            .arg(self.config.retention_max_messages)
            .arg(self.config.retention_max_age.as_millis().clamp(1, i64::MAX as u128) as u64)
            .arg(if self.names.cluster { "SPUBLISH" } else { "PUBLISH" })
            .arg(users)
            .arg(msgs.len());
        for m in msgs {
            let dedupe = match &m.dedupe_key {
                Some(k) => k.clone(),
                None if keyed => format!("engine|{}:{}", m.id.len(), m.id),
                None => String::new(),
            };
            inv.arg(self.names.mailbox(&m.user))
                .arg(self.names.channel(&m.user))
                .arg(&m.user)
                .arg(&m.id)
                .arg(&m.contact)
                .arg(dedupe)
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

    /// An append in a cluster, where each mailbox lives on a slot of its own and no script
    /// takes two. The invariant (ARCHITECTURE.md, "Commits in a Redis Cluster"):
    /// - each mailbox commits its messages in one script (its part is all or nothing, its
    ///   seqs contiguous), the mailboxes side by side;
    /// - the append is acknowledged (`Ok`) only when every mailbox has its message; a
    ///   mailbox that failed is tried once more, and then the append fails (503);
    /// - every message of an append spread over several mailboxes carries a dedupe key (its
    ///   own, else one made from its id), so a mailbox that had committed before the
    ///   failure answers a retry as a duplicate: a retry with the caller's key completes
    ///   the append, with no message twice;
    /// - each mailbox says whether it held the message already; callers treat an append as
    ///   a duplicate only when every mailbox did, so a retry that completed a partial
    ///   append reads as new and the caller finishes what follows (the WeChat send, the
    ///   inbox).
    async fn append_across_slots(&self, msgs: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        // The users first, for retention and erasure to find: a user listed whose mailbox
        // then failed costs them one empty look.
        let mut users: Vec<&str> = msgs.iter().map(|m| m.user.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let mut c = self.conn.clone();
        let _: i64 = c.sadd(format!("{}:users", self.prefix), &users).await.map_err(unavailable)?;
        // Per mailbox, its messages in slice order.
        let mut groups: Vec<Vec<usize>> = Vec::with_capacity(users.len());
        for u in &users {
            groups.push((0..msgs.len()).filter(|&i| msgs[i].user == *u).collect());
        }
        let keyed = groups.len() > 1;
        let mut done: Vec<Option<Appended>> = vec![None; msgs.len()];
        let mut failure = None;
        for attempt in 0..2 {
            let pending: Vec<&Vec<usize>> = groups.iter().filter(|g| done[g[0]].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let results = futures_util::future::join_all(pending.iter().map(|g| {
                let part: Vec<&NewMessage> = g.iter().map(|&i| &msgs[i]).collect();
                async move { self.commit(&part, "", keyed).await }
            }))
            .await;
            for (g, r) in pending.iter().zip(results) {
                match r {
                    Ok(appended) => {
                        for (&i, a) in g.iter().zip(appended) {
                            done[i] = Some(a);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(user = %msgs[g[0]].user, error = %e, "redis: a mailbox of an append failed");
                        failure = Some(e);
                    }
                }
            }
        }
        done.into_iter().collect::<Option<Vec<Appended>>>().ok_or_else(|| {
            failure.unwrap_or_else(|| Unavailable::Failed("redis: an append failed".into()).into())
        })
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

/// What a node does with what it hears from the broker.
struct Hearing {
    /// `ping <this node> `: our own pings, back through Redis.
    own_ping: String,
    fanout: Arc<dyn Fanout>,
    /// What this node hears of the broker, whoever it is for (#12: a node that hears
    /// every node's users pays for it).
    received: metrics::Counter,
}

impl Hearing {
    fn heard(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else { return };
        // Our own ping: how long the broker and this subscription took (one clock, so no
        // skew between nodes).
        if let Some(sent) = text.strip_prefix(&self.own_ping).and_then(|t| t.parse::<i64>().ok()) {
            let lag = (unix_ms() - sent).max(0) as f64 / 1000.0;
            metrics::gauge!("imgate_broker_lag_seconds").set(lag);
            return;
        }
        let mut parts = text.splitn(3, '\n');
        let (Some(user), Some(seq), Some(frame)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Ok(seq) = seq.parse::<u64>() else { return };
        self.received.increment(1);
        self.fanout.committed(user, seq, &EncodedMessage::from_stored(frame.to_owned()));
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
    let mut listener = Listener {
        hearing: Hearing {
            own_ping: format!("{PING} {node} "),
            fanout,
            received: metrics::counter!("imgate_broker_messages_received_total"),
        },
        target,
        channel,
        interest,
        subscribed,
        first: true,
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let heard_until_lost = if listener.target.is_cluster() {
            listener.follow_cluster().await
        } else {
            listener.follow_one().await
        };
        match heard_until_lost {
            Ok(()) => {
                delay = Duration::from_millis(100);
                tracing::error!("redis: the fan-out subscription went quiet or dropped; resubscribing");
            }
            Err(e) => tracing::warn!(error = %e, "redis: cannot subscribe; retrying"),
        }
        listener.interest.drop_sink();
        listener.subscribed.store(false, Ordering::Release);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// The subscription loop's state: where it listens, for whom, and what it does with it.
struct Listener {
    target: Target,
    /// The nodes' channel (pings).
    channel: String,
    interest: Arc<Interest>,
    /// Up (for `/readyz`).
    subscribed: Arc<AtomicBool>,
    hearing: Hearing,
    /// No subscription yet: the first is not a *re*subscription.
    first: bool,
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "subscribing timed out"))
}

impl Listener {
    /// The subscription is up: say so, and catch connections up with what was published
    /// while it was not (that is only in the mailboxes).
    fn caught_up(&mut self) {
        self.subscribed.store(true, Ordering::Release);
        if !self.first {
            tracing::warn!("redis: resubscribed; catching connections up from their mailboxes");
        }
        self.first = false;
        self.hearing.fanout.resync();
    }

    /// One server (or the master the sentinels name): one pub/sub connection. Returns when
    /// it drops or goes quiet.
    async fn follow_one(&mut self) -> redis::RedisResult<()> {
        let attempt = async {
            // Through the sentinels each time, if that is the mode: after a failover the
            // master is elsewhere.
            let (mut sink, stream) = self.target.pubsub().await?.split();
            sink.subscribe(&self.channel).await?;
            self.interest.adopt(Sink::Plain(sink)).await?;
            Ok::<_, redis::RedisError>(stream)
        };
        let mut messages =
            tokio::time::timeout(COMMAND_TIMEOUT, attempt).await.map_err(|_| timed_out())??;
        self.caught_up();
        while let Ok(Some(msg)) = tokio::time::timeout(SILENCE, messages.next()).await {
            self.hearing.heard(msg.get_payload_bytes());
        }
        Ok(())
    }

    /// A cluster: one cluster connection in RESP3, the pings' channel plain (PUBLISH
    /// reaches every node), each watched user's channel sharded (SSUBSCRIBE, on that
    /// channel's shard only). Returns when the pings stop or a node's connection drops.
    async fn follow_cluster(&mut self) -> redis::RedisResult<()> {
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let attempt = async {
            let mut conn = self.target.cluster_pubsub(tx).await?;
            conn.subscribe(&self.channel).await?;
            self.interest.adopt(Sink::Cluster(conn)).await
        };
        tokio::time::timeout(COMMAND_TIMEOUT, attempt).await.map_err(|_| timed_out())??;
        self.caught_up();
        while let Ok(Some(push)) = tokio::time::timeout(SILENCE, pushes.recv()).await {
            match push.kind {
                redis::PushKind::Message | redis::PushKind::SMessage => {
                    if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                        self.hearing.heard(payload);
                    }
                }
                // A node's connection dropped: what was published on it meanwhile is
                // gone, and its slots may have moved to a promoted replica. Start over: a
                // new connection, every watched user subscribed where their slot is now,
                // and a catch-up from the mailboxes once that is done.
                redis::PushKind::Disconnection => return Ok(()),
                _ => {}
            }
        }
        Ok(())
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
        if !self.names.cluster {
            // One script, every mailbox: all or nothing.
            let all: Vec<&NewMessage> = msgs.iter().collect();
            let users = format!("{}:users", self.prefix);
            return self.commit(&all, &users, false).await;
        }
        self.append_across_slots(&msgs).await
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
        // A cluster's mailboxes live on slots of their own: one a call there.
        let per_call = if self.names.cluster { 1 } else { ERASE_USERS };
        for chunk in others.chunks(per_call) {
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

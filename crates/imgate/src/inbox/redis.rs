//! The shared engine: every node reads and writes the same conversations in Redis.
//!
//! A conversation is a hash `{v, data}`. An update reads it, applies the edit here, and
//! writes it back with a script that checks `v` is still what was read (compare and set);
//! when another node wrote in between, the edit runs again on the new record. So two
//! nodes' claims of one conversation have exactly one winner, and the loser sees whom.
//! Presence counts each node's sockets per agent; a node's counts hold while its own
//! key, renewed by its sweeper, lives: a node that died stops counting.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManagerConfig;
use redis::{AsyncCommands, Script};
use serde_json::Value;

use super::model::Conversation;
use super::{Conversations, Edit, InboxError, Presence};
use crate::redis_conn::{Conn, Target};
use crate::store::{StoreError, Unavailable};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node's sockets count without the node saying it is alive (it renews every
/// sweep, at most every 10 s).
const NODE_TTL_SECS: u64 = 30;
/// A busy conversation may be written by another node between our read and write; after
/// this many tries the update gives up (503) rather than spin.
const CAS_TRIES: usize = 64;

/// KEYS[1] conversation, KEYS[2] the account's index, KEYS[3] the account's open load
/// per agent; ARGV: version read, new version, data, contact, the agent it counted
/// against before and after ('' for none).
const CAS: &str = r"
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'data', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
if ARGV[5] ~= ARGV[6] then
  if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[5], -1) end
  if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[6], 1) end
end
return 1
";

/// Remove a conversation if it is still the version read: KEYS as for CAS; ARGV: version
/// read, contact, the agent it counted against ('' for none). -1 when another node wrote
/// first, else how many records went (0 or 1).
const REMOVE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v') or '0'
if v ~= ARGV[1] then return -1 end
local n = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], -1) end
return n
";

/// The live connections of an agent: KEYS[1] its per-node counts; ARGV[1] the node-key
/// prefix, ARGV[2] this node, ARGV[3] the change (+1, -1 or 0).
const COUNT: &str = r"
if ARGV[3] ~= '0' then
  local n = redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
  if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[2]) end
end
local t = 0
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  if redis.call('EXISTS', ARGV[1] .. h[i]) == 1 then
    t = t + tonumber(h[i + 1])
  else
    -- a node that died: its sockets are gone
    redis.call('HDEL', KEYS[1], h[i])
  end
end
return t
";

/// Routing one account: the lock's lease (a node that dies holding it frees it then),
/// and how long a router waits for it before giving up (the sweep routes again).
const ROUTING_LEASE_MS: u64 = 5_000;
const ROUTING_WAIT: Duration = Duration::from_secs(3);

/// KEYS[1] the lock; ARGV[1] the holder's token: released only by its holder.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct RedisConversations {
    conn: Conn,
    /// [`P`], as a hash tag in a cluster.
    p: String,
    node: String,
    cas: Script,
    remove: Script,
    count: Script,
    unlock: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    Unavailable::Redis(e).into()
}

fn damaged(e: serde_json::Error) -> StoreError {
    Unavailable::Damaged(format!("redis: a stored conversation is damaged: {e}")).into()
}

/// The prefix of every key: `imgate:inbox`, a hash tag in a cluster, where scripts and
/// pipelines here take several keys at once (a conversation, its account's index and
/// load; an agent's connections and the nodes' liveness): the inbox lives on one slot.
const P: &str = "imgate:inbox";

impl RedisConversations {
    fn conv_key(&self, appid: &str, contact: &str) -> String {
        // The appid's length first: no appid and contact pair reads as another.
        format!("{}:c:{}:{appid}:{contact}", self.p, appid.len())
    }

    fn routing_key(&self, appid: &str) -> String {
        format!("{}:route:{appid}", self.p)
    }

    fn index_key(&self, appid: &str) -> String {
        format!("{}:idx:{appid}", self.p)
    }

    /// [`RedisConversations::open_at`] one server at `url`.
    pub fn open(url: &str) -> Result<std::sync::Arc<RedisConversations>, StoreError> {
        RedisConversations::open_at(&Target::single(url)?)
    }

    pub fn open_at(target: &Target) -> Result<std::sync::Arc<RedisConversations>, StoreError> {
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = target.conn(cm)?;
        Ok(std::sync::Arc::new(RedisConversations {
            p: target.tag(P),
            conn,
            node: uuid::Uuid::now_v7().simple().to_string(),
            cas: Script::new(CAS),
            remove: Script::new(REMOVE),
            count: Script::new(COUNT),
            unlock: Script::new(UNLOCK),
        }))
    }

    async fn read(&self, appid: &str, contact: &str) -> Result<(String, Option<Conversation>), StoreError> {
        let mut c = self.conn.clone();
        let (v, data): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.conv_key(appid, contact))
            .arg("v")
            .arg("data")
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let conv = data.map(|d| serde_json::from_str(&d)).transpose().map_err(damaged)?;
        Ok((v.unwrap_or_else(|| "0".into()), conv))
    }

    async fn connections(&self, agent: &str, change: i64) -> Result<u64, StoreError> {
        let mut c = self.conn.clone();
        // Say this node is alive before counting on it.
        if change > 0 {
            self.heartbeat().await?;
        }
        let n: i64 = self
            .count
            .key(format!("{}:conns:{agent}", self.p))
            .arg(format!("{}:node:", self.p))
            .arg(&self.node)
            .arg(change)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u64)
    }
}

#[async_trait]
impl Conversations for RedisConversations {
    async fn get(&self, appid: &str, contact: &str) -> Result<Option<Conversation>, StoreError> {
        Ok(self.read(appid, contact).await?.1)
    }

    async fn update(
        &self,
        appid: &str,
        contact: &str,
        edit: Edit,
    ) -> Result<(Option<Conversation>, Option<Conversation>), InboxError> {
        for _ in 0..CAS_TRIES {
            let (v, before) = self.read(appid, contact).await?;
            let Some(after) = edit(before.clone())? else { return Ok((before, None)) };
            let next = v.parse::<u64>().unwrap_or(0) + 1;
            let data = serde_json::to_string(&after).map_err(damaged)?;
            let mut c = self.conn.clone();
            let done: i64 = self
                .cas
                .key(self.conv_key(appid, contact))
                .key(self.index_key(appid))
                .key(format!("{}:load:{appid}", self.p))
                .arg(&v)
                .arg(next)
                .arg(data)
                .arg(contact)
                .arg(before.as_ref().and_then(Conversation::load_of).unwrap_or(""))
                .arg(after.load_of().unwrap_or(""))
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if done == 1 {
                return Ok((before, Some(after)));
            }
        }
        Err(InboxError::Store(
            Unavailable::Failed("redis: the conversation kept changing under this update; try again".into())
                .into(),
        ))
    }

    async fn remove(&self, appid: &str, contact: &str) -> Result<bool, StoreError> {
        for _ in 0..CAS_TRIES {
            let (v, before) = self.read(appid, contact).await?;
            let mut c = self.conn.clone();
            let done: i64 = self
                .remove
                .key(self.conv_key(appid, contact))
                .key(self.index_key(appid))
                .key(format!("{}:load:{appid}", self.p))
                .arg(&v)
                .arg(contact)
                .arg(before.as_ref().and_then(Conversation::load_of).unwrap_or(""))
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if done >= 0 {
                return Ok(done == 1);
            }
        }
        Err(Unavailable::Failed("redis: the conversation kept changing under its removal; try again".into())
            .into())
    }

    async fn list(&self, appid: &str) -> Result<Vec<Conversation>, StoreError> {
        let mut c = self.conn.clone();
        let contacts: Vec<String> = c.smembers(self.index_key(appid)).await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(contacts.len());
        // In pipelines of 500: one round trip per 500 conversations, bounded replies.
        for chunk in contacts.chunks(500) {
            let mut pipe = redis::pipe();
            for contact in chunk {
                pipe.hget(self.conv_key(appid, contact), "data");
            }
            let rows: Vec<Option<String>> = pipe.query_async(&mut c).await.map_err(unavailable)?;
            for d in rows.into_iter().flatten() {
                out.push(serde_json::from_str(&d).map_err(damaged)?);
            }
        }
        Ok(out)
    }

    async fn open_load(&self, appid: &str) -> Result<HashMap<String, usize>, StoreError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, i64> =
            c.hgetall(format!("{}:load:{appid}", self.p)).await.map_err(unavailable)?;
        Ok(all.into_iter().filter(|(_, n)| *n > 0).map(|(a, n)| (a, n as usize)).collect())
    }

    async fn canned(&self, appid: &str) -> Result<Value, StoreError> {
        let mut c = self.conn.clone();
        let d: Option<String> = c.get(format!("{}:canned:{appid}", self.p)).await.map_err(unavailable)?;
        Ok(d.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Array(Vec::new())))
    }

    async fn set_canned(&self, appid: &str, canned: Value) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        c.set::<_, _, ()>(format!("{}:canned:{appid}", self.p), canned.to_string()).await.map_err(unavailable)
    }

    async fn connected(&self, agent: &str) -> Result<bool, StoreError> {
        Ok(self.connections(agent, 1).await? == 1)
    }

    async fn disconnected(&self, agent: &str, now_ms: i64) -> Result<bool, StoreError> {
        let left = self.connections(agent, -1).await?;
        if left == 0 {
            let mut c = self.conn.clone();
            c.set::<_, _, ()>(format!("{}:offline:{agent}", self.p), now_ms).await.map_err(unavailable)?;
        }
        Ok(left == 0)
    }

    async fn set_away(&self, agent: &str, away: bool) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = format!("{}:away:{agent}", self.p);
        if away { c.set::<_, _, ()>(key, 1).await } else { c.del::<_, ()>(key).await }.map_err(unavailable)
    }

    async fn presence(&self, agent: &str) -> Result<Presence, StoreError> {
        let connections = self.connections(agent, 0).await?;
        let mut c = self.conn.clone();
        let (away, offline): (Option<i64>, Option<i64>) = c
            .mget(&[format!("{}:away:{agent}", self.p), format!("{}:offline:{agent}", self.p)])
            .await
            .map_err(unavailable)?;
        Ok(Presence { connections, away: away.is_some(), offline_since: offline })
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        c.set_ex::<_, _, ()>(format!("{}:node:{}", self.p, self.node), 1, NODE_TTL_SECS)
            .await
            .map_err(unavailable)
    }

    async fn routing_lock(&self, appid: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.conn.clone();
        let token = uuid::Uuid::now_v7().simple().to_string();
        let deadline = tokio::time::Instant::now() + ROUTING_WAIT;
        loop {
            let got: Option<String> = redis::cmd("SET")
                .arg(self.routing_key(appid))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ROUTING_LEASE_MS)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            if got.is_some() {
                return Ok(Some(token));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Unavailable::Failed(format!(
                    "redis: another node has been routing {appid} for {ROUTING_WAIT:?}"
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn routing_unlock(&self, appid: &str, token: Option<String>) -> Result<(), StoreError> {
        let Some(token) = token else { return Ok(()) };
        let mut c = self.conn.clone();
        self.unlock
            .key(self.routing_key(appid))
            .arg(token)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

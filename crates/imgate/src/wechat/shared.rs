//! Access tokens shared by every node through Redis: one node refreshes (the others wait
//! for its token), and a refused token is forgotten only if it is still the shared one.

use std::time::Duration;

use crate::redis_conn::Conn;
use imgate_wechat::SharedTokens;

pub struct RedisTokens {
    conn: Conn,
    /// `imgate:wx`, a hash tag in a cluster (as the rest of the WeChat state: `state.rs`).
    p: String,
}

/// How long a node may hold the refresh lock (longer than one token call can take).
const LOCK: Duration = Duration::from_secs(15);

const FORGET: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl RedisTokens {
    fn key(&self, appid: &str) -> String {
        format!("{}:token:{appid}", self.p)
    }

    pub fn new(conn: Conn) -> RedisTokens {
        let p = crate::redis_conn::tag(conn.is_cluster(), "imgate:wx");
        RedisTokens { conn, p }
    }
}

fn warn<T>(r: redis::RedisResult<T>) -> Option<T> {
    r.map_err(|e| tracing::warn!(error = %e, "redis: shared access token unavailable")).ok()
}

#[async_trait::async_trait]
impl SharedTokens for RedisTokens {
    async fn get(&self, appid: &str) -> Option<(String, u64)> {
        let mut c = self.conn.clone();
        let (token, ttl): (Option<String>, i64) =
            warn(redis::pipe().get(self.key(appid)).pttl(self.key(appid)).query_async(&mut c).await)?;
        Some((token?, (ttl.max(0) / 1000) as u64))
    }

    async fn lock(&self, appid: &str) -> bool {
        let mut c = self.conn.clone();
        let r: Option<Option<String>> = warn(
            redis::cmd("SET")
                .arg(format!("{}:lock", self.key(appid)))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(LOCK.as_millis() as u64)
                .query_async(&mut c)
                .await,
        );
        // Redis unreachable: refresh alone rather than not at all.
        r.is_none_or(|set| set.is_some())
    }

    async fn put(&self, appid: &str, token: &str, ttl_secs: u64) {
        let mut c = self.conn.clone();
        let _: Option<()> = warn(
            redis::pipe()
                .set_ex(self.key(appid), token, ttl_secs.max(1))
                .del(format!("{}:lock", self.key(appid)))
                .query_async(&mut c)
                .await,
        );
    }

    async fn unlock(&self, appid: &str) {
        let mut c = self.conn.clone();
        let _: Option<i64> =
            warn(redis::cmd("DEL").arg(format!("{}:lock", self.key(appid))).query_async(&mut c).await);
    }

    async fn forget(&self, appid: &str, token: &str) {
        let mut c = self.conn.clone();
        let _: Option<i64> =
            warn(redis::Script::new(FORGET).key(self.key(appid)).arg(token).invoke_async(&mut c).await);
    }
}

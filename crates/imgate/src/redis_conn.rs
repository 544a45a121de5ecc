//! How to reach Redis: from `[store]`, the clients, connections and subscriptions that
//! every Redis user in imgate (mailboxes, the team inbox, the WeChat state) goes through.
//!
//! - `single`: one server at `store.redis_url`. Connections are the crate's
//!   `ConnectionManager`, which reconnects to that address by itself.
//! - `sentinel`: the sentinels at `store.redis_urls` name the master of
//!   `store.redis_sentinel_master`. A [`Conn`] asks them once, keeps a `ConnectionManager`
//!   to that master, and asks again after an error that says the master may have moved
//!   (the connection failed, or the server answered READONLY: it is a replica now). The
//!   command that met the error fails (the caller answers 503, or retries); the next one
//!   goes to whichever master the sentinels name then. A subscription asks them each time
//!   it (re)subscribes.
//!
//! - `cluster`: the seed nodes at `store.redis_urls` name the rest. A [`Conn`] is the
//!   crate's cluster connection (made at the first command), which routes each command by
//!   its key's slot and follows MOVED and failovers by itself. Keys that one command or
//!   script takes together must share a slot: each user of Redis names its keys with a
//!   hash tag in this mode ([`Target::tag`]). Subscriptions are a cluster connection of
//!   their own ([`Target::cluster_pubsub`]), speaking RESP3 so that it can take sharded
//!   channels (`SSUBSCRIBE`); the crate resubscribes after a node's connection drops.
//!
//! TLS (`rediss://`) verifies the server against `store.redis_ca_file` when it is set,
//! else against the system's roots. rustls runs with the process's crypto provider: this
//! module brings none of its own. Passwords live in the URLs; nothing here prints a URL
//! (the crate's `ConnectionInfo` redacts its password in `Debug`, and its errors do not
//! repeat the URL), only `host:port`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, TlsCertificates, TlsMode, Value,
};

use crate::config::{RedisMode, StoreConfig};

/// How long asking the sentinels for the master (and checking its role) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A URL or setting that cannot work. Never carries the URL itself (it may hold a password).
    #[error("redis: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("redis: cannot read store.redis_ca_file {path}: {source}")]
    CaFile { path: String, source: std::io::Error },
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// Where Redis is, as `[store]` says. Cheap to clone.
#[derive(Clone)]
pub struct Target(Arc<Mode>);

enum Mode {
    Single(Client),
    Sentinel(Sentinels),
    Cluster(Seeds),
}

/// What building a cluster client takes: one for commands, one per subscription.
struct Seeds {
    urls: Vec<String>,
    ca: Option<TlsCertificates>,
}

impl Seeds {
    fn builder(&self) -> ClusterClientBuilder {
        let mut b = ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
            .connection_timeout(LOOKUP_TIMEOUT)
            .response_timeout(LOOKUP_TIMEOUT)
            .retries(2);
        if let Some(ca) = &self.ca
            && self.urls.iter().any(|u| u.starts_with("rediss://"))
        {
            b = b.certs(ca.clone());
        }
        b
    }
}

/// What building a sentinel client takes. A lookup builds its own (they are rare: at
/// start, and after the master seemed to move), so that no lookup waits for another's lock.
struct Sentinels {
    urls: Vec<String>,
    master: String,
    ca: Option<TlsCertificates>,
}

impl Target {
    /// One server at `url` (a `redis://` or `rediss://` URL), verified against the system's roots.
    pub fn single(url: &str) -> Result<Target, ConnError> {
        let client = Client::open(url).map_err(|e| invalid("store.redis_url", &e))?;
        Ok(Target(Arc::new(Mode::Single(client))))
    }

    /// What `[store]` names. Reads `store.redis_ca_file`; connects to nothing yet.
    pub fn from_config(c: &StoreConfig) -> Result<Target, ConnError> {
        let ca = if c.redis_ca_file.as_os_str().is_empty() {
            None
        } else {
            let pem = std::fs::read(&c.redis_ca_file).map_err(|source| ConnError::CaFile {
                path: c.redis_ca_file.display().to_string(),
                source,
            })?;
            Some(TlsCertificates { client_tls: None, root_cert: Some(pem) })
        };
        match c.redis_mode {
            RedisMode::Single => {
                let client = match &ca {
                    Some(certs) if c.redis_url.starts_with("rediss://") => {
                        Client::build_with_tls(c.redis_url.as_str(), certs.clone())
                    }
                    _ => Client::open(c.redis_url.as_str()),
                }
                .map_err(|e| invalid("store.redis_url", &e))?;
                Ok(Target(Arc::new(Mode::Single(client))))
            }
            RedisMode::Sentinel => {
                // Built once here so that a bad setting fails now, not at the first lookup.
                sentinel_client(&c.redis_urls, &c.redis_sentinel_master, ca.clone())?;
                Ok(Target(Arc::new(Mode::Sentinel(Sentinels {
                    urls: c.redis_urls.clone(),
                    master: c.redis_sentinel_master.clone(),
                    ca,
                }))))
            }
            RedisMode::Cluster => {
                const KEY: &str = "store.redis_urls";
                if c.redis_urls.is_empty() {
                    return Err(ConnError::Invalid {
                        key: KEY,
                        reason: "name at least one node of the cluster".into(),
                    });
                }
                let seeds = Seeds { urls: c.redis_urls.clone(), ca };
                // Built once here so that a bad setting fails now, not at the first command.
                seeds.builder().build().map_err(|e| invalid(KEY, &e))?;
                Ok(Target(Arc::new(Mode::Cluster(seeds))))
            }
        }
    }

    /// A Redis Cluster: keys taken together must share a slot ([`Target::tag`]).
    pub fn is_cluster(&self) -> bool {
        matches!(&*self.0, Mode::Cluster(_))
    }

    /// `name` as the part of a key that decides its slot: `{name}` in a cluster (a hash
    /// tag: every key holding it lives on one slot, so one script may take them all), as
    /// it is otherwise (keys keep the names they always had).
    pub fn tag(&self, name: &str) -> String {
        tag(self.is_cluster(), name)
    }

    /// A subscription to a Redis Cluster: a connection of its own, in RESP3, whose pushes
    /// (messages, and `Disconnection` when a node's connection drops) go to `pushes`.
    pub async fn cluster_pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<ClusterConnection> {
        let Mode::Cluster(seeds) = &*self.0 else {
            return Err(RedisError::from((ErrorKind::InvalidClientConfig, "not a cluster")));
        };
        let client =
            seeds.builder().use_protocol(redis::ProtocolVersion::RESP3).push_sender(pushes).build()?;
        client.get_async_connection().await
    }

    /// A connection for commands, shared by its clones. Lazy: nothing is dialled until the
    /// first command, so a node starts (not ready) while Redis is away.
    pub fn conn(&self, config: ConnectionManagerConfig) -> Result<Conn, ConnError> {
        match &*self.0 {
            Mode::Single(client) => {
                Ok(Conn(Inner::Direct(ConnectionManager::new_lazy_with_config(client.clone(), config)?)))
            }
            Mode::Sentinel(s) => Ok(Conn(Inner::Follow(Arc::new(Follow {
                target: self.clone(),
                db: master_of(&s.master)?.1.map_or(0, |i| i.redis_settings().db()),
                config,
                current: Mutex::new(Current::default()),
            })))),
            Mode::Cluster(seeds) => Ok(Conn(Inner::Cluster(Arc::new(Lazy {
                client: seeds.builder().build()?,
                conn: tokio::sync::OnceCell::new(),
            })))),
        }
    }

    /// A fresh pub/sub connection, to the master as the sentinels name it now (not for a
    /// cluster: [`Target::cluster_pubsub`]).
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        self.client().await?.get_async_pubsub().await
    }

    /// A client for the server to use now: the one server, or the master the sentinels name.
    async fn client(&self) -> RedisResult<Client> {
        match &*self.0 {
            Mode::Single(client) => Ok(client.clone()),
            Mode::Sentinel(s) => {
                let mut sentinel = sentinel_client(&s.urls, &s.master, s.ca.clone()).map_err(|e| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "sentinel", e.to_string()))
                })?;
                match tokio::time::timeout(LOOKUP_TIMEOUT, sentinel.async_get_client()).await {
                    Ok(r) => r,
                    Err(_) => {
                        Err(RedisError::from((ErrorKind::Io, "the sentinels did not name a master in time")))
                    }
                }
            }
            Mode::Cluster(_) => {
                Err(RedisError::from((ErrorKind::InvalidClientConfig, "a cluster has no one server")))
            }
        }
    }
}

/// [`Target::tag`], for whoever knows only whether it is a cluster.
pub fn tag(cluster: bool, name: &str) -> String {
    if cluster { format!("{{{name}}}") } else { name.to_owned() }
}

fn invalid(key: &'static str, e: &RedisError) -> ConnError {
    ConnError::Invalid { key, reason: e.to_string() }
}

/// `store.redis_sentinel_master`: a name, or `redis[s]://[user:password@]NAME[/db]` when
/// the master and replicas need credentials, TLS or a database of their own. Returns the
/// name and, for a URL, its connection settings.
fn master_of(setting: &str) -> Result<(String, Option<redis::ConnectionInfo>), ConnError> {
    const KEY: &str = "store.redis_sentinel_master";
    if !setting.contains("://") {
        return Ok((setting.to_owned(), None));
    }
    let mut url = url::Url::parse(setting)
        .map_err(|_| ConnError::Invalid { key: KEY, reason: "neither a name nor a redis:// URL".into() })?;
    let name = url.host_str().unwrap_or_default().to_owned();
    if name.is_empty() {
        return Err(ConnError::Invalid { key: KEY, reason: "the URL names no master (its host)".into() });
    }
    // The host is the master's name, not an address: parse the rest as the crate does
    // (percent-decoding the credentials) with any address in its place.
    url.set_host(Some("localhost"))
        .map_err(|_| ConnError::Invalid { key: KEY, reason: "not a redis:// URL".into() })?;
    let info = url.into_connection_info().map_err(|e| invalid(KEY, &e))?;
    Ok((name, Some(info)))
}

fn sentinel_client(
    urls: &[String],
    master: &str,
    ca: Option<TlsCertificates>,
) -> Result<SentinelClient, ConnError> {
    const KEY: &str = "store.redis_urls";
    if urls.is_empty() {
        return Err(ConnError::Invalid { key: KEY, reason: "name at least one sentinel".into() });
    }
    let mut addrs = Vec::with_capacity(urls.len());
    let mut auth: Option<(Option<String>, Option<String>)> = None;
    for u in urls {
        let info = u.as_str().into_connection_info().map_err(|e| invalid(KEY, &e))?;
        let r = info.redis_settings();
        let creds = (r.username().map(str::to_owned), r.password().map(str::to_owned));
        // The crate takes one set of credentials for all the sentinels.
        if auth.as_ref().is_some_and(|a| *a != creds) {
            return Err(ConnError::Invalid {
                key: KEY,
                reason: "every sentinel must have the same user and password".into(),
            });
        }
        auth = Some(creds);
        addrs.push(info.addr().clone());
    }
    let tls_sentinels = addrs.iter().filter(|a| matches!(a, ConnectionAddr::TcpTls { .. })).count();
    if tls_sentinels != 0 && tls_sentinels != addrs.len() {
        return Err(ConnError::Invalid {
            key: KEY,
            reason: "use rediss:// for every sentinel or for none".into(),
        });
    }
    let (name, settings) = master_of(master)?;
    if name.is_empty() {
        return Err(ConnError::Invalid {
            key: "store.redis_sentinel_master",
            reason: "name the master".into(),
        });
    }
    let mut b = SentinelClientBuilder::new(addrs, &name, SentinelServerType::Master)?;
    if let Some((user, password)) = auth {
        if let Some(u) = user {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = password {
            b = b.set_client_to_sentinel_password(p);
        }
    }
    if let Some(certs) = &ca
        && tls_sentinels > 0
    {
        b = b.set_client_to_sentinel_certificates(certs.clone());
    }
    if let Some(info) = settings {
        let r = info.redis_settings();
        if let Some(u) = r.username() {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = r.password() {
            b = b.set_client_to_redis_password(p);
        }
        if r.db() != 0 {
            b = b.set_client_to_redis_db(r.db());
        }
        if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
            b = b.set_client_to_redis_tls_mode(if *insecure { TlsMode::Insecure } else { TlsMode::Secure });
            if let Some(certs) = ca {
                b = b.set_client_to_redis_certificates(certs);
            }
        }
    }
    Ok(b.build()?)
}

/// A connection for commands: `ConnectionManager` to the one server, or to the master
/// the sentinels name, followed across a failover. Clones share one connection.
#[derive(Clone)]
pub struct Conn(Inner);

#[derive(Clone)]
enum Inner {
    Direct(ConnectionManager),
    Follow(Arc<Follow>),
    Cluster(Arc<Lazy>),
}

/// A cluster connection, made at the first command (so that a node starts, not ready,
/// while the cluster is away); a failed attempt is tried again at the next command.
struct Lazy {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl Lazy {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        // Bounded: the crate's first connection waits for the cluster as long as it takes,
        // and every command (readiness included) would wait behind it.
        let connect = || async {
            match tokio::time::timeout(LOOKUP_TIMEOUT, self.client.get_async_connection()).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::from((ErrorKind::Io, "the cluster did not answer in time"))),
            }
        };
        self.conn.get_or_try_init(connect).await.cloned()
    }
}

impl Conn {
    /// Whether this is a cluster's: keys taken together must share a slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }
}

struct Follow {
    target: Target,
    /// The master's database, as `store.redis_sentinel_master` names it.
    db: i64,
    config: ConnectionManagerConfig,
    current: Mutex<Current>,
}

/// A lookup of the master under way: every command that needs the master meanwhile
/// awaits this one instead of starting its own.
type Lookup = Shared<BoxFuture<'static, Result<(u64, ConnectionManager), String>>>;

#[derive(Default)]
struct Current {
    manager: Option<ConnectionManager>,
    /// Bumped for each new manager, so that an error met on an old one does not drop
    /// the one that replaced it.
    generation: u64,
    lookup: Option<Lookup>,
    address: Option<String>,
}

impl Follow {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn manager(self: &Arc<Self>) -> RedisResult<(u64, ConnectionManager)> {
        let lookup = {
            let mut c = self.current();
            if let Some(m) = &c.manager {
                return Ok((c.generation, m.clone()));
            }
            match &c.lookup {
                Some(l) => l.clone(),
                None => {
                    let l = self.clone().lookup().boxed().shared();
                    c.lookup = Some(l.clone());
                    l
                }
            }
        };
        lookup.await.map_err(no_master)
    }

    /// Ask the sentinels (bounded by LOOKUP_TIMEOUT), and keep a manager to the master
    /// they name.
    async fn lookup(self: Arc<Self>) -> Result<(u64, ConnectionManager), String> {
        let found = self.target.client().await;
        let mut c = self.current();
        c.lookup = None;
        let client = found.map_err(|e| e.to_string())?;
        let address = client.get_connection_info().addr().to_string();
        if c.address.as_deref() != Some(address.as_str()) {
            match &c.address {
                Some(old) => {
                    tracing::warn!(%old, new = %address, "redis: the sentinels name another master; following it")
                }
                None => tracing::info!(master = %address, "redis: the sentinels name the master"),
            }
            c.address = Some(address);
        }
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone())
            .map_err(|e| e.to_string())?;
        c.generation += 1;
        c.manager = Some(manager.clone());
        Ok((c.generation, manager))
    }

    /// The manager of `generation` met an error that says the master may have moved:
    /// the next command asks the sentinels again.
    fn forget(&self, generation: u64) {
        let mut c = self.current();
        if c.generation == generation {
            c.manager = None;
        }
    }
}

fn no_master(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Io, "no master found through the sentinels", detail))
}

/// An error after which the master may be elsewhere: the connection broke or timed out.
fn master_may_have_moved(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// The server is a replica now (a failover demoted it) and refused the command unrun.
fn refused_as_replica(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) || e.code() == Some("READONLY")
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Direct(m) => m.req_packed_command(cmd),
            Inner::Cluster(l) => Box::pin(async move { l.get().await?.req_packed_command(cmd).await }),
            Inner::Follow(f) => Box::pin(async move {
                let (generation, mut m) = f.manager().await?;
                let (generation, r) = match m.req_packed_command(cmd).await {
                    Err(e) if refused_as_replica(&e) => {
                        // Not run at all, so safe to send once more, to the new master.
                        f.forget(generation);
                        let (generation, mut m) = f.manager().await?;
                        (generation, m.req_packed_command(cmd).await)
                    }
                    r => (generation, r),
                };
                if let Err(e) = &r
                    && (master_may_have_moved(e) || refused_as_replica(e))
                {
                    f.forget(generation);
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Direct(m) => m.req_packed_commands(cmd, offset, count),
            Inner::Cluster(l) => {
                Box::pin(async move { l.get().await?.req_packed_commands(cmd, offset, count).await })
            }
            Inner::Follow(f) => Box::pin(async move {
                let (generation, mut m) = f.manager().await?;
                let r = m.req_packed_commands(cmd, offset, count).await;
                // Not sent again: a pipeline refused halfway may have run its first part.
                if let Err(e) = &r
                    && (master_may_have_moved(e) || refused_as_replica(e))
                {
                    f.forget(generation);
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Direct(m) => m.get_db(),
            Inner::Follow(f) => f.db,
            Inner::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_setting_is_a_name_or_a_url_whose_host_is_the_name() {
        assert_eq!(master_of("mymaster").unwrap().0, "mymaster");
        let (name, info) = master_of("rediss://imgate:p%40ss@mymaster/2").unwrap();
        let info = info.unwrap();
        assert_eq!(name, "mymaster");
        assert_eq!(info.redis_settings().username(), Some("imgate"));
        assert_eq!(info.redis_settings().password(), Some("p@ss"));
        assert_eq!(info.redis_settings().db(), 2);
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
        assert!(master_of("redis://").is_err());
    }

    #[test]
    fn errors_about_urls_do_not_repeat_them() {
        let urls = vec!["redis://:hunter2@127.0.0.1:1".to_owned(), "redis://:other@127.0.0.1:2".to_owned()];
        let e = sentinel_client(&urls, "m", None).err().expect("credentials differ").to_string();
        assert!(!e.contains("hunter2") && !e.contains("other"), "{e}");
        let e = Target::single("redis://:hunter2@127.0.0.1:notaport").err().expect("bad port").to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}

//! Configuration: defaults → `imgate.toml` → `IMGATE_*` environment → command-line flags,
//! merged and validated once, then passed explicitly to whatever needs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use time::UtcOffset;

/// Every key, for `imgate serve --help`. Keep in step with the structs below.
pub const KEYS_HELP: &str = "\
CONFIGURATION KEYS (imgate.toml; env IMGATE_<KEY>, sections joined by '__', e.g. IMGATE_STORE__SYNC=full)
  listen = \"127.0.0.1:1234\"          address to listen on (the seed's port)
  data_dir = \"./data\"                where the embedded store keeps its files
  log = \"imgate=info\"                tracing filter (RUST_LOG syntax)
  log_format = \"text\"                text: lines for people; json: one JSON object per line, with
                                     the request_id that HTTP answers carry in X-Request-Id
  shutdown_grace = \"10s\"             how long SIGTERM/SIGINT waits for sockets and commits

  [store]
  engine = \"sqlite\"                  the mailbox engine: sqlite (embedded, no other service) or
                                     redis (several nodes share mailboxes and live delivery)
  redis_mode = \"single\"              how engine = \"redis\" reaches Redis: single (redis_url),
                                     sentinel (redis_urls, redis_sentinel_master: follows a
                                     promoted replica by itself) or cluster (redis_urls)
  redis_url = \"redis://127.0.0.1:6379\"  the Redis of redis_mode = \"single\"; rediss:// for TLS,
                                     redis://user:password@host for an ACL user
  redis_urls = []                    the sentinels (redis_mode = \"sentinel\") or some nodes of the
                                     cluster (\"cluster\"): redis:// or rediss:// URLs sharing
                                     one user and password
  redis_sentinel_master = \"\"         the master's name at the sentinels, or
                                     redis[s]://user:password@NAME[/db] when the master and
                                     replicas need credentials or TLS of their own
  redis_ca_file = \"\"                 PEM CA bundle that rediss:// servers are verified against
                                     (default: the system's roots)
  sync = \"normal\"                    normal: an acknowledged message survives a crash of imgate
                                     (kill -9); full: it also survives power loss (fsync per commit)
  retention_max_messages = 10000     messages kept per conversation (mailbox and contact): one
                                     busy sender never removes another's messages
  retention_max_age = \"30d\"          older messages are removed
  dedupe_window = \"24h\"              how long a message id is remembered to drop retries
  max_batch = 512                    most messages in one group commit
  index_max_mailboxes = 100000       mailboxes whose marks the sqlite engine holds in memory; the
                                     least recently used leave and are read back from disk

  [hub]
  heartbeat_interval = \"25s\"         heartbeat frame (code 101) and WebSocket ping period; the
                                     first one is jittered
  idle_timeout = \"60s\"               a connection silent this long (no frame, no pong) is closed
                                     (4000); one write blocked this long closes it too (4008)
  queue_capacity = 1024              frames queued per connection; a connection whose queue is
                                     full is closed with 4008 and catches up with since=SEQ
  queue_max_bytes = 1048576          bytes queued or being written per connection (1 MiB); past
                                     it, closed with 4008 (one frame always fits); also the most a
                                     replay page reads
  total_queue_max_bytes = 268435456  bytes queued, being written or replayed for all connections
                                     (256 MiB); an offer past it closes its connection with 4008,
                                     a replay waits (up to idle_timeout). With the defaults,
                                     10,000 stalled readers pin at most 256 MiB of frames plus
                                     ~137 KiB each of socket buffers: under 1.7 GB
  max_connections_per_user = 32      more connections for one user are refused (429)
  write_buffer_size = 4096           bytes a socket buffers before writing (tungstenite's
                                     default, 128 KiB, costs memory on every connection)
  read_buffer_size = 512             bytes a socket's read buffer starts with (it grows for a larger
                                     frame); clients send little, and idle connections are many

  [limits]
  http_body_max = 65536              largest HTTP body (64 KiB; WeChat messages are small), and
                                     about the largest frame a message may become
  ws_frame_max = 65536               largest frame a client may send (64 KiB)
  history_page_max = 200             most messages one history page returns
  sender_rate = 200                  messages a second one sender may send (POST /send, send_xml),
                                     refilling its bucket; over it: 429 with Retry-After
  sender_burst = 2000                messages one sender may send at once before sender_rate applies

  [http]
  header_read_timeout = \"10s\"        a connection's first request head must arrive within this
                                     (a silent or half-sent request is closed)
  keepalive_timeout = \"75s\"          after an answer, the next request's head must arrive within
                                     this (above nginx's upstream keepalive_timeout, 60 s)
  body_timeout = \"60s\"               a request's whole body must arrive within this (408)
  write_timeout = \"60s\"              an answer's write blocked this long closes the connection
                                     (WebSockets: hub.idle_timeout)
  handshake_timeout = \"10s\"          a WebSocket upgrade must be answered within this (503)
  max_connections = 50000            open connections, WebSockets included; lowered at start to fit
                                     the open-file limit. Over it only /healthz is answered (16
                                     more), the rest get 503 or are closed

  [auth]
  mode = \"open\"                      open: anyone names their userid (the seed's test); on an
                                     address other than loopback only if written here explicitly;
                                     token: WebSocket users present an HS256 JWT (sub = userid),
                                     HTTP senders a JWT or an API key; /metrics needs an API key
  jwt_secret = \"\"                    HS256 secret, at least 32 bytes (token mode; empty = no JWTs)
  api_keys = []                      keys of at least 32 characters that backends send as
                                     'Authorization: Bearer KEY' or X-Api-Key (never in a URL);
                                     a key may act as any ?userid= (connect, read, send)
  allowed_origins = []               Origins allowed to open a WebSocket; empty allows any
  leeway = \"30s\"                     clock skew allowed on a JWT's exp and nbf (at most 5m); a
                                     WebSocket is closed (4001) this long after its token's exp

  [bench]
  noop_route = false                 POST /bench/noop parses a send like /send and answers without
                                     storing or delivering: the ceiling for benchmarks. Off in
                                     production.

  [wechat]
  api_base = \"https://api.weixin.qq.com\"  WeChat's API (a stand-in's URL in tests)
  token_mode = \"stable\"             stable: cgi-bin/stable_token, shared safely by several callers;
                                     legacy: cgi-bin/token (each fetch invalidates the last)
  api_timeout = \"10s\"               timeout of one call to WeChat's API
  media_max = 10485760               largest media file downloaded or uploaded (10 MiB)
  upload_quota_bytes = 104857600     bytes one user may upload per UTC day (100 MiB); an upload
                                     past it is refused with 429 and nothing is kept
  media_dir = \"\"                     where media files are kept; empty = <data_dir>/media. With
                                     engine = \"redis\", a directory every node shares (NFS...)
  callback_max_age = \"5m\"            a callback stamped further from this server's clock is refused
                                     (a replay of a logged URL); 0s turns the check off
  [[wechat.accounts]]                one per Official Account; none = every recipient is a
                                     gateway user (the seed's test)
  original_id = \"gh_...\"            the account's original id: ToUserName of its messages
  appid = \"wx...\"                   callback URL: /im_component/wx_official_account/callback/APPID
  secret = \"...\"                    AppSecret (or env IMGATE_WECHAT_<APPID>_SECRET)
  token = \"...\"                     the callback token (or env IMGATE_WECHAT_<APPID>_TOKEN)
  encoding_aes_key = \"...\"          43 characters for compatible/safe mode; empty = plaintext
                                     (or env IMGATE_WECHAT_<APPID>_ENCODING_AES_KEY)
  company_id = \"...\"                company_id of this account's messages
  agents = [\"...\"]                  users who receive the account's messages; empty = the user
                                     named by ToUserName (the original id)
  routing = \"all\"                   who answers a follower (docs/inbox.md): all: every agent
                                     (no owner); claim: the first agent to claim it; round_robin:
                                     the online agent with the fewest open conversations
  max_open_per_agent = 20            round_robin: open conversations one agent is given at most;
                                     past it, a new conversation waits unassigned
  reassign_after = \"5m\"              claim/round_robin: an assignee offline this long while the
                                     follower waits loses the conversation (unassigned, or the next
                                     agent under round_robin)
  deliver_events = [\"subscribe\", \"unsubscribe\", \"SCAN\", \"CLICK\", \"VIEW\", \"scancode_push\", \"scancode_waitmsg\", \"LOCATION\"]
                                     the events (Event of MsgType event) that reach the agents; LOCATION
                                     only the first of a follower per hour. Others are answered
                                     success, stored nowhere, counted in imgate_wechat_events_dropped_total
  kf_accounts = { agent1 = \"kf2001@gh_x\" }
                                     agents' customer-service accounts: their replies carry
                                     customservice.kf_account; an agent not here sends as the account

  [protocol]
  create_time_zone = \"+08:00\"        zone of a CreateTime written as YYYY-MM-DD HH:MM:SS
  company_id = \"\"                    company_id of messages whose sender names none
  default_sender = \"system01\"        sender of a JSON send request that names none (open mode
                                     without ?userid=, an API key without one), as the seed's
                                     §2.1 request is written
";

/// The top-level keys of [`Config`].
const TOP_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "log",
    "log_format",
    "shutdown_grace",
    "store",
    "hub",
    "limits",
    "http",
    "auth",
    "bench",
    "wechat",
    "protocol",
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log: String,
    pub log_format: LogFormat,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub store: StoreConfig,
    pub hub: HubConfig,
    pub limits: Limits,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub bench: BenchConfig,
    pub wechat: WechatConfig,
    pub protocol: ProtocolConfig,
}

/// How log lines are written (`log_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    Stable,
    Legacy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WechatConfig {
    pub api_base: String,
    pub token_mode: TokenMode,
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
    pub media_max: usize,
    pub upload_quota_bytes: u64,
    pub media_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub callback_max_age: Duration,
    pub accounts: Vec<AccountConfig>,
    /// The channel's clock: the system's, unless a test moves it (WeChat's rules run for
    /// days). Not a key.
    #[serde(skip)]
    pub clock: imgate_wechat::Clock,
    /// How often a node looks for profiles over a day old (the daily refresh of followers
    /// who do not write). Not a key: tests shorten it.
    #[serde(skip)]
    pub profile_sweep_every: Duration,
}

impl Default for WechatConfig {
    fn default() -> Self {
        WechatConfig {
            api_base: "https://api.weixin.qq.com".into(),
            token_mode: TokenMode::Stable,
            api_timeout: Duration::from_secs(10),
            media_max: 10 << 20,
            upload_quota_bytes: 100 << 20,
            media_dir: PathBuf::new(),
            callback_max_age: Duration::from_secs(300),
            accounts: Vec::new(),
            clock: imgate_wechat::Clock::default(),
            profile_sweep_every: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    pub original_id: String,
    pub appid: String,
    pub secret: String,
    pub token: String,
    pub encoding_aes_key: String,
    pub company_id: String,
    pub agents: Vec<String>,
    /// Who answers a follower: see [`Routing`].
    pub routing: Routing,
    pub max_open_per_agent: usize,
    #[serde(with = "humantime_serde")]
    pub reassign_after: Duration,
    /// The events that reach the agents (docs/wechat.md); the rest are answered and dropped.
    pub deliver_events: Vec<String>,
    /// Agent → the account's customer-service account (`kf2001@gh_x`) its replies are sent
    /// as (`customservice.kf_account`); an agent not here sends as the account.
    pub kf_accounts: std::collections::BTreeMap<String, String>,
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            original_id: String::new(),
            appid: String::new(),
            secret: String::new(),
            token: String::new(),
            encoding_aes_key: String::new(),
            company_id: String::new(),
            agents: Vec::new(),
            routing: Routing::All,
            max_open_per_agent: 20,
            reassign_after: Duration::from_secs(300),
            // The menu's scan events open a reply window, as CLICK does: an agent must see
            // them to use it.
            deliver_events: [
                "subscribe",
                "unsubscribe",
                "SCAN",
                "CLICK",
                "VIEW",
                "scancode_push",
                "scancode_waitmsg",
                "LOCATION",
            ]
            .map(String::from)
            .to_vec(),
            kf_accounts: Default::default(),
        }
    }
}

/// How an account's conversations find their agent (docs/inbox.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Every agent receives and may answer every follower (imgate before the team inbox).
    #[default]
    All,
    /// A new conversation is unassigned until one agent claims it; only it replies.
    Claim,
    /// A new conversation goes to the online agent with the fewest open ones.
    RoundRobin,
}

/// Secrets stay out of logs.
impl std::fmt::Debug for AccountConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<set>" };
        f.debug_struct("AccountConfig")
            .field("original_id", &self.original_id)
            .field("appid", &self.appid)
            .field("secret", &set(&self.secret))
            .field("token", &set(&self.token))
            .field("encoding_aes_key", &set(&self.encoding_aes_key))
            .field("company_id", &self.company_id)
            .field("agents", &self.agents)
            .field("routing", &self.routing)
            .field("max_open_per_agent", &self.max_open_per_agent)
            .field("reassign_after", &self.reassign_after)
            .field("deliver_events", &self.deliver_events)
            .field("kf_accounts", &self.kf_accounts)
            .finish()
    }
}

impl AccountConfig {
    /// Who receives this account's messages.
    pub fn agents(&self) -> Vec<String> {
        if self.agents.is_empty() { vec![self.original_id.clone()] } else { self.agents.clone() }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchConfig {
    pub noop_route: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Sqlite,
    Redis,
}

/// How the Redis engine reaches Redis (`store/redis_conn.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Single,
    Sentinel,
    /// Accepted so that the key reads as documented; refused by `validate` for now.
    Cluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    /// Committed to the OS: survives a crash of the process.
    Normal,
    /// Committed to the disk: survives power loss.
    Full,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub engine: Engine,
    pub redis_mode: RedisMode,
    pub redis_url: String,
    pub redis_urls: Vec<String>,
    pub redis_sentinel_master: String,
    pub redis_ca_file: PathBuf,
    pub sync: Sync,
    pub retention_max_messages: u64,
    #[serde(with = "humantime_serde")]
    pub retention_max_age: Duration,
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    pub max_batch: usize,
    pub index_max_mailboxes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub queue_capacity: usize,
    pub queue_max_bytes: usize,
    pub total_queue_max_bytes: usize,
    pub max_connections_per_user: usize,
    pub write_buffer_size: usize,
    pub read_buffer_size: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub http_body_max: usize,
    pub ws_frame_max: usize,
    pub history_page_max: usize,
    pub sender_rate: u32,
    pub sender_burst: u32,
}

/// How connections are accepted and served (`http::server`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 50_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Open,
    Token,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub jwt_secret: String,
    pub api_keys: Vec<String>,
    pub allowed_origins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Whether `mode` was written (file or environment) rather than left to its default:
    /// open mode on an address other than loopback must be chosen, not fallen into.
    #[serde(skip)]
    pub mode_written: bool,
}

/// Secrets stay out of logs.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("jwt_secret", &if self.jwt_secret.is_empty() { "" } else { "<set>" })
            .field("api_keys", &format_args!("<{} keys>", self.api_keys.len()))
            .field("allowed_origins", &self.allowed_origins)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolConfig {
    pub create_time_zone: String,
    pub company_id: String,
    /// Who sends a JSON send request that names nobody (open mode without `?userid=`, an
    /// API key without one): the seed's §2.1 request as written.
    pub default_sender: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 1234)),
            data_dir: PathBuf::from("./data"),
            log: "imgate=info".into(),
            log_format: LogFormat::Text,
            shutdown_grace: Duration::from_secs(10),
            store: StoreConfig::default(),
            hub: HubConfig::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            bench: BenchConfig::default(),
            wechat: WechatConfig::default(),
            protocol: ProtocolConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: Engine::Sqlite,
            redis_mode: RedisMode::Single,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_urls: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_ca_file: PathBuf::new(),
            sync: Sync::Normal,
            retention_max_messages: 10_000,
            retention_max_age: Duration::from_secs(30 * 86_400),
            dedupe_window: Duration::from_secs(86_400),
            max_batch: 512,
            index_max_mailboxes: 100_000,
        }
    }
}

impl StoreConfig {
    /// The keys of how to reach Redis, as far as they can be checked without dialling
    /// (`store/redis_conn.rs` builds its clients from them). Reasons never quote a URL:
    /// it may hold a password.
    fn check_redis(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        match self.redis_mode {
            RedisMode::Cluster if self.redis_urls.is_empty() => {
                return bad(
                    "store.redis_urls",
                    "with redis_mode = \"cluster\", list nodes of the cluster".into(),
                );
            }
            RedisMode::Sentinel if self.redis_urls.is_empty() => {
                return bad("store.redis_urls", "with redis_mode = \"sentinel\", list the sentinels".into());
            }
            RedisMode::Sentinel if self.redis_sentinel_master.trim().is_empty() => {
                return bad(
                    "store.redis_sentinel_master",
                    "with redis_mode = \"sentinel\", name the master the sentinels monitor".into(),
                );
            }
            _ => {}
        }
        let tls_in_use = match self.redis_mode {
            RedisMode::Single => self.redis_url.starts_with("rediss://"),
            _ => {
                self.redis_urls.iter().any(|u| u.starts_with("rediss://"))
                    || self.redis_sentinel_master.starts_with("rediss://")
            }
        };
        if !self.redis_ca_file.as_os_str().is_empty() {
            match std::fs::read_to_string(&self.redis_ca_file) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
                Ok(_) => return bad("store.redis_ca_file", "holds no PEM certificate".into()),
                Err(e) => return bad("store.redis_ca_file", format!("cannot read it: {e}")),
            }
            if !tls_in_use {
                return bad("store.redis_ca_file", "is set, but no Redis URL in use is rediss://".into());
            }
        }
        // Parse the URLs as the clients will (and without printing them).
        match crate::redis_conn::Target::from_config(self) {
            Ok(_) => Ok(()),
            Err(crate::redis_conn::ConnError::Invalid { key, reason }) => bad(key, reason),
            Err(e) => bad("store.redis_url", e.to_string()),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            queue_capacity: 1024,
            // Centrifugo's client queue default; a WeChat message is a few KiB at most.
            queue_max_bytes: 1 << 20,
            // 10,000 stalled readers on a 2 GB host: 256 MiB of frames, plus their
            // socket state (~6 KiB measured idle, + 4 KiB write buffer), under 400 MB.
            total_queue_max_bytes: 256 << 20,
            max_connections_per_user: 32,
            write_buffer_size: 4096,
            read_buffer_size: 512,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http_body_max: 64 << 10,
            ws_frame_max: 64 << 10,
            history_page_max: 200,
            sender_rate: 200,
            sender_burst: 2000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            jwt_secret: String::new(),
            api_keys: Vec::new(),
            allowed_origins: Vec::new(),
            leeway: Duration::from_secs(30),
            mode_written: false,
        }
    }
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            create_time_zone: "+08:00".into(),
            company_id: String::new(),
            default_sender: imgate_protocol::SYSTEM_CONTACT.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Values given on the command line, which win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// The most a WebSocket's write buffer may hold: one whole frame must fit. tungstenite keeps the buffer's capacity
    /// once grown, so this is also what a socket that was sent one large frame keeps
    /// while it lives: the figure a stalled reader costs beside its queue.
    pub fn socket_write_buffer_max(&self) -> usize {
        self.hub.write_buffer_size + self.frame_max()
    }

    /// The largest frame a message may become: a body's worth, plus its envelope. A
    /// message that would be larger (escaping for JSON can double XML text) is refused.
    pub fn frame_max(&self) -> usize {
        self.limits.http_body_max + 4096
    }

    /// What `n` readers that stopped reading can pin at most, in bytes: every queued frame
    /// (`hub.total_queue_max_bytes`) plus, per socket, its write and read buffers grown
    /// to their largest.
    pub fn stalled_readers_bound(&self, n: usize) -> usize {
        let per_socket =
            self.socket_write_buffer_max() + self.hub.read_buffer_size + self.limits.ws_frame_max;
        self.hub.total_queue_max_bytes + n * per_socket
    }

    /// Merge the layers. `file` given explicitly must exist; the default `imgate.toml` is
    /// read only if present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        // What the operator wrote, apart from the defaults: protected mode asks whether
        // auth.mode is among it.
        let mut written = Figment::new();
        match file {
            Some(f) if !f.exists() => return Err(ConfigError::MissingFile(f.to_owned())),
            Some(f) => written = written.merge(Toml::file_exact(f)),
            None if Path::new("imgate.toml").exists() => {
                written = written.merge(Toml::file_exact("imgate.toml"))
            }
            None => {}
        }
        // Only the variables that name a key: tools use the prefix too (IMGATE_TOKEN,
        // IMGATE_BIN), and they must not stop the gateway.
        written = written.merge(Env::prefixed("IMGATE_").split("__").filter(|k| {
            let top = k.as_str().split('.').next().unwrap_or_default().to_ascii_lowercase();
            TOP_KEYS.contains(&top.as_str())
        }));
        let mode_written = written.contains("auth.mode");
        let mut fig = Figment::from(Serialized::defaults(Config::default())).merge(written);
        if let Some(l) = overrides.listen {
            fig = fig.merge(Serialized::default("listen", l));
        }
        if let Some(d) = &overrides.data_dir {
            fig = fig.merge(Serialized::default("data_dir", d));
        }
        let mut config: Config = fig.extract().map_err(Box::new)?;
        config.auth.mode_written = mode_written;
        config.secrets_from_env(|k| std::env::var(k).ok());
        config.validate()?;
        Ok(config)
    }

    /// `IMGATE_WECHAT_<APPID>_{SECRET,TOKEN,ENCODING_AES_KEY}` fill or replace an
    /// account's secrets, so they need not be written in a file.
    pub fn secrets_from_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        for a in &mut self.wechat.accounts {
            let prefix = format!("IMGATE_WECHAT_{}_", a.appid.to_ascii_uppercase());
            for (name, slot) in [
                ("SECRET", &mut a.secret),
                ("TOKEN", &mut a.token),
                ("ENCODING_AES_KEY", &mut a.encoding_aes_key),
            ] {
                if let Some(v) = var(&format!("{prefix}{name}")) {
                    *slot = v;
                }
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.to_owned() });
        if self.protocol.default_sender.trim().is_empty() {
            return bad("protocol.default_sender", "must name a sender");
        }
        if let Err(e) = imgate_protocol::check_id("protocol.default_sender", &self.protocol.default_sender) {
            return bad("protocol.default_sender", &e.to_string());
        }
        if self.hub.heartbeat_interval.is_zero() {
            return bad("hub.heartbeat_interval", "must be above zero");
        }
        if self.hub.idle_timeout <= self.hub.heartbeat_interval {
            return bad("hub.idle_timeout", "must be longer than hub.heartbeat_interval");
        }
        if self.hub.queue_capacity == 0 || self.hub.max_connections_per_user == 0 {
            return bad(
                "hub.queue_capacity",
                "queue_capacity and max_connections_per_user must be above zero",
            );
        }
        if self.hub.queue_max_bytes == 0 || self.hub.total_queue_max_bytes == 0 {
            return bad(
                "hub.queue_max_bytes",
                "queue_max_bytes and total_queue_max_bytes must be above zero",
            );
        }
        if self.hub.read_buffer_size < 256 || self.hub.write_buffer_size < 256 {
            return bad("hub.read_buffer_size", "socket buffers need at least 256 bytes");
        }
        if self.limits.history_page_max == 0
            || self.limits.http_body_max == 0
            || self.limits.ws_frame_max == 0
        {
            return bad("limits", "history_page_max, http_body_max and ws_frame_max must be above zero");
        }
        if self.limits.sender_rate == 0 || self.limits.sender_burst == 0 {
            return bad("limits.sender_rate", "sender_rate and sender_burst must be above zero");
        }
        let h = &self.http;
        if [h.header_read_timeout, h.keepalive_timeout, h.body_timeout, h.write_timeout, h.handshake_timeout]
            .iter()
            .any(Duration::is_zero)
        {
            return bad("http", "every timeout must be above zero");
        }
        if h.max_connections == 0 {
            return bad("http.max_connections", "must be above zero");
        }
        if self.store.index_max_mailboxes == 0 {
            return bad("store.index_max_mailboxes", "must be above zero");
        }
        if self.store.max_batch == 0 || self.store.retention_max_messages == 0 {
            return bad("store.max_batch", "max_batch and retention_max_messages must be above zero");
        }
        self.auth.check(self.listen)?;
        if self.store.engine == Engine::Redis {
            self.store.check_redis()?;
        }
        if self.wechat.media_max == 0 || self.wechat.upload_quota_bytes == 0 {
            return bad("wechat.upload_quota_bytes", "media_max and upload_quota_bytes must be above zero");
        }
        if self.store.engine == Engine::Redis && !self.wechat.accounts.is_empty() {
            if self.wechat.media_dir.as_os_str().is_empty() {
                return bad(
                    "wechat.media_dir",
                    "with engine = \"redis\", set it to a directory every node shares",
                );
            }
            if self.wechat.token_mode == TokenMode::Legacy {
                return bad(
                    "wechat.token_mode",
                    "legacy tokens invalidate each other across nodes: use \"stable\"",
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.wechat.accounts {
            if a.appid.is_empty() || a.original_id.is_empty() {
                return bad("wechat.accounts", "every account needs its appid and original_id");
            }
            if !seen.insert(a.appid.clone()) || !seen.insert(a.original_id.clone()) {
                return bad("wechat.accounts", "an appid or original_id appears twice");
            }
            if a.token.is_empty() {
                return bad(
                    "wechat.accounts.token",
                    "every account needs the callback token it set in WeChat",
                );
            }
            if !a.encoding_aes_key.is_empty() && imgate_wechat::Cipher::new(&a.encoding_aes_key).is_err() {
                return bad("wechat.accounts.encoding_aes_key", "must be the 43 characters WeChat shows");
            }
            if a.max_open_per_agent == 0 || a.reassign_after.is_zero() {
                return bad(
                    "wechat.accounts.max_open_per_agent",
                    "max_open_per_agent and reassign_after must be above zero",
                );
            }
            let event_name = |e: &String| {
                !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            };
            // WeChat's form: the account's name, @, the Official Account's WeChat id.
            let kf_form = |k: &String| {
                k.len() <= 64
                    && k.split_once('@').is_some_and(|(n, id)| !n.is_empty() && !id.is_empty())
                    && k.bytes().all(|b| b.is_ascii_graphic())
            };
            for (agent, kf) in &a.kf_accounts {
                if !a.agents().contains(agent) {
                    return bad(
                        "wechat.accounts.kf_accounts",
                        &format!("{agent:?} is not one of the account's agents"),
                    );
                }
                if !kf_form(kf) {
                    return bad(
                        "wechat.accounts.kf_accounts",
                        &format!("{kf:?} is not a customer-service account such as \"kf2001@gh_x\""),
                    );
                }
            }
            if !a.deliver_events.iter().all(event_name) {
                return bad(
                    "wechat.accounts.deliver_events",
                    "each entry is a WeChat event name (letters, digits and _), such as \"CLICK\"",
                );
            }
        }
        self.check_magnitudes()?;
        self.protocol.zone()?;
        Ok(())
    }

    /// Past these bounds a value is a typo, and it would fail later rather than now: a
    /// socket buffer too large to allocate at the first connection, a sum of limits or a
    /// time in seconds that overflows.
    fn check_magnitudes(&self) -> Result<(), ConfigError> {
        const SOCKET_BUFFER_MAX: usize = 16 << 20;
        const BODY_MAX: usize = 1 << 30;
        const DURATION_MAX: Duration = Duration::from_secs(100 * 365 * 86_400);
        for (key, v, max) in [
            ("hub.read_buffer_size", self.hub.read_buffer_size, SOCKET_BUFFER_MAX),
            ("hub.write_buffer_size", self.hub.write_buffer_size, SOCKET_BUFFER_MAX),
            ("limits.http_body_max", self.limits.http_body_max, BODY_MAX),
            ("limits.ws_frame_max", self.limits.ws_frame_max, BODY_MAX),
            ("wechat.media_max", self.wechat.media_max, BODY_MAX),
        ] {
            if v > max {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{v} is over the largest allowed, {max}"),
                });
            }
        }
        for (key, d) in [
            ("shutdown_grace", self.shutdown_grace),
            ("store.retention_max_age", self.store.retention_max_age),
            ("store.dedupe_window", self.store.dedupe_window),
            ("hub.heartbeat_interval", self.hub.heartbeat_interval),
            ("hub.idle_timeout", self.hub.idle_timeout),
            ("wechat.api_timeout", self.wechat.api_timeout),
            ("wechat.callback_max_age", self.wechat.callback_max_age),
        ] {
            if d > DURATION_MAX {
                return Err(ConfigError::Invalid { key, reason: "must be at most 100 years".into() });
            }
        }
        Ok(())
    }
}

/// The shortest JWT secret (bytes) and API key (characters) token mode takes: 256 bits,
/// HS256's own key size, out of reach of an offline guess at a captured token.
pub const MIN_SECRET: usize = 32;
/// The most leeway allowed on `exp` and `nbf`.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl AuthConfig {
    /// Token mode's secrets are long enough to resist guessing, and open mode on `listen`
    /// is safe or was chosen.
    pub fn check(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        let bad = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.leeway > MAX_LEEWAY {
            return bad("auth.leeway", format!("must be at most {}s", MAX_LEEWAY.as_secs()));
        }
        match self.mode {
            AuthMode::Token => {
                if self.jwt_secret.is_empty() && self.api_keys.is_empty() {
                    return bad(
                        "auth.jwt_secret",
                        "token mode needs a jwt_secret (for users) or api_keys (for backends)".into(),
                    );
                }
                // Empty means no JWTs are taken (a deployment of backends only).
                if !self.jwt_secret.is_empty() && self.jwt_secret.len() < MIN_SECRET {
                    return bad(
                        "auth.jwt_secret",
                        format!(
                            "is {} bytes; it must be at least {MIN_SECRET} (a short HS256 secret is \
                             guessed from one token, then any token can be forged)",
                            self.jwt_secret.len()
                        ),
                    );
                }
                if let Some((i, k)) =
                    self.api_keys.iter().enumerate().find(|(_, k)| k.trim().chars().count() < MIN_SECRET)
                {
                    return bad(
                        "auth.api_keys",
                        format!(
                            "key #{} is {} characters; every key must have at least {MIN_SECRET} (an \
                             empty or short key is guessed)",
                            i + 1,
                            k.trim().chars().count()
                        ),
                    );
                }
            }
            AuthMode::Open if !self.mode_written && !is_loopback(listen) => {
                return bad(
                    "auth.mode",
                    format!(
                        "open mode, the default, lets anyone who reaches {listen} act as any user; \
                         on an address other than loopback use auth.mode = \"token\", or write \
                         auth.mode = \"open\" in the configuration to accept that"
                    ),
                );
            }
            AuthMode::Open => {}
        }
        Ok(())
    }
}

/// Whether only this machine reaches `addr`.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

impl ProtocolConfig {
    /// The zone of date-time `CreateTime`s, e.g. `+08:00`.
    pub fn zone(&self) -> Result<UtcOffset, ConfigError> {
        let f = time::macros::format_description!("[offset_hour sign:mandatory]:[offset_minute]");
        UtcOffset::parse(self.create_time_zone.trim(), f).map_err(|_| ConfigError::Invalid {
            key: "protocol.create_time_zone",
            reason: format!("{:?} is not an offset like +08:00", self.create_time_zone),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.protocol.zone().unwrap(), UtcOffset::from_hms(8, 0, 0).unwrap());
        // Every key of the defaults appears in the help text.
        let v = serde_json::to_value(&c).unwrap();
        let mut keys = Vec::new();
        let top: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(top, TOP_KEYS);
        for (k, val) in v.as_object().unwrap() {
            match val.as_object() {
                Some(section) => keys.extend(section.keys().cloned()),
                None => keys.push(k.clone()),
            }
        }
        let account = serde_json::to_value(AccountConfig::default()).unwrap();
        keys.extend(account.as_object().unwrap().keys().cloned());
        for k in keys {
            let documented =
                KEYS_HELP.contains(&format!("  {k} = ")) || KEYS_HELP.contains(&format!("[[wechat.{k}]]"));
            assert!(documented, "key {k} missing from KEYS_HELP");
        }
    }

    /// The hardening issue's bound: with the defaults, 10,000 readers that stop reading
    /// cannot exhaust a 2 GB host. (With a 1 MiB `http_body_max`, each socket could keep a
    /// 2 MiB write buffer: 20 GB.) Uploads have their own limit, `wechat.media_max`.
    #[test]
    fn ten_thousand_stalled_readers_fit_in_two_gigabytes() {
        let bound = Config::default().stalled_readers_bound(10_000);
        assert!(bound < 2_000_000_000, "10,000 stalled readers may pin {bound} bytes");
    }

    #[test]
    fn queue_byte_bounds_must_be_above_zero() {
        let zero: [fn(&mut HubConfig); 2] = [|h| h.queue_max_bytes = 0, |h| h.total_queue_max_bytes = 0];
        for set in zero {
            let mut c = Config::default();
            set(&mut c.hub);
            assert!(matches!(c.validate(), Err(ConfigError::Invalid { key: "hub.queue_max_bytes", .. })));
        }
    }

    #[test]
    fn http_timeouts_caps_and_rates_must_be_above_zero() {
        type Tune = fn(&mut Config);
        let cases: [(&str, Tune); 8] = [
            ("http", |c| c.http.header_read_timeout = Duration::ZERO),
            ("http", |c| c.http.keepalive_timeout = Duration::ZERO),
            ("http", |c| c.http.body_timeout = Duration::ZERO),
            ("http", |c| c.http.write_timeout = Duration::ZERO),
            ("http", |c| c.http.handshake_timeout = Duration::ZERO),
            ("http.max_connections", |c| c.http.max_connections = 0),
            ("limits.sender_rate", |c| c.limits.sender_rate = 0),
            ("limits.sender_rate", |c| c.limits.sender_burst = 0),
        ];
        for (want, tune) in cases {
            let mut c = Config::default();
            tune(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn account_secrets_come_from_env() {
        let mut c = Config::default();
        c.wechat.accounts.push(AccountConfig {
            original_id: "gh_1".into(),
            appid: "wxAbC".into(),
            secret: "from-file".into(),
            ..Default::default()
        });
        c.secrets_from_env(|k| match k {
            "IMGATE_WECHAT_WXABC_SECRET" => Some("from-env".into()),
            "IMGATE_WECHAT_WXABC_TOKEN" => Some("tok".into()),
            _ => None,
        });
        let a = &c.wechat.accounts[0];
        assert_eq!((a.secret.as_str(), a.token.as_str()), ("from-env", "tok"));
        assert!(!format!("{a:?}").contains("from-env"), "secrets must not be printed");
        c.validate().unwrap();
        c.wechat.accounts[0].encoding_aes_key = "too short".into();
        assert!(c.validate().is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn open_mode_off_loopback_must_be_written() {
        figment::Jail::expect_with(|jail| {
            let public =
                Overrides { listen: Some(SocketAddr::from(([0, 0, 0, 0], 0))), ..Default::default() };
            let err = Config::load(None, &public).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { key: "auth.mode", .. }), "{err}");
            let v6 = Overrides { listen: Some("[::]:0".parse().unwrap()), ..Default::default() };
            assert!(Config::load(None, &v6).is_err());
            for loopback in ["127.0.0.1:0", "[::1]:0", "[::ffff:127.0.0.1]:0"] {
                let o = Overrides { listen: Some(loopback.parse().unwrap()), ..Default::default() };
                Config::load(None, &o).unwrap();
            }
            // Written in the environment or in the file: chosen.
            jail.set_env("IMGATE_AUTH__MODE", "open");
            assert!(Config::load(None, &public).unwrap().auth.mode_written);
            jail.clear_env();
            jail.create_file("imgate.toml", "[auth]\nmode = \"open\"\n")?;
            assert!(Config::load(None, &public).unwrap().auth.mode_written);
            Ok(())
        });
    }

    #[test]
    fn token_mode_wants_long_secrets() {
        let check = |secret: &str, keys: &[&str], leeway: u64| {
            let mut c = Config::default();
            c.auth.mode = AuthMode::Token;
            c.auth.jwt_secret = secret.into();
            c.auth.api_keys = keys.iter().map(|k| k.to_string()).collect();
            c.auth.leeway = Duration::from_secs(leeway);
            c.validate().err().map(|e| match e {
                ConfigError::Invalid { key, .. } => key,
                other => panic!("{other}"),
            })
        };
        let s32 = "s".repeat(32);
        let k32 = "k".repeat(32);
        assert_eq!(check(&s32, &[], 30), None);
        assert_eq!(check("", &[&k32], 30), None);
        assert_eq!(check(&s32, &[&k32], 0), None);
        assert_eq!(check(&s32, &[&k32], 300), None);
        assert_eq!(check(&s32, &[&k32], 301), Some("auth.leeway"));
        assert_eq!(check("", &[], 30), Some("auth.jwt_secret"));
        assert_eq!(check("abc", &[&k32], 30), Some("auth.jwt_secret"));
        assert_eq!(check(&s32[..31], &[], 30), Some("auth.jwt_secret"));
        assert_eq!(check(&s32, &[""], 30), Some("auth.api_keys"));
        assert_eq!(check(&s32, &[&k32, &k32[..31]], 30), Some("auth.api_keys"));
        assert_eq!(check(&s32, &[&format!("  {}  ", &k32[..30])], 30), Some("auth.api_keys"));
        // Characters, not bytes: 32 Chinese characters are a long key.
        assert_eq!(check(&s32, &[&"钥".repeat(32)], 30), None);
        assert_eq!(check(&s32, &[&"钥".repeat(31)], 30), Some("auth.api_keys"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn layers_merge_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "imgate.toml",
                "listen = \"127.0.0.1:9\"\n[hub]\nqueue_capacity = 7\n[store]\nsync = \"full\"\n",
            )?;
            jail.set_env("IMGATE_HUB__QUEUE_CAPACITY", "8");
            jail.set_env("IMGATE_TOKEN", "not a key of ours");
            let c = Config::load(None, &Overrides { data_dir: Some("/tmp/x".into()), ..Default::default() })
                .unwrap();
            assert_eq!(c.listen.port(), 9);
            assert_eq!(c.hub.queue_capacity, 8);
            assert_eq!(c.store.sync, Sync::Full);
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            jail.create_file("bad.toml", "[hub]\nheartbeat_intervl = \"1s\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("heartbeat_intervl"), "{err}");
            Ok(())
        });
    }
}

//! The WeChat Official Account channel: inbound callbacks become frames for the
//! account's agents; agents' replies to followers go out through the customer-service
//! API; media is downloaded at ingest and served by imgate.
//!
//! The protocol itself (signatures, AES, API calls, tokens) is `imgate-wechat`'s; this
//! module decides what it means for mailboxes and agents.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imgate_protocol::{Content, XmlMessage};
use imgate_wechat::callback::Keys;
use imgate_wechat::{Api, ApiError, CallbackError, CallbackQuery, Cipher, Clock, Media, TokenCache};
use serde_json::{Value, json};

use crate::config::{AccountConfig, TokenMode, WechatConfig};

pub mod cli;
mod shared;
pub mod standin;
pub mod state;
pub mod voice;

use state::{Local, MediaRecord, NonceSeen, Profile, Quota, Shared, State, TemplateSend, Touch};

/// How old a follower's profile may be: the follower's next message or event after that
/// fetches it again (`user/info`), and so does the daily sweep for those who are quiet.
pub const PROFILE_MAX_AGE_SECS: i64 = 24 * 3600;

/// `user/info` calls one node makes per second per account at most: WeChat's daily quota
/// of the user APIs is shared with everything else the account runs.
const PROFILE_CALLS_PER_SEC: u64 = 5;

/// Profile fetches one account may have waiting on one node; past it a follower's fetch
/// is skipped, and asked for again when they next write.
const PROFILE_QUEUE_MAX: usize = 1000;

/// Profile fetch attempts, and the waits before each (a failure is retried twice).
const PROFILE_RETRIES: [Duration; 3] =
    [Duration::from_secs(0), Duration::from_secs(60), Duration::from_secs(600)];

/// Profiles over a day old that one sweep asks for at most: with a sweep a minute, 86,400
/// a day, a sixth of the pace ([`PROFILE_CALLS_PER_SEC`]), leaving room for new followers.
const PROFILE_SWEEP_BATCH: usize = 60;

/// How long one node holds a follower's fetch (with Redis, others leave it alone meanwhile).
const PROFILE_CLAIM: Duration = Duration::from_secs(30);

/// Told when a follower's profile changes (fetched, or a remark set): the account's appid,
/// the openid and the profile as JSON. The server points it at the team inbox.
pub type ProfileHook = Box<dyn Fn(String, String, Value) + Send + Sync>;

/// How long a callback nonce is remembered when `wechat.callback_max_age` is 0 (the clock
/// check off).
const NONCE_TTL_UNCHECKED: Duration = Duration::from_secs(300);

/// The URL path media is served at; `msg.media_path` points here.
pub const MEDIA_PATH: &str = "/im_component/wx_official_account/media/";

/// The media id a `media_path` names, if it is one of this gateway's: the path, exactly
/// (no other host, nothing after the id). Every check of a path goes through here, so
/// that what is checked is what is served.
pub fn media_id_of(path: &str) -> Option<&str> {
    let id = path.strip_prefix(MEDIA_PATH)?;
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(id)
}

/// Why an upload was not kept.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "upload refused: {user} uploaded {used} of {quota} bytes today (wechat.upload_quota_bytes); \
         this {size}-byte file would pass it. Try again after midnight UTC"
    )]
    OverQuota { user: String, used: u64, quota: u64, size: u64 },
    #[error("cannot count the upload against its quota ({0}); nothing was kept, try again")]
    Unavailable(String),
    #[error("cannot save media: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot record the upload ({0}); nothing was kept, try again")]
    NotRecorded(StateUnavailable),
}

/// How long a media id WeChat gave is reused. WeChat keeps temporary media 3 days (72 h);
/// two hours less leaves room for clocks that differ and a send already on its way.
pub const MEDIA_ID_REUSE_SECS: i64 = 70 * 3600;

/// How often a conversation's LOCATION report reaches the agents (WeChat may send one
/// every 5 seconds while the follower has the conversation open).
const LOCATION_EVERY_SECS: i64 = 3600;

/// How often one conversation's typing state is sent to WeChat at most (per node): WeChat
/// shows it 15 s, and an agent's composer may report every keystroke.
pub const TYPING_EVERY_SECS: i64 = 5;

/// How long one node reuses an account's template list (`template/get_all_private_template`)
/// before asking WeChat again; a template id not in it is asked for at once.
pub const TEMPLATES_MAX_AGE_SECS: i64 = 3600;

/// Conversations whose last typing time one node remembers; past it, those older than
/// [`TYPING_EVERY_SECS`] are forgotten.
const TYPING_REMEMBERED: usize = 10_000;

/// The events counted by name when dropped; any other is counted as `other`, so that the
/// metric's labels stay few.
const KNOWN_EVENTS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "SCAN",
    "LOCATION",
    "CLICK",
    "VIEW",
    "TEMPLATESENDJOBFINISH",
    "MASSSENDJOBFINISH",
    "PUBLISHJOBFINISH",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "view_miniprogram",
    "subscribe_msg_popup_event",
    "subscribe_msg_change_event",
    "subscribe_msg_sent_event",
    "kf_create_session",
    "kf_close_session",
    "kf_switch_session",
];

/// Download attempts for inbound media, and the waits between them.
const MEDIA_RETRIES: [Duration; 5] = [
    Duration::from_secs(0),
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];

pub struct Account {
    pub config: AccountConfig,
    cipher: Option<Cipher>,
    tokens: TokenCache,
    /// A plaintext callback came although the account has a key: said once.
    warned_plaintext: std::sync::atomic::AtomicBool,
    /// This node's `user/info` calls of the account, [`PROFILE_CALLS_PER_SEC`] at most.
    profile_pace: Pacer,
    /// Profile fetches of the account waiting or under way on this node.
    profile_queue: std::sync::atomic::AtomicUsize,
}

impl Account {
    fn keys(&self) -> Keys<'_> {
        Keys { token: &self.config.token, appid: &self.config.appid, cipher: self.cipher.as_ref() }
    }

    /// Wait for this node's next `user/info` slot of the account ([`PROFILE_CALLS_PER_SEC`]).
    async fn pace(&self) {
        self.profile_pace.wait().await;
    }
}

/// Calls spaced `every` apart: each caller is given the next free slot and sleeps until it
/// (no lock is held while it sleeps; callers go in the order they asked).
struct Pacer {
    next: parking_lot::Mutex<Option<tokio::time::Instant>>,
    every: Duration,
}

impl Pacer {
    fn new(every: Duration) -> Pacer {
        Pacer { next: parking_lot::Mutex::new(None), every }
    }

    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock();
            let now = tokio::time::Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.every);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// The channel's state (followers, windows, media records) could not be read.
#[derive(Debug, thiserror::Error)]
#[error("WeChat state unavailable: {0}")]
pub struct StateUnavailable(pub String);

#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    #[error(transparent)]
    Callback(#[from] CallbackError),
    #[error("the message has no FromUserName")]
    NoSender,
    #[error(
        "the callback's timestamp is {0} s from this server's clock (more than wechat.callback_max_age): a replay, or a wrong clock"
    )]
    Stale(u64),
    #[error("{0}")]
    BadId(String),
    #[error(
        "this callback's nonce came before with another message: a replay of its URL with another body (nothing was stored)"
    )]
    NonceReused,
    #[error("cannot check the callback's nonce now ({0}); nothing was stored, try again")]
    NonceUnknown(String),
    #[error("the message is for {found:?}, but this callback URL belongs to account {expected:?}")]
    WrongAccount { expected: String, found: String },
    #[error(transparent)]
    Content(#[from] imgate_protocol::ContentError),
    #[error(transparent)]
    CreateTime(#[from] imgate_protocol::CreateTimeError),
    #[error(
        "{0} messages cannot be sent to a WeChat follower (text, image, voice, video, news, mpnewsarticle, msgmenu, miniprogrampage, template and typing can)"
    )]
    Unsendable(String),
    #[error("media {0} is unknown or not ready: upload it first")]
    MediaMissing(String),
    #[error("media {0} is not one you may see, so you cannot send it")]
    MediaForbidden(String),
    #[error("media {path} is {is}: send it as msg_type {is:?}, not {want:?} (WeChat would refuse it)")]
    MediaKind { path: String, is: String, want: String },
    #[error("{}", .0.explain())]
    Api(#[from] ApiError),
    #[error(transparent)]
    State(#[from] StateUnavailable),
    /// The media directory did not take a downloaded file (a full disk, permissions):
    /// ours to fix, not WeChat's bad answer.
    #[error("cannot save media: {0}")]
    Save(std::io::Error),
}

/// An inbound message, ready for the agents' mailboxes.
pub struct Inbound {
    pub openid: String,
    /// The account the follower wrote to.
    pub appid: String,
    pub agents: Vec<String>,
    pub company_id: String,
    pub content: Content,
    pub window: Option<Value>,
    /// The follower's profile as last fetched (its remark is the frame's `data.name`).
    pub profile: Option<Profile>,
    /// The profile is missing or older than [`PROFILE_MAX_AGE_SECS`]: fetch it once the
    /// message is committed ([`Wechat::refresh_profile`]).
    pub profile_due: bool,
}

impl Inbound {
    /// The follower's name on frames: the remark an agent gave them.
    pub fn name(&self) -> String {
        self.profile.as_ref().map(|p| p.info.remark.clone()).unwrap_or_default()
    }
}

/// Why a remark was not set.
#[derive(Debug, thiserror::Error)]
pub enum RemarkError {
    #[error("the remark has {0} characters: WeChat takes at most {max}", max = imgate_wechat::REMARK_MAX_CHARS)]
    TooLong(usize),
    #[error("the remark has a control character (a line break, a tab…): WeChat shows one line")]
    Control,
    #[error("{0} is not a follower of any account here")]
    NotFollower(String),
    #[error(transparent)]
    Wechat(#[from] WechatError),
}

/// An account's templates, shared by the requests that read them.
pub type Templates = Arc<Vec<imgate_wechat::Template>>;

pub struct Wechat {
    accounts: Vec<Account>,
    callback_max_age: Duration,
    api: Api,
    pub state: State,
    media_dir: PathBuf,
    pub media_max: usize,
    /// Bytes one user may upload per UTC day.
    upload_quota: u64,
    clock: Clock,
    /// Followers whose profile this node is fetching.
    fetching: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Told of each profile change (the team inbox).
    profile_hook: std::sync::OnceLock<ProfileHook>,
    /// When each conversation's typing state was last sent (channel clock), by openid.
    typing_at: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
    /// Each account's templates as last fetched (channel clock), by appid.
    templates: parking_lot::Mutex<std::collections::HashMap<String, (i64, Templates)>>,
}

/// A message ready for `cgi-bin/message/custom/send`, and the upload its media id came
/// from, to upload again if WeChat says the id has expired.
pub struct Prepared {
    body: Value,
    media: Option<Reupload>,
    /// A template message: `message/template/send`, which needs no window.
    template: bool,
}

/// What became of a send WeChat took.
pub struct Sent {
    /// The follower's window afterwards.
    pub window: Value,
    /// WeChat's id of a template message: its TEMPLATESENDJOBFINISH names it.
    pub msgid: Option<u64>,
}

/// WeChat's TEMPLATESENDJOBFINISH about a template message imgate sent.
pub struct TemplateDone {
    pub openid: String,
    pub appid: String,
    pub agents: Vec<String>,
    pub company_id: String,
    pub msgid: u64,
    /// The status frame's `msg`: `delivered`, or `failed` with WeChat's `Status` and why.
    pub status: Value,
    pub window: Option<Value>,
}

struct Reupload {
    /// imgate's media record.
    id: String,
    /// WeChat's media type.
    kind: String,
    /// Where the body holds the id (a JSON pointer: `/image/media_id`).
    at: String,
    /// The id was reused from an earlier upload (not uploaded for this send).
    cached: bool,
}

impl Wechat {
    /// The channel, or `None` when no account is configured (every recipient is then a
    /// gateway user, as in the seed's test).
    /// `redis`: with the Redis engine, the state every node shares (followers, windows,
    /// the media index, access tokens); without it, a file in the data directory.
    pub fn new(
        cfg: &WechatConfig,
        data_dir: &std::path::Path,
        redis: Option<crate::redis_conn::Conn>,
        retention: Duration,
    ) -> std::io::Result<Option<Arc<Wechat>>> {
        if cfg.accounts.is_empty() {
            return Ok(None);
        }
        let shared_tokens: Option<Arc<dyn imgate_wechat::SharedTokens>> = redis
            .clone()
            .map(|c| Arc::new(shared::RedisTokens::new(c)) as Arc<dyn imgate_wechat::SharedTokens>);
        let api = Api::new(&cfg.api_base, cfg.api_timeout);
        let mode = match cfg.token_mode {
            TokenMode::Stable => imgate_wechat::TokenMode::Stable,
            TokenMode::Legacy => imgate_wechat::TokenMode::Legacy,
        };
        let accounts = cfg
            .accounts
            .iter()
            .map(|a| Account {
                config: a.clone(),
                cipher: (!a.encoding_aes_key.is_empty())
                    .then(|| Cipher::new(&a.encoding_aes_key).ok())
                    .flatten(),
                tokens: TokenCache::new(api.clone(), &a.appid, &a.secret, mode, shared_tokens.clone()),
                warned_plaintext: Default::default(),
                profile_pace: Pacer::new(Duration::from_millis(1000 / PROFILE_CALLS_PER_SEC)),
                profile_queue: Default::default(),
            })
            .collect();
        let media_dir =
            if cfg.media_dir.as_os_str().is_empty() { data_dir.join("media") } else { cfg.media_dir.clone() };
        std::fs::create_dir_all(&media_dir)?;
        let state = match redis {
            Some(c) => State::Redis(Shared::new(c, retention)),
            None => State::Local(Local::open(data_dir).map_err(std::io::Error::other)?),
        };
        let w = Arc::new(Wechat {
            accounts,
            callback_max_age: cfg.callback_max_age,
            api,
            state,
            media_dir,
            media_max: cfg.media_max,
            upload_quota: cfg.upload_quota_bytes,
            clock: cfg.clock.clone(),
            fetching: Default::default(),
            profile_hook: Default::default(),
            typing_at: Default::default(),
            templates: Default::default(),
        });
        let resume = w.clone();
        tokio::spawn(async move {
            for m in resume.state.pending_media().await {
                resume.clone().spawn_download(m);
            }
        });
        tracing::info!(accounts = w.accounts.len(), api = %cfg.api_base, "WeChat channel on");
        Ok(Some(w))
    }

    /// The account of a callback URL: `…/callback/{appid}`, or `…/callback` when there is
    /// exactly one.
    pub fn account(&self, appid: Option<&str>) -> Option<&Account> {
        match appid {
            Some(id) => self.accounts.iter().find(|a| a.config.appid == id),
            None if self.accounts.len() == 1 => self.accounts.first(),
            None => None,
        }
    }

    fn account_of_appid(&self, appid: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.config.appid == appid)
    }

    /// The admin console's verification: the `echostr` to answer.
    pub fn verify_url<'q>(&self, acct: &Account, q: &'q CallbackQuery) -> Result<&'q str, CallbackError> {
        imgate_wechat::callback::verify_url(q, &acct.config.token)
    }

    /// Check and open a callback.
    pub fn open(&self, acct: &Account, q: &CallbackQuery, body: &str) -> Result<XmlMessage, WechatError> {
        let xml = imgate_wechat::open_callback(q, body, acct.keys())?;
        if acct.cipher.is_some()
            && q.encrypt_type.as_deref() != Some("aes")
            && !acct.warned_plaintext.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                appid = %acct.config.appid,
                "a plaintext callback for an account with an encoding_aes_key: accepted, as the mode is each \
                 callback's, but the account's console is set to plaintext mode (明文模式), where only the \
                 signature protects a callback (said once)"
            );
        }
        // The signature covers the timestamp, not (in plaintext mode) the body: a logged
        // callback URL must not be good forever.
        if !self.callback_max_age.is_zero() {
            let ts = q.timestamp.as_deref().and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(0);
            // abs_diff: a signed timestamp of i64::MIN must not overflow the subtraction.
            let off = self.clock.now().abs_diff(ts);
            if off > self.callback_max_age.as_secs() {
                return Err(WechatError::Stale(off));
            }
        }
        if let Some(to) = xml.non_empty("ToUserName")
            && to != acct.config.original_id
        {
            return Err(WechatError::WrongAccount {
                expected: acct.config.original_id.clone(),
                found: to.to_owned(),
            });
        }
        Ok(xml)
    }

    /// Remember an opened callback's nonce with its message. In plaintext mode the
    /// signature covers the token, timestamp and nonce, not the body: a captured URL would
    /// take any body until it is stale. The same nonce with the same message is WeChat's
    /// retry, and goes on (the store's dedupe keeps it from being stored twice); with
    /// another message it is refused. The message is hashed as read (the decrypted one in
    /// safe mode), so a retry encrypted afresh is still the same.
    pub async fn check_nonce(
        &self,
        acct: &Account,
        q: &CallbackQuery,
        xml: &XmlMessage,
    ) -> Result<(), WechatError> {
        use sha2::{Digest, Sha256};
        let ts = q.timestamp.as_deref().unwrap_or_default();
        let nonce = q.nonce.as_deref().unwrap_or_default();
        // The timestamp is part of the key: WeChat's nonces are short random numbers, and
        // two real callbacks may share one, but hardly within one second.
        let mut key = Sha256::new();
        for part in [acct.config.appid.as_str(), ts, nonce] {
            key.update((part.len() as u64).to_be_bytes());
            key.update(part.as_bytes());
        }
        let key: String = key.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let hash: [u8; 32] = Sha256::digest(xml.to_xml().as_bytes()).into();
        // Remembered until the timestamp check refuses the URL anyway (it may be stamped
        // up to callback_max_age ahead of this clock).
        let max_age =
            if self.callback_max_age.is_zero() { NONCE_TTL_UNCHECKED } else { self.callback_max_age };
        let stamped = ts.trim().parse::<i64>().unwrap_or(0);
        let left = (stamped.saturating_add(max_age.as_secs() as i64) - self.clock.now())
            .clamp(1, 2 * max_age.as_secs() as i64);
        let ttl = Duration::from_secs(left as u64 + 1);
        match self.state.nonce(&key, hash, ttl).await {
            Ok(NonceSeen::New | NonceSeen::Same) => Ok(()),
            Ok(NonceSeen::Other) => Err(WechatError::NonceReused),
            Ok(NonceSeen::Full) => Err(WechatError::NonceUnknown(format!(
                "more than {} callbacks within wechat.callback_max_age",
                state::NONCE_CAP
            ))),
            Err(e) => Err(WechatError::NonceUnknown(e)),
        }
    }

    /// An opened callback, as a message for the account's agents: the follower is
    /// remembered with their window, media is recorded and its download started. `None`
    /// for an event the account does not deliver (`deliver_events`): it still counts for
    /// the window, and is stored nowhere.
    pub async fn inbound(
        self: &Arc<Self>,
        acct: &Account,
        xml: &XmlMessage,
    ) -> Result<Option<Inbound>, WechatError> {
        let openid = xml.non_empty("FromUserName").ok_or(WechatError::NoSender)?.to_owned();
        imgate_protocol::check_id("FromUserName", &openid).map_err(|e| WechatError::BadId(e.to_string()))?;
        let mut content = imgate_protocol::content_from_xml(xml)?;
        // Checked before anything is recorded: a refused callback leaves no follower and
        // no download behind. (WeChat writes unix seconds, so the zone does not matter.)
        if let Some(t) = xml.non_empty("CreateTime") {
            imgate_protocol::parse_create_time(t, time::UtcOffset::UTC)?;
        }
        let now = self.clock.now();
        // The window opens when the follower wrote (CreateTime), so that WeChat's retries
        // of one message do not reopen it: only a later message does.
        let sent_at = xml.non_empty("CreateTime").and_then(|t| t.trim().parse::<i64>().ok()).unwrap_or(now);
        let touch = Touch::of(&content.msg_type, xml.get("Event"), sent_at.min(now));
        if content.msg_type == "event" {
            let event = xml.get("Event").unwrap_or_default();
            if !self.delivers(acct, event, &openid, now).await {
                // What the follower did still opens or closes a window; an event that
                // does neither leaves no trace (not even a follower record).
                if touch.opens.is_some() || touch.subscribed.is_some() {
                    self.state.inbound(&acct.config.appid, &openid, touch).await?;
                }
                let label = KNOWN_EVENTS.iter().find(|k| **k == event).copied().unwrap_or("other");
                metrics::counter!("imgate_wechat_events_dropped_total", "event" => label).increment(1);
                return Ok(None);
            }
        }
        let follower = self.state.inbound(&acct.config.appid, &openid, touch).await?;
        let window = follower.window;
        let profile = follower.profile;
        // (Un)following changes what user/info says (subscription, time, scene): ask again.
        let profile_due = profile.as_ref().is_none_or(|p| now - p.fetched_at >= PROFILE_MAX_AGE_SECS)
            || touch
                .subscribed
                .is_some_and(|s| profile.as_ref().is_some_and(|p| (p.info.subscribe == 1) != s));
        if let Some(media_id) = xml.non_empty("MediaId")
            && matches!(content.msg_type.as_str(), "image" | "voice" | "video" | "shortvideo")
        {
            // Named after the message, so a retried callback finds its media already
            // recorded instead of downloading it again.
            let key = imgate_protocol::dedupe_key_for_xml(xml).unwrap_or_else(|| media_id.to_owned());
            let id = imgate_wechat::sign(&[&acct.config.appid, &key])[..32].to_owned();
            if let Some(known) = self.state.media(&id).await {
                if let Some(m) = content.msg.as_object_mut() {
                    m.insert("media_path".into(), Value::String(format!("{MEDIA_PATH}{}", known.id)));
                }
                return Ok(Some(Inbound {
                    openid,
                    appid: acct.config.appid.clone(),
                    agents: acct.config.agents(),
                    company_id: acct.config.company_id.clone(),
                    content,
                    window: Some(window.to_json(now)),
                    profile,
                    profile_due,
                }));
            }
            let rec = MediaRecord {
                id: id.clone(),
                appid: acct.config.appid.clone(),
                media_id: media_id.to_owned(),
                kind: content.msg_type.clone(),
                content_type: String::new(),
                status: "pending".into(),
                error: String::new(),
                created_at: now,
                owner: String::new(),
                // WeChat's id is as old as the message; it lives 3 days from then.
                media_at: sent_at.min(now),
            };
            self.state.put_media(rec.clone()).await?;
            if let Some(m) = content.msg.as_object_mut() {
                m.insert("media_path".into(), Value::String(format!("{MEDIA_PATH}{id}")));
            }
            self.clone().spawn_download(rec);
        }
        Ok(Some(Inbound {
            openid,
            appid: acct.config.appid.clone(),
            agents: acct.config.agents(),
            company_id: acct.config.company_id.clone(),
            content,
            window: Some(window.to_json(now)),
            profile,
            profile_due,
        }))
    }

    /// Point profile changes at `hook` (once; the server gives it the team inbox).
    pub fn on_profile(&self, hook: ProfileHook) {
        let _ = self.profile_hook.set(hook);
    }

    /// The follower's profile as cached (no call to WeChat).
    pub async fn profile(&self, openid: &str) -> Option<Profile> {
        self.state.follower(openid).await.ok().flatten().and_then(|f| f.profile)
    }

    /// Fetch follower `openid`'s profile in the background, beside the delivery of their
    /// message (which never waits for it): paced per account, one fetch of a follower at a
    /// time (on every node, with Redis), a failure logged and retried later, an openid
    /// WeChat does not know (40003) not retried.
    pub fn refresh_profile(self: &Arc<Self>, appid: &str, openid: &str) {
        let Some(index) = self.accounts.iter().position(|a| a.config.appid == appid) else { return };
        if !self.fetching.lock().insert(openid.to_owned()) {
            return;
        }
        let queued = &self.accounts[index].profile_queue;
        if queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= PROFILE_QUEUE_MAX {
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.fetching.lock().remove(openid);
            tracing::debug!(
                appid,
                "profile fetches queue full: skipped; the follower's next message asks again"
            );
            return;
        }
        let (w, openid, asked_at) = (self.clone(), openid.to_owned(), self.clock.now());
        tokio::spawn(async move {
            let acct = &w.accounts[index];
            for wait in PROFILE_RETRIES {
                tokio::time::sleep(wait).await;
                // Another node is fetching it.
                if !w.state.claim_profile_fetch(&openid, PROFILE_CLAIM).await {
                    break;
                }
                // Or did, since this refresh was asked for.
                let fresh = w.profile(&openid).await.is_some_and(|p| p.fetched_at > asked_at);
                if fresh {
                    w.state.release_profile_fetch(&openid).await;
                    break;
                }
                acct.pace().await;
                let fetched = w.fetch_profile(acct, &openid).await;
                w.state.release_profile_fetch(&openid).await;
                match fetched {
                    Ok(_) => break,
                    Err(WechatError::Api(e)) if e.errcode() == Some(40003) => {
                        tracing::warn!(contact = %openid, error = %e.explain(), "no profile: WeChat does not know the follower");
                        break;
                    }
                    Err(e) => {
                        metrics::counter!("imgate_wechat_profile_errors_total").increment(1);
                        tracing::warn!(contact = %openid, error = %e, "profile fetch failed; will retry");
                    }
                }
            }
            acct.profile_queue.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            w.fetching.lock().remove(&openid);
        });
    }

    /// The daily refresh, every `every` until `stop`: followers whose profile is over a
    /// day old, though they did not write, are asked for again (a few a time, paced as
    /// any fetch). On Redis one node sweeps at a time.
    pub fn spawn_profile_sweeper(
        self: &Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let w = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => w.sweep_profiles(every).await,
                }
            }
        });
    }

    async fn sweep_profiles(self: &Arc<Self>, every: Duration) {
        if !self.state.lease("profiles", every - every / 10).await {
            return;
        }
        let now = self.clock.now();
        let due = self.state.stale_profiles(now - PROFILE_MAX_AGE_SECS, now, PROFILE_SWEEP_BATCH).await;
        if !due.is_empty() {
            tracing::debug!(followers = due.len(), "profiles over a day old: fetching again");
        }
        for (openid, appid) in due {
            self.refresh_profile(&appid, &openid);
        }
    }

    /// `user/info` now, kept with the follower (unless erased meanwhile).
    async fn fetch_profile(&self, acct: &Account, openid: &str) -> Result<Profile, WechatError> {
        let mut info =
            acct.tokens.call(|token| async move { self.api.user_info(&token, openid).await }).await?;
        // Of someone who unfollowed WeChat says only that (and the unionid): what was known
        // of them, their remark included, stays.
        if info.subscribe == 0
            && let Some(before) = self.profile(openid).await
        {
            let unionid = if info.unionid.is_empty() { before.info.unionid.clone() } else { info.unionid };
            info = imgate_wechat::UserInfo { subscribe: 0, unionid, ..before.info };
        }
        let profile = Profile { info, fetched_at: self.clock.now() };
        if self.state.put_profile(openid, profile.clone()).await? {
            self.profile_changed(acct, openid, &profile);
        }
        Ok(profile)
    }

    fn profile_changed(&self, acct: &Account, openid: &str, profile: &Profile) {
        if let Some(hook) = self.profile_hook.get() {
            hook(acct.config.appid.clone(), openid.to_owned(), profile.to_json());
        }
    }

    /// An agent names follower `openid`: WeChat's `user/info/updateremark`, then the
    /// cached profile (fetched now if there is none) takes it. The profile afterwards.
    pub async fn set_remark(
        &self,
        acct: &Account,
        openid: &str,
        remark: &str,
    ) -> Result<Profile, RemarkError> {
        let chars = remark.chars().count();
        if chars > imgate_wechat::REMARK_MAX_CHARS {
            return Err(RemarkError::TooLong(chars));
        }
        if remark.chars().any(char::is_control) {
            return Err(RemarkError::Control);
        }
        acct.tokens
            .call(|token| async move { self.api.update_remark(&token, openid, remark).await })
            .await
            .map_err(WechatError::from)?;
        let mut profile = match self.profile(openid).await {
            Some(p) => p,
            None => {
                acct.pace().await;
                // WeChat has the remark already: a failed fetch must not say otherwise. The
                // rest comes with the follower's next message (fetched_at 0 is overdue).
                match self.fetch_profile(acct, openid).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(contact = %openid, error = %e, "profile fetch failed; the remark is kept");
                        let subscribe = i64::from(self.subscribed(openid).await.unwrap_or(true));
                        let info = imgate_wechat::UserInfo {
                            openid: openid.to_owned(),
                            subscribe,
                            ..Default::default()
                        };
                        Profile { info, fetched_at: 0 }
                    }
                }
            }
        };
        profile.info.remark = remark.to_owned();
        if !self.state.put_profile(openid, profile.clone()).await.map_err(WechatError::from)? {
            return Err(RemarkError::NotFollower(openid.to_owned()));
        }
        self.profile_changed(acct, openid, &profile);
        Ok(profile)
    }

    /// Whether `event` reaches the agents: listed in the account's `deliver_events`
    /// (in any case), and for LOCATION, the conversation's first report of the hour.
    async fn delivers(&self, acct: &Account, event: &str, openid: &str, now: i64) -> bool {
        if !acct.config.deliver_events.iter().any(|e| e.eq_ignore_ascii_case(event)) {
            return false;
        }
        !event.eq_ignore_ascii_case("LOCATION")
            || self.state.first_location(&acct.config.appid, openid, now, LOCATION_EVERY_SECS).await
    }

    /// The account `contact` follows, if it is a follower who has written to one.
    pub async fn follower_account(&self, contact: &str) -> Result<Option<&Account>, StateUnavailable> {
        let f = self.state.follower(contact).await.map_err(StateUnavailable)?;
        Ok(f.and_then(|f| self.account_of_appid(&f.appid)))
    }

    /// The follower's window now, as the console shows it.
    pub async fn window(&self, openid: &str) -> Option<Value> {
        self.state.follower(openid).await.ok().flatten().map(|f| f.window.to_json(self.clock.now()))
    }

    /// Whether the follower still follows (false after `unsubscribe` or WeChat's 43004).
    pub async fn subscribed(&self, openid: &str) -> Option<bool> {
        self.state.follower(openid).await.ok().flatten().map(|f| !f.unsubscribed)
    }

    /// What `send` will post for `content`: checks that WeChat can carry it and uploads
    /// its media. Nothing is sent to the follower yet.
    /// `agent` sends it: with a customer-service account (`kf_accounts`), the message says
    /// so (`customservice.kf_account`), and the follower sees that account's name.
    pub async fn prepare(
        &self,
        acct: &Account,
        agent: &str,
        openid: &str,
        content: &Content,
    ) -> Result<Prepared, WechatError> {
        let mut prepared = self.custom_message(acct, openid, content).await?;
        // A template comes from the account itself: no customer-service account signs it.
        if !prepared.template
            && let Some(kf) = acct.config.kf_accounts.get(agent)
        {
            prepared.body["customservice"] = json!({"kf_account": kf});
        }
        Ok(prepared)
    }

    /// Post a prepared message to the follower through `acct`'s customer-service API.
    /// Returns the window afterwards.
    /// Media whose id WeChat no longer knows (40007: expired after 3 days, or dropped) is
    /// uploaded again once, from imgate's copy, and the message sent once more.
    pub async fn send(&self, acct: &Account, openid: &str, prepared: Prepared) -> Result<Sent, WechatError> {
        let Prepared { mut body, media, template } = prepared;
        if template {
            let body = &body;
            let sent =
                acct.tokens.call(|token| async move { self.api.template_send(&token, body).await }).await;
            if let Err(e) = &sent
                && let Some(code) = e.errcode()
            {
                // 43004: unfollowed, as for any send.
                self.state.refused(openid, code, self.clock.now()).await;
                // 40037: the template is gone (deleted in the admin console): the list
                // the console picks from is stale.
                if code == 40037 {
                    self.templates.lock().remove(&acct.config.appid);
                }
            }
            let msgid = sent?;
            // No window is used: the follower's window stays as it was.
            let window = self.window(openid).await.unwrap_or_else(|| json!({"open": false}));
            return Ok(Sent { window, msgid: Some(msgid) });
        }
        let mut sent = self.post(acct, &body).await;
        if let Err(e) = &sent
            && e.errcode() == Some(40007)
            && let Some(m) = media.filter(|m| m.cached)
        {
            tracing::info!(media = %m.id, "WeChat no longer knows the media id (40007): uploading it again");
            sent = match self.upload_media(acct, &m.id, &m.kind).await {
                Ok(media_id) => {
                    if let Some(v) = body.pointer_mut(&m.at) {
                        *v = Value::String(media_id);
                    }
                    self.post(acct, &body).await
                }
                Err(WechatError::Api(e)) => Err(e),
                // The file is gone: WeChat's own answer says it best.
                Err(_) => sent,
            };
        }
        // WeChat says the window is over: believe it, so the console shows it closed.
        if let Err(e) = &sent
            && let Some(code) = e.errcode()
        {
            self.state.refused(openid, code, self.clock.now()).await;
        }
        sent?;
        let window = self.state.sent(openid, self.clock.now()).await.unwrap_or_default();
        Ok(Sent { window: window.to_json(self.clock.now()), msgid: None })
    }

    /// The account's templates: cached up to [`TEMPLATES_MAX_AGE_SECS`], fetched again
    /// sooner when `want` (a template id) is not among them (added since).
    pub async fn templates(&self, acct: &Account, want: Option<&str>) -> Result<Templates, WechatError> {
        let now = self.clock.now();
        let cached = self.templates.lock().get(&acct.config.appid).cloned();
        if let Some((at, list)) = cached
            && now - at < TEMPLATES_MAX_AGE_SECS
            && want.is_none_or(|id| list.iter().any(|t| t.template_id == id))
        {
            return Ok(list);
        }
        let list = Arc::new(acct.tokens.call(|token| async move { self.api.templates(&token).await }).await?);
        self.templates.lock().insert(acct.config.appid.clone(), (now, list.clone()));
        Ok(list)
    }

    /// Remember template message `reference` to `openid`, which WeChat took as `msgid`.
    pub async fn remember_template(
        &self,
        acct: &Account,
        msgid: u64,
        reference: &str,
        openid: &str,
    ) -> Result<(), StateUnavailable> {
        let t = TemplateSend {
            reference: reference.to_owned(),
            openid: openid.to_owned(),
            sent_at: self.clock.now(),
        };
        self.state.put_template(&acct.config.appid, msgid, t).await
    }

    /// A TEMPLATESENDJOBFINISH about a template message imgate sent: its outcome. `None`
    /// for any other callback, or a msgid imgate does not know (sent by other software
    /// of the account, or forgotten by retention).
    pub async fn template_finished(&self, acct: &Account, xml: &XmlMessage) -> Option<TemplateDone> {
        if xml.get("MsgType") != Some("event") || xml.get("Event") != Some("TEMPLATESENDJOBFINISH") {
            return None;
        }
        let msgid: u64 = xml.non_empty("MsgID").or_else(|| xml.non_empty("MsgId"))?.trim().parse().ok()?;
        let sent = self.state.template(&acct.config.appid, msgid).await?;
        let wechat = xml.get("Status").unwrap_or_default().trim().to_owned();
        let mut status = json!({"ref": sent.reference, "status": "delivered", "msgid": msgid.to_string()});
        if wechat != "success" {
            // WeChat's words: `failed:user block` (the follower refuses the account's
            // templates), `failed: system failed` (WeChat's side).
            let reason = if wechat.contains("user block") {
                "the follower has blocked template messages from this account"
            } else if wechat.contains("system failed") {
                "WeChat could not deliver it (a failure on WeChat's side)"
            } else {
                "WeChat did not deliver it"
            };
            status["status"] = json!("failed");
            status["wechat_status"] = json!(wechat);
            status["reason"] = json!(reason);
        }
        let window = self.window(&sent.openid).await;
        Some(TemplateDone {
            openid: sent.openid,
            appid: acct.config.appid.clone(),
            agents: acct.config.agents(),
            company_id: acct.config.company_id.clone(),
            msgid,
            status,
            window,
        })
    }

    /// Show follower `openid` that an agent is typing (`message/custom/typing`), at most
    /// once per conversation every [`TYPING_EVERY_SECS`] on this node. Whether it was sent
    /// (false: throttled, or WeChat said it is not the time: 45080, 45081). Nothing is kept.
    pub async fn typing(&self, acct: &Account, openid: &str) -> Result<bool, WechatError> {
        let now = self.clock.now();
        {
            let mut at = self.typing_at.lock();
            if at.get(openid).is_some_and(|t| now - t < TYPING_EVERY_SECS) {
                return Ok(false);
            }
            if at.len() >= TYPING_REMEMBERED {
                at.retain(|_, t| now - *t < TYPING_EVERY_SECS);
            }
            at.insert(openid.to_owned(), now);
        }
        let sent = acct
            .tokens
            .call(|token| async move { self.api.custom_typing(&token, openid, "Typing").await })
            .await;
        match sent {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errcode(), Some(45080 | 45081)) => Ok(false),
            Err(e) => {
                // Not shown: the next keystroke may try again.
                self.typing_at.lock().remove(openid);
                if let Some(code) = e.errcode() {
                    self.state.refused(openid, code, now).await;
                }
                Err(e.into())
            }
        }
    }

    async fn post(&self, acct: &Account, body: &Value) -> Result<(), ApiError> {
        acct.tokens.call(|token| async move { self.api.custom_send(&token, body).await }).await
    }

    /// The JSON of `cgi-bin/message/custom/send` for `content`.
    async fn custom_message(
        &self,
        acct: &Account,
        openid: &str,
        content: &Content,
    ) -> Result<Prepared, WechatError> {
        let msg = &content.msg;
        let text = |k: &str| msg.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut media = None;
        let body = match content.msg_type.as_str() {
            "text" => json!({"touser": openid, "msgtype": "text", "text": {"content": text("content")}}),
            kind @ ("image" | "voice") => {
                let media_id;
                (media_id, media) = self.media_id_for(acct, msg, kind).await?;
                json!({"touser": openid, "msgtype": kind, kind: {"media_id": media_id}})
            }
            "video" => {
                let media_id;
                (media_id, media) = self.media_id_for(acct, msg, "video").await?;
                // Only what the agent gave: WeChat refuses some videos whose optional
                // fields are present but empty.
                let mut video = serde_json::Map::new();
                video.insert("media_id".into(), Value::String(media_id));
                for k in ["thumb_media_id", "title", "description"] {
                    let v = text(k);
                    if !v.is_empty() {
                        video.insert(k.into(), Value::String(v));
                    }
                }
                json!({"touser": openid, "msgtype": "video", "video": video})
            }
            // WeChat takes one article (45008 for more).
            "news" => {
                let mut article = serde_json::Map::new();
                for k in ["title", "description", "url", "picurl"] {
                    let v = text(k);
                    if !v.is_empty() {
                        article.insert(k.into(), Value::String(v));
                    }
                }
                json!({"touser": openid, "msgtype": "news", "news": {"articles": [article]}})
            }
            "mpnewsarticle" => json!({"touser": openid, "msgtype": "mpnewsarticle",
                "mpnewsarticle": {"article_id": text("article_id")}}),
            "msgmenu" => {
                let list: Vec<Value> = msg
                    .get("list")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        json!({"id": i.get("id").cloned().unwrap_or_default(),
                        "content": i.get("content").cloned().unwrap_or_default()})
                    })
                    .collect();
                json!({"touser": openid, "msgtype": "msgmenu", "msgmenu": {"head_content": text("head_content"),
                    "list": list, "tail_content": text("tail_content")}})
            }
            "miniprogrampage" => {
                // The card's picture: WeChat's id as given, or the agent's upload (`thumb`),
                // uploaded as an image.
                let ids = json!({"media_id": msg.get("thumb_media_id"), "media_path": msg.get("thumb")});
                let thumb;
                (thumb, media) = self.media_id_for(acct, &ids, "image").await?;
                if let Some(m) = media.as_mut() {
                    m.at = "/miniprogrampage/thumb_media_id".into();
                }
                json!({"touser": openid, "msgtype": "miniprogrampage", "miniprogrampage": {"title": text("title"),
                    "appid": text("appid"), "pagepath": text("pagepath"), "thumb_media_id": thumb}})
            }
            "template" => {
                // As the agent gave it, checked where the request was read (send.rs).
                let mut body = json!({"touser": openid, "template_id": text("template_id"),
                    "data": msg.get("data").cloned().unwrap_or_else(|| json!({}))});
                if let Some(url) = msg.get("url").and_then(Value::as_str).filter(|u| !u.is_empty()) {
                    body["url"] = json!(url);
                }
                if let Some(mp) = msg.get("miniprogram").filter(|m| m.is_object()) {
                    body["miniprogram"] = mp.clone();
                }
                return Ok(Prepared { body, media: None, template: true });
            }
            other => return Err(WechatError::Unsendable(other.to_owned())),
        };
        Ok(Prepared { body, media, template: false })
    }

    /// WeChat's media id for a message: given as `media_id`, or for the imgate media
    /// `media_path` points at, the id WeChat gave it within [`MEDIA_ID_REUSE_SECS`], or
    /// else uploaded now.
    async fn media_id_for(
        &self,
        acct: &Account,
        msg: &Value,
        kind: &str,
    ) -> Result<(String, Option<Reupload>), WechatError> {
        if let Some(id) = msg.get("media_id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return Ok((id.to_owned(), None));
        }
        let path = msg.get("media_path").and_then(Value::as_str).unwrap_or_default();
        let id = media_id_of(path).ok_or_else(|| WechatError::MediaMissing(path.to_owned()))?;
        let rec = self
            .state
            .media(id)
            .await
            .filter(|m| m.status == "ready")
            .ok_or_else(|| WechatError::MediaMissing(path.to_owned()))?;
        // An upload of one kind sent as another fails at WeChat's upload: say so now.
        let fits = match kind {
            "image" => matches!(rec.kind.as_str(), "image" | "thumb"),
            "voice" => rec.kind == "voice",
            _ => matches!(rec.kind.as_str(), "video" | "shortvideo"),
        };
        if !fits && !rec.kind.is_empty() {
            let is = match rec.kind.as_str() {
                "shortvideo" => "video".to_owned(),
                "thumb" => "image".to_owned(),
                other => other.to_owned(),
            };
            return Err(WechatError::MediaKind { path: path.to_owned(), is, want: kind.to_owned() });
        }
        let fresh = self.clock.now().saturating_sub(rec.media_at) < MEDIA_ID_REUSE_SECS;
        if !rec.media_id.is_empty() && rec.appid == acct.config.appid && fresh {
            let again =
                Reupload { id: rec.id, kind: kind.to_owned(), at: format!("/{kind}/media_id"), cached: true };
            return Ok((rec.media_id, Some(again)));
        }
        let media_id = self.upload_media(acct, &rec.id, kind).await.map_err(|e| match e {
            WechatError::MediaMissing(_) => WechatError::MediaMissing(path.to_owned()),
            other => other,
        })?;
        let at = format!("/{kind}/media_id");
        Ok((media_id, Some(Reupload { id: rec.id, kind: kind.to_owned(), at, cached: false })))
    }

    /// Upload imgate's media `id` to WeChat as `kind` through `acct`; WeChat's new id,
    /// remembered with when it was given.
    async fn upload_media(&self, acct: &Account, id: &str, kind: &str) -> Result<String, WechatError> {
        let rec = self.state.media(id).await.ok_or_else(|| WechatError::MediaMissing(id.to_owned()))?;
        let bytes = Bytes::from(
            tokio::fs::read(self.media_dir.join(&rec.id))
                .await
                .map_err(|_| WechatError::MediaMissing(id.to_owned()))?,
        );
        let filename = format!("{}.{}", rec.id, extension(&rec.content_type));
        let media_id = acct
            .tokens
            .call(|token| {
                let (bytes, filename, ct) = (bytes.clone(), filename.clone(), rec.content_type.clone());
                async move { self.api.media_upload(&token, kind, &filename, &ct, bytes).await }
            })
            .await?;
        // Only a cache of WeChat's id: unrecorded, the next send uploads again.
        let _ = self
            .state
            .put_media(MediaRecord {
                media_id: media_id.clone(),
                appid: acct.config.appid.clone(),
                media_at: self.clock.now(),
                ..rec
            })
            .await;
        Ok(media_id)
    }

    /// Keep bytes `owner` uploaded (to send to a follower): the record, ready. Counted
    /// against the owner's daily quota first; a refused or failed upload keeps nothing.
    pub async fn save_upload(
        &self,
        owner: &str,
        bytes: Bytes,
        content_type: &str,
        kind: &str,
    ) -> Result<MediaRecord, UploadError> {
        let day = self.clock.now().div_euclid(86_400);
        let size = bytes.len() as u64;
        match self.state.reserve_upload(owner, day, size, self.upload_quota).await {
            Ok(Quota::Granted) => {}
            Ok(Quota::Over { used }) => {
                return Err(UploadError::OverQuota {
                    user: owner.to_owned(),
                    used,
                    quota: self.upload_quota,
                    size,
                });
            }
            Err(e) => return Err(UploadError::Unavailable(e)),
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        if let Err(e) = tokio::fs::write(self.media_dir.join(&id), &bytes).await {
            let _ = tokio::fs::remove_file(self.media_dir.join(&id)).await;
            self.state.release_upload(owner, day, size).await;
            return Err(e.into());
        }
        let rec = MediaRecord {
            id,
            appid: String::new(),
            media_id: String::new(),
            kind: kind.to_owned(),
            content_type: content_type.to_owned(),
            status: "ready".into(),
            error: String::new(),
            created_at: self.clock.now(),
            owner: owner.to_owned(),
            media_at: 0,
        };
        if let Err(e) = self.state.put_media(rec.clone()).await {
            let _ = tokio::fs::remove_file(self.media_dir.join(&rec.id)).await;
            self.state.release_upload(owner, day, size).await;
            return Err(UploadError::NotRecorded(e));
        }
        Ok(rec)
    }

    /// Whether `user` is an agent of the account `appid`.
    pub fn is_agent(&self, user: &str, appid: &str) -> bool {
        self.account_of_appid(appid).is_some_and(|a| a.config.agents().iter().any(|g| g == user))
    }

    /// Who may read a media file: the agents of its account (a follower's media, or an
    /// upload sent to a follower), its uploader and the agents of every account the
    /// uploader is an agent of, and the users it was sent to in a message.
    pub async fn may_read(&self, user: &str, rec: &MediaRecord) -> bool {
        if rec.owner == user || (!rec.appid.is_empty() && self.is_agent(user, &rec.appid)) {
            return true;
        }
        let colleague = !rec.owner.is_empty()
            && self.accounts.iter().any(|a| {
                let agents = a.config.agents();
                agents.contains(&rec.owner) && agents.iter().any(|g| g == user)
            });
        colleague || self.state.is_reader(&rec.id, user).await
    }

    /// A message from `sender` to the gateway users `to` carries media `path`: the sender
    /// must be able to read it, and then so may they. Paths of other hosts are not ours to
    /// check (the console does not load them).
    pub async fn share_media(&self, sender: &str, path: &str, to: &[&str]) -> Result<(), WechatError> {
        let Some(id) = media_id_of(path) else { return Ok(()) };
        let rec = self.state.media(id).await.ok_or_else(|| WechatError::MediaMissing(path.to_owned()))?;
        if !self.may_read(sender, &rec).await {
            return Err(WechatError::MediaForbidden(path.to_owned()));
        }
        for user in to {
            self.state.grant(&rec.id, user).await?;
        }
        Ok(())
    }

    /// A media file and its record, when it is ready.
    pub async fn media_file(&self, id: &str) -> Option<(MediaRecord, PathBuf)> {
        let rec = self.state.media(id).await?;
        let path = self.media_dir.join(&rec.id);
        Some((rec, path))
    }

    /// Erasure of `contact`: the follower (account and window) and, of the media their
    /// erased messages carried (`media_paths`), what they sent: a follower's media, or an
    /// upload of theirs. What an agent sent them stays, since the same file may have gone
    /// to others. Whether they were a follower, and how many media went.
    pub async fn forget(
        &self,
        contact: &str,
        media_paths: &[String],
    ) -> Result<(bool, u64), StateUnavailable> {
        let mut media = 0;
        for path in media_paths {
            let Some(id) = media_id_of(path) else { continue };
            if let Some(rec) = self.state.media(id).await
                && !rec.owner.is_empty()
                && rec.owner != contact
            {
                continue;
            }
            let had = self.state.forget_media(id).await?;
            // A voice's playable copy (voice.rs) goes with it.
            let _ = tokio::fs::remove_file(voice::ogg_path(&self.media_dir.join(id))).await;
            let file = match tokio::fs::remove_file(self.media_dir.join(id)).await {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(StateUnavailable(format!("cannot remove media {id}: {e}"))),
            };
            media += u64::from(had || file);
        }
        let appids: Vec<&str> = self.accounts.iter().map(|a| a.config.appid.as_str()).collect();
        let follower = self.state.forget_follower(contact, &appids).await?;
        Ok((follower, media))
    }

    /// Retention for the channel: media files and records older than `max_age` go, as
    /// the messages that point at them do.
    pub async fn trim(&self, max_age: Duration) {
        let dir = self.media_dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
            n
        })
        .await
        .unwrap_or(0);
        self.state.trim(self.clock.now() - max_age.as_secs() as i64).await;
        if removed > 0 {
            tracing::debug!(removed, "media retention pass");
        }
    }

    fn spawn_download(self: Arc<Self>, rec: MediaRecord) {
        tokio::spawn(async move {
            let mut last = String::new();
            for wait in MEDIA_RETRIES {
                tokio::time::sleep(wait).await;
                // Another node may have fetched it meanwhile (they share the media index).
                if self.state.media(&rec.id).await.is_some_and(|m| m.status == "ready") {
                    return;
                }
                match self.download(&rec).await {
                    Ok(_) if self.state.media(&rec.id).await.is_none() => {
                        // Erased while it downloaded: the file goes too.
                        let _ = tokio::fs::remove_file(self.media_dir.join(&rec.id)).await;
                        return;
                    }
                    Ok(content_type) => {
                        // A failure is logged by the writer; the record says pending, and
                        // the next start downloads it again.
                        let _ = self
                            .state
                            .put_media(MediaRecord {
                                content_type,
                                status: "ready".into(),
                                error: String::new(),
                                ..rec
                            })
                            .await;
                        return;
                    }
                    // Too large stays too large: no retry.
                    Err(e @ WechatError::Api(ApiError::TooLarge { .. })) => {
                        metrics::counter!("imgate_media_download_errors_total").increment(1);
                        last = e.to_string();
                        break;
                    }
                    // Erased meanwhile: writing the record back would undo the erasure.
                    Err(_) if self.state.media(&rec.id).await.is_none() => return,
                    Err(e) => {
                        last = e.to_string();
                        metrics::counter!("imgate_media_download_errors_total").increment(1);
                        tracing::warn!(media = %rec.id, error = %last, "media download failed; will retry");
                        let _ =
                            self.state.put_media(MediaRecord { error: last.clone(), ..rec.clone() }).await;
                    }
                }
            }
            if self.state.media(&rec.id).await.is_none_or(|m| m.status == "ready") {
                return;
            }
            tracing::error!(media = %rec.id, error = %last, "media download failed for good");
            let _ = self.state.put_media(MediaRecord { status: "failed".into(), error: last, ..rec }).await;
        });
    }

    /// Fetch one media file from WeChat into the media directory; its content type.
    async fn download(&self, rec: &MediaRecord) -> Result<String, WechatError> {
        let acct =
            self.account_of_appid(&rec.appid).ok_or_else(|| WechatError::MediaMissing(rec.id.clone()))?;
        // Read with the cap as the bytes come (Api::read_capped): a file over media_max is
        // given up at its Content-Length, or at the first byte past the cap.
        let max = self.media_max;
        let media = acct
            .tokens
            .call(|token| async move { self.api.media_get(&token, &rec.media_id, max).await })
            .await?;
        let media = match media {
            Media::VideoUrl(url) => self.api.fetch(&url, max).await?,
            m => m,
        };
        let Media::Bytes { bytes, content_type } = media else {
            return Err(WechatError::MediaMissing(rec.id.clone()));
        };
        // Written aside, then renamed: a reader (or another node's download of the same
        // file) never sees half a file.
        let tmp = self.media_dir.join(format!(".{}.{}", rec.id, uuid::Uuid::now_v7().simple()));
        let saved = async {
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, self.media_dir.join(&rec.id)).await
        }
        .await;
        if let Err(e) = saved {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(WechatError::Save(e));
        }
        Ok(content_type)
    }
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/gif" => "gif",
        "image/jpeg" | "image/jpg" => "jpg",
        "audio/amr" | "audio/amr-wb" => "amr",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "video/mp4" => "mp4",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Profile fetches of one account go at most PROFILE_CALLS_PER_SEC a second, however
    /// many wait; after a quiet spell the next goes at once.
    #[tokio::test(start_paused = true)]
    async fn profile_calls_are_paced() {
        let pacer = Arc::new(Pacer::new(Duration::from_millis(1000 / PROFILE_CALLS_PER_SEC)));
        let start = tokio::time::Instant::now();
        let waits: Vec<_> = (0..12)
            .map(|_| {
                let p = pacer.clone();
                tokio::spawn(async move {
                    p.wait().await;
                    tokio::time::Instant::now()
                })
            })
            .collect();
        let mut at = Vec::new();
        for w in waits {
            at.push((w.await.unwrap() - start).as_millis());
        }
        at.sort_unstable();
        let want: Vec<u128> = (0..12).map(|i| i * 200).collect();
        assert_eq!(at, want);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let before = tokio::time::Instant::now();
        pacer.wait().await;
        assert_eq!(tokio::time::Instant::now(), before, "no wait after a quiet spell");
    }
}

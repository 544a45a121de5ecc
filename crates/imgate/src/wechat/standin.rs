//! A stand-in for WeChat's API servers, which no test machine can reach: access tokens
//! (`token`, `stable_token`), `message/custom/send` (text, image, voice, video, news,
//! mpnewsarticle, msgmenu, miniprogrampage; `customservice.kf_account`),
//! `message/custom/typing`, `media/upload`, `media/get`, `user/info` and
//! `user/info/updateremark`, `message/template/send` and
//! `template/get_all_private_template` — with WeChat's answers and errors (temporary media expires
//! after 3 days: 40007; uploads over WeChat's limits: 40005, 40009–40012, 45007; followers
//! who unfollowed or turned messages off: 43004, 48002; a follower's replies used up:
//! 45047; more than one news article: 45008, none: 44003; a kf account not the account's:
//! 65401; an openid not of the account: 40003; the daily quota of the user APIs: 45009;
//! a template_id not the account's: 40037; a template to someone who unfollowed: 43004; the
//! daily quota of templates: 45009). Like WeChat, it posts a TEMPLATESENDJOBFINISH event
//! to the gateway's callback URL for a template it took ([`StandIn::finish_template`]).
//! The tests drive imgate against it; `imgate wechat standin` runs it for people trying
//! imgate without an Official Account.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// What the stand-in holds, and what tests may arrange or inspect.
#[derive(Default)]
pub struct Inner {
    /// appid → secret
    pub apps: HashMap<String, String>,
    /// Tokens still valid.
    pub tokens: Vec<String>,
    /// How many tokens were handed out...
    pub token_fetches: u64,
    /// ...and how many of them through the legacy `cgi-bin/token`.
    pub legacy_token_fetches: u64,
    /// Token requests of either kind, answered with a new token or not.
    pub token_requests: u64,
    /// When set, custom/send calls wait for a permit of it before answering (a test
    /// holds a send in flight); `held_sends` counts those that began waiting.
    pub hold_sends: Option<Arc<tokio::sync::Semaphore>>,
    pub held_sends: u64,
    /// Errors the next custom/send calls answer, in order.
    pub send_errors: VecDeque<(i64, String)>,
    /// Followers whose window is closed (custom/send answers 45015).
    pub closed: Vec<String>,
    /// Followers custom/send refuses with WeChat's code: 43004 (unfollowed), 48002
    /// (turned messages off), 43019 (blacklisted)…
    pub refusing: HashMap<String, i64>,
    /// Replies custom/send still takes per follower (WeChat's 5 per message the follower
    /// sent); each accepted one uses one, and at 0 it answers 45047. A follower not here
    /// has no limit: the stand-in does not see the callbacks that would reset it.
    pub replies_left: HashMap<String, u32>,
    /// Every accepted custom/send body, as bytes received.
    pub sent: Vec<Bytes>,
    /// The account's customer-service accounts (`kf2001@gh_x`): a message naming another
    /// in `customservice.kf_account` is refused with 65401.
    pub kf_accounts: std::collections::HashSet<String>,
    /// Every accepted custom/typing body.
    pub typing: Vec<Value>,
    /// media_id → (bytes, content type)
    pub media: HashMap<String, (Bytes, String)>,
    /// When each uploaded media id was issued (by `clock`): WeChat keeps temporary media
    /// 3 days, then answers 40007. Media a test put in `media` itself never expires.
    pub media_created: HashMap<String, i64>,
    /// Uploads answered with a media id.
    pub uploads: u64,
    /// The stand-in's clock; a test shares the server's to move both.
    pub clock: imgate_wechat::Clock,
    /// media/get calls to fail (errcode -1) before answering, per media_id.
    pub media_failures: HashMap<String, u32>,
    /// media/get answers that misbehave, per media_id (for the download limits).
    pub media_misbehave: HashMap<String, Misbehave>,
    /// Bytes of misbehaving media bodies handed to the connection so far. A client that
    /// stops reading stops it growing (past what the socket buffers hold).
    pub media_served: Arc<AtomicU64>,
    /// Followers as `user/info` describes them, by openid. An openid not here that looks
    /// like one (`o`, then letters, digits, `-` and `_`) is a follower since the stand-in's
    /// start, with a unionid made from it; any other is not of the account (40003).
    pub users: HashMap<String, imgate_wechat::UserInfo>,
    /// `user/info` calls answered (with a profile or not).
    pub user_info_calls: u64,
    /// The openid of each `user/info` call, in the order they came.
    pub user_info_asked: Vec<String>,
    /// When set, `user/info` calls wait for a permit of it before answering (a test holds
    /// a fetch in flight); they are in `user_info_asked` already.
    pub hold_user_info: Option<Arc<tokio::sync::Semaphore>>,
    /// How many more `user/info` and `updateremark` calls the day's quota allows (None:
    /// no limit); at 0 they answer 45009.
    pub user_quota: Option<u64>,
    /// The account's templates (`template/get_all_private_template`).
    pub templates: Vec<imgate_wechat::Template>,
    /// `template/get_all_private_template` calls answered.
    pub template_list_calls: u64,
    /// Every accepted `message/template/send` body.
    pub template_sent: Vec<Value>,
    /// The msgid of each accepted template message → the follower it went to.
    pub template_msgids: HashMap<u64, String>,
    /// How many more template messages today's quota allows (None: no limit); at 0
    /// `message/template/send` answers 45009.
    pub template_quota: Option<u64>,
    /// Where event callbacks go (TEMPLATESENDJOBFINISH), as the admin console's server
    /// configuration says.
    pub callback: Option<CallbackTarget>,
    next: u64,
}

/// The gateway's callback URL and the account's token and original id: what WeChat needs
/// to post (plaintext, signed) events to it.
#[derive(Clone, Debug)]
pub struct CallbackTarget {
    pub url: String,
    pub token: String,
    pub original_id: String,
}

/// Two templates as WeChat lists them (from its documentation's examples).
fn sample_templates() -> Vec<imgate_wechat::Template> {
    let t = |id: &str, title: &str, content: &str, example: &str| imgate_wechat::Template {
        template_id: id.into(),
        title: title.into(),
        primary_industry: "IT科技".into(),
        deputy_industry: "互联网|电子商务".into(),
        content: content.into(),
        example: example.into(),
    };
    vec![
        t(
            "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
            "订单发货提醒",
            "{{first.DATA}}\n订单编号：{{keyword1.DATA}}\n快递公司：{{keyword2.DATA}}\n{{remark.DATA}}",
            "您的订单已发货\n订单编号：A1001\n快递公司：顺丰速运\n感谢惠顾",
        ),
        t(
            "iPk5sOIt5X_flOVKn5GrTFpncEYTojx6ddbt8WYoV5s",
            "服务进度提醒",
            "{{first.DATA}}\n服务内容：{{keyword1.DATA}}\n处理进度：{{keyword2.DATA}}\n{{remark.DATA}}",
            "您的咨询已有回复\n服务内容：售后咨询\n处理进度：已回复\n请回复本公众号继续咨询",
        ),
    ]
}

/// How a media/get answer misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Misbehave {
    /// Says it is `declared` bytes long (Content-Length), and sends them.
    Declares(u64),
    /// Says no length (chunked), and sends `total` bytes.
    Undeclared(u64),
    /// Says it is `declared` bytes long, sends `sent` of them, and then nothing, ever.
    Stalls { declared: u64, sent: u64 },
}

#[derive(Clone, Default)]
pub struct StandIn(pub Arc<Mutex<Inner>>);

/// How long WeChat keeps temporary media: 3 days.
const MEDIA_TTL_SECS: i64 = 3 * 86_400;

/// Whether WeChat still knows `media_id`: issued here within 3 days, or put in by a test.
fn media_alive(st: &Inner, media_id: &str) -> bool {
    st.media.contains_key(media_id)
        && st.media_created.get(media_id).is_none_or(|t| st.clock.now() - t < MEDIA_TTL_SECS)
}

fn wechat_error(errcode: i64, errmsg: &str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json!({"errcode": errcode, "errmsg": errmsg}).to_string())
        .into_response()
}

fn ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

impl StandIn {
    pub fn new(apps: &[(&str, &str)]) -> StandIn {
        let s = StandIn::default();
        {
            let mut st = s.0.lock();
            st.apps = apps.iter().map(|(a, s)| (a.to_string(), s.to_string())).collect();
            st.templates = sample_templates();
        }
        s
    }

    /// Post WeChat's TEMPLATESENDJOBFINISH for template message `msgid` to the callback
    /// target, with `status` as WeChat writes it (`success`, `failed:user block`,
    /// `failed: system failed`); the gateway's answer. The follower is the one the message
    /// went to (a msgid the stand-in never gave names `oUnknownFollower`).
    pub async fn finish_template(&self, msgid: u64, status: &str) -> Result<String, String> {
        use imgate_wechat::callback::{Keys, seal};
        let (target, openid, now) = {
            let st = self.0.lock();
            let target = st.callback.clone().ok_or("no callback target: set one first")?;
            let openid = st.template_msgids.get(&msgid).cloned().unwrap_or_else(|| "oUnknownFollower".into());
            (target, openid, st.clock.now())
        };
        let xml = format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
             <CreateTime>{now}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msgid}</MsgID>\
             <Status><![CDATA[{status}]]></Status></xml>",
            target.original_id
        );
        let nonce = format!("{}", rand::random::<u32>());
        let keys = Keys { token: &target.token, appid: "", cipher: None };
        let (body, query) = seal(&xml, keys, &now.to_string(), &nonce);
        let (code, text) = super::cli::reqwest_post(&target.url, &query, body).await?;
        if code == 200 { Ok(text) } else { Err(format!("HTTP {code}: {text}")) }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/cgi-bin/token", get(token))
            .route("/cgi-bin/stable_token", post(stable_token))
            .route("/cgi-bin/message/custom/send", post(custom_send))
            .route("/cgi-bin/message/custom/typing", post(custom_typing))
            .route("/cgi-bin/media/upload", post(media_upload))
            .route("/cgi-bin/media/get", get(media_get))
            .route("/cgi-bin/user/info", get(user_info))
            .route("/cgi-bin/user/info/updateremark", post(update_remark))
            .route("/cgi-bin/message/template/send", post(template_send))
            .route("/cgi-bin/template/get_all_private_template", get(template_list))
            // Not WeChat's: for tests in other languages to arrange and inspect.
            .route("/standin/sent", get(sent))
            .route("/standin/close", post(close))
            .route("/standin/expire_media", post(expire_media))
            .route("/standin/refuse", post(refuse))
            .route("/standin/template_finish", post(template_finish))
            .route("/standin/template_sent", get(template_sent))
            .route("/standin/typing", get(typing_sent))
            // Uploads up to WeChat's largest (10 MB video) and past it, to refuse them as
            // WeChat does rather than at axum's 2 MB default.
            .layer(axum::extract::DefaultBodyLimit::max(32 << 20))
            .with_state(self.clone())
    }

    /// Serve on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Every media id issued so far expires now, as after 3 days.
    pub fn expire_media(&self) {
        for t in self.0.lock().media_created.values_mut() {
            *t = i64::MIN / 2;
        }
    }

    /// Every token handed out so far stops working (as when another caller fetched one
    /// with `cgi-bin/token`).
    pub fn expire_tokens(&self) {
        self.0.lock().tokens.clear();
    }

    fn issue(&self, appid: &str, secret: &str, reuse: bool) -> Response {
        self.0.lock().token_requests += 1;
        let mut s = self.0.lock();
        match s.apps.get(appid) {
            None => return wechat_error(40013, "invalid appid"),
            Some(want) if want != secret => return wechat_error(40125, "invalid appsecret"),
            Some(_) => {}
        }
        if reuse && let Some(t) = s.tokens.last().cloned() {
            return ok(json!({"access_token": t, "expires_in": 7200}));
        }
        s.next += 1;
        s.token_fetches += 1;
        let t = format!("TOKEN-{}-{}", appid, s.next);
        if !reuse {
            // cgi-bin/token invalidates the previous token.
            s.tokens.clear();
        }
        s.tokens.push(t.clone());
        ok(json!({"access_token": t, "expires_in": 7200}))
    }

    /// A JSON call's body, or WeChat's refusal: no valid token, not JSON.
    fn json_call(&self, q: &HashMap<String, String>, body: &[u8]) -> Result<Value, Box<Response>> {
        if let Some(r) = self.check(q) {
            return Err(Box::new(r));
        }
        serde_json::from_slice::<Value>(body).map_err(|_| Box::new(wechat_error(47001, "data format error")))
    }

    /// A customer-service call's body and its `touser`, or WeChat's refusal: no valid
    /// token, not JSON, no openid.
    fn addressed(&self, q: &HashMap<String, String>, body: &[u8]) -> Result<(Value, String), Box<Response>> {
        let v = self.json_call(q, body)?;
        let touser = v["touser"].as_str().unwrap_or_default().to_owned();
        if touser.is_empty() {
            return Err(Box::new(wechat_error(40003, "invalid openid")));
        }
        Ok((v, touser))
    }

    /// WeChat's answer to a call without a valid `access_token`, if it has none.
    fn check(&self, q: &HashMap<String, String>) -> Option<Response> {
        match q.get("access_token") {
            None => Some(wechat_error(41001, "access_token missing")),
            Some(t) if self.0.lock().tokens.contains(t) => None,
            Some(_) => Some(wechat_error(40001, "invalid credential, access_token is invalid or not latest")),
        }
    }
}

async fn token(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("grant_type").map(String::as_str) != Some("client_credential") {
        return wechat_error(40002, "invalid grant_type");
    }
    s.0.lock().legacy_token_fetches += 1;
    s.issue(q.get("appid").map_or("", String::as_str), q.get("secret").map_or("", String::as_str), false)
}

async fn stable_token(State(s): State<StandIn>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return wechat_error(47001, "data format error");
    };
    if v["grant_type"] != "client_credential" {
        return wechat_error(40002, "invalid grant_type");
    }
    let force = v["force_refresh"].as_bool().unwrap_or(false);
    s.issue(v["appid"].as_str().unwrap_or(""), v["secret"].as_str().unwrap_or(""), !force)
}

async fn custom_send(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let (v, touser) = match s.addressed(&q, &body) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let hold = {
        let mut st = s.0.lock();
        st.held_sends += u64::from(st.hold_sends.is_some());
        st.hold_sends.clone()
    };
    if let Some(gate) = hold {
        let _ = gate.acquire().await;
    }
    let mut st = s.0.lock();
    if let Some((code, msg)) = st.send_errors.pop_front() {
        return wechat_error(code, &msg);
    }
    if let Some(r) = unreachable(&st, &touser) {
        return r;
    }
    if st.replies_left.get(&touser) == Some(&0) {
        return wechat_error(45047, "out of response count limit");
    }
    if let Some(kf) = v["customservice"]["kf_account"].as_str()
        && !st.kf_accounts.contains(kf)
    {
        return wechat_error(65401, "invalid custom service account");
    }
    match v["msgtype"].as_str() {
        Some("text") if v["text"]["content"].is_string() => {}
        Some(kind @ ("image" | "voice" | "video")) => {
            let id = v[kind]["media_id"].as_str().unwrap_or_default();
            if !media_alive(&st, id) {
                return wechat_error(40007, "invalid media_id");
            }
        }
        Some("news") => {
            let articles = v["news"]["articles"].as_array().cloned().unwrap_or_default();
            if articles.is_empty() {
                return wechat_error(44003, "empty news data");
            }
            if articles.len() > 1 {
                return wechat_error(45008, "article size out of limit");
            }
            if !articles.iter().all(|a| a["title"].is_string() && a["url"].is_string()) {
                return wechat_error(47001, "data format error");
            }
        }
        Some("mpnewsarticle") if v["mpnewsarticle"]["article_id"].as_str().is_some_and(|a| !a.is_empty()) => {
        }
        Some("msgmenu") => {
            let list = v["msgmenu"]["list"].as_array().cloned().unwrap_or_default();
            let items_ok = list.iter().all(|i| i["id"].is_string() && i["content"].is_string());
            if list.is_empty() || !items_ok {
                return wechat_error(47001, "data format error");
            }
        }
        Some("miniprogrampage") => {
            let card = &v["miniprogrampage"];
            if !["title", "appid", "pagepath"]
                .iter()
                .all(|k| card[*k].as_str().is_some_and(|s| !s.is_empty()))
            {
                return wechat_error(47001, "data format error");
            }
            if !media_alive(&st, card["thumb_media_id"].as_str().unwrap_or_default()) {
                return wechat_error(40007, "invalid media_id");
            }
        }
        _ => return wechat_error(40008, "invalid message type"),
    }
    if let Some(left) = st.replies_left.get_mut(&touser) {
        *left -= 1;
    }
    st.sent.push(body);
    ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// `message/custom/typing`: `{"touser","command":"Typing"|"CancelTyping"}`. A follower
/// whose window is closed, or who refuses messages, refuses it as custom/send does.
/// WeChat's refusal of any customer-service message to `touser`, if it refuses them: the
/// window closed (45015), or a refusal a test arranged (unfollowed, blocked, turned off).
fn unreachable(st: &Inner, touser: &str) -> Option<Response> {
    if st.closed.iter().any(|o| o == touser) {
        return Some(wechat_error(45015, "response out of time limit or subscription is canceled"));
    }
    let code = *st.refusing.get(touser)?;
    let errmsg = match code {
        43004 => "require subscribe",
        43019 => "require remove blacklist",
        48002 => "api forbid for user",
        _ => "refused",
    };
    Some(wechat_error(code, errmsg))
}

async fn custom_typing(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let (v, touser) = match s.addressed(&q, &body) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !matches!(v["command"].as_str(), Some("Typing" | "CancelTyping")) {
        return wechat_error(47001, "data format error");
    }
    let mut st = s.0.lock();
    if let Some(r) = unreachable(&st, &touser) {
        return r;
    }
    st.typing.push(v);
    ok(json!({"errcode": 0, "errmsg": "ok"}))
}

async fn media_upload(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
    mut form: axum::extract::Multipart,
) -> Response {
    if let Some(r) = s.check(&q) {
        return r;
    }
    let kind = q.get("type").cloned().unwrap_or_default();
    if !matches!(kind.as_str(), "image" | "voice" | "video" | "thumb") {
        return wechat_error(40004, "invalid media type");
    }
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("media") {
            let ct = field.content_type().unwrap_or("application/octet-stream").to_owned();
            let Ok(bytes) = field.bytes().await else { return wechat_error(41005, "media data missing") };
            if let Some(refused) = media_refusal(&kind, &bytes) {
                return refused;
            }
            let mut st = s.0.lock();
            st.next += 1;
            let id = format!("MEDIA-{}", st.next);
            let now = st.clock.now();
            st.media.insert(id.clone(), (bytes, ct));
            st.media_created.insert(id.clone(), now);
            st.uploads += 1;
            return ok(json!({"type": kind, "media_id": id, "created_at": now}));
        }
    }
    wechat_error(41005, "media data missing")
}

/// What WeChat answers to an upload of `kind` it does not take: the size first, then the
/// format (by the bytes), then a voice's length.
fn media_refusal(kind: &str, bytes: &[u8]) -> Option<Response> {
    use imgate_wechat::limits::{self, Format};
    let (max, code, errmsg) = match kind {
        "image" => (limits::IMAGE_MAX, 40009, "invalid image size"),
        "voice" => (limits::VOICE_MAX, 40010, "invalid voice size"),
        "video" => (limits::VIDEO_MAX, 40011, "invalid video size"),
        _ => (limits::THUMB_MAX, 40012, "invalid thumb size"),
    };
    if bytes.is_empty() {
        return Some(wechat_error(40006, "invalid meida size"));
    }
    if bytes.len() > max {
        return Some(wechat_error(code, errmsg));
    }
    let takes = matches!(
        (kind, limits::sniff(bytes)),
        ("image", Some(Format::Png | Format::Jpeg | Format::Gif))
            | ("voice", Some(Format::Amr | Format::AmrWb | Format::Mp3))
            | ("video", Some(Format::Mp4))
            | ("thumb", Some(Format::Jpeg))
    );
    if !takes {
        return Some(wechat_error(40005, "invalid file type"));
    }
    if limits::amr_duration_ms(bytes).is_some_and(|ms| ms > limits::VOICE_MAX_MS) {
        return Some(wechat_error(45007, "playtime out of limit"));
    }
    None
}

/// Every accepted customer-service message, as JSON.
async fn sent(State(s): State<StandIn>) -> Response {
    let bodies: Vec<Value> =
        s.0.lock().sent.iter().map(|b| serde_json::from_slice(b).unwrap_or(Value::Null)).collect();
    ok(Value::Array(bodies))
}

/// `?openid=`: that follower's window is closed from now on (custom/send answers 45015).
async fn close(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(o) = q.get("openid") {
        s.0.lock().closed.push(o.clone());
    }
    ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// `?openid=&errcode=`: custom/send to that follower answers errcode from now on (43004:
/// unfollowed, 48002: messages turned off, …).
async fn refuse(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    match (q.get("openid"), q.get("errcode").and_then(|c| c.parse::<i64>().ok())) {
        (Some(o), Some(code)) => {
            s.0.lock().refusing.insert(o.clone(), code);
            ok(json!({"errcode": 0, "errmsg": "ok"}))
        }
        _ => wechat_error(40035, "invalid args"),
    }
}

/// Every media id issued so far expires now (media/get and custom/send answer 40007).
async fn expire_media(State(s): State<StandIn>) -> Response {
    s.expire_media();
    ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// The follower `openid` as `user/info` answers, arranged or made up (see [`Inner::users`]).
fn user_of(st: &mut Inner, openid: &str) -> Option<imgate_wechat::UserInfo> {
    if let Some(u) = st.users.get(openid) {
        return Some(u.clone());
    }
    let looks = openid.len() > 1
        && openid.len() <= 64
        && openid.starts_with('o')
        && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !looks {
        return None;
    }
    let u = imgate_wechat::UserInfo {
        subscribe: 1,
        openid: openid.to_owned(),
        subscribe_time: st.clock.now(),
        subscribe_scene: "ADD_SCENE_QR_CODE".into(),
        unionid: format!("oUnion-{}", &imgate_wechat::sign(&[openid])[..16]),
        remark: String::new(),
        tagid_list: vec![2],
        language: "zh_CN".into(),
    };
    st.users.insert(openid.to_owned(), u.clone());
    Some(u)
}

/// 45009 once the day's quota of the user APIs is used up; else counts one call.
fn over_user_quota(st: &mut Inner) -> Option<Response> {
    match &mut st.user_quota {
        Some(0) => Some(wechat_error(45009, "reach max api daily quota limit")),
        Some(n) => {
            *n -= 1;
            None
        }
        None => None,
    }
}

async fn user_info(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(r) = s.check(&q) {
        return r;
    }
    let hold = {
        let mut st = s.0.lock();
        st.user_info_asked.push(q.get("openid").cloned().unwrap_or_default());
        st.hold_user_info.clone()
    };
    if let Some(gate) = hold {
        let _ = gate.acquire().await;
    }
    let mut st = s.0.lock();
    st.user_info_calls += 1;
    if let Some(r) = over_user_quota(&mut st) {
        return r;
    }
    let openid = q.get("openid").cloned().unwrap_or_default();
    let Some(u) = user_of(&mut st, &openid) else { return wechat_error(40003, "invalid openid") };
    if u.subscribe == 0 {
        // WeChat says no more of someone who unfollowed.
        let mut v = json!({"subscribe": 0, "openid": u.openid});
        if !u.unionid.is_empty() {
            v["unionid"] = json!(u.unionid);
        }
        return ok(v);
    }
    let mut v = serde_json::to_value(&u).unwrap_or_default();
    // The fields WeChat still sends, that say nothing any more.
    v["groupid"] = json!(0);
    v["qr_scene"] = json!(0);
    v["qr_scene_str"] = json!("");
    ok(v)
}

async fn update_remark(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let v = match s.json_call(&q, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let (Some(openid), Some(remark)) = (v["openid"].as_str(), v["remark"].as_str()) else {
        return wechat_error(47001, "data format error");
    };
    let mut st = s.0.lock();
    if let Some(r) = over_user_quota(&mut st) {
        return r;
    }
    if remark.chars().count() > imgate_wechat::REMARK_MAX_CHARS {
        return wechat_error(45002, "content size out of limit");
    }
    if user_of(&mut st, openid).is_none() {
        return wechat_error(40003, "invalid openid");
    }
    if let Some(u) = st.users.get_mut(openid) {
        u.remark = remark.to_owned();
    }
    ok(json!({"errcode": 0, "errmsg": "ok"}))
}

async fn media_get(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(r) = s.check(&q) {
        return r;
    }
    let id = q.get("media_id").cloned().unwrap_or_default();
    let mut st = s.0.lock();
    if let Some(n) = st.media_failures.get_mut(&id)
        && *n > 0
    {
        *n -= 1;
        return wechat_error(-1, "system error");
    }
    if let Some(m) = st.media_misbehave.get(&id).copied() {
        let served = st.media_served.clone();
        let (declared, body) = match m {
            Misbehave::Declares(n) => (Some(n), stream_of(served, n, false)),
            Misbehave::Undeclared(n) => (None, stream_of(served, n, false)),
            Misbehave::Stalls { declared, sent } => (Some(declared), stream_of(served, sent, true)),
        };
        let mut r = Response::builder().header(header::CONTENT_TYPE, "image/png");
        if let Some(n) = declared {
            r = r.header(header::CONTENT_LENGTH, n);
        }
        return r.body(body).unwrap_or_else(|_| wechat_error(-1, "system error"));
    }
    match st.media.get(&id) {
        Some((bytes, ct)) if media_alive(&st, &id) => {
            ([(header::CONTENT_TYPE, ct.clone())], bytes.clone()).into_response()
        }
        _ => wechat_error(40007, "invalid media_id"),
    }
}

/// `total` bytes in 16 KiB chunks, produced as the connection takes them, each counted in
/// `served`; then the end, or with `stall` nothing more, ever.
fn stream_of(served: Arc<AtomicU64>, total: u64, stall: bool) -> axum::body::Body {
    const CHUNK: u64 = 16 << 10;
    let chunk = Bytes::from(vec![0x42u8; CHUNK as usize]);
    let bytes = futures_util::stream::unfold(0u64, move |sent| {
        let (chunk, served) = (chunk.clone(), served.clone());
        async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(CHUNK);
            served.fetch_add(n, Ordering::Relaxed);
            Some((Ok::<_, std::io::Error>(chunk.slice(..n as usize)), sent + n))
        }
    });
    if stall {
        axum::body::Body::from_stream(bytes.chain(futures_util::stream::pending()))
    } else {
        axum::body::Body::from_stream(bytes)
    }
}

/// `message/template/send`: `{touser, template_id, url?, miniprogram?, data}`. No window
/// is needed; the follower must follow the account, and the template be one of its own.
async fn template_send(
    State(s): State<StandIn>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let v = match s.json_call(&q, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut st = s.0.lock();
    let touser = v["touser"].as_str().unwrap_or_default().to_owned();
    let Some(user) = user_of(&mut st, &touser) else { return wechat_error(40003, "invalid openid") };
    let template_id = v["template_id"].as_str().unwrap_or_default();
    if !st.templates.iter().any(|t| t.template_id == template_id) {
        return wechat_error(40037, "invalid template_id");
    }
    if user.subscribe == 0 || st.refusing.get(&touser) == Some(&43004) {
        return wechat_error(43004, "require subscribe");
    }
    if !v["data"].is_object() {
        return wechat_error(47001, "data format error");
    }
    match &mut st.template_quota {
        Some(0) => return wechat_error(45009, "reach max api daily quota limit"),
        Some(n) => *n -= 1,
        None => {}
    }
    st.next += 1;
    let msgid = 200_228_332 + st.next;
    st.template_msgids.insert(msgid, touser);
    st.template_sent.push(v);
    ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

async fn template_list(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(r) = s.check(&q) {
        return r;
    }
    let mut st = s.0.lock();
    st.template_list_calls += 1;
    ok(json!({"template_list": st.templates}))
}

/// What `message/template/send` took: `{"sent":[body…],"msgids":{"N":openid}}` (the msgid
/// of each, to post its TEMPLATESENDJOBFINISH with `/standin/template_finish`).
async fn template_sent(State(s): State<StandIn>) -> Response {
    let st = s.0.lock();
    let msgids: serde_json::Map<String, Value> =
        st.template_msgids.iter().map(|(id, o)| (id.to_string(), Value::String(o.clone()))).collect();
    ok(json!({"sent": st.template_sent, "msgids": msgids}))
}

/// Every `custom/typing` body accepted, in order: `{"typing": [...]}`.
async fn typing_sent(State(s): State<StandIn>) -> Response {
    ok(json!({"typing": s.0.lock().typing}))
}

/// `?msgid=&status=`: post the TEMPLATESENDJOBFINISH of that message to the callback
/// target (`status` defaults to `success`).
async fn template_finish(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(msgid) = q.get("msgid").and_then(|m| m.parse::<u64>().ok()) else {
        return wechat_error(40035, "invalid args");
    };
    let status = q.get("status").map_or("success", String::as_str);
    match s.finish_template(msgid, status).await {
        Ok(answer) => ok(json!({"errcode": 0, "errmsg": "ok", "answer": answer})),
        Err(e) => wechat_error(-1, &e),
    }
}

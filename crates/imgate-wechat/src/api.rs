//! WeChat's HTTP API: access tokens, customer-service messages, media, followers' profiles
//! (`user/info`, `user/info/updateremark`). The base URL is
//! configurable, so tests point it at a stand-in.
//!
//! Access tokens travel in query strings: errors are reported without URLs, so a token
//! never reaches a log.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("cannot reach WeChat: {0}")]
    Unreachable(String),
    #[error("WeChat error {errcode}: {errmsg}")]
    WeChat { errcode: i64, errmsg: String },
    #[error("WeChat answered something unexpected: {0}")]
    BadAnswer(String),
    /// A download over its limit, declared or counted; given up at once, not read on.
    #[error("the media is larger than {limit} bytes (wechat.media_max): not downloaded")]
    TooLarge { limit: usize },
}

impl ApiError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::WeChat { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// The token was refused: invalidate it and try once more with a fresh one.
    pub fn is_token_error(&self) -> bool {
        matches!(self.errcode(), Some(40001 | 40014 | 42001))
    }

    /// For the agent: WeChat's code, its message, and what it means.
    pub fn explain(&self) -> String {
        match self {
            ApiError::WeChat { errcode, errmsg } => match crate::errors::plain_words(*errcode) {
                Some(words) => format!("{words} (WeChat {errcode}: {errmsg})"),
                None => format!("WeChat refused it ({errcode}: {errmsg})"),
            },
            other => other.to_string(),
        }
    }
}

/// An access token as WeChat issues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub expires_in: u64,
}

/// A follower as `cgi-bin/user/info` describes them. Since December 2021 WeChat gives no
/// nickname or avatar: the remark an agent set is the only name there is. An unsubscribed
/// follower's answer has only `subscribe: 0`, the openid and (sometimes) the unionid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct UserInfo {
    /// 1 while they follow the account, 0 after they unfollowed.
    pub subscribe: i64,
    pub openid: String,
    /// Unix seconds of their latest subscription.
    pub subscribe_time: i64,
    /// How they came: `ADD_SCENE_QR_CODE`, `ADD_SCENE_SEARCH`, …
    pub subscribe_scene: String,
    /// The same person across the company's accounts (only when the account is bound to an
    /// Open Platform account).
    pub unionid: String,
    pub remark: String,
    pub tagid_list: Vec<i64>,
    /// `zh_CN`, `en`, …
    pub language: String,
}

/// How long a remark WeChat's `user/info/updateremark` takes, in characters.
pub const REMARK_MAX_CHARS: usize = 30;

/// Downloaded media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Media {
    Bytes {
        bytes: Bytes,
        content_type: String,
    },
    /// Video: WeChat answers with a URL to fetch it from.
    VideoUrl(String),
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

/// How long one media download may take in all, while bytes keep coming (a stall is cut
/// sooner: no bytes for the API timeout). 10 MiB at 100 KB/s fits.
pub const MEDIA_DEADLINE: Duration = Duration::from_secs(120);

/// What a media body may reserve before its bytes arrive: a declared length is a claim,
/// and a server that declares 10 MiB and stalls must not hold 10 MiB.
const MEDIA_PREALLOC: usize = 256 << 10;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    media_id: Option<String>,
    #[serde(default)]
    video_url: Option<String>,
    /// `message/template/send`'s id of the message, which its TEMPLATESENDJOBFINISH names.
    #[serde(default)]
    msgid: Option<u64>,
}

/// One of the account's templates, as `template/get_all_private_template` lists it.
/// `content` names its fields: `{{first.DATA}}` is the field `first`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Template {
    pub template_id: String,
    pub title: String,
    pub primary_industry: String,
    pub deputy_industry: String,
    pub content: String,
    pub example: String,
}

impl Template {
    /// The fields `content` names, in order, once each: `{{first.DATA}}` → `first`.
    pub fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut rest = self.content.as_str();
        while let Some(start) = rest.find("{{") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find("}}") else { break };
            let inner = rest[..end].trim();
            rest = &rest[end + 2..];
            if let Some(key) = inner.strip_suffix(".DATA").map(str::trim)
                && !key.is_empty()
                && !out.iter().any(|k| k == key)
            {
                out.push(key.to_owned());
            }
        }
        out
    }
}

/// Times one API call in `imgate_wechat_api_duration_seconds`, by `api` and `outcome`:
/// `ok`, WeChat's errcode, or `unreachable`, `bad_answer`, `too_large`. Token fetches are
/// also counted in `imgate_wechat_token_refreshes_total` by outcome (`ok`, `failed`).
async fn observed<T>(
    api: &'static str,
    call: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(ApiError::WeChat { errcode, .. }) => errcode.to_string(),
        Err(ApiError::Unreachable(_)) => "unreachable".to_owned(),
        Err(ApiError::BadAnswer(_)) => "bad_answer".to_owned(),
        Err(ApiError::TooLarge { .. }) => "too_large".to_owned(),
    };
    if matches!(api, "token" | "stable_token") {
        let refreshed = if result.is_ok() { "ok" } else { "failed" };
        metrics::counter!("imgate_wechat_token_refreshes_total", "outcome" => refreshed).increment(1);
    }
    metrics::histogram!("imgate_wechat_api_duration_seconds", "api" => api, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}

fn unreachable(e: reqwest::Error) -> ApiError {
    ApiError::Unreachable(e.without_url().to_string())
}

/// Make ring rustls's cryptography for this process, once, before any HTTPS client is
/// built (reqwest is built without a provider of its own, so a client built before this
/// panics). A provider already installed is kept: calling it again is harmless.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Api {
    /// `base`: `https://api.weixin.qq.com`, or a stand-in's URL.
    /// `timeout`: a whole API call, and for media downloads the longest wait for the next
    /// bytes (a download as a whole has [`MEDIA_DEADLINE`]).
    pub fn new(base: &str, timeout: Duration) -> Api {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .read_timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Api { http, base: base.trim_end_matches('/').to_owned(), timeout }
    }

    fn download_error(&self, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            let deadline = MEDIA_DEADLINE.max(self.timeout);
            return ApiError::Unreachable(format!(
                "media download cut off: no bytes for {:?} (wechat.api_timeout), or not done within {:?}",
                self.timeout, deadline
            ));
        }
        unreachable(e)
    }

    /// A media body, read as it arrives and given up as soon as it is over `max`: a
    /// declared length before anything is read, an undeclared one (chunked, or a server
    /// that does not say) at the first byte past `max`.
    async fn read_capped(&self, mut resp: reqwest::Response, max: usize) -> Result<Bytes, ApiError> {
        let declared = resp.content_length();
        if declared.is_some_and(|n| n > max as u64) {
            return Err(ApiError::TooLarge { limit: max });
        }
        let reserve = declared.map_or(0, |n| n as usize).min(MEDIA_PREALLOC);
        let mut buf = bytes::BytesMut::with_capacity(reserve);
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.download_error(e))? {
            if buf.len().saturating_add(chunk.len()) > max {
                // Dropping the response closes the connection: nothing more is read.
                return Err(ApiError::TooLarge { limit: max });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST` `body` to `path` with the access token, as UTF-8 JSON as it is (`\u` escapes
    /// were shown literally to followers): WeChat's answer, or its refusal.
    async fn post_json(&self, path: &str, token: &str, body: &Value) -> Result<Answer, ApiError> {
        let json = serde_json::to_vec(body).map_err(|e| ApiError::BadAnswer(e.to_string()))?;
        let resp = self
            .http
            .post(self.url(path))
            .query(&[("access_token", token)])
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(json)
            .send()
            .await
            .map_err(unreachable)?;
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> Result<Answer, ApiError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        let a: Answer = serde_json::from_slice(&body).map_err(|_| {
            ApiError::BadAnswer(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        if a.errcode != 0 {
            return Err(ApiError::WeChat { errcode: a.errcode, errmsg: a.errmsg });
        }
        Ok(a)
    }

    /// A token answer's body is never repeated in an error: it may hold the token.
    async fn token_answer(resp: reqwest::Response) -> Result<Answer, ApiError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(unreachable)?;
        let a: Answer = serde_json::from_slice(&body).map_err(|_| {
            ApiError::BadAnswer(format!("HTTP {status}: an access-token answer that is not JSON"))
        })?;
        if a.errcode != 0 {
            return Err(ApiError::WeChat { errcode: a.errcode, errmsg: a.errmsg });
        }
        Ok(a)
    }

    fn token_of(a: Answer) -> Result<Token, ApiError> {
        match a.access_token {
            Some(value) if !value.is_empty() => Ok(Token { value, expires_in: a.expires_in.unwrap_or(7200) }),
            _ => Err(ApiError::BadAnswer("no access_token in the answer".into())),
        }
    }

    /// `POST cgi-bin/stable_token`: the same token while it is valid, so several callers
    /// may ask without invalidating each other. `force_refresh` is rationed by WeChat.
    pub async fn stable_token(
        &self,
        appid: &str,
        secret: &str,
        force_refresh: bool,
    ) -> Result<Token, ApiError> {
        observed("stable_token", async {
            let body = serde_json::json!({"grant_type": "client_credential", "appid": appid, "secret": secret,
                "force_refresh": force_refresh});
            let resp = self
                .http
                .post(self.url("/cgi-bin/stable_token"))
                .json(&body)
                .send()
                .await
                .map_err(unreachable)?;
            Self::token_of(Self::token_answer(resp).await?)
        })
        .await
    }

    /// `GET cgi-bin/token`: every call invalidates the previous token.
    pub async fn token(&self, appid: &str, secret: &str) -> Result<Token, ApiError> {
        observed("token", async {
            let resp = self
                .http
                .get(self.url("/cgi-bin/token"))
                .query(&[("grant_type", "client_credential"), ("appid", appid), ("secret", secret)])
                .send()
                .await
                .map_err(unreachable)?;
            Self::token_of(Self::token_answer(resp).await?)
        })
        .await
    }

    /// `POST cgi-bin/message/custom/send`. The body goes as UTF-8 as it is: `\u` escapes
    /// were shown literally to followers.
    pub async fn custom_send(&self, token: &str, body: &Value) -> Result<(), ApiError> {
        observed("message/custom/send", async {
            self.post_json("/cgi-bin/message/custom/send", token, body).await.map(|_| ())
        })
        .await
    }

    /// `POST cgi-bin/message/template/send`, which needs no customer-service window:
    /// WeChat's `msgid` of the message (its TEMPLATESENDJOBFINISH event names it).
    pub async fn template_send(&self, token: &str, body: &Value) -> Result<u64, ApiError> {
        observed("message/template/send", async {
            self.post_json("/cgi-bin/message/template/send", token, body)
                .await?
                .msgid
                .ok_or_else(|| ApiError::BadAnswer("no msgid in the answer".into()))
        })
        .await
    }

    /// `GET cgi-bin/template/get_all_private_template`: the account's templates.
    pub async fn templates(&self, token: &str) -> Result<Vec<Template>, ApiError> {
        observed("template/get_all_private_template", async {
            let resp = self
                .http
                .get(self.url("/cgi-bin/template/get_all_private_template"))
                .query(&[("access_token", token)])
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(unreachable)?;
            let bad = || {
                ApiError::BadAnswer(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            };
            #[derive(Deserialize)]
            struct List {
                #[serde(default)]
                errcode: i64,
                #[serde(default)]
                errmsg: String,
                #[serde(default)]
                template_list: Vec<Template>,
            }
            let l: List = serde_json::from_slice(&body).map_err(|_| bad())?;
            if l.errcode != 0 {
                return Err(ApiError::WeChat { errcode: l.errcode, errmsg: l.errmsg });
            }
            Ok(l.template_list)
        })
        .await
    }

    /// `POST cgi-bin/message/custom/typing`: the follower sees "typing…" for 15 s
    /// (`command`: `Typing` or `CancelTyping`).
    pub async fn custom_typing(&self, token: &str, openid: &str, command: &str) -> Result<(), ApiError> {
        observed("message/custom/typing", async {
            let body = serde_json::json!({"touser": openid, "command": command});
            self.post_json("/cgi-bin/message/custom/typing", token, &body).await.map(|_| ())
        })
        .await
    }

    /// `GET cgi-bin/user/info`: what WeChat says of follower `openid`.
    pub async fn user_info(&self, token: &str, openid: &str) -> Result<UserInfo, ApiError> {
        observed("user/info", async {
            let resp = self
                .http
                .get(self.url("/cgi-bin/user/info"))
                .query(&[("access_token", token), ("openid", openid), ("lang", "zh_CN")])
                .send()
                .await
                .map_err(unreachable)?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(unreachable)?;
            let bad = || {
                ApiError::BadAnswer(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ))
            };
            let v: Value = serde_json::from_slice(&body).map_err(|_| bad())?;
            let errcode = v.get("errcode").and_then(Value::as_i64).unwrap_or(0);
            if errcode != 0 {
                let errmsg = v.get("errmsg").and_then(Value::as_str).unwrap_or_default().to_owned();
                return Err(ApiError::WeChat { errcode, errmsg });
            }
            serde_json::from_value(v).map_err(|_| bad())
        })
        .await
    }

    /// `POST cgi-bin/user/info/updateremark`: the follower's remark becomes `remark` (empty:
    /// none). WeChat takes at most [`REMARK_MAX_CHARS`] characters.
    pub async fn update_remark(&self, token: &str, openid: &str, remark: &str) -> Result<(), ApiError> {
        observed("user/info/updateremark", async {
            let body = serde_json::json!({"openid": openid, "remark": remark});
            self.post_json("/cgi-bin/user/info/updateremark", token, &body).await.map(|_| ())
        })
        .await
    }

    /// `POST cgi-bin/media/upload?type=image|voice|video|thumb`: the `media_id`.
    pub async fn media_upload(
        &self,
        token: &str,
        kind: &str,
        filename: &str,
        content_type: &str,
        bytes: Bytes,
    ) -> Result<String, ApiError> {
        observed("media/upload", async {
            let part = reqwest::multipart::Part::stream(bytes)
                .file_name(filename.to_owned())
                .mime_str(content_type)
                .map_err(|e| ApiError::BadAnswer(e.without_url().to_string()))?;
            let form = reqwest::multipart::Form::new().part("media", part);
            let resp = self
                .http
                .post(self.url("/cgi-bin/media/upload"))
                .query(&[("access_token", token), ("type", kind)])
                .multipart(form)
                .send()
                .await
                .map_err(unreachable)?;
            Self::answer(resp)
                .await?
                .media_id
                .ok_or_else(|| ApiError::BadAnswer("no media_id in the answer".into()))
        })
        .await
    }

    /// `GET cgi-bin/media/get`: the bytes, or for video the URL to fetch. An error comes
    /// as JSON with HTTP 200, so the answer is sniffed before it is trusted as media. At
    /// most `max` bytes are read ([`ApiError::TooLarge`]).
    pub async fn media_get(&self, token: &str, media_id: &str, max: usize) -> Result<Media, ApiError> {
        observed("media/get", async {
            let resp = self
                .http
                .get(self.url("/cgi-bin/media/get"))
                .query(&[("access_token", token), ("media_id", media_id)])
                .timeout(MEDIA_DEADLINE.max(self.timeout))
                .send()
                .await
                .map_err(|e| self.download_error(e))?;
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let status = resp.status();
            let bytes = self.read_capped(resp, max).await?;
            let looks_json = content_type.contains("json")
                || content_type.starts_with("text/")
                || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if looks_json {
                let a: Answer = serde_json::from_slice(&bytes).map_err(|_| {
                    ApiError::BadAnswer(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                    ))
                })?;
                if a.errcode != 0 {
                    return Err(ApiError::WeChat { errcode: a.errcode, errmsg: a.errmsg });
                }
                return a
                    .video_url
                    .map(Media::VideoUrl)
                    .ok_or_else(|| ApiError::BadAnswer("JSON without media".into()));
            }
            if !status.is_success() {
                return Err(ApiError::BadAnswer(format!("HTTP {status}")));
            }
            Ok(Media::Bytes { bytes, content_type })
        })
        .await
    }

    /// Fetch a URL WeChat gave (a video's), at most `max` bytes of it.
    pub async fn fetch(&self, url: &str, max: usize) -> Result<Media, ApiError> {
        observed("video_url", async {
            let resp = self
                .http
                .get(url)
                .timeout(MEDIA_DEADLINE.max(self.timeout))
                .send()
                .await
                .map_err(|e| self.download_error(e))?;
            if !resp.status().is_success() {
                return Err(ApiError::BadAnswer(format!("HTTP {}", resp.status())));
            }
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("video/mp4")
                .to_owned();
            let bytes = self.read_capped(resp, max).await?;
            Ok(Media::Bytes { bytes, content_type })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::Template;

    #[test]
    fn a_templates_fields_are_read_from_its_content() {
        let t = Template {
            content: "{{first.DATA}}\n订单号：{{keyword1.DATA}}\n时间：{{ keyword2.DATA }}\n{{first.DATA}}{{bad}}{{remark.DATA}}"
                .into(),
            ..Default::default()
        };
        assert_eq!(t.fields(), ["first", "keyword1", "keyword2", "remark"]);
    }
}

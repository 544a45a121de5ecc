//! An account's access token: fetched on first use, cached, refreshed before it expires,
//! one refresh at a time; and when WeChat refuses it, invalidated only if it is still the
//! one that failed (compare-and-expire), refreshed, and the call retried once — never a
//! loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::api::{Api, ApiError};

/// How the token is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    /// `cgi-bin/stable_token`: callers share one token; safe with several nodes.
    Stable,
    /// `cgi-bin/token`: each fetch invalidates the last (one caller only).
    Legacy,
}

/// Refresh this long before WeChat's expiry (its tokens overlap for 5 minutes).
const EARLY: Duration = Duration::from_secs(300);

/// Where several nodes keep one account's token, so that one refreshes at a time and all
/// use the same (imgate's Redis engine implements it).
#[async_trait::async_trait]
pub trait SharedTokens: Send + Sync {
    /// The shared token and its seconds to live, if there is one.
    async fn get(&self, appid: &str) -> Option<(String, u64)>;
    /// Become the node that refreshes: `false` while another holds the lock.
    async fn lock(&self, appid: &str) -> bool;
    /// Share a fresh token (and release the lock).
    async fn put(&self, appid: &str, token: &str, ttl_secs: u64);
    /// Forget `token` if it is still the shared one.
    async fn forget(&self, appid: &str, token: &str);
}

/// How long a node waits for another's refresh before refreshing itself.
const WAIT_FOR_PEER: Duration = Duration::from_secs(10);

struct Cached {
    value: String,
    expires_at: Instant,
}

pub struct TokenCache {
    api: Api,
    appid: String,
    secret: String,
    mode: TokenMode,
    /// Held across the fetch on purpose: it is what makes refreshes one at a time.
    state: Mutex<Option<Cached>>,
    shared: Option<Arc<dyn SharedTokens>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("appid", &self.appid)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub fn new(
        api: Api,
        appid: &str,
        secret: &str,
        mode: TokenMode,
        shared: Option<Arc<dyn SharedTokens>>,
    ) -> TokenCache {
        TokenCache {
            api,
            appid: appid.to_owned(),
            secret: secret.to_owned(),
            mode,
            state: Mutex::new(None),
            shared,
        }
    }

    async fn fetch(&self) -> Result<crate::api::Token, ApiError> {
        match self.mode {
            TokenMode::Stable => self.api.stable_token(&self.appid, &self.secret, false).await,
            TokenMode::Legacy => self.api.token(&self.appid, &self.secret).await,
        }
    }

    /// A token believed valid.
    pub async fn get(&self) -> Result<String, ApiError> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref()
            && Instant::now() < c.expires_at
        {
            return Ok(c.value.clone());
        }
        let Some(shared) = &self.shared else {
            let t = self.fetch().await?;
            let life = Duration::from_secs(t.expires_in).saturating_sub(EARLY).max(Duration::from_secs(30));
            tracing::info!(appid = %self.appid, expires_in = t.expires_in, "access token refreshed");
            *state = Some(Cached { value: t.value.clone(), expires_at: Instant::now() + life });
            return Ok(t.value);
        };
        // Several nodes: take the shared token, or be the one that refreshes it.
        let deadline = Instant::now() + WAIT_FOR_PEER;
        loop {
            if let Some((value, ttl)) = shared.get(&self.appid).await
                && ttl > 0
            {
                *state = Some(Cached {
                    value: value.clone(),
                    expires_at: Instant::now() + Duration::from_secs(ttl),
                });
                return Ok(value);
            }
            if shared.lock(&self.appid).await || Instant::now() >= deadline {
                let t = self.fetch().await?;
                let life =
                    Duration::from_secs(t.expires_in).saturating_sub(EARLY).max(Duration::from_secs(30));
                shared.put(&self.appid, &t.value, life.as_secs()).await;
                tracing::info!(appid = %self.appid, expires_in = t.expires_in, "access token refreshed for every node");
                *state = Some(Cached { value: t.value.clone(), expires_at: Instant::now() + life });
                return Ok(t.value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forget `failed`, if it is still the cached token (another caller may have
    /// refreshed already).
    pub async fn invalidate(&self, failed: &str) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| c.value == failed) {
            *state = None;
        }
        if let Some(shared) = &self.shared {
            shared.forget(&self.appid, failed).await;
        }
    }

    /// Call `f` with a token; if WeChat refuses the token, refresh and call once more.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let token = self.get().await?;
        match f(token.clone()).await {
            Err(e) if e.is_token_error() => {
                tracing::warn!(appid = %self.appid, errcode = ?e.errcode(), "access token refused; refreshing once");
                self.invalidate(&token).await;
                f(self.get().await?).await
            }
            other => other,
        }
    }
}

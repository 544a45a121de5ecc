//! An account's access token: fetched on first use, cached, refreshed before it expires,
//! one refresh at a time; and when WeChat refuses it, invalidated only if it is still the
//! one that failed (compare-and-expire), refreshed, and the call retried once — never a
//! loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Release the lock after a failed refresh, so that another node may try at once.
    async fn unlock(&self, appid: &str);
    /// Forget `token` if it is still the shared one.
    async fn forget(&self, appid: &str, token: &str);
}

/// How long a node waits for another's refresh before refreshing itself.
const WAIT_FOR_PEER: Duration = Duration::from_secs(10);

struct Cached {
    value: String,
    expires_at: Instant,
}

/// The outcome of the latest refresh, numbered, so that callers who queued behind it
/// take it instead of asking WeChat again (a refused or unreachable fetch is not repeated
/// once per waiting caller).
struct Refresh {
    generation: u64,
    outcome: Option<Result<String, ApiError>>,
}

pub struct TokenCache {
    api: Api,
    appid: String,
    secret: String,
    mode: TokenMode,
    /// The token in use. Read and replaced in a moment, never held across a call: a caller
    /// with a valid token, or one invalidating a refused token, never waits for a refresh.
    cached: std::sync::Mutex<Option<Cached>>,
    /// One refresh at a time. Held across the fetch (and the wait for a peer's token), and
    /// only by the caller doing the refresh for everyone: the callers queued behind it
    /// share its outcome, they do not start their own.
    refresh: Mutex<Refresh>,
    generation: AtomicU64,
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
            cached: std::sync::Mutex::new(None),
            refresh: Mutex::new(Refresh { generation: 0, outcome: None }),
            generation: AtomicU64::new(0),
            shared,
        }
    }

    async fn fetch(&self) -> Result<crate::api::Token, ApiError> {
        match self.mode {
            TokenMode::Stable => self.api.stable_token(&self.appid, &self.secret, false).await,
            TokenMode::Legacy => self.api.token(&self.appid, &self.secret).await,
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        // A panic while holding it cannot leave it half-written: take it as it is.
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn valid(&self) -> Option<String> {
        self.cached().as_ref().filter(|c| Instant::now() < c.expires_at).map(|c| c.value.clone())
    }

    fn keep(&self, value: &str, life: Duration) {
        *self.cached() = Some(Cached { value: value.to_owned(), expires_at: Instant::now() + life });
    }

    /// A token believed valid.
    pub async fn get(&self) -> Result<String, ApiError> {
        if let Some(v) = self.valid() {
            return Ok(v);
        }
        let seen = self.generation.load(Ordering::Acquire);
        let mut refresh = self.refresh.lock().await;
        if refresh.generation != seen
            && let Some(outcome) = &refresh.outcome
        {
            // A refresh finished while this caller queued: its outcome is this caller's too.
            return outcome.clone();
        }
        if let Some(v) = self.valid() {
            return Ok(v);
        }
        let outcome = self.refresh_now().await;
        refresh.generation = seen + 1;
        refresh.outcome = Some(outcome.clone());
        self.generation.store(seen + 1, Ordering::Release);
        outcome
    }

    async fn refresh_now(&self) -> Result<String, ApiError> {
        let Some(shared) = &self.shared else {
            let t = self.fetch().await?;
            let life = lifetime(t.expires_in);
            tracing::info!(appid = %self.appid, expires_in = t.expires_in, "access token refreshed");
            self.keep(&t.value, life);
            return Ok(t.value);
        };
        // Several nodes: take the shared token, or be the one that refreshes it.
        let deadline = Instant::now() + WAIT_FOR_PEER;
        loop {
            if let Some((value, ttl)) = shared.get(&self.appid).await
                && ttl > 0
            {
                self.keep(&value, Duration::from_secs(ttl));
                return Ok(value);
            }
            let locked = shared.lock(&self.appid).await;
            if locked || Instant::now() >= deadline {
                let t = match self.fetch().await {
                    Ok(t) => t,
                    Err(e) => {
                        // Let another node try now, not when the lock expires.
                        if locked {
                            shared.unlock(&self.appid).await;
                        }
                        return Err(e);
                    }
                };
                let life = lifetime(t.expires_in);
                shared.put(&self.appid, &t.value, life.as_secs()).await;
                tracing::info!(appid = %self.appid, expires_in = t.expires_in, "access token refreshed for every node");
                self.keep(&t.value, life);
                return Ok(t.value);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Forget `failed`, if it is still the cached token (another caller may have
    /// refreshed already).
    pub async fn invalidate(&self, failed: &str) {
        {
            let mut cached = self.cached();
            if cached.as_ref().is_some_and(|c| c.value == failed) {
                *cached = None;
            }
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

/// How long to use a token: WeChat's life less the overlap, never under 30 s.
fn lifetime(expires_in: u64) -> Duration {
    Duration::from_secs(expires_in).saturating_sub(EARLY).max(Duration::from_secs(30))
}

#[cfg(test)]
mod tests;

//! Who is calling: open mode takes the `userid` a caller names; token mode wants an HS256
//! JWT (`sub` = userid) or a configured API key. Also the Origin check for WebSockets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{AuthConfig, AuthMode};

/// Why a caller was refused. `http` maps it to 401 and 403.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or bad ones.
    #[error("{0}")]
    Unauthorized(String),
    /// Good credentials that do not allow this (another user, an Origin not allowed).
    #[error("{0}")]
    Forbidden(String),
}

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A user proven by a token: the token's subject.
    User(String),
    /// A user named but not proven: the `userid` of open mode, or of a backend holding an
    /// API key. It may connect and read as that user; what it sends is not copied to that
    /// user's mailbox (a backend pushing on behalf of a user is not that user's console).
    Named(String),
    /// A backend (an API key, or an anonymous caller in open mode) that named no user.
    Backend,
}

/// A caller, and until when its credentials hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    pub caller: Caller,
    /// When a token's `exp` (plus the leeway) passes; None for API keys and open mode.
    pub expires: Option<SystemTime>,
}

pub struct Auth {
    mode: AuthMode,
    /// None when no secret is set: every JWT is refused.
    key: Option<DecodingKey>,
    validation: Validation,
    leeway: Duration,
    api_keys: Vec<String>,
    origins: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl Caller {
    /// The user this caller acts as, proven or named.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::User(u) | Caller::Named(u) => Some(u),
            Caller::Backend => None,
        }
    }
}

impl Auth {
    pub fn new(c: &AuthConfig) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token issued for later is not good yet (jsonwebtoken skips nbf by default).
        validation.validate_nbf = true;
        validation.leeway = c.leeway.as_secs();
        Auth {
            mode: c.mode,
            key: (!c.jwt_secret.is_empty())
                .then(|| DecodingKey::from_secret(c.jwt_secret.as_bytes()).ok())
                .flatten(),
            validation,
            leeway: Duration::from_secs(c.leeway.as_secs()),
            // Headers are trimmed, so keys are too; config validation refuses empty ones,
            // and an empty one is dropped here as well, whoever built the config.
            api_keys: c.api_keys.iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect(),
            origins: c.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_owned()).collect(),
        }
    }

    /// The caller, from its credentials (`token` from the query string, or the
    /// `Authorization`/`X-Api-Key` headers) and the `userid` it names.
    pub fn caller(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        userid: Option<&str>,
    ) -> Result<Caller, AuthError> {
        self.authorize(headers, token, userid).map(|a| a.caller)
    }

    /// As [`Auth::caller`], with when the credentials expire (a WebSocket closes then).
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        userid: Option<&str>,
    ) -> Result<Authorized, AuthError> {
        let named = userid.filter(|u| !u.is_empty()).map(str::to_owned);
        if self.mode == AuthMode::Open {
            return Ok(Authorized { caller: named.map_or(Caller::Backend, Caller::Named), expires: None });
        }
        let in_query = token.is_some();
        let presented = token.map(str::to_owned).or_else(|| credential(headers)).ok_or_else(|| {
            AuthError::Unauthorized(
                "credentials required: a JWT (?token= or Authorization: Bearer) or an API key".into(),
            )
        })?;
        if presented.is_empty() {
            return Err(AuthError::Unauthorized("empty token".into()));
        }
        if self.is_api_key(&presented) {
            if in_query {
                // A URL is written to access logs, proxies' included: a key there leaks.
                tracing::warn!("an API key was sent in a query string and refused; rotate that key");
                return Err(AuthError::Unauthorized(
                    "API keys are taken only in a header (Authorization: Bearer KEY or X-Api-Key), \
                     never in a URL"
                        .into(),
                ));
            }
            return Ok(Authorized { caller: named.map_or(Caller::Backend, Caller::Named), expires: None });
        }
        let key = self.key.as_ref().ok_or_else(|| AuthError::Unauthorized("unknown API key".into()))?;
        let claims = jsonwebtoken::decode::<Claims>(&presented, key, &self.validation)
            .map_err(|e| AuthError::Unauthorized(format!("token refused: {e}")))?
            .claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Unauthorized("token refused: its sub (the user id) is empty".into()));
        }
        // A far-off exp never expires rather than overflowing.
        let expires =
            Duration::from_secs(claims.exp).checked_add(self.leeway).and_then(|d| UNIX_EPOCH.checked_add(d));
        // jsonwebtoken compares whole seconds and still takes a token within its exp's
        // second; it is over at exp itself (RFC 7519), as the socket it opens would be.
        if expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(AuthError::Unauthorized("token refused: ExpiredSignature".into()));
        }
        match named {
            Some(u) if u != claims.sub => {
                Err(AuthError::Forbidden(format!("the token is for user {:?}, not {u:?}", claims.sub)))
            }
            _ => Ok(Authorized { caller: Caller::User(claims.sub), expires }),
        }
    }

    /// Operators' endpoints (`/metrics`): open in open mode; in token mode an API key in a
    /// header, since a user's token must not reveal the whole gateway's traffic.
    pub fn operator(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.mode == AuthMode::Open {
            return Ok(());
        }
        match credential(headers) {
            Some(k) if !k.is_empty() && self.is_api_key(&k) => Ok(()),
            _ => Err(AuthError::Unauthorized(
                "this endpoint needs an API key: Authorization: Bearer KEY or X-Api-Key".into(),
            )),
        }
    }

    fn is_api_key(&self, presented: &str) -> bool {
        !presented.is_empty()
            && self.api_keys.iter().any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes()))
    }

    /// Browsers send `Origin` on WebSocket upgrades; refuse those not allowed.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.origins.is_empty() {
            return Ok(());
        }
        match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            // Non-browser clients send no Origin; the token still applies to them.
            None => Ok(()),
            Some(o) if self.origins.iter().any(|a| a == "*" || a == o.trim_end_matches('/')) => Ok(()),
            Some(o) => Err(AuthError::Forbidden(format!("origin {o} is not in auth.allowed_origins"))),
        }
    }
}

fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, rest)) = v.split_at_checked(6)
        && scheme.eq_ignore_ascii_case("bearer")
        && (rest.is_empty() || rest.starts_with([' ', '\t']))
    {
        // "Bearer" with nothing after it is an empty token, which matches nothing.
        return Some(rest.trim().to_owned());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const KEY: &str = "backend-key-of-at-least-32-characters";

    fn auth_with(tune: impl FnOnce(&mut AuthConfig)) -> Auth {
        let mut c = AuthConfig {
            mode: AuthMode::Token,
            jwt_secret: SECRET.into(),
            api_keys: vec![KEY.into()],
            allowed_origins: vec!["https://console.example".into()],
            ..AuthConfig::default()
        };
        tune(&mut c);
        Auth::new(&c)
    }

    fn auth() -> Auth {
        auth_with(|_| {})
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn jwt(sub: &str, exp_from_now: i64, secret: &str) -> String {
        sign(serde_json::json!({"sub": sub, "exp": now() + exp_from_now}), secret)
    }

    fn header(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn token_mode_callers() {
        let a = auth();
        let h = HeaderMap::new();
        let good = jwt("agent1", 600, SECRET);
        assert_eq!(a.caller(&h, Some(&good), None).unwrap(), Caller::User("agent1".into()));
        assert_eq!(a.caller(&h, Some(&good), Some("agent1")).unwrap(), Caller::User("agent1".into()));
        assert!(matches!(a.caller(&h, Some(&good), Some("agent2")), Err(AuthError::Forbidden(_))));
        assert!(matches!(a.caller(&h, None, Some("agent1")), Err(AuthError::Unauthorized(_))));
        let expired = jwt("agent1", -600, SECRET);
        assert!(matches!(a.caller(&h, Some(&expired), None), Err(AuthError::Unauthorized(_))));
        let forged = jwt("agent1", 600, "another secret 12345 of 32 bytes");
        assert!(matches!(a.caller(&h, Some(&forged), None), Err(AuthError::Unauthorized(_))));
        let k = header("x-api-key", KEY);
        assert_eq!(a.caller(&k, None, None).unwrap(), Caller::Backend);
        assert_eq!(a.caller(&k, None, Some("u")).unwrap(), Caller::Named("u".into()));
        let b = header("authorization", &format!("Bearer {good}"));
        assert_eq!(a.caller(&b, None, None).unwrap(), Caller::User("agent1".into()));
        let b = header("authorization", &format!("bearer {KEY}"));
        assert_eq!(a.caller(&b, None, None).unwrap(), Caller::Backend);
    }

    /// Every refusal is a 401, whatever the credential looks like.
    #[test]
    fn refused_credentials() {
        // Built around validation, as a test or an embedding program could: an empty key
        // still matches nothing.
        let a = auth_with(|c| c.api_keys = vec![String::new(), " ".into(), KEY.into()]);
        let none = HeaderMap::new();
        let cases: Vec<(&str, HeaderMap, Option<String>)> = vec![
            ("empty query token", none.clone(), Some(String::new())),
            ("empty bearer", header("authorization", "Bearer "), None),
            ("bare bearer", header("authorization", "Bearer"), None),
            ("empty key header", header("x-api-key", ""), None),
            ("key in the query", none.clone(), Some(KEY.into())),
            ("other scheme", header("authorization", &format!("Basic {KEY}")), None),
            ("glued scheme", header("authorization", &format!("Bearer{KEY}")), None),
            (
                "empty sub",
                none.clone(),
                Some(sign(serde_json::json!({"sub": "", "exp": now() + 600}), SECRET)),
            ),
            (
                "blank sub",
                none.clone(),
                Some(sign(serde_json::json!({"sub": " ", "exp": now() + 600}), SECRET)),
            ),
            ("no sub", none.clone(), Some(sign(serde_json::json!({"exp": now() + 600}), SECRET))),
            ("no exp", none.clone(), Some(sign(serde_json::json!({"sub": "a"}), SECRET))),
            (
                "nbf ahead",
                none.clone(),
                Some(sign(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 600}), SECRET)),
            ),
            ("exp past the leeway", none.clone(), Some(jwt("a", -31, SECRET))),
        ];
        for (name, headers, token) in cases {
            for userid in [None, Some("a")] {
                let r = a.caller(&headers, token.as_deref(), userid);
                assert!(matches!(r, Err(AuthError::Unauthorized(_))), "{name} ({userid:?}): {r:?}");
            }
        }
    }

    #[test]
    fn leeway_and_expiry() {
        let h = HeaderMap::new();
        let exp = now() - 20;
        let late = sign(serde_json::json!({"sub": "a", "exp": exp}), SECRET);
        let early = sign(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 20}), SECRET);
        // The default (30 s) takes both.
        let a = auth();
        let got = a.authorize(&h, Some(&late), None).unwrap();
        assert_eq!(got.expires, Some(UNIX_EPOCH + Duration::from_secs(exp as u64 + 30)));
        a.caller(&h, Some(&early), None).unwrap();
        let strict = auth_with(|c| c.leeway = Duration::ZERO);
        assert!(strict.caller(&h, Some(&late), None).is_err());
        assert!(strict.caller(&h, Some(&early), None).is_err());
        // A token is over at its exp, not a second later.
        assert!(strict.caller(&h, Some(&jwt("a", 0, SECRET)), None).is_err());
        // An exp at the end of time neither overflows nor expires.
        let forever = sign(serde_json::json!({"sub": "a", "exp": u64::MAX}), SECRET);
        assert_eq!(a.authorize(&h, Some(&forever), None).unwrap().expires, None);
        // API keys and open mode do not expire.
        assert_eq!(a.authorize(&header("x-api-key", KEY), None, None).unwrap().expires, None);
        let open = auth_with(|c| c.mode = AuthMode::Open);
        assert_eq!(open.authorize(&h, None, Some("u")).unwrap().expires, None);
    }

    #[test]
    fn operators_need_a_key_in_token_mode() {
        let a = auth();
        assert!(a.operator(&header("x-api-key", KEY)).is_ok());
        assert!(a.operator(&header("authorization", &format!("Bearer {KEY}"))).is_ok());
        for h in [
            HeaderMap::new(),
            header("x-api-key", ""),
            header("x-api-key", "wrong"),
            header("authorization", &format!("Bearer {}", jwt("agent1", 600, SECRET))),
        ] {
            assert!(matches!(a.operator(&h), Err(AuthError::Unauthorized(_))), "{h:?}");
        }
        assert!(auth_with(|c| c.mode = AuthMode::Open).operator(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn origins() {
        let a = auth();
        let mut h = HeaderMap::new();
        assert!(a.check_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://console.example".parse().unwrap());
        assert!(a.check_origin(&h).is_ok());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(a.check_origin(&h).is_err());
    }
}

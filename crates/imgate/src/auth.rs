//! Who is calling: open mode takes the `userid` a caller names; token mode wants an HS256
//! JWT (`sub` = userid) or a configured API key. Also the Origin check for WebSockets.

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{AuthConfig, AuthMode};
use crate::http::error::ApiError;

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

pub struct Auth {
    mode: AuthMode,
    /// None when no secret is set: every JWT is refused.
    key: Option<DecodingKey>,
    validation: Validation,
    api_keys: Vec<String>,
    origins: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
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
        Auth {
            mode: c.mode,
            key: (!c.jwt_secret.is_empty())
                .then(|| DecodingKey::from_secret(c.jwt_secret.as_bytes()).ok())
                .flatten(),
            validation,
            api_keys: c.api_keys.clone(),
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
    ) -> Result<Caller, ApiError> {
        let named = userid.filter(|u| !u.is_empty()).map(str::to_owned);
        if self.mode == AuthMode::Open {
            return Ok(named.map_or(Caller::Backend, Caller::Named));
        }
        let presented = token.map(str::to_owned).or_else(|| credential(headers)).ok_or_else(|| {
            ApiError::Unauthorized(
                "credentials required: a JWT (?token= or Authorization: Bearer) or an API key".into(),
            )
        })?;
        if self.api_keys.iter().any(|k| constant_time_eq(k.as_bytes(), presented.as_bytes())) {
            return Ok(named.map_or(Caller::Backend, Caller::Named));
        }
        let key = self.key.as_ref().ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))?;
        let claims = jsonwebtoken::decode::<Claims>(&presented, key, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("token refused: {e}")))?
            .claims;
        match named {
            Some(u) if u != claims.sub => {
                Err(ApiError::Forbidden(format!("the token is for user {:?}, not {u:?}", claims.sub)))
            }
            _ => Ok(Caller::User(claims.sub)),
        }
    }

    /// Browsers send `Origin` on WebSocket upgrades; refuse those not allowed.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.origins.is_empty() {
            return Ok(());
        }
        match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            // Non-browser clients send no Origin; the token still applies to them.
            None => Ok(()),
            Some(o) if self.origins.iter().any(|a| a == "*" || a == o.trim_end_matches('/')) => Ok(()),
            Some(o) => Err(ApiError::Forbidden(format!("origin {o} is not in auth.allowed_origins"))),
        }
    }
}

fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            mode: AuthMode::Token,
            jwt_secret: "0123456789abcdef0123".into(),
            api_keys: vec!["backend-key".into()],
            allowed_origins: vec!["https://console.example".into()],
        })
    }

    fn jwt(sub: &str, exp_from_now: i64, secret: &str) -> String {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + exp_from_now;
        let claims = serde_json::json!({"sub": sub, "exp": exp});
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn token_mode_callers() {
        let a = auth();
        let h = HeaderMap::new();
        let good = jwt("agent1", 600, "0123456789abcdef0123");
        assert_eq!(a.caller(&h, Some(&good), None).unwrap(), Caller::User("agent1".into()));
        assert_eq!(a.caller(&h, Some(&good), Some("agent1")).unwrap(), Caller::User("agent1".into()));
        assert!(matches!(a.caller(&h, Some(&good), Some("agent2")), Err(ApiError::Forbidden(_))));
        assert!(matches!(a.caller(&h, None, Some("agent1")), Err(ApiError::Unauthorized(_))));
        let expired = jwt("agent1", -600, "0123456789abcdef0123");
        assert!(matches!(a.caller(&h, Some(&expired), None), Err(ApiError::Unauthorized(_))));
        let forged = jwt("agent1", 600, "another secret 12345");
        assert!(matches!(a.caller(&h, Some(&forged), None), Err(ApiError::Unauthorized(_))));
        let mut k = HeaderMap::new();
        k.insert("x-api-key", "backend-key".parse().unwrap());
        assert_eq!(a.caller(&k, None, None).unwrap(), Caller::Backend);
        assert_eq!(a.caller(&k, None, Some("u")).unwrap(), Caller::Named("u".into()));
        let mut b = HeaderMap::new();
        b.insert(header::AUTHORIZATION, format!("Bearer {good}").parse().unwrap());
        assert_eq!(a.caller(&b, None, None).unwrap(), Caller::User("agent1".into()));
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

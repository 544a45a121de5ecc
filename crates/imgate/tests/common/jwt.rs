//! JWTs as a console's backend would issue them (HS256).

use jsonwebtoken::{EncodingKey, Header};

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `claims` signed with `secret`.
pub fn sign(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap())
        .unwrap()
}

/// A token for `sub`, expiring `exp_from_now` seconds from now.
pub fn jwt(secret: &str, sub: &str, exp_from_now: i64) -> String {
    sign(secret, serde_json::json!({"sub": sub, "exp": now() + exp_from_now}))
}

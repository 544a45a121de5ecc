//! Every error answer imgate gives over HTTP: one enum, one table of statuses, the seed's
//! error frame as body.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use imgate_protocol::{error_frame, error_frame_with};

use crate::ingest::IngestError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// A thing the path names does not exist (a conversation): 404.
    #[error("{0}")]
    NoSuch(String),
    #[error("{0} does not take this method")]
    MethodNotAllowed(String),
    #[error("body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// A message under the body limit that would still make too large a frame.
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("{0}")]
    TooMany(String),
    /// Over a rate limit: 429 with `Retry-After` (whole seconds).
    #[error("{reason}")]
    RateLimited { reason: String, retry_after: u64 },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// What this gateway cannot do as installed (voice playback without ffmpeg): 501.
    #[error("{0}")]
    NotImplemented(String),
    /// Well-formed but impossible to carry out (a voice file that does not decode): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// WeChat did not take a message to a follower: 422 when it refused (with its code),
    /// 502 when it could not be reached.
    #[error("{reason}")]
    Delivery { refused: bool, reason: String, details: serde_json::Value },
    /// The state forbids it now (a conversation someone else claimed): 409, with details.
    #[error("{reason}")]
    Conflict { reason: String, details: serde_json::Value },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoSuch(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) | ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooMany(_) | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Delivery { refused: true, .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Delivery { refused: false, .. } => StatusCode::BAD_GATEWAY,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        metrics::counter!("imgate_http_errors_total", "status" => status.as_str().to_owned()).increment(1);
        let body = match &self {
            ApiError::Delivery { details, .. } | ApiError::Conflict { details, .. } => {
                error_frame_with(details, &self.to_string())
            }
            _ => error_frame(&self.to_string()),
        };
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let ApiError::RateLimited { retry_after, .. } = self {
            response.headers_mut().insert(header::RETRY_AFTER, retry_after.into());
        }
        response
    }
}

/// Every store error, whatever its cause, is a 503 without `Retry-After`: nothing was
/// stored, and the client retries when it sees fit.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        not_confirmed(&e)
    }
}

fn not_confirmed(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!(
        "{e}: the commit was not confirmed — retry (a retry with the same data.id is never stored twice)"
    ))
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(s) => s.into(),
            IngestError::State(s) => s.into(),
            IngestError::NotAnAgent(_)
            | IngestError::Forbidden(_)
            | IngestError::MediaForbidden(_)
            | IngestError::NotAssignee(_) => ApiError::Forbidden(e.to_string()),
            IngestError::FrameTooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            IngestError::Delivery { ref errcode, .. } => {
                ApiError::Delivery { refused: errcode.is_some(), reason: e.to_string(), details: e.details() }
            }
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> ApiError {
        match e {
            crate::auth::AuthError::Unauthorized(m) => ApiError::Unauthorized(m),
            crate::auth::AuthError::Forbidden(m) => ApiError::Forbidden(m),
        }
    }
}

impl From<crate::wechat::StateUnavailable> for ApiError {
    fn from(e: crate::wechat::StateUnavailable) -> ApiError {
        not_confirmed(&e)
    }
}

impl From<crate::inbox::InboxError> for ApiError {
    fn from(e: crate::inbox::InboxError) -> ApiError {
        use crate::inbox::InboxError;
        match e {
            InboxError::Store(s) => s.into(),
            InboxError::NotAgent(_) | InboxError::NotAssignee(_) => ApiError::Forbidden(e.to_string()),
            InboxError::NotFound(_) => ApiError::NoSuch(e.to_string()),
            InboxError::BadRequest(m) => ApiError::BadRequest(m),
            InboxError::Direct(_) => ApiError::BadRequest(e.to_string()),
            InboxError::Taken { ref assignee } => ApiError::Conflict {
                details: serde_json::json!({ "assignee": assignee }),
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Unavailable;

    fn sqlite_full() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None)
    }

    /// Every store error, of every cause, and the WeChat state's, answer 503 without
    /// `Retry-After` (as when they were strings), and say which cause it was.
    #[test]
    fn each_store_error_maps_to_503_without_retry_after() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let cases: Vec<(ApiError, &str)> = vec![
            (
                StoreError::from(Unavailable::io("cannot create /data", io())).into(),
                "cannot create /data: denied",
            ),
            (
                StoreError::from(Unavailable::sqlite("/data/imgate.sqlite3", sqlite_full())).into(),
                "/data/imgate.sqlite3: ",
            ),
            (StoreError::from(Unavailable::Redis(redis::RedisError::from(io()))).into(), "redis: "),
            (StoreError::from(Unavailable::Damaged("redis: a bad seq".into())).into(), "redis: a bad seq"),
            (StoreError::from(Unavailable::Failed("the commit failed".into())).into(), "the commit failed"),
            (StoreError::from(Unavailable::NotSubscribed).into(), "not subscribed"),
            (StoreError::Closed.into(), "shutting down"),
            (IngestError::Store(StoreError::Closed).into(), "shutting down"),
            (
                crate::wechat::StateUnavailable("redis down".into()).into(),
                "WeChat state unavailable: redis down",
            ),
            (IngestError::State(crate::wechat::StateUnavailable("redis down".into())).into(), "redis down"),
            (
                crate::inbox::InboxError::Store(Unavailable::Failed("kept changing".into()).into()).into(),
                "kept changing",
            ),
        ];
        for (e, says) in cases {
            let text = e.to_string();
            assert!(text.contains(says), "{text:?} does not say {says:?}");
            assert!(text.contains("the commit was not confirmed"), "{text:?}");
            let r = e.into_response();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{text}");
            assert_eq!(r.headers().get(header::RETRY_AFTER), None, "{text}");
        }
    }

    /// The cause stays reachable through `source()`, for logs that walk the chain.
    #[test]
    fn a_store_error_keeps_its_cause() {
        let e = StoreError::from(Unavailable::sqlite("x.sqlite3", sqlite_full()));
        let cause = std::error::Error::source(&e).expect("the cause");
        assert!(cause.downcast_ref::<Unavailable>().is_some());
        let sqlite = std::error::Error::source(cause).expect("sqlite's error");
        assert!(sqlite.downcast_ref::<rusqlite::Error>().is_some(), "{sqlite}");
    }
}

//! Every HTTP request is timed (`imgate_http_request_duration_seconds`, by route pattern,
//! method and status) and gets an id: the caller's `X-Request-Id` when it is a plausible one
//! (a proxy's, so that one id follows a request through both logs), else a new one. The
//! answer carries it in `X-Request-Id`, and every log line written while the request is
//! handled carries it as `request_id` (a field of the `request` span; with
//! `log_format = "json"`, a key of each line). Paths are logged without their query
//! string, which may hold a token.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// Longest id taken from a caller.
const MAX_LEN: usize = 64;

fn plausible(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub async fn tag(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| plausible(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    // The route's pattern, not the path: ids in paths must not make a label each.
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = res.status().as_u16();
    metrics::histogram!(
        "imgate_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => status.to_string()
    )
    .record(elapsed.as_secs_f64());
    span.in_scope(|| tracing::debug!(status, micros = elapsed.as_micros() as u64, "answered"));
    // Always ASCII from the checks above, so this cannot fail; a failure would only lose
    // the header.
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_taken_from_callers() {
        assert!(plausible("3f2a-9c1b_7.x:1"));
        assert!(!plausible(""));
        assert!(!plausible(&"a".repeat(MAX_LEN + 1)));
        assert!(!plausible("a b"));
        assert!(!plausible("a\"}{"));
    }
}

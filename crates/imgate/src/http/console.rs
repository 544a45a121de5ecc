//! The agent console: static files compiled into the binary (no web server, no CDN: the
//! machines that run imgate may have no internet).

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../console/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../console/app.js")),
    ("client.js", "text/javascript; charset=utf-8", include_str!("../../console/client.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../console/style.css")),
    ("state.js", "text/javascript; charset=utf-8", include_str!("../../console/state.js")),
    ("conversations.js", "text/javascript; charset=utf-8", include_str!("../../console/conversations.js")),
    ("list.js", "text/javascript; charset=utf-8", include_str!("../../console/list.js")),
    ("thread.js", "text/javascript; charset=utf-8", include_str!("../../console/thread.js")),
    ("composer.js", "text/javascript; charset=utf-8", include_str!("../../console/composer.js")),
    ("cards.js", "text/javascript; charset=utf-8", include_str!("../../console/cards.js")),
    ("messages.js", "text/javascript; charset=utf-8", include_str!("../../console/messages.js")),
    ("util.js", "text/javascript; charset=utf-8", include_str!("../../console/util.js")),
    ("i18n.js", "text/javascript; charset=utf-8", include_str!("../../console/i18n.js")),
    ("emoji.js", "text/javascript; charset=utf-8", include_str!("../../console/emoji.js")),
];

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, ct, body) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::NotFound(format!("/console/{name}")))?;
    // The files change with the binary: let browsers revalidate rather than cache forever.
    Ok((
        [
            (header::CONTENT_TYPE, *ct),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        *body,
    )
        .into_response())
}

/// The console runs only its own scripts, loads media only from this gateway, and is
/// never framed (clickjacking). `data:` images: the page's empty favicon. `connect-src
/// 'self'` covers the WebSocket to the same host.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `GET /` without an upgrade.
pub fn index() -> Response {
    serve("index.html").unwrap_or_else(IntoResponse::into_response)
}

/// `GET /console/{file}`.
pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    serve(&name)
}

#[cfg(test)]
mod tests {
    /// Every file of the console's directory is in the binary (a module left out is a 404
    /// the page cannot start without), and nothing else is.
    #[test]
    fn every_console_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(n, _, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }
}

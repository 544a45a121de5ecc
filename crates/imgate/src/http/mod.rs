//! The HTTP surface: routes, and the state they share. Only this module knows axum's
//! router; handlers turn requests into calls on [`Ingest`], the [`Hub`] and the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, Uri};
use axum::routing::{delete, get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, Caller};
use crate::config::Config;
use crate::hub::Hub;
use crate::hub::conn::ConnContext;
use crate::ingest::Ingest;
use crate::store::DynStore;
use crate::wechat::Wechat;
use error::ApiError;

mod callback;
mod console;
mod contacts;
mod conversations;
pub mod error;
mod history;
mod media;
pub mod openapi;
mod ops;
pub mod request_id;
mod send;
pub mod server;
mod ws;

/// The seed's path prefix for the WeChat Official Account channel.
pub const PREFIX: &str = "/im_component/wx_official_account";

/// What every handler shares; one `Arc`, so a request clones one pointer, not ten.
pub type AppState = Arc<App>;

pub struct App {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub store: DynStore,
    pub ingest: Arc<Ingest>,
    pub auth: Arc<Auth>,
    pub conn: Arc<ConnContext>,
    pub tasks: TaskTracker,
    pub metrics: PrometheusHandle,
    /// The WeChat channel, when an account is configured.
    pub wechat: Option<Arc<Wechat>>,
    /// Per-sender token buckets for sends (`limits.sender_rate`).
    pub senders: Arc<crate::rate::Senders>,
    /// The team inbox, when a WeChat account is configured.
    pub inbox: Option<Arc<crate::inbox::Inbox>>,
}

pub fn router(state: AppState) -> Router {
    let body_max = state.config.limits.http_body_max;
    let mut router = Router::new();
    if state.config.bench.noop_route {
        router = router.route("/bench/noop", post(send::noop));
    }
    let media_max = state.config.wechat.media_max;
    router
        .route("/", get(ws::root))
        .route(&format!("{PREFIX}/callback"), get(callback::verify).post(callback::receive))
        .route(&format!("{PREFIX}/callback/{{appid}}"), get(callback::verify_for).post(callback::receive_for))
        .route("/console/{file}", get(console::file))
        .route(&format!("{PREFIX}/media/{{id}}"), get(media::get))
        .route(&format!("{PREFIX}/media/{{id}}/status"), get(media::status))
        .route(&format!("{PREFIX}/contact"), get(media::contact))
        .route(&format!("{PREFIX}/contacts/{{contact}}"), delete(contacts::erase))
        .route(&format!("{PREFIX}/contacts/{{contact}}/remark"), put(contacts::remark))
        .route(&format!("{PREFIX}/templates"), get(contacts::templates))
        .route(&format!("{PREFIX}/msg"), get(ws::msg))
        .route("/send", post(send::send))
        .route(&format!("{PREFIX}/send"), post(send::send))
        .route(&format!("{PREFIX}/send_xml"), post(send::send_xml))
        .route(&format!("{PREFIX}/history"), get(history::history))
        .route(&format!("{PREFIX}/conversations"), get(conversations::list))
        .route(&format!("{PREFIX}/conversations/{{contact}}"), get(conversations::one))
        .route(&format!("{PREFIX}/conversations/{{contact}}/{{action}}"), post(conversations::act))
        .route(&format!("{PREFIX}/canned"), get(conversations::canned).put(conversations::set_canned))
        .route(&format!("{PREFIX}/presence"), get(conversations::presence).put(conversations::set_presence))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::description))
        // A declared length over the limit is refused before a byte of the body is read.
        .route_layer(server::DeclaredLength(body_max))
        .route(
            &format!("{PREFIX}/media"),
            post(media::upload)
                .layer::<_, Infallible>(DefaultBodyLimit::max(media_max))
                .layer::<_, Infallible>(server::DeclaredLength(media_max)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn(request_id::tag))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(uri.path().to_owned())
}

/// Query parameters, with the seed's two spellings of the user id.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn from(
        q: Result<axum::extract::Query<HashMap<String, String>>, QueryRejection>,
    ) -> Result<Params, ApiError> {
        q.map(|q| Params(q.0)).map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `userid` was given, but blank: a client's bug (an unset variable), not a request
    /// to send as `protocol.default_sender`.
    pub fn userid_blank(&self) -> bool {
        self.get("userid").or_else(|| self.get("userId")).is_some_and(|u| u.trim().is_empty())
    }

    pub fn userid(&self) -> Option<&str> {
        self.get("userid").or_else(|| self.get("userId")).map(str::trim).filter(|u| !u.is_empty())
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("{key}={v:?} is not a number")))
            })
            .transpose()
    }
}

impl App {
    pub fn caller(&self, headers: &HeaderMap, params: &Params) -> Result<Caller, ApiError> {
        Ok(self.auth.caller(headers, params.get("token"), params.userid())?)
    }
}

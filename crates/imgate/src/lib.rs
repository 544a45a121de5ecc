//! imgate: a real-time message gateway between WeChat Official Accounts and the web
//! consoles of customer-service agents. See ARCHITECTURE.md for the map.
//!
//! [`run`] serves on a listener until `shutdown` completes; everything else is reached
//! from it.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod auth;
pub mod backup;
pub mod config;
pub mod config_file;
pub mod erase;
pub mod http;
pub mod hub;
pub mod inbox;
pub mod ingest;
pub mod rate;
pub mod redis_conn;
pub mod store;
pub mod tail;
pub mod wechat;

use config::{Config, Engine};
use hub::Hub;
use hub::conn::ConnContext;
use ingest::Ingest;
use store::DynStore;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Lock(#[from] store::lock::LockError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The process-wide metrics recorder (a process may run several servers in tests).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Durations are histograms (`_seconds`), so that quantiles can be summed across
            // nodes: from 100 µs (a commit, a frame) to 30 s (WeChat's API at its worst).
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0, 30.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &buckets,
                )
                .map(PrometheusBuilder::build_recorder)
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's): then
            // our metrics go there and /metrics shows only what this handle sees.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often retention runs.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

async fn retention(
    store: DynStore,
    wechat: Option<Arc<wechat::Wechat>>,
    max_age: std::time::Duration,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(RETENTION_EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                // One node a period (Redis): the lease runs out before the next tick.
                match store.lease("retention", RETENTION_EVERY - RETENTION_EVERY / 10).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "retention skipped: its lease could not be taken");
                        continue;
                    }
                }
                match store.trim().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "retention pass"),
                    Err(e) => tracing::warn!(error = %e, "retention pass failed; will retry"),
                }
                if let Some(w) = &wechat {
                    w.trim(max_age).await;
                }
            }
        }
    }
}

/// Serve on `listener` until `shutdown` completes; then close every WebSocket with 1001,
/// let in-flight requests and commits finish within `shutdown_grace`, and return.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    config.validate()?;
    let config = Arc::new(config);
    let metrics = metrics_handle();
    let hub = Hub::new(&config.hub);
    // Before anything in data_dir is opened: a second process there would hand out the
    // seqs this one hands out. Held until `run` returns.
    let _lock = store::lock::DirLock::acquire(&config.data_dir)?;
    // How to reach Redis (one server, or the master the sentinels name), for every user of it.
    let redis_target = match config.store.engine {
        Engine::Redis => {
            Some(redis_conn::Target::from_config(&config.store).map_err(store::StoreError::from)?)
        }
        Engine::Sqlite => None,
    };
    let store: DynStore = match &redis_target {
        None => store::sqlite::SqliteStore::open(&config.data_dir, &config.store, hub.clone())?,
        Some(t) => store::redis::RedisStore::open_at(t, &config.store, hub.clone())?,
    };
    let wechat_redis = match &redis_target {
        Some(t) if !config.wechat.accounts.is_empty() => Some(
            t.conn(
                redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
                    .set_response_timeout(Some(std::time::Duration::from_secs(2))),
            )
            .map_err(store::StoreError::from)?,
        ),
        _ => None,
    };
    let wechat =
        wechat::Wechat::new(&config.wechat, &config.data_dir, wechat_redis, config.store.retention_max_age)?;
    let cancel = CancellationToken::new();
    // The team inbox (docs/inbox.md): followers' conversations, and those between two
    // gateway users.
    let convs = match &redis_target {
        None => inbox::sqlite::SqliteConversations::open(&config.data_dir)? as inbox::DynConversations,
        Some(t) => inbox::redis::RedisConversations::open_at(t)? as inbox::DynConversations,
    };
    let inbox = Some(inbox::Inbox::new(config.wechat.accounts.clone(), store.clone(), convs));
    if let Some(i) = &inbox {
        i.clone().spawn_sweeper(cancel.clone());
    }
    if let Some(w) = &wechat {
        w.spawn_profile_sweeper(config.wechat.profile_sweep_every, cancel.clone());
    }
    // A follower's profile (fetched, or a remark set) shows in their conversation.
    if let (Some(w), Some(i)) = (&wechat, &inbox) {
        let i = i.clone();
        w.on_profile(Box::new(move |appid, openid, profile| {
            let i = i.clone();
            tokio::spawn(async move {
                if let Err(e) = i.profile(&appid, &openid, profile).await {
                    tracing::warn!(contact = %openid, error = %e, "conversation's profile not updated");
                }
            });
        }));
    }
    let ingest = Arc::new(
        Ingest::new(
            store.clone(),
            config.protocol.zone()?,
            config.protocol.company_id.clone(),
            wechat.clone(),
            inbox.clone(),
        )
        .with_frame_max(config.frame_max()),
    );
    let tasks = TaskTracker::new();
    let senders = Arc::new(rate::Senders::new(config.limits.sender_rate, config.limits.sender_burst));
    let conn = Arc::new(ConnContext {
        senders: senders.clone(),
        hub: hub.clone(),
        store: store.clone(),
        ingest: ingest.clone(),
        config: config.hub.clone(),
        shutdown: cancel.clone(),
        tasks: tasks.clone(),
    });
    tokio::spawn(retention(store.clone(), wechat.clone(), config.store.retention_max_age, cancel.clone()));
    let state = Arc::new(http::App {
        config: config.clone(),
        hub: hub.clone(),
        store: store.clone(),
        ingest,
        auth: Arc::new(auth::Auth::new(&config.auth)),
        conn,
        tasks: tasks.clone(),
        metrics,
        wechat,
        senders: senders.clone(),
        inbox,
    });
    let addr = listener.local_addr()?;
    // The listener may not be `config.listen` (tests, embedding programs): check it too.
    config.auth.check(addr)?;
    if config.auth.mode == config::AuthMode::Open && !config::is_loopback(addr) {
        tracing::warn!(
            %addr,
            "auth.mode = \"open\" on an address other than loopback: ANYONE who reaches it can \
             connect and send as any user. Use auth.mode = \"token\" unless a trusted proxy guards it"
        );
    }
    tracing::info!(
        %addr,
        store = ?config.store.engine,
        redis_mode = ?config.store.redis_mode,
        sync = ?config.store.sync,
        data_dir = %config.data_dir.display(),
        auth = ?config.auth.mode,
        "imgate listening"
    );
    let server = http::server::serve(listener, http::router(state), config.http.clone(), cancel.clone());
    let mut server = tokio::spawn(server);
    let early = tokio::select! {
        _ = shutdown => None,
        // The server only ends by itself on an error.
        r = &mut server => Some(r),
    };
    cancel.cancel();
    hub.shut_down();
    if let Some(r) = early {
        tracing::error!("the server stopped by itself; shutting down");
        store.close().await;
        return r.map_err(std::io::Error::other)?.map_err(RunError::Io);
    }
    // The listener is closed; sockets are closing with 1001. Wait for them, for requests
    // in flight and for their commits, but not forever.
    tasks.close();
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        let served = server.await;
        tasks.wait().await;
        served
    })
    .await;
    let served = match drained {
        Ok(Ok(served)) => served,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(
                websockets = tasks.len(),
                grace = ?config.shutdown_grace,
                "requests or connections still open after the grace period; leaving them"
            );
            Ok(())
        }
    };
    store.close().await;
    tracing::info!("imgate stopped");
    served.map_err(RunError::Io)
}

//! A horizontally scalable WebSocket gateway.
//!
//! Layout, in the order a connection meets it:
//!
//! - [`config`]: flags, `GATEWAY_*` variables and the TOML file, validated at startup.
//! - [`server`]: the public listener; checks origin and token, then upgrades to a [`session`].
//! - [`session`]: one task per socket: client frames in, limits, heartbeats, the backlog out.
//! - [`outbox`]: a connection's outgoing side: frames straight to the socket, or into a backlog
//!   bounded in bytes when the socket is full.
//! - [`hub`]: this node's connections and subscriptions; fans bus events out.
//! - [`broker`]: the bus between nodes: in memory or Redis.
//! - [`history`]: channel history (offsets, epochs, stored events): in memory or Redis.
//! - [`cluster`]: leases, cluster-wide queries and operator actions, presence.
//!
//! Beside them: [`protocol`] (frames, error and close codes), [`auth`] (JWT), [`access`]
//! (who may subscribe or publish where), [`rate`] (per-connection limits), [`metrics`], and
//! [`admin`] (the admin listener and its API).

pub mod access;
pub mod admin;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod session;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use publisher::wire::Topics;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::auth::{AuthError, Authenticator};
use crate::broker::{
    Broker, BrokerError, BusInbox, BusMessage, MemoryBus, RedisBroker, RedisSettings,
};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::history::{History, MemoryHistory, Policies, RedisHistory};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Messages the bus may hand the hub ahead of its fan-out before they are dropped.
const BUS_INBOX_CAPACITY: usize = 65_536;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Token keys could not be loaded.
    #[error("token verification: {0}")]
    Auth(#[from] AuthError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS certificate {path}: {source}")]
    Tls {
        /// The certificate file.
        path: std::path::PathBuf,
        /// Why it could not be used.
        #[source]
        source: std::io::Error,
    },
    /// The bus could not be set up.
    #[error("bus: {0}")]
    Bus(#[from] BrokerError),
}

/// What every part of a node shares.
pub struct Node {
    /// The validated configuration.
    pub config: Config,
    /// Token verification.
    pub auth: Authenticator,
    /// The admin API key.
    pub api_key: String,
    /// Local connections and subscriptions.
    pub hub: Hub,
    /// The cluster view.
    pub cluster: Arc<Cluster>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    bus_status: watch::Receiver<bool>,
    draining: AtomicBool,
}

impl Node {
    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the bus is connected.
    pub fn bus_up(&self) -> bool {
        *self.bus_status.borrow()
    }
}

/// An HTTP error with the JSON body `{"error":{"code":…,"message":…}}`.
pub fn http_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

/// Runs a node on the given listeners until `shutdown` resolves, then drains it.
pub async fn run(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let metrics = Arc::new(Metrics::new()?);
    let (auth, api_key) = credentials(&config)?;
    let dropped = metrics.messages_dropped.with_label_values(&["bus_backlog"]);
    let (inbox, inbox_rx) = BusInbox::new(BUS_INBOX_CAPACITY, dropped);
    let topics = Topics::new(config.redis_prefix.clone());
    let policies = Policies::from_namespaces(&config.namespaces);
    let window = config.idempotency_window;
    let (broker, history, registry): (Arc<dyn Broker>, Arc<dyn History>, cluster::Registry) =
        match &config.redis_url {
            None => {
                let bus = MemoryBus::new();
                let history =
                    MemoryHistory::new(bus.clone(), topics.clone(), policies.clone(), window);
                let registry = cluster::Registry::memory();
                (Arc::new(bus.broker(inbox)), Arc::new(history), registry)
            }
            Some(url) => {
                let settings = RedisSettings {
                    url: url.clone(),
                    subscription_connections: config.redis_subscription_connections,
                    publish_pool_size: config.redis_pool_size,
                };
                let broker = RedisBroker::start(&settings, inbox, metrics.bus_reconnects.clone())?;
                let history = RedisHistory::new(
                    broker.connection().clone(),
                    topics.clone(),
                    policies.clone(),
                    window,
                    broker.status(),
                );
                let registry = cluster::Registry::redis(broker.connection(), &topics);
                (Arc::new(broker), Arc::new(history), registry)
            }
        };
    let bus_status = broker.status();
    let hub = Hub::new(
        Arc::clone(&broker),
        history,
        policies,
        topics,
        Arc::clone(&metrics),
    );
    let cluster = Arc::new(Cluster::new(
        config.node_id.clone(),
        &config.redis_prefix,
        broker,
        registry,
        hub.clone(),
        config.namespaces.clone(),
        config.node_lease,
    ));
    let node = Arc::new(Node {
        config,
        auth,
        api_key,
        hub: hub.clone(),
        cluster: Arc::clone(&cluster),
        metrics,
        bus_status,
        draining: AtomicBool::new(false),
    });
    tokio::spawn(watch_bus(Arc::clone(&node)));
    tokio::spawn(dispatch(hub.clone(), Arc::clone(&cluster), inbox_rx));
    tokio::spawn(Arc::clone(&cluster).run());
    tokio::spawn(hub.clone().run_bus_watch(node.bus_status.clone()));

    tracing::info!(
        node_id = %node.config.node_id,
        public = %public.local_addr()?,
        admin = %admin.local_addr()?,
        bus = if node.config.redis_url.is_some() { "redis" } else { "memory" },
        tls = node.config.tls.is_some(),
        "gateway listening"
    );
    let (stop_listeners, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let public_router = server::router(Arc::clone(&node));
    let public_task = match node.config.tls.clone() {
        None => {
            // Frames are small and latency-bound: no Nagle delay behind an unacknowledged one.
            let public = public.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
            });
            let server = axum::serve(public, public_router)
                .with_graceful_shutdown(until_stopped(stopped.clone()));
            tokio::spawn(async move { server.await })
        }
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|source| GatewayError::Tls { path: cert, source })?;
            let handle = axum_server::Handle::new();
            let server = axum_server::from_tcp_rustls(public.into_std()?, tls)?
                // As on the plain listener: no Nagle delay behind an unacknowledged frame.
                .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
                .handle(handle.clone())
                .serve(public_router.into_make_service());
            let stop = until_stopped(stopped.clone());
            tokio::spawn(async move {
                stop.await;
                handle.graceful_shutdown(Some(Duration::from_secs(1)));
            });
            tokio::spawn(server)
        }
    };
    let admin_server = axum::serve(admin, admin::router(Arc::clone(&node)))
        .with_graceful_shutdown(until_stopped(stopped));
    let admin_task = tokio::spawn(async move { admin_server.await });

    shutdown.await;
    drain(&node).await;
    let _ = stop_listeners.send(true);
    for task in [public_task, admin_task] {
        if let Ok(result) = task.await {
            result?;
        }
    }
    Ok(())
}

/// The token verifier and API key; in development mode, made up and logged.
fn credentials(config: &Config) -> Result<(Authenticator, String), GatewayError> {
    if !config.is_development() {
        let api_key = config.api_key.clone().unwrap_or_default();
        return Ok((Authenticator::new(&config.auth)?, api_key));
    }
    let (auth, secret) = Authenticator::development();
    let api_key = format!("{:032x}", rand::random::<u128>());
    let demo = auth
        .demo_token("demo", Duration::from_secs(24 * 3600))
        .unwrap_or_default();
    tracing::warn!(
        "DEVELOPMENT MODE, NOT FOR PRODUCTION: no GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY_FILE, \
         GATEWAY_JWKS_FILE or GATEWAY_API_KEY is set, so a random secret and API key were made"
    );
    tracing::warn!(jwt_secret = %secret, api_key = %api_key, "development credentials");
    tracing::warn!(user_id = "demo", token = %demo, "demo token, valid 24h");
    Ok((auth, api_key))
}

/// Hands each bus message to the cluster (control traffic) or the hub (events). Messages that
/// wait together are dispatched as one round, whose frames reach each socket in one write.
async fn dispatch(hub: Hub, cluster: Arc<Cluster>, mut inbox: mpsc::Receiver<BusMessage>) {
    const MAX_ROUND: usize = 256;
    let mut round = Vec::with_capacity(MAX_ROUND);
    while inbox.recv_many(&mut round, MAX_ROUND).await > 0 {
        let dispatch_all = || {
            for message in &round {
                if cluster.is_control(&message.topic) {
                    cluster.handle(message);
                } else {
                    hub.dispatch(message);
                }
            }
        };
        if round.len() == 1 {
            dispatch_all();
        } else {
            outbox::corked(dispatch_all);
        }
        round.clear();
    }
}

/// Mirrors the bus status into metrics and logs.
async fn watch_bus(node: Arc<Node>) {
    let mut status = node.bus_status.clone();
    loop {
        let up = *status.borrow_and_update();
        node.metrics.bus_up.set(i64::from(up));
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Refuses new connections, tells every client to reconnect elsewhere, and waits for them
/// to go, at most the drain timeout.
async fn drain(node: &Node) {
    node.draining.store(true, Ordering::Release);
    let told = node.hub.drain(node.config.drain_reconnect_max);
    tracing::info!(connections = told, "draining");
    if tokio::time::timeout(node.config.drain_timeout, node.hub.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.hub.connection_count(),
            "drain timeout: closing remaining connections"
        );
    }
}

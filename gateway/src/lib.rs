//! A horizontally scalable WebSocket gateway.
//!
//! Layout, in the order a connection meets it:
//!
//! - [`config`]: flags, `GATEWAY_*` variables and the TOML file, validated at startup.
//! - `listener`: the accept loop of both listeners: TLS, handshake deadline and bound, HTTP.
//! - `server`: the public routes; checks origin and token, then upgrades to a `session`.
//! - `session`: one task per socket: client frames in, limits, heartbeats, the backlog out.
//! - `outbox`: a connection's outgoing side: frames straight to the socket, or into a backlog
//!   bounded in bytes when the socket is full.
//! - `hub`: this node's connections and subscriptions; fans bus events out.
//! - [`broker`]: the bus between nodes: in memory or Redis.
//! - [`history`]: channel history (offsets, epochs, stored events): in memory or Redis.
//! - `cluster`: leases, cluster-wide queries and operator actions, presence.
//!
//! Beside them: `node` (what every part of a running node shares), `protocol` (frames, error
//! and close codes), `view` (the cluster view's messages), `auth` (JWT), `access` (who may
//! subscribe or publish where), `rate` (per-connection limits), `metrics`, and `admin` (the
//! admin listener and its API).
//!
//! Dependencies point one way: `publisher::wire` → `protocol`, `view` → `outbox`, [`broker`],
//! [`history`] → `hub` → `cluster`, `session` → `server`, `admin` → this file, which wires
//! them together in [`run`].

mod access;
mod admin;
mod admission;
mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
mod fallback;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
mod hub;
mod listener;
mod metrics;
mod node;
mod outbox;
mod protocol;
mod rate;
mod server;
mod session;
pub mod view;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use publisher::wire::Topics;
use publisher::{RedisMode, RedisTopology};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Authenticator, JwksMetrics};
use crate::broker::{
    Broker, BrokerError, BusCounters, BusInbox, BusMessage, CanarySettings, MemoryBus, RedisBroker,
    RedisSettings,
};
use crate::cluster::{Cluster, Registry};
use crate::config::Config;
use crate::history::{History, MemoryHistory, Policies, RedisHistory};
use crate::hub::Hub;
use crate::metrics::{Dropped, JwksRefresh, Metrics};
use crate::node::Node;

/// Messages the bus may hand each dispatch lane ahead of its fan-out before they are dropped.
const BUS_INBOX_CAPACITY: usize = 65_536;
/// How long the listeners get to finish their connections after the drain.
const LISTENER_GRACE: Duration = Duration::from_secs(2);

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
    #[error("public listener: {0}")]
    Listener(#[from] listener::ListenerError),
    /// The bus could not be set up.
    #[error("bus: {0}")]
    Bus(#[from] BrokerError),
    /// The configuration does not hold together.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// A listener's task: it ends when the listener stops.
type ListenerTask = JoinHandle<std::io::Result<()>>;

/// Runs a node on the given listeners until `shutdown` resolves, then drains it.
pub async fn run(
    config: Config,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    let (node, inbox) = build_node(config)?;
    node.auth.fetch_remote_keys().await?;
    spawn_node_tasks(&node, inbox);
    tracing::info!(
        node_id = %node.config.node_id,
        public = %public.local_addr()?,
        admin = %admin.local_addr()?,
        bus = if node.config.redis_url.is_some() { "redis" } else { "memory" },
        tls = node.config.tls.is_some(),
        "gateway listening"
    );
    let (stop_listeners, stopped) = watch::channel(false);
    let public_task = serve_public(Arc::clone(&node), public, stopped.clone())?;
    let admin_task = serve_admin(Arc::clone(&node), admin, stopped);

    shutdown.await;
    drain(&node).await;
    let _ = stop_listeners.send(true);
    node.auth.stop_refreshing();
    for mut task in [public_task, admin_task] {
        // A client that stopped reading holds its HTTP connection open (an SSE stream whose
        // session ended is never polled again): past the grace time, it is dropped.
        match tokio::time::timeout(LISTENER_GRACE, &mut task).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => {}
            Err(_) => {
                tracing::warn!("connections still open after the drain: closing them");
                task.abort();
            }
        }
    }
    Ok(())
}

/// The bus, the history store and the registry of a node.
struct Backends {
    broker: Arc<dyn Broker>,
    history: Arc<dyn History>,
    registry: Registry,
}

/// Builds the node from its configuration; returns it with the bus messages it must dispatch.
fn build_node(
    config: Config,
) -> Result<(Arc<Node>, Vec<mpsc::Receiver<BusMessage>>), GatewayError> {
    let metrics = Arc::new(Metrics::new()?);
    let credentials = credentials(&config, &metrics)?;
    let dropped = metrics
        .messages_dropped
        .with_label_values(&[Dropped::BusBacklog.label()]);
    let (inbox, lanes) = BusInbox::with_lanes(BUS_INBOX_CAPACITY, dispatch_lanes(), dropped);
    let topology = config.redis_topology()?;
    let topics = match topology.as_ref().map(RedisTopology::mode) {
        Some(RedisMode::Cluster) => Topics::sharded(config.redis_prefix.clone()),
        _ => Topics::new(config.redis_prefix.clone()),
    };
    let policies = Policies::from_namespaces(&config.namespaces);
    let backends = match topology {
        None => memory_backends(&config, inbox, &topics, &policies),
        Some(topology) => redis_backends(&config, topology, inbox, &topics, &policies, &metrics)?,
    };
    let bus_status = backends.broker.status();
    let hub = Hub::new(
        Arc::clone(&backends.broker),
        backends.history,
        policies,
        topics,
        Arc::clone(&metrics),
    );
    let cluster = Arc::new(Cluster::new(
        config.node_id.clone(),
        &config.redis_prefix,
        backends.broker,
        backends.registry,
        hub.clone(),
        config.namespaces.clone(),
        config.node_lease,
    ));
    let node = Node::new(config, credentials, hub, cluster, metrics, bus_status);
    Ok((Arc::new(node), lanes))
}

/// One bus dispatch lane per worker thread of the runtime, so that every core fans out.
fn dispatch_lanes() -> usize {
    tokio::runtime::Handle::try_current().map_or(1, |runtime| runtime.metrics().num_workers())
}

/// A single node's bus, history and registry, in memory.
fn memory_backends(
    config: &Config,
    inbox: BusInbox,
    topics: &Topics,
    policies: &Policies,
) -> Backends {
    let bus = MemoryBus::new();
    let window = config.idempotency_window;
    let history = MemoryHistory::new(bus.clone(), topics.clone(), policies.clone(), window);
    Backends {
        broker: Arc::new(bus.broker(inbox)),
        history: Arc::new(history),
        registry: Registry::memory(),
    }
}

/// The bus, history and registry of a node that shares the Redis of `topology` with its peers.
fn redis_backends(
    config: &Config,
    topology: RedisTopology,
    inbox: BusInbox,
    topics: &Topics,
    policies: &Policies,
    metrics: &Metrics,
) -> Result<Backends, GatewayError> {
    let settings = RedisSettings {
        topology,
        subscription_connections: config.redis_subscription_connections,
        publish_pool_size: config.redis_pool_size,
        canary: CanarySettings {
            topics: topics.clone(),
            node_id: config.node_id.clone(),
            interval: config.bus_canary_interval,
            timeout: config.bus_canary_timeout,
        },
    };
    let counters = BusCounters {
        reconnects: metrics.bus_reconnects.clone(),
        canary_failures: metrics.bus_canary_failures.clone(),
    };
    let broker = RedisBroker::start(&settings, inbox, counters)?;
    let history = RedisHistory::new(
        broker.connection().clone(),
        topics.clone(),
        policies.clone(),
        config.idempotency_window,
        broker.status(),
    );
    let registry = Registry::redis(broker.connection(), topics);
    Ok(Backends {
        broker: Arc::new(broker),
        history: Arc::new(history),
        registry,
    })
}

/// Starts what runs beside the listeners: bus dispatch, the cluster's leases, bus watches,
/// and the refresh of the JWKS file and URL.
fn spawn_node_tasks(node: &Arc<Node>, lanes: Vec<mpsc::Receiver<BusMessage>>) {
    tokio::spawn(watch_bus(Arc::clone(node)));
    for lane in lanes {
        tokio::spawn(dispatch(node.hub.clone(), Arc::clone(&node.cluster), lane));
    }
    tokio::spawn(Arc::clone(&node.cluster).run());
    tokio::spawn(node.hub.clone().run_bus_watch(node.bus_status()));
    if let Some(refresher) = node.auth.refresher() {
        tokio::spawn(refresher);
    }
}

/// Serves the public routes: plain, or TLS when a certificate is configured. Sockets there
/// get `TCP_USER_TIMEOUT` of the idle timeout.
fn serve_public(
    node: Arc<Node>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<ListenerTask, GatewayError> {
    let tls = match &node.config.tls {
        Some((cert, key)) => Some(listener::tls_acceptor(cert, key)?),
        None => None,
    };
    let settings = listener::Settings::new(&node.config.limits, Some(node.config.idle_timeout));
    let metrics = Arc::clone(&node.metrics);
    let router = server::router(node);
    Ok(listener::serve(
        listener, router, settings, tls, metrics, stop,
    ))
}

/// Serves the admin routes.
fn serve_admin(
    node: Arc<Node>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> ListenerTask {
    let settings = listener::Settings::new(&node.config.limits, None);
    let metrics = Arc::clone(&node.metrics);
    listener::serve(listener, admin::router(node), settings, None, metrics, stop)
}

/// The token verifier and API key; in development mode, made up and logged. Keys from the
/// JWKS URL come later, in [`run`].
fn credentials(
    config: &Config,
    metrics: &Metrics,
) -> Result<(Authenticator, String), GatewayError> {
    if !config.is_development() {
        let api_key = config.api_key.clone().unwrap_or_default();
        let refreshes =
            |result: JwksRefresh| metrics.jwks_refreshes.with_label_values(&[result.label()]);
        let jwks_metrics = JwksMetrics::new(
            refreshes(JwksRefresh::Ok),
            refreshes(JwksRefresh::Error),
            metrics.jwks_keys.clone(),
        );
        let auth = Authenticator::with_metrics(&config.auth, jwks_metrics)?;
        return Ok((auth, api_key));
    }
    let (auth, secret) = Authenticator::development();
    let api_key = format!("{:032x}", rand::random::<u128>());
    let demo = auth
        .demo_token("demo", Duration::from_secs(24 * 3600))
        .unwrap_or_default();
    tracing::warn!(
        "DEVELOPMENT MODE, NOT FOR PRODUCTION: no GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY_FILE, \
         GATEWAY_JWKS_FILE, GATEWAY_JWKS_URL or GATEWAY_API_KEY is set, so a random secret and \
         API key were made"
    );
    tracing::warn!(jwt_secret = %secret, api_key = %api_key, "development credentials");
    tracing::warn!(user_id = "demo", token = %demo, "demo token, valid 24h");
    Ok((auth, api_key))
}

/// Hands each bus message of one lane to the cluster (control traffic) or the hub (events).
/// Messages that wait together are dispatched as one round, corked: the hub decides the
/// recipients under its locks, and each socket is written once the locks are released, with
/// one write for all of the round's frames.
async fn dispatch(hub: Hub, cluster: Arc<Cluster>, mut lane: mpsc::Receiver<BusMessage>) {
    const MAX_ROUND: usize = 256;
    let mut round = Vec::with_capacity(MAX_ROUND);
    while lane.recv_many(&mut round, MAX_ROUND).await > 0 {
        outbox::corked(|| {
            for message in &round {
                if cluster.is_control(&message.topic) {
                    cluster.handle(message);
                } else {
                    hub.dispatch(message);
                }
            }
        });
        round.clear();
    }
}

/// Mirrors the bus status into metrics and logs.
async fn watch_bus(node: Arc<Node>) {
    let mut status = node.bus_status();
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
    node.start_draining();
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

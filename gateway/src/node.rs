//! What every part of a running node shares: configuration, token verification, the hub, the
//! cluster view, metrics, and whether the node is draining or its bus is up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// What every part of a node shares.
pub(crate) struct Node {
    /// The validated configuration.
    pub(crate) config: Config,
    /// Token verification.
    pub(crate) auth: Authenticator,
    /// The admin API key.
    pub(crate) api_key: String,
    /// Local connections and subscriptions.
    pub(crate) hub: Hub,
    /// The cluster view.
    pub(crate) cluster: Arc<Cluster>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    bus_status: watch::Receiver<bool>,
    draining: AtomicBool,
}

impl Node {
    /// A node that is not draining, whose bus status `bus_status` reports.
    pub(crate) fn new(
        config: Config,
        (auth, api_key): (Authenticator, String),
        hub: Hub,
        cluster: Arc<Cluster>,
        metrics: Arc<Metrics>,
        bus_status: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            auth,
            api_key,
            hub,
            cluster,
            metrics,
            bus_status,
            draining: AtomicBool::new(false),
        }
    }

    /// Whether the node is shutting down.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as shutting down: it refuses new connections and `/readyz` turns 503.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether a browser from `origin` may connect (`GATEWAY_ALLOWED_ORIGINS`; empty allows any).
    pub(crate) fn origin_allowed(&self, origin: &str) -> bool {
        let allowed = &self.config.allowed_origins;
        let origin = origin.trim_end_matches('/');
        allowed.is_empty() || allowed.iter().any(|a| a == origin || a == "*")
    }

    /// Whether the bus is connected.
    pub(crate) fn bus_up(&self) -> bool {
        *self.bus_status.borrow()
    }

    /// The bus status, to watch it change.
    pub(crate) fn bus_status(&self) -> watch::Receiver<bool> {
        self.bus_status.clone()
    }
}

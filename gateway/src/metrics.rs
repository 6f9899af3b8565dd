//! Prometheus metrics, with the names the contract fixes. Labels stay low-cardinality: never a
//! user, channel or client id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use strum::VariantArray;

use crate::auth::TokenRefusal;
use crate::protocol::CloseCode;

/// Why a connection was refused before it became a session (`reason` of
/// `gateway_connections_rejected_total`), besides a refused token ([`TokenRefusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Refusal {
    /// The node is draining.
    Draining,
    /// The browser's origin is not allowed.
    Origin,
    /// The user is at the cluster-wide connection cap.
    UserLimit,
    /// No `auth` frame came in time.
    AuthTimeout,
    /// The first frame was not a usable `auth` frame.
    AuthFrame,
    /// The TLS handshake or the first request head did not finish within
    /// `GATEWAY_HANDSHAKE_TIMEOUT`.
    HandshakeTimeout,
    /// `GATEWAY_MAX_PENDING_HANDSHAKES` connections were already in their handshake.
    HandshakeLimit,
    /// The first request head was too large or not HTTP.
    RequestHead,
}

impl Refusal {
    /// The value as it appears in metrics labels and on the wire.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

/// How a connection ended other than by a server close code (`code` of
/// `gateway_disconnections_total`; server closes are labelled with their [`CloseCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ClientClose {
    /// The client closed normally.
    #[strum(serialize = "1000")]
    Normal,
    /// The client went away.
    #[strum(serialize = "1001")]
    GoingAway,
    /// The socket ended without a close handshake.
    #[strum(serialize = "1006")]
    Abnormal,
    /// The client closed with another code.
    #[strum(serialize = "client_other")]
    Other,
}

impl ClientClose {
    /// The value as it appears in metrics labels and on the wire.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

/// Why a message was not delivered (`reason` of `gateway_messages_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Dropped {
    /// The recipient's outbox was full: it is being closed with 4100.
    SlowConsumer,
    /// The recipient was closing.
    Closing,
    /// A bus message that could not be decoded.
    Malformed,
    /// The hub's bus inbox was full.
    BusBacklog,
    /// The bus did not take a publish.
    BusUnavailable,
}

impl Dropped {
    /// The value as it appears in metrics labels and on the wire.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

/// How a recovery ended (`result` of `gateway_recoveries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum RecoveryResult {
    /// A client got every event it missed.
    Recovered,
    /// A client could not be given every event it missed: it reloads.
    NotRecovered,
    /// The node caught a channel up from history after losing the bus.
    NodeCaughtUp,
    /// The node could not catch a channel up: its subscribers reload.
    NodeReload,
}

impl RecoveryResult {
    /// The value as it appears in metrics labels and on the wire.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

/// How a load of a JWKS file or URL ended (`result` of `gateway_jwks_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum JwksRefresh {
    /// The document loaded: its keys are the ones held now.
    Ok,
    /// It could not be fetched, read or used: the last good keys are kept.
    Error,
}

impl JwksRefresh {
    /// The value as it appears in metrics labels.
    pub(crate) fn label(self) -> &'static str {
        self.into()
    }
}

/// Every metric of a node, registered in the node's own registry.
pub(crate) struct Metrics {
    registry: Registry,
    /// Open, authenticated connections.
    pub connections: IntGauge,
    /// Connections accepted.
    pub connections_accepted: IntCounter,
    /// Connections refused, by reason.
    pub connections_rejected: IntCounterVec,
    /// Connections closed, by close code.
    pub disconnections: IntCounterVec,
    /// Distinct users connected to this node.
    pub users: IntGauge,
    /// Channel subscriptions of this node's connections.
    pub subscriptions: IntGauge,
    /// Channels with at least one local subscriber.
    pub channels: IntGauge,
    /// Messages received from the bus.
    pub bus_messages_received: IntCounter,
    /// Frames written to client sockets.
    pub messages_sent: IntCounter,
    /// Messages not delivered, by reason.
    pub messages_dropped: IntCounterVec,
    /// Client frames received, by type.
    pub client_frames_received: IntCounterVec,
    /// Publish time to socket write.
    pub delivery_latency: Histogram,
    /// 1 while the bus is connected.
    pub bus_up: IntGauge,
    /// Bus reconnections.
    pub bus_reconnects: IntCounter,
    /// Bus canaries that did not come back in time.
    pub bus_canary_failures: IntCounter,
    /// Recoveries on subscribe, by result.
    pub recoveries: IntCounterVec,
    /// Bytes queued in every connection's outbox, not yet written.
    pub outbox_bytes: IntGauge,
    /// Time to publish one message on the bus.
    pub bus_publish_duration: Histogram,
    /// Bus publishes that failed.
    pub bus_publish_errors: IntCounter,
    /// Loads of the JWKS file and URL, by result.
    pub jwks_refreshes: IntCounterVec,
    /// Keys held from the JWKS file and URL.
    pub jwks_keys: IntGauge,
    /// Tasks alive in the runtime, read when the metrics are rendered.
    runtime_tasks: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("gateway_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let r = Registrar(&registry);
        let metrics = Self {
            connections: r.gauge("gateway_connections", "Open connections.")?,
            connections_accepted: r.counter("connections_accepted", "Connections accepted.")?,
            connections_rejected: r.counter_vec(
                "connections_rejected",
                "Connections refused, by reason.",
                "reason",
            )?,
            disconnections: r.counter_vec(
                "disconnections",
                "Connections closed, by close code.",
                "code",
            )?,
            users: r.gauge("gateway_users", "Distinct connected users.")?,
            subscriptions: r.gauge("gateway_subscriptions", "Channel subscriptions.")?,
            channels: r.gauge("gateway_channels", "Channels with local subscribers.")?,
            bus_messages_received: r.counter("bus_messages_received", "Bus messages received.")?,
            messages_sent: r.counter("messages_sent", "Frames written to client sockets.")?,
            messages_dropped: r.counter_vec(
                "messages_dropped",
                "Messages not delivered, by reason.",
                "reason",
            )?,
            client_frames_received: r.counter_vec(
                "client_frames_received",
                "Client frames received, by type.",
                "type",
            )?,
            delivery_latency: r.histogram(
                "gateway_delivery_latency_seconds",
                "Time from publish to socket write.",
                DELIVERY_BUCKETS,
            )?,
            bus_up: r.gauge("gateway_bus_up", "1 while the bus is connected.")?,
            bus_reconnects: r.counter("bus_reconnects", "Bus reconnections.")?,
            bus_canary_failures: r.counter(
                "bus_canary_failures",
                "Bus canaries that did not come back within GATEWAY_BUS_CANARY_TIMEOUT.",
            )?,
            recoveries: r.counter_vec(
                "recoveries",
                "Recoveries on subscribe, by result.",
                "result",
            )?,
            outbox_bytes: r.gauge("gateway_outbox_bytes", "Bytes queued, not yet written.")?,
            bus_publish_duration: r.histogram(
                "gateway_bus_publish_duration_seconds",
                "Time to publish one message on the bus.",
                BUS_PUBLISH_BUCKETS,
            )?,
            bus_publish_errors: r.counter("bus_publish_errors", "Bus publishes that failed.")?,
            jwks_refreshes: r.counter_vec(
                "jwks_refreshes",
                "Loads of the JWKS file and URL, by result.",
                "result",
            )?,
            jwks_keys: r.gauge("gateway_jwks_keys", "Keys held from the JWKS file and URL.")?,
            runtime_tasks: r.gauge("gateway_runtime_tasks", "Tasks alive in the runtime.")?,
            registry,
        };
        metrics.prime();
        #[cfg(target_os = "linux")]
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(metrics)
    }

    /// Creates the usual label values at zero, so that rates and alerts have series to work
    /// on before the first event of each kind.
    fn prime(&self) {
        for reason in Dropped::VARIANTS {
            self.messages_dropped.with_label_values(&[reason.label()]);
        }
        let server = CloseCode::ALL.iter().map(|code| code.label());
        let client = ClientClose::VARIANTS.iter().map(|code| code.label());
        for code in server.chain(client) {
            self.disconnections.with_label_values(&[code]);
        }
        let refusals = Refusal::VARIANTS.iter().map(|reason| reason.label());
        let tokens = TokenRefusal::VARIANTS.iter().map(|reason| reason.label());
        for reason in refusals.chain(tokens) {
            self.connections_rejected.with_label_values(&[reason]);
        }
        for result in RecoveryResult::VARIANTS {
            self.recoveries.with_label_values(&[result.label()]);
        }
        for result in JwksRefresh::VARIANTS {
            self.jwks_refreshes.with_label_values(&[result.label()]);
        }
    }

    /// Counts a connection refused for `reason` (a [`Refusal`] or [`TokenRefusal`] label).
    pub(crate) fn refused(&self, reason: &'static str) {
        self.connections_rejected.with_label_values(&[reason]).inc();
    }

    /// Counts a connection that ended with `code` (a [`CloseCode`] or [`ClientClose`] label).
    pub(crate) fn disconnected(&self, code: &'static str) {
        self.disconnections.with_label_values(&[code]).inc();
    }

    /// Counts a message that was not delivered.
    pub(crate) fn dropped(&self, reason: Dropped) {
        self.messages_dropped
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Counts a recovery's result.
    pub(crate) fn recovery(&self, result: RecoveryResult) {
        self.recoveries.with_label_values(&[result.label()]).inc();
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(tasks).unwrap_or(i64::MAX));
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot be built, which the
        // constructors above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Buckets of `gateway_delivery_latency_seconds`.
const DELIVERY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of `gateway_bus_publish_duration_seconds`.
const BUS_PUBLISH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Makes metrics and registers them in one registry. Counters are named without their
/// `gateway_` prefix and `_total` suffix, which every counter of the contract has.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        let gauge = IntGauge::new(name, help)?;
        self.0.register(Box::new(gauge.clone()))?;
        Ok(gauge)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        let counter = IntCounter::new(format!("gateway_{name}_total"), help)?;
        self.0.register(Box::new(counter.clone()))?;
        Ok(counter)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        label: &str,
    ) -> Result<IntCounterVec, prometheus::Error> {
        let opts = Opts::new(format!("gateway_{name}_total"), help);
        let counter = IntCounterVec::new(opts, &[label])?;
        self.0.register(Box::new(counter.clone()))?;
        Ok(counter)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let histogram = Histogram::with_opts(opts)?;
        self.0.register(Box::new(histogram.clone()))?;
        Ok(histogram)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every label value the code can use has a series from the start, so that dashboards
    /// and alerts see them before the first event of each kind.
    #[test]
    fn every_label_value_is_primed() {
        let text = Metrics::new().unwrap().render();
        let has = |metric: &str, label: &str, value: &str| {
            text.contains(&format!("{metric}{{{label}=\"{value}\"}} 0"))
        };
        for code in CloseCode::ALL {
            let code = code.label();
            assert!(has("gateway_disconnections_total", "code", code), "{code}");
        }
        for code in ["1011", "4004", "4102", "1006", "client_other"] {
            assert!(has("gateway_disconnections_total", "code", code), "{code}");
        }
        let reasons = [
            "user_limit",
            "auth_timeout",
            "auth_frame",
            "origin",
            "expired",
        ];
        for reason in reasons {
            let metric = "gateway_connections_rejected_total";
            assert!(has(metric, "reason", reason), "{reason}");
        }
        for reason in Dropped::VARIANTS {
            let metric = "gateway_messages_dropped_total";
            assert!(has(metric, "reason", reason.label()), "{reason:?}");
        }
        for result in [
            "recovered",
            "not_recovered",
            "node_caught_up",
            "node_reload",
        ] {
            assert!(
                has("gateway_recoveries_total", "result", result),
                "{result}"
            );
        }
        for result in ["ok", "error"] {
            let metric = "gateway_jwks_refreshes_total";
            assert!(has(metric, "result", result), "{result}");
        }
        assert!(
            text.contains("\ngateway_jwks_keys 0\n"),
            "gateway_jwks_keys"
        );
    }
}

//! Prometheus metrics, with the names the contract fixes. Labels stay low-cardinality: never a
//! user, channel or client id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of a node, registered in the node's own registry.
pub struct Metrics {
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
    /// Recoveries on subscribe, by result.
    pub recoveries: IntCounterVec,
    /// Bytes queued in every connection's outbox, not yet written.
    pub outbox_bytes: IntGauge,
    /// Time to publish one message on the bus.
    pub bus_publish_duration: Histogram,
    /// Bus publishes that failed.
    pub bus_publish_errors: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("gateway_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let metrics = Self {
            connections: gauge(&registry, "gateway_connections", "Open connections.")?,
            connections_accepted: counter(
                &registry,
                "gateway_connections_accepted_total",
                "Connections accepted.",
            )?,
            connections_rejected: counter_vec(
                &registry,
                "gateway_connections_rejected_total",
                "Connections refused, by reason.",
                "reason",
            )?,
            disconnections: counter_vec(
                &registry,
                "gateway_disconnections_total",
                "Connections closed, by close code.",
                "code",
            )?,
            users: gauge(&registry, "gateway_users", "Distinct connected users.")?,
            subscriptions: gauge(&registry, "gateway_subscriptions", "Channel subscriptions.")?,
            channels: gauge(
                &registry,
                "gateway_channels",
                "Channels with local subscribers.",
            )?,
            bus_messages_received: counter(
                &registry,
                "gateway_bus_messages_received_total",
                "Messages received from the bus.",
            )?,
            messages_sent: counter(
                &registry,
                "gateway_messages_sent_total",
                "Frames written to client sockets.",
            )?,
            messages_dropped: counter_vec(
                &registry,
                "gateway_messages_dropped_total",
                "Messages not delivered, by reason.",
                "reason",
            )?,
            client_frames_received: counter_vec(
                &registry,
                "gateway_client_frames_received_total",
                "Client frames received, by type.",
                "type",
            )?,
            delivery_latency: {
                let histogram = Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_delivery_latency_seconds",
                        "Time from publish to socket write.",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                )?;
                registry.register(Box::new(histogram.clone()))?;
                histogram
            },
            bus_up: gauge(&registry, "gateway_bus_up", "1 while the bus is connected.")?,
            bus_reconnects: counter(
                &registry,
                "gateway_bus_reconnects_total",
                "Bus reconnections.",
            )?,
            recoveries: counter_vec(
                &registry,
                "gateway_recoveries_total",
                "Recoveries on subscribe, by result.",
                "result",
            )?,
            outbox_bytes: gauge(
                &registry,
                "gateway_outbox_bytes",
                "Bytes queued for clients and not yet written.",
            )?,
            bus_publish_duration: {
                let histogram = Histogram::with_opts(
                    HistogramOpts::new(
                        "gateway_bus_publish_duration_seconds",
                        "Time to publish one message on the bus.",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0,
                    ]),
                )?;
                registry.register(Box::new(histogram.clone()))?;
                histogram
            },
            bus_publish_errors: counter(
                &registry,
                "gateway_bus_publish_errors_total",
                "Bus publishes that failed.",
            )?,
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
        for reason in [
            "slow_consumer",
            "closing",
            "malformed",
            "bus_backlog",
            "bus_unavailable",
        ] {
            self.messages_dropped.with_label_values(&[reason]);
        }
        for code in [
            "1000", "1001", "1006", "1009", "4001", "4002", "4003", "4100", "4101", "4200",
        ] {
            self.disconnections.with_label_values(&[code]);
        }
        for reason in ["expired", "signature", "malformed", "origin", "draining"] {
            self.connections_rejected.with_label_values(&[reason]);
        }
        for result in ["recovered", "not_recovered"] {
            self.recoveries.with_label_values(&[result]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot be built, which the
        // constructors above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let gauge = IntGauge::new(name, help)?;
    registry.register(Box::new(gauge.clone()))?;
    Ok(gauge)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let counter = IntCounter::new(name, help)?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> Result<IntCounterVec, prometheus::Error> {
    let counter = IntCounterVec::new(Opts::new(name, help), &[label])?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

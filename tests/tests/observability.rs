//! Observability: the live `/metrics` passes `promtool check metrics`, and every query of the
//! Grafana dashboard (deploy/grafana/dashboards/gateway.json) parses and returns data from a
//! real Prometheus scraping two gateways on one Redis.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use e2e::{
    GatewayConfig, TestClient, TestGateway, TestPrometheus, TestRedis, TokenBuilder, assert_event,
    assert_refused, promtool, samples_of,
};
use futures_util::future::join_all;
use serde_json::{Value, json};

/// Metric names the contract fixes (shared/SPEC.md, "Metrics"), plus the operator metrics the
/// dashboard and alerts use.
const EXPECTED_METRICS: &[&str] = &[
    "gateway_connections",
    "gateway_connections_accepted_total",
    "gateway_connections_rejected_total",
    "gateway_disconnections_total",
    "gateway_users",
    "gateway_subscriptions",
    "gateway_channels",
    "gateway_bus_messages_received_total",
    "gateway_messages_sent_total",
    "gateway_messages_dropped_total",
    "gateway_client_frames_received_total",
    "gateway_delivery_latency_seconds",
    "gateway_bus_up",
    "gateway_bus_reconnects_total",
    "gateway_bus_canary_failures_total",
    "gateway_jwks_refreshes_total",
    "gateway_jwks_keys",
    "gateway_runtime_tasks",
    "gateway_recoveries_total",
    "gateway_build_info",
    "gateway_outbox_bytes",
    "gateway_bus_publish_duration_seconds",
    "gateway_bus_publish_errors_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
];

/// The range Grafana's interval variables stand for in the test: several 1 s scrapes, and
/// short enough that the traffic of this test is inside it.
const RATE_INTERVAL: &str = "1m";

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards/gateway.json")
}

/// Gives `gws` some of everything: clients on each replica subscribed to a channel and
/// pinging, events to the channel and to a user (published on one replica, delivered on all),
/// an upgrade refused for a bad signature, and a normal close. Returns the clients still
/// connected, so that the connection and subscription gauges are not all zero while they live.
async fn drive_traffic(gws: &[TestGateway], events: u64) -> Vec<TestClient> {
    let mut clients = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        for j in 0..2 {
            let mut client = gw.connect_as(&format!("user-{i}-{j}")).await;
            client.subscribe_ok(&["jobs"]).await;
            assert_eq!(
                client.request(json!({"type": "ping"})).await["type"],
                "pong"
            );
            clients.push(client);
        }
    }
    let mut shared = vec![
        gws[0].connect_as("shared").await,
        gws[gws.len() - 1].connect_as("shared").await,
    ];

    for seq in 0..events {
        let data = json!({"seq": seq});
        gws[(seq as usize) % gws.len()]
            .publish_ok(json!({"channel": "jobs", "event": "job_progress", "data": data}))
            .await;
        for client in &mut clients {
            assert_event(&client.recv().await, "job_progress", Some("jobs"), &data);
        }
    }
    let data = json!({"photo": "p1"});
    gws[0]
        .publish_ok(json!({"user": "shared", "event": "photo_ready", "data": data}))
        .await;
    for client in &mut shared {
        assert_event(&client.recv().await, "photo_ready", Some("#shared"), &data);
    }

    let forged = TokenBuilder::new("mallory").sign_hs256(b"not the gateway's secret");
    for gw in gws {
        assert_refused(gw.connect_token(&forged).await, 401);
    }
    for client in clients.drain(..2) {
        client.close().await;
    }
    clients.extend(shared);
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_check_metrics() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(GatewayConfig::new().redis_url(&redis.url())).await;
    let _clients = drive_traffic(std::slice::from_ref(&gw), 5).await;

    let text = gw.metrics().await;
    for name in EXPECTED_METRICS {
        assert!(
            text.contains(&format!("\n# TYPE {name} ")),
            "/metrics has no metric {name}:\n{text}"
        );
    }
    let (ok, output) = promtool(&["check", "metrics"], &text).await;
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics is not clean (success: {ok}):\n{output}\n---- /metrics ----\n{text}"
    );
}

/// One query of the dashboard: where it comes from and its PromQL.
struct DashboardQuery {
    origin: String,
    expr: String,
}

/// Every panel target's `expr` (rows' nested panels included) and every query variable's
/// series selector, from the dashboard JSON.
fn dashboard_queries(dashboard: &Value) -> Vec<DashboardQuery> {
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("dashboard panels") {
        panels.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
    }
    for panel in panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            queries.push(DashboardQuery {
                origin: format!("panel {title:?} query {}", target["refId"]),
                expr: expr.to_owned(),
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .unwrap_or(&vec![])
    {
        let query = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        // label_values(<selector>, <label>): the selector must find series.
        if let Some(inner) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            && let Some((selector, _label)) = inner.rsplit_once(',')
        {
            queries.push(DashboardQuery {
                origin: format!("variable ${}", variable["name"].as_str().unwrap_or("?")),
                expr: selector.trim().to_owned(),
            });
        }
    }
    queries
}

/// The expression as Prometheus should see it: Grafana's interval variables become a fixed
/// range, the dashboard's `$job` and `$instance` (all values selected) become `.*`.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__interval", RATE_INTERVAL)
        .replace("$__range", RATE_INTERVAL)
        .replace("${job}", ".*")
        .replace("${instance}", ".*")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboard_path())
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dashboard_path().display())),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());

    let redis = TestRedis::start().await;
    let gws: Vec<TestGateway> = join_all((0..2).map(|i| {
        TestGateway::spawn(
            GatewayConfig::new()
                .redis_url(&redis.url())
                .node_id(&format!("dash-{i}")),
        )
    }))
    .await;
    let targets: Vec<String> = gws
        .iter()
        .map(|gw| gw.admin_url().trim_start_matches("http://").to_owned())
        .collect();
    let prometheus = TestPrometheus::start("gateway", &targets, Duration::from_secs(1)).await;
    prometheus
        .wait_for(
            r#"count(up{job="gateway"} == 1) == 2"#,
            Duration::from_secs(60),
        )
        .await;

    const EVENTS: u64 = 20;
    let clients = drive_traffic(&gws, EVENTS).await;
    // Wait until Prometheus has scraped the traffic on both replicas, then a few more scrapes
    // so that every rate has samples on both sides of it.
    let delivered = 4 * EVENTS;
    prometheus
        .wait_for(
            &format!(
                r#"sum(gateway_delivery_latency_seconds_count{{job="gateway"}}) >= {delivered}
                   and count(gateway_client_frames_received_total{{job="gateway"}}) > 0
                   and count(gateway_bus_publish_duration_seconds_count{{job="gateway"}} > 0) == 2"#
            ),
            Duration::from_secs(60),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let mut failures = Vec::new();
    for query in &queries {
        let expr = concrete(&query.expr);
        if expr.contains('$') {
            failures.push(format!(
                "{}: a Grafana variable the test does not know: {expr}",
                query.origin
            ));
            continue;
        }
        let reply = prometheus.query(&expr).await;
        if reply["status"] != "success" {
            failures.push(format!(
                "{}: Prometheus refused {expr}: {} {}",
                query.origin, reply["errorType"], reply["error"]
            ));
            continue;
        }
        let samples = samples_of(&expr, &reply);
        if samples.is_empty() {
            failures.push(format!("{}: no data for {expr}", query.origin));
        } else if samples.iter().all(|(_, value)| value.is_nan()) {
            failures.push(format!(
                "{}: only NaN for {expr}: {samples:?}",
                query.origin
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries failed against {}:\n  {}",
        failures.len(),
        queries.len(),
        prometheus.url(),
        failures.join("\n  ")
    );

    // The labelled series the traffic made are there with their labels.
    let rejected = prometheus
        .samples(r#"sum by (reason) (gateway_connections_rejected_total{job="gateway", reason="signature"})"#)
        .await;
    assert!(
        rejected.iter().any(|(_, v)| *v >= 2.0),
        "two refused upgrades, one per replica: {rejected:?}"
    );
    let closes = prometheus
        .samples(r#"sum(gateway_disconnections_total{job="gateway"})"#)
        .await;
    assert!(
        closes.iter().any(|(_, v)| *v >= 2.0),
        "two clients closed: {closes:?}"
    );
    let frames = prometheus
        .samples(r#"sum by (type) (gateway_client_frames_received_total{job="gateway"})"#)
        .await;
    let types: Vec<&str> = frames
        .iter()
        .filter_map(|(labels, _)| labels["type"].as_str())
        .collect();
    assert!(
        types.contains(&"subscribe") && types.contains(&"ping"),
        "client frames by type: {types:?}"
    );
    drop(clients);
}

#[test]
fn dashboard_queries_cover_the_panels_the_issue_asks_for() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let all: String = dashboard_queries(&dashboard)
        .iter()
        .map(|q| q.expr.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "sum by (instance) (gateway_connections",
        "sum(gateway_connections",
        "sum by (instance) (gateway_users",
        "gateway_connections_accepted_total",
        "sum by (code) (rate(gateway_disconnections_total",
        "gateway_subscriptions",
        "gateway_channels",
        "rate(gateway_bus_messages_received_total",
        "rate(gateway_messages_sent_total",
        "histogram_quantile(0.5, sum by (le) (rate(gateway_delivery_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(gateway_delivery_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(gateway_delivery_latency_seconds_bucket",
        "sum by (reason) (rate(gateway_messages_dropped_total",
        r#"gateway_disconnections_total{code="4100""#,
        "gateway_bus_up",
        "gateway_bus_reconnects_total",
        "sum by (result) (rate(gateway_recoveries_total",
        "sum by (reason) (rate(gateway_connections_rejected_total",
        "rate(process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(needle), "no dashboard query has {needle:?}");
    }
    // Every panel uses the provisioned datasource, by its fixed uid.
    let provisioning = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    let uid = "gateway-prometheus";
    assert!(
        provisioning.contains(&format!("uid: {uid}")),
        "the datasource is provisioned with uid {uid}"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], uid,
                "panel {} datasource",
                panel["title"]
            );
        }
    }
}

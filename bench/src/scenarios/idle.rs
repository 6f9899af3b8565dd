//! Scenario 1, idle: many connections on one replica, each on its personal channel and on a
//! group channel; what one connection costs in gateway memory, how fast they connect, and how
//! long a handshake plus subscribe takes.

use std::time::Duration;

use anyhow::Result;

use super::{Bench, latency_rows, progress};
use crate::fleet::Fleet;
use crate::measure::{Latency, metric_sum, redis_cpu_seconds};
use crate::plan::Spread;
use crate::procs::Redis;
use crate::report::{Report, Target, Unit};

/// Options of the idle scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IdleArgs {
    /// Connections [default: 19000; smoke: 200].
    #[arg(long)]
    connections: Option<usize>,
    /// Members of each group channel.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Wait after the last subscribe before reading the gateway's memory.
    #[arg(long, default_value = "2s")]
    settle: humantime::Duration,
}

const LABEL: &str = "idle";

pub(crate) async fn run(bench: &Bench, args: &IdleArgs) -> Result<Report> {
    let n = bench.pick(args.connections, 19_000, 200);
    let redis = Redis::start().await?;
    let gateways = bench.gateways(&redis, 1, LABEL, |spec| spec).await?;
    let gateway = &gateways[0];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gateway.rss()?;

    let mut plan = bench.fleet.plan(vec![gateway.ws_url()], Spread::First, n);
    plan.group_size = args.group_size;
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let workers = fleet.worker_count();
    progress(
        LABEL,
        &format!(
            "{n} clients in {} worker process(es) from {} source address(es)",
            workers,
            plan.source_ips.len()
        ),
    );
    let cpu_before = (
        super::gateway_cpu(&gateways)?,
        fleet.cpu_seconds()?,
        redis_cpu_seconds(&redis.url()).await?,
    );
    let connected = fleet.connect().await?;
    let cpu = (
        super::gateway_cpu(&gateways)? - cpu_before.0,
        fleet.cpu_seconds()? - cpu_before.1,
        redis_cpu_seconds(&redis.url()).await? - cpu_before.2,
    );
    tokio::time::sleep(*args.settle).await;
    let rss_after = gateway.rss()?;
    let metrics = gateway.metrics().await?;
    super::finish(gateways, fleet).await;

    let mut report = Report::new(
        LABEL,
        format!("{n} idle connections on one replica, personal + group channel each"),
        bench.smoke,
    );
    report.param("connections", n);
    report.param("group_size", args.group_size);
    report.param("workers", workers);
    report.param("source_ips", plan.source_ips.len());
    report.add_target(
        "connections established",
        connected.ok as f64,
        Unit::Count,
        Target::AtLeast(n as f64),
    );
    report.add(
        "gateway_connections (gateway's gauge)",
        metric_sum(&metrics, "gateway_connections", ""),
        Unit::Count,
    );
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / connected.ok.max(1) as f64;
    report.add_target(
        "gateway RSS per connection",
        per_connection,
        Unit::Bytes,
        Target::AtMost(4096.0),
    );
    report.add("gateway RSS before", rss_before as f64, Unit::Bytes);
    report.add("gateway RSS after", rss_after as f64, Unit::Bytes);
    let rate = connected.ok as f64 / connected.elapsed.as_secs_f64().max(1e-9);
    report.add_target(
        "connect rate",
        rate,
        Unit::PerSecond,
        Target::AtLeast(10_000.0),
    );
    report.add(
        "time to connect all",
        connected.elapsed.as_secs_f64(),
        Unit::Seconds,
    );
    // What one connection costs each process while connecting: with every process on the
    // same two cores, their sum bounds the connect rate.
    let per_connection_us = |seconds: f64| seconds * 1e6 / connected.ok.max(1) as f64;
    report.add(
        "gateway CPU per connect",
        per_connection_us(cpu.0),
        Unit::Micros,
    );
    report.add(
        "client workers' CPU per connect",
        per_connection_us(cpu.1),
        Unit::Micros,
    );
    report.add(
        "Redis CPU per connect",
        per_connection_us(cpu.2),
        Unit::Micros,
    );
    latency_rows(
        &mut report,
        "handshake + subscribe",
        Latency::of(&connected.handshake),
        Some(Target::Below(20.0)),
    );
    if let Some(error) = connected.first_error {
        report.note(format!("{} failed; first: {error}", connected.failed));
    }
    report.note(format!(
        "handshakes in flight at once: {} (--connect-concurrency)",
        bench.fleet.connect_concurrency
    ));
    Ok(report)
}

//! Scenario 3, many channels: clients on two replicas, each on its personal channel and a
//! group channel (~11,000 channels for 10,000 clients), events to random channels through
//! Redis; deliveries per second, end-to-end latency, and what it costs Redis and the gateways.

use std::time::Duration;

use anyhow::Result;
use publisher::Publisher;

use super::{Bench, gateway_cpu, latency_rows, progress};
use crate::fleet::{Fleet, histogram_of};
use crate::load;
use crate::measure::{Latency, redis_cpu_seconds};
use crate::plan::{Plan, Spread};
use crate::procs::{Gateway, Redis};
use crate::report::{Report, Target, Unit};

/// Options of the many-channels scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ManyArgs {
    /// Replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Connections over all replicas [default: 10000; smoke: 200].
    #[arg(long)]
    connections: Option<usize>,
    /// Members of each group channel.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Deliveries per second to aim for [default: 100000; smoke: 2000].
    #[arg(long)]
    rate: Option<f64>,
    /// How long to publish [default: 10s; smoke: 2s].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Runs on a Redis Cluster of this many masters (sharded pub/sub) instead of one Redis.
    #[arg(long)]
    redis_cluster: Option<usize>,
}

const LABEL: &str = "many-channels";
/// The prefix of the group channels' names.
const GROUP_PREFIX: &str = "grp-";

/// A plan for `n` clients spread over `gateways`, each on its personal channel and on a group
/// channel of `group_size` clients.
pub(super) fn plan(bench: &Bench, gateways: &[Gateway], n: usize, group_size: usize) -> Plan {
    let mut plan = bench.fleet.plan(
        gateways.iter().map(|g| g.ws_url()).collect(),
        Spread::RoundRobin,
        n,
    );
    plan.group_size = group_size;
    plan.group_prefix = GROUP_PREFIX.into();
    plan
}

/// Every channel of [`plan`]'s clients with its subscribers: a personal channel per client, a
/// group per `group_size` clients.
pub(super) fn channels(n: usize, group_size: usize) -> Vec<(String, u64)> {
    let mut channels: Vec<(String, u64)> =
        (0..n).map(|i| (format!("#{}", Plan::user(i)), 1)).collect();
    let groups = n.div_ceil(group_size);
    for g in 0..groups {
        let members = group_size.min(n - g * group_size);
        channels.push((format!("{GROUP_PREFIX}{g}"), members as u64));
    }
    channels
}

/// Subscribers per channel, on average over `channels`.
pub(super) fn mean_fanout(channels: &[(String, u64)]) -> f64 {
    channels.iter().map(|c| c.1).sum::<u64>() as f64 / channels.len().max(1) as f64
}

/// One of `channels`, chosen at random, with its subscribers.
pub(super) fn random_channel(channels: &[(String, u64)]) -> (String, u64) {
    channels[rand::random_range(0..channels.len())].clone()
}

pub(crate) async fn run(bench: &Bench, args: &ManyArgs) -> Result<Report> {
    let n = bench.pick(args.connections, 10_000, 200);
    let rate = bench.pick(args.rate, 100_000.0, 2_000.0);
    let duration = bench.pick(
        args.duration.map(Into::into),
        Duration::from_secs(10),
        Duration::from_secs(2),
    );
    let replicas = args.replicas.max(1);
    let group_size = args.group_size.max(1);

    let redis = match args.redis_cluster {
        Some(masters) => Redis::start_cluster(masters.max(1)).await?,
        None => Redis::start().await?,
    };
    let gateways = bench.gateways(&redis, replicas, LABEL, |spec| spec).await?;
    let plan = plan(bench, &gateways, n, group_size);
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;

    let channels = channels(n, group_size);
    let events_per_s = rate / mean_fanout(&channels);
    progress(
        LABEL,
        &format!(
            "{} channels, {events_per_s:.0} events/s to random ones (≈{rate:.0} deliveries/s) for {duration:?}",
            channels.len()
        ),
    );

    let publisher = Publisher::connect_to(&redis.topology()?)?;
    fleet.snapshot().await?;
    let before = fleet.deliveries().await?;
    let redis_before = servers_cpu(&redis).await?;
    let cpu_before = gateway_cpu(&gateways)?;
    let client_cpu_before = fleet.cpu_seconds()?;
    let published = load::paced(
        &publisher,
        events_per_s,
        duration,
        args.event_bytes,
        Some(LABEL),
        || random_channel(&channels),
    )
    .await?;
    let redis_after = servers_cpu(&redis).await?;
    let per_server: Vec<f64> = redis_after
        .iter()
        .zip(&redis_before)
        .map(|(after, before)| after - before)
        .collect();
    let redis_cpu: f64 = per_server.iter().sum();
    let delivered = fleet
        .wait_deliveries(
            before + published.expected_deliveries,
            Duration::from_millis(500),
            Duration::from_secs(5),
        )
        .await?
        - before;
    let cpu = gateway_cpu(&gateways)? - cpu_before;
    let client_cpu = fleet.cpu_seconds()? - client_cpu_before;
    let snapshot = fleet.snapshot().await?;
    super::finish(gateways, fleet).await;

    let seconds = published.elapsed.as_secs_f64().max(1e-9);
    let mut report = Report::new(
        LABEL,
        format!("{n} clients on {replicas} replicas, events to random channels via Redis"),
        bench.smoke,
    );
    report.param("connections", connected.ok);
    report.param("replicas", replicas);
    report.param("group_size", group_size);
    report.param("target_rate", rate);
    report.param("duration_s", duration.as_secs_f64());
    report.param(
        "redis",
        format!("{} ({} server(s))", redis.mode(), per_server.len()),
    );
    report.add("channels", channels.len() as f64, Unit::Count);
    report.add(
        "events published",
        published.events as f64 / seconds,
        Unit::PerSecond,
    );
    report.add_target(
        "deliveries",
        delivered as f64 / seconds,
        Unit::PerSecond,
        Target::AtLeast(rate * 0.99),
    );
    report.add(
        "delivered / expected",
        delivered as f64 / published.expected_deliveries.max(1) as f64,
        Unit::Ratio,
    );
    latency_rows(
        &mut report,
        "publish → client",
        Latency::of(&histogram_of(&snapshot.latency)),
        Some(Target::Below(5.0)),
    );
    report.add("Redis CPU", redis_cpu, Unit::CpuSeconds);
    report.add(
        "Redis CPU (of one core)",
        redis_cpu / seconds * 100.0,
        Unit::Percent,
    );
    if per_server.len() > 1 {
        for (index, cpu) in per_server.iter().enumerate() {
            report.add(
                &format!("Redis CPU, master {} (of one core)", index + 1),
                cpu / seconds * 100.0,
                Unit::Percent,
            );
        }
    }
    report.add(
        "gateway CPU (all replicas, of one core)",
        cpu / seconds * 100.0,
        Unit::Percent,
    );
    report.add(
        "gateway CPU per million deliveries",
        cpu / (delivered.max(1) as f64 / 1e6),
        Unit::CpuSeconds,
    );
    report.add(
        "client workers' CPU (of one core)",
        client_cpu / seconds * 100.0,
        Unit::Percent,
    );
    if let Some(note) = connected.failure_note() {
        report.note(note);
    }
    Ok(report)
}

/// Each Redis server's CPU seconds so far.
async fn servers_cpu(redis: &Redis) -> Result<Vec<f64>> {
    let mut seconds = Vec::new();
    for url in redis.server_urls() {
        seconds.push(redis_cpu_seconds(&url).await?);
    }
    Ok(seconds)
}

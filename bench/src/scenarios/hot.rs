//! Scenario 2, hot channel: every client of two replicas on one channel, events at rising
//! rates; the highest delivery rate whose p99 stays under a bound, gateway CPU per million
//! deliveries, and publish → client latency.

use std::time::Duration;

use anyhow::Result;
use publisher::Publisher;

use super::{Bench, gateway_cpu, latency_rows, progress};
use crate::fleet::{Fleet, histogram_of};
use crate::load;
use crate::measure::Latency;
use crate::plan::{Plan, Spread};
use crate::procs::{Gateway, Redis};
use crate::report::{Report, Target, Unit, thousands};

/// Options of the hot-channel scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HotArgs {
    /// Replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Subscribers per replica [default: 9500; smoke: 100].
    #[arg(long)]
    per_replica: Option<usize>,
    /// Delivery rates to try in turn, deliveries/s over all subscribers
    /// [default: 50000,100000,200000,400000,800000; smoke: 2000,5000].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// How long each rate runs [default: 10s; smoke: 1500ms].
    #[arg(long)]
    step: Option<humantime::Duration>,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// A rate counts while its p99 stays under this, ms.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
}

const LABEL: &str = "hot-channel";
/// The channel every subscriber is on.
pub(super) const CHANNEL: &str = "hot";

/// A plan for `subscribers` clients spread over `gateways`, all on [`CHANNEL`].
pub(super) fn plan(bench: &Bench, gateways: &[Gateway], subscribers: usize) -> Plan {
    let mut plan = bench.fleet.plan(
        gateways.iter().map(|g| g.ws_url()).collect(),
        Spread::RoundRobin,
        subscribers,
    );
    plan.channels = vec![CHANNEL.into()];
    plan
}

/// Whether a rate kept up: its p99 under `p99_limit_ms` and at least 99 % delivered.
pub(super) fn keeps_up(latency: Option<Latency>, delivered_ratio: f64, p99_limit_ms: f64) -> bool {
    latency.is_some_and(|l| l.p99_ms < p99_limit_ms) && delivered_ratio >= 0.99
}

/// One rate's figures.
struct Step {
    rate: f64,
    delivered_per_s: f64,
    delivered_ratio: f64,
    latency: Option<Latency>,
    latency_from_timestamp: Option<Latency>,
    cpu_per_million: f64,
    /// CPU of the client workers, share of one core.
    client_cpu: f64,
}

pub(crate) async fn run(bench: &Bench, args: &HotArgs) -> Result<Report> {
    let per_replica = bench.pick(args.per_replica, 9_500, 100);
    let rates = bench.pick(
        args.rates.clone(),
        vec![50_000.0, 100_000.0, 200_000.0, 400_000.0, 800_000.0],
        vec![2_000.0, 5_000.0],
    );
    let step = bench.pick(
        args.step.map(Into::into),
        Duration::from_secs(10),
        Duration::from_millis(1500),
    );
    let replicas = args.replicas.max(1);
    let subscribers = per_replica * replicas;

    let redis = Redis::start().await?;
    let gateways = bench.gateways(&redis, replicas, LABEL, |spec| spec).await?;
    let plan = plan(bench, &gateways, subscribers);
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;
    let publisher = Publisher::connect(&redis.url())?;

    let mut steps = Vec::new();
    for &rate in &rates {
        let events_per_s = rate / connected.ok.max(1) as f64;
        progress(
            LABEL,
            &format!(
                "{rate:.0} deliveries/s = {events_per_s:.2} events/s to {} subscribers for {step:?}",
                connected.ok
            ),
        );
        fleet.snapshot().await?;
        let before_deliveries = fleet.deliveries().await?;
        let cpu_before = gateway_cpu(&gateways)?;
        let client_cpu_before = fleet.cpu_seconds()?;
        let published = load::paced(
            &publisher,
            events_per_s,
            step,
            args.event_bytes,
            Some(LABEL),
            || (CHANNEL.to_owned(), connected.ok as u64),
        )
        .await?;
        let expected = before_deliveries + published.expected_deliveries;
        let delivered = fleet
            .wait_deliveries(expected, Duration::from_millis(500), Duration::from_secs(5))
            .await?
            - before_deliveries;
        let cpu = gateway_cpu(&gateways)? - cpu_before;
        let client_cpu = fleet.cpu_seconds()? - client_cpu_before;
        let snapshot = fleet.snapshot().await?;
        let result = Step {
            rate,
            delivered_per_s: delivered as f64 / published.elapsed.as_secs_f64().max(1e-9),
            delivered_ratio: delivered as f64 / published.expected_deliveries.max(1) as f64,
            latency: Latency::of(&histogram_of(&snapshot.latency)),
            latency_from_timestamp: Latency::of(&histogram_of(&snapshot.latency_from_timestamp)),
            cpu_per_million: cpu / (delivered.max(1) as f64 / 1e6),
            client_cpu: client_cpu / published.elapsed.as_secs_f64().max(1e-9),
        };
        let p99 = result.latency.map_or(f64::INFINITY, |l| l.p99_ms);
        progress(
            LABEL,
            &format!(
                "  delivered {:.0}/s ({:.1} %), p99 {p99:.2} ms, {:.3} CPU-s per million",
                result.delivered_per_s,
                result.delivered_ratio * 100.0,
                result.cpu_per_million
            ),
        );
        let keeps_up = keeps_up(result.latency, result.delivered_ratio, args.p99_limit_ms);
        steps.push(result);
        if !keeps_up {
            break;
        }
    }
    super::finish(gateways, fleet).await;

    let mut report = Report::new(
        LABEL,
        format!("{replicas} replicas × {per_replica} subscribers of one channel"),
        bench.smoke,
    );
    report.param("replicas", replicas);
    report.param("subscribers", connected.ok);
    report.param("event_bytes", args.event_bytes);
    report.param("step_s", step.as_secs_f64());
    report.param("rates", &rates);
    summary(&mut report, &steps, args.p99_limit_ms);
    for step in &steps {
        let at = format!("@{} /s", thousands(step.rate));
        report.add(
            &format!("{at}: delivered"),
            step.delivered_per_s,
            Unit::PerSecond,
        );
        if let Some(l) = step.latency {
            report.add(&format!("{at}: p50"), l.p50_ms, Unit::Millis);
            report.add(&format!("{at}: p99"), l.p99_ms, Unit::Millis);
            report.add(&format!("{at}: max"), l.max_ms, Unit::Millis);
        }
        if let Some(l) = step.latency_from_timestamp {
            report.add(
                &format!("{at}: p99 from event timestamp (ms resolution)"),
                l.p99_ms,
                Unit::Millis,
            );
        }
        report.add(
            &format!("{at}: gateway CPU per million deliveries"),
            step.cpu_per_million,
            Unit::CpuSeconds,
        );
        report.add(
            &format!("{at}: client workers' CPU (of one core)"),
            step.client_cpu * 100.0,
            Unit::Percent,
        );
    }
    if let Some(note) = connected.failure_note() {
        report.note(note);
    }
    report.note(
        "latency is from the send time in each event's data (ns) to its arrival at the client",
    );
    Ok(report)
}

fn summary(report: &mut Report, steps: &[Step], p99_limit_ms: f64) {
    let passing = steps
        .iter()
        .filter(|s| keeps_up(s.latency, s.delivered_ratio, p99_limit_ms))
        .max_by(|a, b| a.rate.total_cmp(&b.rate));
    match passing {
        Some(best) => {
            report.add(
                &format!("highest delivery rate with p99 < {p99_limit_ms} ms"),
                best.delivered_per_s,
                Unit::PerSecond,
            );
            report.add_target(
                "deliveries per gateway CPU-second (at that rate)",
                1e6 / best.cpu_per_million.max(1e-9),
                Unit::PerSecond,
                Target::AtLeast(400_000.0),
            );
            latency_rows(
                report,
                "publish → client (at that rate)",
                best.latency,
                None,
            );
        }
        None => report.unavailable(
            &format!("highest delivery rate with p99 < {p99_limit_ms} ms"),
            "no rate kept up",
            Unit::PerSecond,
            None,
        ),
    }
    if let Some(first) = steps.first() {
        let figure = format!("p99 at {} deliveries/s", thousands(first.rate));
        match first.latency {
            Some(l) => report.add_target(&figure, l.p99_ms, Unit::Millis, Target::AtMost(20.0)),
            None => report.unavailable(&figure, "no samples", Unit::Millis, None),
        }
    }
}

//! Scenario 5, slow consumers: 1 % of the clients of a channel stop reading while events of
//! 1 KB keep coming at 50 per second. The gateway must bound what it holds for them, close
//! them with 4100, and keep everyone else's latency where it was.

use std::time::{Duration, Instant};

use anyhow::Result;
use publisher::Publisher;

use super::{Bench, latency_rows, progress};
use crate::fleet::{Fleet, histogram_of};
use crate::load;
use crate::measure::{Latency, metric_sum, send_queues};
use crate::plan::{Command, Spread};
use crate::procs::Redis;
use crate::report::{Report, Target, Unit};

/// Options of the slow-consumers scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SlowArgs {
    /// Clients of the channel [default: 2000; smoke: 20].
    #[arg(long)]
    connections: Option<usize>,
    /// Share of the clients that stop reading, percent (at least one client).
    #[arg(long, default_value_t = 1.0)]
    slow_percent: f64,
    /// Events per second [default: 50; smoke: 100].
    #[arg(long)]
    rate: Option<f64>,
    /// Size of each event's data in bytes [default: 1024; smoke: 8192, to fill the
    /// kernel's socket buffers within seconds].
    #[arg(long)]
    event_bytes: Option<usize>,
    /// The gateway's GATEWAY_OUTBOX_MAX_BYTES [default: the gateway's own, 1 MiB; smoke:
    /// 262144].
    #[arg(long)]
    outbox_bytes: Option<usize>,
    /// Time everyone reads before the slow ones stop [default: 3s; smoke: 1s].
    #[arg(long)]
    baseline: Option<humantime::Duration>,
    /// Longest wait for every slow client to be closed [default: 180s; smoke: 15s].
    #[arg(long)]
    timeout: Option<humantime::Duration>,
}

const LABEL: &str = "slow-consumers";
const CHANNEL: &str = "feed";
/// The gateway's default outbox bound (README: GATEWAY_OUTBOX_MAX_BYTES).
const DEFAULT_OUTBOX_BYTES: usize = 1_048_576;

pub(crate) async fn run(bench: &Bench, args: &SlowArgs) -> Result<Report> {
    let n = bench.pick(args.connections, 2_000, 20);
    let event_bytes = bench.pick(args.event_bytes, 1024, 8 * 1024);
    let rate = bench.pick(args.rate, 50.0, 100.0);
    let outbox_bytes = bench.pick(args.outbox_bytes.map(Some), None, Some(262_144));
    let baseline = bench.pick(
        args.baseline.map(Into::into),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let timeout = bench.pick(
        args.timeout.map(Into::into),
        Duration::from_secs(180),
        Duration::from_secs(15),
    );
    let slow_every =
        ((100.0 / args.slow_percent.clamp(0.01, 100.0)).round() as usize).clamp(1, n.max(1));

    let redis = Redis::start().await?;
    let gateways = bench
        .gateways(&redis, 1, LABEL, |spec| match outbox_bytes {
            Some(bytes) => spec.env("GATEWAY_OUTBOX_MAX_BYTES", bytes.to_string()),
            None => spec,
        })
        .await?;
    let gateway = &gateways[0];
    let mut plan = bench.fleet.plan(vec![gateway.ws_url()], Spread::First, n);
    plan.channels = vec![CHANNEL.into()];
    plan.slow_every = slow_every;
    let slow_count = (0..n).filter(|&i| plan.is_slow(i)).count();
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;

    let publisher = Publisher::connect(&redis.url())?;
    let subscribers = connected.ok as u64;
    let event_load = tokio::spawn(async move {
        load::paced(
            &publisher,
            rate,
            Duration::from_secs(3600),
            event_bytes,
            None,
            || (CHANNEL.to_owned(), subscribers),
        )
        .await
    });
    fleet.snapshot().await?;
    tokio::time::sleep(baseline).await;
    let before = fleet.snapshot().await?;
    let rss_before = gateway.rss()?;

    progress(
        LABEL,
        &format!("{slow_count} of {n} clients stop reading ({rate} events/s of {event_bytes} B)"),
    );
    fleet.send(Command::StopSlow).await?;
    let stopped = Instant::now();
    let deadline = stopped + timeout;
    let (mut first_close, mut last_close) = (None, None);
    let mut peak = Peaks {
        rss: rss_before,
        ..Peaks::default()
    };
    let mut closed = 0.0;
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let metrics = gateway.metrics().await?;
        closed = metric_sum(&metrics, "gateway_disconnections_total", "code=\"4100\"");
        peak.observe(
            &metrics,
            gateway.rss()?,
            &send_queues(gateway.public_port())?,
            slow_count,
        );
        if closed > 0.0 && first_close.is_none() {
            first_close = Some(stopped.elapsed());
        }
        if closed >= slow_count as f64 {
            last_close = Some(stopped.elapsed());
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            progress(
                LABEL,
                &format!(
                    "{:.0} s: {closed:.0}/{slow_count} closed with 4100; kernel send queue up to {:.0} KiB per slow client",
                    stopped.elapsed().as_secs_f64(),
                    peak.kernel_queue_per_slow / 1024.0
                ),
            );
        }
    }
    // Everyone else's latency while the slow ones were stuck (and a little after).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = fleet.snapshot().await?;
    event_load.abort();
    // The slow clients read again: their backlog, then the close frame (the gateway waits up
    // to 5 s for a close frame to get through).
    fleet.send(Command::ResumeSlow).await?;
    let resumed = Instant::now();
    let mut after = fleet.snapshot().await?;
    while after.closes.values().sum::<u64>() < slow_count as u64
        && resumed.elapsed() < Duration::from_secs(8)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = fleet.snapshot().await?;
    }
    super::finish(gateways, fleet).await;

    let limit = outbox_bytes.unwrap_or(DEFAULT_OUTBOX_BYTES) as f64;
    let mut report = Report::new(
        LABEL,
        format!("{slow_count} of {n} clients stop reading"),
        bench.smoke,
    );
    report.param("connections", connected.ok);
    report.param("slow_clients", slow_count);
    report.param("rate", rate);
    report.param("event_bytes", event_bytes);
    report.param("outbox_max_bytes", limit);
    report.add_target(
        "slow clients closed with 4100 (gateway metric)",
        closed,
        Unit::Count,
        Target::AtLeast(slow_count as f64),
    );
    report.add(
        "slow clients that saw 4100",
        after.closes.get("4100").copied().unwrap_or(0) as f64,
        Unit::Count,
    );
    let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    match seconds(first_close) {
        Some(s) => report.add("time to first 4100 (gateway metric)", s, Unit::Seconds),
        None => report.unavailable(
            "time to first 4100 (gateway metric)",
            "none",
            Unit::Seconds,
            None,
        ),
    }
    match seconds(last_close) {
        Some(s) => report.add("time to 4100 for all (gateway metric)", s, Unit::Seconds),
        None => report.unavailable(
            "time to 4100 for all (gateway metric)",
            &format!("not all within {timeout:?}"),
            Unit::Seconds,
            None,
        ),
    }
    let slow = slow_count.max(1) as f64;
    let rss_growth = peak.rss.saturating_sub(rss_before) as f64;
    report.add_target(
        "gateway RSS growth per slow client (memory bound)",
        rss_growth / slow,
        Unit::Bytes,
        Target::AtMost(limit),
    );
    report.add(
        "gateway RSS growth while they were stuck",
        rss_growth,
        Unit::Bytes,
    );
    report.add(
        "kernel send queue per slow client (peak)",
        peak.kernel_queue_per_slow,
        Unit::Bytes,
    );
    report.add(
        "gateway_outbox_bytes peak (gauge, all connections)",
        peak.outbox_gauge,
        Unit::Bytes,
    );
    latency_rows(
        &mut report,
        "every client before they stopped",
        Latency::of(&histogram_of(&before.latency)),
        None,
    );
    latency_rows(
        &mut report,
        "healthy clients while slow ones stuck",
        Latency::of(&histogram_of(&during.latency)),
        None,
    );
    report.note(
        "the gateway counts a 4100 when it decides it; a slow client's outbox fills only after \
         the kernel's buffers for its socket, so the time to 4100 is mostly that",
    );
    let endings: Vec<String> = after
        .closes
        .iter()
        .map(|(code, n)| format!("{code}×{n}"))
        .collect();
    report.note(format!(
        "slow clients' connections ended with close codes: {}",
        endings.join(", ")
    ));
    report.note(format!(
        "slow clients have SO_RCVBUF {} B; the kernel send queue (tx_queue in /proc/net/tcp) \
         is what the gateway's sockets to them hold in the kernel, outside its RSS",
        plan.slow_recv_buffer
    ));
    Ok(report)
}

/// The largest values seen while the slow clients were stuck.
#[derive(Default)]
struct Peaks {
    rss: u64,
    outbox_gauge: f64,
    /// Bytes in the kernel's send queues of the `slow` fullest sockets, per socket.
    kernel_queue_per_slow: f64,
}

impl Peaks {
    fn observe(&mut self, metrics: &str, rss: u64, queues: &[u64], slow: usize) {
        self.rss = self.rss.max(rss);
        self.outbox_gauge = self
            .outbox_gauge
            .max(metric_sum(metrics, "gateway_outbox_bytes", ""));
        let fullest: u64 = queues.iter().take(slow).sum();
        self.kernel_queue_per_slow = self
            .kernel_queue_per_slow
            .max(fullest as f64 / slow.max(1) as f64);
    }
}

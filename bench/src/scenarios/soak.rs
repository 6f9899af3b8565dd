//! Soak: one replica under a steady mix for minutes or hours — events to a channel every
//! client is on, to random groups and, heavier, to the groups of a few slow readers; a stable
//! population, of which those few read one frame at a time and are closed with 4100 and come
//! back; and clients that keep connecting, subscribing, swapping channels and leaving. It
//! samples the gateway's RSS, open files, threads and tasks every 30 s, prints them as a
//! table, and ends with the RSS drift over the last 20 minutes (or the last two thirds of a
//! shorter run): what a gateway that holds on to something shows first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use publisher::Publisher;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{Bench, gateway_cpu, progress};
use crate::churn::{Churn, ChurnCounts, ChurnPlan};
use crate::fleet::{Connected, Fleet};
use crate::load;
use crate::measure::{self, metric_sum};
use crate::plan::{Command, Spread};
use crate::procs::{Gateway, JWT_SECRET, Redis};
use crate::report::{Report, Target, Unit};

/// Options of the soak scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SoakArgs {
    /// How long the run lasts, in minutes [default: 2; smoke: 0.3].
    #[arg(long)]
    minutes: Option<f64>,
    /// Time between samples [default: 30s; smoke: 3s].
    #[arg(long)]
    every: Option<humantime::Duration>,
    /// Stable clients, in groups of 10 [default: 1000; smoke: 100].
    #[arg(long)]
    connections: Option<usize>,
    /// Of the stable clients, how many read slowly (SO_RCVBUF 4 KiB, one frame per 100 ms)
    /// and reconnect once closed [default: 5; smoke: 2].
    #[arg(long)]
    slow: Option<usize>,
    /// Churning clients at once [default: 40; smoke: 10].
    #[arg(long)]
    churners: Option<usize>,
    /// Longest life of one churning connection [default: 20s; smoke: 3s].
    #[arg(long)]
    lifetime: Option<humantime::Duration>,
    /// Events per second of 200 bytes to random group channels.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Events per second of 200 bytes to the channel every client is on.
    #[arg(long, default_value_t = 2.0)]
    all_rate: f64,
    /// Events per second of 4 KiB to each slow reader's group.
    #[arg(long, default_value_t = 20.0)]
    slow_rate: f64,
    /// The gateway's GATEWAY_OUTBOX_MAX_BYTES.
    #[arg(long, default_value_t = 262_144)]
    outbox_bytes: usize,
}

const LABEL: &str = "soak";
/// The channel every client subscribes to.
const ALL: &str = "soak-all";
/// Group channels are this plus the group's number.
const GROUP_PREFIX: &str = "soak-grp-";
/// Stable clients per group channel.
const GROUP_SIZE: usize = 10;
/// The drift is measured over this much of the end of the run, at most.
const DRIFT_WINDOW: Duration = Duration::from_secs(20 * 60);

/// What one sample read.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    open_files: usize,
    threads: u64,
    /// `gateway_runtime_tasks`, where the gateway has it.
    tasks: Option<f64>,
    connections: f64,
    subscriptions: f64,
    slow_closes: f64,
    churn_connects: u64,
}

impl Sample {
    async fn take(gateway: &Gateway, counts: &ChurnCounts, at: Duration) -> Result<Self> {
        let metrics = gateway.metrics().await?;
        let pid = gateway.pid();
        let has = |name: &str| metrics.lines().any(|line| line.starts_with(name));
        Ok(Self {
            at,
            rss: gateway.rss()?,
            open_files: measure::open_files(pid)?,
            threads: measure::threads(pid)?,
            tasks: has("gateway_runtime_tasks ")
                .then(|| metric_sum(&metrics, "gateway_runtime_tasks", "")),
            connections: metric_sum(&metrics, "gateway_connections", ""),
            subscriptions: metric_sum(&metrics, "gateway_subscriptions", ""),
            slow_closes: metric_sum(&metrics, "gateway_disconnections_total", "code=\"4100\""),
            churn_connects: ChurnCounts::get(&counts.connects),
        })
    }

    fn row(&self) -> Vec<Value> {
        let mib = (self.rss as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0;
        let seconds = self.at.as_secs();
        let whole = |value: f64| json!(value.round() as i64);
        vec![
            json!(format!("{}:{:02}", seconds / 60, seconds % 60)),
            json!(mib),
            json!(self.open_files),
            json!(self.threads),
            self.tasks.map_or(Value::Null, whole),
            whole(self.connections),
            whole(self.subscriptions),
            whole(self.slow_closes),
            json!(self.churn_connects),
        ]
    }

    fn line(&self) -> String {
        format!(
            "{:.1} min: RSS {:.2} MiB, {} open files, {} threads, tasks {}, {} connections, \
             {} subscriptions, {} closed with 4100, {} churn connects",
            self.at.as_secs_f64() / 60.0,
            self.rss as f64 / (1024.0 * 1024.0),
            self.open_files,
            self.threads,
            self.tasks.map_or("—".to_owned(), |t| t.to_string()),
            self.connections,
            self.subscriptions,
            self.slow_closes,
            self.churn_connects,
        )
    }
}

const COLUMNS: [&str; 9] = [
    "time",
    "RSS MiB",
    "open files",
    "threads",
    "tasks",
    "connections",
    "subscriptions",
    "4100 closes",
    "churn connects",
];

/// The run's sizes, from the options and the mode.
struct Sizes {
    duration: Duration,
    every: Duration,
    connections: usize,
    slow: usize,
    churners: usize,
    lifetime: Duration,
}

impl Sizes {
    fn of(bench: &Bench, args: &SoakArgs) -> Self {
        let minutes = bench.pick(args.minutes, 2.0, 0.3).max(0.05);
        Self {
            duration: Duration::from_secs_f64(minutes * 60.0),
            every: bench.pick(
                args.every.map(Into::into),
                Duration::from_secs(30),
                Duration::from_secs(3),
            ),
            connections: bench.pick(args.connections, 1_000, 100).max(GROUP_SIZE),
            slow: bench.pick(args.slow, 5, 2),
            churners: bench.pick(args.churners, 40, 10),
            lifetime: bench.pick(
                args.lifetime.map(Into::into),
                Duration::from_secs(20),
                Duration::from_secs(3),
            ),
        }
    }
}

pub(crate) async fn run(bench: &Bench, args: &SoakArgs) -> Result<Report> {
    let sizes = Sizes::of(bench, args);
    let redis = Redis::start().await?;
    let gateways = bench
        .gateways(&redis, 1, LABEL, |spec| {
            spec.env("GATEWAY_OUTBOX_MAX_BYTES", args.outbox_bytes.to_string())
        })
        .await?;
    let gateway = &gateways[0];
    let (fleet, stable) = start_stable(bench, gateway, &sizes).await?;
    let load = start_load(&redis, args, sizes.connections, stable.slow_groups.clone())?;
    let counts = Arc::new(ChurnCounts::default());
    let churn = Churn::start(
        ChurnPlan {
            url: gateway.ws_url(),
            secret: JWT_SECRET.into(),
            clients: sizes.churners,
            shared_channel: ALL.into(),
            group_prefix: GROUP_PREFIX.into(),
            groups: sizes.connections.div_ceil(GROUP_SIZE),
            lifetime: sizes.lifetime,
        },
        Arc::clone(&counts),
    );
    progress(
        LABEL,
        &format!(
            "{} stable clients ({} reading slowly), {} churning, for {:.1} min",
            stable.connected.ok,
            stable.slow_groups.len(),
            sizes.churners,
            sizes.duration.as_secs_f64() / 60.0
        ),
    );
    let cpu_before = gateway_cpu(&gateways)?;
    let samples = sample(gateway, &counts, &sizes).await?;
    let cpu = gateway_cpu(&gateways)? - cpu_before;
    churn.stop().await;
    for task in load {
        task.abort();
    }
    super::finish(gateways, fleet).await;

    let mut report = report_of(bench, args, &sizes, &stable);
    figures(&mut report, &samples, &counts, sizes.duration);
    report.add(
        "gateway CPU (share of one core)",
        cpu / sizes.duration.as_secs_f64().max(1e-9) * 100.0,
        Unit::Percent,
    );
    if let Some(note) = stable.connected.failure_note() {
        report.note(note);
    }
    if let Ok(Some(failure)) = counts.first_failure.lock().as_deref() {
        report.note(format!("first failed churn attempt: {failure}"));
    }
    report.note(
        "drift: RSS at the last sample against the sample at the start of the window (or the \
         one just before it), which is the last 20 minutes, or the last two thirds of a \
         shorter run",
    );
    report.series(&COLUMNS, samples.iter().map(Sample::row).collect());
    Ok(report)
}

/// The stable clients, connected.
struct Stable {
    connected: Connected,
    /// The group of each slow reader.
    slow_groups: Vec<usize>,
}

/// Connects the stable clients, in groups of [`GROUP_SIZE`], all on [`ALL`]; the slow
/// readers among them start reading slowly, and come back when closed with 4100.
async fn start_stable(bench: &Bench, gateway: &Gateway, sizes: &Sizes) -> Result<(Fleet, Stable)> {
    let n = sizes.connections;
    let mut plan = bench.fleet.plan(vec![gateway.ws_url()], Spread::First, n);
    plan.channels = vec![ALL.into()];
    plan.group_size = GROUP_SIZE;
    plan.group_prefix = GROUP_PREFIX.into();
    plan.slow_every = n.checked_div(sizes.slow).unwrap_or(0);
    plan.reconnect_jitter_ms = Some(1_000);
    let slow_groups = (0..n)
        .filter(|&i| plan.is_slow(i))
        .map(|i| i / GROUP_SIZE)
        .collect();
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;
    fleet.send(Command::TrickleSlow).await?;
    Ok((
        fleet,
        Stable {
            connected,
            slow_groups,
        },
    ))
}

/// The report's title and parameters.
fn report_of(bench: &Bench, args: &SoakArgs, sizes: &Sizes, stable: &Stable) -> Report {
    let minutes = sizes.duration.as_secs_f64() / 60.0;
    let mut report = Report::new(
        LABEL,
        format!(
            "{minutes:.1} min on one replica: steady events, {} stable clients, slow readers, \
             churn",
            sizes.connections
        ),
        bench.smoke,
    );
    report.param("minutes", minutes);
    report.param("sample_every_s", sizes.every.as_secs_f64());
    report.param("connections", stable.connected.ok);
    report.param("slow_readers", stable.slow_groups.len());
    report.param("churners", sizes.churners);
    report.param("churn_lifetime_s", sizes.lifetime.as_secs_f64());
    report.param("rate", args.rate);
    report.param("all_rate", args.all_rate);
    report.param("slow_rate", args.slow_rate);
    report.param("outbox_max_bytes", args.outbox_bytes);
    report
}

/// Picks the channel of the next event.
type PickChannel = Box<dyn FnMut() -> String + Send>;

/// The publishing tasks: random groups, the channel everyone is on, the slow readers' groups.
fn start_load(
    redis: &Redis,
    args: &SoakArgs,
    n: usize,
    slow_groups: Vec<usize>,
) -> Result<Vec<JoinHandle<Result<load::Published>>>> {
    let forever = Duration::from_secs(365 * 24 * 3600);
    let groups = n.div_ceil(GROUP_SIZE);
    let mut tasks = Vec::new();
    let streams: [(f64, usize, PickChannel); 3] = [
        (
            args.rate,
            200,
            Box::new(move || format!("{GROUP_PREFIX}{}", rand::random_range(0..groups))),
        ),
        (args.all_rate, 200, Box::new(|| ALL.to_owned())),
        (
            args.slow_rate * slow_groups.len() as f64,
            4096,
            Box::new(move || {
                let k = rand::random_range(0..slow_groups.len().max(1));
                let group = slow_groups.get(k).copied().unwrap_or(0);
                format!("{GROUP_PREFIX}{group}")
            }),
        ),
    ];
    for (rate, bytes, mut pick) in streams {
        if rate <= 0.0 {
            continue;
        }
        let publisher = Publisher::connect(&redis.url())?;
        tasks.push(tokio::spawn(async move {
            load::paced(&publisher, rate, forever, bytes, None, || (pick(), 0)).await
        }));
    }
    Ok(tasks)
}

/// Samples every `sizes.every` until `sizes.duration` has passed, the first at once.
async fn sample(gateway: &Gateway, counts: &ChurnCounts, sizes: &Sizes) -> Result<Vec<Sample>> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = Duration::ZERO;
    loop {
        let wait = next.saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        let sample = Sample::take(gateway, counts, started.elapsed()).await?;
        progress(LABEL, &sample.line());
        samples.push(sample);
        if next >= sizes.duration {
            return Ok(samples);
        }
        next = (next + sizes.every).min(sizes.duration);
    }
}

/// The drift over the window at the end of the run, and the figures around it.
fn figures(report: &mut Report, samples: &[Sample], counts: &ChurnCounts, duration: Duration) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        report.unavailable("RSS drift", "no samples", Unit::Percent, None);
        return;
    };
    let window = DRIFT_WINDOW.min(duration.mul_f64(2.0 / 3.0));
    let from = last.at.saturating_sub(window);
    // The sample at the window's start, or just before it: samples come a little late.
    let start = samples.iter().rev().find(|s| s.at <= from).unwrap_or(first);
    let drift = (last.rss as f64 - start.rss as f64) / (start.rss.max(1) as f64) * 100.0;
    let minutes = (last.at - start.at).as_secs_f64() / 60.0;
    report.add_target(
        &format!("RSS drift over the last {minutes:.1} min"),
        drift,
        Unit::Percent,
        Target::Below(5.0),
    );
    report.add(
        &format!("RSS at {:.1} min", start.at.as_secs_f64() / 60.0),
        start.rss as f64,
        Unit::Bytes,
    );
    report.add("RSS at the end", last.rss as f64, Unit::Bytes);
    let peak = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    report.add("RSS peak (of the samples)", peak as f64, Unit::Bytes);
    report.add("RSS at the start", first.rss as f64, Unit::Bytes);
    report.add(
        "open files: first → last sample",
        last.open_files as f64 - first.open_files as f64,
        Unit::Count,
    );
    report.add("open files at the end", last.open_files as f64, Unit::Count);
    report.add("threads at the end", last.threads as f64, Unit::Count);
    match (first.tasks, last.tasks) {
        (Some(a), Some(b)) => {
            report.add("runtime tasks: first → last sample", b - a, Unit::Count);
            report.add("runtime tasks at the end", b, Unit::Count);
        }
        _ => report.unavailable(
            "runtime tasks at the end",
            "no gateway_runtime_tasks",
            Unit::Count,
            None,
        ),
    }
    report.add(
        "slow readers closed with 4100",
        last.slow_closes,
        Unit::Count,
    );
    let get = ChurnCounts::get;
    let connects = get(&counts.connects);
    report.add("churn: connections", connects as f64, Unit::Count);
    report.add(
        "churn: subscribes",
        get(&counts.subscribes) as f64,
        Unit::Count,
    );
    let unsubscribes = get(&counts.unsubscribes) as f64;
    report.add("churn: unsubscribes", unsubscribes, Unit::Count);
    report.add(
        "churn: left without a close",
        get(&counts.dropped) as f64,
        Unit::Count,
    );
    report.add(
        "churn: failed attempts",
        get(&counts.failures) as f64,
        Unit::Count,
    );
    report.add(
        "churn: connect + subscribe, mean",
        get(&counts.connect_micros) as f64 / connects.max(1) as f64 / 1000.0,
        Unit::Millis,
    );
}

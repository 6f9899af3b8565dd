//! Scenario 11, scaling: how one gateway's delivery throughput grows with its worker threads.
//! For each thread count (`TOKIO_WORKER_THREADS` of a fresh gateway) and each shape of load —
//! scenario 2's hot channel and scenario 3's many channels, all on that one gateway — rates
//! rise until one loses deliveries; the highest rate whose p99 stayed under a bound, the most
//! the gateway delivered (its throughput) and how many cores it kept busy there.

use std::time::{Duration, Instant};

use anyhow::Result;
use publisher::Publisher;

use super::{Bench, gateway_cpu, hot, many, progress};
use crate::fleet::{Connected, Fleet, histogram_of};
use crate::load;
use crate::measure::{self, Latency};
use crate::procs::{Gateway, Redis};
use crate::report::{Report, Unit, thousands};

/// Options of the scaling scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ScalingArgs {
    /// Worker thread counts of the gateway to try in turn, the first the speed-ups' baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    threads: Vec<usize>,
    /// Subscribers of the hot channel on the one gateway [default: 9500; smoke: 100].
    #[arg(long)]
    hot_subscribers: Option<usize>,
    /// Clients of the many-channels shape on the one gateway [default: 10000; smoke: 200].
    #[arg(long)]
    many_connections: Option<usize>,
    /// Members of each group channel of the many-channels shape.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Hot-channel delivery rates to try in turn, deliveries/s over all subscribers
    /// [default: 50000,100000,200000,400000,800000,1600000; smoke: 2000,5000].
    #[arg(long, value_delimiter = ',')]
    hot_rates: Option<Vec<f64>>,
    /// Many-channels delivery rates to try in turn, deliveries/s
    /// [default: 50000,100000,200000,400000; smoke: 2000,5000].
    #[arg(long, value_delimiter = ',')]
    many_rates: Option<Vec<f64>>,
    /// How long each rate publishes [default: 5s; smoke: 1500ms].
    #[arg(long)]
    step: Option<humantime::Duration>,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// A hot-channel rate keeps up while its p99 stays under this, ms (one event is 9,500
    /// writes: tens of ms for the kernel alone).
    #[arg(long, default_value_t = 250.0)]
    hot_p99_limit_ms: f64,
    /// A many-channels rate keeps up while its p99 stays under this, ms.
    #[arg(long, default_value_t = 50.0)]
    many_p99_limit_ms: f64,
}

const LABEL: &str = "scaling";
/// The environment variable tokio's multi-thread runtime takes its worker count from.
const WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";
/// A step's deliveries are all in once none has come for this long.
const QUIET: Duration = Duration::from_millis(500);
/// The longest a step waits for its deliveries after publishing.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// A shape of load on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Every client on one channel (scenario 2).
    HotChannel,
    /// Each client on its personal channel and a group channel, events to random ones
    /// (scenario 3).
    ManyChannels,
}

impl Shape {
    /// Every shape, in the order they run.
    const ALL: [Self; 2] = [Self::HotChannel, Self::ManyChannels];

    /// The shape's name in figures.
    fn name(self) -> &'static str {
        match self {
            Self::HotChannel => "hot-channel",
            Self::ManyChannels => "many-channels",
        }
    }
}

/// The run's sizes: the flags, or the defaults of the mode.
struct Settings {
    threads: Vec<usize>,
    hot_subscribers: usize,
    many_connections: usize,
    group_size: usize,
    hot_rates: Vec<f64>,
    many_rates: Vec<f64>,
    step: Duration,
    event_bytes: usize,
    hot_p99_limit_ms: f64,
    many_p99_limit_ms: f64,
}

impl Settings {
    /// The p99 under which a rate of `shape` keeps up, ms.
    fn p99_limit_ms(&self, shape: Shape) -> f64 {
        match shape {
            Shape::HotChannel => self.hot_p99_limit_ms,
            Shape::ManyChannels => self.many_p99_limit_ms,
        }
    }

    /// The sizes `args` asks for in `bench`'s mode.
    fn of(bench: &Bench, args: &ScalingArgs) -> Self {
        Self {
            threads: args.threads.iter().map(|&t| t.max(1)).collect(),
            hot_subscribers: bench.pick(args.hot_subscribers, 9_500, 100).max(1),
            many_connections: bench.pick(args.many_connections, 10_000, 200).max(1),
            group_size: args.group_size.max(1),
            hot_rates: bench.pick(
                args.hot_rates.clone(),
                vec![50e3, 100e3, 200e3, 400e3, 800e3, 1_600e3],
                vec![2_000.0, 5_000.0],
            ),
            many_rates: bench.pick(
                args.many_rates.clone(),
                vec![50e3, 100e3, 200e3, 400e3],
                vec![2_000.0, 5_000.0],
            ),
            step: bench.pick(
                args.step.map(Into::into),
                Duration::from_secs(5),
                Duration::from_millis(1500),
            ),
            event_bytes: args.event_bytes,
            hot_p99_limit_ms: args.hot_p99_limit_ms,
            many_p99_limit_ms: args.many_p99_limit_ms,
        }
    }
}

/// One rate's figures, over the step's window: publishing and the wait for its deliveries.
struct Step {
    rate: f64,
    delivered_per_s: f64,
    delivered_ratio: f64,
    latency: Option<Latency>,
    /// Gateway CPU-seconds per wall second.
    gateway_cores: f64,
}

/// One shape at one thread count.
struct Cell {
    shape: Shape,
    threads: usize,
    steps: Vec<Step>,
    failure_note: Option<String>,
}

impl Cell {
    /// `hot-channel @ 2 threads`.
    fn name(&self) -> String {
        let plural = if self.threads == 1 { "" } else { "s" };
        format!("{} @ {} thread{plural}", self.shape.name(), self.threads)
    }

    /// The highest rate that kept up.
    fn best(&self, p99_limit_ms: f64) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| hot::keeps_up(s.latency, s.delivered_ratio, p99_limit_ms))
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
    }

    /// The rate that delivered the most: the gateway's throughput, whatever its latency.
    fn saturation(&self) -> Option<&Step> {
        self.steps
            .iter()
            .max_by(|a, b| a.delivered_per_s.total_cmp(&b.delivered_per_s))
    }
}

/// Runs the scenario: each shape at each thread count, one cell after another, on one Redis.
pub(crate) async fn run(bench: &Bench, args: &ScalingArgs) -> Result<Report> {
    let settings = Settings::of(bench, args);
    let redis = Redis::start().await?;
    let publisher = Publisher::connect(&redis.url())?;
    let mut cells = Vec::new();
    for shape in Shape::ALL {
        for &threads in &settings.threads {
            cells.push(run_cell(bench, &redis, &publisher, &settings, shape, threads).await?);
        }
    }
    Ok(report(bench, &settings, &cells))
}

/// One cell: a fresh gateway with `threads` workers and its clients, stepped through the
/// shape's rates, then stopped.
async fn run_cell(
    bench: &Bench,
    redis: &Redis,
    publisher: &Publisher,
    settings: &Settings,
    shape: Shape,
    threads: usize,
) -> Result<Cell> {
    let label = format!("{LABEL}-{}-{threads}t", shape.name());
    let gateways = bench
        .gateways(redis, 1, &label, |spec| {
            spec.env(WORKER_THREADS, threads.to_string())
        })
        .await?;
    let os_threads = gateways
        .iter()
        .map(|g| measure::threads(g.pid()))
        .sum::<Result<u64>>()?;
    progress(
        &label,
        &format!("{WORKER_THREADS}={threads}: the gateway runs {os_threads} OS threads"),
    );
    let n = settings.many_connections;
    let plan = match shape {
        Shape::HotChannel => hot::plan(bench, &gateways, settings.hot_subscribers),
        Shape::ManyChannels => many::plan(bench, &gateways, n, settings.group_size),
    };
    let mut fleet = Fleet::start(&label, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;
    let mut rig = Rig {
        label,
        gateways,
        fleet,
        connected,
    };
    let steps = match shape {
        Shape::HotChannel => {
            let subscribers = rig.connected.ok as u64;
            let target = || (hot::CHANNEL.to_owned(), subscribers);
            let fanout = subscribers.max(1) as f64;
            let limit = settings.hot_p99_limit_ms;
            rig.step_through(
                publisher,
                &settings.hot_rates,
                fanout,
                limit,
                settings,
                target,
            )
            .await?
        }
        Shape::ManyChannels => {
            let channels = many::channels(n, settings.group_size);
            let target = || many::random_channel(&channels);
            let fanout = many::mean_fanout(&channels);
            let limit = settings.many_p99_limit_ms;
            rig.step_through(
                publisher,
                &settings.many_rates,
                fanout,
                limit,
                settings,
                target,
            )
            .await?
        }
    };
    let cell = Cell {
        shape,
        threads,
        steps,
        failure_note: rig.connected.failure_note(),
    };
    super::finish(rig.gateways, rig.fleet).await;
    Ok(cell)
}

/// A gateway with its clients connected.
struct Rig {
    label: String,
    gateways: Vec<Gateway>,
    fleet: Fleet,
    connected: Connected,
}

impl Rig {
    /// Runs `rates` in turn until one loses deliveries (under 99 % within the drain limit) or
    /// its p99 passes ten times `p99_limit_ms`, each event to the channel `target` picks;
    /// `mean_fanout` (subscribers per event) turns deliveries/s into events/s.
    async fn step_through(
        &mut self,
        publisher: &Publisher,
        rates: &[f64],
        mean_fanout: f64,
        p99_limit_ms: f64,
        settings: &Settings,
        mut target: impl FnMut() -> (String, u64),
    ) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        for &rate in rates {
            let step = self
                .step(publisher, rate, rate / mean_fanout, settings, &mut target)
                .await?;
            let p99 = step.latency.map_or(f64::INFINITY, |l| l.p99_ms);
            let saturated = step.delivered_ratio < 0.99 || p99 > 10.0 * p99_limit_ms;
            steps.push(step);
            if saturated {
                break;
            }
        }
        Ok(steps)
    }

    /// Publishes `events_per_s` for one step and waits for the deliveries.
    async fn step(
        &mut self,
        publisher: &Publisher,
        rate: f64,
        events_per_s: f64,
        settings: &Settings,
        target: impl FnMut() -> (String, u64),
    ) -> Result<Step> {
        progress(
            &self.label,
            &format!(
                "{rate:.0} deliveries/s = {events_per_s:.2} events/s for {:?}",
                settings.step
            ),
        );
        self.fleet.snapshot().await?;
        let before = self.fleet.deliveries().await?;
        let started = Instant::now();
        let cpu_before = gateway_cpu(&self.gateways)?;
        let label = Some(self.label.as_str());
        let published = load::paced(
            publisher,
            events_per_s,
            settings.step,
            settings.event_bytes,
            label,
            target,
        )
        .await?;
        let expected = before + published.expected_deliveries;
        let delivered = self
            .fleet
            .wait_deliveries(expected, QUIET, DRAIN_LIMIT)
            .await?
            - before;
        let cpu = gateway_cpu(&self.gateways)? - cpu_before;
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        let snapshot = self.fleet.snapshot().await?;
        let step = Step {
            rate,
            delivered_per_s: delivered as f64 / seconds,
            delivered_ratio: delivered as f64 / published.expected_deliveries.max(1) as f64,
            latency: Latency::of(&histogram_of(&snapshot.latency)),
            gateway_cores: cpu / seconds,
        };
        progress(
            &self.label,
            &format!(
                "  delivered {:.0}/s ({:.1} %), p99 {:.2} ms, gateway {:.2} cores",
                step.delivered_per_s,
                step.delivered_ratio * 100.0,
                step.latency.map_or(f64::INFINITY, |l| l.p99_ms),
                step.gateway_cores
            ),
        );
        Ok(step)
    }
}

/// The report: each cell's figures, then the speed-ups.
fn report(bench: &Bench, settings: &Settings, cells: &[Cell]) -> Report {
    let threads: Vec<String> = settings.threads.iter().map(usize::to_string).collect();
    let mut report = Report::new(
        LABEL,
        format!(
            "one gateway at {} worker threads: a hot channel of {} subscribers, {} clients on \
             many channels",
            threads.join(", "),
            settings.hot_subscribers,
            settings.many_connections
        ),
        bench.smoke,
    );
    report.param("threads", &settings.threads);
    report.param("hot_subscribers", settings.hot_subscribers);
    report.param("many_connections", settings.many_connections);
    report.param("group_size", settings.group_size);
    report.param("step_s", settings.step.as_secs_f64());
    report.param("event_bytes", settings.event_bytes);
    report.param("hot_rates", &settings.hot_rates);
    report.param("many_rates", &settings.many_rates);
    for cell in cells {
        cell_figures(&mut report, cell, settings.p99_limit_ms(cell.shape));
    }
    speed_ups(&mut report, settings, cells);
    notes(&mut report, settings, cells);
    report
}

/// A cell's figures: its highest kept-up rate, and its last rate's deliveries, gateway cores
/// and p99.
fn cell_figures(report: &mut Report, cell: &Cell, p99_limit_ms: f64) {
    let name = cell.name();
    let best_figure = format!("{name}: highest rate with p99 < {p99_limit_ms} ms");
    match cell.best(p99_limit_ms) {
        Some(best) => report.add(&best_figure, best.delivered_per_s, Unit::PerSecond),
        None => report.unavailable(&best_figure, "no rate kept up", Unit::PerSecond, None),
    }
    let Some(last) = cell.saturation() else {
        return;
    };
    report.add(
        &format!("{name}: saturated delivered"),
        last.delivered_per_s,
        Unit::PerSecond,
    );
    report.add(
        &format!("{name}: gateway cores used at saturation"),
        last.gateway_cores,
        Unit::Cores,
    );
    let p99_figure = format!("{name}: p99 at saturation");
    match last.latency {
        Some(l) => report.add(&p99_figure, l.p99_ms, Unit::Millis),
        None => report.unavailable(&p99_figure, "no samples", Unit::Millis, None),
    }
}

/// Per shape and thread count after the first: its highest kept-up rate and its saturated
/// deliveries over the first thread count's.
fn speed_ups(report: &mut Report, settings: &Settings, cells: &[Cell]) {
    let Some(&baseline) = settings.threads.first() else {
        return;
    };
    for shape in Shape::ALL {
        let limit = settings.p99_limit_ms(shape);
        let of = |threads: usize| {
            cells
                .iter()
                .find(|c| c.shape == shape && c.threads == threads)
        };
        let Some(base) = of(baseline) else {
            continue;
        };
        for &threads in &settings.threads[1..] {
            let Some(cell) = of(threads) else {
                continue;
            };
            let versus = format!("{threads} threads vs {baseline}");
            let figure = format!("{}: speed-up {versus}", shape.name());
            match (cell.best(limit), base.best(limit)) {
                (Some(now), Some(then)) => report.add(
                    &figure,
                    now.delivered_per_s / then.delivered_per_s.max(1e-9),
                    Unit::Ratio,
                ),
                _ => report.unavailable(&figure, "no rate kept up", Unit::Ratio, None),
            }
            if let (Some(now), Some(then)) = (cell.saturation(), base.saturation()) {
                report.add(
                    &format!("{}: saturated delivered, {versus}", shape.name()),
                    now.delivered_per_s / then.delivered_per_s.max(1e-9),
                    Unit::Ratio,
                );
            }
        }
    }
}

/// What the figures mean, what bounds them, and the cells that never saturated.
fn notes(report: &mut Report, settings: &Settings, cells: &[Cell]) {
    report.note(format!(
        "each cell is a fresh gateway with {WORKER_THREADS} set and its own clients; rates \
         rise until one delivers under 99 % (or its p99 passes 10 × the bound); 'highest \
         rate' is the highest whose p99 stayed under the bound ({} ms hot, {} ms many), \
         'at saturation' the rate that delivered the most",
        settings.hot_p99_limit_ms, settings.many_p99_limit_ms
    ));
    report.note(
        "delivered/s and gateway cores are over each step's window: publishing and the wait \
         for its deliveries; cores = gateway CPU-seconds ÷ the window's wall seconds",
    );
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    report.note(format!(
        "this host has {cores} cores, which the gateway shares with the publisher, the client \
         workers and Redis: where they are few, the higher thread counts are bounded by that, \
         not by the gateway alone"
    ));
    for cell in cells {
        if let Some(last) = cell.steps.last()
            && last.delivered_ratio >= 0.99
        {
            report.note(format!(
                "{} never saturated: its highest rate, {} /s, delivered everything",
                cell.name(),
                thousands(last.rate)
            ));
        }
        if let Some(note) = &cell.failure_note {
            report.note(format!("{}: {note}", cell.name()));
        }
    }
}

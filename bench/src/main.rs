//! `bench`: the gateway's load generator and benchmark scenarios.
//!
//! Each scenario starts what it needs — its own `redis-server`, gateway processes, client
//! worker processes — on loopback, prints progress to stderr and a table of figures (or, with
//! `--json`, a JSON object) to stdout, and kills everything it started when it ends.
//!
//! ```sh
//! cargo run --release -p bench -- idle            # or hot-channel, many-channels, storm,
//! cargo run --release -p bench -- idle --smoke    #    slow-consumers, publisher,
//!                                                 #    socket-floor, fallback, soak,
//!                                                 #    encodings, scaling, all
//! ```
//!
//! Layout: `procs` (Redis, gateways, cleanup), `fleet` and `worker` (client processes and
//! what they say to each other, in `plan`), `client` (one WebSocket client), `stats` (what a
//! worker's clients measure), `churn` (clients that come and go, in the driver), `load`
//! (paced publishing), `measure` (`/proc`, Redis `INFO`, metrics, histograms), `report`
//! (tables and JSON), `scenarios/*` (one per scenario). See docs/benchmarks.md.

mod churn;
mod client;
mod fleet;
mod load;
mod measure;
mod plan;
mod procs;
mod report;
mod scenarios;
mod stats;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, FromArgMatches, Parser, Subcommand};

use crate::fleet::FleetOptions;
use crate::report::Report;
use crate::scenarios::Bench;
use crate::scenarios::encodings::EncodingsArgs;
use crate::scenarios::fallback::FallbackArgs;
use crate::scenarios::floor::FloorArgs;
use crate::scenarios::hot::HotArgs;
use crate::scenarios::idle::IdleArgs;
use crate::scenarios::many::ManyArgs;
use crate::scenarios::publish::PublishArgs;
use crate::scenarios::scaling::ScalingArgs;
use crate::scenarios::slow::SlowArgs;
use crate::scenarios::soak::SoakArgs;
use crate::scenarios::storm::StormArgs;

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load generator and benchmark scenarios for the gateway (loopback only)"
)]
struct Cli {
    /// Print a JSON object instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Shrink the scenario to a few seconds (proves it works; figures are not comparable).
    #[arg(long, global = true)]
    smoke: bool,
    /// The gateway binary [default: target/<profile>/gateway, built first with cargo].
    #[arg(long, global = true, env = "BENCH_GATEWAY_BIN")]
    gateway_bin: Option<PathBuf>,
    /// Do not run `cargo build -p gateway` first; use the binary as it is.
    #[arg(long, global = true)]
    no_build: bool,
    #[command(flatten)]
    fleet: FleetOptions,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 1. Idle connections: gateway memory per connection, connect rate, handshake p99.
    Idle(IdleArgs),
    /// 2. One hot channel on two replicas at rising rates: the highest rate under the p99
    ///    bound, gateway CPU per million deliveries, latency.
    HotChannel(HotArgs),
    /// 3. Many channels on two replicas, events to random channels: deliveries/s, p99, Redis
    ///    CPU.
    ManyChannels(ManyArgs),
    /// 4. Reconnect storm: kill a replica; time until its clients are back elsewhere.
    Storm(StormArgs),
    /// 5. Slow consumers: what they cost, when they are closed, everyone else's latency.
    SlowConsumers(SlowArgs),
    /// 6. Publisher throughput at pipeline depths, next to redis-benchmark.
    Publisher(PublishArgs),
    /// 7. The socket floor: the kernel's cost of one small write to one of many loopback
    ///    sockets, with no gateway; the bound under the gateway's cost per delivery.
    SocketFloor(FloorArgs),
    /// 8. Fallback transports: gateway memory per idle SSE stream and per waiting long-poll
    ///    next to a WebSocket's, CPU per delivery over SSE and WebSocket, first polls per
    ///    second and per gateway CPU-second.
    Fallback(FallbackArgs),
    /// 9. Soak: minutes or hours of steady events, slow readers and churn on one replica;
    ///    the gateway's RSS, open files, threads and tasks over time, and the RSS drift.
    Soak(SoakArgs),
    /// 10. Encodings: bytes on the wire and gateway CPU per delivery for JSON, MessagePack
    ///     and each with permessage-deflate, at 100-byte and 4 KiB events.
    Encodings(EncodingsArgs),
    /// 11. Scaling: one gateway at each worker thread count, a hot channel and many channels
    ///     at rising rates; the highest rate under the p99 bound, deliveries and gateway
    ///     cores at saturation, the speed-ups.
    Scaling(ScalingArgs),
    /// Every scenario in turn, each with its defaults.
    All,
    /// (internal) A client worker process; the driver starts these itself.
    #[command(hide = true)]
    Worker {
        /// The worker's plan, JSON.
        #[arg(long)]
        plan: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = procs::raise_fd_limit() {
        eprintln!("warning: cannot raise the open-files limit: {error:#}");
    }
    if let Scenario::Worker { plan } = &cli.scenario {
        return match worker::main(plan) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench worker: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    procs::kill_children_on_panic();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(&cli) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    procs::kill_all();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let bench = Bench {
        smoke: cli.smoke,
        fleet: cli.fleet.clone(),
        gateway_bin: if matches!(
            cli.scenario,
            Scenario::Publisher(_) | Scenario::SocketFloor(_)
        ) {
            // These scenarios need no gateway.
            PathBuf::new()
        } else {
            procs::gateway_binary(cli.gateway_bin.as_deref(), cli.no_build)?
        },
    };
    let reports = match &cli.scenario {
        Scenario::Idle(args) => vec![scenarios::idle::run(&bench, args).await?],
        Scenario::HotChannel(args) => vec![scenarios::hot::run(&bench, args).await?],
        Scenario::ManyChannels(args) => vec![scenarios::many::run(&bench, args).await?],
        Scenario::Storm(args) => vec![scenarios::storm::run(&bench, args).await?],
        Scenario::SlowConsumers(args) => vec![scenarios::slow::run(&bench, args).await?],
        Scenario::Publisher(args) => vec![scenarios::publish::run(&bench, args).await?],
        Scenario::SocketFloor(args) => vec![scenarios::floor::run(&bench, args).await?],
        Scenario::Fallback(args) => vec![scenarios::fallback::run(&bench, args).await?],
        Scenario::Soak(args) => vec![scenarios::soak::run(&bench, args).await?],
        Scenario::Encodings(args) => vec![scenarios::encodings::run(&bench, args).await?],
        Scenario::Scaling(args) => vec![scenarios::scaling::run(&bench, args).await?],
        Scenario::All => run_all(&bench, cli.json).await?,
        Scenario::Worker { .. } => Vec::new(),
    };
    if cli.json {
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one)?,
            all => serde_json::to_string_pretty(&AllReports { reports: all })?,
        };
        println!("{json}");
    } else if !matches!(cli.scenario, Scenario::All) {
        for report in &reports {
            print!("{}", report.table());
        }
    }
    Ok(())
}

/// The JSON of `bench all --json`.
#[derive(serde::Serialize)]
struct AllReports<'a> {
    reports: &'a [Report],
}

/// Runs every scenario with its defaults; tables are printed as each one ends.
async fn run_all(bench: &Bench, json: bool) -> Result<Vec<Report>> {
    let mut reports = Vec::new();
    let mut done = |report: Report| {
        if !json {
            print!("{}", report.table());
        }
        reports.push(report);
    };
    done(scenarios::idle::run(bench, &defaults()?).await?);
    done(scenarios::hot::run(bench, &defaults()?).await?);
    done(scenarios::many::run(bench, &defaults()?).await?);
    done(scenarios::storm::run(bench, &defaults()?).await?);
    done(scenarios::slow::run(bench, &defaults()?).await?);
    done(scenarios::publish::run(bench, &defaults()?).await?);
    done(scenarios::floor::run(bench, &defaults()?).await?);
    done(scenarios::fallback::run(bench, &defaults()?).await?);
    done(scenarios::soak::run(bench, &defaults()?).await?);
    done(scenarios::encodings::run(bench, &defaults()?).await?);
    done(scenarios::scaling::run(bench, &defaults()?).await?);
    Ok(reports)
}

/// A scenario's options as if given no flags.
fn defaults<T: Args + FromArgMatches>() -> Result<T> {
    let command = T::augment_args(clap::Command::new("defaults"));
    let matches = command
        .try_get_matches_from(["defaults"])
        .context("default options")?;
    T::from_arg_matches(&matches).context("default options")
}

//! Scenario 6, publisher: publishes per second of the `publisher` crate at pipeline depths
//! 1, 16 and 64, next to `redis-benchmark` sending the same `PUBLISH` (same topic, same
//! message bytes) at the same depths and client count.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use publisher::{Event, Publisher};

use super::{Bench, progress};
use crate::load;
use crate::procs::Redis;
use crate::report::{Report, Target, Unit};

/// Options of the publisher scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PublishArgs {
    /// Pipeline depths: events per `publish_batch` (`-P` of redis-benchmark).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    depths: Vec<usize>,
    /// Publishes per depth and side, over all rounds [default: 200000; smoke: 2000].
    #[arg(long)]
    publishes: Option<usize>,
    /// Concurrent publishing connections (`-c` of redis-benchmark).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Rounds per depth, each side running a share of the publishes in turn [default: 5;
    /// smoke: 1].
    #[arg(long)]
    rounds: Option<usize>,
}

const LABEL: &str = "publisher";
const CHANNEL: &str = "bench";

pub(crate) async fn run(bench: &Bench, args: &PublishArgs) -> Result<Report> {
    let total = bench.pick(args.publishes, 200_000, 2_000);
    let clients = args.clients.clamp(1, 8);
    let rounds = bench.pick(args.rounds, 5, 1).max(1);
    let redis = Redis::start().await?;
    let pad = load::padding(args.event_bytes);
    // The exact bus message the publisher sends, for redis-benchmark to send too.
    let message = sample_message(&pad)?;

    let mut report = Report::new(
        LABEL,
        format!(
            "publishes/s at pipeline depths {:?}, {clients} connection(s)",
            args.depths
        ),
        bench.smoke,
    );
    report.param("publishes_per_depth", total);
    report.param("clients", clients);
    report.param("message_bytes", message.len());
    report.param("rounds", rounds);
    for &depth in &args.depths {
        let depth = depth.max(1);
        let per_round = total.div_ceil(rounds);
        progress(
            LABEL,
            &format!("depth {depth}: {rounds} rounds of {per_round} publishes each side"),
        );
        // The two sides take turns, so that both meet the same moments of a shared machine.
        let mut mine = Vec::with_capacity(rounds);
        let mut theirs = Vec::with_capacity(rounds);
        let mut ratios = Vec::with_capacity(rounds);
        let mut reference_error = None;
        for _ in 0..rounds {
            let rate = ours(redis.url(), depth, per_round, clients, pad.clone()).await?;
            mine.push(rate);
            match redis_benchmark(redis.port(), depth, per_round, clients, &message).await {
                Ok(reference) => {
                    theirs.push(reference);
                    ratios.push(rate / reference.max(1e-9));
                }
                Err(error) => reference_error = Some(error),
            }
        }
        report.add(
            &format!("depth {depth}: publisher"),
            median(&mut mine),
            Unit::PerSecond,
        );
        match reference_error {
            None => {
                report.add(
                    &format!("depth {depth}: redis-benchmark"),
                    median(&mut theirs),
                    Unit::PerSecond,
                );
                report.add_target(
                    &format!("depth {depth}: publisher / redis-benchmark"),
                    median(&mut ratios),
                    Unit::Ratio,
                    Target::AtLeast(0.6),
                );
            }
            Some(error) => {
                report.unavailable(
                    &format!("depth {depth}: redis-benchmark"),
                    "unavailable",
                    Unit::PerSecond,
                    None,
                );
                report.unavailable(
                    &format!("depth {depth}: publisher / redis-benchmark"),
                    "unavailable",
                    Unit::Ratio,
                    Some(Target::AtLeast(0.6)),
                );
                report.note(format!("redis-benchmark at depth {depth}: {error:#}"));
            }
        }
    }
    if rounds > 1 {
        report.note(format!(
            "each figure is the median of {rounds} rounds, the two sides taking turns; the ratio \
             is the median of the rounds' ratios"
        ));
    }
    report.note("no gateway subscribes: both sides publish to a topic nobody listens on");
    report.note(
        "no namespace keeps history here, so the publisher sends plain PUBLISH like \
         redis-benchmark; the ratio is the publisher's own cost (JSON envelope, timestamp, \
         pipeline, pool)",
    );
    Ok(report)
}

/// The middle value (the upper one of an even count); 0 for none.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The bus message the publisher writes for one event (docs/redis.md).
fn sample_message(pad: &str) -> Result<String> {
    let message = serde_json::json!({
        "channel": CHANNEL,
        "event": load::EVENT,
        "data": {"t": crate::measure::unix_nanos(), "pad": pad},
        "timestamp": publisher::wire::timestamp_now(),
    });
    Ok(serde_json::to_string(&message)?)
}

/// Publishes/s of `clients` tasks, each with its own publisher (one connection each), sending
/// batches of `depth` events until `total`. They run on one thread, as redis-benchmark does,
/// so that both sides pay the same for waking up when Redis answers.
async fn ours(url: String, depth: usize, total: usize, clients: usize, pad: String) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a one-thread runtime")?;
        runtime.block_on(ours_on_this_thread(&url, depth, total, clients, &pad))
    })
    .await
    .context("the publishing thread")?
}

async fn ours_on_this_thread(
    url: &str,
    depth: usize,
    total: usize,
    clients: usize,
    pad: &str,
) -> Result<f64> {
    let batch: Vec<Event> = (0..depth)
        .map(|_| load::event(CHANNEL, pad))
        .collect::<Result<_>>()?;
    let publishers = (0..clients)
        .map(|_| Publisher::connect(url))
        .collect::<Result<Vec<_>, _>>()?;
    // Warm up: connect, and let Redis settle.
    for publisher in &publishers {
        for _ in 0..(1_000 / depth).max(1) {
            publisher.publish_batch(&batch).await?;
        }
    }
    let batches = total.div_ceil(depth);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (k, publisher) in publishers.into_iter().enumerate() {
        let batch = batch.clone();
        let mine = batches * (k + 1) / clients - batches * k / clients;
        tasks.spawn(async move {
            for _ in 0..mine {
                publisher.publish_batch(&batch).await?;
            }
            Ok::<_, publisher::PublishError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.context("a publishing task")??;
    }
    Ok((batches * depth) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// `redis-benchmark -P depth -c clients -n total PUBLISH <topic> <message>`: requests/s.
async fn redis_benchmark(
    port: u16,
    depth: usize,
    total: usize,
    clients: usize,
    message: &str,
) -> Result<f64> {
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &total.to_string()])
        .args(["-P", &depth.to_string(), "--csv"])
        .args(["PUBLISH", &format!("gw:ch:{CHANNEL}"), message])
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run redis-benchmark (Debian's redis-tools)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_csv_rps(&String::from_utf8_lossy(&output.stdout))
}

/// The `rps` of redis-benchmark's `--csv` output. The test name holds the command with its
/// unescaped quotes and commas, so the figures are read from the end of the line.
fn parse_csv_rps(csv: &str) -> Result<f64> {
    let line = csv
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty() && !line.starts_with("\"test\""))
        .context("no result line from redis-benchmark")?;
    // "<test>","rps","avg","min","p50","p95","p99","max": rps is the 7th field from the end.
    let rps = line
        .rsplit(',')
        .nth(6)
        .map(|field| field.trim_matches('"'))
        .context("short result line from redis-benchmark")?;
    rps.parse()
        .with_context(|| format!("rps {rps:?} in {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rps_is_read_from_the_end() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"PUBLISH gw:ch:bench {\"a\":\"x,y\"}\",\"444444.44\",\"0.031\",\"0.024\",\"0.031\",\"0.047\",\"0.063\",\"1.167\"\n";
        assert_eq!(parse_csv_rps(csv).unwrap(), 444444.44);
    }
}

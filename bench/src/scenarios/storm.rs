//! Scenario 4, reconnect storm: kill (SIGKILL) a replica that holds every client; each
//! reconnects to the other replica after a random delay, resubscribes (with `since` positions
//! where its events carried them) and, where the gateway keeps history, recovers what it
//! missed. How long until every client is back.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use publisher::Publisher;

use super::{Bench, latency_rows, progress};
use crate::fleet::{Fleet, histogram_of};
use crate::load;
use crate::measure::{Latency, metric_sum, unix_nanos};
use crate::plan::Spread;
use crate::procs::Redis;
use crate::report::{Report, Target, Unit};

/// Options of the reconnect-storm scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct StormArgs {
    /// Connections on the replica that is killed [default: 9500; smoke: 200].
    #[arg(long)]
    connections: Option<usize>,
    /// Members of each group channel.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Each client waits a random 0..=this many ms before reconnecting.
    #[arg(long, default_value_t = 500)]
    jitter_ms: u64,
    /// Events per second to random group channels, before and during the storm.
    #[arg(long, default_value_t = 100.0)]
    publish_rate: f64,
    /// Longest wait for every client to be back [default: 60s; smoke: 20s].
    #[arg(long)]
    timeout: Option<humantime::Duration>,
}

const LABEL: &str = "storm";
/// The namespace of the group channels, configured with history so that recovery can be
/// measured once the gateway keeps history.
const NAMESPACE_TOML: &str = r#"
[namespaces.storm]
subscribe = "public"
history_size = 100
history_ttl = "5m"
"#;

pub(crate) async fn run(bench: &Bench, args: &StormArgs) -> Result<Report> {
    let n = bench.pick(args.connections, 9_500, 200);
    let timeout = bench.pick(
        args.timeout.map(Into::into),
        Duration::from_secs(60),
        Duration::from_secs(20),
    );
    let warmup = bench.pick(None, Duration::from_secs(2), Duration::from_secs(1));
    let group_size = args.group_size.max(1);

    let redis = Redis::start().await?;
    let mut gateways = bench
        .gateways(&redis, 2, LABEL, |spec| spec.config(NAMESPACE_TOML))
        .await?;
    let mut plan = bench.fleet.plan(
        gateways.iter().map(|g| g.ws_url()).collect(),
        Spread::First,
        n,
    );
    plan.group_size = group_size;
    plan.group_prefix = "storm:".into();
    plan.reconnect_jitter_ms = Some(args.jitter_ms);
    let mut fleet = Fleet::start(LABEL, &bench.fleet, &plan).await?;
    let connected = fleet.connect().await?;
    if connected.ok == 0 {
        bail!(
            "no client connected: {}",
            connected.first_error.unwrap_or_default()
        );
    }

    // One event to every group first, so that every client has a position to resubscribe
    // from (where the channels keep history); then events keep flowing to random groups
    // before and during the storm, so that there is something to recover.
    let publisher = Publisher::connect(&redis.url())?;
    let groups = n.div_ceil(group_size);
    let pad = load::padding(100);
    let mut primed = Vec::with_capacity(groups);
    for g in 0..groups {
        primed.push(load::event(&format!("storm:{g}"), &pad)?);
    }
    for batch in primed.chunks(100) {
        publisher.publish_batch(batch).await?;
    }
    fleet
        .wait_deliveries(
            connected.ok as u64,
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
        .await?;
    let rate = args.publish_rate;
    let event_load = tokio::spawn(async move {
        load::paced(
            &publisher,
            rate,
            Duration::from_secs(3600),
            100,
            None,
            || (format!("storm:{}", rand::random_range(0..groups)), 0),
        )
        .await
    });
    tokio::time::sleep(warmup).await;
    let before = fleet.snapshot().await?;

    let victim = gateways[0].name().to_owned();
    progress(
        LABEL,
        &format!("killing {victim} with {} clients", connected.ok),
    );
    let killed_ns = unix_nanos();
    gateways[0].kill().await?;
    let deadline = Instant::now() + timeout;
    let mut last_print = Instant::now();
    let mut snapshot = fleet.snapshot().await?;
    while snapshot.resubscribed < connected.ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        snapshot = fleet.snapshot().await?;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            progress(
                LABEL,
                &format!("resubscribed {}/{}", snapshot.resubscribed, connected.ok),
            );
        }
    }
    event_load.abort();
    progress(
        LABEL,
        &format!("resubscribed {}/{}", snapshot.resubscribed, connected.ok),
    );
    let survivor_metrics = gateways[1].metrics().await?;
    super::finish(gateways, fleet).await;

    let since_kill = |ns: u64| ns.saturating_sub(killed_ns) as f64 / 1e9;
    let all_back = snapshot.resubscribed >= connected.ok;
    let mut report = Report::new(
        LABEL,
        format!("kill a replica holding {n} clients; they move to the other one"),
        bench.smoke,
    );
    report.param("connections", connected.ok);
    report.param("group_size", group_size);
    report.param("jitter_ms", args.jitter_ms);
    report.param("publish_rate", rate);
    report.add_target(
        "clients reconnected and resubscribed",
        snapshot.resubscribed as f64,
        Unit::Count,
        Target::AtLeast(connected.ok as f64),
    );
    report.add(
        "connections on the surviving replica",
        metric_sum(&survivor_metrics, "gateway_connections", ""),
        Unit::Count,
    );
    if all_back {
        report.add(
            "all reconnected (last connection_established)",
            since_kill(snapshot.last_reestablished_ns),
            Unit::Seconds,
        );
        report.add_target(
            "all resubscribed (last subscribed)",
            since_kill(snapshot.last_resubscribed_ns),
            Unit::Seconds,
            Target::Below(3.0),
        );
    } else {
        report.unavailable(
            "all resubscribed (last subscribed)",
            &format!("not all within {timeout:?}"),
            Unit::Seconds,
            Some(Target::Below(3.0)),
        );
    }
    latency_rows(
        &mut report,
        "per client: lost → resubscribed",
        Latency::of(&histogram_of(&snapshot.reconnect)),
        None,
    );
    recovery_rows(
        &mut report,
        &snapshot,
        before.positioned,
        connected.ok,
        since_kill,
    );
    report.note(format!(
        "each client waits a random 0..={} ms before reconnecting (--jitter-ms)",
        args.jitter_ms
    ));
    Ok(report)
}

fn recovery_rows(
    report: &mut Report,
    snapshot: &crate::plan::Snapshot,
    positioned_before: u64,
    clients: usize,
    since_kill: impl Fn(u64) -> f64,
) {
    let answered = snapshot.recovered + snapshot.not_recovered;
    report.add(
        "events received with offset/epoch before the kill",
        positioned_before as f64,
        Unit::Count,
    );
    report.add(
        "resubscriptions answered with `recovered`",
        answered as f64,
        Unit::Count,
    );
    if positioned_before == 0 || answered == 0 {
        report.unavailable(
            "all recovered",
            "not available yet",
            Unit::Seconds,
            Some(Target::Below(3.0)),
        );
        report.note(
            "recovered: not available yet — the events carried no offset/epoch (no channel \
             history on this publish path), so reconnects had no `since` to send",
        );
        return;
    }
    report.add_target(
        "clients recovered",
        snapshot.recovered as f64,
        Unit::Count,
        Target::AtLeast(clients as f64),
    );
    report.add(
        "clients told recovered: false",
        snapshot.not_recovered as f64,
        Unit::Count,
    );
    if snapshot.recovered as usize >= clients {
        report.add_target(
            "all recovered",
            since_kill(snapshot.last_recovered_ns),
            Unit::Seconds,
            Target::Below(3.0),
        );
    } else {
        report.unavailable(
            "all recovered",
            "not every client recovered",
            Unit::Seconds,
            Some(Target::Below(3.0)),
        );
    }
}

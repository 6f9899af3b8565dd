//! The benchmark scenarios, one module each, and what they share.

pub(crate) mod encodings;
pub(crate) mod fallback;
pub(crate) mod floor;
pub(crate) mod hot;
pub(crate) mod idle;
pub(crate) mod many;
pub(crate) mod publish;
pub(crate) mod scaling;
pub(crate) mod slow;
pub(crate) mod soak;
pub(crate) mod storm;

use std::path::PathBuf;

use anyhow::Result;

use crate::fleet::{Fleet, FleetOptions};
use crate::measure::Latency;
use crate::procs::{Gateway, GatewaySpec, Redis};
use crate::report::{Report, Target, Unit};

/// What every scenario needs: the run's mode, how to spread clients, the gateway binary.
pub(crate) struct Bench {
    /// A few-second run that proves the scenario works.
    pub(crate) smoke: bool,
    /// Client workers and source addresses.
    pub(crate) fleet: FleetOptions,
    /// The gateway to start.
    pub(crate) gateway_bin: PathBuf,
}

impl Bench {
    /// `explicit` if given, else the full-size or the smoke default.
    pub(crate) fn pick<T>(&self, explicit: Option<T>, full: T, smoke: T) -> T {
        explicit.unwrap_or(if self.smoke { smoke } else { full })
    }

    /// Starts `n` gateways on `redis`, named `<label>-a`, `<label>-b`, …
    pub(crate) async fn gateways(
        &self,
        redis: &Redis,
        n: usize,
        label: &str,
        customize: impl Fn(GatewaySpec) -> GatewaySpec,
    ) -> Result<Vec<Gateway>> {
        let mut gateways = Vec::with_capacity(n);
        for k in 0..n {
            let letter = char::from(b'a' + u8::try_from(k % 26).unwrap_or(0));
            let spec = GatewaySpec::new(&format!("{label}-{letter}"), &redis.url())
                .env("GATEWAY_REDIS_MODE", redis.mode().as_str());
            let spec = customize(spec);
            gateways.push(Gateway::start(&self.gateway_bin, &spec).await?);
        }
        progress(
            label,
            &format!("{n} gateway(s) ready, Redis on port {}", redis.port()),
        );
        Ok(gateways)
    }
}

/// Ends a scenario: kills the gateways first, so that the servers close the connections
/// and the `TIME_WAIT` states stay on their side (on the listening port) instead of holding
/// the clients' ephemeral ports for a minute; then the workers exit.
pub(crate) async fn finish(gateways: Vec<Gateway>, fleet: Fleet) {
    for mut gateway in gateways {
        let _ = gateway.kill().await;
    }
    // Let the clients see their connections end and close them.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    fleet.quit().await;
}

/// A progress line on stderr.
pub(crate) fn progress(label: &str, message: &str) {
    eprintln!("[{label}] {message}");
}

/// p50, p99 and max rows of a latency summary, p99 checked against `p99_target`.
pub(crate) fn latency_rows(
    report: &mut Report,
    what: &str,
    latency: Option<Latency>,
    p99_target: Option<Target>,
) {
    let Some(latency) = latency else {
        report.unavailable(
            &format!("{what} p99"),
            "no samples",
            Unit::Millis,
            p99_target,
        );
        return;
    };
    report.add(&format!("{what} p50"), latency.p50_ms, Unit::Millis);
    match p99_target {
        Some(target) => {
            report.add_target(&format!("{what} p99"), latency.p99_ms, Unit::Millis, target)
        }
        None => report.add(&format!("{what} p99"), latency.p99_ms, Unit::Millis),
    }
    report.add(&format!("{what} max"), latency.max_ms, Unit::Millis);
}

/// Gateway CPU seconds of several gateways.
pub(crate) fn gateway_cpu(gateways: &[Gateway]) -> Result<f64> {
    let pids: Vec<u32> = gateways.iter().map(Gateway::pid).collect();
    crate::measure::cpu_seconds_of(&pids)
}

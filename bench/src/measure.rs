//! What the scenarios measure: memory and CPU time of processes (from `/proc`), Redis's CPU
//! time (from `INFO cpu`), the gateway's Prometheus metrics, and latency histograms.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest latency a histogram records, in microseconds (one minute); larger values are
/// clamped to it.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .expect("constant bounds: low >= 1, high >= 2 * low, 3 significant figures")
}

/// Records `micros` into `histogram`, clamped into its range.
pub(crate) fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// A histogram as (value, count) pairs, to send between processes as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Buckets(pub(crate) Vec<(u64, u64)>);

impl Buckets {
    /// The non-empty buckets of `histogram`.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        Self(
            histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets to `histogram`.
    pub(crate) fn add_to(&self, histogram: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            let _ = histogram.record_n(value.clamp(1, MAX_MICROS), count);
        }
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Median, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// Largest, ms.
    pub(crate) max_ms: f64,
}

impl Latency {
    /// The summary of a histogram in microseconds; `None` when it is empty.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
        })
    }
}

/// Nanoseconds since the Unix epoch, the clock every process on this machine shares.
pub(crate) fn unix_nanos() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// Open files of a process: the entries of `/proc/<pid>/fd`.
pub(crate) fn open_files(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.count())
}

/// Threads of a process (`Threads` of `/proc/<pid>/status`).
pub(crate) fn threads(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("no Threads in {path}"))
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces; the fields after the
    // last ')' start at field 3 (state). utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|ticks| ticks as f64)
            .with_context(|| format!("no field {n} in {path}"))
    };
    Ok((field(14)? + field(15)?) / clock_ticks_per_second())
}

/// `sysconf(_SC_CLK_TCK)`, the unit of utime and stime; 100 on Linux if it cannot be read.
fn clock_ticks_per_second() -> f64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as f64,
        _ => 100.0,
    }
}

/// CPU seconds of several processes together.
pub(crate) fn cpu_seconds_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// Redis's own CPU time, `used_cpu_sys + used_cpu_user` of `INFO cpu`, in seconds.
pub(crate) async fn redis_cpu_seconds(url: &str) -> Result<f64> {
    let client = redis::Client::open(url).context("Redis URL")?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis for INFO")?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut connection)
        .await
        .context("INFO cpu")?;
    let value = |name: &str| -> Result<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in INFO cpu"))
    };
    Ok(value("used_cpu_sys")? + value("used_cpu_user")?)
}

/// `GET path` over plain HTTP/1.0 on a loopback listener: the status and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET http://{addr}{path}: no HTTP response");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Bytes waiting in the kernel's send queue of every TCP socket on 127.0.0.1:`port` (the
/// `tx_queue` column of `/proc/net/tcp`), largest first: what a loopback listener's clients
/// have not taken yet, beyond what the process itself holds.
pub(crate) fn send_queues(port: u16) -> Result<Vec<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    // /proc/net/tcp writes 127.0.0.1 as the hex of its bytes in host order (little-endian).
    let local = format!("0100007F:{port:04X}");
    let mut queues: Vec<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.nth(1)? != local {
                return None;
            }
            let (tx, _) = fields.nth(2)?.split_once(':')?;
            u64::from_str_radix(tx, 16).ok()
        })
        .collect();
    queues.sort_unstable_by(|a, b| b.cmp(a));
    Ok(queues)
}

/// The sum of every sample of metric `name` whose labels contain `labels` (e.g.
/// `code="4100"`, or `""` for any), from a Prometheus text exposition.
pub(crate) fn metric_sum(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = match rest.strip_prefix('{') {
                Some(label_set) => label_set.contains(labels),
                None => rest.is_empty() && labels.is_empty(),
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_rss_and_cpu() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(open_files(pid).unwrap() >= 3);
        assert!(threads(pid).unwrap() >= 1);
    }

    #[test]
    fn send_queues_of_a_listener_are_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let queues = send_queues(port).unwrap();
        // The listening socket and the accepted one.
        assert!(queues.len() >= 2, "{queues:?}");
    }

    #[test]
    fn metric_sums_filter_by_name_and_labels() {
        let text = "# HELP x\n\
                    gateway_disconnections_total{code=\"4100\"} 3\n\
                    gateway_disconnections_total{code=\"1000\"} 5\n\
                    gateway_disconnections_total_other 9\n\
                    gateway_outbox_bytes 1024\n";
        assert_eq!(
            metric_sum(text, "gateway_disconnections_total", "code=\"4100\""),
            3.0
        );
        assert_eq!(metric_sum(text, "gateway_disconnections_total", ""), 8.0);
        assert_eq!(metric_sum(text, "gateway_outbox_bytes", ""), 1024.0);
    }

    #[test]
    fn buckets_round_trip() {
        let mut h = histogram();
        for v in [10, 20, 20, 5000, 70_000_000] {
            record(&mut h, v);
        }
        let mut back = histogram();
        Buckets::of(&h).add_to(&mut back);
        assert_eq!(back.len(), 5);
        let latency = Latency::of(&back).unwrap();
        assert!((latency.max_ms - 60_000.0).abs() < 100.0);
        assert!(latency.p50_ms < 0.1);
    }
}

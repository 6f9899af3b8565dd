//! The driver's side of the client workers: starts `bench worker` processes with a share of
//! the connections each, tells them what to do, and merges what they report.

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command as Process};
use tokio::sync::mpsc;

use crate::measure::{self, unix_nanos};
use crate::plan::{Command, Plan, Report, Snapshot, Spread};
use crate::procs::{JWT_SECRET, Owned};

/// How the connections of a scenario are spread over processes and source addresses.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FleetOptions {
    /// Client worker processes at least (more are used when the connections need them).
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Connections per worker process at most: each process may open 20,000 files.
    #[arg(long, global = true, default_value_t = 19_000)]
    pub(crate) max_conns_per_worker: usize,
    /// Connections per source address (127.0.0.x) at most: one address has ~28,000 ephemeral
    /// ports.
    #[arg(long, global = true, default_value_t = 20_000)]
    pub(crate) conns_per_source_ip: usize,
    /// Handshakes in flight at once, over all workers.
    #[arg(long, global = true, default_value_t = 32)]
    pub(crate) connect_concurrency: usize,
    /// Tokio threads per worker [default: 2 with one worker, else 1].
    #[arg(long, global = true)]
    pub(crate) client_threads: Option<usize>,
}

impl FleetOptions {
    /// A plan for `total` connections to `targets`; the scenario fills in its channels.
    pub(crate) fn plan(&self, targets: Vec<String>, spread: Spread, total: usize) -> Plan {
        let sources = total
            .div_ceil(self.conns_per_source_ip.max(1))
            .clamp(1, 250);
        let source_ips = (0..sources)
            .map(|k| Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(k).unwrap_or(249)))
            .collect();
        Plan {
            targets,
            spread,
            first: 0,
            count: total,
            group_size: 0,
            group_prefix: "grp-".into(),
            channels: Vec::new(),
            source_ips,
            concurrency: self.connect_concurrency,
            slow_every: 0,
            slow_recv_buffer: 4096,
            slow_read_pause_ms: 100,
            reconnect_jitter_ms: None,
            threads: 0,
            secret: JWT_SECRET.into(),
        }
    }

    fn workers_for(&self, total: usize) -> usize {
        self.workers
            .max(total.div_ceil(self.max_conns_per_worker.max(1)))
            .max(1)
    }
}

/// The outcome of opening every connection.
pub(crate) struct Connected {
    /// Established and subscribed.
    pub(crate) ok: usize,
    /// Given up.
    pub(crate) failed: usize,
    /// From the connect command to the last connection's `subscribed`.
    pub(crate) elapsed: Duration,
    /// Handshake + subscribe times, µs.
    pub(crate) handshake: Histogram<u64>,
    /// The first failure, if any.
    pub(crate) first_error: Option<String>,
}

impl Connected {
    /// A note for the report when some clients could not connect.
    pub(crate) fn failure_note(&self) -> Option<String> {
        (self.failed > 0).then(|| {
            format!(
                "{} clients failed to connect; first: {}",
                self.failed,
                self.first_error.as_deref().unwrap_or_default()
            )
        })
    }
}

struct Worker {
    process: Owned,
    stdin: ChildStdin,
}

/// Running client workers.
pub(crate) struct Fleet {
    label: String,
    total: usize,
    workers: Vec<Worker>,
    reports: mpsc::UnboundedReceiver<(usize, Report)>,
}

impl Fleet {
    /// Starts the workers for `plan` (whose `first`/`count` cover every connection) and waits
    /// until each has its tokens ready.
    pub(crate) async fn start(label: &str, options: &FleetOptions, plan: &Plan) -> Result<Self> {
        let total = plan.count;
        let n = options.workers_for(total);
        let threads = options.client_threads.unwrap_or(if n == 1 { 2 } else { 1 });
        let exe = std::env::current_exe().context("finding this executable")?;
        let (tx, reports) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(n);
        for k in 0..n {
            let first = total * k / n;
            let share = Plan {
                first: plan.first + first,
                count: total * (k + 1) / n - first,
                concurrency: plan.concurrency.div_ceil(n).max(1),
                threads,
                ..plan.clone()
            };
            let mut command = Process::new(&exe);
            command
                .arg("worker")
                .arg("--plan")
                .arg(serde_json::to_string(&share)?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut process = Owned::spawn(&mut command, "a client worker")?;
            let child = process.child_mut();
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let report = serde_json::from_str(&line).unwrap_or_else(|e| Report::Failed {
                        message: format!("unreadable report {line:?}: {e}"),
                    });
                    if tx.send((k, report)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((
                    k,
                    Report::Failed {
                        message: "the worker exited".into(),
                    },
                ));
            });
            workers.push(Worker { process, stdin });
        }
        let mut fleet = Self {
            label: label.to_owned(),
            total,
            workers,
            reports,
        };
        let mut ready = 0;
        while ready < n {
            match fleet.next_report().await? {
                (_, Report::Ready) => ready += 1,
                (k, other) => bail!("worker {k}: unexpected {other:?} before ready"),
            }
        }
        Ok(fleet)
    }

    /// CPU seconds the worker processes have used, to tell when the load generator itself is
    /// the bottleneck.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        let pids: Vec<u32> = self.workers.iter().map(|w| w.process.pid()).collect();
        measure::cpu_seconds_of(&pids)
    }

    /// How many worker processes hold the connections.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.len()
    }

    async fn next_report(&mut self) -> Result<(usize, Report)> {
        match self.reports.recv().await {
            Some((k, Report::Failed { message })) => bail!("client worker {k}: {message}"),
            Some(report) => Ok(report),
            None => bail!("every client worker is gone"),
        }
    }

    /// Sends `command` to every worker.
    pub(crate) async fn send(&mut self, command: Command) -> Result<()> {
        let mut line = serde_json::to_vec(&command)?;
        line.push(b'\n');
        for worker in &mut self.workers {
            worker
                .stdin
                .write_all(&line)
                .await
                .context("writing to a client worker")?;
            worker.stdin.flush().await?;
        }
        Ok(())
    }

    /// Opens every connection, printing progress to stderr, and waits for the last one.
    pub(crate) async fn connect(&mut self) -> Result<Connected> {
        let started_ns = unix_nanos();
        self.send(Command::Connect).await?;
        let n = self.workers.len();
        let mut progress = vec![(0, 0); n];
        let mut done = vec![false; n];
        let mut handshake = measure::histogram();
        let mut done_ns = started_ns;
        let mut first_error = None;
        let mut last_print = Instant::now();
        while done.iter().any(|d| !d) {
            match self.next_report().await? {
                (k, Report::Progress { connected, failed }) => progress[k] = (connected, failed),
                (
                    k,
                    Report::Connected {
                        ok,
                        failed,
                        done_ns: worker_done_ns,
                        handshake: buckets,
                        first_error: error,
                    },
                ) => {
                    progress[k] = (ok, failed);
                    done[k] = true;
                    done_ns = done_ns.max(worker_done_ns);
                    buckets.add_to(&mut handshake);
                    first_error = first_error.or(error);
                }
                (k, other) => bail!("worker {k}: unexpected {other:?} while connecting"),
            }
            if last_print.elapsed() >= Duration::from_secs(1) || done.iter().all(|d| *d) {
                last_print = Instant::now();
                let connected: usize = progress.iter().map(|p| p.0).sum();
                let failed: usize = progress.iter().map(|p| p.1).sum();
                eprintln!(
                    "[{}] connected {connected}/{} (failed {failed})",
                    self.label, self.total
                );
            }
        }
        Ok(Connected {
            ok: progress.iter().map(|p| p.0).sum(),
            failed: progress.iter().map(|p| p.1).sum(),
            elapsed: Duration::from_nanos(done_ns.saturating_sub(started_ns)),
            handshake,
            first_error,
        })
    }

    /// Every worker's figures, merged; latency histograms start again.
    pub(crate) async fn snapshot(&mut self) -> Result<Snapshot> {
        self.send(Command::Snapshot).await?;
        let mut merged = Snapshot::default();
        for _ in 0..self.workers.len() {
            match self.next_report().await? {
                (_, Report::Snapshot(snapshot)) => merged.merge(snapshot),
                (k, other) => bail!("worker {k}: unexpected {other:?} for a snapshot"),
            }
        }
        Ok(merged)
    }

    /// Events received so far by every client.
    pub(crate) async fn deliveries(&mut self) -> Result<u64> {
        self.send(Command::Count).await?;
        let mut total = 0;
        for _ in 0..self.workers.len() {
            match self.next_report().await? {
                (_, Report::Count { deliveries }) => total += deliveries,
                (k, other) => bail!("worker {k}: unexpected {other:?} for a count"),
            }
        }
        Ok(total)
    }

    /// Waits until the clients have received `expected` events in all, or until no event came
    /// for `quiet`, at most `limit`; returns the count.
    pub(crate) async fn wait_deliveries(
        &mut self,
        expected: u64,
        quiet: Duration,
        limit: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + limit;
        let mut last = self.deliveries().await?;
        let mut last_change = Instant::now();
        while last < expected && Instant::now() < deadline && last_change.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.deliveries().await?;
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
        Ok(last)
    }

    /// Tells every worker to exit.
    pub(crate) async fn quit(mut self) {
        let _ = self.send(Command::Quit).await;
    }
}

/// Merges bucket lists into one histogram.
pub(crate) fn histogram_of(buckets: &measure::Buckets) -> Histogram<u64> {
    let mut histogram = measure::histogram();
    buckets.add_to(&mut histogram);
    histogram
}

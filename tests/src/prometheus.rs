//! A real Prometheus server (Debian's `prometheus` package) scraping test gateways, and
//! `promtool`, for the observability tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use testkit::{TempDir, free_port};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::gateway::{read_log, tail};

/// How long Prometheus may take to answer 200 on `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 3;

/// A `prometheus` process with a generated configuration, its own storage in a scratch
/// directory and a free loopback port. Killed when dropped; its log is printed if the test
/// panics.
#[derive(Debug)]
pub struct TestPrometheus {
    child: Child,
    port: u16,
    http: reqwest::Client,
    log_path: PathBuf,
    _dir: TempDir,
}

impl TestPrometheus {
    /// Starts Prometheus scraping `/metrics` of every `host:port` in `targets` as job `job`,
    /// every `interval` (at least 1 s), and waits until it is ready.
    pub async fn start(job: &str, targets: &[String], interval: Duration) -> Self {
        let dir = TempDir::new("e2e-prometheus");
        let seconds = interval.as_secs().max(1);
        let target_list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n  \
                 evaluation_interval: {seconds}s\n\
                 scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [{target_list}]\n"
            ),
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let log_path = dir.path().join("prometheus.log");
        let mut attempt = 1;
        loop {
            let port = free_port();
            let mut child = spawn(&config, dir.path(), port, &log_path);
            match wait_ready(&mut child, &http, port).await {
                Ok(()) => {
                    return Self {
                        child,
                        port,
                        http,
                        log_path,
                        _dir: dir,
                    };
                }
                Err(Some(status)) => {
                    let log = read_log(&log_path);
                    if log.contains("address already in use") && attempt < START_ATTEMPTS {
                        attempt += 1;
                        continue;
                    }
                    panic!(
                        "prometheus exited with {status} before it was ready\n{}",
                        tail(&log_path, "prometheus")
                    );
                }
                Err(None) => {
                    let _ = child.start_kill();
                    panic!(
                        "prometheus not ready on port {port} after {READY_TIMEOUT:?}\n{}",
                        tail(&log_path, "prometheus")
                    );
                }
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an instant query (`GET /api/v1/query`) and returns Prometheus's whole JSON reply
    /// (`{"status":…,"data":{"resultType":…,"result":…}}`, or `"error"` for a bad query).
    pub async fn query(&self, expr: &str) -> Value {
        let url = format!("{}/api/v1/query", self.url());
        let response = self
            .http
            .get(&url)
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} ({expr}) failed: {e}\n{}", self.logs()));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(e) => panic!("query {expr}: HTTP {status}, not JSON ({e}): {text}"),
        }
    }

    /// The samples of an instant query that must succeed: `(labels, value)` per series (one
    /// unlabelled sample for a scalar). Panics with Prometheus's error otherwise.
    pub async fn samples(&self, expr: &str) -> Vec<(Value, f64)> {
        let reply = self.query(expr).await;
        samples_of(expr, &reply)
    }

    /// Polls `expr` every 500 ms until it returns at least one sample, failing after `limit`.
    pub async fn wait_for(&self, expr: &str, limit: Duration) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + limit;
        loop {
            let samples = self.samples(expr).await;
            if !samples.is_empty() {
                return samples;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus returned nothing for {expr} within {limit:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// What Prometheus logged so far.
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- prometheus ({}) ----\n{}",
                self.url(),
                tail(&self.log_path, "prometheus")
            );
        }
    }
}

/// The `(labels, value)` samples of a successful query reply; panics on an error reply.
pub fn samples_of(expr: &str, reply: &Value) -> Vec<(Value, f64)> {
    assert_eq!(
        reply["status"], "success",
        "query {expr} failed: {} {}",
        reply["errorType"], reply["error"]
    );
    let value = |v: &Value| -> f64 {
        // Values are strings: "1.5", "NaN", "+Inf".
        v[1].as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("query {expr}: sample value {v} is not a number"))
    };
    let data = &reply["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .map(|s| (s["metric"].clone(), value(&s["value"])))
                    .collect()
            })
            .unwrap_or_default(),
        Some("scalar") => vec![(Value::Null, value(&data["result"]))],
        other => panic!("query {expr}: unexpected result type {other:?}: {data}"),
    }
}

/// Runs `promtool ARGS…` with `stdin` as its input; returns whether it succeeded and what it
/// printed (stdout and stderr).
pub async fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool (Debian's prometheus package; scripts/test.sh installs it): {e}")
        });
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("cannot write to promtool: {e}"));
        // Dropping the handle closes promtool's standard input.
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("promtool {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("promtool {args:?} failed to run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn spawn(config: &Path, dir: &Path, port: u16, log_path: &Path) -> Child {
    let log = File::create(log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
    Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg("--storage.tsdb.retention.time=1h")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start prometheus (Debian's prometheus package; scripts/test.sh installs \
                 it): {e}"
            )
        })
}

/// `Ok` once `/-/ready` answers 200; `Err(Some(status))` if the process exited,
/// `Err(None)` on timeout.
async fn wait_ready(
    child: &mut Child,
    http: &reqwest::Client,
    port: u16,
) -> Result<(), Option<std::process::ExitStatus>> {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Some(status));
        }
        let response = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

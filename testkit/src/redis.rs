//! A throwaway `redis-server` on a free loopback port, for tests, doc examples and benchmarks.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::ports::free_addrs;
use crate::temp::TempDir;

/// How long `redis-server` may take to answer once started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts to start it when the free port we picked was taken in the meantime.
const START_ATTEMPTS: u32 = 3;
/// Lines of its log quoted when it does not start.
const LOG_TAIL_LINES: usize = 30;
/// The port of a Redis the developer may run themselves, which a test must never touch.
const DEFAULT_REDIS_PORT: u16 = 6379;

/// A real `redis-server` process without persistence on a free 127.0.0.1 port, with its
/// working directory and log in a [`TempDir`]; killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// A config file given before the other arguments (a sentinel's, which it rewrites).
    config: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    ///
    /// # Panics
    ///
    /// When it does not start (`redis-server` missing, or not answering within 20 s);
    /// [`RedisServer::start_with`] returns the error instead.
    pub async fn start() -> Self {
        Self::start_with(&[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server with `args` added to its command line (e.g. `["--maxclients",
    /// "10000"]`) and waits until it answers.
    pub async fn start_with(args: &[&str]) -> io::Result<Self> {
        Self::start_from(None, args).await
    }

    /// Starts a Redis Sentinel watching the master at `master_port` as `master`, with a
    /// quorum of `quorum` and quick failovers, and waits until it answers.
    pub async fn start_sentinel(master: &str, master_port: u16, quorum: u32) -> io::Result<Self> {
        let config = format!(
            "sentinel monitor {master} 127.0.0.1 {master_port} {quorum}\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 1\n"
        );
        Self::start_from(Some(config), &["--sentinel"]).await
    }

    async fn start_from(config: Option<String>, args: &[&str]) -> io::Result<Self> {
        let dir = TempDir::create("redis")?;
        let args: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
        let config = config.map(|text| dir.write("sentinel.conf", text).display().to_string());
        let mut attempt = 1;
        loop {
            let port = redis_port()?;
            match launch(port, config.as_deref(), &args, dir.path()).await {
                Ok(child) => {
                    return Ok(Self {
                        port,
                        config,
                        args,
                        child: Some(child),
                        dir,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < START_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running server; `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Runs `redis-cli` against this server and returns its output (empty on failure).
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await;
        match output {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Subscribers of a Redis channel, from `PUBSUB NUMSUB`.
    pub async fn numsub(&self, channel: &str) -> u64 {
        let output = self.cli(&["PUBSUB", "NUMSUB", channel]).await;
        output
            .lines()
            .nth(1)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Keeps its directory, with its log `redis.log`, after it is dropped.
    pub fn keep_log(&mut self) {
        self.dir.keep();
    }

    /// Kills the server at once (SIGKILL) and waits for it to go; its data is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers.
    ///
    /// # Panics
    ///
    /// When it does not come back (e.g. another process took the port meanwhile).
    pub async fn restart(&mut self) {
        self.kill().await;
        match launch(
            self.port,
            self.config.as_deref(),
            &self.args,
            self.dir.path(),
        )
        .await
        {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("{e}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Runs `example` against a fresh [`RedisServer`] (given its URL) on a current-thread tokio
/// runtime, then kills the server. For documentation examples:
///
/// ```
/// # testkit::with_redis(|url| async move {
/// assert!(url.starts_with("redis://127.0.0.1:"));
/// # Ok::<(), std::io::Error>(())
/// # });
/// ```
///
/// # Panics
///
/// When the server cannot be started or the example fails.
pub fn with_redis<F, Fut, E>(example: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Debug,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
    runtime.block_on(async {
        let mut redis = RedisServer::start().await;
        let outcome = example(redis.url()).await;
        redis.kill().await;
        if let Err(e) = outcome {
            panic!("the example failed: {e:?}");
        }
    });
}

/// A free loopback port other than Redis's default one.
fn redis_port() -> io::Result<u16> {
    loop {
        let [addr] = free_addrs()?;
        if addr.port() != DEFAULT_REDIS_PORT {
            return Ok(addr.port());
        }
    }
}

/// Starts `redis-server` on `port` with its files in `dir` and waits until that very process
/// answers there. A port that is taken is an [`io::ErrorKind::AddrInUse`] error.
async fn launch(port: u16, config: Option<&str>, args: &[String], dir: &Path) -> io::Result<Child> {
    let log = dir.join("redis.log");
    let mut child = Command::new("redis-server")
        .args(config)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start redis-server (scripts/test.sh installs it): {e}"),
            )
        })?;
    let pid = child.id().unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = tail(&log);
            let kind = if log.contains("in use") {
                io::ErrorKind::AddrInUse
            } else {
                io::ErrorKind::Other
            };
            return Err(io::Error::new(
                kind,
                format!(
                    "redis-server exited with {status} before it answered on port {port}:\n{log}"
                ),
            ));
        }
        // Another test's server may hold the port if ours could not bind it: it must be ours.
        if answers_as(port, pid).await {
            return Ok(child);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis-server did not answer on port {port} within {START_TIMEOUT:?}:\n{}",
                    tail(&log)
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server answering on `port` is process `pid`, from its `INFO server`.
async fn answers_as(port: u16, pid: u32) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"INFO server\r\n").await?;
        let mut reply = Vec::new();
        let mut chunk = [0; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || reply.len() > 64 * 1024 {
                return Ok::<_, io::Error>(false);
            }
            reply.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&reply);
            if text.starts_with('-') {
                return Ok(false);
            }
            if let Some((_, rest)) = text.split_once("process_id:")
                && let Some((id, _)) = rest.split_once("\r\n")
            {
                return Ok(id.trim() == pid.to_string());
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ask).await,
        Ok(Ok(true))
    )
}

/// The last lines of a log file (empty if unreadable).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

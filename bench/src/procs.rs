//! The processes a benchmark starts — `redis-server`, gateways, its own client workers — and
//! making sure none outlives it: each is registered here and killed when the bench ends,
//! normally, with an error, on a panic or on Ctrl-C.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use publisher::{RedisMode, RedisTopology};
use testkit::{RedisCluster, RedisServer, TempDir};
use tokio::process::{Child, Command};

use crate::measure;

/// The HMAC secret of the gateways the bench starts, and of the tokens its clients mint.
pub(crate) const JWT_SECRET: &str = "bench-secret-only-for-loopback-benchmarks-0123456789";
/// The admin API key of the gateways the bench starts.
pub(crate) const API_KEY: &str = "bench-api-key-0123456789";

/// How long a gateway may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Process ids of every child still running.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn register(pid: u32) {
    if let Ok(mut children) = CHILDREN.lock() {
        children.push(pid);
    }
}

fn unregister(pid: u32) {
    if let Ok(mut children) = CHILDREN.lock() {
        children.retain(|&p| p != pid);
    }
}

fn sigkill(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Kills every child still registered (SIGKILL), each by its own pid.
pub(crate) fn kill_all() {
    let pids = match CHILDREN.lock() {
        Ok(mut children) => std::mem::take(&mut *children),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for pid in pids {
        sigkill(pid);
    }
}

/// Kills every child on a panic too, before the default hook reports it.
pub(crate) fn kill_children_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all();
        default_hook(info);
    }));
}

/// Raises this process's soft limit of open files to its hard limit and returns it.
///
/// Each process here may open at most 20,000 files (the hard limit), but a shell usually
/// starts programs with a soft limit of 1,024. The driver, each client worker and each gateway
/// need one descriptor per connection; the workers and gateways are started by the driver and
/// inherit its raised soft limit, so raising it here, first thing, covers all of them.
pub(crate) fn raise_fd_limit() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    Ok(hard)
}

/// Whether `BENCH_KEEP_LOGS` is set: then the scratch directories of the gateways and Redis
/// are kept (their paths printed), to read their logs after a run.
fn keep_logs() -> bool {
    std::env::var_os("BENCH_KEEP_LOGS").is_some()
}

/// A scratch directory for a process's logs and config files.
fn scratch(label: &str) -> Result<TempDir> {
    let mut dir = TempDir::create(&format!("bench-{label}"))?;
    if keep_logs() {
        dir.keep();
    }
    Ok(dir)
}

/// A child process that is registered for cleanup and killed when dropped.
#[derive(Debug)]
pub(crate) struct Owned {
    child: Child,
    pid: u32,
}

impl Owned {
    /// Spawns `command` (made to die with its handle) and registers it.
    pub(crate) fn spawn(command: &mut Command, what: &str) -> Result<Self> {
        let child = command
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{what} exited at once"))?;
        register(pid);
        Ok(Self { child, pid })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL, then waits for it to go.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("killing a child")?;
        unregister(self.pid);
        Ok(())
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        unregister(self.pid);
    }
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// testkit's `redis-server` with room for every client of a scenario (or a Redis Cluster of
/// them), registered for cleanup like every other child.
#[derive(Debug)]
pub(crate) struct Redis {
    servers: Servers,
    pids: Vec<u32>,
}

#[derive(Debug)]
enum Servers {
    One(Box<RedisServer>),
    Cluster(RedisCluster),
}

impl Redis {
    /// Starts it and waits until it answers.
    pub(crate) async fn start() -> Result<Self> {
        let mut server = RedisServer::start_with(&["--maxclients", "10000"]).await?;
        if keep_logs() {
            server.keep_log();
        }
        let pid = server.pid().context("redis-server exited at once")?;
        register(pid);
        Ok(Self {
            servers: Servers::One(Box::new(server)),
            pids: vec![pid],
        })
    }

    /// Starts a Redis Cluster of `masters` masters without replicas and waits until it is
    /// formed.
    pub(crate) async fn start_cluster(masters: usize) -> Result<Self> {
        let cluster = RedisCluster::start(masters, 0).await?;
        let pids: Vec<u32> = cluster
            .nodes()
            .iter()
            .filter_map(RedisServer::pid)
            .collect();
        for pid in &pids {
            register(*pid);
        }
        Ok(Self {
            servers: Servers::Cluster(cluster),
            pids,
        })
    }

    /// `redis://127.0.0.1:<port>`, or a cluster's seed list.
    pub(crate) fn url(&self) -> String {
        match &self.servers {
            Servers::One(server) => server.url(),
            Servers::Cluster(cluster) => cluster.seeds(),
        }
    }

    /// The port of the server, or of a cluster's first node.
    pub(crate) fn port(&self) -> u16 {
        match &self.servers {
            Servers::One(server) => server.port(),
            Servers::Cluster(cluster) => cluster.nodes()[0].port(),
        }
    }

    /// The URL of each server: the one, or each master of the cluster.
    pub(crate) fn server_urls(&self) -> Vec<String> {
        match &self.servers {
            Servers::One(server) => vec![server.url()],
            Servers::Cluster(cluster) => cluster.nodes().iter().map(RedisServer::url).collect(),
        }
    }

    /// The gateways' and publishers' `GATEWAY_REDIS_MODE`.
    pub(crate) fn mode(&self) -> RedisMode {
        match &self.servers {
            Servers::One(_) => RedisMode::Standalone,
            Servers::Cluster(_) => RedisMode::Cluster,
        }
    }

    /// Where publishers connect.
    pub(crate) fn topology(&self) -> Result<RedisTopology> {
        Ok(RedisTopology::parse(self.mode(), &self.url(), None)?)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        for pid in &self.pids {
            unregister(*pid);
        }
    }
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub(crate) struct GatewaySpec {
    /// The node id, also used in messages.
    pub(crate) name: String,
    /// The bus.
    pub(crate) redis_url: String,
    /// Extra `GATEWAY_*` variables (limits a scenario relaxes).
    pub(crate) env: Vec<(String, String)>,
    /// A TOML config file's contents (namespaces), if any.
    pub(crate) config_toml: Option<String>,
}

impl GatewaySpec {
    pub(crate) fn new(name: &str, redis_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            redis_url: redis_url.to_owned(),
            env: Vec::new(),
            config_toml: None,
        }
    }

    pub(crate) fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub(crate) fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_owned());
        self
    }
}

/// A gateway process on two free loopback ports, ready (`/readyz` answered 200).
#[derive(Debug)]
pub(crate) struct Gateway {
    process: Owned,
    name: String,
    public: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Gateway {
    /// Starts `binary` as described by `spec` and waits until it is ready.
    pub(crate) async fn start(binary: &Path, spec: &GatewaySpec) -> Result<Self> {
        let dir = scratch(&spec.name)?;
        let log = dir.path().join("gateway.log");
        let mut last_error = None;
        for _attempt in 0..3 {
            let [public, admin] = testkit::free_addrs()?;
            let (stdout, stderr) = log_file(&log)?;
            let mut command = Command::new(binary);
            command
                .env("GATEWAY_LISTEN", public.to_string())
                .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
                .env("GATEWAY_REDIS_URL", &spec.redis_url)
                .env("GATEWAY_NODE_ID", &spec.name)
                .env("GATEWAY_JWT_SECRET", JWT_SECRET)
                .env("GATEWAY_API_KEY", API_KEY)
                .env("GATEWAY_LOG", "warn")
                // Clients that stop reading must be closed for their backlog (4100), not
                // for silence, within a run.
                .env("GATEWAY_IDLE_TIMEOUT", "10m")
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr);
            if let Some(toml) = &spec.config_toml {
                let path = dir.path().join("gateway.toml");
                std::fs::write(&path, toml).context("writing the gateway's config")?;
                command.env("GATEWAY_CONFIG", &path);
            }
            let what = format!("gateway {} ({})", spec.name, binary.display());
            let mut process = Owned::spawn(&mut command, &what)?;
            match wait_ready(&mut process, admin).await {
                Ok(()) => {
                    return Ok(Self {
                        process,
                        name: spec.name.clone(),
                        public,
                        admin,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    let log_text = tail(&log);
                    let port_taken = log_text.contains("in use") || log_text.contains("AddrInUse");
                    last_error = Some(anyhow::anyhow!("{what}: {e}\n{log_text}"));
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("gateway {} did not start", spec.name)))
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// The public listener's port.
    pub(crate) fn public_port(&self) -> u16 {
        self.public.port()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory in bytes.
    pub(crate) fn rss(&self) -> Result<u64> {
        measure::rss_bytes(self.pid())
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) async fn metrics(&self) -> Result<String> {
        let (status, body) = measure::http_get(self.admin, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics of {} answered {status}", self.name);
        }
        Ok(body)
    }

    /// SIGKILL, at once: its clients see their sockets close.
    pub(crate) async fn kill(&mut self) -> Result<()> {
        self.process.kill().await
    }
}

async fn wait_ready(process: &mut Owned, admin: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = process.child_mut().try_wait() {
            bail!("exited with {status} before it was ready");
        }
        if let Ok((200, _)) = measure::http_get(admin, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway binary: `explicit` if given; otherwise the one next to this executable
/// (`target/<profile>/gateway`), first built with cargo in this executable's profile unless
/// `no_build`, so that a bench never measures a stale gateway.
pub(crate) fn gateway_binary(explicit: Option<&Path>, no_build: bool) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--gateway-bin {} is not a file", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let profile_dir = if no_build {
        testkit::profile_dir().context("finding this executable's directory")?
    } else {
        eprintln!("building the gateway (cargo build -p gateway -p publisher --bins) …");
        testkit::build_binaries().context("pass --gateway-bin, or --no-build")?
    };
    let binary = profile_dir.join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        bail!(
            "{} does not exist: run `cargo build --release -p gateway -p publisher`, \
             or pass --gateway-bin",
            binary.display()
        );
    }
    Ok(binary)
}

//! A real gateway process on free local ports, its configuration, and its admin API.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use testkit::TempDir;
use tokio::process::{Child, Command};

use crate::client::{HandshakeFailure, TestClient};
use crate::token::{TEST_API_KEY, TEST_JWT_SECRET, token};

/// How long a gateway may take to answer 200 on `/readyz` once started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const READY_POLL: Duration = Duration::from_millis(50);
/// Attempts to start a gateway when the free ports we picked were taken in the meantime.
const START_ATTEMPTS: u32 = 3;
/// Lines of gateway output printed when a test fails.
const LOG_TAIL_LINES: usize = 100;

/// Environment of a gateway under test, with test defaults, plus a scratch directory for the
/// files it points to (TOML config, keys, JWKS) and for the gateway's output.
///
/// Defaults: `GATEWAY_JWT_SECRET` = [`TEST_JWT_SECRET`], `GATEWAY_API_KEY` = [`TEST_API_KEY`],
/// `GATEWAY_LOG` = `info` (or `$E2E_GATEWAY_LOG`), `GATEWAY_NODE_ID` unique per gateway.
/// The listeners are set by [`TestGateway::spawn`].
#[derive(Debug)]
pub struct GatewayConfig {
    env: BTreeMap<String, String>,
    dir: TempDir,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayConfig {
    /// The test defaults.
    pub fn new() -> Self {
        let dir = TempDir::new("e2e-gateway");
        let node_id = dir
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().replace("e2e-gateway", "e2e"))
            .unwrap_or_else(|| "e2e".to_owned());
        let log = std::env::var("E2E_GATEWAY_LOG").unwrap_or_else(|_| "info".to_owned());
        let config = Self {
            env: BTreeMap::new(),
            dir,
        };
        config
            .env("GATEWAY_NODE_ID", node_id)
            .env("GATEWAY_JWT_SECRET", TEST_JWT_SECRET)
            .env("GATEWAY_API_KEY", TEST_API_KEY)
            .env("GATEWAY_LOG", log)
    }

    /// Sets an environment variable of the gateway.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// Removes an environment variable (a default) from the gateway's environment.
    pub fn unset(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Writes a file into this gateway's scratch directory and returns its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        self.dir.write(name, contents)
    }

    /// Writes `toml` (namespaces and other structured settings) and sets `GATEWAY_CONFIG`.
    pub fn namespaces_toml(self, toml: &str) -> Self {
        let path = self.file("gateway.toml", toml);
        self.env("GATEWAY_CONFIG", path.display().to_string())
    }

    /// Writes a public key PEM and sets `GATEWAY_JWT_PUBLIC_KEY_FILE`.
    pub fn jwt_public_key_pem(self, pem: &str) -> Self {
        let path = self.file("jwt-public.pem", pem);
        self.env("GATEWAY_JWT_PUBLIC_KEY_FILE", path.display().to_string())
    }

    /// Writes a JWKS document and sets `GATEWAY_JWKS_FILE`.
    pub fn jwks(self, jwks: &Value) -> Self {
        let path = self.file("jwks.json", jwks.to_string());
        self.env("GATEWAY_JWKS_FILE", path.display().to_string())
    }

    /// Uses Redis at `url` as the bus (`GATEWAY_REDIS_URL`).
    pub fn redis_url(self, url: &str) -> Self {
        self.env("GATEWAY_REDIS_URL", url)
    }

    /// Sets the Redis key and channel prefix (`GATEWAY_REDIS_PREFIX`).
    pub fn redis_prefix(self, prefix: &str) -> Self {
        self.env("GATEWAY_REDIS_PREFIX", prefix)
    }

    /// Sets the node id (`GATEWAY_NODE_ID`); by default it is unique per gateway.
    pub fn node_id(self, node_id: &str) -> Self {
        self.env("GATEWAY_NODE_ID", node_id)
    }

    /// Drops the default HMAC secret, for gateways that verify with public keys only.
    pub fn without_jwt_secret(self) -> Self {
        self.unset("GATEWAY_JWT_SECRET")
    }

    /// Drops the default JWT secret and API key: the gateway starts in development mode and
    /// makes up its own.
    pub fn without_keys(self) -> Self {
        self.unset("GATEWAY_JWT_SECRET").unset("GATEWAY_API_KEY")
    }
}

/// A gateway binary running as a child process on two free local ports.
///
/// Killed when dropped; when dropped while the test panics, the last lines of its output are
/// printed and its scratch directory is kept.
#[derive(Debug)]
pub struct TestGateway {
    child: Child,
    pid: u32,
    public: SocketAddr,
    admin: SocketAddr,
    node_id: String,
    api_key: Option<String>,
    http: reqwest::Client,
    log_path: PathBuf,
    _dir: TempDir,
}

impl TestGateway {
    /// Starts a gateway with `config` and waits until `/readyz` answers 200.
    ///
    /// The first call in a test process builds the gateway binary with cargo.
    pub async fn spawn(config: GatewayConfig) -> Self {
        let binary = testkit::binary("gateway");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        let log_path = config.dir.path().join("gateway.log");
        let mut attempt = 1;
        loop {
            let [public, admin] = testkit::free_addrs().unwrap_or_else(|e| panic!("{e}"));
            let mut child = start(&binary, &config, public, admin, &log_path);
            let Some(pid) = child.id() else {
                panic!("gateway exited immediately\n{}", tail(&log_path, "gateway"))
            };
            let level = config.env.get("GATEWAY_LOG").map_or("info", String::as_str);
            let logs_info = !matches!(level, "warn" | "error" | "off");
            match wait_ready(&mut child, &http, admin, &log_path, logs_info).await {
                Ok(()) => {
                    return Self {
                        child,
                        pid,
                        public,
                        admin,
                        node_id: config
                            .env
                            .get("GATEWAY_NODE_ID")
                            .cloned()
                            .unwrap_or_default(),
                        api_key: config.env.get("GATEWAY_API_KEY").cloned(),
                        http,
                        log_path,
                        _dir: config.dir,
                    };
                }
                Err(NotReady::Exited(status)) => {
                    let log = read_log(&log_path);
                    let port_taken = log.contains("in use") || log.contains("AddrInUse");
                    if port_taken && attempt < START_ATTEMPTS {
                        attempt += 1;
                        continue;
                    }
                    panic!(
                        "gateway exited with {status} before it was ready\n{}",
                        tail(&log_path, "gateway")
                    );
                }
                Err(NotReady::TimedOut) => {
                    let _ = child.start_kill();
                    panic!(
                        "gateway not ready (GET http://{admin}/readyz != 200) after {READY_TIMEOUT:?}\n{}",
                        tail(&log_path, "gateway")
                    );
                }
            }
        }
    }

    /// `ws://127.0.0.1:<port>/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// `ws://127.0.0.1:<port>/ws?token=<token>` (a JWT needs no escaping).
    pub fn ws_url_with_token(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.public)
    }

    /// The port of the public listener (on 127.0.0.1).
    pub fn public_port(&self) -> u16 {
        self.public.port()
    }

    /// `http://127.0.0.1:<port>` of the public listener.
    pub fn public_url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// `http://127.0.0.1:<port>` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The admin API key, or `None` in development mode (the gateway made up its own).
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// `GATEWAY_NODE_ID` of this gateway.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Connects a client as `user_id` with a valid token; panics if refused.
    pub async fn connect_as(&self, user_id: &str) -> TestClient {
        self.connect_token(&token(user_id))
            .await
            .unwrap_or_else(|e| panic!("user {user_id} could not connect: {e}"))
    }

    /// Connects a client with `token` in the query string.
    pub async fn connect_token(&self, token: &str) -> Result<TestClient, HandshakeFailure> {
        TestClient::connect(&self.ws_url_with_token(token)).await
    }

    /// Sends SIGTERM (start draining).
    pub fn terminate(&self) {
        let pid = self.pid.to_string();
        match std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("kill -TERM {pid} failed: {status}"),
            Err(e) => panic!("cannot run kill -TERM {pid}: {e}"),
        }
    }

    /// Waits for the process to exit; panics with its output after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("cannot wait for the gateway: {e}"),
            Err(_) => panic!(
                "gateway still running {timeout:?} after being asked to stop\n{}",
                tail(&self.log_path, "gateway")
            ),
        }
    }

    /// Sends SIGKILL and waits for the process to go.
    pub async fn kill(&mut self) {
        if let Err(e) = self.child.kill().await {
            panic!("cannot kill the gateway: {e}");
        }
    }

    /// `POST /api/publish` with the API key.
    pub async fn publish(&self, body: Value) -> (StatusCode, Value) {
        self.post_admin("/api/publish", body).await
    }

    /// `POST /api/publish` that must answer 200; returns the reply.
    pub async fn publish_ok(&self, body: Value) -> Value {
        let (status, reply) = self.publish(body.clone()).await;
        assert_eq!(status, StatusCode::OK, "publish {body} answered {reply}");
        reply
    }

    /// `POST /api/publish/batch` with the API key.
    pub async fn publish_batch(&self, items: Value) -> (StatusCode, Value) {
        self.post_admin("/api/publish/batch", items).await
    }

    /// `POST <path>` on the admin listener with the API key.
    pub async fn post_admin(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let key = self.api_key.clone();
        self.post_admin_with_key(path, key.as_deref(), body).await
    }

    /// `POST <path>` on the admin listener with `Authorization: Bearer <key>`, or none.
    pub async fn post_admin_with_key(
        &self,
        path: &str,
        key: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.admin_url()))
            .json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        json_reply(request, path).await
    }

    /// `GET <path>` on the admin listener with the API key; the body as JSON (or as a JSON
    /// string if it is not JSON).
    pub async fn get_admin(&self, path: &str) -> (StatusCode, Value) {
        let mut request = self.http.get(format!("{}{path}", self.admin_url()));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        json_reply(request, path).await
    }

    /// The status of `GET <path>` on the admin listener, or `None` if nothing answered.
    pub async fn admin_status(&self, path: &str) -> Option<StatusCode> {
        let url = format!("{}{path}", self.admin_url());
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        response.ok().map(|r| r.status())
    }

    /// `GET <path>` on the public listener: status and body text.
    pub async fn get_public(&self, path: &str) -> (StatusCode, String) {
        let url = format!("{}{path}", self.public_url());
        let response = match self.http.get(&url).send().await {
            Ok(response) => response,
            Err(e) => panic!("GET {url} failed: {e}\n{}", tail(&self.log_path, "gateway")),
        };
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.admin_url());
        let response = match self.http.get(&url).send().await {
            Ok(response) => response,
            Err(e) => panic!("GET {url} failed: {e}\n{}", tail(&self.log_path, "gateway")),
        };
        assert_eq!(response.status(), StatusCode::OK, "GET {url}");
        response.text().await.unwrap_or_default()
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- gateway {} (pid {}) ----\n{}",
                self.node_id,
                self.pid,
                tail(&self.log_path, "gateway")
            );
        }
    }
}

async fn json_reply(request: reqwest::RequestBuilder, path: &str) -> (StatusCode, Value) {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => panic!("admin request {path} failed: {e}"),
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

enum NotReady {
    Exited(ExitStatus),
    TimedOut,
}

/// Waits until the child has bound its listeners and `/readyz` answers 200. The log line
/// matters: a free port can be taken by another test's gateway between the pick and the bind,
/// and that gateway answers `/readyz` too. Where the log level hides it (`warn`, `error`), the
/// child must still be running a moment after the answer instead.
async fn wait_ready(
    child: &mut Child,
    http: &reqwest::Client,
    admin: SocketAddr,
    log_path: &Path,
    logs_info: bool,
) -> Result<(), NotReady> {
    let url = format!("http://{admin}/readyz");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        let response = http.get(&url).timeout(Duration::from_secs(1)).send().await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            if !logs_info {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(NotReady::Exited(status));
                }
                return Ok(());
            }
            if read_log(log_path).contains("gateway listening") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(NotReady::TimedOut);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn start(
    binary: &Path,
    config: &GatewayConfig,
    public: SocketAddr,
    admin: SocketAddr,
    log_path: &Path,
) -> Child {
    let log = File::create(log_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone the log file handle: {e}"));
    let mut command = Command::new(binary);
    // Nothing from the test environment leaks in: no stray GATEWAY_* setting.
    command.env_clear();
    for inherited in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(inherited) {
            command.env(inherited, value);
        }
    }
    command
        .env("RUST_BACKTRACE", "1")
        // Plain text in the captured log (tracing-subscriber honours NO_COLOR).
        .env("NO_COLOR", "1")
        .envs(&config.env)
        .env("GATEWAY_LISTEN", public.to_string())
        .env("GATEWAY_ADMIN_LISTEN", admin.to_string())
        .current_dir(config.dir.path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
}

/// A process's log file as text (empty if unreadable).
pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last lines of a process's output (`what`: gateway, prometheus), framed for a panic
/// message.
pub(crate) fn tail(path: &Path, what: &str) -> String {
    let log = read_log(path);
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    format!(
        "---- last {} lines of {} ----\n{}\n---- end of {what} output ----",
        lines.len() - start,
        path.display(),
        lines[start..].join("\n")
    )
}

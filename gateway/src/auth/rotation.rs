//! Key sets that change while the gateway runs: `GATEWAY_JWKS_FILE`, re-read when the file
//! changes, and `GATEWAY_JWKS_URL`, fetched on a schedule and when a token names a key id that
//! no key set holds. A load that fails keeps the last good keys: a key set is never emptied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounter, IntGauge};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::AuthError;
use super::keys::{Jwks, JwksError, Policy, file_jwks, load_jwks, parse_jwks};

/// How often the metadata of `GATEWAY_JWKS_FILE` is checked for a change.
pub(crate) const FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Longest one fetch of `GATEWAY_JWKS_URL` may take, connecting included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document taken from the URL.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// When `GATEWAY_JWKS_URL` is fetched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// Interval of the scheduled fetches (`GATEWAY_JWKS_REFRESH_INTERVAL`).
    pub interval: Duration,
    /// Least time between two fetches for tokens with an unknown key id
    /// (`GATEWAY_JWKS_MIN_REFRESH_INTERVAL`).
    pub min_interval: Duration,
}

impl Default for RefreshSchedule {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5 * 60),
            min_interval: Duration::from_secs(30),
        }
    }
}

/// Why `GATEWAY_JWKS_URL` gave no usable key set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: the connection failed, timed out or broke off.
    #[error("{}", request_hint(.0))]
    Request(#[source] reqwest::Error),
    /// An answer other than 2xx.
    #[error("the endpoint answered HTTP {0}")]
    Status(StatusCode),
    /// A body over [`MAX_JWKS_BYTES`].
    #[error("the document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Not a JWKS document.
    #[error("not a JWKS document: {0}")]
    Json(#[source] serde_json::Error),
    /// A key the backend cannot use, or no signature key at all.
    #[error("{}", super::key_error_hint(.0))]
    Key(#[source] jsonwebtoken::errors::Error),
}

impl From<JwksError> for FetchError {
    fn from(error: JwksError) -> Self {
        match error {
            JwksError::Json(e) => Self::Json(e),
            JwksError::Key(e) => Self::Key(e),
        }
    }
}

/// What a failed request comes down to, in a few words and its innermost cause.
fn request_hint(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within {}s", FETCH_TIMEOUT.as_secs());
    }
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "cannot read the answer"
    } else {
        "request failed"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    format!("{what}: {cause}")
}

/// `gateway_jwks_refreshes_total` by result and `gateway_jwks_keys`; the default counts nothing.
#[derive(Clone, Default)]
pub(crate) struct JwksMetrics(Option<(IntCounter, IntCounter, IntGauge)>);

impl JwksMetrics {
    /// Counts into `ok` and `error` and keeps `keys` at the number of keys held.
    pub(crate) fn new(ok: IntCounter, error: IntCounter, keys: IntGauge) -> Self {
        Self(Some((ok, error, keys)))
    }

    fn loaded(&self, ok: bool) {
        if let Some((ok_total, error_total, _)) = &self.0 {
            if ok { ok_total } else { error_total }.inc();
        }
    }

    fn keys_changed(&self, by: i64) {
        if let Some((_, _, keys)) = &self.0 {
            keys.add(by);
        }
    }
}

/// A key set read on every verify and replaced whole by a reload. A std lock is fine here: it
/// is held only to clone or swap the `Arc`, never across an `.await`.
pub(super) struct KeySet {
    held: RwLock<(u64, Arc<Jwks>)>,
    next_load: AtomicU64,
    metrics: JwksMetrics,
}

impl KeySet {
    fn new(keys: Jwks, metrics: JwksMetrics) -> Self {
        metrics.keys_changed(count(&keys));
        Self {
            held: RwLock::new((0, Arc::new(keys))),
            next_load: AtomicU64::new(1),
            metrics,
        }
    }

    /// The keys now.
    pub(super) fn current(&self) -> Arc<Jwks> {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&held.1)
    }

    /// A number for a load about to start, so that a slow load never replaces a later one.
    fn start_load(&self) -> u64 {
        self.next_load.fetch_add(1, Ordering::Relaxed)
    }

    /// Replaces the keys with those of load `load`, unless a later load already did; returns
    /// the keys replaced.
    fn replace(&self, load: u64, keys: Jwks) -> Option<Arc<Jwks>> {
        let by = count(&keys);
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        if held.0 > load {
            return None;
        }
        let old = std::mem::replace(&mut *held, (load, Arc::new(keys))).1;
        drop(held);
        self.metrics.keys_changed(by - count(&old));
        Some(old)
    }
}

fn count(keys: &Jwks) -> i64 {
    i64::try_from(keys.keys.len()).unwrap_or(i64::MAX)
}

/// Logs a successful load of `keys` into `set` from `source`: at info when the key ids changed.
fn log_loaded(set: &KeySet, load: u64, keys: Jwks, source: &str) {
    let ids: Vec<String> = keys.key_ids().into_iter().map(str::to_owned).collect();
    set.metrics.loaded(true);
    match set.replace(load, keys) {
        Some(old) if old.key_ids() != ids => {
            tracing::info!(source, kids = ?ids, "JWKS loaded: key set changed");
        }
        _ => tracing::debug!(source, kids = ?ids, "JWKS loaded: unchanged"),
    }
}

/// What tells a changed file from the one last read: following symlinks, so that a
/// Kubernetes ConfigMap's swap of its `..data` link is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    async fn of(path: &Path) -> Option<Self> {
        tokio::fs::metadata(path).await.ok().map(Self::from)
    }
}

impl From<std::fs::Metadata> for FileStamp {
    fn from(metadata: std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode,
        }
    }
}

/// `GATEWAY_JWKS_FILE`: read at start, and again each time its metadata changes.
pub(super) struct FileKeys {
    path: PathBuf,
    policy: Policy,
    pub(super) keys: KeySet,
    stamp: Mutex<Option<FileStamp>>,
}

impl FileKeys {
    /// Reads the file at startup; errors name it and what is wrong.
    pub(super) fn open(
        path: &Path,
        policy: &Policy,
        metrics: JwksMetrics,
    ) -> Result<Self, AuthError> {
        let stamp = std::fs::metadata(path).ok().map(FileStamp::from);
        let keys = load_jwks(path, policy)?;
        metrics.loaded(true);
        Ok(Self {
            path: path.to_owned(),
            policy: policy.clone(),
            keys: KeySet::new(keys, metrics),
            stamp: Mutex::new(stamp),
        })
    }

    /// Re-reads the file if it changed since the last look. A file that does not load keeps
    /// the last good keys and is logged once, until it changes again.
    pub(super) async fn reload_if_changed(&self) {
        let stamp = FileStamp::of(&self.path).await;
        {
            let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
            if *last == stamp {
                return;
            }
            *last = stamp;
        }
        let load = self.keys.start_load();
        let source = self.path.display().to_string();
        match read_jwks_file(&self.path, &self.policy).await {
            Ok(keys) => log_loaded(&self.keys, load, keys, &source),
            Err(error) => {
                self.keys.metrics.loaded(false);
                tracing::error!(%error, "JWKS file changed but does not load: keeping the last good keys");
            }
        }
    }
}

async fn read_jwks_file(path: &Path, policy: &Policy) -> Result<Jwks, AuthError> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|source| AuthError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
    file_jwks(path, &text, policy)
}

/// `GATEWAY_JWKS_URL`: fetched at start, on its schedule, and for tokens with an unknown `kid`.
pub(super) struct RemoteKeys {
    url: String,
    /// The URL as logs show it: without its password, if it has one.
    shown: String,
    client: reqwest::Client,
    policy: Policy,
    schedule: RefreshSchedule,
    pub(super) keys: KeySet,
    /// The fetch for unknown key ids: whether one is running and when the last one started.
    flight: Mutex<(bool, Option<Instant>)>,
    /// Bumped when a fetch for unknown key ids ends, so that the tokens waiting on it go on.
    landed: watch::Sender<u64>,
}

impl RemoteKeys {
    /// The endpoint at `url`, with no keys until [`fetch_first`](Self::fetch_first).
    pub(super) fn new(
        url: &str,
        policy: &Policy,
        schedule: RefreshSchedule,
        metrics: JwksMetrics,
    ) -> Result<Self, AuthError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| url_error(&without_password(url), FetchError::Request(e)))?;
        Ok(Self {
            url: url.to_owned(),
            shown: without_password(url),
            client,
            policy: policy.clone(),
            schedule,
            keys: KeySet::new(Jwks { keys: Vec::new() }, metrics),
            flight: Mutex::new((false, None)),
            landed: watch::Sender::new(0),
        })
    }

    /// The fetch at startup: without its keys the gateway does not start.
    pub(super) async fn fetch_first(&self) -> Result<(), AuthError> {
        let load = self.keys.start_load();
        match self.fetch().await {
            Ok(keys) => {
                log_loaded(&self.keys, load, keys, &self.shown);
                Ok(())
            }
            Err(error) => {
                self.keys.metrics.loaded(false);
                Err(url_error(&self.shown, error))
            }
        }
    }

    /// Fetches the document again; a failure keeps the last good keys and is logged.
    pub(super) async fn refresh(&self) {
        let load = self.keys.start_load();
        match self.fetch().await {
            Ok(keys) => log_loaded(&self.keys, load, keys, &self.shown),
            Err(error) => {
                self.keys.metrics.loaded(false);
                let error = url_error(&self.shown, error);
                tracing::warn!(%error, "JWKS refresh failed: keeping the last good keys");
            }
        }
    }

    /// For a token whose `kid` no key set holds: fetches the document again, unless a fetch
    /// for that reason started less than the min interval ago, and waits for it. Concurrent
    /// tokens share one fetch, which runs in its own task so that a client that goes away does
    /// not cancel it for the others.
    pub(super) async fn refresh_for_unknown_kid(self: &Arc<Self>) {
        let mut landed = self.landed.subscribe();
        {
            let mut flight = self.flight.lock().unwrap_or_else(PoisonError::into_inner);
            let (running, last_started) = &mut *flight;
            if !*running {
                let min = self.schedule.min_interval;
                if last_started.is_some_and(|at| at.elapsed() < min) {
                    return;
                }
                *running = true;
                *last_started = Some(Instant::now());
                let remote = Arc::clone(self);
                tokio::spawn(async move {
                    remote.refresh().await;
                    remote
                        .flight
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .0 = false;
                    remote.landed.send_modify(|n| *n = n.wrapping_add(1));
                });
            }
        }
        // The fetch is bounded by its own timeout; this bound only guards against a lost wake-up.
        let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, landed.changed()).await;
    }

    /// One GET of the document, its body bounded, parsed into keys.
    async fn fetch(&self) -> Result<Jwks, FetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(FetchError::Request)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(FetchError::Request)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(parse_jwks(&body, &self.policy)?)
    }
}

/// `url` with its password, if any, replaced by `***`, for logs and error messages.
pub(super) fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn url_error(url: &str, source: FetchError) -> AuthError {
    AuthError::JwksUrl {
        url: url.to_owned(),
        source,
    }
}

/// Runs until `stop` turns true or its sender is dropped: re-reads the file when it changes
/// and fetches the URL on its schedule.
pub(super) async fn keep_fresh(
    file: Option<Arc<FileKeys>>,
    remote: Option<Arc<RemoteKeys>>,
    mut stop: watch::Receiver<bool>,
) {
    let poll_file = async {
        if let Some(file) = file {
            let mut tick = every(FILE_POLL_INTERVAL);
            loop {
                tick.tick().await;
                file.reload_if_changed().await;
            }
        }
    };
    let refresh_url = async {
        if let Some(remote) = remote {
            let mut tick = every(remote.schedule.interval);
            loop {
                tick.tick().await;
                remote.refresh().await;
            }
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        _ = async { tokio::join!(poll_file, refresh_url) } => {}
    }
}

/// Ticks every `period` (at least a millisecond), the first one period from now.
fn every(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

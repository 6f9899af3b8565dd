//! Scenario 8, fallback: the HTTP transports (`GET /sse`, `GET /poll`) next to the WebSocket,
//! in one run, each measured on a fresh gateway of its own (one Redis for all):
//!
//! 1. gateway memory per idle WebSocket, per idle SSE stream and per waiting long-poll, each
//!    of N clients on its personal channel, a group channel and one channel they all follow;
//! 2. what an event to that shared channel costs the gateway per delivery over a WebSocket and
//!    over SSE;
//! 3. how many first polls (no cursor: answered at once) a closed loop of pollers gets from
//!    one gateway per second, and per gateway CPU-second.
//!
//! The WebSockets are the bench's usual clients in worker processes, as in `idle`. The SSE
//! streams and the polls are tasks of this process, over the minimal HTTP/1.1 client at the end
//! of this file, so they share this process's 20,000 open files.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use jsonwebtoken::{EncodingKey, Header};
use publisher::Publisher;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Bench, gateway_cpu, latency_rows, progress};
use crate::client::{micros, socket_addr_of};
use crate::fleet::{Fleet, histogram_of};
use crate::load;
use crate::measure::{self, Latency, metric_sum, redis_cpu_seconds, unix_nanos};
use crate::plan::{Plan, Spread};
use crate::procs::{Gateway, JWT_SECRET, Redis};
use crate::report::{Report, Unit};

/// Options of the fallback scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FallbackArgs {
    /// Idle clients of each kind: WebSockets, SSE streams, waiting polls [default: 5000;
    /// smoke: 50]. SSE streams and polls are held by this process: at most 19,000.
    #[arg(long)]
    streams: Option<usize>,
    /// Members of each group channel.
    #[arg(long, default_value_t = 10)]
    group_size: usize,
    /// Wait after the last client is in before reading the gateway's memory [default: 2s;
    /// smoke: 500ms].
    #[arg(long)]
    settle: Option<humantime::Duration>,
    /// SSE streams and first polls being opened at once.
    #[arg(long, default_value_t = 32)]
    open_concurrency: usize,
    /// Events published to the channel every WebSocket and SSE stream follows, after one that
    /// is not measured [default: 20; smoke: 5].
    #[arg(long)]
    events: Option<u64>,
    /// Events per second of that publishing.
    #[arg(long, default_value_t = 5.0)]
    event_rate: f64,
    /// Size of each event's data in bytes.
    #[arg(long, default_value_t = 100)]
    event_bytes: usize,
    /// Pollers of the request loop, each one keep-alive connection with one poll in flight
    /// [default: 32; smoke: 4].
    #[arg(long)]
    pollers: Option<usize>,
    /// How long the request loop is measured, after a warm-up of a second (smoke: 300 ms)
    /// [default: 10s; smoke: 1s].
    #[arg(long)]
    duration: Option<humantime::Duration>,
}

const LABEL: &str = "fallback";
/// The channel every idle client follows, to publish to.
const ALL: &str = "fb-all";
/// The most SSE streams or polls this process holds (its 20,000 open files, less room).
const MAX_IN_PROCESS: usize = 19_000;
/// Longest an SSE stream or a first poll may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// What a waiting poll asks for: the longest wait the gateway allows.
const WAIT_MS: u64 = 60_000;
/// Deliveries are complete when this passes with none.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for the deliveries of the events published.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);
/// Lifetime of the tokens.
const TOKEN_LIFETIME_S: u64 = 6 * 3600;

/// What holding N idle clients cost one gateway.
struct Idle {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    rss_before: u64,
    rss_after: u64,
    /// Gateway CPU while they opened.
    open_cpu: f64,
    open_elapsed: Duration,
    /// Connect → subscribed, µs.
    open_latency: Option<Latency>,
}

impl Idle {
    fn rss_per_client(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.ok.max(1) as f64
    }

    fn cpu_per_open_us(&self) -> f64 {
        self.open_cpu * 1e6 / self.ok.max(1) as f64
    }
}

/// What events to the shared channel cost.
struct Delivery {
    events: u64,
    expected: u64,
    delivered: u64,
    gateway_cpu: f64,
    client_cpu: f64,
    latency: Option<Latency>,
}

impl Delivery {
    fn gateway_us(&self) -> f64 {
        self.gateway_cpu * 1e6 / self.delivered.max(1) as f64
    }

    fn client_us(&self) -> f64 {
        self.client_cpu * 1e6 / self.delivered.max(1) as f64
    }
}

/// N polls waiting at once.
struct Waiting {
    ok: usize,
    failed: usize,
    first_error: Option<String>,
    rss_before: u64,
    /// After every first poll, with their keep-alive connections open.
    rss_connections: u64,
    rss_after: u64,
    /// `gateway_connections` while they wait.
    in_flight: f64,
    /// Waiting polls answered before the memory was read (should be none).
    answered_early: u64,
}

/// The closed loop of first polls.
struct Rate {
    pollers: usize,
    window: Duration,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    gateway_cpu: f64,
    redis_cpu: f64,
    client_cpu: f64,
    latency: Option<Latency>,
}

pub(crate) async fn run(bench: &Bench, args: &FallbackArgs) -> Result<Report> {
    let n = bench.pick(args.streams, 5_000, 50);
    if n > MAX_IN_PROCESS {
        bail!(
            "--streams {n}: this process holds the SSE streams and polls, {MAX_IN_PROCESS} at most"
        );
    }
    let events = bench.pick(args.events, 20, 5);
    let pollers = bench.pick(args.pollers, 32, 4);
    let duration = bench.pick(
        args.duration.map(Into::into),
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let redis = Redis::start().await?;

    let (ws, ws_delivery, workers) = websockets(bench, args, &redis, n, events).await?;
    let (sse, sse_delivery) = sse_streams(bench, args, &redis, n, events).await?;
    let waiting = waiting_polls(bench, args, &redis, n).await?;
    let rate = poll_rate(bench, args, &redis, pollers, duration).await?;

    let mut report = Report::new(
        LABEL,
        format!(
            "{n} idle WebSockets / SSE streams / waiting polls, each on a fresh gateway; \
             first polls in a closed loop"
        ),
        bench.smoke,
    );
    report.param("clients", n);
    report.param("group_size", args.group_size);
    report.param("ws_workers", workers);
    report.param("events", events);
    report.param("event_bytes", args.event_bytes);
    report.param("pollers", pollers);
    report.param("poll_window_s", rate.window.as_secs_f64());
    idle_rows(&mut report, "WebSocket", "connection", &ws);
    idle_rows(&mut report, "SSE", "stream", &sse);
    report.add(
        "SSE / WebSocket: RSS per client",
        sse.rss_per_client() / ws.rss_per_client().max(1.0),
        Unit::Ratio,
    );
    waiting_rows(&mut report, &waiting);
    delivery_rows(&mut report, "WebSocket", &ws_delivery);
    delivery_rows(&mut report, "SSE", &sse_delivery);
    if ws_delivery.gateway_cpu > 0.0 && sse_delivery.gateway_cpu > 0.0 {
        report.add(
            "SSE / WebSocket: gateway CPU per delivery",
            sse_delivery.gateway_us() / ws_delivery.gateway_us(),
            Unit::Ratio,
        );
    } else {
        report.unavailable(
            "SSE / WebSocket: gateway CPU per delivery",
            "too little CPU time to tell (10 ms ticks)",
            Unit::Ratio,
            None,
        );
    }
    rate_rows(&mut report, &rate);
    report.note(format!(
        "every idle client is on its personal channel, grp-<i/{}> and {ALL}; RSS per client is \
         (after − before) ÷ clients on a gateway of its own, {} after the last one is in",
        args.group_size,
        humantime::format_duration(settle(bench, args))
    ));
    report.note(
        "the SSE streams and polls are tasks of the bench's driver process; its CPU is the SSE \
         and poll clients' (it also publishes)",
    );
    Ok(report)
}

fn idle_rows(report: &mut Report, kind: &str, what: &str, idle: &Idle) {
    report.add(
        &format!("{kind}: {what}s established"),
        idle.ok as f64,
        Unit::Count,
    );
    report.add(
        &format!("{kind}: gateway RSS per {what}"),
        idle.rss_per_client(),
        Unit::Bytes,
    );
    report.add(
        &format!("{kind}: gateway RSS before"),
        idle.rss_before as f64,
        Unit::Bytes,
    );
    report.add(
        &format!("{kind}: gateway RSS after"),
        idle.rss_after as f64,
        Unit::Bytes,
    );
    report.add(
        &format!("{kind}: gateway CPU per {what} opened"),
        idle.cpu_per_open_us(),
        Unit::Micros,
    );
    report.add(
        &format!("{kind}: open rate"),
        idle.ok as f64 / idle.open_elapsed.as_secs_f64().max(1e-9),
        Unit::PerSecond,
    );
    latency_rows(
        report,
        &format!("{kind}: connect → subscribed"),
        idle.open_latency,
        None,
    );
    if let Some(error) = &idle.first_error {
        report.note(format!("{kind}: {} failed; first: {error}", idle.failed));
    }
}

fn waiting_rows(report: &mut Report, waiting: &Waiting) {
    report.add("long-poll: polls waiting", waiting.ok as f64, Unit::Count);
    report.add(
        "long-poll: gateway_connections while they wait",
        waiting.in_flight,
        Unit::Count,
    );
    let per = |rss: u64| rss.saturating_sub(waiting.rss_before) as f64 / waiting.ok.max(1) as f64;
    report.add(
        "long-poll: gateway RSS per waiting poll",
        per(waiting.rss_after),
        Unit::Bytes,
    );
    report.add(
        "long-poll: of which its idle keep-alive connection",
        per(waiting.rss_connections),
        Unit::Bytes,
    );
    report.add(
        "long-poll: answered before the memory was read",
        waiting.answered_early as f64,
        Unit::Count,
    );
    if let Some(error) = &waiting.first_error {
        report.note(format!(
            "long-poll: {} failed; first: {error}",
            waiting.failed
        ));
    }
}

fn delivery_rows(report: &mut Report, kind: &str, delivery: &Delivery) {
    report.add(
        &format!("{kind}: deliveries of {} events", delivery.events),
        delivery.delivered as f64,
        Unit::Count,
    );
    report.add(
        &format!("{kind}: delivered / expected"),
        delivery.delivered as f64 * 100.0 / delivery.expected.max(1) as f64,
        Unit::Percent,
    );
    report.add(
        &format!("{kind}: gateway CPU per delivery"),
        delivery.gateway_us(),
        Unit::Micros,
    );
    report.add(
        &format!("{kind}: clients' CPU per delivery"),
        delivery.client_us(),
        Unit::Micros,
    );
    latency_rows(
        report,
        &format!("{kind}: publish → client"),
        delivery.latency,
        None,
    );
}

fn rate_rows(report: &mut Report, rate: &Rate) {
    let seconds = rate.window.as_secs_f64().max(1e-9);
    let per_1000 = |cpu: f64| cpu * 1000.0 / rate.requests.max(1) as f64;
    report.add(
        "long-poll: first polls per second",
        rate.requests as f64 / seconds,
        Unit::PerSecond,
    );
    report.add(
        "long-poll: gateway CPU per 1000 polls",
        per_1000(rate.gateway_cpu),
        Unit::CpuSeconds,
    );
    report.add(
        "long-poll: polls per gateway CPU-second (per core)",
        rate.requests as f64 / rate.gateway_cpu.max(1e-9),
        Unit::PerSecond,
    );
    report.add(
        "long-poll: gateway CPU used (of one core)",
        rate.gateway_cpu / seconds * 100.0,
        Unit::Percent,
    );
    report.add(
        "long-poll: Redis CPU per 1000 polls",
        per_1000(rate.redis_cpu),
        Unit::CpuSeconds,
    );
    report.add(
        "long-poll: pollers' CPU per 1000 polls",
        per_1000(rate.client_cpu),
        Unit::CpuSeconds,
    );
    latency_rows(report, "long-poll: first poll", rate.latency, None);
    report.add("long-poll: failed polls", rate.errors as f64, Unit::Count);
    if let Some(error) = &rate.first_error {
        report.note(format!("long-poll loop: first failure: {error}"));
    }
    report.note(format!(
        "the loop: {} pollers, each one keep-alive connection asking GET /poll without a cursor \
         (connection_established + subscribed, at once) as soon as its last answer came",
        rate.pollers
    ));
}

// ---------------------------------------------------------------------------------------------
// The phases.

/// How long the clients sit before the gateway's memory is read.
fn settle(bench: &Bench, args: &FallbackArgs) -> Duration {
    bench.pick(
        args.settle.map(Into::into),
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
}

/// The channels client `i` names (its personal channel comes by itself).
fn channels_of(i: usize, group_size: usize) -> String {
    match i.checked_div(group_size) {
        Some(group) => format!("{ALL},grp-{group}"),
        None => ALL.to_owned(),
    }
}

/// HS256 tokens for users `u<first>` … `u<first + count - 1>`.
fn tokens(first: usize, count: usize) -> Result<Vec<String>> {
    #[derive(Serialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let exp = unix_nanos() / 1_000_000_000 + TOKEN_LIFETIME_S;
    (first..first + count)
        .map(|i| {
            let claims = Claims {
                sub: Plan::user(i),
                exp,
            };
            jsonwebtoken::encode(&Header::default(), &claims, &key).context("minting a token")
        })
        .collect()
}

fn public_addr(gateway: &Gateway) -> Result<SocketAddr> {
    socket_addr_of(&gateway.ws_url())
}

/// Publishes `events` to [`ALL`] at the scenario's rate; returns (events, deliveries due).
async fn publish(
    redis: &Redis,
    args: &FallbackArgs,
    events: u64,
    subscribers: usize,
) -> Result<(u64, u64)> {
    let publisher = Publisher::connect(&redis.url())?;
    let rate = args.event_rate.max(0.1);
    // Half an event's period more, so that the last one falls due within the run.
    let duration = Duration::from_secs_f64((events as f64 + 0.5) / rate);
    let published = load::paced(
        &publisher,
        rate,
        duration,
        args.event_bytes,
        Some(LABEL),
        || (ALL.to_owned(), subscribers as u64),
    )
    .await?;
    Ok((published.events, published.expected_deliveries))
}

/// N WebSockets with the bench's clients, as `idle` opens them; then events to [`ALL`].
async fn websockets(
    bench: &Bench,
    args: &FallbackArgs,
    redis: &Redis,
    n: usize,
    events: u64,
) -> Result<(Idle, Delivery, usize)> {
    let label = format!("{LABEL}-ws");
    let gateways = bench.gateways(redis, 1, &label, |spec| spec).await?;
    let gateway = &gateways[0];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gateway.rss()?;
    let mut plan = bench.fleet.plan(vec![gateway.ws_url()], Spread::First, n);
    plan.group_size = args.group_size;
    plan.channels = vec![ALL.into()];
    let mut fleet = Fleet::start(&label, &bench.fleet, &plan).await?;
    let workers = fleet.worker_count();
    let cpu_before = gateway_cpu(&gateways)?;
    let connected = fleet.connect().await?;
    let open_cpu = gateway_cpu(&gateways)? - cpu_before;
    tokio::time::sleep(settle(bench, args)).await;
    let idle = Idle {
        ok: connected.ok,
        failed: connected.failed,
        first_error: connected.first_error.clone(),
        rss_before,
        rss_after: gateway.rss()?,
        open_cpu,
        open_elapsed: connected.elapsed,
        open_latency: Latency::of(&connected.handshake),
    };
    progress(
        &label,
        &format!("{} WebSockets; {events} events to {ALL}", connected.ok),
    );
    // One event first, not measured: a first delivery allocates what the later ones reuse.
    let before = fleet.deliveries().await?;
    let (_, expected) = publish(redis, args, 1, connected.ok).await?;
    fleet
        .wait_deliveries(before + expected, QUIET, DELIVERY_LIMIT)
        .await?;
    fleet.snapshot().await?;
    let before = fleet.deliveries().await?;
    let cpu_before = (gateway_cpu(&gateways)?, fleet.cpu_seconds()?);
    let (published, expected) = publish(redis, args, events, connected.ok).await?;
    let delivered = fleet
        .wait_deliveries(before + expected, QUIET, DELIVERY_LIMIT)
        .await?
        - before;
    let gateway_cpu = gateway_cpu(&gateways)? - cpu_before.0;
    let client_cpu = fleet.cpu_seconds()? - cpu_before.1;
    let snapshot = fleet.snapshot().await?;
    super::finish(gateways, fleet).await;
    let delivery = Delivery {
        events: published,
        expected,
        delivered,
        gateway_cpu,
        client_cpu,
        latency: Latency::of(&histogram_of(&snapshot.latency)),
    };
    Ok((idle, delivery, workers))
}

/// What the SSE streams of this process have seen.
struct SseShared {
    opened: AtomicUsize,
    failed: AtomicUsize,
    events: AtomicU64,
    first_error: Mutex<Option<String>>,
    open_latency: Mutex<Histogram<u64>>,
    latency: Mutex<Histogram<u64>>,
}

impl SseShared {
    fn new() -> Self {
        Self {
            opened: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            first_error: Mutex::new(None),
            open_latency: Mutex::new(measure::histogram()),
            latency: Mutex::new(measure::histogram()),
        }
    }

    fn fail(&self, error: &anyhow::Error) {
        note_failure(&self.first_error, &self.failed, error);
    }

    /// Waits until the streams have seen `expected` events in all, or none came for
    /// [`QUIET`], at most [`DELIVERY_LIMIT`]; returns the count.
    async fn wait_events(&self, expected: u64) -> u64 {
        let deadline = Instant::now() + DELIVERY_LIMIT;
        let mut last = (self.events.load(Ordering::Relaxed), Instant::now());
        while last.0 < expected && Instant::now() < deadline && last.1.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.events.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        last.0
    }

    fn done(&self) -> usize {
        self.opened.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// Records a failure of one client into `first` and counts it.
fn note_failure(first: &Mutex<Option<String>>, failed: &AtomicUsize, error: &anyhow::Error) {
    if let Ok(mut first) = first.lock() {
        first.get_or_insert_with(|| format!("{error:#}"));
    }
    failed.fetch_add(1, Ordering::Relaxed);
}

/// One SSE stream: open it, then count the bench's events until it ends.
async fn sse_client(
    addr: SocketAddr,
    path: String,
    shared: Arc<SseShared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let opened = tokio::time::timeout(OPEN_TIMEOUT, SseStream::open(addr, &path)).await;
    drop(permit);
    let mut stream = match opened {
        Ok(Ok(stream)) => {
            if let Ok(mut h) = shared.open_latency.lock() {
                measure::record(&mut h, micros(started.elapsed()));
            }
            shared.opened.fetch_add(1, Ordering::Relaxed);
            stream
        }
        Ok(Err(error)) => return shared.fail(&error),
        Err(_) => return shared.fail(&anyhow::anyhow!("not subscribed within {OPEN_TIMEOUT:?}")),
    };
    while let Ok(Some(data)) = stream.next_message().await {
        if let Some(sent_ns) = sent_ns_of(&data) {
            let latency_us = unix_nanos().saturating_sub(sent_ns) / 1000;
            if let Ok(mut h) = shared.latency.lock() {
                measure::record(&mut h, latency_us);
            }
            shared.events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The send time in a bench event's data (`"t":<ns>`), if the frame is one.
fn sent_ns_of(frame: &str) -> Option<u64> {
    let rest = &frame[frame.find("\"t\":")? + 4..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// N SSE streams from this process; then events to [`ALL`].
async fn sse_streams(
    bench: &Bench,
    args: &FallbackArgs,
    redis: &Redis,
    n: usize,
    events: u64,
) -> Result<(Idle, Delivery)> {
    let label = format!("{LABEL}-sse");
    let mut gateways = bench.gateways(redis, 1, &label, |spec| spec).await?;
    let gateway = &gateways[0];
    let addr = public_addr(gateway)?;
    let tokens = tokens(0, n)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gateway.rss()?;
    let shared = Arc::new(SseShared::new());
    let limit = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let cpu_before = gateway_cpu(&gateways)?;
    let started = Instant::now();
    let mut last_print = Instant::now();
    for (i, token) in tokens.iter().enumerate() {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let path = format!(
            "/sse?channels={}&token={token}",
            channels_of(i, args.group_size)
        );
        tasks.spawn(sse_client(addr, path, Arc::clone(&shared), permit));
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            progress(&label, &format!("opened {}/{n}", shared.done()));
        }
    }
    while shared.done() < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_elapsed = started.elapsed();
    let open_cpu = gateway_cpu(&gateways)? - cpu_before;
    let ok = shared.opened.load(Ordering::Relaxed);
    progress(
        &label,
        &format!("{ok} SSE streams open; {events} events to {ALL}"),
    );
    tokio::time::sleep(settle(bench, args)).await;
    let idle = Idle {
        ok,
        failed: shared.failed.load(Ordering::Relaxed),
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
        rss_before,
        rss_after: gateway.rss()?,
        open_cpu,
        open_elapsed,
        open_latency: shared
            .open_latency
            .lock()
            .ok()
            .and_then(|h| Latency::of(&h)),
    };
    // One event first, not measured, as for the WebSockets.
    let before = shared.events.load(Ordering::Relaxed);
    let (_, expected) = publish(redis, args, 1, ok).await?;
    shared.wait_events(before + expected).await;
    if let Ok(mut h) = shared.latency.lock() {
        h.reset();
    }
    let own = std::process::id();
    let before = shared.events.load(Ordering::Relaxed);
    let cpu_before = (gateway_cpu(&gateways)?, measure::cpu_seconds(own)?);
    let (published, expected) = publish(redis, args, events, ok).await?;
    let delivered = shared.wait_events(before + expected).await - before;
    let delivery = Delivery {
        events: published,
        expected,
        delivered,
        gateway_cpu: gateway_cpu(&gateways)? - cpu_before.0,
        client_cpu: measure::cpu_seconds(own)? - cpu_before.1,
        latency: shared.latency.lock().ok().and_then(|h| Latency::of(&h)),
    };
    // The gateway goes first, so that the TIME_WAIT states stay on its side.
    for gateway in &mut gateways {
        gateway.kill().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tasks.shutdown().await;
    Ok((idle, delivery))
}

/// `{"frames":[…],"cursor":"…"}`.
#[derive(serde::Deserialize)]
struct Answer {
    frames: Vec<serde::de::IgnoredAny>,
    cursor: String,
}

/// A first poll: `connection_established` and `subscribed`, and the cursor.
async fn first_poll(conn: &mut HttpConnection, path: &str) -> Result<String> {
    let (status, body) = conn.get(path).await?;
    if status != 200 {
        bail!(
            "GET /poll answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let answer: Answer = serde_json::from_slice(&body).context("a poll's answer")?;
    if answer.frames.len() < 2 {
        bail!(
            "a first poll answered {} frames, not connection_established and subscribed",
            answer.frames.len()
        );
    }
    Ok(answer.cursor)
}

/// N polls with a cursor and `timeout_ms=60000` in flight at once, from this process.
async fn waiting_polls(
    bench: &Bench,
    args: &FallbackArgs,
    redis: &Redis,
    n: usize,
) -> Result<Waiting> {
    let label = format!("{LABEL}-poll");
    let mut gateways = bench.gateways(redis, 1, &label, |spec| spec).await?;
    let gateway = &gateways[0];
    let addr = public_addr(gateway)?;
    let tokens = tokens(0, n)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gateway.rss()?;

    // First polls, each on the keep-alive connection its waiting poll will use.
    let limit = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let mut opening = JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let permit = Arc::clone(&limit).acquire_owned().await?;
        let channels = channels_of(i, args.group_size);
        let token = token.clone();
        opening.spawn(async move {
            let first = async {
                let mut conn = HttpConnection::connect(addr).await?;
                let cursor = first_poll(
                    &mut conn,
                    &format!("/poll?channels={channels}&token={token}"),
                )
                .await?;
                let wait = format!(
                    "/poll?channels={channels}&token={token}&cursor={cursor}&timeout_ms={WAIT_MS}"
                );
                Ok::<_, anyhow::Error>((conn, wait))
            };
            let result = tokio::time::timeout(OPEN_TIMEOUT, first).await;
            drop(permit);
            result.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {OPEN_TIMEOUT:?}")))
        });
    }
    let first_error = Mutex::new(None);
    let failed = AtomicUsize::new(0);
    let mut ready = Vec::with_capacity(n);
    while let Some(joined) = opening.join_next().await {
        match joined.context("a first poll's task")? {
            Ok(conn) => ready.push(conn),
            Err(error) => note_failure(&first_error, &failed, &error),
        }
    }
    let ok = ready.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connections = gateway.rss()?;
    progress(
        &label,
        &format!("{ok} first polls answered; {ok} waiting polls (timeout_ms={WAIT_MS})"),
    );

    let answered = Arc::new(AtomicU64::new(0));
    let mut waiting = JoinSet::new();
    for (mut conn, path) in ready {
        let answered = Arc::clone(&answered);
        waiting.spawn(async move {
            let _ = conn.get(&path).await;
            answered.fetch_add(1, Ordering::Relaxed);
        });
    }
    // Until the gateway holds every one of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut in_flight = 0.0;
    while Instant::now() < deadline {
        in_flight = metric_sum(&gateway.metrics().await?, "gateway_connections", "");
        if in_flight >= ok as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle(bench, args)).await;
    let rss_after = gateway.rss()?;
    let answered_early = answered.load(Ordering::Relaxed);
    for gateway in &mut gateways {
        gateway.kill().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting.shutdown().await;
    Ok(Waiting {
        ok,
        failed: failed.load(Ordering::Relaxed),
        first_error: first_error.into_inner().ok().flatten(),
        rss_before,
        rss_connections,
        rss_after,
        in_flight,
        answered_early,
    })
}

/// What the pollers of the loop share.
struct Loop {
    stop: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    latency: Mutex<Histogram<u64>>,
}

/// One poller: first polls back to back on one keep-alive connection, reconnecting after a
/// failure.
async fn poller(addr: SocketAddr, path: String, shared: Arc<Loop>) {
    let mut conn = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = async {
            if conn.is_none() {
                conn = Some(HttpConnection::connect(addr).await?);
            }
            match conn.as_mut() {
                Some(c) => first_poll(c, &path).await,
                None => bail!("no connection"),
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, result).await {
            Ok(Ok(_cursor)) => {
                shared.requests.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut h) = shared.latency.lock() {
                    measure::record(&mut h, micros(started.elapsed()));
                }
                if conn.as_ref().is_some_and(|c| c.closed) {
                    conn = None;
                }
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(error)) => error,
                    _ => anyhow::anyhow!("no answer within {OPEN_TIMEOUT:?}"),
                };
                if let Ok(mut first) = shared.first_error.lock() {
                    first.get_or_insert_with(|| format!("{error:#}"));
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The closed loop of first polls against one gateway.
async fn poll_rate(
    bench: &Bench,
    args: &FallbackArgs,
    redis: &Redis,
    pollers: usize,
    window: Duration,
) -> Result<Rate> {
    let label = format!("{LABEL}-rps");
    let warm_up = bench.pick(None, Duration::from_secs(1), Duration::from_millis(300));
    let mut gateways = bench.gateways(redis, 1, &label, |spec| spec).await?;
    let addr = public_addr(&gateways[0])?;
    let shared = Arc::new(Loop {
        stop: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        latency: Mutex::new(measure::histogram()),
    });
    let mut tasks = JoinSet::new();
    for (i, token) in tokens(0, pollers)?.into_iter().enumerate() {
        let path = format!(
            "/poll?channels={}&token={token}",
            channels_of(i, args.group_size)
        );
        tasks.spawn(poller(addr, path, Arc::clone(&shared)));
    }
    progress(
        &label,
        &format!("{pollers} pollers; warm-up {warm_up:?}, then {window:?} measured"),
    );
    tokio::time::sleep(warm_up).await;
    let own = std::process::id();
    let sample = || -> Result<(u64, u64, f64, f64)> {
        Ok((
            shared.requests.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
            gateway_cpu(&gateways)?,
            measure::cpu_seconds(own)?,
        ))
    };
    let before = sample()?;
    let redis_before = redis_cpu_seconds(&redis.url()).await?;
    if let Ok(mut h) = shared.latency.lock() {
        h.reset();
    }
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = sample()?;
    let redis_after = redis_cpu_seconds(&redis.url()).await?;
    let window = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    for gateway in &mut gateways {
        gateway.kill().await?;
    }
    let rate = Rate {
        pollers,
        window,
        requests: after.0 - before.0,
        errors: after.1 - before.1,
        first_error: shared.first_error.lock().ok().and_then(|e| e.clone()),
        gateway_cpu: after.2 - before.2,
        redis_cpu: redis_after - redis_before,
        client_cpu: after.3 - before.3,
        latency: shared.latency.lock().ok().and_then(|h| Latency::of(&h)),
    };
    progress(
        &label,
        &format!(
            "{:.0} polls/s, {:.3} gateway CPU-s per 1000",
            rate.requests as f64 / rate.window.as_secs_f64().max(1e-9),
            rate.gateway_cpu * 1000.0 / rate.requests.max(1) as f64
        ),
    );
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: `GET` with `Host` on a keep-alive connection, a response's status
// line and headers, and its body by `Content-Length` or chunked transfer coding.

/// What a response's head says.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    /// `Connection: close`: the server ends the connection after this response.
    close: bool,
}

/// Reads a status line and headers, up to the blank line.
async fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Head> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        bail!("the connection ended before a response");
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: false,
    };
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the connection ended in a response's headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(head);
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("not a header line: {header:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().context("Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
}

/// The next chunk of a chunked body into `into`; `false` at its end (the last chunk).
async fn read_chunk(reader: &mut BufReader<TcpStream>, into: &mut Vec<u8>) -> Result<bool> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(false);
    }
    let size = line.trim_end().split(';').next().unwrap_or_default();
    let size = usize::from_str_radix(size, 16).with_context(|| format!("chunk size {line:?}"))?;
    if size == 0 {
        // Trailers, if any, up to the blank line.
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                return Ok(false);
            }
        }
    }
    let start = into.len();
    into.resize(start + size, 0);
    reader.read_exact(&mut into[start..]).await?;
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf).await?;
    if &crlf != b"\r\n" {
        bail!("a chunk does not end with CRLF");
    }
    Ok(true)
}

/// A keep-alive connection for `GET` requests.
struct HttpConnection {
    reader: BufReader<TcpStream>,
    host: SocketAddr,
    /// The server said it closes the connection.
    closed: bool,
}

impl HttpConnection {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(Self {
            reader: BufReader::with_capacity(4096, stream),
            host: addr,
            closed: false,
        })
    }

    /// `GET path`: the status and the body.
    async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        if self.closed {
            bail!("the server closed this connection");
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n\r\n",
            self.host
        );
        self.reader.get_mut().write_all(request.as_bytes()).await?;
        let head = read_head(&mut self.reader).await?;
        let mut body = Vec::new();
        if let Some(length) = head.content_length {
            body.resize(length, 0);
            self.reader.read_exact(&mut body).await?;
        } else if head.chunked {
            while read_chunk(&mut self.reader, &mut body).await? {}
        } else {
            bail!("a response with neither Content-Length nor chunked coding");
        }
        self.closed = head.close;
        Ok((head.status, body))
    }
}

/// An open `text/event-stream` response, read message by message.
struct SseStream {
    reader: BufReader<TcpStream>,
    /// Decoded body bytes not read yet, from `pos`.
    buffer: Vec<u8>,
    pos: usize,
}

impl SseStream {
    /// `GET path` and the stream's head: `connection_established`, then `subscribed`.
    async fn open(addr: SocketAddr, path: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        // Small buffers: this process holds thousands of these.
        let mut reader = BufReader::with_capacity(2048, stream);
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        reader.get_mut().write_all(request.as_bytes()).await?;
        let head = read_head(&mut reader).await?;
        if head.status != 200 {
            let mut body = vec![0; head.content_length.unwrap_or(0).min(4096)];
            let _ = reader.read_exact(&mut body).await;
            bail!(
                "GET /sse answered {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        if !head.chunked {
            bail!("GET /sse answered without chunked coding");
        }
        let mut stream = Self {
            reader,
            buffer: Vec::new(),
            pos: 0,
        };
        let first = stream
            .next_message()
            .await?
            .context("the stream ended at once")?;
        if !first.contains("\"type\":\"connection_established\"") {
            bail!("the first message is not connection_established: {first}");
        }
        loop {
            let data = stream.next_message().await?.context("the stream ended")?;
            if data.contains("\"type\":\"subscribed\"") {
                return Ok(stream);
            }
        }
    }

    /// The `data` of the next message that has one (comments such as `: ping` are skipped);
    /// `None` when the stream ends.
    async fn next_message(&mut self) -> Result<Option<String>> {
        let mut data: Option<String> = None;
        loop {
            while let Some(n) = self.buffer[self.pos..].iter().position(|&b| b == b'\n') {
                let line = &self.buffer[self.pos..self.pos + n];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                self.pos += n + 1;
                if line.is_empty() {
                    if let Some(data) = data.take() {
                        return Ok(Some(data));
                    }
                } else if let Some(value) = line.strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    let value = String::from_utf8_lossy(value);
                    match &mut data {
                        Some(data) => {
                            data.push('\n');
                            data.push_str(&value);
                        }
                        None => data = Some(value.into_owned()),
                    }
                }
                // `id:`, `retry:`, `event:` and comments say nothing the bench counts.
            }
            self.buffer.drain(..self.pos);
            self.pos = 0;
            if !read_chunk(&mut self.reader, &mut self.buffer).await? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_time_is_read_from_a_bench_event() {
        let frame = r#"{"type":"bench","channel":"fb-all","timestamp":"2026-12-02T00:00:00Z","data":{"t":1780000000000000000,"pad":"x"}}"#;
        assert_eq!(sent_ns_of(frame), Some(1_780_000_000_000_000_000));
        assert_eq!(sent_ns_of(r#"{"type":"subscribed"}"#), None);
    }

    /// Serves `responses` in turn on one connection, each after a request's blank line.
    async fn serve(responses: Vec<String>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut socket = BufReader::new(socket);
            for response in responses {
                let mut line = String::new();
                while socket.read_line(&mut line).await.unwrap() > 0 && line != "\r\n" {
                    line.clear();
                }
                socket
                    .get_mut()
                    .write_all(response.as_bytes())
                    .await
                    .unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn sse_messages_are_read_across_chunks() {
        let chunks = [
            "id: 1\nretry: 2000\ndata: {\"type\":\"connection_established\"}\n\n",
            ": ping\n\nid: 2\nda",
            "ta: {\"type\":\"subscribed\"}\n",
            "\n",
            "id: 3\ndata: {\"t\":5}\n\n",
        ];
        let mut response = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            Transfer-Encoding: chunked\r\n\r\n"
            .to_owned();
        for chunk in chunks {
            response.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        response.push_str("0\r\n\r\n");
        let addr = serve(vec![response]).await;
        let mut stream = SseStream::open(addr, "/sse").await.unwrap();
        let data = stream.next_message().await.unwrap();
        assert_eq!(data.as_deref(), Some("{\"t\":5}"));
        assert_eq!(stream.next_message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn polls_share_a_keep_alive_connection() {
        let body = r#"{"frames":[{"type":"connection_established"},{"type":"subscribed"}],"cursor":"1.e30"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let addr = serve(vec![answer.clone(), answer]).await;
        let mut conn = HttpConnection::connect(addr).await.unwrap();
        assert_eq!(first_poll(&mut conn, "/poll").await.unwrap(), "1.e30");
        assert_eq!(first_poll(&mut conn, "/poll").await.unwrap(), "1.e30");
    }

    #[test]
    fn channels_name_the_shared_and_the_group_channel() {
        assert_eq!(channels_of(25, 10), "fb-all,grp-2");
        assert_eq!(channels_of(25, 0), "fb-all");
    }
}

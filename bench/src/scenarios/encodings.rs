//! Scenario 10, encodings: what each wire encoding costs per delivery. Four encodings (JSON,
//! MessagePack, and each with permessage-deflate) × two event sizes (100 B and 4 KiB of a job's
//! progress as JSON data), each cell on a fresh gateway with N clients of one channel: bytes on
//! the wire per delivery (TCP payload the clients read), its ratio to JSON's at the same size,
//! and the gateway's CPU per delivery (`/proc`), all deliveries accounted for.
//!
//! The clients are tasks of this process over testkit's raw WebSocket client, which negotiates
//! permessage-deflate (the bench's tungstenite clients cannot) and counts the bytes it reads.
//! The gateway's CPU is its own process's, so the clients' work does not enter it. Since one
//! compression per event is lost in the writes of 2,000 deliveries, the bench also times
//! compressing such events itself, the way the gateway does, on a thread of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use publisher::{Event, Publisher};
use serde_json::{Map, Value, json};
use testkit::{Offer, RawWebSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Bench, gateway_cpu, progress};
use crate::load::EVENT;
use crate::measure;
use crate::plan::Plan;
use crate::procs::{JWT_SECRET, Redis};
use crate::report::{Report, Target, Unit};
use crate::worker::mint;

/// Options of the encodings scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EncodingsArgs {
    /// Clients of the channel in each cell [default: 2000; smoke: 50].
    #[arg(long)]
    clients: Option<usize>,
    /// Events per second to the channel [default: 10; smoke: 40].
    #[arg(long)]
    event_rate: Option<f64>,
    /// How long each cell publishes [default: 10s; smoke: 1s].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Sizes of the events' data in bytes of JSON.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 4096])]
    sizes: Vec<usize>,
    /// The encodings measured, JSON first (the ratios' baseline) [default: all four].
    #[arg(long, value_enum, value_delimiter = ',')]
    encodings: Option<Vec<Encoding>>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
}

const LABEL: &str = "encodings";
/// The channel every client follows.
const CHANNEL: &str = "enc";
/// A text frame's opcode (RFC 6455 section 5.2).
const OPCODE_TEXT: u8 = 0x1;
/// Longest a client's connect, handshake and subscribe may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Events compressed by the deflate probe at each size.
const PROBE_ROUNDS: usize = 2_000;
/// The gateway's `GATEWAY_WS_COMPRESSION_MIN_BYTES` default: smaller payloads go uncompressed.
const MIN_BYTES: usize = 256;
/// Deliveries are complete when this passes with none.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for the deliveries of the events published.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// A wire encoding: the frames' format, compressed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Encoding {
    /// JSON text frames.
    Json,
    /// MessagePack binary frames.
    Msgpack,
    /// JSON, compressed.
    #[value(name = "json+deflate")]
    JsonDeflate,
    /// MessagePack, compressed.
    #[value(name = "msgpack+deflate")]
    MsgpackDeflate,
}

impl Encoding {
    /// Every encoding, JSON first: the baseline of the ratios.
    const ALL: [Self; 4] = [
        Self::Json,
        Self::Msgpack,
        Self::JsonDeflate,
        Self::MsgpackDeflate,
    ];

    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Msgpack => "msgpack",
            Self::JsonDeflate => "json+deflate",
            Self::MsgpackDeflate => "msgpack+deflate",
        }
    }

    /// Whether its frames are MessagePack.
    fn msgpack(self) -> bool {
        matches!(self, Self::Msgpack | Self::MsgpackDeflate)
    }

    /// Whether it negotiates permessage-deflate.
    fn deflate(self) -> bool {
        matches!(self, Self::JsonDeflate | Self::MsgpackDeflate)
    }

    /// The `/ws` path and query of a client with `token`.
    fn path(self, token: &str) -> String {
        let format = if self.msgpack() {
            "&format=msgpack"
        } else {
            ""
        };
        format!("/ws?token={token}{format}")
    }

    /// What its clients offer in the handshake.
    fn offer(self) -> Offer {
        if self.deflate() {
            Offer::deflate()
        } else {
            Offer {
                extensions: None,
                subprotocols: None,
            }
        }
    }
}

/// The figures of one cell: one encoding at one event size.
struct Cell {
    /// The encoding measured.
    encoding: Encoding,
    /// Bytes of JSON data per event.
    size: usize,
    /// Events measured (the unmeasured first one not counted).
    events: u64,
    /// Deliveries those events owe: events × clients.
    expected: u64,
    /// Deliveries the clients received.
    delivered: u64,
    /// Deliveries whose frame came compressed (RSV1).
    compressed: u64,
    /// TCP payload bytes the clients read while the events came.
    wire_bytes: u64,
    /// The gateway's CPU seconds over the window.
    gateway_cpu: f64,
    /// This process's CPU over the same window: the clients' (and the publisher's).
    client_cpu: f64,
}

impl Cell {
    /// Bytes on the wire per delivery.
    fn bytes_per_delivery(&self) -> f64 {
        self.wire_bytes as f64 / self.delivered.max(1) as f64
    }

    /// Gateway CPU per delivery, µs.
    fn gateway_us(&self) -> f64 {
        self.gateway_cpu * 1e6 / self.delivered.max(1) as f64
    }

    /// Gateway CPU per event published, µs.
    fn gateway_us_per_event(&self) -> f64 {
        self.gateway_cpu * 1e6 / self.events.max(1) as f64
    }

    /// Client CPU per delivery, µs.
    fn client_us(&self) -> f64 {
        self.client_cpu * 1e6 / self.delivered.max(1) as f64
    }

    /// The cell's name: `4 KiB msgpack+deflate`.
    fn name(&self) -> String {
        format!("{} {}", size_label(self.size), self.encoding.name())
    }
}

/// What a cell's clients have seen, counted by all of them.
#[derive(Default)]
struct Tally {
    /// Clients subscribed.
    ready: AtomicUsize,
    /// Clients that failed before the cell ended.
    failed: AtomicUsize,
    /// The first failure's message.
    first_error: Mutex<Option<String>>,
    /// Data frames since the subscribe reply.
    delivered: AtomicU64,
    /// Those of them that came compressed.
    compressed: AtomicU64,
    /// Bytes read since the subscribe reply.
    wire_bytes: AtomicU64,
    /// Set when the cell ends: errors from then on are the gateway going away.
    ending: AtomicBool,
}

impl Tally {
    /// Counts a client's failure, keeping the first one's message.
    fn fail(&self, error: &anyhow::Error) {
        if self.ending.load(Ordering::Relaxed) {
            return;
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{error:#}"));
        }
    }

    /// (delivered, compressed, bytes read) so far.
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.compressed.load(Ordering::Relaxed),
            self.wire_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Runs the scenario: each size with each encoding, one cell after another, on one Redis.
pub(crate) async fn run(bench: &Bench, args: &EncodingsArgs) -> Result<Report> {
    let clients = bench.pick(args.clients, 2_000, 50).max(1);
    let rate = bench.pick(args.event_rate, 10.0, 40.0).max(0.1);
    let duration = bench.pick(
        args.duration.map(Into::into),
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    let redis = Redis::start().await?;
    let tokens = (0..clients)
        .map(|i| mint(JWT_SECRET, &Plan::user(i)))
        .collect::<Result<Vec<_>>>()?;
    let load = Load {
        rate,
        duration,
        concurrency: args.connect_concurrency.max(1),
    };
    let encodings = args
        .encodings
        .clone()
        .unwrap_or_else(|| Encoding::ALL.to_vec());
    let mut cells = Vec::new();
    for &size in &args.sizes {
        for &encoding in &encodings {
            let cell = run_cell(bench, &redis, &tokens, &load, encoding, size).await?;
            progress(
                LABEL,
                &format!(
                    "  {}: {} of {} delivered, {:.1} B per delivery, {:.2} gateway µs per delivery",
                    cell.name(),
                    cell.delivered,
                    cell.expected,
                    cell.bytes_per_delivery(),
                    cell.gateway_us()
                ),
            );
            cells.push(cell);
        }
    }
    let mut probes = Vec::new();
    for &size in &args.sizes {
        let probe = tokio::task::spawn_blocking(move || deflate_probe(size))
            .await
            .context("the deflate probe")??;
        probes.push(probe);
    }
    let mut report = report(bench, &load, clients, &cells);
    probe_figures(&mut report, &probes, clients);
    Ok(report)
}

/// What compressing one event costs, timed in this process the way the gateway does it.
struct Probe {
    /// Bytes of JSON data per event.
    size: usize,
    /// The event frame's JSON payload, mean bytes.
    plain: f64,
    /// Its compressed payload, mean bytes.
    compressed: f64,
    /// CPU per compression, µs.
    cpu_us: f64,
}

/// Compresses [`PROBE_ROUNDS`] event payloads of `size` bytes of data as the gateway does
/// (flate2 at level 1, one compressor reset for each message, a sync flush, raw DEFLATE),
/// timing this thread's CPU over the compressions alone.
fn deflate_probe(size: usize) -> Result<Probe> {
    use flate2::{Compress, Compression, FlushCompress};
    let payloads: Vec<Vec<u8>> = (0..PROBE_ROUNDS)
        .map(|_| {
            let frame = json!({
                "type": EVENT,
                "channel": CHANNEL,
                "timestamp": "2026-12-02T15:07:32.123Z",
                "data": job_progress(size),
            });
            frame.to_string().into_bytes()
        })
        .collect();
    let mut compressor = Compress::new(Compression::new(1), false);
    let mut out = Vec::with_capacity(size * 2 + 64);
    let mut compressed = 0;
    let started = super::floor::thread_cpu()?;
    for payload in &payloads {
        compressor.reset();
        out.clear();
        compressor
            .compress_vec(payload, &mut out, FlushCompress::Sync)
            .context("deflate")?;
        compressed += out.len().saturating_sub(4);
    }
    let cpu = super::floor::thread_cpu()? - started;
    let plain: usize = payloads.iter().map(Vec::len).sum();
    Ok(Probe {
        size,
        plain: plain as f64 / PROBE_ROUNDS as f64,
        compressed: compressed as f64 / PROBE_ROUNDS as f64,
        cpu_us: cpu * 1e6 / PROBE_ROUNDS as f64,
    })
}

/// The probe's figures: per event, and per delivery at `clients` subscribers.
fn probe_figures(report: &mut Report, probes: &[Probe], clients: usize) {
    for probe in probes {
        let what = format!("{} JSON event", size_label(probe.size));
        if probe.plain < MIN_BYTES as f64 {
            report.unavailable(
                &format!("{what}: deflate CPU per event (bench-timed)"),
                "not compressed: under 256 B",
                Unit::Micros,
                None,
            );
            continue;
        }
        report.add(
            &format!("{what}: deflate CPU per event (bench-timed)"),
            probe.cpu_us,
            Unit::Micros,
        );
        report.add(
            &format!("{what}: the same per delivery at {clients} clients"),
            probe.cpu_us / clients.max(1) as f64,
            Unit::Micros,
        );
        report.add(
            &format!("{what}: payload, plain → deflated"),
            probe.compressed / probe.plain.max(1.0),
            Unit::Ratio,
        );
    }
    report.note(
        "deflate CPU per event is timed in the bench process (this thread's CPU), compressing \
         the event frames' JSON as the gateway does it: flate2 level 1, a reused compressor, \
         a sync flush",
    );
}

/// How each cell's events are published and its clients connected.
struct Load {
    /// Events per second.
    rate: f64,
    /// How long the measured events are published.
    duration: Duration,
    /// Handshakes in flight.
    concurrency: usize,
}

/// One cell: a fresh gateway, its clients, one event not measured, then the measured events.
async fn run_cell(
    bench: &Bench,
    redis: &Redis,
    tokens: &[String],
    load: &Load,
    encoding: Encoding,
    size: usize,
) -> Result<Cell> {
    let label = format!("{LABEL}-{}-{size}", encoding.name().replace('+', "-"));
    let mut gateways = bench
        .gateways(redis, 1, &label, |spec| {
            // No heartbeats within a cell: their pings would count as event bytes.
            let spec = spec.env("GATEWAY_HEARTBEAT_INTERVAL", "5m");
            if encoding.deflate() {
                spec.env("GATEWAY_WS_COMPRESSION", "on")
            } else {
                spec
            }
        })
        .await?;
    let port = gateways[0].public_port();
    let tally = Arc::new(Tally::default());
    let tasks = connect(port, encoding, tokens, load.concurrency, &tally).await?;
    progress(
        &label,
        &format!(
            "{} clients subscribed; {:.0} events/s of {} for {:?}",
            tokens.len(),
            load.rate,
            size_label(size),
            load.duration
        ),
    );
    let publisher = Publisher::connect(&redis.url())?;
    // One event first, not measured: a first delivery allocates what the later ones reuse.
    publish(&publisher, size, 1, load.rate).await?;
    let clients = tokens.len() as u64;
    wait_deliveries(&tally, clients).await;
    let before = tally.counts();
    let cpu_before = (gateway_cpu(&gateways)?, own_cpu()?);
    let events = ((load.rate * load.duration.as_secs_f64()).round() as u64).max(1);
    publish(&publisher, size, events, load.rate).await?;
    let expected = clients * (events + 1);
    let after = wait_deliveries(&tally, expected).await;
    let gateway_cpu = gateway_cpu(&gateways)? - cpu_before.0;
    let client_cpu = own_cpu()? - cpu_before.1;
    tally.ending.store(true, Ordering::Relaxed);
    for gateway in &mut gateways {
        let _ = gateway.kill().await;
    }
    // Let the clients see their connections end, so that the TIME_WAITs stay on the
    // gateway's side; then they go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tasks);
    if tally.failed.load(Ordering::Relaxed) > 0 {
        bail!(
            "{label}: a client failed after subscribing: {}",
            first_error(&tally)
        );
    }
    Ok(Cell {
        encoding,
        size,
        events,
        expected: clients * events,
        delivered: after.0 - before.0,
        compressed: after.1 - before.1,
        wire_bytes: after.2 - before.2,
        gateway_cpu,
        client_cpu,
    })
}

/// This process's CPU seconds.
fn own_cpu() -> Result<f64> {
    measure::cpu_seconds(std::process::id())
}

/// The first client error of a cell, or a placeholder.
fn first_error(tally: &Tally) -> String {
    tally
        .first_error
        .lock()
        .ok()
        .and_then(|first| first.clone())
        .unwrap_or_else(|| "no message".to_owned())
}

/// Connects a client per token, at most `concurrency` handshakes at once, and waits until all
/// are subscribed; fails when any could not (a deflate cell that did not negotiate, say).
async fn connect(
    port: u16,
    encoding: Encoding,
    tokens: &[String],
    concurrency: usize,
    tally: &Arc<Tally>,
) -> Result<JoinSet<()>> {
    let handshakes = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for token in tokens {
        let path = encoding.path(token);
        let tally = Arc::clone(tally);
        let handshakes = Arc::clone(&handshakes);
        tasks.spawn(async move {
            if let Err(error) = client(port, &path, encoding, &tally, &handshakes).await {
                tally.fail(&error);
            }
        });
    }
    let deadline = Instant::now() + OPEN_TIMEOUT + Duration::from_secs(60);
    loop {
        let ready = tally.ready.load(Ordering::Relaxed);
        let failed = tally.failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!(
                "{} of {} {} clients failed to open: {}",
                failed,
                tokens.len(),
                encoding.name(),
                first_error(tally)
            );
        }
        if ready == tokens.len() {
            return Ok(tasks);
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready} of {} clients subscribed in time",
                tokens.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One client: opens (holding a handshake permit), then counts every data frame it reads.
async fn client(
    port: u16,
    path: &str,
    encoding: Encoding,
    tally: &Tally,
    handshakes: &Semaphore,
) -> Result<()> {
    let mut ws = {
        let _permit = handshakes.acquire().await.context("handshake permits")?;
        tokio::time::timeout(OPEN_TIMEOUT, open(port, path, encoding))
            .await
            .with_context(|| format!("not subscribed within {OPEN_TIMEOUT:?}"))??
    };
    let mut read = ws.bytes_read();
    tally.ready.fetch_add(1, Ordering::Relaxed);
    loop {
        let frame = ws.next_data().await.context("reading an event")?;
        let now = ws.bytes_read();
        tally.wire_bytes.fetch_add(now - read, Ordering::Relaxed);
        read = now;
        if frame.compressed {
            tally.compressed.fetch_add(1, Ordering::Relaxed);
        }
        tally.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects with `encoding`'s offer, checks what was negotiated, reads
/// `connection_established`, subscribes to [`CHANNEL`] and reads the reply.
async fn open(port: u16, path: &str, encoding: Encoding) -> Result<RawWebSocket> {
    let (mut ws, handshake) = RawWebSocket::connect(port, path, &encoding.offer())
        .await
        .context("connecting")?;
    if handshake.status != 101 {
        bail!("the upgrade answered {}", handshake.status);
    }
    if ws.deflate() != encoding.deflate() {
        bail!(
            "permessage-deflate {} for {} (the 101's Sec-WebSocket-Extensions: {:?}); is \
             the gateway built with compression, and GATEWAY_WS_COMPRESSION on?",
            if ws.deflate() {
                "negotiated"
            } else {
                "not negotiated"
            },
            encoding.name(),
            handshake.header("sec-websocket-extensions")
        );
    }
    let first = ws.next_data().await.context("reading the first frame")?;
    if !contains(&first.payload, b"connection_established") {
        bail!(
            "the first frame is not connection_established: {:?}",
            text(&first.payload)
        );
    }
    // Text frames are read in either format; the replies come in the connection's.
    let subscribe = format!(r#"{{"type":"subscribe","id":1,"channels":["{CHANNEL}"]}}"#);
    ws.send(OPCODE_TEXT, subscribe.as_bytes(), false)
        .await
        .context("sending subscribe")?;
    loop {
        let reply = ws.next_data().await.context("waiting for subscribed")?;
        if contains(&reply.payload, b"subscribed") {
            return Ok(ws);
        }
        if contains(&reply.payload, b"error") {
            bail!("subscribe refused: {:?}", text(&reply.payload));
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A payload for an error message (MessagePack shows its strings too).
fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned()
}

/// Waits until `expected` deliveries have arrived, or none for [`QUIET`], or
/// [`DELIVERY_LIMIT`]; returns the counts then.
async fn wait_deliveries(tally: &Tally, expected: u64) -> (u64, u64, u64) {
    let started = Instant::now();
    let mut last = (tally.counts().0, Instant::now());
    loop {
        let counts = tally.counts();
        if counts.0 >= expected || started.elapsed() > DELIVERY_LIMIT {
            return counts;
        }
        if counts.0 != last.0 {
            last = (counts.0, Instant::now());
        } else if last.1.elapsed() > QUIET {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `events` events of `size` bytes of data to [`CHANNEL`], `rate` a second.
async fn publish(publisher: &Publisher, size: usize, events: u64, rate: f64) -> Result<()> {
    let started = Instant::now();
    for k in 0..events {
        tokio::time::sleep_until(started + Duration::from_secs_f64(k as f64 / rate)).await;
        let event = Event::to_channel(CHANNEL, EVENT, &job_progress(size))
            .context("an event for the channel")?;
        publisher
            .publish(&event)
            .await
            .context("publishing to Redis")?;
    }
    Ok(())
}

/// Words of the events' notes and messages, so that their text compresses as text does.
const WORDS: &[&str] = &[
    "segment",
    "encoded",
    "uploaded",
    "retrying",
    "bitrate",
    "chunk",
    "verified",
    "queued",
    "thumbnail",
    "worker",
    "region",
    "manifest",
    "audio",
    "video",
    "track",
    "normalised",
    "checksum",
    "written",
    "cache",
    "miss",
    "frames",
    "keyframe",
    "at",
    "of",
    "the",
    "in",
];
/// The stages of a job.
const STAGES: &[&str] = &[
    "fetch",
    "probe",
    "transcode",
    "thumbnail",
    "package",
    "upload",
    "verify",
];

/// `n` random lowercase hex digits.
fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16)]))
        .collect()
}

/// Random words, `len` bytes exactly.
fn words(len: usize) -> String {
    let mut out = String::with_capacity(len + 12);
    while out.len() < len {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[rand::random_range(0..WORDS.len())]);
    }
    out.truncate(len);
    out
}

/// A random stage name.
fn stage() -> &'static str {
    STAGES[rand::random_range(0..STAGES.len())]
}

/// An event's data, `size` bytes of JSON: a job's progress with ids, numbers and a note, and
/// at larger sizes its steps (worker, times, messages) and artifacts (URLs, sizes, SHA-256s),
/// random per event, as many as fit; the note fills it to the byte.
fn job_progress(size: usize) -> Value {
    let job = hex(12);
    let mut data = Map::new();
    data.insert("job".into(), json!(job));
    data.insert("state".into(), json!("running"));
    data.insert(
        "pct".into(),
        json!(f64::from(rand::random_range(0..1000_u16)) / 10.0),
    );
    data.insert("stage".into(), json!(stage()));
    data.insert("note".into(), json!(""));
    let len = |data: &Map<String, Value>| Value::Object(data.clone()).to_string().len();
    if len(&data) + 200 < size {
        data.insert("steps".into(), json!([]));
        data.insert("artifacts".into(), json!([]));
        for n in 0.. {
            let (key, item) = if n % 2 == 0 {
                ("steps", step(n / 2))
            } else {
                ("artifacts", artifact(&job, n / 2))
            };
            let Some(Value::Array(items)) = data.get_mut(key) else {
                break;
            };
            items.push(item);
            if len(&data) + 2 > size {
                if let Some(Value::Array(items)) = data.get_mut(key) {
                    items.pop();
                }
                break;
            }
        }
    }
    let room = size.saturating_sub(len(&data));
    data.insert("note".into(), json!(words(room)));
    Value::Object(data)
}

/// A step of a job, the `n`th.
fn step(n: usize) -> Value {
    let status = ["done", "running", "queued"][rand::random_range(0..3)];
    json!({
        "n": n,
        "name": stage(),
        "status": status,
        "worker": format!("worker-{}.eu-west-1.internal", rand::random_range(1..40)),
        "started_at": format!(
            "2026-12-03T10:{:02}:{:02}.{:03}Z",
            rand::random_range(0..60),
            rand::random_range(0..60),
            rand::random_range(0..1000)
        ),
        "duration_ms": rand::random_range(5..90_000),
        "attempt": rand::random_range(1..3),
        "message": words(rand::random_range(20..60)),
    })
}

/// An artifact of job `job`, the `n`th.
fn artifact(job: &str, n: usize) -> Value {
    json!({
        "url": format!("https://cdn.example.com/jobs/{job}/part-{n:04}.mp4"),
        "bytes": rand::random_range(10_000..50_000_000),
        "sha256": hex(64),
    })
}

/// `100 B`, `4 KiB`.
fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// The report: per cell, bytes and gateway CPU per delivery and the deliveries, and the matrix
/// with the ratios to JSON at the same size.
fn report(bench: &Bench, load: &Load, clients: usize, cells: &[Cell]) -> Report {
    let mut report = Report::new(
        LABEL,
        format!(
            "{clients} clients of one channel per cell, JSON / MessagePack / each with \
             permessage-deflate, at each event size"
        ),
        bench.smoke,
    );
    report.param("clients", clients);
    report.param("event_rate", load.rate);
    report.param("deliveries_per_s", load.rate * clients as f64);
    report.param("duration_s", load.duration.as_secs_f64());
    report.param(
        "sizes",
        cells
            .iter()
            .map(|c| c.size)
            .collect::<std::collections::BTreeSet<_>>(),
    );
    let rows = cells
        .iter()
        .map(|cell| {
            let json = cells
                .iter()
                .find(|c| c.size == cell.size && c.encoding == Encoding::Json);
            cell_figures(&mut report, cell, json)
        })
        .collect();
    report.series(
        &[
            "size",
            "encoding",
            "delivered",
            "expected",
            "compressed %",
            "B/delivery",
            "B vs JSON",
            "gateway µs/delivery",
            "µs vs JSON",
            "gateway µs/event",
            "clients µs/delivery",
        ],
        rows,
    );
    report.note(
        "bytes are what the clients read from their sockets while the events came (frame \
         headers and payloads); gateway CPU is utime + stime of its process over the same \
         window; the clients' CPU is this process's (it also publishes)",
    );
    report.note(
        "the gateway compresses once per event per format, so its cost per delivery is the \
         per-event cost ÷ the clients; frames under GATEWAY_WS_COMPRESSION_MIN_BYTES (256) \
         go uncompressed",
    );
    report
}

/// A cell's figures, next to `json`'s (the same size's JSON cell, if measured); returns its
/// line of the matrix.
fn cell_figures(report: &mut Report, cell: &Cell, json: Option<&Cell>) -> Vec<Value> {
    let name = cell.name();
    report.add(
        &format!("{name}: bytes on the wire per delivery"),
        cell.bytes_per_delivery(),
        Unit::Bytes,
    );
    let bytes_ratio = json.map(|j| cell.bytes_per_delivery() / j.bytes_per_delivery().max(1e-9));
    if let Some(ratio) = bytes_ratio {
        report.add(&format!("{name}: bytes vs JSON"), ratio, Unit::Ratio);
    }
    report.add(
        &format!("{name}: gateway CPU per delivery"),
        cell.gateway_us(),
        Unit::Micros,
    );
    report.add_target(
        &format!("{name}: delivered / expected"),
        cell.delivered as f64 / cell.expected.max(1) as f64,
        Unit::Ratio,
        Target::AtLeast(1.0),
    );
    let cpu_ratio = json.map(|j| cell.gateway_us() / j.gateway_us().max(1e-9));
    row(cell, bytes_ratio, cpu_ratio)
}

/// One line of the matrix.
fn row(cell: &Cell, bytes_ratio: Option<f64>, cpu_ratio: Option<f64>) -> Vec<Value> {
    let round = |value: f64, places: i32| {
        let scale = 10_f64.powi(places);
        json!((value * scale).round() / scale)
    };
    let ratio = |value: Option<f64>| value.map_or(Value::Null, |v| round(v, 3));
    vec![
        json!(size_label(cell.size)),
        json!(cell.encoding.name()),
        json!(cell.delivered),
        json!(cell.expected),
        round(
            cell.compressed as f64 * 100.0 / cell.delivered.max(1) as f64,
            1,
        ),
        round(cell.bytes_per_delivery(), 1),
        ratio(bytes_ratio),
        round(cell.gateway_us(), 2),
        ratio(cpu_ratio),
        round(cell.gateway_us_per_event(), 1),
        round(cell.client_us(), 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_has_the_size_asked() {
        for size in [100, 300, 1000, 4096, 16_384] {
            let data = job_progress(size);
            assert_eq!(data.to_string().len(), size, "{data}");
        }
        let big = job_progress(4096);
        assert!(
            big["steps"].as_array().is_some_and(|s| s.len() >= 5),
            "{big}"
        );
        assert!(
            big["artifacts"].as_array().is_some_and(|a| a.len() >= 5),
            "{big}"
        );
    }

    #[test]
    fn encodings_ask_for_their_format_and_offer_deflate_when_compressed() {
        assert_eq!(Encoding::Json.path("t"), "/ws?token=t");
        assert_eq!(
            Encoding::MsgpackDeflate.path("t"),
            "/ws?token=t&format=msgpack"
        );
        assert!(Encoding::JsonDeflate.offer().extensions.is_some());
        assert!(Encoding::Msgpack.offer().extensions.is_none());
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(100), "100 B");
    }
}

//! One load-generating WebSocket client: connect from a chosen source address, handshake,
//! subscribe, then read events and record their latency; optionally stop reading (a slow
//! consumer) or reconnect elsewhere when its gateway goes away.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::measure::unix_nanos;
use crate::stats::Shared;

type Ws = WebSocketStream<TcpStream>;

/// Source ports the bench hands out, in `[FIRST_PORT, LAST_PORT]`.
const FIRST_PORT: u16 = 10_000;
const LAST_PORT: u16 = 65_000;

/// Binds `socket` to `source` and a port of the bench's choosing. Leaving the port to the
/// kernel makes every connect search the ephemeral range for a free 4-tuple, which costs more
/// the more connections one address holds (it was most of a worker's CPU at 19,000). Ports are
/// taken in turn from a random start, skipping those in use.
fn bind_source(socket: &TcpSocket, source: Ipv4Addr) -> Result<()> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    let span = u32::from(LAST_PORT - FIRST_PORT) + 1;
    let start = *START.get_or_init(|| rand::random_range(0..span));
    // Another socket's TIME_WAIT on a port does not block a new, different 4-tuple.
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    let mut last_error = None;
    for _ in 0..64 {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = FIRST_PORT + u16::try_from(offset).unwrap_or(0);
        match socket.bind(SocketAddr::from((source, port))) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error).with_context(|| format!("binding to {source}:{port}")),
        }
    }
    Err(last_error.map_or_else(|| anyhow::anyhow!("no port"), anyhow::Error::from))
        .with_context(|| format!("no free source port on {source}"))
}

/// Longest a connection attempt (TCP, upgrade, first frame, subscribe) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Reconnection attempts before a client gives up.
const RECONNECT_ATTEMPTS: u32 = 100;

/// What slow consumers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlowMode {
    /// Read like everyone.
    Reading,
    /// Hold the socket without reading.
    Stopped,
    /// Read one frame at a time, with a pause before each.
    Trickle,
    /// Read again until the connection ends.
    Resumed,
}

/// One client: who it is, where it connects from and to, and what it subscribes to.
pub(crate) struct Client {
    pub(crate) index: usize,
    pub(crate) token: String,
    pub(crate) channels: Vec<String>,
    pub(crate) source: Ipv4Addr,
    pub(crate) targets: Arc<Vec<(String, SocketAddr)>>,
    pub(crate) target: usize,
    pub(crate) slow: bool,
    pub(crate) recv_buffer: Option<u32>,
    /// The pause before each read of a slow consumer in [`SlowMode::Trickle`].
    pub(crate) trickle: Duration,
    pub(crate) reconnect_jitter_ms: Option<u64>,
}

/// A frame from the gateway; only the fields the bench looks at.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Option<Probe>,
    #[serde(default)]
    recovered: Option<BTreeMap<String, bool>>,
}

/// The bench's event data: `t` is the send time in Unix nanoseconds.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    t: Option<u64>,
}

/// What the subscribe reply said about recovery.
pub(crate) enum Recovery {
    /// Not asked (no positions to recover from) or not answered.
    Absent,
    Recovered,
    NotRecovered,
}

struct Opened {
    ws: Ws,
    established_ns: u64,
    subscribed_ns: u64,
    recovery: Recovery,
}

impl Client {
    /// Connects (holding `permit` only while handshaking), then reads until the worker exits,
    /// reconnecting if so configured.
    pub(crate) async fn run(
        mut self,
        shared: Arc<Shared>,
        permit: tokio::sync::OwnedSemaphorePermit,
        mut slow: watch::Receiver<SlowMode>,
    ) {
        let mut positions: HashMap<String, (u64, String)> = HashMap::new();
        let started = Instant::now();
        let opened = self.open(&shared, &positions).await;
        drop(permit);
        let mut ws = match opened {
            Ok(opened) => {
                shared.connected(micros(started.elapsed()));
                opened.ws
            }
            Err(error) => {
                shared.fail(&error);
                return;
            }
        };
        loop {
            shared.opened();
            let ending = self.read(&mut ws, &shared, &mut slow, &mut positions).await;
            shared.closed(ending);
            let Some(jitter_ms) = self.reconnect_jitter_ms else {
                return;
            };
            let lost_ns = unix_nanos();
            let delay = rand::random_range(0..=jitter_ms);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            match self.reopen(&shared, &positions).await {
                Some(opened) => {
                    shared.reconnected(
                        opened.established_ns,
                        opened.subscribed_ns,
                        lost_ns,
                        opened.recovery,
                    );
                    ws = opened.ws;
                }
                None => return,
            }
        }
    }

    async fn reopen(
        &mut self,
        shared: &Shared,
        positions: &HashMap<String, (u64, String)>,
    ) -> Option<Opened> {
        for attempt in 0..RECONNECT_ATTEMPTS {
            self.target = (self.target + 1) % self.targets.len().max(1);
            match self.open(shared, positions).await {
                Ok(opened) => return Some(opened),
                Err(_) => {
                    let backoff = 50 * u64::from(attempt.min(20));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
        None
    }

    /// TCP from the source address, WebSocket upgrade, `connection_established`, then
    /// `subscribe` (with `since` where positions are known) and its `subscribed` reply.
    async fn open(
        &self,
        shared: &Shared,
        positions: &HashMap<String, (u64, String)>,
    ) -> Result<Opened> {
        tokio::time::timeout(OPEN_TIMEOUT, self.open_unbounded(shared, positions))
            .await
            .with_context(|| format!("no subscribed reply within {OPEN_TIMEOUT:?}"))?
    }

    async fn open_unbounded(
        &self,
        shared: &Shared,
        positions: &HashMap<String, (u64, String)>,
    ) -> Result<Opened> {
        let (url, addr) = self
            .targets
            .get(self.target)
            .context("no gateway to connect to")?;
        let socket = TcpSocket::new_v4().context("socket")?;
        if let Some(size) = self.recv_buffer {
            socket.set_recv_buffer_size(size).context("SO_RCVBUF")?;
        }
        bind_source(&socket, self.source)?;
        let stream = socket
            .connect(*addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        // Small buffers: a worker holds up to ~19,000 of these.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let request = format!("{url}?token={}", self.token);
        let (mut ws, _) = client_async_with_config(request, stream, Some(config))
            .await
            .context("WebSocket upgrade")?;
        let first = next_text(&mut ws).await?;
        let frame: Frame<'_> = serde_json::from_str(&first).context("first frame")?;
        if frame.kind != "connection_established" {
            bail!("first frame is not connection_established: {first}");
        }
        let established_ns = unix_nanos();
        if self.channels.is_empty() {
            return Ok(Opened {
                ws,
                established_ns,
                subscribed_ns: established_ns,
                recovery: Recovery::Absent,
            });
        }
        let mut subscribe = json!({"type": "subscribe", "id": 1, "channels": self.channels});
        let since: serde_json::Map<String, Value> = positions
            .iter()
            .map(|(channel, (offset, epoch))| {
                (channel.clone(), json!({"offset": offset, "epoch": epoch}))
            })
            .collect();
        if !since.is_empty() {
            subscribe["since"] = Value::Object(since);
        }
        ws.send(Message::text(subscribe.to_string()))
            .await
            .context("sending subscribe")?;
        loop {
            let text = next_text(&mut ws).await?;
            let frame: Frame<'_> = serde_json::from_str(&text).context("a frame")?;
            match &*frame.kind {
                "subscribed" => {
                    let recovery = match frame.recovered {
                        Some(map) if map.values().all(|&r| r) && !map.is_empty() => {
                            Recovery::Recovered
                        }
                        Some(map) if !map.is_empty() => Recovery::NotRecovered,
                        _ => Recovery::Absent,
                    };
                    return Ok(Opened {
                        ws,
                        established_ns,
                        subscribed_ns: unix_nanos(),
                        recovery,
                    });
                }
                "error" => bail!("subscribe refused: {text}"),
                _ => self.on_event(&frame, shared, None),
            }
        }
    }

    /// Reads until the connection ends; returns how: its close code, `eof` or `error`.
    async fn read(
        &self,
        ws: &mut Ws,
        shared: &Shared,
        slow: &mut watch::Receiver<SlowMode>,
        positions: &mut HashMap<String, (u64, String)>,
    ) -> String {
        loop {
            if self.slow && *slow.borrow_and_update() == SlowMode::Stopped {
                // Hold the socket without reading: the gateway's queue for it grows.
                if slow.changed().await.is_err() {
                    return "quit".into();
                }
                continue;
            }
            if self.slow && *slow.borrow() == SlowMode::Trickle {
                tokio::time::sleep(self.trickle).await;
            }
            let message = tokio::select! {
                message = ws.next() => message,
                changed = slow.changed(), if self.slow => {
                    if changed.is_err() {
                        return "quit".into();
                    }
                    continue;
                }
            };
            match message {
                None => return "eof".into(),
                Some(Err(error)) => return ending_of(&error),
                Some(Ok(Message::Text(text))) => {
                    if let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) {
                        self.on_event(&frame, shared, Some(&mut *positions));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return frame.map_or_else(|| "close".into(), |f| u16::from(f.code).to_string());
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Counts an event and records its latency, if it is one of the bench's.
    fn on_event(
        &self,
        frame: &Frame<'_>,
        shared: &Shared,
        positions: Option<&mut HashMap<String, (u64, String)>>,
    ) {
        let Some(sent_ns) = frame.data.as_ref().and_then(|probe| probe.t) else {
            return;
        };
        let now = SystemTime::now();
        let latency_us = unix_nanos().saturating_sub(sent_ns) / 1000;
        let from_timestamp_us = frame
            .timestamp
            .as_deref()
            .and_then(|ts| humantime::parse_rfc3339(ts).ok())
            .map(|published| micros(now.duration_since(published).unwrap_or_default()));
        shared.delivered(self.index, latency_us, from_timestamp_us);
        if let (Some(offset), Some(epoch), Some(channel), Some(positions)) =
            (frame.offset, &frame.epoch, &frame.channel, positions)
        {
            shared.positioned();
            match positions.get_mut(channel.as_ref()) {
                Some(position) if position.1 == *epoch => position.0 = offset,
                _ => {
                    positions.insert(channel.to_string(), (offset, epoch.to_string()));
                }
            }
        }
    }
}

/// A short, low-cardinality name for how a connection failed.
fn ending_of(error: &WsError) -> String {
    match error {
        WsError::Io(io) => format!("io:{:?}", io.kind()),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => "reset".into(),
        WsError::Protocol(_) => "protocol".into(),
        _ => "error".into(),
    }
}

/// The next text frame, skipping pings and pongs.
async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => bail!("closed by the gateway: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("reading"),
            None => bail!("the connection ended"),
        }
    }
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// `host:port` of a `ws://host:port/path` URL.
pub(crate) fn socket_addr_of(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url} is not a ws:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .with_context(|| format!("{url} does not name an IP address and port"))
}

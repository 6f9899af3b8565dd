//! Churning clients, run in the driver process: each connects, subscribes to three channels,
//! swaps one of them for another a few times (unsubscribe, subscribe), then leaves, with a
//! close frame or by dropping its socket, and starts again as a new connection, until stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::micros;
use crate::worker::mint;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest a connect or a reply may take before the attempt counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// What the churning clients did, counted as they go.
#[derive(Debug, Default)]
pub(crate) struct ChurnCounts {
    /// Connections opened and subscribed.
    pub(crate) connects: AtomicU64,
    /// `subscribe` frames answered.
    pub(crate) subscribes: AtomicU64,
    /// `unsubscribe` frames answered.
    pub(crate) unsubscribes: AtomicU64,
    /// Connections that ended with the socket dropped, no close frame.
    pub(crate) dropped: AtomicU64,
    /// Events received.
    pub(crate) events: AtomicU64,
    /// Attempts that failed.
    pub(crate) failures: AtomicU64,
    /// Handshake + first subscribe, µs, summed (for the mean).
    pub(crate) connect_micros: AtomicU64,
    /// The first failure, to explain `failures`.
    pub(crate) first_failure: Mutex<Option<String>>,
}

impl ChurnCounts {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn fail(&self, error: &anyhow::Error) {
        Self::add(&self.failures, 1);
        let mut first = self
            .first_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        first.get_or_insert_with(|| format!("{error:#}"));
    }
}

/// How the churn runs.
#[derive(Debug, Clone)]
pub(crate) struct ChurnPlan {
    /// The gateway's `ws://…/ws`.
    pub(crate) url: String,
    /// The gateway's HMAC secret.
    pub(crate) secret: String,
    /// Churning clients at once.
    pub(crate) clients: usize,
    /// Channels every churning client subscribes to, besides two of its own choosing.
    pub(crate) shared_channel: String,
    /// Group channels are `<group_prefix><0..groups>`.
    pub(crate) group_prefix: String,
    /// Group channels to pick from.
    pub(crate) groups: usize,
    /// How long one connection lives, at most (at least a tenth of it).
    pub(crate) lifetime: Duration,
}

/// Churning clients, running until [`Churn::stop`].
pub(crate) struct Churn {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Churn {
    /// Starts `plan.clients` churning loops.
    pub(crate) fn start(plan: ChurnPlan, counts: Arc<ChurnCounts>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let plan = Arc::new(plan);
        let tasks = (0..plan.clients)
            .map(|k| {
                let (plan, counts) = (Arc::clone(&plan), Arc::clone(&counts));
                tokio::spawn(churn_loop(k, plan, counts, stopped.clone()))
            })
            .collect();
        Self { stop, tasks }
    }

    /// Tells every loop to end its connection and stop, and waits for them (a few seconds
    /// at most), so that the gateway can be stopped without failing them.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

async fn churn_loop(
    k: usize,
    plan: Arc<ChurnPlan>,
    counts: Arc<ChurnCounts>,
    stop: watch::Receiver<bool>,
) {
    let mut generation = 0u64;
    while !*stop.borrow() {
        generation += 1;
        let user = format!("churn-{k}-{generation}");
        let life = one_life(&plan, &user, &counts, stop.clone()).await;
        if let Err(error) = life
            && !*stop.borrow()
        {
            counts.fail(&error.context(format!("user {user}")));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One connection's life: connect, subscribe to three channels, a few swaps, leave.
async fn one_life(
    plan: &ChurnPlan,
    user: &str,
    counts: &ChurnCounts,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let started = Instant::now();
    let token = mint(&plan.secret, user)?;
    let url = format!("{}?token={token}", plan.url);
    let (mut ws, _) = tokio::time::timeout(REPLY_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .context("connect timed out")?
        .context("connect")?;
    reply(&mut ws, "connection_established", counts).await?;
    let own = format!("churn-own:{user}");
    let mut swapped = pick_group(plan);
    let channels = [plan.shared_channel.clone(), own, swapped.clone()];
    request(&mut ws, "subscribe", &channels, counts).await?;
    ChurnCounts::add(&counts.connects, 1);
    ChurnCounts::add(&counts.connect_micros, micros(started.elapsed()));
    ChurnCounts::add(&counts.subscribes, 1);

    let tenth = plan.lifetime / 10;
    let life = tenth + plan.lifetime.mul_f64(rand::random::<f64>() * 0.9);
    let swaps = rand::random_range(1..=3u32);
    for _ in 0..swaps {
        if read_for(&mut ws, life / (swaps + 1), counts, &mut stop).await? {
            break;
        }
        request(&mut ws, "unsubscribe", &[swapped], counts).await?;
        ChurnCounts::add(&counts.unsubscribes, 1);
        swapped = pick_group(plan);
        request(&mut ws, "subscribe", std::slice::from_ref(&swapped), counts).await?;
        ChurnCounts::add(&counts.subscribes, 1);
    }
    read_for(&mut ws, life / (swaps + 1), counts, &mut stop).await?;
    // One in four leaves without a close frame, as a client whose network went away.
    if rand::random_range(0..4) == 0 {
        ChurnCounts::add(&counts.dropped, 1);
        drop(ws);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
    }
    Ok(())
}

fn pick_group(plan: &ChurnPlan) -> String {
    format!(
        "{}{}",
        plan.group_prefix,
        rand::random_range(0..plan.groups.max(1))
    )
}

/// Sends `{"type": kind, "channels": channels}` and waits for its reply.
async fn request(ws: &mut Ws, kind: &str, channels: &[String], counts: &ChurnCounts) -> Result<()> {
    let frame = json!({"type": kind, "channels": channels});
    ws.send(Message::text(frame.to_string()))
        .await
        .with_context(|| format!("sending {kind}"))?;
    reply(ws, &format!("{kind}d"), counts).await
}

/// Reads until a frame of type `kind`, counting the events on the way.
async fn reply(ws: &mut Ws, kind: &str, counts: &ChurnCounts) -> Result<()> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {kind} within {REPLY_TIMEOUT:?}"))?;
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).context("a frame")?;
                match frame["type"].as_str() {
                    Some(t) if t == kind => return Ok(()),
                    Some("error") => bail!("{kind} refused: {text}"),
                    _ => ChurnCounts::add(&counts.events, 1),
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed while waiting for {kind}: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).with_context(|| format!("waiting for {kind}")),
            None => bail!("the connection ended while waiting for {kind}"),
        }
    }
}

/// Reads events for `duration`; `Ok(true)` when told to stop meanwhile.
async fn read_for(
    ws: &mut Ws,
    duration: Duration,
    counts: &ChurnCounts,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let deadline = Instant::now() + duration;
    loop {
        let message = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(false),
            _ = stop.wait_for(|stop| *stop) => return Ok(true),
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(_))) => ChurnCounts::add(&counts.events, 1),
            Some(Ok(Message::Close(frame))) => bail!("closed by the gateway: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("reading events"),
            None => bail!("the connection ended"),
        }
    }
}

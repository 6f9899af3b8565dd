//! Delivery: bus events to local connections, and the bookkeeping that keeps history channels
//! without gaps or duplicates.
//!
//! On a history channel the hub remembers the last offset it delivered. An event that skips
//! ahead (a bus message dropped, or the bus lost and back) makes the hub hold the channel's new
//! events, read the missed ones from history, deliver them in order, then release what it held.
//! Each subscriber also remembers the highest offset it was given, so a replay that overlaps
//! live events never repeats one. Where history cannot fill a gap (trimmed, or a new epoch),
//! subscribers get a `reload` frame with the channel's current position.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use publisher::wire::{ChannelName, Envelope, Position, Target, WireError};
use tokio::sync::watch;

use super::shards::Shard;
use super::{Channel, Hub, Subscriber};
use crate::broker::BusMessage;
use crate::history::Page;
use crate::metrics::{Dropped, Metrics, RecoveryResult};
use crate::outbox::{self, OutFrame, Outbox, PushError};
use crate::protocol::{self, ServerFrame};

/// Events a channel may hold while it catches up before it gives up and asks for a reload.
const MAX_HELD: usize = 100_000;

/// Where a decoded bus event goes.
#[derive(Debug, Clone)]
enum Recipients {
    Channel(String),
    ClientType(String),
    Broadcast,
}

/// A bus event decoded once, with the frame every recipient gets.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    recipients: Recipients,
    offset: Option<u64>,
    epoch: Option<String>,
    exclude: Option<String>,
    frame: OutFrame,
}

impl Delivery {
    /// Decodes a bus message and encodes its client frame.
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let envelope = Envelope::decode(payload)?;
        let recipients = match envelope.target()? {
            Target::Channel(name) => Recipients::Channel(name.to_owned()),
            Target::ClientType(name) => Recipients::ClientType(name.to_owned()),
            Target::Broadcast => Recipients::Broadcast,
        };
        Ok(Self {
            recipients,
            offset: envelope.offset,
            epoch: envelope.epoch.as_deref().map(str::to_owned),
            exclude: envelope.exclude_client.as_deref().map(str::to_owned),
            frame: OutFrame::event(
                &protocol::encode_event(&envelope),
                humantime::parse_rfc3339(&envelope.timestamp).ok(),
            ),
        })
    }

    /// When the event was published.
    pub(crate) fn published_at(&self) -> Option<SystemTime> {
        self.frame.published_at()
    }

    /// The client frame.
    pub(crate) fn frame(&self) -> &OutFrame {
        &self.frame
    }

    /// The event's offset, on history channels.
    pub(crate) fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// Whether the event must skip this connection.
    pub(crate) fn excludes(&self, client_id: &str) -> bool {
        self.exclude.as_deref() == Some(client_id)
    }
}

pub(super) fn push(outbox: &Outbox, frame: &OutFrame, metrics: &Metrics, client_id: &str) {
    match outbox.push(frame) {
        Ok(()) => {}
        Err(PushError::Overflow) => {
            metrics.dropped(Dropped::SlowConsumer);
            tracing::info!(client_id, "outbox full: closing slow consumer");
        }
        Err(PushError::Closed) => {
            metrics.dropped(Dropped::Closing);
        }
    }
}

/// Gives one event to every subscriber of a channel that has not had it yet.
fn fan_out(channel: &mut Channel, delivery: &Delivery, metrics: &Metrics) {
    for (client_id, subscriber) in channel.subscribers.iter_mut() {
        if delivery.excludes(client_id) {
            continue;
        }
        give(
            subscriber,
            client_id,
            delivery.offset,
            &delivery.frame,
            metrics,
        );
    }
}

pub(super) fn give(
    subscriber: &mut Subscriber,
    client_id: &str,
    offset: Option<u64>,
    frame: &OutFrame,
    metrics: &Metrics,
) {
    if let Some(held) = &mut subscriber.replay {
        held.events.push((offset, frame.clone()));
        return;
    }
    if let Some(offset) = offset {
        if offset <= subscriber.seen_through {
            return;
        }
        subscriber.seen_through = offset;
    }
    push(&subscriber.outbox, frame, metrics, client_id);
}

impl Hub {
    /// Catches every history channel up when the bus comes back after an outage.
    pub(crate) async fn run_bus_watch(self, mut status: watch::Receiver<bool>) {
        let mut was_up = *status.borrow_and_update();
        while status.changed().await.is_ok() {
            let up = *status.borrow_and_update();
            if up && !was_up {
                let mut channels = 0;
                for mut shard in self.inner.shards.each() {
                    let names: Vec<ChannelName> = shard
                        .channels
                        .iter()
                        .filter(|(_, c)| c.delivered.is_some() && c.catching_up.is_none())
                        .map(|(name, _)| name.clone())
                        .collect();
                    channels += names.len();
                    for name in names {
                        self.start_catch_up(&mut shard, &name, Vec::new());
                    }
                }
                tracing::info!(channels, "bus is back: catching up from history");
            }
            was_up = up;
        }
    }

    /// Fans one bus message out to the local connections it targets.
    pub(crate) fn dispatch(&self, message: &BusMessage) {
        let metrics = &self.inner.metrics;
        metrics.bus_messages_received.inc();
        let delivery = match Delivery::decode(&message.payload) {
            Ok(delivery) => delivery,
            Err(error) => {
                metrics.dropped(Dropped::Malformed);
                let seen = self.inner.malformed.fetch_add(1, Ordering::Relaxed) + 1;
                if seen.is_power_of_two() {
                    tracing::warn!(topic = %message.topic, %error, seen, "malformed bus messages dropped");
                }
                return;
            }
        };
        match &delivery.recipients {
            Recipients::Channel(name) => {
                let name = name.clone();
                let mut shard = self.inner.shards.of(&name);
                self.deliver_to_channel(&mut shard, &name, delivery);
            }
            Recipients::ClientType(name) => {
                let state = self.state();
                if let Some(members) = state.client_types.get(name.as_str()) {
                    for (client_id, outbox) in &members.outboxes {
                        if !delivery.excludes(client_id) {
                            push(outbox, &delivery.frame, metrics, client_id);
                        }
                    }
                }
            }
            Recipients::Broadcast => {
                let state = self.state();
                for (client_id, session) in &state.sessions {
                    if !delivery.excludes(client_id) {
                        push(&session.outbox, &delivery.frame, metrics, client_id);
                    }
                }
            }
        }
    }

    fn deliver_to_channel(&self, shard: &mut Shard, name: &str, delivery: Delivery) {
        let metrics = &self.inner.metrics;
        let Some(channel) = shard.channels.get_mut(name) else {
            return;
        };
        let Some(offset) = delivery.offset else {
            return fan_out(channel, &delivery, metrics);
        };
        if let Some(held) = &mut channel.catching_up {
            // Past the cap the event is dropped here and read from history by the next catch-up.
            if held.len() < MAX_HELD {
                held.push(delivery);
            }
            return;
        }
        let epoch = delivery.epoch.as_deref().unwrap_or("");
        match &mut channel.delivered {
            Some(last) if last.epoch == epoch && offset <= last.offset => return,
            Some(last) if last.epoch == epoch && offset == last.offset + 1 => last.offset = offset,
            Some(_) => {
                let Some((name, _)) = shard.channels.get_key_value(name) else {
                    return;
                };
                let name = name.clone();
                return self.start_catch_up(shard, &name, vec![delivery]);
            }
            None => {
                channel.delivered = Some(Box::new(Position {
                    offset,
                    epoch: epoch.to_owned(),
                }))
            }
        }
        fan_out(channel, &delivery, metrics);
    }

    /// Holds a channel's new events and reads what this node missed from history.
    fn start_catch_up(&self, shard: &mut Shard, name: &ChannelName, held: Vec<Delivery>) {
        let Some(channel) = shard.channels.get_mut(name) else {
            return;
        };
        channel.catching_up = Some(Box::new(held));
        let hub = self.clone();
        let name = name.clone();
        tokio::spawn(async move { hub.catch_up(name).await });
    }

    async fn catch_up(self, name: ChannelName) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let since = match self.inner.shards.of(name.as_str()).channels.get(&name) {
                Some(channel) => channel.delivered.as_deref().cloned(),
                None => return,
            };
            let since = since.unwrap_or(Position {
                offset: 0,
                epoch: String::new(),
            });
            match self.inner.history.read(&name, Some(since.offset)).await {
                Ok(page) => return outbox::corked(|| self.finish_catch_up(&name, &since, page)),
                Err(error) => {
                    tracing::debug!(channel = %name, %error, "catch-up waits for history");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn finish_catch_up(&self, name: &ChannelName, since: &Position, page: Page) {
        let metrics = &self.inner.metrics;
        let mut shard = self.inner.shards.of(name.as_str());
        let Some(channel) = shard.channels.get_mut(name) else {
            return;
        };
        let held = channel.catching_up.take().unwrap_or_default();
        if page.continues(since) {
            metrics.recovery(RecoveryResult::NodeCaughtUp);
            let mut delivered = since.clone();
            for (offset, message) in page.events {
                match Delivery::decode(&message) {
                    Ok(delivery) => fan_out(channel, &delivery, metrics),
                    Err(error) => {
                        tracing::warn!(channel = %name, offset, %error, "bad history entry")
                    }
                }
                delivered.offset = offset;
            }
            delivered.epoch = page.top.epoch.clone();
            channel.delivered = Some(Box::new(delivered));
        } else {
            metrics.recovery(RecoveryResult::NodeReload);
            tracing::info!(channel = %name, "history cannot fill the gap: clients must reload");
            let reload = OutFrame::reply(
                &ServerFrame::Reload {
                    channel: name.as_str(),
                    position: &page.top,
                }
                .encode(None),
            );
            for (client_id, subscriber) in channel.subscribers.iter_mut() {
                subscriber.seen_through = page.top.offset;
                if let Some(pending) = &mut subscriber.replay {
                    pending.events.retain(|(offset, _)| offset.is_none());
                }
                push(&subscriber.outbox, &reload, metrics, client_id);
            }
            channel.delivered = Some(Box::new(page.top));
        }
        for delivery in *held {
            self.deliver_to_channel(&mut shard, name.as_str(), delivery);
        }
    }
}

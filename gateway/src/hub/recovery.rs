//! Recovery of one subscriber: the events it missed, read from history, before it goes live.
//!
//! A subscriber holds the channel's live events from the moment it is added; a history read
//! issued after that moment sees every event it is not holding. Subscribers of one channel
//! recovering from the same offset therefore share a read that was issued after each of them
//! began holding: a storm of reconnects to one channel costs a read per position, not one per
//! client.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use publisher::wire::{ChannelName, Position};
use serde_json::value::RawValue;

use super::Hub;
use super::fanout::{Delivery, give};
use crate::history::{HistoryError, Page};

/// What a (re)subscription to a history channel found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// The events after the client's position, when it recovers; empty otherwise.
    pub replayed: Vec<Delivery>,
    /// The channel's position, when history could be read.
    pub top: Option<Position>,
    /// With a client position: whether every missed event is in `replayed`.
    pub recovered: Option<bool>,
}

/// A history read on its way, and when it was issued.
pub(super) struct SharedRead {
    issued: u64,
    page: Shared<BoxFuture<'static, Result<Arc<Page>, Arc<HistoryError>>>>,
}

/// History reads on their way, by channel and the offset they read after.
pub(super) type Reads = HashMap<(ChannelName, Option<u64>), SharedRead>;

/// Forgets a read once its issuer has it (or gave up on it), unless a newer one replaced it.
struct Issued<'a> {
    hub: &'a Hub,
    key: (ChannelName, Option<u64>),
    issued: u64,
}

impl Drop for Issued<'_> {
    fn drop(&mut self) {
        let mut reads = self.hub.reads();
        if reads
            .get(&self.key)
            .is_some_and(|r| r.issued == self.issued)
        {
            reads.remove(&self.key);
        }
    }
}

impl Hub {
    /// The next tick of the order between holding and history reads.
    pub(super) fn tick(&self) -> u64 {
        self.inner.ticks.fetch_add(1, Ordering::SeqCst)
    }

    fn reads(&self) -> MutexGuard<'_, Reads> {
        self.inner
            .reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `channel`'s history after `since` for `client_id`, sharing a read of the same
    /// position that was issued after the client began holding events.
    async fn read_history(
        &self,
        client_id: &str,
        channel: &ChannelName,
        since: Option<u64>,
    ) -> Result<Arc<Page>, Arc<HistoryError>> {
        let holding_since = self
            .inner
            .shards
            .of(channel.as_str())
            .channels
            .get(channel)
            .and_then(|c| c.subscribers.get(client_id))
            .and_then(|s| s.replay.as_ref())
            .map(|held| held.since);
        let key = (channel.clone(), since);
        let (page, _issued) = {
            let mut reads = self.reads();
            match (reads.get(&key), holding_since) {
                (Some(read), Some(holding)) if read.issued > holding => (read.page.clone(), None),
                _ => {
                    let issued = self.tick();
                    let history = Arc::clone(&self.inner.history);
                    let name = channel.clone();
                    let page = async move {
                        let page = history.read(&name, since).await;
                        page.map(Arc::new).map_err(Arc::new)
                    }
                    .boxed()
                    .shared();
                    let read = SharedRead {
                        issued,
                        page: page.clone(),
                    };
                    reads.insert(key.clone(), read);
                    let issued = Issued {
                        hub: self,
                        key,
                        issued,
                    };
                    (page, Some(issued))
                }
            }
        };
        page.await
    }

    /// Reads what `client_id`, subscribed to `channel` and holding its events, missed since
    /// `since`; without `since`, just the position.
    pub(crate) async fn recover(
        &self,
        client_id: &str,
        channel: &ChannelName,
        since: Option<&Position>,
    ) -> Recovery {
        let page = match self
            .read_history(client_id, channel, since.map(|p| p.offset))
            .await
        {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%channel, %error, "history unavailable for a recovery");
                return Recovery {
                    recovered: since.map(|_| false),
                    ..Recovery::default()
                };
            }
        };
        let Some(since) = since else {
            return Recovery {
                top: Some(page.top.clone()),
                ..Recovery::default()
            };
        };
        let continues = page.continues(since);
        let replayed = self.fresh_events(channel, &page);
        let recovered = continues && replayed.len() == page.events.len();
        Recovery {
            replayed: if recovered { replayed } else { Vec::new() },
            top: Some(page.top.clone()),
            recovered: Some(recovered),
        }
    }

    /// The page's events that are still within the namespace's history age, decoded.
    fn fresh_events(&self, channel: &ChannelName, page: &Page) -> Vec<Delivery> {
        let ttl = self.inner.policies.of(channel).map(|p| p.ttl);
        let now = SystemTime::now();
        page.events
            .iter()
            .filter_map(|(_, message)| Delivery::decode(message).ok())
            .filter(|delivery| {
                let age = delivery
                    .published_at()
                    .and_then(|at| now.duration_since(at).ok())
                    .unwrap_or_default();
                ttl.is_none_or(|ttl| age <= ttl)
            })
            .collect()
    }

    /// Ends a subscriber's recovery: gives it the replayed events, then those held for it
    /// that came after the position it was told.
    pub(crate) fn finish_replay(
        &self,
        client_id: &str,
        channel: &ChannelName,
        recovery: &Recovery,
    ) {
        let metrics = &self.inner.metrics;
        let top = recovery.top.clone().unwrap_or(Position {
            offset: 0,
            epoch: String::new(),
        });
        let mut shard = self.inner.shards.of(channel.as_str());
        let Some(entry) = shard.channels.get_mut(channel) else {
            return;
        };
        if entry.delivered.is_none() && entry.catching_up.is_none() && recovery.top.is_some() {
            entry.delivered = Some(Box::new(top.clone()));
        }
        let Some(subscriber) = entry.subscribers.get_mut(client_id) else {
            return;
        };
        let held = subscriber
            .replay
            .take()
            .map(|held| held.events)
            .unwrap_or_default();
        // The replay goes out in few writes rather than one per event.
        subscriber.outbox.hold();
        for delivery in &recovery.replayed {
            if !delivery.excludes(client_id) {
                give(
                    subscriber,
                    client_id,
                    delivery.offset(),
                    delivery.frame(),
                    metrics,
                );
            }
        }
        subscriber.seen_through = subscriber.seen_through.max(top.offset);
        for (offset, frame) in held {
            give(subscriber, client_id, offset, &frame, metrics);
        }
        subscriber.outbox.release();
    }

    /// A channel's stored events as client frames, and its position; `None` where the
    /// namespace keeps no history. With `since` in the channel's epoch (`epoch`, or the current
    /// one when not given), the first `limit` events after it; otherwise the last `limit`.
    pub(crate) async fn history_page(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
        epoch: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<(Vec<Box<RawValue>>, Position)>, HistoryError> {
        let Some(policy) = self.inner.policies.of(channel) else {
            return Ok(None);
        };
        let limit = limit.unwrap_or(policy.size).min(policy.size);
        let history = &self.inner.history;
        let mut page = history.read(channel, Some(since.unwrap_or(0))).await?;
        let in_epoch = since.is_some() && epoch.is_none_or(|e| e == page.top.epoch);
        if since.is_some() && !in_epoch {
            page = history.read(channel, Some(0)).await?;
        }
        let mut events = self.fresh_events(channel, &page);
        if in_epoch {
            events.truncate(limit);
        } else if events.len() > limit {
            events.drain(..events.len() - limit);
        }
        let frames = events
            .iter()
            .filter_map(|d| RawValue::from_string(d.frame().json().to_owned()).ok())
            .collect();
        Ok(Some((frames, page.top)))
    }
}

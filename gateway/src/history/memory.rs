//! History in memory, for a single node on the in-memory bus: the same semantics as Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use publisher::wire::{ChannelName, Position, Topics, with_position};

use super::{History, HistoryError, Page, Policies, Published};
use crate::broker::{BoxFuture, MemoryBus};

struct Log {
    epoch: String,
    offset: u64,
    events: VecDeque<(u64, Instant, Bytes)>,
    touched: Instant,
}

#[derive(Default)]
struct State {
    logs: HashMap<ChannelName, Log>,
    seen: HashMap<String, (Instant, Option<Position>)>,
}

/// Channel history kept in this process; publishes on the in-memory bus.
pub struct MemoryHistory {
    bus: MemoryBus,
    topics: Topics,
    policies: Policies,
    idempotency_window: Duration,
    // Held while an offset is assigned and the event published, so that offsets reach the bus
    // in order; never across an await.
    state: Mutex<State>,
}

impl MemoryHistory {
    /// History for the namespaces in `policies`, publishing on `bus`.
    pub fn new(
        bus: MemoryBus,
        topics: Topics,
        policies: Policies,
        idempotency_window: Duration,
    ) -> Self {
        Self {
            bus,
            topics,
            policies,
            idempotency_window,
            state: Mutex::new(State::default()),
        }
    }

    fn publish_now(
        &self,
        channel: &ChannelName,
        message: &[u8],
        idempotency_key: Option<&str>,
    ) -> Published {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let window = self.idempotency_window;
        state
            .seen
            .retain(|_, (at, _)| now.duration_since(*at) < window);
        let seen_key = idempotency_key.map(|key| format!("{channel}\u{0}{key}"));
        if let Some((_, position)) = seen_key.as_ref().and_then(|k| state.seen.get(k)) {
            return Published {
                position: position.clone(),
                duplicate: true,
            };
        }
        let topic = self.topics.channel(channel.as_str());
        let position = match self.policies.of(channel) {
            None => {
                self.bus
                    .publish_now(&topic, Bytes::copy_from_slice(message));
                None
            }
            Some(policy) => {
                let log = state.logs.entry(channel.clone()).or_insert_with(|| Log {
                    epoch: new_epoch(),
                    offset: 0,
                    events: VecDeque::new(),
                    touched: now,
                });
                if now.duration_since(log.touched) > policy.ttl {
                    // Like an expired Redis key: the history is gone, and so is its epoch.
                    *log = Log {
                        epoch: new_epoch(),
                        offset: 0,
                        events: VecDeque::new(),
                        touched: now,
                    };
                }
                log.offset += 1;
                log.touched = now;
                let full = Bytes::from(with_position(message, log.offset, &log.epoch));
                log.events.push_back((log.offset, now, full.clone()));
                while log.events.len() > policy.size {
                    log.events.pop_front();
                }
                self.bus.publish_now(&topic, full);
                Some(Position {
                    offset: log.offset,
                    epoch: log.epoch.clone(),
                })
            }
        };
        if let Some(key) = seen_key {
            state.seen.insert(key, (now, position.clone()));
        }
        Published {
            position,
            duplicate: false,
        }
    }

    fn read_now(&self, channel: &ChannelName, since: Option<u64>) -> Page {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ttl = self.policies.of(channel).map(|p| p.ttl);
        let log = state
            .logs
            .get(channel)
            .filter(|log| ttl.is_some_and(|ttl| log.touched.elapsed() <= ttl));
        let Some(log) = log else {
            return Page {
                events: Vec::new(),
                top: Position {
                    offset: 0,
                    epoch: String::new(),
                },
            };
        };
        let events = match since {
            Some(since) => log
                .events
                .iter()
                .filter(|(offset, at, _)| {
                    *offset > since && ttl.is_some_and(|ttl| at.elapsed() <= ttl)
                })
                .map(|(offset, _, message)| (*offset, message.clone()))
                .collect(),
            None => Vec::new(),
        };
        Page {
            events,
            top: Position {
                offset: log.offset,
                epoch: log.epoch.clone(),
            },
        }
    }
}

fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl History for MemoryHistory {
    fn publish(
        &self,
        channel: &ChannelName,
        message: Bytes,
        idempotency_key: Option<&str>,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        let published = self.publish_now(channel, &message, idempotency_key);
        Box::pin(async move { Ok(published) })
    }

    fn read(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Page, HistoryError>> {
        let page = self.read_now(channel, since);
        Box::pin(async move { Ok(page) })
    }
}

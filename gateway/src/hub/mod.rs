//! The hub: this node's connections and their subscriptions, and the fan-out of bus events.
//!
//! The hub subscribes the broker to a topic when its first local subscriber arrives and
//! unsubscribes when the last one leaves, so a node receives only the traffic its own clients
//! need, and empty channels are freed. [`fanout`] delivers each bus event, decoded and encoded
//! once per node, and keeps history channels gap-free (replays, catch-up after bus loss).
//!
//! Channels live in [`shards`], each behind its own lock, so that the bus's dispatch lanes fan
//! out events of different channels at once; connections and client types are behind one more
//! lock, taken before a shard's. Locks are held only to choose recipients and queue frames:
//! the dispatch corks its rounds, and sockets are written once the locks are released.

mod client_types;
mod error;
mod fanout;
mod local;
mod recovery;
mod shards;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use publisher::wire::{
    ChannelName, ClientType, Envelope, EventName, Position, Target, Topics, UserId, timestamp_now,
};
use serde_json::value::RawValue;
use tokio::sync::watch;

pub(crate) use self::error::HubError;
pub(crate) use self::fanout::Delivery;
pub(crate) use self::recovery::Recovery;
use crate::broker::{Broker, BrokerError};
use crate::history::{History, Policies, Published};
use crate::metrics::{Dropped, Metrics};
use crate::outbox::{self, OutFrame, Outbox};
use crate::protocol::{CloseCode, ServerFrame};
use crate::view::Transport;

/// A connection's id, unique across the cluster.
pub(crate) type ClientId = Arc<str>;

/// A connection as the hub knows it.
pub(crate) struct Connection {
    /// The connection's id.
    pub client_id: ClientId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The client type from the token or `register`.
    pub client_type: Option<ClientType>,
    /// Where its frames go.
    pub outbox: Outbox,
    /// How it reaches its client.
    pub transport: Transport,
}

/// How a bus subscription stands.
#[derive(Debug, Clone)]
enum BusState {
    Pending,
    Ready,
    Failed(BrokerError),
}

/// Watches a bus subscription until the bus has answered it.
type BusWatch = watch::Receiver<BusState>;

/// Whether the bus refused or failed a subscription, which must then be asked for again.
fn bus_failed(bus: &BusWatch) -> bool {
    matches!(*bus.borrow(), BusState::Failed(_))
}

/// Waits until the bus has answered a subscription: `Err` if it refused or failed.
async fn bus_answer(mut bus: BusWatch) -> Result<(), BrokerError> {
    let state = bus
        .wait_for(|s| !matches!(s, BusState::Pending))
        .await
        .map(|s| s.clone())
        .unwrap_or(BusState::Failed(BrokerError::Closed));
    match state {
        BusState::Failed(error) => Err(error),
        _ => Ok(()),
    }
}

/// Events held back for one subscriber while it recovers, with their offsets.
struct Held {
    /// The hub's tick when the holding began: a history read issued after it sees every
    /// event this subscriber is not holding (see [`recovery`]).
    since: u64,
    events: Vec<(Option<u64>, OutFrame)>,
}

/// One connection on one channel.
struct Subscriber {
    outbox: Outbox,
    /// Events held back while this subscriber's recovery reads history. Boxed: 8 bytes
    /// instead of a Vec's 24 in every subscription, and few ever hold events.
    replay: Option<Box<Held>>,
    /// The highest offset this subscriber has been given, so nothing reaches it twice.
    seen_through: u64,
}

struct Channel {
    subscribers: HashMap<ClientId, Subscriber>,
    /// How the bus subscription stands while it is being confirmed; `None` once confirmed,
    /// so that a channel that is set up costs no watch channel.
    bus: Option<BusWatch>,
    /// History channels: the last offset this node delivered, and its epoch (boxed: most
    /// channels keep no history).
    delivered: Option<Box<Position>>,
    /// Events held back while the node catches this channel up from history.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of a Vec's 24 in every channel; few ever catch up"
    )]
    catching_up: Option<Box<Vec<Delivery>>>,
}

struct Session {
    user_id: UserId,
    client_type: Option<ClientType>,
    client_name: Option<String>,
    connected_at: std::time::SystemTime,
    outbox: Outbox,
    channels: HashSet<ChannelName>,
    transport: Transport,
}

/// The local connections of one client type, and its bus subscription.
struct ClientTypeMembers {
    outboxes: HashMap<ClientId, Outbox>,
    bus: BusWatch,
}

/// The connections and what is not sharded by channel. Lock order: this, then a channel's
/// shard, then an outbox.
#[derive(Default)]
struct State {
    sessions: HashMap<ClientId, Session>,
    client_types: HashMap<ClientType, ClientTypeMembers>,
    /// The broadcast topic's subscription, held while this node has connections.
    broadcast: Option<BusWatch>,
    users: HashMap<UserId, usize>,
}

struct Inner {
    broker: Arc<dyn Broker>,
    history: Arc<dyn History>,
    policies: Policies,
    topics: Topics,
    metrics: Arc<Metrics>,
    // Std mutexes are right here: every critical section is a few map operations and
    // non-blocking queue pushes, and none spans an await.
    state: Mutex<State>,
    /// The channels, each shard behind its own lock.
    shards: shards::Shards,
    session_count: watch::Sender<usize>,
    malformed: AtomicU64,
    /// Orders the start of subscribers' holding against the issuing of history reads.
    ticks: AtomicU64,
    /// History reads on their way, which subscribers of the same channel may share.
    reads: Mutex<recovery::Reads>,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub over `broker` and `history`, naming bus topics with `topics`.
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        history: Arc<dyn History>,
        policies: Policies,
        topics: Topics,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (session_count, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                broker,
                history,
                policies,
                topics,
                metrics,
                state: Mutex::new(State::default()),
                shards: shards::Shards::new(),
                session_count,
                malformed: AtomicU64::new(0),
                ticks: AtomicU64::new(0),
                reads: Mutex::default(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a channel's namespace keeps history.
    pub(crate) fn keeps_history(&self, channel: &ChannelName) -> bool {
        self.inner.policies.of(channel).is_some()
    }

    /// Adds a connection and subscribes it to its user's personal channel, its client type
    /// and broadcasts, waiting until the bus confirms them all; with `replay`, the personal
    /// channel holds events back until [`Hub::finish_replay`].
    pub(crate) async fn connect(
        &self,
        connection: Connection,
        replay: bool,
    ) -> Result<(), HubError> {
        let personal = ChannelName::personal(&connection.user_id);
        let client_id = Arc::clone(&connection.client_id);
        let (broadcast, client_type) = {
            let mut state = self.state();
            // Broadcasts are needed from the first connection on.
            if state.broadcast.as_ref().is_none_or(bus_failed) {
                let topic = self.inner.topics.broadcast();
                state.broadcast = Some(self.subscribe_bus(topic, |_| {}));
            }
            let broadcast = state.broadcast.clone();
            let client_type = connection.client_type.as_ref().map(|client_type| {
                self.join_client_type(&mut state, &client_id, client_type, &connection.outbox)
            });
            *state.users.entry(connection.user_id.clone()).or_insert(0) += 1;
            state.sessions.insert(
                Arc::clone(&client_id),
                Session {
                    user_id: connection.user_id,
                    client_type: connection.client_type,
                    client_name: None,
                    connected_at: std::time::SystemTime::now(),
                    outbox: connection.outbox,
                    channels: HashSet::new(),
                    transport: connection.transport,
                },
            );
            self.update_gauges(&state);
            (broadcast, client_type)
        };
        self.subscribe(&client_id, &personal, usize::MAX, replay)
            .await?;
        for bus in broadcast.into_iter().chain(client_type) {
            bus_answer(bus).await?;
        }
        Ok(())
    }

    /// Removes a connection and every subscription it had; returns the channels it was on.
    pub(crate) fn disconnect(&self, client_id: &str) -> Vec<ChannelName> {
        let mut state = self.state();
        let Some(session) = state.sessions.remove(client_id) else {
            return Vec::new();
        };
        for channel in &session.channels {
            self.leave_channel(client_id, channel);
        }
        if let Some(client_type) = &session.client_type {
            self.leave_client_type(&mut state, client_id, client_type);
        }
        if let Entry::Occupied(mut users) = state.users.entry(session.user_id) {
            *users.get_mut() -= 1;
            if *users.get() == 0 {
                users.remove();
            }
        }
        shrink_if_sparse(&mut state.sessions);
        shrink_if_sparse(&mut state.users);
        if state.sessions.is_empty() {
            state.broadcast = None;
            self.inner.broker.unsubscribe(self.inner.topics.broadcast());
        }
        self.update_gauges(&state);
        session.channels.into_iter().collect()
    }

    /// Subscribes a connection to a channel, waiting until the bus confirms; `Ok(false)` if it
    /// already was. `max_channels` counts the channels the client asked for, not its personal
    /// channel. With `replay`, events are held back for it until [`Hub::finish_replay`].
    pub(crate) async fn subscribe(
        &self,
        client_id: &str,
        channel: &ChannelName,
        max_channels: usize,
        replay: bool,
    ) -> Result<bool, HubError> {
        let bus = {
            let mut state = self.state();
            let Some((key, session)) = state.sessions.get_key_value(client_id) else {
                return Err(HubError::UnknownClient);
            };
            if session.channels.contains(channel) {
                return Ok(false);
            }
            let requested = session.channels.iter().filter(|c| !c.is_personal()).count();
            if !channel.is_personal() && requested >= max_channels {
                return Err(HubError::LimitExceeded(max_channels));
            }
            let key = Arc::clone(key);
            let subscriber = Subscriber {
                outbox: session.outbox.clone(),
                replay: replay.then(|| {
                    Box::new(Held {
                        since: self.tick(),
                        events: Vec::new(),
                    })
                }),
                seen_through: 0,
            };
            if let Some(session) = state.sessions.get_mut(client_id) {
                session.channels.insert(channel.clone());
            }
            // The gauges are the counts: nothing has to lock every shard to add them up.
            self.inner.metrics.subscriptions.inc();
            let mut shard = self.inner.shards.of(channel.as_str());
            let bus = match shard.channels.entry(channel.clone()) {
                Entry::Occupied(mut entry) => {
                    entry.get_mut().subscribers.insert(key, subscriber);
                    entry.get().bus.clone()
                }
                Entry::Vacant(entry) => {
                    let hub = self.clone();
                    let name = channel.clone();
                    let topic = self.inner.topics.channel(channel.as_str());
                    let rx = self.subscribe_bus(topic, move |confirmed| {
                        hub.bus_confirmed(&name, confirmed);
                    });
                    let channel = Channel {
                        subscribers: HashMap::from([(key, subscriber)]),
                        bus: Some(rx),
                        delivered: None,
                        catching_up: None,
                    };
                    self.inner.metrics.channels.inc();
                    entry.insert(channel).bus.clone()
                }
            };
            drop(shard);
            self.update_gauges(&state);
            bus
        };
        let Some(bus) = bus else {
            return Ok(true);
        };
        if let Err(error) = bus_answer(bus).await {
            self.unsubscribe(client_id, channel);
            return Err(error.into());
        }
        Ok(true)
    }

    /// Subscribes the bus to `topic`; the watch turns `Ready` or `Failed` when the bus
    /// answers, and `confirmed` runs once it is `Ready`.
    fn subscribe_bus(
        &self,
        topic: String,
        confirmed: impl FnOnce(&watch::Sender<BusState>) + Send + 'static,
    ) -> BusWatch {
        let confirm = self.inner.broker.subscribe(topic);
        let (tx, rx) = watch::channel(BusState::Pending);
        tokio::spawn(async move {
            let state = match confirm.await {
                Ok(()) => BusState::Ready,
                Err(e) => BusState::Failed(e),
            };
            let ready = matches!(state, BusState::Ready);
            let _ = tx.send(state);
            if ready {
                confirmed(&tx);
            }
        });
        rx
    }

    /// Forgets a channel's confirmation watch once the bus confirmed it, unless the channel was
    /// dropped and made again meanwhile (then the watch is another's).
    fn bus_confirmed(&self, name: &ChannelName, confirmation: &watch::Sender<BusState>) {
        let mut shard = self.inner.shards.of(name.as_str());
        if let Some(channel) = shard.channels.get_mut(name)
            && channel
                .bus
                .as_ref()
                .is_some_and(|bus| bus.same_channel(&confirmation.subscribe()))
        {
            channel.bus = None;
        }
    }

    /// Unsubscribes a connection from a channel; `false` if it was not subscribed.
    pub(crate) fn unsubscribe(&self, client_id: &str, channel: &ChannelName) -> bool {
        let mut state = self.state();
        let removed = state
            .sessions
            .get_mut(client_id)
            .is_some_and(|s| s.channels.remove(channel));
        if removed {
            self.leave_channel(client_id, channel);
            self.update_gauges(&state);
        }
        removed
    }

    /// Takes a connection off a channel, and drops the channel when it was the last; the
    /// caller holds the [`State`] lock, so that no subscribe of the same connection races it.
    fn leave_channel(&self, client_id: &str, channel: &ChannelName) {
        let metrics = &self.inner.metrics;
        let mut shard = self.inner.shards.of(channel.as_str());
        if let Entry::Occupied(mut entry) = shard.channels.entry(channel.clone()) {
            if entry.get_mut().subscribers.remove(client_id).is_some() {
                metrics.subscriptions.dec();
            }
            if entry.get().subscribers.is_empty() {
                entry.remove();
                metrics.channels.dec();
                let topic = self.inner.topics.channel(channel.as_str());
                self.inner.broker.unsubscribe(topic);
                shrink_if_sparse(&mut shard.channels);
            } else {
                shrink_if_sparse(&mut entry.get_mut().subscribers);
            }
        }
    }

    fn update_gauges(&self, state: &State) {
        let metrics = &self.inner.metrics;
        metrics.connections.set(gauge_value(state.sessions.len()));
        metrics.users.set(gauge_value(state.users.len()));
        self.inner.session_count.send_replace(state.sessions.len());
    }

    /// Publishes an event through the bus to every node: channel events go through history
    /// (offsets, idempotency) where their namespace keeps it or a key is given.
    pub(crate) async fn publish(
        &self,
        target: Target<'_>,
        event: &EventName,
        data: Option<&RawValue>,
        exclude_client: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, HubError> {
        let envelope = Envelope::new(
            target,
            event.as_str(),
            data,
            exclude_client,
            timestamp_now().into(),
        );
        let message = Bytes::from(envelope.encode());
        let metrics = &self.inner.metrics;
        let started = std::time::Instant::now();
        let through_history = match target {
            Target::Channel(name) => ChannelName::parse(name)
                .ok()
                .or_else(|| personal_channel(name))
                .filter(|c| self.keeps_history(c) || idempotency_key.is_some()),
            _ => None,
        };
        let result = match &through_history {
            Some(channel) => self
                .inner
                .history
                .publish(channel, message, idempotency_key)
                .await
                .map_err(HubError::from),
            None => {
                let topic = self.inner.topics.for_target(target);
                self.inner
                    .broker
                    .publish(topic, message)
                    .await
                    .map(|()| Published {
                        position: None,
                        duplicate: false,
                    })
                    .map_err(HubError::from)
            }
        };
        metrics
            .bus_publish_duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            // Events that could not reach the bus are lost to every subscriber: count them.
            metrics.bus_publish_errors.inc();
            metrics.dropped(Dropped::BusUnavailable);
        }
        result
    }

    /// Tells every connection to reconnect elsewhere after a jittered delay of at most
    /// `reconnect_max`, then closes it with 4200. Returns how many were told.
    pub(crate) fn drain(&self, reconnect_max: Duration) -> usize {
        // Corked: the frames are written once the lock is released.
        outbox::corked(|| self.tell_to_reconnect(reconnect_max))
    }

    fn tell_to_reconnect(&self, reconnect_max: Duration) -> usize {
        let state = self.state();
        let max_ms = u64::try_from(reconnect_max.as_millis()).unwrap_or(u64::MAX);
        for session in state.sessions.values() {
            let delay = if max_ms == 0 {
                0
            } else {
                rand::random_range(0..=max_ms)
            };
            let frame = ServerFrame::Disconnect {
                code: CloseCode::ShuttingDown.code(),
                reconnect_after_ms: delay,
            };
            let _ = session.outbox.push(&OutFrame::reply(&frame.encode(None)));
            session.outbox.close(CloseCode::ShuttingDown);
        }
        state.sessions.len()
    }

    /// Waits until no connection is left.
    pub(crate) async fn wait_empty(&self) {
        let mut count = self.inner.session_count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }

    /// Connections on this node.
    pub(crate) fn connection_count(&self) -> usize {
        self.state().sessions.len()
    }
}

/// The personal channel named by `#<user_id>`, for user ids outside the channel charset.
fn personal_channel(name: &str) -> Option<ChannelName> {
    let user = UserId::parse(name.strip_prefix('#')?).ok()?;
    Some(ChannelName::personal(&user))
}

/// Maps smaller than this are left as they are.
const SHRINK_ABOVE_CAPACITY: usize = 64;

/// Gives a map's memory back once it holds under a quarter of what it has room for, so that
/// a node does not keep the room of a peak it no longer has (a storm's connections, a channel
/// that was hot). The map keeps room for twice what it holds: the rehash is paid for by the
/// removals that made it sparse, and a map growing again does not shrink at once.
fn shrink_if_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SHRINK_ABOVE_CAPACITY && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;

//! The cluster view: leases, cluster-wide queries and operator actions, presence.
//!
//! Every node renews a lease in the [`Registry`]'s [`Leases`]. A cluster-wide question (stats, clients,
//! channels, presence) or action (disconnect, unsubscribe) is a survey on the bus: the asking
//! node publishes it on the control topic, every node answers for its own connections on the
//! asker's reply topic, and the asker waits for every node with a live lease. A dead node does
//! not answer and stops counting at once; a survivor claims its clean-up when its lease expires
//! and sends `leave` events for the presence it left behind.

mod memory;
mod redis;
mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use publisher::wire::{ChannelName, EventName, Target, Topics};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use self::memory::{MemoryLeases, MemoryPresence, MemoryUserSlots};
pub use self::redis::{RedisLeases, RedisPresence, RedisUserSlots};
pub use self::registry::{
    Leases, PresenceRecord, PresenceRecords, Registry, RegistryError, UserSlots,
};
use crate::broker::{Broker, BrokerError, BusMessage};
use crate::config::Namespaces;
use crate::hub::Hub;
use crate::protocol::CloseCode;
use crate::view::{ClientFilter, ClientInfo, PresenceEntry, Selector};

/// How long a survey waits for the last node.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a cluster-wide call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// The bus refused the survey.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The registry did not answer.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The survey could not be encoded.
    #[error("cluster survey not encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ClusterError {
    /// What a client or an API caller is told; the cause, Redis's words included, is for the
    /// log only.
    pub(crate) fn public_message(&self) -> &'static str {
        match self {
            Self::Broker(error) => error.public_message(),
            Self::Registry(_) => "the cluster registry is unavailable; try again",
            Self::Encode(_) => "the cluster could not be asked",
        }
    }
}

/// A question or action for every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Query {
    Stats,
    Clients { filter: ClientFilter },
    Channels,
    Presence { channel: String },
    Disconnect { selector: Selector, code: u16 },
    Unsubscribe { selector: Selector, channel: String },
}

/// One node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Answer {
    Stats {
        connections: usize,
        users: Vec<String>,
        uptime_s: u64,
    },
    Clients {
        clients: Vec<ClientInfo>,
    },
    Channels {
        channels: Vec<(String, usize)>,
    },
    Presence {
        clients: Vec<PresenceEntry>,
    },
    Count {
        count: usize,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    id: u64,
    reply_to: String,
    query: Query,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    id: u64,
    node_id: String,
    answer: Answer,
}

/// One node's line in the cluster stats.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeStats {
    /// The node.
    pub node_id: String,
    /// Its connections.
    pub connections: usize,
    /// Its distinct users.
    pub users: usize,
    /// Seconds since it started.
    pub uptime_s: u64,
}

/// Cluster-wide counts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stats {
    /// Connections on every live node.
    pub total_connections: usize,
    /// Distinct users on every live node.
    pub connected_users: usize,
    /// Each live node.
    pub nodes: Vec<NodeStats>,
}

/// This node's part of the cluster.
pub(crate) struct Cluster {
    node_id: String,
    started: Instant,
    broker: Arc<dyn Broker>,
    registry: Registry,
    hub: Hub,
    namespaces: Namespaces,
    control_topic: String,
    reply_topic: String,
    lease: Duration,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, mpsc::UnboundedSender<Reply>>>,
}

impl Cluster {
    /// This node's view of the cluster; `prefix` is the deployment's topic prefix.
    pub(crate) fn new(
        node_id: String,
        prefix: &str,
        broker: Arc<dyn Broker>,
        registry: Registry,
        hub: Hub,
        namespaces: Namespaces,
        lease: Duration,
    ) -> Self {
        let topics = Topics::new(prefix);
        Self {
            reply_topic: topics.control_reply(&node_id),
            control_topic: topics.control(),
            node_id,
            started: Instant::now(),
            broker,
            registry,
            hub,
            namespaces,
            lease,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a bus message belongs to the cluster's control traffic.
    pub(crate) fn is_control(&self, topic: &str) -> bool {
        topic == self.control_topic || topic == self.reply_topic
    }

    /// The registry.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Keeps the control topics subscribed, the lease renewed, and dead nodes cleaned up.
    pub(crate) async fn run(self: Arc<Self>) {
        for topic in [self.control_topic.clone(), self.reply_topic.clone()] {
            // Until the bus confirms once; the broker then restores it after every outage.
            while let Err(error) = self.broker.subscribe(topic.clone()).await {
                tracing::debug!(%error, "control topic not subscribed yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut tick = tokio::time::interval(self.lease / 3);
        loop {
            tick.tick().await;
            if let Err(error) = self.registry.leases.renew(&self.node_id, self.lease).await {
                tracing::warn!(%error, "lease not renewed");
                continue;
            }
            if let Err(error) = self.reap().await {
                tracing::warn!(%error, "dead nodes not cleaned up");
            }
        }
    }

    /// Cleans up after nodes whose lease expired: their presence gets leave events, their
    /// connection slots are given back, and their lease is forgotten last (a clean-up cut
    /// short is done again once the claim lapses).
    async fn reap(&self) -> Result<(), ClusterError> {
        let Registry {
            leases,
            presence,
            user_slots,
        } = &self.registry;
        for dead in leases.expired().await? {
            if dead == self.node_id || !leases.claim(&dead, &self.node_id).await? {
                continue;
            }
            let records = presence.take(&dead).await?;
            user_slots.forget(&dead).await?;
            leases.forget(&dead).await?;
            tracing::info!(node = %dead, presence = records.len(), "node lease expired: cleaned up");
            for (channel, entry) in records {
                if let Ok(channel) = ChannelName::parse(&channel) {
                    self.announce(&channel, &entry, false).await;
                }
            }
        }
        Ok(())
    }

    /// Handles a control message from the bus (called from the dispatch loop; never waits).
    pub(crate) fn handle(self: &Arc<Self>, message: &BusMessage) {
        if message.topic == self.reply_topic {
            let Ok(reply) = serde_json::from_slice::<Reply>(&message.payload) else {
                return;
            };
            let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(waiting) = pending.get(&reply.id) {
                let _ = waiting.send(reply);
            }
            return;
        }
        let Ok(request) = serde_json::from_slice::<Request>(&message.payload) else {
            tracing::warn!("malformed cluster request dropped");
            return;
        };
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            let answer = cluster.answer(request.query).await;
            let reply = Reply {
                id: request.id,
                node_id: cluster.node_id.clone(),
                answer,
            };
            let payload = match serde_json::to_vec(&reply) {
                Ok(payload) => Bytes::from(payload),
                Err(error) => {
                    tracing::warn!(%error, "cluster reply not encoded");
                    return;
                }
            };
            if let Err(error) = cluster.broker.publish(request.reply_to, payload).await {
                tracing::warn!(%error, "cluster reply not sent");
            }
        });
    }

    /// Answers a query for this node's own connections.
    async fn answer(&self, query: Query) -> Answer {
        match query {
            Query::Stats => Answer::Stats {
                connections: self.hub.connection_count(),
                users: self.hub.local_users(),
                uptime_s: self.started.elapsed().as_secs(),
            },
            Query::Clients { filter } => Answer::Clients {
                clients: self.hub.local_clients(&filter, &self.node_id),
            },
            Query::Channels => Answer::Channels {
                channels: self.hub.local_channels(),
            },
            Query::Presence { channel } => Answer::Presence {
                clients: self.hub.local_presence(&channel),
            },
            Query::Disconnect { selector, code } => {
                let code = close_code(code).unwrap_or(CloseCode::OperatorDisconnect);
                Answer::Count {
                    count: self.hub.close_where(&selector, code),
                }
            }
            Query::Unsubscribe { selector, channel } => {
                let Ok(channel) = ChannelName::parse(&channel) else {
                    return Answer::Count { count: 0 };
                };
                let left = self.hub.unsubscribe_where(&selector, &channel);
                for entry in &left {
                    self.left(&channel, entry).await;
                }
                Answer::Count { count: left.len() }
            }
        }
    }

    /// Asks every live node; returns the answers that came within the survey timeout.
    async fn survey(&self, query: Query) -> Result<Vec<Reply>, ClusterError> {
        let live = self.registry.leases.live().await?;
        let mut expected: HashSet<String> = live.into_iter().collect();
        expected.insert(self.node_id.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id,
            reply_to: self.reply_topic.clone(),
            query,
        };
        let payload = Bytes::from(serde_json::to_vec(&request)?);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let sent = self
            .broker
            .publish(self.control_topic.clone(), payload)
            .await;
        let mut replies = Vec::new();
        if sent.is_ok() {
            let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
            while !expected.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(reply)) => {
                        expected.remove(&reply.node_id);
                        replies.push(reply);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        sent?;
        if !expected.is_empty() {
            tracing::warn!(missing = ?expected, "nodes did not answer a cluster survey");
        }
        Ok(replies)
    }

    /// Cluster-wide counts, one line per node that answered.
    pub(crate) async fn stats(&self) -> Result<Stats, ClusterError> {
        let mut users = HashSet::new();
        let mut nodes = Vec::new();
        for reply in self.survey(Query::Stats).await? {
            if let Answer::Stats {
                connections,
                users: node_users,
                uptime_s,
            } = reply.answer
            {
                nodes.push(NodeStats {
                    node_id: reply.node_id,
                    connections,
                    users: node_users.len(),
                    uptime_s,
                });
                users.extend(node_users);
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Stats {
            total_connections: nodes.iter().map(|n| n.connections).sum(),
            connected_users: users.len(),
            nodes,
        })
    }

    /// Every connection in the cluster that passes `filter`.
    pub(crate) async fn clients(
        &self,
        filter: ClientFilter,
    ) -> Result<Vec<ClientInfo>, ClusterError> {
        let mut clients = Vec::new();
        for reply in self.survey(Query::Clients { filter }).await? {
            if let Answer::Clients { clients: found } = reply.answer {
                clients.extend(found);
            }
        }
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(clients)
    }

    /// Every channel with subscribers, with the cluster-wide count.
    pub(crate) async fn channels(&self) -> Result<BTreeMap<String, usize>, ClusterError> {
        let mut channels = BTreeMap::new();
        for reply in self.survey(Query::Channels).await? {
            if let Answer::Channels { channels: found } = reply.answer {
                for (name, count) in found {
                    *channels.entry(name).or_insert(0) += count;
                }
            }
        }
        Ok(channels)
    }

    /// The connections subscribed to `channel`, cluster-wide.
    pub(crate) async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceEntry>, ClusterError> {
        let mut clients = Vec::new();
        let query = Query::Presence {
            channel: channel.to_string(),
        };
        for reply in self.survey(query).await? {
            if let Answer::Presence { clients: found } = reply.answer {
                clients.extend(found);
            }
        }
        clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(clients)
    }

    /// Closes the selected connections on every node with `code`; returns how many.
    pub(crate) async fn disconnect(
        &self,
        selector: Selector,
        code: CloseCode,
    ) -> Result<usize, ClusterError> {
        let query = Query::Disconnect {
            selector,
            code: code.code(),
        };
        Ok(count(self.survey(query).await?))
    }

    /// Unsubscribes the selected connections from `channel` on every node; returns how many.
    pub(crate) async fn unsubscribe(
        &self,
        selector: Selector,
        channel: &ChannelName,
    ) -> Result<usize, ClusterError> {
        let query = Query::Unsubscribe {
            selector,
            channel: channel.to_string(),
        };
        Ok(count(self.survey(query).await?))
    }

    /// Whether a channel's namespace keeps presence.
    pub(crate) fn keeps_presence(&self, channel: &ChannelName) -> bool {
        self.namespaces
            .get(channel.namespace())
            .is_some_and(|ns| ns.presence)
    }

    /// A connection joined a channel: record its presence and tell the subscribers.
    pub(crate) async fn joined(&self, channel: &ChannelName, entry: &PresenceEntry) {
        if !self.keeps_presence(channel) {
            return;
        }
        let recorded = self
            .registry
            .presence
            .add(&self.node_id, channel.as_str(), entry)
            .await;
        if let Err(error) = recorded {
            tracing::warn!(%error, "presence not recorded");
        }
        self.announce(channel, entry, true).await;
    }

    /// A connection left a channel: forget its presence and tell the subscribers.
    pub(crate) async fn left(&self, channel: &ChannelName, entry: &PresenceEntry) {
        if !self.keeps_presence(channel) {
            return;
        }
        let removed = self
            .registry
            .presence
            .remove(&self.node_id, channel.as_str(), &entry.client_id)
            .await;
        if let Err(error) = removed {
            tracing::warn!(%error, "presence not removed");
        }
        self.announce(channel, entry, false).await;
    }

    /// Publishes a `join` or `leave` event where the namespace asks for them.
    async fn announce(&self, channel: &ChannelName, entry: &PresenceEntry, joined: bool) {
        let wanted = self
            .namespaces
            .get(channel.namespace())
            .is_some_and(|ns| ns.join_leave);
        if !wanted {
            return;
        }
        let event = if joined {
            EventName::join()
        } else {
            EventName::leave()
        };
        let data = match serde_json::value::to_raw_value(entry) {
            Ok(data) => data,
            Err(error) => {
                tracing::warn!(%error, "presence event not encoded");
                return;
            }
        };
        // A connection is not told of its own join.
        let exclude = joined.then_some(entry.client_id.as_str());
        let target = Target::Channel(channel.as_str());
        let published = self
            .hub
            .publish(target, &event, Some(&data), exclude, None)
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, "presence event not published");
        }
    }
}

fn count(replies: Vec<Reply>) -> usize {
    replies
        .into_iter()
        .map(|r| match r.answer {
            Answer::Count { count } => count,
            _ => 0,
        })
        .sum()
}

/// The close codes an operator may choose.
pub(crate) fn close_code(code: u16) -> Option<CloseCode> {
    use CloseCode::*;
    [
        Normal,
        OperatorDisconnect,
        TokenInvalid,
        TokenExpired,
        ProtocolAbuse,
        RateLimited,
        TooManyConnections,
        ShuttingDown,
    ]
    .into_iter()
    .find(|c| c.code() == code)
}

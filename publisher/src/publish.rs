//! The publisher: typed events to channels, users, client types or everyone, over Redis.
//!
//! A batch goes out as one pipeline, or on a Redis Cluster as one pipeline per hash slot, all
//! at once (a cluster pipeline must stay in one slot).

mod event;
mod namespaces;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::Pool;
use futures_util::future::try_join_all;
use redis::Value;
use redis::cluster_routing::Slot;

use self::event::{Destination, Message};
pub use self::event::{Event, Recipients};
use self::namespaces::Namespaces;
use crate::shared::{ConnectError, Connection, SetupError, SharedConnection};
use crate::topology::RedisTopology;
use crate::wire::{
    ChannelName, PUBLISH_SCRIPT, Position, PublishCall, Published, TopicArg, Topics, WireError,
    timestamp_now,
};

/// How long connecting and each command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A name did not validate.
    #[error(transparent)]
    Invalid(#[from] WireError),
    /// The data could not be serialised to JSON.
    #[error("event data is not serialisable: {0}")]
    Data(#[source] serde_json::Error),
    /// The Redis URL, mode or pool settings are invalid.
    #[error("Redis configuration: {0}")]
    Config(#[from] SetupError),
    /// No connection could be had.
    #[error("no Redis connection: {0}")]
    Connect(#[from] ConnectError),
    /// Redis refused or failed the command.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered the publish script with something unexpected.
    #[error("unexpected reply to the publish script: {0}")]
    Reply(#[source] redis::ParsingError),
}

/// What one published message became: one per channel for channel events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The channel, for channel and user events.
    pub channel: Option<ChannelName>,
    /// The event's offset and epoch, where the channel's namespace keeps history.
    pub position: Option<Position>,
    /// The idempotency key was seen: nothing was published this time.
    pub duplicate: bool,
}

/// Publishes events to the gateways' Redis bus. Cheap to clone; share one per process.
///
/// ```
/// # testkit::with_redis(|url| async move {
/// use publisher::{Event, Publisher};
///
/// let publisher = Publisher::connect(&url)?;
/// publisher.publish(&Event::to_user("42", "photo_ready", &serde_json::json!({"photo": "p1"}))?).await?;
/// publisher.publish(&Event::to_channel("jobs", "job_done", &"abc")?.excluding("client-7")).await?;
/// # Ok::<(), publisher::PublishError>(())
/// # });
/// ```
#[derive(Clone)]
pub struct Publisher {
    connection: SharedConnection,
    topics: Topics,
    script: Arc<redis::Script>,
    script_loaded: Arc<AtomicBool>,
    namespaces: Arc<Mutex<namespaces::Cached>>,
}

impl Publisher {
    /// A publisher for the Redis at `url` (`redis://` or `rediss://`), with the default
    /// prefix `gw`. Connections are made on first use.
    pub fn connect(url: &str) -> Result<Self, PublishError> {
        Self::connect_to(&RedisTopology::standalone(url))
    }

    /// A publisher for the Redis of `topology`: one server, a Redis Cluster from its seed
    /// nodes, or the master the sentinels name (the gateways' `GATEWAY_REDIS_MODE` settings).
    pub fn connect_to(topology: &RedisTopology) -> Result<Self, PublishError> {
        if topology.uses_tls() {
            // rediss:// needs a TLS provider; keep the process's own if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let connection = SharedConnection::connect(topology, 8, COMMAND_TIMEOUT)?;
        Ok(Self::from_connection(connection))
    }

    /// A publisher over an existing deadpool-redis pool (one server).
    pub fn from_pool(pool: Pool) -> Self {
        Self::from_connection(SharedConnection::new(pool))
    }

    /// A publisher over a shared connection, in the mode of its Redis.
    pub fn from_connection(connection: SharedConnection) -> Self {
        let topics = topics_for(&connection, "gw");
        Self {
            connection,
            topics,
            script: Arc::new(redis::Script::new(PUBLISH_SCRIPT)),
            script_loaded: Arc::new(AtomicBool::new(false)),
            namespaces: Arc::default(),
        }
    }

    /// Uses another key and channel prefix (the gateways' `GATEWAY_REDIS_PREFIX`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topics = topics_for(&self.connection, prefix);
        self
    }

    /// Publishes one event. Channel and user events go through the history script, so they
    /// get offsets where their namespace keeps history; there is one receipt per channel.
    pub async fn publish(&self, event: &Event) -> Result<Vec<Receipt>, PublishError> {
        self.publish_batch(std::slice::from_ref(event)).await
    }

    /// Publishes many events in one pipelined round trip, in order; the receipts follow the
    /// events' messages in order.
    ///
    /// ```
    /// # testkit::with_redis(|url| async move {
    /// use publisher::{Event, Publisher};
    /// let publisher = Publisher::connect(&url)?;
    /// let events = (0..100)
    ///     .map(|i| Event::to_channel("jobs", "job_progress", &i))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// let receipts = publisher.publish_batch(&events).await?;
    /// assert_eq!(receipts.len(), 100);
    /// # Ok::<(), publisher::PublishError>(())
    /// # });
    /// ```
    pub async fn publish_batch(&self, events: &[Event]) -> Result<Vec<Receipt>, PublishError> {
        let connection = self.connection.get().await?;
        match self.publish_over(connection, events).await {
            Err(PublishError::Redis(error)) => Err(self.connection.check(error).into()),
            other => other,
        }
    }

    async fn publish_over(
        &self,
        mut connection: Connection,
        events: &[Event],
    ) -> Result<Vec<Receipt>, PublishError> {
        // One batch is published at one moment: one timestamp for all its events.
        let timestamp = timestamp_now();
        let read = namespaces::read(&self.namespaces, self.topics.keys(), &mut connection).await;
        // On a cluster the script cannot read the settings itself: they must be known here.
        // Elsewhere, unknown settings send every channel event through the script, which is
        // always correct.
        let settings = if self.topics.is_sharded() {
            Some(read?)
        } else {
            read.ok()
        };
        let messages = plan(events, &timestamp, settings.as_deref());
        let groups = self.groups(&messages);
        let sent = groups.iter().map(|indexes| {
            self.publish_group(connection.clone(), &messages, indexes, settings.as_deref())
        });
        let mut replies = vec![Value::Nil; messages.len()];
        for (indexes, group) in groups.iter().zip(try_join_all(sent).await?) {
            for (index, reply) in indexes.iter().zip(group) {
                replies[*index] = reply;
            }
        }
        messages
            .into_iter()
            .zip(replies.iter_mut())
            .map(|(message, reply)| {
                let channel = match message.destination {
                    Destination::Channel(channel) => Some(channel),
                    _ => None,
                };
                receipt(channel, message.scripted, std::mem::take(reply))
            })
            .collect()
    }

    /// The messages' indexes in pipelines: all in one, or on a cluster one per hash slot
    /// (a channel's topic is in the slot of its keys).
    fn groups(&self, messages: &[Message<'_>]) -> Vec<Vec<usize>> {
        if !self.topics.is_sharded() {
            return vec![(0..messages.len()).collect()];
        }
        let mut slots: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (index, message) in messages.iter().enumerate() {
            let topic = self.topics.for_target(message.target());
            slots.entry(Slot::for_key(topic)).or_default().push(index);
        }
        let mut groups: Vec<Vec<usize>> = slots.into_values().collect();
        groups.sort_unstable_by_key(|group| group[0]);
        groups
    }

    /// Publishes the messages at `indexes` in one pipeline; one reply each.
    async fn publish_group(
        &self,
        mut connection: Connection,
        messages: &[Message<'_>],
        indexes: &[usize],
        settings: Option<&Namespaces>,
    ) -> Result<Vec<Value>, redis::RedisError> {
        match self.run(&mut connection, messages, indexes, settings).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis lost its scripts (a restart, or a cluster node that never had it):
                // none of the script calls ran, so run exactly those again after loading it.
                self.script_loaded.store(false, Ordering::Release);
                let scripted: Vec<usize> = indexes
                    .iter()
                    .copied()
                    .filter(|i| messages[*i].scripted)
                    .collect();
                let again = self
                    .run(&mut connection, messages, &scripted, settings)
                    .await?;
                let mut replies = vec![Value::Nil; indexes.len()];
                let mut again = scripted.into_iter().zip(again).peekable();
                for (reply, index) in replies.iter_mut().zip(indexes) {
                    if let Some((_, value)) = again.next_if(|(i, _)| i == index) {
                        *reply = value;
                    }
                }
                Ok(replies)
            }
            other => other,
        }
    }

    /// Sends the messages at `indexes` in one pipeline; returns one reply per message.
    async fn run(
        &self,
        connection: &mut Connection,
        messages: &[Message<'_>],
        indexes: &[usize],
        settings: Option<&Namespaces>,
    ) -> Result<Vec<Value>, redis::RedisError> {
        let load = !self.script_loaded.load(Ordering::Acquire);
        let pipeline = self.pipeline(messages, indexes, load, settings);
        let replies: Vec<Value> = pipeline.query_async(connection).await?;
        if load {
            self.script_loaded.store(true, Ordering::Release);
        }
        Ok(replies)
    }

    /// The pipeline that publishes the messages at `indexes`, loading the script first when
    /// `load`: the exact commands of `publisher/vectors/publish.json`.
    fn pipeline(
        &self,
        messages: &[Message<'_>],
        indexes: &[usize],
        load: bool,
        settings: Option<&Namespaces>,
    ) -> redis::Pipeline {
        let mut pipeline = redis::Pipeline::with_capacity(indexes.len() + 1);
        if load {
            pipeline.load_script(&self.script).ignore();
        }
        let sharded = self.topics.is_sharded();
        // Each envelope is encoded here and copied into its command: one buffer for all.
        let mut payload = Vec::new();
        let invocations: Vec<redis::ScriptInvocation<'_>> = indexes
            .iter()
            .filter_map(|i| {
                let message = &messages[*i];
                let channel = message.channel().filter(|_| message.scripted)?;
                message.encode_into(&mut payload);
                // The window and the policy are the gateways' (from `<prefix>:namespaces`),
                // read by the script itself except on a cluster.
                let known = settings.filter(|_| sharded);
                let call = PublishCall {
                    idempotency_key: message.event.idempotency_key.as_deref(),
                    window: known.map(Namespaces::window),
                    policy: known.map(|s| s.policy(channel.namespace())),
                    ..PublishCall::new(channel, &payload)
                };
                Some(call.invocation(&self.script, &self.topics))
            })
            .collect();
        let mut scripted = invocations.iter();
        for index in indexes {
            let message = &messages[*index];
            let invocation = if message.scripted {
                scripted.next()
            } else {
                None
            };
            match invocation {
                Some(invocation) => {
                    pipeline.invoke_script(invocation);
                }
                None => {
                    // Sized once: this runs for every published message.
                    let publish = if sharded && message.channel().is_some() {
                        "SPUBLISH"
                    } else {
                        "PUBLISH"
                    };
                    let topic = TopicArg::new(&self.topics, message.target());
                    message.encode_into(&mut payload);
                    let size = publish.len() + topic.len() + payload.len();
                    let mut command = redis::Cmd::with_capacity(3, size);
                    command.arg(publish).arg(topic).arg(&payload[..]);
                    pipeline.add_command(command);
                }
            }
        }
        pipeline
    }
}

/// The names under `prefix` in the mode of `connection`'s Redis.
fn topics_for(connection: &SharedConnection, prefix: impl Into<String>) -> Topics {
    if connection.is_cluster() {
        Topics::sharded(prefix)
    } else {
        Topics::new(prefix)
    }
}

/// The bus messages of `events` published at `timestamp`, each marked for the history script
/// where its namespace keeps history (`settings`: `None` when unknown, then every channel
/// message) or it carries an idempotency key; the others are plain PUBLISHes.
fn plan<'e>(
    events: &'e [Event],
    timestamp: &'e str,
    settings: Option<&Namespaces>,
) -> Vec<Message<'e>> {
    let mut messages: Vec<Message<'e>> = events
        .iter()
        .flat_map(|event| event.messages(timestamp))
        .collect();
    for message in &mut messages {
        let plain = message.event.idempotency_key.is_none()
            && message
                .channel()
                .zip(settings)
                .is_some_and(|(c, s)| !s.keeps_history(c.namespace()));
        message.scripted = message.channel().is_some() && !plain;
    }
    messages
}

/// Reads the script's `[offset, epoch, duplicate]`, or PUBLISH's receiver count.
fn receipt(
    channel: Option<ChannelName>,
    scripted: bool,
    reply: Value,
) -> Result<Receipt, PublishError> {
    if !scripted {
        return Ok(Receipt {
            channel,
            position: None,
            duplicate: false,
        });
    }
    let published: Published = redis::from_redis_value(reply).map_err(PublishError::Reply)?;
    Ok(Receipt {
        channel,
        position: published.position,
        duplicate: published.duplicate,
    })
}

#[cfg(test)]
mod vectors;

//! The publisher: typed events to channels, users, client types or everyone, over Redis.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::Pool;
use redis::Value;
use redis::aio::MultiplexedConnection;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::shared::{SetupError, SharedConnection};
use crate::wire::{
    ChannelName, ClientType, Envelope, EventName, PUBLISH_SCRIPT, Position, PublishCall, Published,
    Target, TopicArg, Topics, UserId, WireError, namespace_policies, timestamp_now,
};

/// How often the namespaces that keep history are read again from Redis.
const POLICY_REFRESH: Duration = Duration::from_secs(5);

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A name did not validate.
    #[error(transparent)]
    Invalid(#[from] WireError),
    /// The data could not be serialised to JSON.
    #[error("event data is not serialisable: {0}")]
    Data(#[source] serde_json::Error),
    /// The Redis URL or pool settings are invalid.
    #[error("Redis configuration: {0}")]
    Config(#[from] SetupError),
    /// No connection could be had from the pool.
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
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

/// Who receives an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Subscribers of a channel.
    Channel(ChannelName),
    /// Subscribers of each of several channels (one event per channel).
    Channels(Vec<ChannelName>),
    /// Every connection of a user, on every replica.
    User(UserId),
    /// Every connection registered with a client type.
    ClientType(ClientType),
    /// Every connection.
    Broadcast,
}

/// An event ready to publish: recipients, a validated name, and its data as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    recipients: Recipients,
    name: EventName,
    data: Box<RawValue>,
    exclude_client: Option<String>,
    idempotency_key: Option<String>,
}

/// One bus message of an event, ready for Redis. Its topic and envelope are written into the
/// Redis command when it is built, with no string or buffer of their own per message.
struct Message<'e> {
    event: &'e Event,
    timestamp: &'e str,
    destination: Destination<'e>,
    /// Published through the history script rather than with PUBLISH.
    scripted: bool,
}

/// Where one bus message goes.
enum Destination<'e> {
    Channel(ChannelName),
    ClientType(&'e str),
    Broadcast,
}

impl Message<'_> {
    fn channel(&self) -> Option<&ChannelName> {
        match &self.destination {
            Destination::Channel(channel) => Some(channel),
            _ => None,
        }
    }

    fn target(&self) -> Target<'_> {
        match &self.destination {
            Destination::Channel(channel) => Target::Channel(channel.as_str()),
            Destination::ClientType(client_type) => Target::ClientType(client_type),
            Destination::Broadcast => Target::Broadcast,
        }
    }

    /// Encodes the message's envelope into `buffer`, replacing what it held.
    fn encode_into(&self, buffer: &mut Vec<u8>) {
        buffer.clear();
        self.envelope().encode_into(buffer);
    }

    fn envelope(&self) -> Envelope<'_> {
        Envelope::new(
            self.target(),
            self.event.name.as_str(),
            Some(&self.event.data),
            self.event.exclude_client.as_deref(),
            self.timestamp.into(),
        )
    }
}

impl Event {
    /// An event for `recipients`, named `name`, carrying `data` (anything `Serialize`).
    ///
    /// ```
    /// use publisher::{Event, Recipients, ChannelName};
    /// let event = Event::new(
    ///     Recipients::Channel(ChannelName::parse("jobs")?),
    ///     "job_progress",
    ///     &serde_json::json!({"job_id": "abc", "progress": 45.5}),
    /// )?;
    /// assert_eq!(event.name(), "job_progress");
    /// // Reply frame types are reserved:
    /// assert!(Event::new(Recipients::Broadcast, "pong", &()).is_err());
    /// # Ok::<(), publisher::PublishError>(())
    /// ```
    pub fn new(
        recipients: Recipients,
        name: &str,
        data: &impl Serialize,
    ) -> Result<Self, PublishError> {
        Ok(Self {
            recipients,
            name: EventName::parse(name)?,
            data: serde_json::value::to_raw_value(data).map_err(PublishError::Data)?,
            exclude_client: None,
            idempotency_key: None,
        })
    }

    /// An event for the subscribers of `channel`.
    pub fn to_channel(
        channel: &str,
        name: &str,
        data: &impl Serialize,
    ) -> Result<Self, PublishError> {
        Self::new(
            Recipients::Channel(ChannelName::parse(channel)?),
            name,
            data,
        )
    }

    /// An event for the subscribers of each of `channels`.
    pub fn to_channels<S: AsRef<str>>(
        channels: &[S],
        name: &str,
        data: &impl Serialize,
    ) -> Result<Self, PublishError> {
        let channels = channels
            .iter()
            .map(|c| ChannelName::parse(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(Recipients::Channels(channels), name, data)
    }

    /// An event for every connection of `user`.
    pub fn to_user(user: &str, name: &str, data: &impl Serialize) -> Result<Self, PublishError> {
        Self::new(Recipients::User(UserId::parse(user)?), name, data)
    }

    /// An event for every connection registered as `client_type`.
    pub fn to_client_type(
        client_type: &str,
        name: &str,
        data: &impl Serialize,
    ) -> Result<Self, PublishError> {
        Self::new(
            Recipients::ClientType(ClientType::parse(client_type)?),
            name,
            data,
        )
    }

    /// An event for every connection.
    pub fn broadcast(name: &str, data: &impl Serialize) -> Result<Self, PublishError> {
        Self::new(Recipients::Broadcast, name, data)
    }

    /// Leaves out one connection, usually the one whose action caused the event.
    pub fn excluding(mut self, client_id: impl Into<String>) -> Self {
        self.exclude_client = Some(client_id.into());
        self
    }

    /// Publishes at most once per key within the gateways' idempotency window (channel and
    /// user events): a repeat answers the first publish's position and delivers nothing.
    pub fn idempotent(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The event name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The recipients.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// Each bus message this event becomes, published at `timestamp`: one per channel.
    fn messages<'e>(&'e self, timestamp: &'e str) -> impl Iterator<Item = Message<'e>> + 'e {
        let (single, channels) = match &self.recipients {
            Recipients::Channel(channel) => (Some(Destination::Channel(channel.clone())), &[][..]),
            Recipients::Channels(channels) => (None, channels.as_slice()),
            Recipients::User(user) => (
                Some(Destination::Channel(ChannelName::personal(user))),
                &[][..],
            ),
            Recipients::ClientType(client_type) => {
                (Some(Destination::ClientType(client_type.as_str())), &[][..])
            }
            Recipients::Broadcast => (Some(Destination::Broadcast), &[][..]),
        };
        let channels = channels
            .iter()
            .map(|channel| Destination::Channel(channel.clone()));
        single
            .into_iter()
            .chain(channels)
            .map(move |destination| Message {
                event: self,
                timestamp,
                scripted: matches!(destination, Destination::Channel(_)),
                destination,
            })
    }
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
    history: Arc<Mutex<HistoryNamespaces>>,
}

/// The namespaces that keep history, as the gateways published them, and when they were read.
#[derive(Default)]
struct HistoryNamespaces {
    read_at: Option<Instant>,
    names: Arc<HashSet<String>>,
}

impl Publisher {
    /// A publisher for the Redis at `url` (`redis://` or `rediss://`), with the default
    /// prefix `gw`. Connections are made on first use.
    pub fn connect(url: &str) -> Result<Self, PublishError> {
        if url.starts_with("rediss://") {
            // rediss:// needs a TLS provider; keep the process's own if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let pool = crate::shared::pool(url, 8, Duration::from_secs(5))?;
        Ok(Self::from_pool(pool))
    }

    /// A publisher over an existing deadpool-redis pool.
    pub fn from_pool(pool: Pool) -> Self {
        Self {
            connection: SharedConnection::new(pool),
            topics: Topics::new("gw"),
            script: Arc::new(redis::Script::new(PUBLISH_SCRIPT)),
            script_loaded: Arc::new(AtomicBool::new(false)),
            history: Arc::default(),
        }
    }

    /// Uses another key and channel prefix (the gateways' `GATEWAY_REDIS_PREFIX`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topics = Topics::new(prefix);
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
        let mut connection = self.connection.get().await?;
        match self.publish_over(&mut connection, events).await {
            Err(PublishError::Redis(error)) => Err(self.connection.check(error).into()),
            other => other,
        }
    }

    async fn publish_over(
        &self,
        connection: &mut MultiplexedConnection,
        events: &[Event],
    ) -> Result<Vec<Receipt>, PublishError> {
        // One batch is published at one moment: one timestamp for all its events.
        let timestamp = timestamp_now();
        let history = self.history_namespaces(connection).await;
        let messages = plan(events, &timestamp, history.as_deref());
        let all: Vec<usize> = (0..messages.len()).collect();
        let mut replies = match self.run(connection, &messages, &all).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis lost its scripts (a restart): none of the script calls ran, so run
                // exactly those again after loading it.
                self.script_loaded.store(false, Ordering::Release);
                let scripted: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|i| messages[*i].scripted)
                    .collect();
                let again = self.run(connection, &messages, &scripted).await?;
                let mut replies = vec![Value::Nil; messages.len()];
                for (index, reply) in scripted.into_iter().zip(again) {
                    replies[index] = reply;
                }
                replies
            }
            other => other?,
        };
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

    /// The namespaces that keep history, read again every few seconds; `None` if Redis would
    /// not say (then every channel event goes through the script, which is always correct).
    async fn history_namespaces(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Option<Arc<HashSet<String>>> {
        {
            let cached = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if cached
                .read_at
                .is_some_and(|at| at.elapsed() < POLICY_REFRESH)
            {
                return Some(Arc::clone(&cached.names));
            }
        }
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.topics.keys().namespaces())
            .query_async(connection)
            .await
            .ok()?;
        let names: Arc<HashSet<String>> = Arc::new(
            namespace_policies(fields)
                .map(|(namespace, _)| namespace)
                .collect(),
        );
        let mut cached = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        cached.read_at = Some(Instant::now());
        cached.names = Arc::clone(&names);
        Some(names)
    }

    /// Sends the messages at `indexes` in one pipeline; returns one reply per message.
    async fn run(
        &self,
        connection: &mut MultiplexedConnection,
        messages: &[Message<'_>],
        indexes: &[usize],
    ) -> Result<Vec<Value>, redis::RedisError> {
        let load = !self.script_loaded.load(Ordering::Acquire);
        let pipeline = self.pipeline(messages, indexes, load);
        let replies: Vec<Value> = pipeline.query_async(connection).await?;
        if load {
            self.script_loaded.store(true, Ordering::Release);
        }
        Ok(replies)
    }

    /// The pipeline that publishes the messages at `indexes`, loading the script first when
    /// `load`: the exact commands of `publisher/vectors/publish.json`.
    fn pipeline(&self, messages: &[Message<'_>], indexes: &[usize], load: bool) -> redis::Pipeline {
        let mut pipeline = redis::Pipeline::with_capacity(indexes.len() + 1);
        if load {
            pipeline.load_script(&self.script).ignore();
        }
        // Each envelope is encoded here and copied into its command: one buffer for all.
        let mut payload = Vec::new();
        let invocations: Vec<redis::ScriptInvocation<'_>> = indexes
            .iter()
            .filter_map(|i| {
                let message = &messages[*i];
                let channel = message.channel().filter(|_| message.scripted)?;
                message.encode_into(&mut payload);
                // The window and the policy are the gateways' (from `<prefix>:namespaces`).
                let call = PublishCall {
                    idempotency_key: message.event.idempotency_key.as_deref(),
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
                    const PUBLISH: &str = "PUBLISH";
                    let topic = TopicArg::new(&self.topics, message.target());
                    message.encode_into(&mut payload);
                    let size = PUBLISH.len() + topic.len() + payload.len();
                    let mut publish = redis::Cmd::with_capacity(3, size);
                    publish.arg(PUBLISH).arg(topic).arg(&payload[..]);
                    pipeline.add_command(publish);
                }
            }
        }
        pipeline
    }
}

/// The bus messages of `events` published at `timestamp`, each marked for the history script
/// where its namespace keeps history (`history`: `None` when unknown, then every channel
/// message) or it carries an idempotency key; the others are plain PUBLISHes.
fn plan<'e>(
    events: &'e [Event],
    timestamp: &'e str,
    history: Option<&HashSet<String>>,
) -> Vec<Message<'e>> {
    let mut messages: Vec<Message<'e>> = events
        .iter()
        .flat_map(|event| event.messages(timestamp))
        .collect();
    for message in &mut messages {
        let plain = message.event.idempotency_key.is_none()
            && message
                .channel()
                .zip(history)
                .is_some_and(|(c, h)| !h.contains(c.namespace()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_events_go_to_the_personal_channel() {
        let event = Event::to_user("42", "hello", &1).unwrap();
        let timestamp = timestamp_now();
        let messages: Vec<_> = event.messages(&timestamp).collect();
        assert_eq!(messages.len(), 1);
        assert_eq!(
            Topics::new("gw").for_target(messages[0].target()),
            "gw:ch:#42"
        );
        let payload = messages[0].envelope().encode();
        let envelope = Envelope::decode(&payload).unwrap();
        assert_eq!(envelope.target().unwrap(), Target::Channel("#42"));
        assert_eq!(envelope.data.unwrap().get(), "1");
    }

    #[test]
    fn several_channels_make_one_message_each() {
        let event = Event::to_channels(&["a", "b:c"], "e", &())
            .unwrap()
            .excluding("c1");
        let timestamp = timestamp_now();
        let messages: Vec<_> = event.messages(&timestamp).collect();
        let prefixed = Topics::new("p");
        let topics: Vec<_> = messages
            .iter()
            .map(|m| prefixed.for_target(m.target()))
            .collect();
        assert_eq!(topics, ["p:ch:a", "p:ch:b:c"]);
        let payload = messages[1].envelope().encode();
        let envelope = Envelope::decode(&payload).unwrap();
        assert_eq!(envelope.exclude_client.as_deref(), Some("c1"));
    }

    #[test]
    fn names_are_validated_at_the_edge() {
        assert!(matches!(
            Event::to_channel("bad name", "e", &()),
            Err(PublishError::Invalid(WireError::InvalidChannel(_)))
        ));
        assert!(matches!(
            Event::to_client_type("gui", "subscribed", &()),
            Err(PublishError::Invalid(WireError::ReservedEvent(_)))
        ));
        assert!(Event::to_user("a,b", "e", &()).is_err());
    }
}

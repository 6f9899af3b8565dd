//! The publisher: typed events to channels, users, client types or everyone, over Redis.

use std::time::Duration;

use deadpool_redis::{Pool, Runtime};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::wire::{
    ChannelName, ClientType, Envelope, EventName, Target, Topics, UserId, WireError, timestamp_now,
};

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
    Config(String),
    /// No connection could be had from the pool.
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// Redis refused or failed the command.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
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

    /// The event name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The recipients.
    pub fn recipients(&self) -> &Recipients {
        &self.recipients
    }

    /// Each (topic, bus message) this event becomes: one per channel.
    fn messages(&self, topics: &Topics) -> Vec<(String, Vec<u8>)> {
        let timestamp = timestamp_now();
        let personal;
        let targets: Vec<Target<'_>> = match &self.recipients {
            Recipients::Channel(channel) => vec![Target::Channel(channel.as_str())],
            Recipients::Channels(channels) => channels
                .iter()
                .map(|c| Target::Channel(c.as_str()))
                .collect(),
            Recipients::User(user) => {
                personal = ChannelName::personal(user);
                vec![Target::Channel(personal.as_str())]
            }
            Recipients::ClientType(client_type) => vec![Target::ClientType(client_type.as_str())],
            Recipients::Broadcast => vec![Target::Broadcast],
        };
        targets
            .into_iter()
            .map(|target| {
                let (channel, client_type, broadcast) = match target {
                    Target::Channel(c) => (Some(c.into()), None, false),
                    Target::ClientType(t) => (None, Some(t.into()), false),
                    Target::Broadcast => (None, None, true),
                };
                let envelope = Envelope {
                    channel,
                    client_type,
                    broadcast,
                    event: self.name.as_str().into(),
                    data: Some(&self.data),
                    timestamp: timestamp.as_str().into(),
                    exclude_client: self.exclude_client.as_deref().map(Into::into),
                    offset: None,
                    epoch: None,
                };
                (topics.for_target(target), envelope.encode())
            })
            .collect()
    }
}

/// Publishes events to the gateways' Redis bus. Cheap to clone; share one per process.
///
/// ```
/// # publisher::doctest::with_redis(|url| async move {
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
    pool: Pool,
    topics: Topics,
}

impl Publisher {
    /// A publisher for the Redis at `url` (`redis://` or `rediss://`), with the default
    /// prefix `gw`. Connections are made on first use.
    pub fn connect(url: &str) -> Result<Self, PublishError> {
        if url.starts_with("rediss://") {
            // rediss:// needs a TLS provider; keep the process's own if it installed one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let pool = deadpool_redis::Config::from_url(url)
            .builder()
            .map_err(|e| PublishError::Config(e.to_string()))?
            .max_size(8)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(Self::from_pool(pool))
    }

    /// A publisher over an existing deadpool-redis pool.
    pub fn from_pool(pool: Pool) -> Self {
        Self {
            pool,
            topics: Topics::new("gw"),
        }
    }

    /// Uses another key and channel prefix (the gateways' `GATEWAY_REDIS_PREFIX`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topics = Topics::new(prefix);
        self
    }

    /// Publishes one event.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(event)).await
    }

    /// Publishes many events in one pipelined round trip, in order.
    ///
    /// ```
    /// # publisher::doctest::with_redis(|url| async move {
    /// use publisher::{Event, Publisher};
    /// let publisher = Publisher::connect(&url)?;
    /// let events = (0..100)
    ///     .map(|i| Event::to_channel("jobs", "job_progress", &i))
    ///     .collect::<Result<Vec<_>, _>>()?;
    /// publisher.publish_batch(&events).await?;
    /// # Ok::<(), publisher::PublishError>(())
    /// # });
    /// ```
    pub async fn publish_batch(&self, events: &[Event]) -> Result<(), PublishError> {
        let mut pipeline = redis::pipe();
        for event in events {
            for (topic, payload) in event.messages(&self.topics) {
                pipeline.cmd("PUBLISH").arg(topic).arg(payload).ignore();
            }
        }
        let mut connection = self.pool.get().await?;
        pipeline.query_async::<()>(&mut *connection).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_events_go_to_the_personal_channel() {
        let event = Event::to_user("42", "hello", &1).unwrap();
        let messages = event.messages(&Topics::new("gw"));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].0, "gw:ch:#42");
        let envelope = Envelope::decode(&messages[0].1).unwrap();
        assert_eq!(envelope.target().unwrap(), Target::Channel("#42"));
        assert_eq!(envelope.data.unwrap().get(), "1");
    }

    #[test]
    fn several_channels_make_one_message_each() {
        let event = Event::to_channels(&["a", "b:c"], "e", &())
            .unwrap()
            .excluding("c1");
        let messages = event.messages(&Topics::new("p"));
        let topics: Vec<_> = messages.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, ["p:ch:a", "p:ch:b:c"]);
        let envelope = Envelope::decode(&messages[1].1).unwrap();
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

//! Events: who receives them, their validated name and data, and the bus messages they become.

use serde::Serialize;
use serde_json::value::RawValue;

use super::PublishError;
use crate::wire::{ChannelName, ClientType, Envelope, EventName, Target, UserId};

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
    pub(super) idempotency_key: Option<String>,
}

/// One bus message of an event, ready for Redis. Its topic and envelope are written into the
/// Redis command when it is built, with no string or buffer of their own per message.
pub(super) struct Message<'e> {
    pub(super) event: &'e Event,
    pub(super) timestamp: &'e str,
    pub(super) destination: Destination<'e>,
    /// Published through the history script rather than with PUBLISH.
    pub(super) scripted: bool,
}

/// Where one bus message goes.
pub(super) enum Destination<'e> {
    Channel(ChannelName),
    ClientType(&'e str),
    Broadcast,
}

impl Message<'_> {
    pub(super) fn channel(&self) -> Option<&ChannelName> {
        match &self.destination {
            Destination::Channel(channel) => Some(channel),
            _ => None,
        }
    }

    pub(super) fn target(&self) -> Target<'_> {
        match &self.destination {
            Destination::Channel(channel) => Target::Channel(channel.as_str()),
            Destination::ClientType(client_type) => Target::ClientType(client_type),
            Destination::Broadcast => Target::Broadcast,
        }
    }

    /// Encodes the message's envelope into `buffer`, replacing what it held.
    pub(super) fn encode_into(&self, buffer: &mut Vec<u8>) {
        buffer.clear();
        self.envelope().encode_into(buffer);
    }

    pub(super) fn envelope(&self) -> Envelope<'_> {
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
    pub(super) fn messages<'e>(
        &'e self,
        timestamp: &'e str,
    ) -> impl Iterator<Item = Message<'e>> + 'e {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Topics, WireError, timestamp_now};

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

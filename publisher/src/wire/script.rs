//! The publish script's contract: its KEYS and ARGV ([`PublishCall`]), the settings it reads
//! from `<prefix>:namespaces` ([`HistoryPolicy`], the idempotency window), the position it
//! puts into a message ([`with_position`]) and its reply ([`Published`]). `publish.lua` is the
//! other half of this file; `docs/redis.md` describes both for other languages.

use std::io::Write;
use std::time::Duration;

use redis::{FromRedisValue, ParsingError, Script, ScriptInvocation, Value};

use super::names::TopicArg;
use super::{ChannelName, Position, Target, Topics};

/// The script that publishes on a channel atomically with its history (see `docs/redis.md`).
pub const PUBLISH_SCRIPT: &str = include_str!("../publish.lua");

/// The field of `<prefix>:namespaces` where the gateways write their idempotency window, in
/// milliseconds. Its leading colon keeps it apart from every namespace name.
pub const IDEMPOTENCY_WINDOW_FIELD: &str = ":idempotency_window_ms";

/// The window the script applies when no gateway has written one.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// How much history a namespace keeps; on the wire `"<size> <ttl_ms>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Events kept per channel; 0 keeps none.
    pub size: usize,
    /// How long events are kept after the channel's last one; 0 keeps them until trimmed.
    pub ttl: Duration,
}

impl HistoryPolicy {
    /// The policy as the script reads it: `"<size> <ttl_ms>"`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.size, self.ttl.as_millis())
    }

    /// Reads `"<size> <ttl_ms>"` (two decimal numbers and one space, as the script matches
    /// them); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (size, ttl) = text.split_once(' ')?;
        let number = |digits: &str| {
            let decimal = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            decimal.then(|| digits.parse::<u64>().ok()).flatten()
        };
        Some(Self {
            size: usize::try_from(number(size)?).ok()?,
            ttl: Duration::from_millis(number(ttl)?),
        })
    }

    /// Whether the policy keeps any history.
    pub fn keeps_history(&self) -> bool {
        self.size > 0
    }
}

/// The fields a gateway writes to `<prefix>:namespaces`: each namespace's policy, and the
/// idempotency window under [`IDEMPOTENCY_WINDOW_FIELD`].
pub fn namespace_fields<'a>(
    policies: impl IntoIterator<Item = (&'a str, HistoryPolicy)>,
    idempotency_window: Duration,
) -> Vec<(String, String)> {
    let window = (
        IDEMPOTENCY_WINDOW_FIELD.to_owned(),
        idempotency_window.as_millis().to_string(),
    );
    policies
        .into_iter()
        .map(|(namespace, policy)| (namespace.to_owned(), policy.encode()))
        .chain([window])
        .collect()
}

/// The namespaces that keep history, read from the fields of `<prefix>:namespaces`
/// (`HGETALL`); the gateways' settings (fields that start with `:`) are left out.
pub fn namespace_policies(
    fields: impl IntoIterator<Item = (String, String)>,
) -> impl Iterator<Item = (String, HistoryPolicy)> {
    fields.into_iter().filter_map(|(field, value)| {
        if field.starts_with(':') {
            return None;
        }
        let policy = HistoryPolicy::parse(&value).filter(HistoryPolicy::keeps_history)?;
        Some((field, policy))
    })
}

/// Puts a history position into a bus message: its closing `}` becomes
/// `,"offset":<offset>,"epoch":"<epoch>"}`. The script applies the same rule to what it stores
/// and publishes; the message is an object as [`Envelope::encode`](super::Envelope::encode)
/// writes it, without `offset` and `epoch`.
pub fn with_position(message: &[u8], offset: u64, epoch: &str) -> Vec<u8> {
    let body = message.strip_suffix(b"}").unwrap_or(message);
    let mut out = Vec::with_capacity(message.len() + epoch.len() + 32);
    out.extend_from_slice(body);
    // Writing to a Vec cannot fail.
    let _ = write!(out, ",\"offset\":{offset},\"epoch\":\"{epoch}\"}}");
    out
}

/// One call of the publish script: the channel, the message, and what the caller knows of
/// the channel's settings. [`PublishCall::invocation`] turns it into the script's KEYS and
/// ARGV, the one place where they are built.
#[derive(Debug, Clone, Copy)]
pub struct PublishCall<'a> {
    /// The channel published on.
    pub channel: &'a ChannelName,
    /// The bus message, without offset and epoch.
    pub message: &'a [u8],
    /// Publish at most once per key within the idempotency window.
    pub idempotency_key: Option<&'a str>,
    /// How long the key is remembered; `None` for the window the gateways wrote to
    /// `<prefix>:namespaces` (publishers leave it to them, except on a cluster, where the
    /// script cannot read that key and refuses a call without it).
    pub window: Option<Duration>,
    /// The namespace's policy where the caller knows it (gateways do); `None` has the script
    /// read it from `<prefix>:namespaces` (refused on a cluster, as for `window`).
    pub policy: Option<HistoryPolicy>,
}

impl<'a> PublishCall<'a> {
    /// A call publishing `message` on `channel`, leaving the settings to the gateways.
    pub fn new(channel: &'a ChannelName, message: &'a [u8]) -> Self {
        Self {
            channel,
            message,
            idempotency_key: None,
            window: None,
            policy: None,
        }
    }

    /// The script's invocation with this call's KEYS and ARGV, names under `topics`' prefix.
    pub fn invocation<'s>(&self, script: &'s Script, topics: &Topics) -> ScriptInvocation<'s> {
        let channel = self.channel.as_str();
        let keys = topics.keys();
        let idempotency = self
            .idempotency_key
            .map(|key| keys.idempotency(channel, key))
            .unwrap_or_default();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.history_stream(channel))
            .key(keys.history_meta(channel));
        // On a cluster every key shares the channel's slot: no namespaces key, and no empty
        // idempotency key (it would hash to slot 0).
        if !topics.is_sharded() {
            invocation.key(keys.namespaces()).key(idempotency);
        } else if !idempotency.is_empty() {
            invocation.key(idempotency);
        }
        invocation
            .arg(TopicArg::new(topics, Target::Channel(channel)))
            .arg(self.message)
            .arg(self.channel.namespace());
        match self.window {
            Some(window) => invocation.arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)),
            None => invocation.arg(""),
        };
        match self.policy {
            Some(policy) => invocation.arg(policy.encode()),
            None => invocation.arg(""),
        };
        if topics.is_sharded() {
            invocation.arg("SPUBLISH");
        }
        invocation
    }
}

/// What the publish script answered (`[offset, epoch, duplicate]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's position, where history is kept.
    pub position: Option<Position>,
    /// The idempotency key was seen: nothing was published, `position` is the first publish's.
    pub duplicate: bool,
}

impl FromRedisValue for Published {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let (offset, epoch, duplicate): (u64, String, u8) =
            FromRedisValue::from_redis_value(value)?;
        Ok(Self {
            position: (offset > 0).then_some(Position { offset, epoch }),
            duplicate: duplicate == 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_round_trip_as_the_script_reads_them() {
        let policy = HistoryPolicy {
            size: 100,
            ttl: Duration::from_secs(600),
        };
        assert_eq!(policy.encode(), "100 600000");
        assert_eq!(HistoryPolicy::parse("100 600000"), Some(policy));
        let none = HistoryPolicy::parse("0 5000").unwrap();
        assert!(!none.keeps_history());
        for malformed in [
            "", "100", "100 ", " 100 5", "+1 5", "1 -5", "1  5", "1 5 6", "a 5",
        ] {
            assert_eq!(HistoryPolicy::parse(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn the_namespaces_hash_carries_the_window_apart_from_the_policies() {
        let policy = HistoryPolicy {
            size: 10,
            ttl: Duration::from_secs(1),
        };
        let fields = namespace_fields([("room", policy)], Duration::from_secs(2));
        assert_eq!(
            fields,
            [
                ("room".to_owned(), "10 1000".to_owned()),
                (IDEMPOTENCY_WINDOW_FIELD.to_owned(), "2000".to_owned()),
            ]
        );
        let mut fields = fields;
        fields.push(("off".into(), "0 1000".into()));
        let read: Vec<_> = namespace_policies(fields).collect();
        assert_eq!(read, [("room".to_owned(), policy)]);
    }

    #[test]
    fn positions_are_spliced_into_the_message() {
        let message = with_position(br#"{"channel":"a","event":"e"}"#, 7, "x1");
        assert_eq!(
            &message[..],
            br#"{"channel":"a","event":"e","offset":7,"epoch":"x1"}"#
        );
    }

    #[test]
    fn a_call_builds_the_scripts_keys_and_arguments() {
        let script = Script::new(PUBLISH_SCRIPT);
        let topics = Topics::new("gw");
        let channel = ChannelName::parse("room:1").unwrap();
        let gateway = PublishCall {
            idempotency_key: Some("k"),
            window: Some(Duration::from_secs(2)),
            policy: Some(HistoryPolicy {
                size: 5,
                ttl: Duration::from_secs(1),
            }),
            ..PublishCall::new(&channel, b"{}")
        };
        let expected = [
            "gw:{room:1}:stream",
            "gw:{room:1}:meta",
            "gw:namespaces",
            "gw:{room:1}:idem:k",
            "gw:ch:room:1",
            "{}",
            "room",
            "2000",
            "5 1000",
        ];
        assert_eq!(packed_args(&gateway.invocation(&script, &topics)), expected);
        let publisher = PublishCall::new(&channel, b"{}");
        let args = packed_args(&publisher.invocation(&script, &topics));
        assert_eq!(args[3], "");
        assert_eq!(&args[7..], ["", ""]);
    }

    /// The KEYS and ARGV of an EVALSHA, in order.
    fn packed_args(invocation: &ScriptInvocation<'_>) -> Vec<String> {
        let mut pipeline = redis::pipe();
        pipeline.invoke_script(invocation);
        let command = String::from_utf8(pipeline.get_packed_pipeline()).unwrap();
        let parts: Vec<&str> = command.split("\r\n").collect();
        // *N, then $len and value for EVALSHA, the sha and the key count, then the names.
        parts[7..]
            .chunks(2)
            .filter_map(|pair| pair.get(1).map(|value| (*value).to_owned()))
            .collect()
    }
}

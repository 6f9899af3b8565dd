//! The shared test vectors (`publisher/vectors/publish.json`): every case, published at the
//! vectors' timestamp against their namespaces hash, gives exactly the listed Redis commands
//! or the listed error. The Python and Node publishers check the same file.

use serde::Deserialize;
use serde_json::Value;

use super::namespaces::Namespaces;
use super::{Event, PublishError, Publisher, Recipients, plan};
use crate::topology::{RedisMode, RedisTopology};
use crate::wire::{ChannelName, ClientType, UserId, WireError};

const VECTORS: &str = include_str!("../../vectors/publish.json");

#[derive(Deserialize)]
struct Vectors {
    prefix: String,
    timestamp: String,
    script_sha1: String,
    namespaces: serde_json::Map<String, Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prefix: Option<String>,
    publish: Option<Value>,
    batch: Option<Vec<Value>>,
    commands: Option<Vec<Vec<String>>>,
    /// On a cluster: one pipeline per hash slot, in the order of their first message.
    pipelines: Option<Vec<Vec<Vec<String>>>>,
    /// `cluster` for a Redis Cluster; standalone (and Sentinel) otherwise.
    mode: Option<String>,
    error: Option<String>,
}

/// The code a vector gives for a refused publish.
fn code(error: &PublishError) -> &'static str {
    match error {
        PublishError::Invalid(WireError::InvalidChannel(_)) => "invalid_channel",
        PublishError::Invalid(WireError::InvalidEvent(_)) => "invalid_event",
        PublishError::Invalid(WireError::ReservedEvent(_)) => "reserved_event",
        PublishError::Invalid(WireError::InvalidUserId(_)) => "invalid_user",
        PublishError::Invalid(WireError::InvalidClientType(_)) => "invalid_client_type",
        PublishError::Invalid(WireError::Target) => "invalid_target",
        other => panic!("not a refusal of the vectors: {other}"),
    }
}

/// An event from the admin API's publish fields, as a worker would build it.
fn event(fields: &Value) -> Result<Event, PublishError> {
    let text = |name: &str| fields.get(name).and_then(Value::as_str);
    let broadcast = fields.get("broadcast") == Some(&Value::Bool(true));
    let targets = ["channel", "channels", "user", "client_type"]
        .iter()
        .filter(|name| fields.get(**name).is_some())
        .count()
        + usize::from(broadcast);
    if targets != 1 {
        return Err(WireError::Target.into());
    }
    let recipients = if let Some(channel) = text("channel") {
        Recipients::Channel(ChannelName::parse(channel)?)
    } else if let Some(channels) = fields.get("channels").and_then(Value::as_array) {
        let channels = channels
            .iter()
            .map(|c| ChannelName::parse(c.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?;
        if channels.is_empty() {
            return Err(WireError::Target.into());
        }
        Recipients::Channels(channels)
    } else if let Some(user) = text("user") {
        Recipients::User(UserId::parse(user)?)
    } else if let Some(client_type) = text("client_type") {
        Recipients::ClientType(ClientType::parse(client_type)?)
    } else {
        Recipients::Broadcast
    };
    let data = fields.get("data").cloned().unwrap_or(Value::Null);
    let mut event = Event::new(recipients, text("event").unwrap_or_default(), &data)?;
    if let Some(client) = text("exclude_client") {
        event = event.excluding(client);
    }
    if let Some(key) = text("idempotency_key") {
        event = event.idempotent(key);
    }
    Ok(event)
}

/// Each command of a pipeline as its arguments.
fn commands(pipeline: &redis::Pipeline) -> Vec<Vec<String>> {
    pipeline
        .cmd_iter()
        .map(|cmd| {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => panic!("a publish has only plain arguments"),
                })
                .collect()
        })
        .collect()
}

#[test]
fn the_rust_publisher_writes_exactly_the_shared_vectors() {
    let vectors: Vectors = serde_json::from_str(VECTORS).expect("the vectors are valid JSON");
    let standalone = Publisher::connect("redis://127.0.0.1:1").expect("a lazy pool");
    let cluster = RedisTopology::parse(RedisMode::Cluster, "redis://127.0.0.1:1", None)
        .map(|topology| Publisher::connect_to(&topology))
        .expect("a lazy cluster client")
        .expect("a lazy cluster client");
    assert_eq!(
        standalone.script.get_hash(),
        vectors.script_sha1,
        "publisher/src/publish.lua changed: update script_sha1 in the vectors"
    );
    let fields = vectors
        .namespaces
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()));
    let settings = Namespaces::from_fields(fields.collect());
    for case in &vectors.cases {
        let publishes = match (&case.publish, &case.batch) {
            (Some(publish), None) => vec![publish.clone()],
            (None, Some(batch)) => batch.clone(),
            _ => panic!("{}: a case has publish or batch", case.name),
        };
        let events: Result<Vec<Event>, PublishError> = publishes.iter().map(event).collect();
        let events = match (events, &case.error) {
            (Err(error), Some(expected)) => {
                assert_eq!(code(&error), expected, "{}: {error}", case.name);
                continue;
            }
            (Ok(_), Some(expected)) => panic!("{}: accepted, expected {expected}", case.name),
            (Err(error), None) => panic!("{}: refused with {error}", case.name),
            (Ok(events), None) => events,
        };
        let prefix = case.prefix.as_deref().unwrap_or(&vectors.prefix);
        let on_cluster = case.mode.as_deref() == Some("cluster");
        let publisher = if on_cluster { &cluster } else { &standalone };
        let publisher = publisher.clone().with_prefix(prefix);
        let messages = plan(&events, &vectors.timestamp, Some(&settings));
        let pipelines: Vec<Vec<Vec<String>>> = publisher
            .groups(&messages)
            .iter()
            .map(|group| commands(&publisher.pipeline(&messages, group, false, Some(&settings))))
            .collect();
        let expected = match (&case.commands, &case.pipelines) {
            (Some(commands), None) if !on_cluster => vec![commands.clone()],
            (None, Some(pipelines)) if on_cluster => pipelines.clone(),
            _ => panic!("{}: commands, or pipelines on a cluster", case.name),
        };
        assert_eq!(pipelines, expected, "{}", case.name);
    }
}

//! History in Redis streams, written by the publish script that `publisher` ships.

use std::time::Duration;

use bytes::Bytes;
use publisher::Connection;
use publisher::SharedConnection;
use publisher::wire::{
    ChannelName, PUBLISH_SCRIPT, Position, PublishCall, Topics, namespace_fields,
};
use redis::Value;
use tokio::sync::watch;

use super::{History, HistoryError, HistoryPolicy, Page, Policies, Published};
use crate::broker::BoxFuture;

/// How long one history command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Channel history in Redis streams.
pub struct RedisHistory {
    redis: SharedConnection,
    topics: Topics,
    policies: Policies,
    script: redis::Script,
    idempotency_window: Duration,
}

impl RedisHistory {
    /// History over `redis`. Writes the namespaces' policies and the idempotency window to
    /// `<prefix>:namespaces` now and every time `bus_up` turns true, so publishers in any
    /// language find them.
    pub fn new(
        redis: SharedConnection,
        topics: Topics,
        policies: Policies,
        idempotency_window: Duration,
        bus_up: watch::Receiver<bool>,
    ) -> Self {
        let history = Self {
            redis,
            topics,
            policies,
            script: redis::Script::new(PUBLISH_SCRIPT),
            idempotency_window,
        };
        let fields = namespace_fields(
            history.policies.iter().map(|(ns, p)| (ns.as_str(), *p)),
            idempotency_window,
        );
        tokio::spawn(announce_settings(
            history.redis.clone(),
            history.topics.keys().namespaces(),
            fields,
            bus_up,
        ));
        history
    }

    async fn connection(&self) -> Result<Connection, HistoryError> {
        Ok(self.redis.get().await?)
    }

    /// Bounds a history command; one that times out drops the shared connection, which may
    /// be half-open.
    async fn timed<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, HistoryError>>,
    ) -> Result<T, HistoryError> {
        tokio::time::timeout(COMMAND_TIMEOUT, future)
            .await
            .map_err(|_| {
                self.redis.reset();
                HistoryError::Timeout
            })?
    }

    /// Maps a Redis error, dropping the shared connection if it broke.
    fn failed(&self, error: redis::RedisError) -> HistoryError {
        self.redis.check(error).into()
    }
}

/// Keeps `<prefix>:namespaces` in step with this node's configuration (`fields`: policies and
/// idempotency window), also after Redis lost its data.
async fn announce_settings(
    redis: SharedConnection,
    key: String,
    fields: Vec<(String, String)>,
    mut bus_up: watch::Receiver<bool>,
) {
    loop {
        if *bus_up.borrow_and_update() {
            let written = async {
                let mut connection = redis.get().await?;
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(&fields)
                    .query_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| HistoryError::from(redis.check(e)))
            };
            if let Err(error) = written.await {
                tracing::warn!(%error, "could not publish the namespace settings");
            }
        }
        if bus_up.changed().await.is_err() {
            return;
        }
    }
}

impl History for RedisHistory {
    fn publish(
        &self,
        channel: &ChannelName,
        message: Bytes,
        idempotency_key: Option<&str>,
    ) -> BoxFuture<'_, Result<Published, HistoryError>> {
        let call = PublishCall {
            idempotency_key,
            window: Some(self.idempotency_window),
            // On a cluster the script cannot read the namespaces hash: "none" must be said.
            policy: self.policies.of(channel).or_else(|| {
                self.topics.is_sharded().then_some(HistoryPolicy {
                    size: 0,
                    ttl: Duration::ZERO,
                })
            }),
            ..PublishCall::new(channel, &message)
        };
        let invocation = call.invocation(&self.script, &self.topics);
        Box::pin(self.timed(async move {
            let mut connection = self.connection().await?;
            invocation
                .invoke_async::<Published>(&mut connection)
                .await
                .map_err(|e| self.failed(e))
        }))
    }

    fn read(
        &self,
        channel: &ChannelName,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Page, HistoryError>> {
        let name = channel.as_str();
        let keys = self.topics.keys();
        let size = self.policies.of(channel).map_or(0, |p| p.size);
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("HMGET")
            .arg(keys.history_meta(name))
            .arg("offset")
            .arg("epoch");
        if let Some(since) = since {
            pipeline
                .cmd("XRANGE")
                .arg(keys.history_stream(name))
                .arg(format!("(0-{since}"))
                .arg("+")
                .arg("COUNT")
                .arg(size.max(1));
        }
        Box::pin(self.timed(async move {
            let mut connection = self.connection().await?;
            let replies: Vec<Value> = pipeline
                .query_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            let mut replies = replies.into_iter();
            let (offset, epoch): (Option<u64>, Option<String>) =
                redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
            let events = match replies.next() {
                Some(entries) => parse_entries(entries)?,
                None => Vec::new(),
            };
            Ok(Page {
                events,
                top: Position {
                    offset: offset.unwrap_or(0),
                    epoch: epoch.unwrap_or_default(),
                },
            })
        }))
    }
}

/// One XRANGE entry: its id and its field-value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Reads XRANGE entries `[["0-<offset>", ["m", message]], …]`.
fn parse_entries(reply: Value) -> Result<Vec<(u64, Bytes)>, HistoryError> {
    let entries: Vec<StreamEntry> = redis::from_redis_value(reply)?;
    entries
        .into_iter()
        .map(|(id, fields)| {
            let offset = id
                .strip_prefix("0-")
                .and_then(|o| o.parse().ok())
                .ok_or_else(|| HistoryError::Entry(format!("stream entry id {id:?}")))?;
            let message = fields
                .into_iter()
                .find(|(name, _)| name == "m")
                .map(|(_, message)| Bytes::from(message))
                .ok_or_else(|| HistoryError::Entry(format!("stream entry {id} has no m")))?;
            Ok((offset, message))
        })
        .collect()
}

//! The registry in Redis: a sorted set of node leases (score = expiry in Redis time), a hash of
//! presence records and a set of users per node, and per-user hashes of connections by node.

use std::time::Duration;

use publisher::SharedConnection;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::registry::{PresenceRecord, Registry, RegistryError};
use crate::broker::BoxFuture;
use crate::view::PresenceEntry;

/// Renews a lease in Redis time, so that node clocks need not agree.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return now";

/// Nodes with a lease expiring after (`live`) or before (`dead`) now.
const NODES: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if ARGV[1] == 'live' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)";

/// Takes a user's connection slot if the user's connections on live nodes are under the cap.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local live = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do live[node] = true end
local total = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if live[counts[i]] then total = total + tonumber(counts[i + 1]) end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[3], ARGV[3])
return 1";

/// Gives a slot back, forgetting the user on this node at zero.
const RELEASE: &str = r"
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[2])
end
return left";

/// The cluster registry in Redis.
pub(crate) struct RedisRegistry {
    redis: SharedConnection,
    prefix: String,
    heartbeat: Script,
    nodes: Script,
    acquire: Script,
    release: Script,
}

fn unavailable(error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

impl RedisRegistry {
    /// A registry over `redis` under the deployment's key prefix.
    pub(crate) fn new(redis: SharedConnection, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            heartbeat: Script::new(HEARTBEAT),
            nodes: Script::new(NODES),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn presence_key(&self, node: &str) -> String {
        format!("{}:node:{node}:presence", self.prefix)
    }

    fn users_key(&self, node: &str) -> String {
        format!("{}:node:{node}:users", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:user:{user}:connections", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RegistryError> {
        self.redis.get().await.map_err(unavailable)
    }

    /// Maps a Redis error, dropping the shared connection if it broke.
    fn failed(&self, error: redis::RedisError) -> RegistryError {
        unavailable(self.redis.check(error))
    }

    async fn list_nodes(&self, which: &str) -> Result<Vec<String>, RegistryError> {
        let mut connection = self.connection().await?;
        self.nodes
            .key(self.nodes_key())
            .arg(which)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.failed(e))
    }
}

/// A presence field: `<channel>\n<client_id>`.
fn presence_field(channel: &str, client_id: &str) -> String {
    format!("{channel}\n{client_id}")
}

impl Registry for RedisRegistry {
    fn heartbeat(&self, node: &str, lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let _now: i64 = self
                .heartbeat
                .key(self.nodes_key())
                .arg(&node)
                .arg(lease.as_millis().to_string())
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(self.list_nodes("live"))
    }

    fn dead_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(self.list_nodes("dead"))
    }

    fn claim_dead(&self, node: &str, by: &str) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let key = format!("{}:reap:{node}", self.prefix);
        let by = by.to_owned();
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let claimed: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&by)
                .arg("NX")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(claimed.is_some())
        })
    }

    fn forget(&self, node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let presence_key = self.presence_key(&node);
            let users_key = self.users_key(&node);
            let (records, users): (Vec<(String, String)>, Vec<String>) = redis::pipe()
                .atomic()
                .hgetall(&presence_key)
                .smembers(&users_key)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            let mut cleanup = redis::pipe();
            for user in &users {
                cleanup.hdel(self.user_key(user), &node).ignore();
            }
            cleanup
                .del(&presence_key)
                .ignore()
                .del(&users_key)
                .ignore()
                .zrem(self.nodes_key(), &node)
                .ignore();
            cleanup
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(records
                .into_iter()
                .filter_map(|(field, entry)| {
                    let (channel, _) = field.split_once('\n')?;
                    let entry: PresenceEntry = serde_json::from_str(&entry).ok()?;
                    Some((channel.to_owned(), entry))
                })
                .collect())
        })
    }

    fn add_presence(
        &self,
        node: &str,
        channel: &str,
        entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.presence_key(node);
        let field = presence_field(channel, &entry.client_id);
        let value = serde_json::to_string(entry).unwrap_or_default();
        Box::pin(async move {
            let mut connection = self.connection().await?;
            redis::cmd("HSET")
                .arg(&key)
                .arg(&field)
                .arg(&value)
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn remove_presence(
        &self,
        node: &str,
        channel: &str,
        client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let key = self.presence_key(node);
        let field = presence_field(channel, client_id);
        Box::pin(async move {
            let mut connection = self.connection().await?;
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&field)
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }

    fn acquire_user_slot(
        &self,
        node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .key(self.user_key(user))
            .key(self.nodes_key())
            .key(self.users_key(node))
            .arg(node)
            .arg(cap)
            .arg(user);
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let granted: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(granted == 1)
        })
    }

    fn release_user_slot(
        &self,
        node: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.user_key(user))
            .key(self.users_key(node))
            .arg(node)
            .arg(user);
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let _left: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(())
        })
    }
}

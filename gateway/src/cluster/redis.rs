//! The registry in Redis: a sorted set of node leases (score = expiry in Redis time), a hash of
//! presence records and a set of users per node, and per-user hashes of connections by node.
//! The key names are [`publisher::wire::Keys`].

use std::time::Duration;

use publisher::Connection;
use publisher::SharedConnection;
use publisher::wire::{Keys, Topics};
use redis::Script;

use super::registry::{Leases, PresenceRecord, PresenceRecords, RegistryError, UserSlots};
use crate::broker::BoxFuture;
use crate::view::PresenceEntry;

/// How long a claim of a dead node's clean-up holds, in milliseconds.
const CLAIM_MS: u64 = 60_000;

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

/// A connection to the registry's Redis, and the names of its keys.
struct Store {
    redis: SharedConnection,
    topics: Topics,
}

impl Store {
    fn keys(&self) -> Keys<'_> {
        self.topics.keys()
    }

    async fn connection(&self) -> Result<Connection, RegistryError> {
        Ok(self.redis.get().await?)
    }

    /// Maps a Redis error, dropping the shared connection if it broke.
    fn failed(&self, error: redis::RedisError) -> RegistryError {
        self.redis.check(error).into()
    }
}

/// Node leases in Redis, in Redis time.
pub struct RedisLeases {
    store: Store,
    heartbeat: Script,
    nodes: Script,
}

impl RedisLeases {
    /// Leases over `redis` under `topics`' prefix.
    pub fn new(redis: SharedConnection, topics: Topics) -> Self {
        Self {
            store: Store { redis, topics },
            heartbeat: Script::new(HEARTBEAT),
            nodes: Script::new(NODES),
        }
    }

    async fn list(&self, which: &str) -> Result<Vec<String>, RegistryError> {
        let mut connection = self.store.connection().await?;
        self.nodes
            .key(self.store.keys().nodes())
            .arg(which)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.store.failed(e))
    }
}

impl Leases for RedisLeases {
    fn renew(&self, node: &str, lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(self.store.keys().nodes())
            .arg(node)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let _now: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(())
        })
    }

    fn live(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(self.list("live"))
    }

    fn expired(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(self.list("dead"))
    }

    fn claim(&self, node: &str, by: &str) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let mut claim = redis::cmd("SET");
        claim
            .arg(self.store.keys().reap_claim(node))
            .arg(by)
            .arg("NX")
            .arg("PX")
            .arg(CLAIM_MS);
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let claimed: Option<String> = claim
                .query_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(claimed.is_some())
        })
    }

    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut forget = redis::cmd("ZREM");
        forget.arg(self.store.keys().nodes()).arg(node);
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            forget
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(())
        })
    }
}

/// Presence records in Redis: one hash per node, field `<channel>\n<client_id>`.
pub struct RedisPresence {
    store: Store,
}

impl RedisPresence {
    /// Presence records over `redis` under `topics`' prefix.
    pub fn new(redis: SharedConnection, topics: Topics) -> Self {
        Self {
            store: Store { redis, topics },
        }
    }

    /// Runs one command that answers an integer.
    fn run(&self, command: redis::Cmd) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            command
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(())
        })
    }
}

/// A presence field: `<channel>\n<client_id>`.
fn presence_field(channel: &str, client_id: &str) -> String {
    format!("{channel}\n{client_id}")
}

/// A presence record from its field and value; `None`, and a warning, for one this gateway
/// cannot read.
fn presence_record(field: &str, value: &str) -> Option<PresenceRecord> {
    let (channel, _) = field.split_once('\n')?;
    match serde_json::from_str::<PresenceEntry>(value) {
        Ok(entry) => Some((channel.to_owned(), entry)),
        Err(error) => {
            tracing::warn!(%error, field, "unreadable presence record skipped");
            None
        }
    }
}

impl PresenceRecords for RedisPresence {
    fn add(
        &self,
        node: &str,
        channel: &str,
        entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let value = match serde_json::to_string(entry) {
            Ok(value) => value,
            Err(error) => return Box::pin(async move { Err(error.into()) }),
        };
        let mut add = redis::cmd("HSET");
        add.arg(self.store.keys().node_presence(node))
            .arg(presence_field(channel, &entry.client_id))
            .arg(value);
        self.run(add)
    }

    fn remove(
        &self,
        node: &str,
        channel: &str,
        client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut remove = redis::cmd("HDEL");
        remove
            .arg(self.store.keys().node_presence(node))
            .arg(presence_field(channel, client_id));
        self.run(remove)
    }

    fn take(&self, node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>> {
        let key = self.store.keys().node_presence(node);
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let (records,): (Vec<(String, String)>,) = redis::pipe()
                .atomic()
                .hgetall(&key)
                .del(&key)
                .ignore()
                .query_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(records
                .iter()
                .filter_map(|(field, value)| presence_record(field, value))
                .collect())
        })
    }
}

/// Per-user connection slots in Redis: a hash of counts by node per user, and the set of a
/// node's users; counted against the leases in the same Redis.
pub struct RedisUserSlots {
    store: Store,
    acquire: Script,
    release: Script,
}

impl RedisUserSlots {
    /// User slots over `redis` under `topics`' prefix.
    pub fn new(redis: SharedConnection, topics: Topics) -> Self {
        Self {
            store: Store { redis, topics },
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }
}

impl UserSlots for RedisUserSlots {
    fn acquire(
        &self,
        node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let keys = self.store.keys();
        let mut invocation = self.acquire.prepare_invoke();
        invocation
            .key(keys.user_connections(user))
            .key(keys.nodes())
            .key(keys.node_users(node))
            .arg(node)
            .arg(cap)
            .arg(user);
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let granted: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(granted == 1)
        })
    }

    fn release(&self, node: &str, user: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let keys = self.store.keys();
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(keys.user_connections(user))
            .key(keys.node_users(node))
            .arg(node)
            .arg(user);
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let _left: i64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            Ok(())
        })
    }

    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let node = node.to_owned();
        Box::pin(async move {
            let keys = self.store.keys();
            let users_key = keys.node_users(&node);
            let mut connection = self.store.connection().await?;
            let users: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&users_key)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))?;
            let mut cleanup = redis::pipe();
            for user in &users {
                cleanup.hdel(keys.user_connections(user), &node).ignore();
            }
            cleanup.del(&users_key).ignore();
            cleanup
                .query_async::<()>(&mut connection)
                .await
                .map_err(|e| self.store.failed(e))
        })
    }
}

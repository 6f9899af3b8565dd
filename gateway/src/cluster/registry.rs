//! What nodes keep about each other, in three parts: [`Leases`] (which nodes are alive),
//! [`PresenceRecords`] (presence a survivor can clean up after a node's death) and
//! [`UserSlots`] (per-user connection counts for the cluster-wide cap). In memory for nodes
//! in one process, or in Redis.

use std::sync::Arc;
use std::time::Duration;

use publisher::SharedConnection;
use publisher::shared::ConnectError;
use publisher::wire::Topics;

use super::memory::{MemoryLeases, MemoryPresence, MemoryUserSlots};
use super::redis::{RedisLeases, RedisPresence, RedisUserSlots};
use crate::broker::BoxFuture;
use crate::view::PresenceEntry;

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No connection to the store could be had.
    #[error("cluster registry unavailable: no Redis connection: {0}")]
    Connection(#[from] ConnectError),
    /// The store refused or failed the command.
    #[error("cluster registry unavailable: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A record could not be encoded.
    #[error("cluster record not encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A presence record left by a node: the channel and the connection.
pub type PresenceRecord = (String, PresenceEntry);

/// Node leases: a node is alive while it renews its lease.
pub trait Leases: Send + Sync + 'static {
    /// Renews `node`'s lease for `lease` from now.
    fn renew(&self, node: &str, lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Nodes whose lease has not expired.
    fn live(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;
    /// Nodes whose lease expired and that are not forgotten yet.
    fn expired(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;
    /// Claims the clean-up of `node` for `by`; `true` for one claimant only, for a minute.
    fn claim(&self, node: &str, by: &str) -> BoxFuture<'_, Result<bool, RegistryError>>;
    /// Forgets `node`'s lease.
    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>>;
}

/// Presence records by node, so that a survivor can send `leave` for a dead node's clients.
pub trait PresenceRecords: Send + Sync + 'static {
    /// Records a connection's presence on a channel.
    fn add(
        &self,
        node: &str,
        channel: &str,
        entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Removes a connection's presence on a channel.
    fn remove(
        &self,
        node: &str,
        channel: &str,
        client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Removes every record of `node` and returns them.
    fn take(&self, node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>>;
}

/// Per-user connection slots by node, counted on live nodes only.
pub trait UserSlots: Send + Sync + 'static {
    /// Takes a slot of `user` on `node` if the user holds fewer than `cap` on live nodes.
    fn acquire(
        &self,
        node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>>;
    /// Gives a slot of `user` on `node` back.
    fn release(&self, node: &str, user: &str) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Gives back every slot `node` holds.
    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>>;
}

/// The cluster's shared records, one store for all three parts.
#[derive(Clone)]
pub struct Registry {
    /// Node leases.
    pub leases: Arc<dyn Leases>,
    /// Presence records by node.
    pub presence: Arc<dyn PresenceRecords>,
    /// Per-user connection slots.
    pub user_slots: Arc<dyn UserSlots>,
}

impl Registry {
    /// The records of nodes in this process (a single node on the in-memory bus).
    pub fn memory() -> Self {
        let leases = MemoryLeases::default();
        Self {
            user_slots: Arc::new(MemoryUserSlots::new(leases.clone())),
            leases: Arc::new(leases),
            presence: Arc::new(MemoryPresence::default()),
        }
    }

    /// The records in Redis over `redis`, under `topics`' prefix.
    pub fn redis(redis: &SharedConnection, topics: &Topics) -> Self {
        Self {
            leases: Arc::new(RedisLeases::new(redis.clone(), topics.clone())),
            presence: Arc::new(RedisPresence::new(redis.clone(), topics.clone())),
            user_slots: Arc::new(RedisUserSlots::new(redis.clone(), topics.clone())),
        }
    }
}

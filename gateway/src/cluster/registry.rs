//! What nodes keep about each other: leases, presence records a survivor can clean up after a
//! node's death, and per-user connection counts. In memory for one node, or in Redis.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::broker::BoxFuture;
use crate::view::PresenceEntry;

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegistryError {
    /// The store is unreachable or refused the command.
    #[error("cluster registry unavailable: {0}")]
    Unavailable(String),
}

/// A presence record left by a node: the channel and the connection.
pub(crate) type PresenceRecord = (String, PresenceEntry);

/// The cluster's shared records.
pub(crate) trait Registry: Send + Sync + 'static {
    /// Renews this node's lease for `lease`.
    fn heartbeat(&self, node: &str, lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Nodes whose lease has not expired.
    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;
    /// Nodes whose lease expired and that nobody has cleaned up yet.
    fn dead_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>>;
    /// Claims the clean-up of a dead node, so that only one survivor does it.
    fn claim_dead(&self, node: &str, by: &str) -> BoxFuture<'_, Result<bool, RegistryError>>;
    /// Removes a dead node's records; returns its presence records (for leave events).
    fn forget(&self, node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>>;
    /// Records a connection's presence on a channel.
    fn add_presence(
        &self,
        node: &str,
        channel: &str,
        entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Removes a connection's presence on a channel.
    fn remove_presence(
        &self,
        node: &str,
        channel: &str,
        client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Takes a connection slot of `user` if the user has fewer than `cap` on live nodes.
    fn acquire_user_slot(
        &self,
        node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>>;
    /// Gives a connection slot of `user` back.
    fn release_user_slot(&self, node: &str, user: &str)
    -> BoxFuture<'_, Result<(), RegistryError>>;
}

/// The registry of a single node on the in-memory bus: it is the whole cluster.
#[derive(Default)]
pub(crate) struct MemoryRegistry {
    node: Mutex<Option<String>>,
    users: Mutex<HashMap<String, usize>>,
}

impl Registry for MemoryRegistry {
    fn heartbeat(&self, node: &str, _lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>> {
        *self.node.lock().unwrap_or_else(PoisonError::into_inner) = Some(node.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn live_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        let node = self
            .node
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move { Ok(node.into_iter().collect()) })
    }

    fn dead_nodes(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn claim_dead(&self, _node: &str, _by: &str) -> BoxFuture<'_, Result<bool, RegistryError>> {
        Box::pin(async { Ok(false) })
    }

    fn forget(&self, _node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn add_presence(
        &self,
        _node: &str,
        _channel: &str,
        _entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        // One node has nobody to clean up after it: its presence lives in its hub.
        Box::pin(async { Ok(()) })
    }

    fn remove_presence(
        &self,
        _node: &str,
        _channel: &str,
        _client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        Box::pin(async { Ok(()) })
    }

    fn acquire_user_slot(
        &self,
        _node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let count = users.entry(user.to_owned()).or_insert(0);
        let granted = *count < cap;
        if granted {
            *count += 1;
        }
        Box::pin(async move { Ok(granted) })
    }

    fn release_user_slot(
        &self,
        _node: &str,
        user: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = users.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                users.remove(user);
            }
        }
        Box::pin(async { Ok(()) })
    }
}

//! The registry in memory, for nodes in one process: the same semantics as in Redis, with this
//! process's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::registry::{Leases, PresenceRecord, PresenceRecords, RegistryError, UserSlots};
use crate::broker::BoxFuture;
use crate::view::PresenceEntry;

/// How long a claim of a dead node's clean-up holds.
const CLAIM: Duration = Duration::from_secs(60);

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, Result<T, RegistryError>> {
    Box::pin(async move { Ok(value) })
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct LeaseState {
    /// When each node's lease expires.
    expiries: HashMap<String, Instant>,
    /// Clean-up claims: by whom, until when.
    claims: HashMap<String, (String, Instant)>,
}

/// Node leases in memory; clones share them.
#[derive(Clone, Default)]
pub struct MemoryLeases {
    state: Arc<Mutex<LeaseState>>,
}

impl MemoryLeases {
    /// Whether `node`'s lease has not expired.
    fn is_live(&self, node: &str) -> bool {
        let now = Instant::now();
        locked(&self.state)
            .expiries
            .get(node)
            .is_some_and(|expiry| *expiry >= now)
    }

    fn nodes(&self, live: bool) -> Vec<String> {
        let now = Instant::now();
        let state = locked(&self.state);
        let mut nodes: Vec<String> = state
            .expiries
            .iter()
            .filter(|(_, expiry)| (**expiry >= now) == live)
            .map(|(node, _)| node.clone())
            .collect();
        nodes.sort();
        nodes
    }
}

impl Leases for MemoryLeases {
    fn renew(&self, node: &str, lease: Duration) -> BoxFuture<'_, Result<(), RegistryError>> {
        let expiry = Instant::now() + lease;
        locked(&self.state).expiries.insert(node.to_owned(), expiry);
        ready(())
    }

    fn live(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        ready(self.nodes(true))
    }

    fn expired(&self) -> BoxFuture<'_, Result<Vec<String>, RegistryError>> {
        ready(self.nodes(false))
    }

    fn claim(&self, node: &str, by: &str) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let now = Instant::now();
        let mut state = locked(&self.state);
        let free = state
            .claims
            .get(node)
            .is_none_or(|(_, until)| *until <= now);
        if free {
            state
                .claims
                .insert(node.to_owned(), (by.to_owned(), now + CLAIM));
        }
        ready(free)
    }

    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        locked(&self.state).expiries.remove(node);
        ready(())
    }
}

/// One node's presence records, by channel and connection.
type NodePresence = HashMap<(String, String), PresenceEntry>;

/// Presence records in memory, by node.
#[derive(Default)]
pub struct MemoryPresence {
    nodes: Mutex<HashMap<String, NodePresence>>,
}

impl PresenceRecords for MemoryPresence {
    fn add(
        &self,
        node: &str,
        channel: &str,
        entry: &PresenceEntry,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let field = (channel.to_owned(), entry.client_id.clone());
        locked(&self.nodes)
            .entry(node.to_owned())
            .or_default()
            .insert(field, entry.clone());
        ready(())
    }

    fn remove(
        &self,
        node: &str,
        channel: &str,
        client_id: &str,
    ) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut nodes = locked(&self.nodes);
        if let Some(records) = nodes.get_mut(node) {
            records.remove(&(channel.to_owned(), client_id.to_owned()));
            if records.is_empty() {
                nodes.remove(node);
            }
        }
        ready(())
    }

    fn take(&self, node: &str) -> BoxFuture<'_, Result<Vec<PresenceRecord>, RegistryError>> {
        let records = locked(&self.nodes).remove(node).unwrap_or_default();
        let records = records
            .into_iter()
            .map(|((channel, _), entry)| (channel, entry))
            .collect();
        ready(records)
    }
}

/// Per-user connection slots in memory, counted on the nodes live in `leases`.
pub struct MemoryUserSlots {
    leases: MemoryLeases,
    /// Slots by user, then by node.
    users: Mutex<HashMap<String, HashMap<String, usize>>>,
}

impl MemoryUserSlots {
    /// Slots counted on the nodes whose leases are in `leases`.
    pub fn new(leases: MemoryLeases) -> Self {
        Self {
            leases,
            users: Mutex::default(),
        }
    }
}

impl UserSlots for MemoryUserSlots {
    fn acquire(
        &self,
        node: &str,
        user: &str,
        cap: usize,
    ) -> BoxFuture<'_, Result<bool, RegistryError>> {
        let mut users = locked(&self.users);
        let slots = users.entry(user.to_owned()).or_default();
        let held: usize = slots
            .iter()
            .filter(|(node, _)| self.leases.is_live(node))
            .map(|(_, count)| count)
            .sum();
        let granted = held < cap;
        if granted {
            *slots.entry(node.to_owned()).or_insert(0) += 1;
        } else if slots.is_empty() {
            users.remove(user);
        }
        ready(granted)
    }

    fn release(&self, node: &str, user: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        let mut users = locked(&self.users);
        if let Some(slots) = users.get_mut(user) {
            if let Some(count) = slots.get_mut(node) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    slots.remove(node);
                }
            }
            if slots.is_empty() {
                users.remove(user);
            }
        }
        ready(())
    }

    fn forget(&self, node: &str) -> BoxFuture<'_, Result<(), RegistryError>> {
        locked(&self.users).retain(|_, slots| {
            slots.remove(node);
            !slots.is_empty()
        });
        ready(())
    }
}

//! The cluster view's messages: which connections an operator chose, and what nodes report
//! about their connections. Nodes exchange them over the bus and the admin API returns them,
//! so they depend on nothing else in the gateway.

use serde::{Deserialize, Serialize};

/// Connections chosen by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Selector {
    /// Every connection of a user.
    User(String),
    /// One connection.
    Client(String),
}

/// Filters of the clients list; every one that is set must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientFilter {
    /// Only this user's connections.
    pub user: Option<String>,
    /// Only connections subscribed to this channel.
    pub channel: Option<String>,
    /// Only connections of this client type.
    pub client_type: Option<String>,
}

/// How a connection reaches its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Transport {
    /// A WebSocket (`/ws`).
    #[default]
    Websocket,
    /// A Server-Sent Events stream (`/sse`).
    Sse,
    /// A long poll (`/poll`), one request at a time.
    Poll,
}

/// One connection in the clients list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClientInfo {
    /// The connection's id.
    pub client_id: String,
    /// Its user.
    pub user_id: String,
    /// Its client type, if registered.
    pub client_type: Option<String>,
    /// Its display name, if registered.
    pub client_name: Option<String>,
    /// The node holding it.
    pub node_id: String,
    /// When it connected, RFC 3339.
    pub connected_at: String,
    /// Its channels, the personal one included.
    pub channels: Vec<String>,
    /// How it reaches its client (absent from nodes that predate the fallback transports).
    #[serde(default)]
    pub transport: Transport,
}

/// One connection in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The connection's id.
    pub client_id: String,
    /// Its user.
    pub user_id: String,
    /// Its client type, if registered.
    pub client_type: Option<String>,
}

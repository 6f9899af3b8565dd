//! What the cluster asks of a node about its own connections: lists, counts, and operator
//! actions on connections chosen by user or client id.

use publisher::wire::ChannelName;

use super::{Hub, Session};
use crate::outbox::OutFrame;
use crate::protocol::{CloseCode, ServerFrame};
use crate::view::{ClientFilter, ClientInfo, PresenceEntry, Selector};

/// Whether `selector` chooses the connection `client_id` with `session`.
fn selects(selector: &Selector, client_id: &str, session: &Session) -> bool {
    match selector {
        Selector::User(user) => session.user_id.as_str() == user,
        Selector::Client(client) => client_id == client,
    }
}

impl Session {
    fn presence(&self, client_id: &str) -> PresenceEntry {
        PresenceEntry {
            client_id: client_id.to_owned(),
            user_id: self.user_id.to_string(),
            client_type: self.client_type.as_ref().map(|t| t.as_str().to_owned()),
        }
    }
}

impl Hub {
    /// This node's connections that pass `filter`; `node_id` names this node.
    pub(crate) fn local_clients(&self, filter: &ClientFilter, node_id: &str) -> Vec<ClientInfo> {
        let state = self.state();
        state
            .sessions
            .iter()
            .filter(|(_, s)| {
                filter
                    .user
                    .as_deref()
                    .is_none_or(|u| s.user_id.as_str() == u)
            })
            .filter(|(_, s)| {
                filter
                    .client_type
                    .as_deref()
                    .is_none_or(|t| s.client_type.as_ref().is_some_and(|ct| ct.as_str() == t))
            })
            .filter(|(_, s)| {
                filter
                    .channel
                    .as_deref()
                    .is_none_or(|c| s.channels.iter().any(|ch| ch.as_str() == c))
            })
            .map(|(client_id, s)| ClientInfo {
                client_id: client_id.to_string(),
                user_id: s.user_id.to_string(),
                client_type: s.client_type.as_ref().map(|t| t.as_str().to_owned()),
                client_name: s.client_name.clone(),
                node_id: node_id.to_owned(),
                connected_at: humantime::format_rfc3339_millis(s.connected_at).to_string(),
                channels: s.channels.iter().map(ToString::to_string).collect(),
                transport: s.transport,
            })
            .collect()
    }

    /// The distinct users connected to this node.
    pub(crate) fn local_users(&self) -> Vec<String> {
        self.state().users.keys().map(ToString::to_string).collect()
    }

    /// This node's channels with their local subscriber counts.
    pub(crate) fn local_channels(&self) -> Vec<(String, usize)> {
        let mut channels = Vec::new();
        for shard in self.inner.shards.each() {
            let listed = shard.channels.iter();
            channels.extend(listed.map(|(name, c)| (name.to_string(), c.subscribers.len())));
        }
        channels
    }

    /// This node's subscribers of `channel`.
    pub(crate) fn local_presence(&self, channel: &str) -> Vec<PresenceEntry> {
        let state = self.state();
        let shard = self.inner.shards.of(channel);
        let Some(entry) = shard.channels.get(channel) else {
            return Vec::new();
        };
        entry
            .subscribers
            .keys()
            .filter_map(|client_id| Some(state.sessions.get(client_id)?.presence(client_id)))
            .collect()
    }

    /// The presence entry of one local connection.
    pub(crate) fn presence_entry(&self, client_id: &str) -> Option<PresenceEntry> {
        Some(self.state().sessions.get(client_id)?.presence(client_id))
    }

    /// Closes the selected local connections with `code`; returns how many.
    pub(crate) fn close_where(&self, selector: &Selector, code: CloseCode) -> usize {
        let state = self.state();
        state
            .sessions
            .iter()
            .filter(|(id, s)| selects(selector, id, s))
            .filter(|(_, s)| s.outbox.close(code))
            .count()
    }

    /// Unsubscribes the selected local connections from `channel`, telling each with an
    /// `unsubscribed` frame; returns them (for leave events).
    pub(crate) fn unsubscribe_where(
        &self,
        selector: &Selector,
        channel: &ChannelName,
    ) -> Vec<PresenceEntry> {
        let chosen: Vec<(PresenceEntry, crate::outbox::Outbox)> = {
            let state = self.state();
            state
                .sessions
                .iter()
                .filter(|(id, s)| selects(selector, id, s) && s.channels.contains(channel))
                .map(|(id, s)| (s.presence(id), s.outbox.clone()))
                .collect()
        };
        let frame = OutFrame::reply(
            &ServerFrame::Unsubscribed {
                channels: vec![channel.to_string()],
            }
            .encode(None),
        );
        for (entry, outbox) in &chosen {
            self.unsubscribe(&entry.client_id, channel);
            let _ = outbox.push(&frame);
        }
        chosen.into_iter().map(|(entry, _)| entry).collect()
    }
}

//! Client types: a connection's `register`ed type, and the bus subscription of each type
//! that has local members, made on its first member and dropped on its last.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use publisher::wire::ClientType;

use super::{
    BusWatch, ClientId, ClientTypeMembers, Hub, HubError, State, bus_answer, bus_failed,
    shrink_if_sparse,
};
use crate::outbox::Outbox;

impl Hub {
    /// Sets a connection's display name, shown in the clients list.
    pub(crate) fn set_client_name(&self, client_id: &str, name: Option<String>) {
        if let Some(session) = self.state().sessions.get_mut(client_id) {
            session.client_name = name;
        }
    }

    /// Sets a connection's client type, moving it between client-type topics, and waits until
    /// the bus confirms the new one, so that its events reach the connection from then on.
    /// Where the bus refuses, the connection is left without a client type, as a refused
    /// subscription leaves it off the channel.
    pub(crate) async fn set_client_type(
        &self,
        client_id: &str,
        client_type: ClientType,
    ) -> Result<(), HubError> {
        let bus = self.switch_client_type(client_id, client_type.clone())?;
        if let Err(error) = bus_answer(bus).await {
            let mut state = self.state();
            if let Some(session) = state.sessions.get_mut(client_id)
                && session.client_type.as_ref() == Some(&client_type)
            {
                session.client_type = None;
                self.leave_client_type(&mut state, client_id, &client_type);
            }
            return Err(error.into());
        }
        Ok(())
    }

    fn switch_client_type(
        &self,
        client_id: &str,
        client_type: ClientType,
    ) -> Result<BusWatch, HubError> {
        let mut state = self.state();
        let Some((key, session)) = state.sessions.get_key_value(client_id) else {
            return Err(HubError::UnknownClient);
        };
        if session.client_type.as_ref() == Some(&client_type)
            && let Some(members) = state.client_types.get(&client_type)
        {
            return Ok(members.bus.clone());
        }
        let (key, outbox, previous) = (
            Arc::clone(key),
            session.outbox.clone(),
            session.client_type.clone(),
        );
        if let Some(session) = state.sessions.get_mut(client_id) {
            session.client_type = Some(client_type.clone());
        }
        if let Some(previous) = previous {
            self.leave_client_type(&mut state, client_id, &previous);
        }
        Ok(self.join_client_type(&mut state, &key, &client_type, &outbox))
    }

    /// Adds a connection to a client type's members; returns the watch of its bus
    /// subscription, made when the type's first local member joins.
    pub(super) fn join_client_type(
        &self,
        state: &mut State,
        client_id: &ClientId,
        client_type: &ClientType,
        outbox: &Outbox,
    ) -> BusWatch {
        let subscribe = || {
            let topic = self.inner.topics.client_type(client_type.as_str());
            self.subscribe_bus(topic, |_| {})
        };
        let members = state
            .client_types
            .entry(client_type.clone())
            .or_insert_with(|| ClientTypeMembers {
                outboxes: HashMap::new(),
                bus: subscribe(),
            });
        if bus_failed(&members.bus) {
            members.bus = subscribe();
        }
        members
            .outboxes
            .insert(Arc::clone(client_id), outbox.clone());
        members.bus.clone()
    }

    pub(super) fn leave_client_type(
        &self,
        state: &mut State,
        client_id: &str,
        client_type: &ClientType,
    ) {
        if let Entry::Occupied(mut members) = state.client_types.entry(client_type.clone()) {
            members.get_mut().outboxes.remove(client_id);
            if members.get().outboxes.is_empty() {
                members.remove();
                let topic = self.inner.topics.client_type(client_type.as_str());
                self.inner.broker.unsubscribe(topic);
            } else {
                shrink_if_sparse(&mut members.get_mut().outboxes);
            }
        }
    }
}

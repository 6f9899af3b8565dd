//! What a session does with each client frame once it is parsed and admitted.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use publisher::wire::{ChannelName, ClientType, EventName, Position, Target};
use serde_json::value::RawValue;

use super::Session;
use crate::access::{self, Grant};
use crate::hub::HubError;
use crate::metrics::RecoveryResult;
use crate::protocol::{ClientError, ClientFrame, ErrorCode, Rejection, RequestId, ServerFrame};

impl Session {
    fn grant(&self) -> Grant<'_> {
        Grant {
            user_id: &self.claims.user_id,
            patterns: &self.claims.channels,
        }
    }

    pub(super) async fn handle(&mut self, id: Option<RequestId>, frame: ClientFrame) {
        let id = id.as_deref();
        match frame {
            ClientFrame::Ping | ClientFrame::Heartbeat => self.reply(id, ServerFrame::Pong),
            ClientFrame::Auth { .. } => {
                self.reply_error(id, ErrorCode::BadRequest, "already authenticated")
            }
            ClientFrame::Register {
                client_type,
                client_name,
            } => self.register(id, &client_type, client_name).await,
            ClientFrame::Subscribe { channels, since } => self.subscribe(id, channels, since).await,
            ClientFrame::Unsubscribe { channels } => self.unsubscribe(id, channels).await,
            ClientFrame::Refresh { token } => self.refresh(id, &token).await,
            ClientFrame::History {
                channel,
                since,
                limit,
            } => self.history(id, &channel, since, limit).await,
            ClientFrame::Presence { channel } => self.presence(id, &channel).await,
            ClientFrame::Publish {
                channel,
                event,
                data,
            } => {
                let data = data.and_then(|d| serde_json::value::to_raw_value(&d).ok());
                self.publish(id, &channel, &event, data.as_deref()).await
            }
        }
    }

    /// Sets the connection's client type and display name; `registered` promises the client
    /// type's events from then on, so it waits for the bus to confirm the subscription.
    async fn register(
        &mut self,
        id: Option<&RawValue>,
        client_type: &str,
        client_name: Option<String>,
    ) {
        let client_type = match ClientType::parse(client_type) {
            Ok(client_type) => client_type,
            Err(error) => return self.reply_error(id, ErrorCode::BadRequest, &error.to_string()),
        };
        let name = client_name.map(|n| n.chars().take(128).collect());
        let hub = &self.node.hub;
        hub.set_client_name(&self.client_id, name);
        match hub.set_client_type(&self.client_id, client_type).await {
            Ok(()) => {
                let client_id = Arc::clone(&self.client_id);
                let registered = ServerFrame::Registered {
                    client_id: &client_id,
                };
                self.reply(id, registered);
            }
            Err(error) => self.reply_hub_error(id, &error),
        }
    }

    /// Checks a channel named by the client: its name, then whether it may subscribe.
    fn allowed_channel(&self, name: &str) -> Result<ChannelName, (ErrorCode, String)> {
        let channel =
            ChannelName::parse(name).map_err(|e| (ErrorCode::InvalidChannel, e.to_string()))?;
        access::may_subscribe(&self.node.config.namespaces, &self.grant(), &channel)
            .map_err(|denied| (denied.code, denied.message))?;
        Ok(channel)
    }

    async fn subscribe(
        &mut self,
        id: Option<&RawValue>,
        requested: Vec<String>,
        since: BTreeMap<String, Position>,
    ) {
        let hub = &self.node.hub;
        let max = self.node.config.limits.max_channels_per_connection;
        let mut channels = Vec::new();
        let mut rejected = Vec::new();
        let mut with_history = Vec::new();
        let mut joined = Vec::new();
        for name in dedup(requested) {
            let reject = |(code, message)| Rejection {
                channel: name.clone(),
                code,
                message,
            };
            let channel = match self.allowed_channel(&name) {
                Ok(channel) => channel,
                Err(denied) => {
                    rejected.push(reject(denied));
                    continue;
                }
            };
            let history = hub.keeps_history(&channel);
            match hub.subscribe(&self.client_id, &channel, max, history).await {
                Ok(newly) => {
                    if newly {
                        joined.push(channel.clone());
                    }
                    if history && newly {
                        with_history.push(channel);
                    }
                    channels.push(name);
                }
                Err(error) => {
                    let ClientError { code, message } = ClientError::from(&error);
                    rejected.push(reject((code, message)));
                }
            }
        }
        let mut recovered = BTreeMap::new();
        let mut positions = BTreeMap::new();
        let mut recoveries = Vec::new();
        for channel in with_history {
            let position = since.get(channel.as_str());
            let recovery = hub.recover(&self.client_id, &channel, position).await;
            if let Some(result) = recovery.recovered {
                recovered.insert(channel.to_string(), result);
                self.count_recovery(result);
            }
            if let Some(top) = &recovery.top {
                positions.insert(channel.to_string(), top.clone());
            }
            recoveries.push((channel, recovery));
        }
        let subscribed = ServerFrame::Subscribed {
            channels,
            rejected,
            recovered,
            positions,
        };
        self.reply(id, subscribed);
        for (channel, recovery) in recoveries {
            hub.finish_replay(&self.client_id, &channel, &recovery);
        }
        if let Some(entry) = hub.presence_entry(&self.client_id) {
            for channel in &joined {
                self.node.cluster.joined(channel, &entry).await;
            }
        }
    }

    async fn presence(&mut self, id: Option<&RawValue>, name: &str) {
        let channel = match self.allowed_channel(name) {
            Ok(channel) => channel,
            Err((code, message)) => return self.reply_error(id, code, &message),
        };
        if !self.node.cluster.keeps_presence(&channel) {
            let message = format!("presence is not kept on channel {channel}");
            return self.reply_error(id, ErrorCode::NotAvailable, &message);
        }
        match self.node.cluster.presence(&channel).await {
            Ok(clients) => {
                let reply = ServerFrame::Presence {
                    channel: channel.as_str(),
                    clients: &clients,
                };
                self.reply(id, reply);
            }
            Err(error) => {
                tracing::warn!(%error, "presence not read");
                self.reply_error(id, ErrorCode::Internal, error.public_message());
            }
        }
    }

    pub(super) fn count_recovery(&self, recovered: bool) {
        let result = if recovered {
            RecoveryResult::Recovered
        } else {
            RecoveryResult::NotRecovered
        };
        self.node.metrics.recovery(result);
    }

    async fn unsubscribe(&mut self, id: Option<&RawValue>, requested: Vec<String>) {
        let entry = self.node.hub.presence_entry(&self.client_id);
        let mut channels = Vec::new();
        let mut left = Vec::new();
        for name in dedup(requested) {
            match ChannelName::parse(&name) {
                // A connection always stays on its personal channel.
                Ok(channel) if channel.is_personal() => {}
                Ok(channel) => {
                    if self.node.hub.unsubscribe(&self.client_id, &channel) {
                        left.push(channel);
                    }
                    channels.push(name);
                }
                Err(_) => {}
            }
        }
        self.reply(id, ServerFrame::Unsubscribed { channels });
        if let Some(entry) = entry {
            for channel in &left {
                self.node.cluster.left(channel, &entry).await;
            }
        }
    }

    async fn refresh(&mut self, id: Option<&RawValue>, token: &str) {
        match self.node.auth.verify_refreshing(token).await {
            Ok(claims) if claims.user_id == self.claims.user_id => {
                let expires_at = humantime::format_rfc3339_millis(claims.expires_at).to_string();
                self.claims = claims;
                self.reply(id, ServerFrame::Refreshed { expires_at });
            }
            Ok(_) => self.reply_error(id, ErrorCode::Unauthorized, "token is for another user"),
            Err(error) => self.reply_error(id, ErrorCode::Unauthorized, &error.to_string()),
        }
    }

    async fn history(
        &mut self,
        id: Option<&RawValue>,
        name: &str,
        since: Option<Position>,
        limit: Option<usize>,
    ) {
        let channel = match self.allowed_channel(name) {
            Ok(channel) => channel,
            Err((code, message)) => return self.reply_error(id, code, &message),
        };
        match self
            .node
            .hub
            .history_page(
                &channel,
                since.as_ref().map(|p| p.offset),
                since.as_ref().map(|p| p.epoch.as_str()),
                limit,
            )
            .await
        {
            Ok(Some((events, position))) => {
                let events: Vec<&RawValue> = events.iter().map(AsRef::as_ref).collect();
                let history = ServerFrame::History {
                    channel: channel.as_str(),
                    events,
                    position: &position,
                };
                self.reply(id, history);
            }
            Ok(None) => {
                let message = format!("history is not kept on channel {channel}");
                self.reply_error(id, ErrorCode::NotAvailable, &message)
            }
            Err(error) => self.reply_hub_error(id, &HubError::from(error)),
        }
    }

    async fn publish(
        &mut self,
        id: Option<&RawValue>,
        channel: &str,
        event: &str,
        data: Option<&RawValue>,
    ) {
        let channel = match ChannelName::parse(channel) {
            Ok(channel) => channel,
            Err(error) => {
                return self.reply_error(id, ErrorCode::InvalidChannel, &error.to_string());
            }
        };
        let event = match EventName::parse(event) {
            Ok(event) => event,
            Err(error) => {
                return self.reply_error(id, ErrorCode::InvalidEvent, &error.to_string());
            }
        };
        let namespaces = &self.node.config.namespaces;
        if let Err(denied) = access::may_publish(namespaces, &self.grant(), &channel) {
            return self.reply_error(id, denied.code, &denied.message);
        }
        let target = Target::Channel(channel.as_str());
        match self
            .node
            .hub
            .publish(target, &event, data, None, None)
            .await
        {
            Ok(published) => {
                let position = published.position.as_ref();
                let reply = ServerFrame::Published {
                    offset: position.map(|p| p.offset),
                    epoch: position.map(|p| p.epoch.as_str()),
                };
                self.reply(id, reply);
            }
            Err(error) => self.reply_hub_error(id, &error),
        }
    }
}

fn dedup(mut names: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

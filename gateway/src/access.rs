//! Who may subscribe to and publish on a channel: namespaces, token claims, user limits.

use publisher::wire::{ChannelName, UserId};

use crate::auth::ChannelPattern;
use crate::config::{Namespaces, SubscribePolicy};
use crate::protocol::ErrorCode;

/// Why access to a channel was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The code for the client.
    pub code: ErrorCode,
    /// A message for the client's developer.
    pub message: String,
}

/// What a connection is allowed by its token.
pub(crate) struct Grant<'a> {
    /// The authenticated user.
    pub user_id: &'a UserId,
    /// Channel patterns from the token's `channels` claim.
    pub patterns: &'a [ChannelPattern],
}

/// Checks that the connection may subscribe to `channel`.
///
/// A user-limited channel (`name#42,43`, and personal channels `#42`) admits exactly the users
/// it lists, whatever its namespace says; any other channel follows its namespace's policy.
pub(crate) fn may_subscribe(
    namespaces: &Namespaces,
    grant: &Grant<'_>,
    channel: &ChannelName,
) -> Result<(), Denied> {
    let Some(namespace) = namespaces.get(channel.namespace()) else {
        return Err(Denied {
            code: ErrorCode::UnknownNamespace,
            message: format!("namespace {:?} is not configured", channel.namespace()),
        });
    };
    let forbidden = || Denied {
        code: ErrorCode::Forbidden,
        message: format!("not allowed on channel {channel}"),
    };
    if let Some(mut users) = channel.allowed_users() {
        return if users.any(|u| u == grant.user_id.as_str()) {
            Ok(())
        } else {
            Err(forbidden())
        };
    }
    match namespace.subscribe {
        SubscribePolicy::Public => Ok(()),
        SubscribePolicy::Claims if grant.patterns.iter().any(|p| p.matches(channel.as_str())) => {
            Ok(())
        }
        SubscribePolicy::Claims | SubscribePolicy::None => Err(forbidden()),
    }
}

/// Checks that the connection may publish on `channel`: its namespace allows client
/// publishing and the connection may subscribe to it.
pub(crate) fn may_publish(
    namespaces: &Namespaces,
    grant: &Grant<'_>,
    channel: &ChannelName,
) -> Result<(), Denied> {
    may_subscribe(namespaces, grant, channel)?;
    match namespaces.get(channel.namespace()) {
        Some(namespace) if namespace.client_publish => Ok(()),
        _ => Err(Denied {
            code: ErrorCode::Forbidden,
            message: format!("clients may not publish on channel {channel}"),
        }),
    }
}

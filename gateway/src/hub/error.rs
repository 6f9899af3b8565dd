//! Why the hub refused a request, and what a client or an API caller is told of it.

use std::borrow::Cow;

use crate::broker::BrokerError;
use crate::history::HistoryError;
use crate::protocol::{ClientError, ErrorCode};

/// Why the hub refused a subscription or a publish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    /// The connection is not (or no longer) in the hub.
    #[error("connection is closed")]
    UnknownClient,
    /// The connection is at its channel limit.
    #[error("at most {0} channels per connection")]
    LimitExceeded(usize),
    /// The bus did not confirm the subscription or take the publish.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The history store failed.
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl HubError {
    /// Whether the node's backends failed, rather than the request being refused.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Self::Broker(_) | Self::History(_))
    }

    /// What a client or an API caller is told: no store's own words.
    pub(crate) fn public_message(&self) -> Cow<'static, str> {
        match self {
            Self::Broker(error) => error.public_message().into(),
            Self::History(error) => error.public_message().into(),
            other => other.to_string().into(),
        }
    }
}

/// What a client is told of a hub error; the cause of a backend failure is logged, not sent.
impl From<&HubError> for ClientError {
    fn from(error: &HubError) -> Self {
        let code = match error {
            HubError::UnknownClient => ErrorCode::Internal,
            HubError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            HubError::Broker(_) | HubError::History(_) => {
                tracing::warn!(%error, "request failed on the bus or history");
                ErrorCode::Internal
            }
        };
        Self::new(code, error.public_message())
    }
}

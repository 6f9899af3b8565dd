//! `/api/publish`, `/api/publish/batch` and `/api/history/{channel}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use publisher::wire::{ChannelName, EventName, Target, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::ApiError;
use crate::history::Published;
use crate::hub::HubError;
use crate::protocol::ErrorCode;
use crate::{Node, http_error};

/// The body of `POST /api/publish`: exactly one target, an event, its data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    user: Option<String>,
    client_type: Option<String>,
    #[serde(default)]
    broadcast: bool,
    event: String,
    data: Option<Box<RawValue>>,
    exclude_client: Option<String>,
    idempotency_key: Option<String>,
}

pub(super) async fn publish(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let outcome = match serde_json::from_slice::<PublishRequest>(&body) {
        Ok(request) => publish_one(&node, request).await,
        Err(error) => Err(ApiError::bad(
            ErrorCode::BadRequest,
            format!("invalid body: {error}"),
        )),
    };
    match outcome {
        Ok(reply) => Json(reply).into_response(),
        Err(error) => (error.status, Json(error.body())).into_response(),
    }
}

pub(super) async fn publish_batch(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let items: Vec<Box<RawValue>> = match serde_json::from_slice(&body) {
        Ok(items) => items,
        Err(error) => {
            let message = format!("the body must be a JSON array of publish requests: {error}");
            return http_error(StatusCode::BAD_REQUEST, "bad_request", &message);
        }
    };
    let mut replies = Vec::with_capacity(items.len());
    for item in items {
        let outcome = match serde_json::from_str::<PublishRequest>(item.get()) {
            Ok(request) => publish_one(&node, request).await,
            Err(error) => Err(ApiError::bad(
                ErrorCode::BadRequest,
                format!("invalid item: {error}"),
            )),
        };
        replies.push(outcome.unwrap_or_else(|error| error.body()));
    }
    Json(replies).into_response()
}

async fn publish_one(node: &Node, request: PublishRequest) -> Result<Value, ApiError> {
    let targets = [
        request.channel.is_some(),
        request.channels.is_some(),
        request.user.is_some(),
        request.client_type.is_some(),
        request.broadcast,
    ];
    if targets.iter().filter(|set| **set).count() != 1 {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "name exactly one target: channel, channels, user, client_type or broadcast",
        ));
    }
    let key = request.idempotency_key.as_deref();
    if key.is_some() && (request.client_type.is_some() || request.broadcast) {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "idempotency_key works with channel, channels and user targets",
        ));
    }
    if key.is_some_and(|k| k.is_empty() || k.len() > 128) {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "idempotency_key must be 1 to 128 bytes",
        ));
    }
    let event = EventName::parse(&request.event)?;
    let data = request.data.as_deref();
    let exclude = request.exclude_client.as_deref();
    let publish = |target| node.hub.publish(target, &event, data, exclude, key);
    let failed = |error: HubError| {
        tracing::warn!(%error, "API publish failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Internal,
            message: error.public_message().into_owned(),
        }
    };
    if let Some(names) = &request.channels {
        if names.is_empty() {
            return Err(ApiError::bad(ErrorCode::BadRequest, "channels is empty"));
        }
        let channels = names
            .iter()
            .map(|n| ChannelName::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut replies = Map::new();
        for channel in &channels {
            publish(Target::Channel(channel.as_str()))
                .await
                .map_err(failed)?;
            replies.insert(channel.to_string(), json!({}));
        }
        return Ok(json!({ "channels": replies }));
    }
    let channel = match (&request.channel, &request.user) {
        (Some(name), _) => Some(ChannelName::parse(name)?),
        (_, Some(user)) => Some(ChannelName::personal(&UserId::parse(user)?)),
        _ => None,
    };
    let client_type = request
        .client_type
        .as_deref()
        .map(publisher::wire::ClientType::parse)
        .transpose()?;
    let target = match (&channel, &client_type) {
        (Some(channel), _) => Target::Channel(channel.as_str()),
        (_, Some(client_type)) => Target::ClientType(client_type.as_str()),
        _ => Target::Broadcast,
    };
    let published = publish(target).await.map_err(failed)?;
    Ok(published_reply(&published))
}

/// `{}`, or `{"offset":…,"epoch":…}` where history is kept, plus `"duplicate":true` when an
/// idempotency key was seen.
fn published_reply(published: &Published) -> Value {
    let mut reply = match &published.position {
        Some(position) => json!({"offset": position.offset, "epoch": position.epoch}),
        None => json!({}),
    };
    if published.duplicate {
        reply["duplicate"] = json!(true);
    }
    reply
}

/// Query of `GET /api/history/{channel}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn history(
    State(node): State<Arc<Node>>,
    Path(channel): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "query parameters are since (an offset), epoch and limit",
        ));
    };
    let channel = ChannelName::parse(&channel)?;
    let page = node
        .hub
        .history_page(&channel, query.since, query.epoch.as_deref(), query.limit)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "API history read failed");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: ErrorCode::Internal,
                message: error.public_message().to_owned(),
            }
        })?;
    match page {
        Some((events, position)) => Ok(Json(
            json!({"channel": channel, "events": events, "position": position}),
        )),
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NotAvailable,
            message: format!("history is not kept on channel {channel}"),
        }),
    }
}

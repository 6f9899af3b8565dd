//! The cluster view and operator actions: `/api/stats`, `/api/clients`, `/api/channels`,
//! `/api/presence/{channel}`, `/api/disconnect`, `/api/unsubscribe`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Json;
use publisher::wire::ChannelName;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::cluster::close_code;
use crate::node::Node;
use crate::protocol::{CloseCode, ErrorCode};
use crate::view::{ClientFilter, Selector};

type ApiResult = Result<Json<Value>, ApiError>;

pub(super) async fn stats(State(node): State<Arc<Node>>) -> ApiResult {
    Ok(Json(json!(node.cluster.stats().await?)))
}

pub(super) async fn clients(
    State(node): State<Arc<Node>>,
    filter: Result<Query<ClientFilter>, QueryRejection>,
) -> ApiResult {
    let Ok(Query(filter)) = filter else {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "filters are user, channel and client_type",
        ));
    };
    let clients = node.cluster.clients(filter).await?;
    Ok(Json(json!({"total": clients.len(), "clients": clients})))
}

pub(super) async fn channels(State(node): State<Arc<Node>>) -> ApiResult {
    let channels: Vec<Value> = node
        .cluster
        .channels()
        .await?
        .into_iter()
        .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
        .collect();
    Ok(Json(json!({"channels": channels})))
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(ApiError::from)
}

pub(super) async fn presence(State(node): State<Arc<Node>>, Path(name): Path<String>) -> ApiResult {
    let channel = channel(&name)?;
    if !node.cluster.keeps_presence(&channel) {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NotAvailable,
            message: format!("presence is not kept on channel {channel}"),
        });
    }
    let clients = node.cluster.presence(&channel).await?;
    Ok(Json(json!({"channel": channel, "clients": clients})))
}

/// The body of `/api/disconnect` and `/api/unsubscribe`: one of user or client_id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorRequest {
    user: Option<String>,
    client_id: Option<String>,
    channel: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

impl OperatorRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_json::from_slice(body)
            .map_err(|error| ApiError::bad(ErrorCode::BadRequest, format!("invalid body: {error}")))
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        match (&self.user, &self.client_id) {
            (Some(user), None) => Ok(Selector::User(user.clone())),
            (None, Some(client_id)) => Ok(Selector::Client(client_id.clone())),
            _ => Err(ApiError::bad(
                ErrorCode::BadRequest,
                "name exactly one of user or client_id",
            )),
        }
    }
}

pub(super) async fn disconnect(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let request = OperatorRequest::parse(&body)?;
    let selector = request.selector()?;
    if request.channel.is_some() {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "disconnect takes no channel",
        ));
    }
    let code = match request.code {
        None => CloseCode::OperatorDisconnect,
        Some(code) => close_code(code).ok_or_else(|| {
            ApiError::bad(
                ErrorCode::BadRequest,
                "code must be one of 1000, 4001, 4002, 4003, 4004, 4101, 4102, 4200",
            )
        })?,
    };
    tracing::info!(
        ?selector,
        code = code.code(),
        reason = request.reason.as_deref().unwrap_or(""),
        "operator disconnect"
    );
    let count = node.cluster.disconnect(selector, code).await?;
    Ok(Json(json!({"disconnected": count})))
}

pub(super) async fn unsubscribe(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult {
    let request = OperatorRequest::parse(&body)?;
    let selector = request.selector()?;
    let Some(name) = request.channel.as_deref() else {
        return Err(ApiError::bad(ErrorCode::BadRequest, "channel is required"));
    };
    let channel = channel(name)?;
    if channel.is_personal() {
        return Err(ApiError::bad(
            ErrorCode::BadRequest,
            "a connection always stays on its personal channel",
        ));
    }
    let count = node.cluster.unsubscribe(selector, &channel).await?;
    Ok(Json(json!({"unsubscribed": count})))
}

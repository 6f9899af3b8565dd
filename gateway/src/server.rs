//! The public listener: `GET /ws` (authenticate, then upgrade) and `GET /healthz`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use publisher::wire::Position;

use crate::{Node, http_error, session};

/// Routes of the public listener.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(node)
}

/// Checks origin and token before the upgrade, so refusals are plain HTTP statuses.
async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let reject = |status, reason: &'static str, message: &str| {
        node.metrics
            .connections_rejected
            .with_label_values(&[reason])
            .inc();
        http_error(status, reason, message)
    };
    if node.is_draining() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is shutting down; connect to another",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = &node.config.allowed_origins;
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin || a == "*") {
            return reject(StatusCode::FORBIDDEN, "origin", "origin not allowed");
        }
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = query.get("token").map(String::as_str).or(bearer);
    let claims = match token.map(|t| node.auth.verify(t.trim())) {
        None => None,
        Some(Ok(claims)) => Some(claims),
        Some(Err(error)) => {
            tracing::debug!(%error, "token refused");
            return reject(StatusCode::UNAUTHORIZED, error.reason(), &error.to_string());
        }
    };
    // The personal channel's recovery position: `?since_offset=41&since_epoch=…`.
    let since = query
        .get("since_offset")
        .and_then(|o| o.parse().ok())
        .map(|offset| Position {
            offset,
            epoch: query.get("since_epoch").cloned().unwrap_or_default(),
        });
    let limits = &node.config.limits;
    upgrade
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(16 * 1024 + limits.outbox_max_bytes + limits.max_message_bytes)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| session::run(node, socket, claims, since))
        .into_response()
}

//! The admin listener: `/metrics`, `/readyz`, and the `/api/*` calls behind the API key:
//! [`publish`] (publishing and history) and [`cluster`] (the cluster view and operator actions).

mod cluster;
mod publish;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use publisher::wire::WireError;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::cluster::ClusterError;
use crate::protocol::ErrorCode;
use crate::{Node, http_error};

/// Routes of the admin listener.
pub fn router(node: Arc<Node>) -> Router {
    let api = Router::new()
        .route("/publish", post(publish::publish))
        .route("/publish/batch", post(publish::publish_batch))
        .route("/history/{channel}", get(publish::history))
        .route("/stats", get(cluster::stats))
        .route("/clients", get(cluster::clients))
        .route("/channels", get(cluster::channels))
        .route("/presence/{channel}", get(cluster::presence))
        .route("/disconnect", post(cluster::disconnect))
        .route("/unsubscribe", post(cluster::unsubscribe))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            require_api_key,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/healthz", get(|| async { "ok" }))
        .nest("/api", api)
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "node is draining",
        );
    }
    if !node.bus_up() {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_down",
            "bus is not connected",
        );
    }
    Json(json!({"status": "ready"})).into_response()
}

async fn require_api_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(node.api_key.as_bytes())) {
        next.run(request).await
    } else {
        http_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key (Authorization: Bearer <GATEWAY_API_KEY>)",
        )
    }
}

/// An API call that could not be done: an HTTP status and `{"error":{"code":…,"message":…}}`.
struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<WireError> for ApiError {
    fn from(error: WireError) -> Self {
        let code = match error {
            WireError::InvalidChannel(_) => ErrorCode::InvalidChannel,
            WireError::InvalidEvent(_) | WireError::ReservedEvent(_) => ErrorCode::InvalidEvent,
            _ => ErrorCode::BadRequest,
        };
        Self::bad(code, error.to_string())
    }
}

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> Self {
        tracing::warn!(%error, "cluster call failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: ErrorCode::Internal,
            message: error.public_message().to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

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
use crate::history::HistoryError;
use crate::hub::HubError;
use crate::node::Node;
use crate::protocol::{ClientError, ErrorCode, error_body, http_error, json_errors};

/// Routes of the admin listener.
pub(crate) fn router(node: Arc<Node>) -> Router {
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
        .layer(middleware::map_response(json_errors))
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
}

impl ApiError {
    /// The JSON error body.
    fn body(&self) -> Value {
        error_body(self.code.label(), &self.message)
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

impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        let status = if error.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        let ClientError { code, message } = ClientError::from(&error);
        Self {
            status,
            code,
            message,
        }
    }
}

impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> Self {
        Self::from(HubError::from(error))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        http_error(self.status, self.code.label(), &self.message)
    }
}

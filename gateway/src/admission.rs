//! The checks every public transport (`/ws`, `/sse`, `/poll`) makes before it serves a client:
//! the node is not draining, the browser's origin is allowed, and the token verifies. A refusal
//! is an HTTP error with the JSON body, counted in `gateway_connections_rejected_total`.

use axum::http::{HeaderMap, StatusCode, header};

use crate::auth::Claims;
use crate::metrics::Refusal;
use crate::node::Node;
use crate::protocol::HttpError;

/// Refuses a request for `reason`, counting it.
pub(crate) fn refuse(
    node: &Node,
    status: StatusCode,
    reason: &'static str,
    message: &str,
) -> HttpError {
    node.metrics.refused(reason);
    HttpError::new(status, reason, message)
}

/// Admits a request: `Ok(None)` when it brought no token (it may still send an `auth` frame
/// on a WebSocket), `Ok(Some)` with the token's claims, or the refusal to answer with. A token
/// naming a key id no key set holds waits for the JWKS URL to be fetched again.
pub(crate) async fn admit(
    node: &Node,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Claims>, HttpError> {
    if node.is_draining() {
        return Err(refuse(
            node,
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Draining.label(),
            "node is shutting down; connect to another",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !node.origin_allowed(origin.to_str().unwrap_or_default())
    {
        return Err(refuse(
            node,
            StatusCode::FORBIDDEN,
            Refusal::Origin.label(),
            "origin not allowed",
        ));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = query_token.or(bearer) else {
        return Ok(None);
    };
    match node.auth.verify_refreshing(token.trim()).await {
        Ok(claims) => Ok(Some(claims)),
        Err(error) => {
            tracing::debug!(%error, "token refused");
            Err(refuse(
                node,
                StatusCode::UNAUTHORIZED,
                error.reason(),
                &error.to_string(),
            ))
        }
    }
}

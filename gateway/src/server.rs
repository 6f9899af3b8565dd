//! The public listener: `GET /ws` (authenticate, then upgrade) and `GET /healthz`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use publisher::wire::Position;

use crate::node::Node;
use crate::protocol::{Encoding, Format, deflate, http_error, json_errors};
use crate::session;
use crate::view::Transport;
use crate::{admission, fallback};

/// Routes of the public listener.
pub(crate) fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/sse", get(fallback::sse).options(fallback::preflight))
        .route("/poll", get(fallback::poll).options(fallback::preflight))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(node)
}

/// Checks origin and token before the upgrade, so refusals are plain HTTP statuses.
async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<Upgrade, Response>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(refusal) => return refusal,
    };
    let token = query.get("token").map(String::as_str);
    let claims = match admission::admit(&node, &headers, token).await {
        Ok(claims) => claims,
        Err(refusal) => return refusal.into_response(),
    };
    let since = match personal_since(&query) {
        Ok(since) => since,
        Err(message) => return http_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let (format, subprotocol) = match negotiate_format(&query, &headers) {
        Ok(negotiated) => negotiated,
        Err(message) => return http_error(StatusCode::BAD_REQUEST, "bad_request", message),
    };
    let encoding = Encoding {
        format,
        compress_from: node
            .config
            .ws_compression
            .filter(|_| offers_deflate(&headers)),
    };
    let accept = tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let on_upgrade = upgrade.on_upgrade;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let opening = session::Opening {
                    claims,
                    since,
                    transport: Transport::Websocket,
                    encoding,
                };
                session::run(node, io, opening).await
            }
            Err(error) => tracing::debug!(%error, "upgrade failed"),
        }
    });
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response();
    if let Some(subprotocol) = subprotocol {
        let value = HeaderValue::from_static(subprotocol);
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    if encoding.compress_from.is_some() {
        let value = HeaderValue::from_static(deflate::ACCEPTED);
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    response
}

/// Whether the client offers permessage-deflate in a form this gateway accepts.
fn offers_deflate(headers: &HeaderMap) -> bool {
    let values = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok());
    deflate::accepts_offer(values)
}

/// The connection's encoding, from `?format=` or else the first of the client's subprotocols
/// that names one, and the subprotocol to answer with when the client offered any (a client
/// that offers subprotocols must get one of them back).
fn negotiate_format(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(Format, Option<&'static str>), &'static str> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .collect();
    let by_subprotocol = offered
        .iter()
        .find_map(|value| Format::from_subprotocol(value));
    let format = match query.get("format") {
        Some(value) => Format::from_query(value).ok_or("format must be \"json\" or \"msgpack\"")?,
        None => by_subprotocol.unwrap_or_default(),
    };
    if offered.is_empty() {
        return Ok((format, None));
    }
    let wanted = format.subprotocol();
    if offered
        .iter()
        .any(|value| value.eq_ignore_ascii_case(wanted))
    {
        Ok((format, Some(wanted)))
    } else {
        Err(
            "Sec-WebSocket-Protocol offers no subprotocol of this gateway for the format asked: \
             offer gateway.json or gateway.msgpack",
        )
    }
}

/// The personal channel's recovery position, `?since_offset=41&since_epoch=…`, if given.
pub(crate) fn personal_since(
    query: &HashMap<String, String>,
) -> Result<Option<Position>, &'static str> {
    let Some(offset) = query.get("since_offset") else {
        return Ok(None);
    };
    let offset = offset
        .parse()
        .map_err(|_| "since_offset must be a non-negative integer")?;
    let epoch = query.get("since_epoch").cloned().unwrap_or_default();
    Ok(Some(Position { offset, epoch }))
}

/// A WebSocket upgrade request (RFC 6455 section 4.2.1): its key, and the connection to take
/// over once the 101 response is sent. The session owns the raw connection, so that the
/// fan-out can write frames to it directly.
struct Upgrade {
    key: String,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let bad = |message: &str| http_error(StatusCode::BAD_REQUEST, "bad_request", message);
        let has = |name: header::HeaderName, token: &str| {
            parts.headers.get_all(name).iter().any(|value| {
                value
                    .to_str()
                    .unwrap_or_default()
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        };
        if parts.method != Method::GET {
            return Err(http_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "a WebSocket upgrade must be a GET",
            ));
        }
        if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
            return Err(bad("not a WebSocket upgrade request"));
        }
        if !has(header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(http_error(
                StatusCode::UPGRADE_REQUIRED,
                "bad_request",
                "only WebSocket version 13 is supported",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .and_then(|key| key.to_str().ok())
            .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?
            .to_owned();
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                http_error(
                    StatusCode::UPGRADE_REQUIRED,
                    "bad_request",
                    "this connection cannot be upgraded",
                )
            })?;
        Ok(Self { key, on_upgrade })
    }
}

//! `GET /sse`: one session as a Server-Sent Events stream. Every frame is an SSE message whose
//! `data:` is the frame and whose `id:` is the cursor after it, so an `EventSource` that
//! reconnects sends its position back as `Last-Event-ID`; heartbeats are comments.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::Value;

use super::{Incoming, LocalClient, Request, Tracker, refused_session, with_cors};
use crate::node::Node;
use crate::view::Transport;

/// The reconnect delay advised to `EventSource` at the head of a stream.
const RETRY: Duration = Duration::from_secs(2);

/// A stream being served.
struct Stream {
    client: LocalClient,
    tracker: Tracker,
    /// `connection_established`, read before the response started.
    first: Option<String>,
    ended: bool,
}

/// Serves `GET /sse`.
pub(crate) async fn sse(
    State(node): State<Arc<Node>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let request = match Request::admit(&node, &query, &headers, true).await {
        Ok(request) => request,
        Err(refusal) => return with_cors(&node, &headers, refusal.into_response()),
    };
    let mut client = LocalClient::open(Arc::clone(&node), &request, Transport::Sse).await;
    // Until the session is established, a refusal can still be an HTTP status.
    let first = loop {
        match client.next().await {
            Incoming::Frame(text) => break text,
            Incoming::Ping => {}
            Incoming::Closed(code, reason) => {
                return with_cors(
                    &node,
                    &headers,
                    refused_session(code, &reason).into_response(),
                );
            }
        }
    };
    client.subscribe(&request).await;
    let state = Stream {
        client,
        tracker: Tracker::new(&request),
        first: Some(first),
        ended: false,
    };
    let events = stream::unfold(state, |mut state| async move {
        let event = next_event(&mut state).await?;
        Some((Ok::<_, Infallible>(event), state))
    });
    let mut response = Sse::new(events).into_response();
    // Proxies that buffer responses (nginx) must pass this one through as it comes.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(&node, &headers, response)
}

/// The stream's next message; `None` once the session ended and the client was told why.
async fn next_event(state: &mut Stream) -> Option<Event> {
    if state.ended {
        return None;
    }
    if let Some(first) = state.first.take() {
        return Some(frame_event(&mut state.tracker, first).retry(RETRY));
    }
    match state.client.next().await {
        Incoming::Frame(text) => Some(frame_event(&mut state.tracker, text)),
        Incoming::Ping => Some(Event::default().comment("ping")),
        Incoming::Closed(code, reason) => {
            state.ended = true;
            let frame = state.tracker.disconnect(code, &reason)?;
            Some(frame_event(&mut state.tracker, frame))
        }
    }
}

/// One frame as an SSE message, its `id:` the cursor that includes it.
fn frame_event(tracker: &mut Tracker, text: String) -> Event {
    let frame: Value = serde_json::from_str(&text).unwrap_or_default();
    let kind = tracker.apply(&frame);
    let event = Event::default().id(tracker.cursor.encode()).data(text);
    match frame["reconnect_after_ms"].as_u64() {
        Some(ms) if kind == "disconnect" => event.retry(Duration::from_millis(ms)),
        _ => event,
    }
}

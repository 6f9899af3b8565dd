//! `GET /poll`: one session per request, answered with `{"frames":[…],"cursor":"…"}` as soon as
//! there is something to deliver, or with no frames once `timeout_ms` passes (at most 60 s).
//! Without a cursor it answers at once with `connection_established`, `subscribed` and the
//! current cursor. Nothing of a poller is kept between its polls.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::{Incoming, LocalClient, Request, Tracker, refused_session, with_cors};
use crate::node::Node;
use crate::protocol::HttpError;
use crate::view::Transport;

/// The wait when a poll names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// The longest wait a poll may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a poll that has something to deliver waits for more, so that a burst goes out
/// in one answer.
const LINGER: Duration = Duration::from_millis(10);
/// The most frames one answer carries; the rest wait for the next poll.
const MAX_FRAMES: usize = 1000;

/// Serves `GET /poll`.
pub(crate) async fn poll(
    State(node): State<Arc<Node>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let response = match answer(Arc::clone(&node), &query, &headers).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    with_cors(&node, &headers, response)
}

async fn answer(
    node: Arc<Node>,
    query: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, HttpError> {
    let wait = wait(query)?;
    let request = Request::admit(&node, query, headers, false).await?;
    let mut client = LocalClient::open(node, &request, Transport::Poll).await;
    let mut tracker = Tracker::new(&request);
    let mut frames = Vec::new();
    let head = collect_head(&mut client, &request, &mut tracker, &mut frames).await?;
    if let Head::Subscribed { quiet } = head
        && request.cursor.is_some()
    {
        let deadline = Instant::now() + wait;
        collect_events(&mut client, &mut tracker, &mut frames, quiet, deadline).await;
    }
    client.close();
    let body = format!(
        r#"{{"frames":[{}],"cursor":"{}"}}"#,
        frames.join(","),
        tracker.cursor.encode()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// The poll's `timeout_ms`.
fn wait(query: &[(String, String)]) -> Result<Duration, HttpError> {
    let Some((_, value)) = query.iter().find(|(k, _)| k == "timeout_ms") else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let millis: u64 = value.parse().map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "timeout_ms must be a whole number of milliseconds",
        )
    })?;
    Ok(Duration::from_millis(millis).min(MAX_TIMEOUT))
}

/// How the head of a poll ended.
enum Head {
    /// The session is established and subscribed; the first `quiet` frames collected only
    /// repeat refused channels, which is no reason to answer before the timeout (a client
    /// that keeps asking for a refused channel would otherwise poll in a tight loop).
    Subscribed {
        /// Collected frames that are no reason to answer yet.
        quiet: usize,
    },
    /// The session ended (drain, operator disconnect, expiry): answer now.
    Ended,
}

/// Reads up to the `subscribed` reply. A first poll answers with every frame; a poll with a
/// cursor only with those that say something it must act on (a refused channel, a channel
/// that could not be recovered) and the events that arrived meanwhile.
async fn collect_head(
    client: &mut LocalClient,
    request: &Request,
    tracker: &mut Tracker,
    frames: &mut Vec<String>,
) -> Result<Head, HttpError> {
    let first_poll = request.cursor.is_none();
    let mut established = false;
    let mut quiet = 0;
    loop {
        match client.next().await {
            Incoming::Ping => {}
            Incoming::Closed(code, reason) if !established => {
                return Err(refused_session(code, &reason));
            }
            Incoming::Closed(code, reason) => {
                frames.extend(tracker.disconnect(code, &reason));
                return Ok(Head::Ended);
            }
            Incoming::Frame(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                let kind = tracker.apply(&frame);
                let head = kind == "connection_established" || kind == "subscribed";
                if first_poll || !head || unrecovered(&frame) {
                    frames.push(text);
                } else if rejected(&frame) {
                    frames.push(text);
                    quiet += 1;
                }
                if kind == "connection_established" {
                    established = true;
                    client.subscribe(request).await;
                    if request.channels.is_empty() {
                        return Ok(Head::Subscribed { quiet });
                    }
                }
                if kind == "subscribed" {
                    return Ok(Head::Subscribed { quiet });
                }
            }
        }
    }
}

/// Whether a head frame tells of a channel that could not be recovered: the client must
/// reload it.
fn unrecovered(frame: &Value) -> bool {
    match &frame["recovered"] {
        Value::Bool(ok) => !ok,
        Value::Object(channels) => channels.values().any(|ok| ok == &Value::Bool(false)),
        _ => false,
    }
}

/// Whether a head frame lists refused channels.
fn rejected(frame: &Value) -> bool {
    frame["rejected"].as_array().is_some_and(|r| !r.is_empty())
}

/// Collects frames until there is something to deliver (then lingers briefly for more) or
/// `deadline` passes.
async fn collect_events(
    client: &mut LocalClient,
    tracker: &mut Tracker,
    frames: &mut Vec<String>,
    quiet: usize,
    deadline: Instant,
) {
    let mut deadline = deadline;
    loop {
        let linger = frames.len() > quiet;
        if linger {
            deadline = deadline.min(Instant::now() + LINGER);
        }
        if frames.len() >= MAX_FRAMES {
            return;
        }
        match timeout_at(deadline, client.next()).await {
            Err(_) => return,
            Ok(Incoming::Ping) => {}
            Ok(Incoming::Frame(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap_or_default();
                tracker.apply(&frame);
                frames.push(text);
            }
            Ok(Incoming::Closed(code, reason)) => {
                frames.extend(tracker.disconnect(code, &reason));
                return;
            }
        }
    }
}

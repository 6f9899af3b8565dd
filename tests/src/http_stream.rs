//! Clients of the HTTP fallback transports: [`SseStream`], a Server-Sent Events reader of
//! `GET /sse` with reads that time out loudly, and [`Poller`], a long-poll client of
//! `GET /poll` that carries its cursor from one answer to the next (to any replica).
//! [`decode_cursor`] shows what a cursor holds, for assertions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::client::brief;

/// How long [`SseStream::next_message`] waits for the next message (heartbeats included).
pub const SSE_RECV_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP client for the public listener: no proxy, no overall timeout (streams are long);
/// connections time out after 10 s.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// One SSE message: its fields as the server wrote them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseMessage {
    /// `id:`, the cursor after this message.
    pub id: Option<String>,
    /// `data:`, parsed as JSON (lines joined with `\n`, as `EventSource` does).
    pub data: Option<Value>,
    /// `retry:`, milliseconds.
    pub retry: Option<u64>,
    /// `event:`, if any (the gateway sends none).
    pub event: Option<String>,
    /// Comment lines (`: ping`), without the colon and the space after it.
    pub comments: Vec<String>,
}

impl SseMessage {
    /// The frame this message carries; panics on a comment-only message.
    pub fn frame(&self) -> &Value {
        match &self.data {
            Some(data) => data,
            None => panic!("expected a frame, got a message without data: {self:?}"),
        }
    }

    /// The `id:` (a cursor); panics if the message has none.
    pub fn cursor(&self) -> &str {
        match &self.id {
            Some(id) => id,
            None => panic!("expected an id: on {self:?}"),
        }
    }

    /// Whether this is a heartbeat: comments only.
    pub fn is_comment(&self) -> bool {
        self.data.is_none() && !self.comments.is_empty()
    }
}

/// How an SSE stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEnd {
    /// The response ended cleanly.
    Eof,
    /// The connection failed (reset, truncated chunked body, …).
    Error(String),
}

/// A `GET /sse` response being read.
#[derive(Debug)]
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    ended: Option<SseEnd>,
    /// The id of the last message that had one: what `EventSource` sends as `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

/// A refused `GET /sse` or `GET /poll`: status, headers and body (JSON where it is JSON).
#[derive(Debug, Clone)]
pub struct HttpRefusal {
    /// The status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as JSON, or as a JSON string if it is not JSON.
    pub body: Value,
}

async fn refusal(response: reqwest::Response) -> HttpRefusal {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    HttpRefusal {
        status,
        headers,
        body,
    }
}

impl SseStream {
    /// `GET <url>` (a full `/sse?…` URL); panics unless it answers a 200 event stream.
    pub async fn connect(url: &str) -> Self {
        match Self::open(http_client().get(url)).await {
            Ok(stream) => stream,
            Err(refused) => panic!("GET {url} refused: {refused:?}"),
        }
    }

    /// `GET <url>` with `Last-Event-ID: <cursor>`; panics unless it answers a 200 event
    /// stream.
    pub async fn resume(url: &str, last_event_id: &str) -> Self {
        let request = http_client()
            .get(url)
            .header("Last-Event-ID", last_event_id);
        match Self::open(request).await {
            Ok(stream) => stream,
            Err(refused) => {
                panic!("GET {url} (Last-Event-ID {last_event_id}) refused: {refused:?}")
            }
        }
    }

    /// Sends `request`: the stream if it answered 200 with `text/event-stream`, otherwise
    /// the refusal.
    pub async fn open(request: reqwest::RequestBuilder) -> Result<Self, HttpRefusal> {
        let response = match tokio::time::timeout(SSE_RECV_TIMEOUT, request.send()).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => panic!("GET /sse failed: {e}"),
            Err(_) => panic!("GET /sse: no response headers within {SSE_RECV_TIMEOUT:?}"),
        };
        if response.status() != StatusCode::OK {
            return Err(refusal(response).await);
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "GET /sse answered 200 with content-type {content_type:?}"
        );
        Ok(Self {
            response,
            buffer: Vec::new(),
            ended: None,
            last_event_id: None,
        })
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The next message, or how the stream ended; `None` (with `timed_out`) if nothing came
    /// within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<SseMessage>, SseEnd> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(message) = self.take_message() {
                if message.id.is_some() {
                    self.last_event_id.clone_from(&message.id);
                }
                return Ok(Some(message));
            }
            if let Some(end) = &self.ended {
                return Err(end.clone());
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return Ok(None),
                Ok(Ok(Some(bytes))) => self.buffer.extend_from_slice(&bytes),
                Ok(Ok(None)) => self.ended = Some(SseEnd::Eof),
                Ok(Err(e)) => self.ended = Some(SseEnd::Error(format!("{e:?}"))),
            }
        }
    }

    /// The next message (heartbeats included) or how the stream ended; panics if nothing
    /// comes within [`SSE_RECV_TIMEOUT`].
    pub async fn next_message(&mut self) -> Result<SseMessage, SseEnd> {
        match self.next_within(SSE_RECV_TIMEOUT).await? {
            Some(message) => Ok(message),
            None => panic!("no SSE message within {SSE_RECV_TIMEOUT:?}"),
        }
    }

    /// The next message that carries a frame, skipping heartbeats; panics if the stream ends
    /// or nothing comes in time.
    pub async fn next_frame(&mut self) -> SseMessage {
        loop {
            match self.next_message().await {
                Ok(message) if message.data.is_some() => return message,
                Ok(_) => {}
                Err(end) => panic!("the SSE stream ended ({end:?}) while a frame was expected"),
            }
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn expect_frame(&mut self, kind: &str) -> SseMessage {
        let message = self.next_frame().await;
        assert_eq!(
            message.frame()["type"],
            kind,
            "expected {kind}, got {}",
            brief(message.frame())
        );
        message
    }

    /// Frames (heartbeats skipped) until the stream ends, and how it ended; panics if it does
    /// not end within `limit`.
    pub async fn frames_until_end(&mut self, limit: Duration) -> (Vec<SseMessage>, SseEnd) {
        let deadline = Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Ok(Some(message)) if message.data.is_some() => frames.push(message),
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "the SSE stream did not end within {limit:?}; last frames {:?}",
                    frames
                        .iter()
                        .rev()
                        .take(3)
                        .map(|m| brief(m.frame()))
                        .collect::<Vec<_>>()
                ),
                Err(end) => return (frames, end),
            }
        }
    }

    /// Parses one complete message out of the buffer, if there is one.
    fn take_message(&mut self) -> Option<SseMessage> {
        loop {
            let (end, separator) = find_blank_line(&self.buffer)?;
            let block: Vec<u8> = self.buffer.drain(..end + separator).collect();
            let text = String::from_utf8_lossy(&block[..end]).into_owned();
            if let Some(message) = parse_message(&text) {
                return Some(message);
            }
        }
    }
}

/// The end of the first message in `buffer` and the length of its blank-line separator.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    for (i, window) in buffer.windows(2).enumerate() {
        if window == b"\n\n" {
            return Some((i, 2));
        }
        if window == b"\r\n" && buffer[i + 2..].starts_with(b"\r\n") {
            return Some((i, 4));
        }
    }
    None
}

/// One message's lines, as the SSE spec reads them; `None` for an empty block.
fn parse_message(text: &str) -> Option<SseMessage> {
    let mut message = SseMessage::default();
    let mut data: Option<String> = None;
    let mut any = false;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        any = true;
        if let Some(comment) = line.strip_prefix(':') {
            message
                .comments
                .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => message.id = Some(value.to_owned()),
            "retry" => message.retry = value.parse().ok(),
            "event" => message.event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            other => panic!("unknown SSE field {other:?} in {text:?}"),
        }
    }
    if let Some(data) = data {
        let frame = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("SSE data is not one JSON frame ({e}): {data:?}"));
        message.data = Some(frame);
    }
    any.then_some(message)
}

/// One answer of `GET /poll`.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    /// The status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as JSON, or as a JSON string if it is not JSON.
    pub body: Value,
    /// How long the request took.
    pub elapsed: Duration,
}

impl PollAnswer {
    /// The frames of a 200 answer; panics on any other.
    pub fn frames(&self) -> &[Value] {
        assert_eq!(self.status, StatusCode::OK, "poll answered {}", self.body);
        match self.body["frames"].as_array() {
            Some(frames) => frames,
            None => panic!(
                "a poll answer is {{\"frames\":[…],\"cursor\":…}}, got {}",
                self.body
            ),
        }
    }

    /// The cursor of a 200 answer.
    pub fn cursor(&self) -> &str {
        assert_eq!(self.status, StatusCode::OK, "poll answered {}", self.body);
        match self.body["cursor"].as_str() {
            Some(cursor) => cursor,
            None => panic!("a poll answer carries a cursor string, got {}", self.body),
        }
    }
}

/// `GET <base>/poll?<query>` (values are URL-encoded here); waits at most 70 s.
pub async fn get_poll(
    http: &reqwest::Client,
    base: &str,
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> PollAnswer {
    let mut request = http
        .get(format!("{base}/poll"))
        .query(query)
        .timeout(Duration::from_secs(70));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => panic!("GET {base}/poll {query:?} failed: {e}"),
    };
    let status = response.status();
    let headers = response.headers().clone();
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => panic!("GET {base}/poll {query:?}: body failed: {e}"),
    };
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    PollAnswer {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    }
}

/// A long-poll client: one user's token, its channels and the cursor it carries.
#[derive(Debug, Clone)]
pub struct Poller {
    http: reqwest::Client,
    token: String,
    channels: Vec<String>,
    /// The cursor of the last answer; `None` before the first poll.
    pub cursor: Option<String>,
}

impl Poller {
    /// A poller for `channels` (each sent as `channel=`) with `token`.
    pub fn new(token: &str, channels: &[&str]) -> Self {
        Self {
            http: http_client(),
            token: token.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            cursor: None,
        }
    }

    /// Polls `base` (a public URL) with the current cursor (none on the first poll) and
    /// `timeout_ms`; a 200 answer's cursor becomes the current one.
    pub async fn poll(&mut self, base: &str, timeout_ms: u64) -> PollAnswer {
        let timeout = timeout_ms.to_string();
        let mut query: Vec<(&str, &str)> = vec![("token", &self.token)];
        for channel in &self.channels {
            query.push(("channel", channel));
        }
        if let Some(cursor) = &self.cursor {
            query.push(("cursor", cursor));
            query.push(("timeout_ms", &timeout));
        }
        let answer = get_poll(&self.http, base, &query, &[]).await;
        if answer.status == StatusCode::OK {
            self.cursor = Some(answer.cursor().to_owned());
        }
        answer
    }

    /// Polls and asserts a 200 answer; returns its frames.
    pub async fn poll_frames(&mut self, base: &str, timeout_ms: u64) -> Vec<Value> {
        let answer = self.poll(base, timeout_ms).await;
        answer.frames().to_vec()
    }
}

/// What a cursor holds: channel → `(offset, epoch)`. Panics if it is not a gateway cursor
/// (`1.` + base64url of a JSON map).
pub fn decode_cursor(cursor: &str) -> BTreeMap<String, (u64, String)> {
    let Some(body) = cursor.strip_prefix("1.") else {
        panic!("a cursor starts with \"1.\": {cursor:?}")
    };
    let json =
        base64url_decode(body).unwrap_or_else(|| panic!("a cursor is 1. + base64url: {cursor:?}"));
    serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "a cursor holds channel -> [offset, epoch] ({e}): {}",
            String::from_utf8_lossy(&json)
        )
    })
}

/// Decodes base64url without padding.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_parse_like_event_source() {
        let message = parse_message("id: 1.e30\ndata: {\"type\":\"x\"}\nretry: 2000").unwrap();
        assert_eq!(message.id.as_deref(), Some("1.e30"));
        assert_eq!(message.retry, Some(2000));
        assert_eq!(message.frame()["type"], "x");
        let ping = parse_message(": ping").unwrap();
        assert!(ping.is_comment());
        assert_eq!(ping.comments, vec!["ping".to_owned()]);
        assert_eq!(find_blank_line(b"a\n\nb"), Some((1, 2)));
        assert_eq!(find_blank_line(b"a\r\n\r\nb"), Some((1, 4)));
        assert_eq!(find_blank_line(b"a\nb\n"), None);
    }

    #[test]
    fn cursors_decode() {
        // {"jobs":[41,"e"]}
        let cursor = "1.eyJqb2JzIjpbNDEsImUiXX0";
        let positions = decode_cursor(cursor);
        assert_eq!(positions["jobs"], (41, "e".to_owned()));
        assert!(decode_cursor("1.e30").is_empty());
    }
}

//! Assertions on the shapes the contract promises: event frames, error frames, HTTP errors,
//! timestamps and metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;

use crate::client::{HandshakeFailure, TestClient, brief};

/// Asserts an event frame: `type` = `event`, `channel` = `channel` (absent when `None`, as for
/// client-type and broadcast events), an RFC 3339 `timestamp` close to now, and `data`.
pub fn assert_event(frame: &Value, event: &str, channel: Option<&str>, data: &Value) {
    assert_eq!(frame["type"], event, "event type in {}", brief(frame));
    match channel {
        Some(channel) => assert_eq!(frame["channel"], channel, "channel in {}", brief(frame)),
        None => assert!(
            frame.get("channel").is_none(),
            "expected no channel in {}",
            brief(frame)
        ),
    }
    assert_recent_rfc3339(&frame["timestamp"]);
    assert_eq!(&frame["data"], data, "data in {}", brief(frame));
}

/// Asserts an `error` frame with `code` and a human `message`; returns the message.
pub fn assert_error(frame: &Value, code: &str) -> String {
    assert_eq!(
        frame["type"],
        "error",
        "expected an error frame, got {}",
        brief(frame)
    );
    assert_eq!(frame["code"], code, "error code in {}", brief(frame));
    match frame["message"].as_str() {
        Some(message) => message.to_owned(),
        None => panic!("an error frame needs a message: {}", brief(frame)),
    }
}

/// Asserts an HTTP error reply `{"error":{"code":…,"message":…}}` with `expected` status;
/// returns the code.
pub fn assert_http_error(status: StatusCode, body: &Value, expected: StatusCode) -> String {
    assert_eq!(status, expected, "HTTP status; body {body}");
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str();
    match (code, message) {
        (Some(code), Some(_)) => code.to_owned(),
        _ => panic!("an HTTP error body is {{\"error\":{{\"code\":…,\"message\":…}}}}, got {body}"),
    }
}

/// Asserts that the upgrade was refused with `status` before the WebSocket opened, and, if
/// the body came along, that it is a JSON error.
pub fn assert_refused(
    result: Result<TestClient, HandshakeFailure>,
    status: u16,
) -> HandshakeFailure {
    let failure = match result {
        Ok(client) => panic!(
            "expected the upgrade to be refused with {status}, but it connected: {}",
            client.established()
        ),
        Err(failure) => failure,
    };
    assert_eq!(failure.status, status, "upgrade refused with {failure}");
    if !failure.body.trim().is_empty() {
        let body: Value = serde_json::from_str(&failure.body)
            .unwrap_or_else(|e| panic!("the {status} body is not JSON ({e}): {}", failure.body));
        assert!(
            body["error"]["code"].is_string(),
            "the {status} body is not {{\"error\":{{\"code\":…}}}}: {body}"
        );
    }
    failure
}

/// Parses an RFC 3339 timestamp and asserts that it is within a minute of now.
pub fn assert_recent_rfc3339(value: &Value) -> SystemTime {
    let at = parse_rfc3339(value);
    let now = SystemTime::now();
    let skew = now
        .duration_since(at)
        .or_else(|_| at.duration_since(now))
        .unwrap_or_default();
    assert!(
        skew < Duration::from_secs(60),
        "timestamp {value} is {skew:?} away from now"
    );
    at
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-22T10:00:00.000Z`).
pub fn parse_rfc3339(value: &Value) -> SystemTime {
    let Some(text) = value.as_str() else {
        panic!("expected an RFC 3339 timestamp string, got {value}")
    };
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not an RFC 3339 UTC timestamp: {e}"))
}

/// The accepted channels and the rejected ones with their codes, from a `subscribed` reply.
pub fn subscribe_outcome(reply: &Value) -> (Vec<String>, BTreeMap<String, String>) {
    let Some(accepted) = reply["channels"].as_array() else {
        panic!("subscribed needs a channels array: {reply}")
    };
    let Some(rejected) = reply["rejected"].as_array() else {
        panic!("subscribed needs a rejected array: {reply}")
    };
    let accepted = accepted
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_owned())
        .collect();
    let rejected = rejected
        .iter()
        .map(|r| {
            let channel = r["channel"].as_str().unwrap_or_default().to_owned();
            let code = r["code"].as_str().unwrap_or_default().to_owned();
            (channel, code)
        })
        .collect();
    (accepted, rejected)
}

/// The value of the first sample of `name` whose labels include all of `labels`, from
/// Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has_all = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if !has_all {
                return None;
            }
            value.trim().parse().ok()
        })
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_value_finds_labelled_samples() {
        let text = "# HELP gateway_disconnections_total x\n\
                    gateway_disconnections_total{code=\"1000\"} 3\n\
                    gateway_disconnections_total{code=\"4100\"} 1\n\
                    gateway_connections 2\n";
        assert_eq!(
            metric_value(text, "gateway_disconnections_total", &[("code", "4100")]),
            Some(1.0)
        );
        assert_eq!(metric_value(text, "gateway_connections", &[]), Some(2.0));
        assert_eq!(
            metric_value(text, "gateway_disconnections_total", &[("code", "4101")]),
            None
        );
    }
}

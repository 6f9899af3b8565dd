//! HTTP refusals: the JSON error body every HTTP error carries on both listeners, whichever
//! layer refuses the request.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// Longest plain-text rejection body kept as the message of its JSON error.
const REJECTION_MESSAGE_BYTES: usize = 1024;

/// An HTTP refusal, answered with [`http_error`]; small enough to return in a `Result`.
#[derive(Debug, Clone)]
pub(crate) struct HttpError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
}

impl HttpError {
    /// A refusal with `status`, an error `code` and a message for the caller's developer.
    pub(crate) fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        http_error(self.status, &self.code, &self.message)
    }
}

/// An HTTP error with the JSON body `{"error":{"code":…,"message":…}}`: the one shape of every
/// HTTP refusal, on both listeners.
pub(crate) fn http_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(error_body(code, message))).into_response()
}

/// The JSON error body `{"error":{"code":…,"message":…}}`, also one entry of a batch reply.
pub(crate) fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message}})
}

/// A whole HTTP/1.1 response carrying the JSON error body, for refusals written before HTTP
/// serving starts; the connection closes after it.
pub(crate) fn http_error_bytes(status: StatusCode, code: &str, message: &str) -> Bytes {
    let body = error_body(code, message).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    Bytes::from(head + &body)
}

/// The error `code` of an HTTP status that the router or an extractor answered by itself.
fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Gives every error response without a JSON body one: axum's own rejections (an unknown
/// route, a wrong method, a body over the limit, a body that is not JSON) are plain text.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REJECTION_MESSAGE_BYTES)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("request refused"),
        text => text,
    };
    let body = error_body(status_code_name(status), message).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn plain_text_rejections_get_the_json_error_body() {
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Failed to buffer the request body",
        )
            .into_response();
        let json = json_errors(plain).await;
        assert_eq!(json.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(json.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_of(json).await;
        assert_eq!(body["error"]["code"], "payload_too_large");
        assert_eq!(
            body["error"]["message"],
            "Failed to buffer the request body"
        );
        let empty = json_errors(StatusCode::NOT_FOUND.into_response()).await;
        assert_eq!(body_of(empty).await["error"]["code"], "not_found");
    }

    #[tokio::test]
    async fn json_errors_and_successes_pass_unchanged() {
        let ours = http_error(StatusCode::FORBIDDEN, "origin", "no");
        assert_eq!(
            body_of(json_errors(ours).await).await["error"]["code"],
            "origin"
        );
        let ok = json_errors("ok".into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(ok.into_body(), 16).await.unwrap();
        assert_eq!(&bytes[..], b"ok");
    }

    #[test]
    fn a_raw_response_is_complete_http() {
        let raw = http_error_bytes(StatusCode::URI_TOO_LONG, "uri_too_long", "long");
        let text = std::str::from_utf8(&raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "uri_too_long");
    }
}

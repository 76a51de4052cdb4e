//! The client API (HTTP + WebSocket, axum) of nodes and of the RC: what both routers share
//! (errors, body parsing, the status counter). The routes are in [`crate::node::api`] and
//! [`crate::rc::api`].
//!
//! | route | RC | node |
//! |---|---|---|
//! | `GET /health` | liveness, members | liveness, lease, free capacity |
//! | `GET /metrics` | Prometheus text | Prometheus text |
//! | `GET /status` | members, load, directory | — |
//! | `POST /sessions[?session_id=]` (manifest TOML or JSON) | admit + place → `{session_id, node, address, epoch}` | `moved` to the RC |
//! | `POST /admission/probe` (manifest) | the decision, nothing placed | — |
//! | `GET /sessions/{id}` | directory entry | session info (or `moved`) |
//! | `POST /sessions/{id}/inputs` `{seq, input}` | `moved` to the holder | the reply |
//! | `DELETE /sessions/{id}` | `moved` | close |
//! | `GET /sessions/{id}/ws` | `moved` | WebSocket: text frames `{seq, input}` → replies |
//!
//! Every error is JSON `{code, message, ...}` with a fitting status: malformed body 400, body over
//! the limit 413, unknown session 404, seq gap 409, overload 429, not serving / retry 503. A
//! session that lives elsewhere answers 307 with `{code: "moved", location}` (and a `Location`
//! header); the RC never proxies session traffic.

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opengrid_actors::SessionError;
use opengrid_session::{Manifest, SessionId};
use opentelemetry::KeyValue;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::metrics::Metrics;

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl ApiError {
    /// `{code, message}` with `status`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({"code": code, "message": message.into()}),
        }
    }

    /// Adds a field to the error body.
    pub(crate) fn with(mut self, key: &str, v: Value) -> Self {
        if let Value::Object(m) = &mut self.body {
            m.insert(key.to_string(), v);
        }
        self
    }

    /// A `moved` redirect: `location` is the holder's API base URL, the `Location` header the
    /// full URL of the same request there, on its `/v1` route (ADR 0035).
    pub fn moved(location: String, path: &str, epoch: u64) -> Self {
        let path = match path.strip_prefix(crate::common::v1::PREFIX) {
            Some(rest) if rest.starts_with('/') => path.to_string(),
            _ => format!("{}{path}", crate::common::v1::PREFIX),
        };
        ApiError::new(
            StatusCode::TEMPORARY_REDIRECT,
            "moved",
            format!("the session lives at {location}"),
        )
        .with("location", json!(location))
        .with("url", json!(format!("{location}{path}")))
        .with("epoch", json!(epoch))
    }
}

/// How loudly an error answer is logged: a server-side failure (5xx) is the operator's business
/// (`warn`); a client's mistake or a redirect (3xx/4xx) is the client's (`debug`), so a bad request
/// never fills an operator's log at ERROR.
pub(crate) fn log_level(status: StatusCode) -> tracing::Level {
    if status.is_server_error() {
        tracing::Level::WARN
    } else {
        tracing::Level::DEBUG
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.body.get("code").and_then(|c| c.as_str()).unwrap_or("");
        let message = self
            .body
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let status = self.status.as_u16();
        if log_level(self.status) == tracing::Level::WARN {
            tracing::warn!(status, code, message, "request failed");
        } else {
            tracing::debug!(status, code, message, "request refused");
        }
        let mut r = (self.status, Json(self.body.clone())).into_response();
        if self.status == StatusCode::TEMPORARY_REDIRECT {
            if let Some(loc) = self.body.get("url").and_then(|l| l.as_str()) {
                if let Ok(v) = loc.parse() {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
        }
        r
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, r.body_text())
    }
}

/// HTTP status of a session error.
pub fn session_error_status(e: &SessionError) -> StatusCode {
    match e {
        SessionError::Backpressure { .. } => StatusCode::TOO_MANY_REQUESTS,
        SessionError::SeqGap { .. }
        | SessionError::Fenced { .. }
        | SessionError::AlreadyExists { .. } => StatusCode::CONFLICT,
        SessionError::BadInput { .. } | SessionError::UnknownHandler { .. } => {
            StatusCode::BAD_REQUEST
        }
        SessionError::NotFound { .. } => StatusCode::NOT_FOUND,
        SessionError::Moved { .. } => StatusCode::TEMPORARY_REDIRECT,
        SessionError::Stopped { .. } | SessionError::Closed { .. } => StatusCode::GONE,
        SessionError::NotDurable { .. }
        | SessionError::TooFewCopies { .. }
        | SessionError::CheckpointsBehind { .. }
        | SessionError::HandlerPanicked { .. }
        | SessionError::Restarting { .. }
        | SessionError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        if let SessionError::Moved {
            session,
            location,
            epoch,
        } = &e
        {
            return ApiError::moved(location.clone(), &format!("/sessions/{session}"), epoch.0);
        }
        let status = session_error_status(&e);
        let mut body = serde_json::to_value(&e).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut body {
            m.insert("message".into(), json!(e.to_string()));
            m.insert("retryable".into(), json!(e.is_retryable()));
            m.entry("code").or_insert(json!("session_error"));
        }
        ApiError { status, body }
    }
}

pub(crate) fn parse_sid(s: &str) -> Result<SessionId, ApiError> {
    SessionId::new(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_session_id", e.to_string()))
}

/// Parses a manifest body: JSON when it starts with `{` or the content type says JSON, else TOML.
pub fn parse_manifest(headers: &HeaderMap, body: &[u8]) -> Result<Manifest, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_manifest",
            format!("body is not UTF-8: {e}"),
        )
    })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = ct.contains("json") || (!ct.contains("toml") && text.trim_start().starts_with('{'));
    let r = if json {
        Manifest::from_json_str(text)
    } else {
        Manifest::from_toml_str(text)
    };
    r.map_err(|e| {
        let fields = e.fields();
        ApiError::new(StatusCode::BAD_REQUEST, "bad_manifest", e.to_string())
            .with("fields", json!(fields))
    })
}

pub(crate) async fn count_status(
    State(m): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let r = next.run(req).await;
    m.api_requests.add(
        1,
        &[KeyValue::new("status", r.status().as_u16().to_string())],
    );
    r
}

pub(crate) fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route")
}

/// Body of `POST /sessions/{id}/handover` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct HandoverBody {
    /// Target node name or did; the RC picks one when absent.
    #[serde(default)]
    pub(crate) target: Option<String>,
}

pub(crate) fn handover_body(body: &[u8]) -> Result<HandoverBody, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(HandoverBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("handover body: {e}; expected {{\"target\": <node name or did>}} or nothing"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_and_redirects_are_not_logged_as_failures() {
        for s in [
            StatusCode::TEMPORARY_REDIRECT,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::CONFLICT,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert_eq!(log_level(s), tracing::Level::DEBUG, "{s}");
        }
        for s in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(log_level(s), tracing::Level::WARN, "{s}");
        }
    }

    #[test]
    fn an_error_answer_keeps_its_status_body_and_location() {
        let r = ApiError::moved("http://127.0.0.1:7700".into(), "/sessions/s1/inputs", 3)
            .into_response();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers().get(header::LOCATION).unwrap(),
            "http://127.0.0.1:7700/v1/sessions/s1/inputs"
        );
        // A path already versioned stays as it is.
        let r = ApiError::moved("http://h".into(), "/v1/sessions/s1", 3).into_response();
        assert_eq!(
            r.headers().get(header::LOCATION).unwrap(),
            "http://h/v1/sessions/s1"
        );
        let r = ApiError::new(StatusCode::BAD_REQUEST, "bad_json", "x").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}

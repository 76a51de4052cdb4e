//! The A2A 1.0 wire forms the gateway reads and writes (JSON-RPC binding, protobuf JSON names:
//! `TASK_STATE_*`, `ROLE_*`, camelCase fields): agent cards, messages, tasks, stream events,
//! errors.

use axum::http::StatusCode;
use serde_json::{json, Map, Value};

use super::catalog::Agent;
use super::mcp::text_of;

/// The A2A protocol version served.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The task state of a session waiting for its next input.
pub const INPUT_REQUIRED: &str = "TASK_STATE_INPUT_REQUIRED";
/// The task state while a turn runs (streams only).
pub const WORKING: &str = "TASK_STATE_WORKING";
/// The task state of a closed session.
pub const CANCELED: &str = "TASK_STATE_CANCELED";

/// A JSON-RPC error, with the HTTP status it is answered with.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// JSON-RPC / A2A error code.
    pub code: i64,
    /// Message.
    pub message: String,
    /// Extra data (`{"code": "forbidden"}`…).
    pub data: Option<Value>,
    /// HTTP status (200 but for refusals: 401, 403, 404).
    pub http: StatusCode,
}

impl RpcError {
    /// An error answered with HTTP 200.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
            http: StatusCode::OK,
        }
    }
    /// Invalid JSON.
    pub fn parse(m: impl Into<String>) -> Self {
        Self::new(-32700, m)
    }
    /// Not a valid JSON-RPC request.
    pub fn invalid_request(m: impl Into<String>) -> Self {
        Self::new(-32600, m)
    }
    /// Unknown method.
    pub fn method_not_found(m: &str) -> Self {
        Self::new(
            -32601,
            format!("method {m:?} is not served (A2A {PROTOCOL_VERSION} JSON-RPC)"),
        )
    }
    /// Bad params.
    pub fn invalid_params(m: impl Into<String>) -> Self {
        Self::new(-32602, m)
    }
    /// Internal error.
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(-32603, m)
    }
    /// A2A `TaskNotFoundError`.
    pub fn task_not_found(id: &str) -> Self {
        Self::new(-32001, format!("task {id} not found"))
    }
    /// A2A `UnsupportedOperationError`.
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(-32004, m)
    }
    /// A2A `VersionNotSupportedError`.
    pub fn version(v: &str) -> Self {
        Self::new(
            -32009,
            format!("A2A version {v:?} is not supported: {PROTOCOL_VERSION} only"),
        )
    }
    /// With `data` and HTTP status `http`.
    pub fn with(mut self, data: Value, http: StatusCode) -> Self {
        self.data = Some(data);
        self.http = http;
        self
    }
}

/// A JSON-RPC response carrying `result`.
pub fn ok(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC response carrying `e`.
pub fn err(id: &Value, e: &RpcError) -> Value {
    let mut error = json!({"code": e.code, "message": e.message});
    if let Some(d) = &e.data {
        error["data"] = d.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// Now, RFC 3339.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The agent card of `agent`, served under `base`.
pub fn card(agent: &Agent, base: &str, colony: &str) -> Value {
    let skills: Vec<Value> = agent
        .skills
        .iter()
        .map(|s| {
            json!({"id": s, "name": s, "tags": [s, "opengrid"],
                   "description": format!("{} ({s})", agent.description)})
        })
        .collect();
    json!({
        "name": agent.name,
        "description": agent.description,
        "version": agent.version,
        "supportedInterfaces": [{
            "url": format!("{base}/a2a/{}", agent.name),
            "protocolBinding": "JSONRPC",
            "protocolVersion": PROTOCOL_VERSION,
        }],
        "provider": {"organization": format!("OpenGrid colony {colony}"), "url": base},
        "capabilities": {"streaming": true, "pushNotifications": false},
        "securitySchemes": {
            "opengrid": {"httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "bearerFormat": "OpenGrid session capability or operator token",
                "description": "A message without a taskId needs none. Follow-up messages, \
                    GetTask and CancelTask need the task's capability (the first task's \
                    metadata.opengrid.capability) or an operator token."
            }}
        },
        "defaultInputModes": ["application/json", "text/plain"],
        "defaultOutputModes": ["application/json", "text/plain"],
        "skills": skills,
    })
}

/// A protobuf JSON number with no fraction as an integer (a `data` part is a
/// `google.protobuf.Value`: its numbers arrive as doubles, `5.0` for `5`).
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

/// A `SendMessage` request, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    /// The session input: the first data part, else the text (parsed as JSON when it is JSON).
    pub input: Value,
    /// The task the message continues.
    pub task_id: Option<String>,
    /// The client's context id.
    pub context_id: Option<String>,
    /// The message id.
    pub message_id: String,
}

fn opt_str(m: &Map<String, Value>, k: &str) -> Result<Option<String>, RpcError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RpcError::invalid_params(format!(
            "message.{k} must be a string"
        ))),
    }
}

/// Reads the params of `SendMessage` / `SendStreamingMessage`.
pub fn incoming(params: &Value) -> Result<Incoming, RpcError> {
    let m = params
        .get("message")
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::invalid_params("params.message (an object) is required"))?;
    let parts = m
        .get("parts")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| RpcError::invalid_params("message.parts must be a non-empty array"))?;
    let data = parts.iter().find_map(|p| p.get("data")).cloned();
    let input = match data {
        Some(d) => normalize(d),
        None => {
            let text: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text")?.as_str())
                .collect();
            if text.is_empty() {
                return Err(RpcError::invalid_params(
                    "message.parts has neither a data part nor a text part (files are not \
                     supported)",
                ));
            }
            let text = text.concat();
            serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
        }
    };
    Ok(Incoming {
        input,
        task_id: opt_str(m, "taskId")?,
        context_id: opt_str(m, "contextId")?,
        message_id: opt_str(m, "messageId")?.unwrap_or_default(),
    })
}

/// The artifact of a reply: the output as text and as data.
pub fn artifact(seq: u64, output: &Value) -> Value {
    json!({
        "artifactId": format!("reply-{seq}"),
        "name": "reply",
        "parts": [
            {"text": text_of(output), "mediaType": "text/plain"},
            {"data": output, "mediaType": "application/json"},
        ],
        "metadata": {"opengrid": {"seq": seq}},
    })
}

/// An agent message (`ROLE_AGENT`) with one text part.
pub fn agent_message(task: &str, context: &str, text: &str) -> Value {
    json!({
        "messageId": format!("{task}-{}", now()),
        "taskId": task,
        "contextId": context,
        "role": "ROLE_AGENT",
        "parts": [{"text": text}],
    })
}

/// A task status.
pub fn status(state: &str, message: Option<Value>) -> Value {
    let mut s = json!({"state": state, "timestamp": now()});
    if let Some(m) = message {
        s["message"] = m;
    }
    s
}

/// A task.
pub fn task(id: &str, context: &str, status: Value, artifacts: Vec<Value>, meta: Value) -> Value {
    json!({
        "id": id,
        "contextId": context,
        "status": status,
        "artifacts": artifacts,
        "metadata": {"opengrid": meta},
    })
}

/// A `TaskArtifactUpdateEvent` stream response.
pub fn artifact_update(
    task: &str,
    context: &str,
    artifact: Value,
    append: bool,
    last: bool,
) -> Value {
    json!({"artifactUpdate": {
        "taskId": task, "contextId": context, "artifact": artifact,
        "append": append, "lastChunk": last,
    }})
}

/// A `TaskStatusUpdateEvent` stream response.
pub fn status_update(task: &str, context: &str, status: Value, meta: Value) -> Value {
    json!({"statusUpdate": {
        "taskId": task, "contextId": context, "status": status,
        "metadata": {"opengrid": meta},
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_data_first_then_text() {
        let m = |parts: Value| json!({"message": {"messageId": "m1", "role": "ROLE_USER", "parts": parts}});
        let i = incoming(&m(
            json!([{"text": "hi"}, {"data": {"n": 5.0, "x": [1.5]}}]),
        ))
        .unwrap();
        assert_eq!(i.input, json!({"n": 5, "x": [1.5]}));
        assert_eq!(i.task_id, None);
        assert_eq!(
            incoming(&m(json!([{"text": "5"}]))).unwrap().input,
            json!(5)
        );
        assert_eq!(
            incoming(&m(json!([{"text": "hello"}]))).unwrap().input,
            json!("hello")
        );
        for bad in [
            json!({}),
            m(json!([])),
            m(json!([{"url": "x"}])),
            json!({"message": 3}),
        ] {
            assert_eq!(incoming(&bad).unwrap_err().code, -32602, "{bad}");
        }
        let mut t = m(json!([{"text": "1"}]));
        t["message"]["taskId"] = json!(7);
        assert!(incoming(&t).is_err());
    }

    #[test]
    fn cards_name_the_jsonrpc_interface() {
        let a = Agent {
            name: "counter".into(),
            description: "adds".into(),
            version: "1.0.0".into(),
            skills: vec!["counter".into()],
            source: super::super::catalog::Source::Handler,
            jurisdictions: vec!["DE".into()],
        };
        let c = card(&a, "http://h:1", "local");
        assert_eq!(c["supportedInterfaces"][0]["url"], "http://h:1/a2a/counter");
        assert_eq!(c["supportedInterfaces"][0]["protocolBinding"], "JSONRPC");
        assert_eq!(c["capabilities"]["streaming"], true);
        assert_eq!(c["skills"][0]["id"], "counter");
    }
}

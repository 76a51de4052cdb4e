//! The versioned client API (`/v1`, ADR 0035): the bodies its routes take and give. Its OpenAPI
//! 3.1 document is generated from these types and the `#[utoipa::path]` annotations on the RC's
//! and the nodes' handlers ([`crate::openapi`]).
//!
//! The unversioned routes of earlier releases answer as before (the same handlers); every
//! redirect (`307 moved`) names the `/v1` route.

use opengrid_actors::{Reply, SessionInfo, SessionStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The prefix of the versioned routes.
pub const PREFIX: &str = "/v1";

/// One input to a session (`POST /v1/sessions/{id}/inputs`, or a WebSocket text frame).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputRequest {
    /// The client's number of this input: 1 for the first, then one more each time. A seq already
    /// processed is a retry: it is answered with the first answer (`kind: duplicate`) while the
    /// session keeps it; a seq further ahead is refused (`409 seq_gap`).
    #[schema(minimum = 1)]
    pub seq: u64,
    /// The input, as the session's handler reads it.
    pub input: Value,
    /// Streamed inputs: the first chunk wanted (a resume after a cut; 0 for all).
    #[serde(default)]
    pub from: u64,
    /// WebSocket frames only: answer with chunk frames, then the reply.
    #[serde(default)]
    pub stream: bool,
}

/// What happened to an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// Processed now.
    Processed,
    /// A retry of an input processed before: its first answer, when still kept.
    Duplicate,
}

/// A handler's error for one input (the input was processed; the handler refused it).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HandlerErrorBody {
    /// Machine-readable code, e.g. `bad_input`.
    pub code: String,
    /// What is wrong.
    pub message: String,
}

/// The answer to an input.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InputReply {
    /// Processed now, or a retry.
    pub kind: ReplyKind,
    /// The input's seq.
    pub seq: u64,
    /// The handler's answer (absent when it gave an error, or for a retry whose answer is no
    /// longer kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The handler's error for this input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HandlerErrorBody>,
    /// Processed: whether the state including this input is durable as the manifest asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<bool>,
    /// Processed: copies of the covering checkpoint beyond the holder's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<u32>,
    /// Processed: why `durable` is false, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_durable: Option<String>,
    /// Duplicate: the newest seq processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    /// Duplicate: whether the first answer is given (`output`/`error`); false once the session
    /// no longer keeps it (it keeps its newest 32 answers, 64 KiB together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<bool>,
    /// The input was answered by relaying after a handover: the session's new holder (send the
    /// next input there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
    /// Streamed replies: how many chunks the stream had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Streamed replies: false when another node answered after a handover (resume there from
    /// the chunk reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    /// Streamed replies: the answer of a stream resumed after its input completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
}

impl From<Reply<Value>> for InputReply {
    fn from(r: Reply<Value>) -> Self {
        let base = |kind, seq: u64| InputReply {
            kind,
            seq,
            output: None,
            error: None,
            durable: None,
            copies: None,
            not_durable: None,
            last: None,
            retained: None,
            moved_to: None,
            chunks: None,
            complete: None,
            resumed: None,
        };
        let split = |r: Result<Value, opengrid_actors::HandlerError>| match r {
            Ok(v) => (Some(v), None),
            Err(e) => (
                None,
                Some(HandlerErrorBody {
                    code: e.code,
                    message: e.message,
                }),
            ),
        };
        match r {
            Reply::Processed {
                seq,
                output,
                durable,
                copies,
                not_durable,
            } => {
                let (output, error) = split(output);
                InputReply {
                    output,
                    error,
                    durable: Some(durable),
                    copies: Some(copies),
                    not_durable,
                    ..base(ReplyKind::Processed, seq.0)
                }
            }
            Reply::Duplicate {
                seq,
                last,
                original,
            } => {
                let retained = original.is_some();
                let (output, error) = original.map(split).unwrap_or((None, None));
                InputReply {
                    output,
                    error,
                    last: Some(last.0),
                    retained: Some(retained),
                    ..base(ReplyKind::Duplicate, seq.0)
                }
            }
        }
    }
}

/// One chunk of a streamed reply (SSE event `chunk`, id `seq:offset`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChunkEvent {
    /// `chunk` (WebSocket frames; an SSE event names its type in `event:` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The input's seq.
    pub seq: u64,
    /// The chunk's place in the stream, from 0.
    pub offset: u64,
    /// What the handler emitted.
    pub chunk: Value,
}

/// An error (every non-2xx answer; `307 moved` included).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `bad_json`, `bad_seq`, `seq_gap`, `unauthenticated`, `invalid_token`,
    /// `forbidden`, `not_found`, `moved`, `not_serving`, `arriving`, `unsatisfiable`, `quota`,
    /// `body_too_large`, ….
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// `moved`: the base URL of the node holding the session now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `moved`: the same request's URL there (also the `Location` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `moved`: the holder's epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Whether the same request may succeed later (503s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// `unsatisfiable`: why each node was not chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Vec<Value>>,
}

/// A session as its holder reports it (`GET /v1/sessions/{id}` on the node).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The session.
    pub session_id: String,
    /// Its handler.
    pub handler: String,
    /// The holder's epoch.
    pub epoch: u64,
    /// `running`, `frozen`, `moved`, `starting`, `hibernated`, `stopped` or `closed`.
    pub status: String,
    /// `moved`: the new holder's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `stopped`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The newest client seq processed.
    pub last_seq: u64,
    /// Usage so far (inputs, handler time, wire bytes, …).
    #[schema(value_type = Object)]
    pub usage: Value,
    /// The checkpoint policy in force.
    #[schema(value_type = Object)]
    pub policy: Value,
    /// Nodes keeping replica copies of its checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<String>>,
}

impl SessionView {
    /// The view of `info`, with the replica holders when the node keeps replicas.
    pub fn of(info: SessionInfo, replicas: Option<Vec<String>>) -> Self {
        let (status, location, reason) = match info.status {
            SessionStatus::Running => ("running", None, None),
            SessionStatus::Frozen => ("frozen", None, None),
            SessionStatus::Moved { location, .. } => ("moved", Some(location), None),
            SessionStatus::Starting => ("starting", None, None),
            SessionStatus::Hibernated => ("hibernated", None, None),
            SessionStatus::Stopped { reason } => ("stopped", None, Some(reason)),
            SessionStatus::Closed => ("closed", None, None),
        };
        SessionView {
            session_id: info.session_id.to_string(),
            handler: info.handler,
            epoch: info.epoch.0,
            status: status.into(),
            location,
            reason,
            last_seq: info.last_seq.0,
            usage: serde_json::to_value(info.usage).unwrap_or(Value::Null),
            policy: serde_json::to_value(info.policy).unwrap_or(Value::Null),
            replicas,
        }
    }
}

/// A closed session (`DELETE /v1/sessions/{id}`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Closed {
    /// The session.
    pub session_id: String,
    /// Always true.
    pub closed: bool,
}

/// A handover requested at the RC (`202`): the holder moves the session.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HandoverRequested {
    /// The session.
    pub session_id: String,
    /// The holder asked to move it.
    pub asked: String,
    /// `handover requested`.
    pub status: String,
}

/// The body of a handover request: where to (a node's name or id; the RC picks when absent).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HandoverRequest {
    /// The target node's name or id.
    #[serde(default)]
    pub target: Option<String>,
}

/// Any JSON object (operator views whose fields grow release by release).
#[derive(ToSchema)]
#[schema(value_type = Object)]
pub struct Report(#[allow(dead_code)] Value);

/// A session's manifest: what it runs and where it may run (JSON, or TOML with
/// `Content-Type: application/toml`; see `examples/manifests`).
#[derive(ToSchema)]
#[schema(value_type = Object, example = json!({
    "version": 1,
    "session": {"handler": "counter", "continuity": "interactive"},
    "placement": {"jurisdictions": ["DE"]},
    "migration": {"cost": "cheap", "acceptable_loss": "0s", "max_blackout": "200ms"}
}))]
pub struct ManifestBody(#[allow(dead_code)] Value);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_carries_its_first_answer_or_says_it_is_gone() {
        use opengrid_session::Seq;
        let kept: InputReply = Reply::Duplicate {
            seq: Seq(3),
            last: Seq(5),
            original: Some(Ok(serde_json::json!(7))),
        }
        .into();
        let v = serde_json::to_value(&kept).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "duplicate", "seq": 3, "last": 5, "retained": true, "output": 7})
        );
        let gone: InputReply = Reply::<Value>::Duplicate {
            seq: Seq(1),
            last: Seq(90),
            original: None,
        }
        .into();
        let v = serde_json::to_value(&gone).unwrap();
        assert_eq!(v["retained"], false);
        assert!(v.get("output").is_none());
    }
}

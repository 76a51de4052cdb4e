//! Streamed replies on the node's API (ADR 0033): a client input sent with
//! `Accept: text/event-stream` is answered as Server-Sent Events, one `chunk` event per chunk the
//! handler emits and a final `reply` event; `GET /sessions/{id}/inputs/{seq}/stream?from=K`
//! (or `Last-Event-ID: seq:offset`) resumes a stream from chunk `K`, on whichever node holds the
//! session now (a moved session answers 307 with its new holder). The WebSocket carries the same
//! frames (`{"seq","input","stream":true}`, `{"resume":seq,"from":K}`).
//!
//! Events: `chunk` with id `seq:offset` and data `{"seq","offset","chunk"}`; `reply` with the
//! usual reply (`{kind, seq, output|error, durable, copies}`) plus `chunks` (how many this
//! stream had) and `complete` (false when the input was answered by another node, after a
//! handover: resume there from the offset reached); `error` with an error body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use opengrid_actors::{DynSession, SessionStatus};
use opengrid_session::{Seq, SessionId};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::access::Bearer;
use crate::common::http::{parse_sid, ApiError};
use crate::node::NodeCore;

/// How long a stream waits for its next chunk before it sends a keep-alive and waits again.
const CHUNK_WAIT: Duration = Duration::from_secs(15);
/// How long a resumed stream of an input not handled yet waits for it to start.
pub const RESUME_WAIT: Duration = Duration::from_secs(30);

/// One frame of a streamed reply.
#[derive(Debug)]
pub(crate) enum Frame {
    Chunk {
        seq: u64,
        offset: u64,
        chunk: String,
    },
    Reply(Value),
    Error(Value),
}

impl Frame {
    /// The WebSocket text of the frame.
    pub(crate) fn ws_json(&self) -> Value {
        match self {
            Frame::Chunk { seq, offset, chunk } => {
                json!({"kind": "chunk", "seq": seq, "offset": offset, "chunk": chunk})
            }
            Frame::Reply(v) | Frame::Error(v) => v.clone(),
        }
    }

    fn sse(&self) -> Event {
        match self {
            Frame::Chunk { seq, offset, chunk } => Event::default()
                .event("chunk")
                .id(format!("{seq}:{offset}"))
                .data(json!({"seq": seq, "offset": offset, "chunk": chunk}).to_string()),
            Frame::Reply(v) => Event::default().event("reply").data(v.to_string()),
            Frame::Error(v) => Event::default().event("error").data(v.to_string()),
        }
    }
}

/// Whether a request asks for an event stream.
pub(crate) fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The error body of an `error` frame.
fn error_body(e: ApiError) -> Value {
    super::api::ws_error(e)
}

/// A moved session: 307 to its new holder.
fn moved_here(s: &dyn DynSession, path: &str) -> Result<(), ApiError> {
    if let SessionStatus::Moved { location, epoch } = s.status() {
        return Err(ApiError::moved(location, path, epoch.0));
    }
    Ok(())
}

/// Sends `chunks` of input `seq` as frames from offset `from` on (advanced); false when the
/// reader is gone.
async fn forward(
    out: &tokio::sync::mpsc::Sender<Frame>,
    seq: u64,
    from: &mut usize,
    chunks: Vec<String>,
) -> bool {
    for chunk in chunks {
        let offset = *from as u64;
        if out.send(Frame::Chunk { seq, offset, chunk }).await.is_err() {
            return false;
        }
        *from += 1;
    }
    true
}

/// Sends input `seq` and pumps its stream into `out` from chunk `from`, then the reply. `run`
/// answers the input (the node's usual path: relays included). Sending an input again is how a
/// client resumes its stream: a duplicate is answered with the chunks and the answer the stream
/// kept.
pub(crate) async fn pump_input<F>(
    s: Arc<dyn DynSession>,
    seq: u64,
    from: usize,
    run: F,
    out: tokio::sync::mpsc::Sender<Frame>,
) where
    F: std::future::Future<Output = Result<Value, ApiError>>,
{
    let mut run = std::pin::pin!(run);
    let mut reply: Option<Result<Value, ApiError>> = None;
    let mut from = from;
    let mut done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut run, if reply.is_none() => reply = Some(r),
            r = s.stream(Seq(seq), from, CHUNK_WAIT), if !done => {
                if let Some(r) = r {
                    if !forward(&out, seq, &mut from, r.chunks).await {
                        return;
                    }
                    done = r.done;
                }
            }
        }
        if let Some(r) = reply.take() {
            // Answered: what the stream holds here is complete (the reply follows the end of
            // the stream), unless another node answered (relayed after a handover).
            let mut answer = None;
            if let Some(rest) = s.stream(Seq(seq), from, Duration::ZERO).await {
                answer = rest.answer;
                if !forward(&out, seq, &mut from, rest.chunks).await {
                    return;
                }
                done = rest.done;
            }
            let frame = match r {
                Ok(mut v) => {
                    let relayed = v.get("moved_to").is_some();
                    if v.get("kind").and_then(Value::as_str) == Some("duplicate") {
                        // Handled before (this is a resume): the answer the stream kept.
                        if let (true, Some(Value::Object(a))) = (done, answer) {
                            v = json!({"kind": "processed", "seq": seq, "resumed": true});
                            for (k, x) in a {
                                v[k] = x;
                            }
                        }
                    }
                    if let Value::Object(m) = &mut v {
                        m.insert("chunks".into(), json!(from));
                        m.insert("complete".into(), json!(done && !relayed));
                    }
                    Frame::Reply(v)
                }
                Err(e) => Frame::Error(error_body(e)),
            };
            let _ = out.send(frame).await;
            return;
        }
    }
}

/// Pumps the stream of an input already sent (a resume) from chunk `from` into `out`.
pub(crate) async fn pump_resume(
    s: Arc<dyn DynSession>,
    seq: u64,
    mut from: usize,
    out: tokio::sync::mpsc::Sender<Frame>,
) {
    let started = tokio::time::Instant::now();
    loop {
        match s.stream(Seq(seq), from, CHUNK_WAIT).await {
            Some(r) => {
                if !forward(&out, seq, &mut from, r.chunks).await {
                    return;
                }
                if r.done {
                    let mut v = json!({"kind": "processed", "seq": seq, "chunks": from, "complete": true, "resumed": true});
                    if let Some(Value::Object(a)) = r.answer {
                        for (k, x) in a {
                            v[k] = x;
                        }
                    }
                    let _ = out.send(Frame::Reply(v)).await;
                    return;
                }
            }
            None => {
                let last = s.info().last_seq.0;
                let moved = matches!(s.status(), SessionStatus::Moved { .. });
                if moved || seq <= last || started.elapsed() >= RESUME_WAIT {
                    let e = if moved {
                        match s.status() {
                            SessionStatus::Moved { location, epoch } => ApiError::moved(
                                location,
                                &format!("/sessions/{}/inputs/{seq}/stream?from={from}", s.id()),
                                epoch.0,
                            ),
                            _ => unreachable_moved(),
                        }
                    } else if seq <= last {
                        ApiError::new(
                            axum::http::StatusCode::GONE,
                            "stream_gone",
                            format!("input {seq} was handled but its stream is no longer kept (the newest {} are)", opengrid_actors::record::MAX_STREAMS_KEPT),
                        )
                    } else {
                        ApiError::new(
                            axum::http::StatusCode::NOT_FOUND,
                            "stream_not_started",
                            format!("input {seq} has not been sent (send it with Accept: text/event-stream)"),
                        )
                    };
                    let _ = out.send(Frame::Error(error_body(e))).await;
                    return;
                }
            }
        }
    }
}

fn unreachable_moved() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "moving",
        "the session is moving; retry",
    )
}

/// An SSE response carrying the frames `fill` writes.
fn sse_of<Fut>(fill: impl FnOnce(tokio::sync::mpsc::Sender<Frame>) -> Fut) -> Response
where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(256);
    tokio::spawn(fill(tx));
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|f| (Ok(f.sse()), rx))
        }));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /sessions/{id}/inputs` with `Accept: text/event-stream`.
pub(crate) async fn input_stream(
    core: Arc<NodeCore>,
    sid: SessionId,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let seq = super::api::input_seq(&body)?;
    let from = stream_from(&body)?;
    let Some(s) = core.host.get(&sid) else {
        return Err(super::api::elsewhere(&core, &sid, &format!("/sessions/{sid}/inputs")).await);
    };
    super::api::check_serving(&core)?;
    moved_here(s.as_ref(), &format!("/sessions/{sid}/inputs"))?;
    Ok(sse_of(move |tx| async move {
        let run = {
            let core = core.clone();
            let sid = sid.clone();
            async move { super::api::run_input(&core, &sid, &body).await }
        };
        pump_input(s, seq, from, run, tx).await
    }))
}

/// The optional `"from"` of a streamed input's body: the first chunk the client wants.
pub(crate) fn stream_from(body: &[u8]) -> Result<usize, ApiError> {
    #[derive(Deserialize)]
    struct From {
        #[serde(default)]
        from: u64,
    }
    let f: From = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "bad_json",
            format!("input body: {e}"),
        )
    })?;
    usize::try_from(f.from)
        .ok()
        .filter(|f| *f <= opengrid_actors::stream::MAX_CHUNKS)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_offset",
                format!(
                    "from={} is past the most chunks a reply has ({})",
                    f.from,
                    opengrid_actors::stream::MAX_CHUNKS
                ),
            )
        })
}

#[derive(Deserialize)]
pub(crate) struct ResumeQuery {
    #[serde(default)]
    from: Option<u64>,
}

/// `GET /v1/sessions/{id}/inputs/{seq}/stream?from=K` (or `Last-Event-ID: seq:offset`: from the
/// chunk after it).
#[utoipa::path(get, path = "/v1/sessions/{id}/inputs/{seq}/stream", tag = "sessions",
    params(
        ("id" = String, Path, description = "The session id"),
        ("seq" = u64, Path, description = "The input's seq"),
        ("from" = Option<u64>, Query, description = "The first chunk wanted (default 0, or after `Last-Event-ID`)"),
    ),
    responses(
        (status = 200, description = "SSE: `chunk` events from `from`, then the `reply`", content(
            (crate::common::v1::ChunkEvent = "text/event-stream"),
        )),
        (status = 307, description = "Another node holds the session", body = crate::common::v1::ErrorBody),
        (status = 404, description = "No such session, or no stream kept for this seq", body = crate::common::v1::ErrorBody),
    ),
    security(("capability" = [])))]
pub(crate) async fn node_stream(
    State(core): State<Arc<NodeCore>>,
    Path((id, seq)): Path<(String, u64)>,
    Query(q): Query<ResumeQuery>,
    headers: HeaderMap,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
    let from = match q.from {
        Some(f) => f,
        None => headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(':'))
            .filter(|(s, _)| s.parse::<u64>().ok() == Some(seq))
            .and_then(|(_, o)| o.parse::<u64>().ok())
            .map(|o| o + 1)
            .unwrap_or(0),
    };
    let from = usize::try_from(from)
        .ok()
        .filter(|f| *f <= opengrid_actors::stream::MAX_CHUNKS)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_offset",
                format!(
                    "from={from} is past the most chunks a reply has ({})",
                    opengrid_actors::stream::MAX_CHUNKS
                ),
            )
        })?;
    let path = format!("/sessions/{sid}/inputs/{seq}/stream?from={from}");
    let Some(s) = core.host.get(&sid) else {
        return Err(super::api::elsewhere(&core, &sid, &path).await);
    };
    super::api::check_serving(&core)?;
    moved_here(s.as_ref(), &path)?;
    Ok(sse_of(move |tx| pump_resume(s, seq, from, tx)))
}

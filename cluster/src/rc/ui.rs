//! The colony dashboard at `/ui`: the page and its assets (embedded, [`crate::common::ui`]), the
//! live event stream (`GET /ui/events`, server-sent events from [`crate::rc::events`]) and the
//! ledger view (`GET /ui/ledger`). The page reads `/status` and `/health` like any client.
//!
//! The dashboard is read-only: it shows the colony and offers no actions (drain and handover stay
//! with `opengrid drain` and the API). Its data (`/status`, `/ui/events`, `/ui/ledger`) needs an
//! operator token (ADR 0026): the page asks for one (`opengrid token operator`), keeps it in the
//! tab's session storage, and sends it as a bearer header (`?access_token=` for the event stream,
//! which a browser cannot give headers).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::common::access::Bearer;
use crate::common::http::ApiError;
use crate::common::ui::asset;
use crate::rc::events::{Stamped, Subscription};
use crate::rc::RcCore;

/// Events a freshly loaded page gets from before it connected.
const INITIAL_BACKLOG: usize = 100;
/// Bound on each ledger call of `/ui/ledger`.
const LEDGER_WITHIN: Duration = Duration::from_millis(1500);

/// The dashboard routes, merged into the RC's router.
pub fn routes() -> Router<Arc<RcCore>> {
    Router::new()
        .route("/ui", get(|| async { asset("rc.html") }))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/events", get(events))
        .route("/ui/ledger", get(ledger))
        .route("/ui/{file}", get(file))
}

async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        // Pages are served at /ui only; the other assets by name.
        "rc.html" | "node.html" => StatusCode::NOT_FOUND.into_response(),
        n => asset(n),
    }
}

async fn ledger(State(core): State<Arc<RcCore>>, bearer: Bearer) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /ui/ledger")?;
    Ok(Json(match core.settlement() {
        Some(s) => s.ledger_view(LEDGER_WITHIN).await,
        None => json!({"enabled": false}),
    }))
}

fn sse_event(e: &Stamped) -> Event {
    Event::default()
        .id(e.id.to_string())
        .json_data(e)
        .unwrap_or_else(|_| Event::default().event("resync").data("{}"))
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}

struct Stream {
    backlog: VecDeque<Arc<Stamped>>,
    gap: bool,
    sub: Subscription,
    closed: tokio::sync::watch::Receiver<bool>,
}

/// `GET /ui/events`: server-sent events, resuming after `Last-Event-ID` when the browser
/// reconnects; `resync` when events were missed (reload `/status`).
async fn events(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    core.access.operator(&bearer, "GET /ui/events")?;
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_last_event_id",
                        "header Last-Event-ID: must be an event id (a decimal number)",
                    )
                })?,
        ),
    };
    let sub = core.events.subscribe(after, INITIAL_BACKLOG).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            e.to_string(),
        )
        .with("retryable", json!(true))
    })?;
    let state = Stream {
        backlog: sub.backlog.iter().cloned().collect(),
        gap: sub.gap,
        sub,
        closed: core.events.closed(),
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if std::mem::take(&mut st.gap) {
            return Some((Ok::<_, Infallible>(resync()), st));
        }
        if let Some(e) = st.backlog.pop_front() {
            return Some((Ok(sse_event(&e)), st));
        }
        if *st.closed.borrow() {
            return None;
        }
        let next = tokio::select! {
            r = st.sub.live.recv() => match r {
                Ok(e) => Some(sse_event(&e)),
                Err(RecvError::Lagged(_)) => Some(resync()),
                Err(RecvError::Closed) => None,
            },
            _ = st.closed.wait_for(|c| *c) => None,
        };
        next.map(|ev| (Ok::<_, Infallible>(ev), st))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

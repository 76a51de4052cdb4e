//! The colony's agents as MCP tools (`/mcp`, Streamable HTTP, rmcp's server; ADR 0036).
//!
//! - `tools/list`: one tool per agent; `inputSchema` `{input: any JSON, session?: string}`.
//! - `tools/call`: one input of a session. Without `session`, the MCP session's own OpenGrid
//!   session of that tool (created on the first call, kept in this MCP session's state; its
//!   capability is in the first result); with `session`, that existing session, when the HTTP
//!   request carries its capability (or an operator token) as `Authorization: Bearer`. The
//!   result is the output as text plus `structuredContent` `{output, session, seq}`; a handler
//!   error is `isError: true`. With a `progressToken`, the reply is streamed and each chunk is a
//!   `notifications/progress` (`progress` = chunks so far, `message` = the chunk).
//! - `resources/list` / `resources/read`: `opengrid://sessions/{id}`, the info of this MCP
//!   session's OpenGrid sessions (or of any session the bearer opens).
//!
//! One [`Agents`] handler lives per MCP session (rmcp's session manager creates it at
//! `initialize` and drops it when the session ends). Under the stateless protocol revision
//! there is no MCP session: each call without `session` starts a new OpenGrid session.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::request::Parts;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use super::{Gateway, GatewayError, Shared, Turn};
use crate::common::access::Bearer;

/// The URI scheme and prefix of session resources.
pub const RESOURCE_PREFIX: &str = "opengrid://sessions/";

/// The `/mcp` service: rmcp's Streamable HTTP server with an in-memory session manager.
pub fn service(gw: Arc<Gateway>) -> StreamableHttpService<Agents, LocalSessionManager> {
    let cfg = &gw.core.cfg;
    let limit = cfg.max_body.0.min(usize::MAX as u64) as usize;
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(cfg.gateway.allowed_hosts.clone())
        .with_max_request_body_bytes(limit);
    StreamableHttpService::new(
        move || Ok(Agents::new(gw.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// The OpenGrid sessions of one MCP session.
#[derive(Default)]
struct Sessions {
    /// Tool → the session its calls without `session` go to.
    by_tool: BTreeMap<String, Shared>,
    /// Every session this MCP session used, by id.
    all: BTreeMap<String, Shared>,
}

/// The MCP server of one MCP session.
pub struct Agents {
    gw: Arc<Gateway>,
    sessions: tokio::sync::Mutex<Sessions>,
}

impl Agents {
    fn new(gw: Arc<Gateway>) -> Self {
        Agents {
            gw,
            sessions: Default::default(),
        }
    }
}

/// The bearer token and the quota owner (client address; `None` for an operator) of a request.
fn caller(gw: &Gateway, ctx: &RequestContext<RoleServer>) -> (Bearer, Option<String>) {
    let parts = ctx.extensions.get::<Parts>();
    let token = parts
        .and_then(|p| p.headers.get(axum::http::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let bearer = Bearer(token);
    let owner = match gw.core.access.is_operator(&bearer) {
        true => None,
        false => Some(
            parts
                .and_then(|p| {
                    p.extensions
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                })
                .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string()),
        ),
    };
    (bearer, owner)
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

/// The schema of every tool's arguments.
fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "input": {"description": "The session input (any JSON the agent accepts)."},
            "session": {
                "type": "string",
                "description": "An existing session to send to (needs its capability as the HTTP bearer token); default: this MCP session's own session of the tool."
            }
        },
        "required": ["input"]
    })
}

/// A refusal or a bad request as a JSON-RPC error; anything else is the tool's error result.
fn failure(e: GatewayError) -> Result<CallToolResponse, ErrorData> {
    match e {
        GatewayError::UnknownAgent(_) | GatewayError::UnknownSession(_) => {
            Err(ErrorData::invalid_params(e.to_string(), None))
        }
        GatewayError::Refused {
            ref code, status, ..
        } => Err(ErrorData::invalid_request(
            e.to_string(),
            Some(json!({"code": code, "status": status})),
        )),
        other => {
            tracing::warn!(error = %other, "MCP tool call failed");
            from_json::<CallToolResult>(json!({
                "content": [{"type": "text", "text": other.to_string()}],
                "structuredContent": {"error": other.to_string()},
                "isError": true,
            }))
            .map(CallToolResponse::from)
        }
    }
}

/// Text of an output: a string as is, anything else as compact JSON.
pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn result(
    session: &str,
    turn: &Turn,
    capability: Option<&str>,
) -> Result<CallToolResult, ErrorData> {
    let mut structured = json!({"session": session, "seq": turn.seq});
    if let Some(c) = capability {
        structured["capability"] = json!(c);
    }
    let v = match &turn.outcome {
        Ok(out) => {
            structured["output"] = out.clone();
            json!({"content": [{"type": "text", "text": text_of(out)}],
                   "structuredContent": structured, "isError": false})
        }
        Err(msg) => {
            structured["error"] = json!(msg);
            json!({"content": [{"type": "text", "text": msg}],
                   "structuredContent": structured, "isError": true})
        }
    };
    from_json(v)
}

/// The validated arguments of a call.
struct Args {
    input: Value,
    session: Option<String>,
}

fn args(arguments: Option<Map<String, Value>>) -> Result<Args, ErrorData> {
    let mut a = arguments.unwrap_or_default();
    if let Some(k) = a.keys().find(|k| *k != "input" && *k != "session") {
        return Err(ErrorData::invalid_params(
            format!("unknown argument {k:?}: expected {{input, session?}}"),
            None,
        ));
    }
    let input = a
        .remove("input")
        .ok_or_else(|| ErrorData::invalid_params("missing argument \"input\"", None))?;
    let session = match a.remove("session") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            return Err(ErrorData::invalid_params(
                format!("argument \"session\" must be a string, not {other}"),
                None,
            ))
        }
    };
    Ok(Args { input, session })
}

impl Agents {
    /// The conversation a call goes to, and the capability when it was just created.
    async fn conversation(
        &self,
        tool: &str,
        session: Option<&str>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Shared, Option<String>), GatewayError> {
        let (bearer, owner) = caller(&self.gw, ctx);
        let mut mine = self.sessions.lock().await;
        if let Some(sid) = session {
            let conv = match mine.all.get(sid) {
                // This MCP session's own: it was created here, no credential needed again.
                Some(c) => c.clone(),
                None => self.gw.resume(sid, &bearer).await?,
            };
            let agent = conv.lock().await.agent.clone();
            if agent != tool {
                return Err(GatewayError::Refused {
                    status: 400,
                    code: "wrong_tool".into(),
                    message: format!("session {sid} is a session of {agent:?}, not {tool:?}"),
                });
            }
            mine.all.insert(sid.to_string(), conv.clone());
            return Ok((conv, None));
        }
        if let Some(c) = mine.by_tool.get(tool) {
            return Ok((c.clone(), None));
        }
        // Created under the lock: concurrent first calls share one session.
        let (conv, cap) = self.gw.open(tool, owner).await?;
        let id = conv.lock().await.id().to_string();
        mine.by_tool.insert(tool.to_string(), conv.clone());
        mine.all.insert(id, conv.clone());
        Ok((conv, cap))
    }
}

impl ServerHandler for Agents {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("opengrid", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Each tool is an agent of this OpenGrid colony; each call is one input of a stateful \
             session (one per tool and MCP session). Resources opengrid://sessions/{id} are the \
             sessions' info.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = input_schema();
        let tools: Vec<Value> = self
            .gw
            .agents()
            .into_values()
            .map(|a| json!({"name": a.name, "description": a.description, "inputSchema": schema}))
            .collect();
        from_json(json!({ "tools": tools }))
    }

    #[tracing::instrument(skip_all, fields(tool = %request.name))]
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tool = request.name.to_string();
        let a = args(request.arguments)?;
        if !self.gw.agents().contains_key(&tool) && a.session.is_none() {
            return failure(GatewayError::UnknownAgent(tool));
        }
        let (conv, capability) = match self.conversation(&tool, a.session.as_deref(), &ctx).await {
            Ok(c) => c,
            Err(e) => return failure(e),
        };
        let sid = conv.lock().await.id().to_string();
        let token = ctx.meta.get_progress_token();
        let turn = match token {
            None => self.gw.turn(conv, a.input, None).await,
            Some(token) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let peer = ctx.peer.clone();
                let forward = async move {
                    let mut n = 0u64;
                    while let Some(chunk) = rx.recv().await {
                        n += 1;
                        let p = ProgressNotificationParam::new(token.clone(), n as f64)
                            .with_message(chunk);
                        if let Err(e) = peer.notify_progress(p).await {
                            tracing::debug!(error = %e, "progress notification not sent");
                        }
                    }
                };
                let (turn, ()) = tokio::join!(self.gw.turn(conv, a.input, Some(tx)), forward);
                turn
            }
        };
        match turn {
            Ok(t) => result(&sid, &t, capability.as_deref()).map(CallToolResponse::from),
            Err(e) => failure(e),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mine = self.sessions.lock().await;
        let mut resources = Vec::new();
        for (id, conv) in &mine.all {
            let agent = conv.lock().await.agent.clone();
            resources.push(json!({
                "uri": format!("{RESOURCE_PREFIX}{id}"),
                "name": format!("{agent}-{id}"),
                "description": format!("The OpenGrid session {id} of the {agent} agent: its info."),
                "mimeType": "application/json",
            }));
        }
        from_json(json!({ "resources": resources }))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let id = uri.strip_prefix(RESOURCE_PREFIX).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("{uri}: not an {RESOURCE_PREFIX}{{id}} URI"),
                None,
            )
        })?;
        let known = self.sessions.lock().await.all.get(id).cloned();
        let conv = match known {
            Some(c) => c,
            None => {
                let (bearer, _) = caller(&self.gw, &ctx);
                self.gw.resume(id, &bearer).await.map_err(|e| match e {
                    GatewayError::Refused { .. } | GatewayError::UnknownSession(_) => {
                        ErrorData::resource_not_found(format!("{uri}: {e}"), None)
                    }
                    other => ErrorData::internal_error(other.to_string(), None),
                })?
            }
        };
        let info = self
            .gw
            .info(&conv)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let r: ReadResourceResult = from_json(json!({
            "contents": [{"uri": uri, "mimeType": "application/json", "text": info.to_string()}]
        }))?;
        Ok(ReadResourceResponse::from(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        let ok = |v: Value| args(v.as_object().cloned());
        let a = ok(json!({"input": 5})).unwrap();
        assert_eq!((a.input, a.session), (json!(5), None));
        let a = ok(json!({"input": {"x": 1}, "session": "s1"})).unwrap();
        assert_eq!(a.session.as_deref(), Some("s1"));
        assert!(ok(json!({})).is_err());
        assert!(ok(json!({"input": 1, "session": 3})).is_err());
        assert!(ok(json!({"input": 1, "extra": true})).is_err());
        assert!(args(None).is_err());
    }

    #[test]
    fn results_carry_output_session_and_seq() {
        let t = Turn {
            seq: 2,
            outcome: Ok(json!({"total": 3})),
        };
        let r = serde_json::to_value(result("s1", &t, None).unwrap()).unwrap();
        assert_eq!(
            r["structuredContent"],
            json!({"output": {"total": 3}, "session": "s1", "seq": 2})
        );
        assert_eq!(r["content"][0]["text"], "{\"total\":3}");
        let t = Turn {
            seq: 3,
            outcome: Err("bad_input: no".into()),
        };
        let r = serde_json::to_value(result("s1", &t, Some("cap")).unwrap()).unwrap();
        assert_eq!(r["isError"], true);
        assert_eq!(r["structuredContent"]["capability"], "cap");
    }
}

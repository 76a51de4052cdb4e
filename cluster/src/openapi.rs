//! The `/v1` client API's OpenAPI 3.1 document (ADR 0035), generated from the request and
//! response types ([`crate::common::v1`]) and the `#[utoipa::path]` annotations on the RC's and
//! the nodes' handlers. Served at `GET /v1/openapi.json` by the RC and every node, printed by
//! `opengrid openapi`, and committed as `docs/openapi.json`, which a test compares with the
//! generated one (a drift fails the build). It sits above `rc/` and `node/`: it names both.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::common::v1::*;

/// Where the committed copy of the document lives, relative to the repository root.
pub const COMMITTED: &str = "docs/openapi.json";

/// `GET /v1/sessions/{id}`: at the holder the session ([`SessionView`]); at the RC its directory
/// entry (where it lives).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum SessionLookup {
    /// At the holder.
    Session(SessionView),
    /// At the RC.
    Entry(crate::rc::DirEntry),
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "capability",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A session's capability (returned when it is created) opens that session; \
                         an operator token opens everything (ADR 0026). Where a client cannot set \
                         headers, the `access_token` query parameter carries it.",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "operator",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An operator token (`opengrid token operator`)."))
                    .build(),
            ),
        );
    }
}

/// The `/v1` API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenGrid client API",
        version = "1",
        description = "Create sessions at the RC; send inputs to the node holding each session \
            (the RC and any node that no longer holds it answer `307 moved` with the holder's \
            URL). The client numbers each session's inputs (`seq` 1, 2, …); a retried seq is \
            answered with its first answer. See README \"Clients\".",
    ),
    paths(
        crate::rc::api::rc_create,
        crate::rc::api::rc_health,
        crate::node::api::node_info,
        crate::node::api::node_close,
        crate::node::api::node_input,
        crate::node::streaming::node_stream,
        crate::node::api::node_ws,
        crate::node::api::node_handover,
        openapi_json,
    ),
    components(schemas(
        InputRequest, InputReply, ReplyKind, HandlerErrorBody, ChunkEvent, ErrorBody, SessionView,
        Closed, HandoverRequested, HandoverRequest, Report, ManifestBody, SessionLookup,
        crate::rc::Placement, crate::rc::DirEntry, crate::rc::DirState,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "sessions", description = "Create, locate, use and close sessions."),
        (name = "operators", description = "Routes for the colony's operators."),
        (name = "meta", description = "Health and this document."),
    )
)]
pub struct ApiDoc;

/// The document as served and committed (pretty JSON, a final newline).
pub fn openapi_json_text() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of the /v1 API", content_type = "application/json")))]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_the_input_route() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json_text()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert!(doc["paths"]["/v1/sessions/{id}/inputs"]["post"].is_object());
        assert!(doc["components"]["schemas"]["InputReply"].is_object());
    }
}

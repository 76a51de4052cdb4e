//! The node's [`Egress`]: sends a session's `ctx.fetch` requests (ADR 0032) to the hosts its
//! manifest declares (`[egress] hosts`), nowhere else. The manifest is the one the node holds for
//! the session (from its start order, or sent by the RC after a handover activated it here; an
//! input right after an activation waits up to [`MANIFEST_WAIT`] for it). Redirects are not
//! followed (a redirect could leave the allowed hosts); answers are bounded by
//! [`opengrid_actors::effects::MAX_EFFECT_RESULT_BYTES`].

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use opengrid_actors::egress::EgressFuture;
use opengrid_actors::{Egress, HttpRequest, HttpResponse};
use opengrid_session::{Manifest, SessionId};

use crate::node::NodeCore;

/// Longest a fetch waits for the session's manifest to reach the node after a handover.
pub const MANIFEST_WAIT: Duration = Duration::from_secs(3);

/// The node's outbound HTTP for sessions.
pub struct NodeEgress {
    http: reqwest::Client,
    core: OnceLock<Weak<NodeCore>>,
}

impl NodeEgress {
    /// A client with `timeout` per request.
    pub fn new(timeout: Duration) -> Result<NodeEgress, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(NodeEgress {
            http,
            core: OnceLock::new(),
        })
    }

    /// Attaches the node (its manifests), once.
    pub(crate) fn attach(&self, core: Weak<NodeCore>) {
        let _ = self.core.set(core);
    }

    async fn manifest(&self, session: &SessionId) -> Result<Manifest, String> {
        let deadline = tokio::time::Instant::now() + MANIFEST_WAIT;
        loop {
            let core = self
                .core
                .get()
                .and_then(Weak::upgrade)
                .ok_or("the node is stopping")?;
            // Registered before the check, so an arrival in between is not missed.
            let arrived = core.manifest_arrived.notified();
            if let Some(text) = core.manifest_of(session) {
                return Manifest::from_json_str(&text).map_err(|e| e.to_string());
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(format!(
                    "this node does not know session {session}'s manifest (its [egress] hosts)"
                ));
            }
        }
    }

    async fn send_checked(
        &self,
        session: &SessionId,
        req: HttpRequest,
    ) -> Result<HttpResponse, String> {
        let url = reqwest::Url::parse(&req.url).map_err(|e| format!("url {:?}: {e}", req.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: only http and https", req.url));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("url {:?} has no host", req.url))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let m = self.manifest(session).await?;
        if !m.egress.allows(host, port) {
            return Err(format!(
                "{host}:{port} is not among session {session}'s [egress] hosts {:?}",
                m.egress.hosts
            ));
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| format!("method {:?}", req.method))?;
        let mut r = self.http.request(method, url);
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        let mut resp = r.body(req.body).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let limit = opengrid_actors::effects::MAX_EFFECT_RESULT_BYTES - 64 * 1024;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > limit {
                return Err(format!("the answer is over {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

impl Egress for NodeEgress {
    fn send<'a>(&'a self, session: &'a SessionId, req: HttpRequest) -> EgressFuture<'a> {
        Box::pin(async move {
            let r = self.send_checked(session, req).await;
            if let Err(e) = &r {
                tracing::info!(%session, error = %e, "fetch refused or failed");
            }
            r
        })
    }
}

//! `[gateway]` of the RC config: the MCP and A2A protocol gateway (ADR 0036).

use serde::{Deserialize, Serialize};

/// `[gateway]`: the colony's agents over MCP (`/mcp`) and A2A (`/a2a/{agent}`), on the RC's
/// client API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Serve `/mcp`, `/a2a/…` and the agent cards (default on).
    pub enabled: bool,
    /// The agent whose card is served at the root `/.well-known/agent-card.json`; empty: the
    /// first agent by name.
    pub default_agent: String,
    /// The base URL agent cards advertise (e.g. `https://grid.example.com`); empty: the request's
    /// `Host`, else the RC's bound client-API address.
    pub public_url: String,
    /// `Host` values `/mcp` accepts (DNS-rebinding protection, hostnames or `host:port`); empty:
    /// any host.
    pub allowed_hosts: Vec<String>,
    /// `[egress] hosts` of the sessions the gateway creates (agents whose turns call out, e.g.
    /// a model endpoint); empty: none.
    pub egress_hosts: Vec<String>,
    /// Conversations (gateway-driven sessions) kept in memory at most; beyond it idle ones are
    /// forgotten (a later message re-attaches them from the session's info).
    pub max_conversations: usize,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            enabled: true,
            default_agent: String::new(),
            public_url: String::new(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            egress_hosts: Vec::new(),
            max_conversations: 100_000,
        }
    }
}

impl GatewaySection {
    /// Checks the section; `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.default_agent.is_empty()
            && !opengrid_session::manifest::is_ident(&self.default_agent)
        {
            return Err((
                "gateway.default_agent",
                format!("{:?} is not an agent name", self.default_agent),
            ));
        }
        let u = &self.public_url;
        if !(u.is_empty() || u.starts_with("http://") || u.starts_with("https://")) {
            return Err((
                "gateway.public_url",
                format!("{:?} must start with http:// or https://", self.public_url),
            ));
        }
        if self.egress_hosts.len() > 64 {
            return Err(("gateway.egress_hosts", "at most 64 hosts".into()));
        }
        if self.max_conversations == 0 {
            return Err(("gateway.max_conversations", "must be at least 1".into()));
        }
        Ok(())
    }
}

//! What the gateway serves: the colony's agents, and the manifest a session of one is created
//! with.

use std::collections::BTreeMap;

use opengrid_session::Manifest;
use serde_json::json;

use crate::common::spec::WASM_HANDLER;
use crate::rc::{lock, RcCore};

/// Where an agent comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A handler compiled into nodes (named in an alive member's `NodeSpec.handlers`).
    Handler,
    /// A pushed agent package of the RC's registry (ADR 0030), by its latest version.
    Registry,
}

/// One agent of the colony, as the gateway shows it (an MCP tool, an A2A agent card).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Name: the handler id, or the registry agent's name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Version: the registry's latest, or the RC's build version for a handler.
    pub version: String,
    /// Skills (the registry's; a handler has one, its own name).
    pub skills: Vec<String>,
    /// Where it comes from.
    pub source: Source,
    /// Jurisdictions of the alive nodes that can run it (its sessions' `placement.jurisdictions`).
    pub jurisdictions: Vec<String>,
}

/// The colony's agents by name: every handler served by an alive member (not the internal
/// `wasm` runner of packages), then every registry agent with a version not retired. A name in
/// both is the compiled-in handler (what a manifest naming `handler` gets).
pub fn agents(core: &RcCore) -> BTreeMap<String, Agent> {
    let mut out = BTreeMap::new();
    // (handler, jurisdiction) of every alive member.
    let served: Vec<(String, String)> = {
        let st = lock(&core.state);
        st.colony
            .nodes()
            .into_iter()
            .filter(|n| n.alive && st.members.get(&n.spec.id).is_some_and(|m| m.alive))
            .flat_map(|n| {
                n.spec
                    .handlers
                    .iter()
                    .map(|h| (h.clone(), n.spec.jurisdiction.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let where_ = |handler: &str| {
        let mut j: Vec<String> = served
            .iter()
            .filter(|(h, _)| h == handler)
            .map(|(_, j)| j.clone())
            .collect();
        j.sort();
        j.dedup();
        j
    };
    for (h, _) in &served {
        if h == WASM_HANDLER || h.contains(':') || h.contains('@') || out.contains_key(h) {
            continue;
        }
        out.insert(h.clone(), Agent {
            description: format!("The `{h}` agent of this OpenGrid colony (a compiled-in handler): each call is one input of a stateful session."),
            version: env!("CARGO_PKG_VERSION").to_string(),
            skills: vec![h.clone()],
            source: Source::Handler,
            jurisdictions: where_(h),
            name: h.clone(),
        });
    }
    let packages = where_(WASM_HANDLER);
    if let Some(reg) = core.agents() {
        for (name, latest) in reg.list() {
            let Some(v) = latest else { continue };
            if out.contains_key(&name) {
                tracing::debug!(agent = %name, "registry agent shadowed by a compiled-in handler of the same name");
                continue;
            }
            let description = if v.description.is_empty() {
                format!(
                    "The `{name}` agent of this OpenGrid colony (version {}).",
                    v.version
                )
            } else {
                v.description.clone()
            };
            out.insert(
                name.clone(),
                Agent {
                    description,
                    version: v.version.clone(),
                    skills: if v.skills.is_empty() {
                        vec![name.clone()]
                    } else {
                        v.skills.clone()
                    },
                    source: Source::Registry,
                    jurisdictions: packages.clone(),
                    name,
                },
            );
        }
    }
    out
}

/// The manifest a gateway session of `agent` is created with: interactive, cheap to move, zero
/// loss (every turn durable on the colony's replicas before it is answered, so a failover
/// restores the conversation), `egress` hosts allowed.
pub fn manifest(agent: &Agent, egress: &[String]) -> Result<Manifest, String> {
    let mut session = json!({"continuity": "interactive"});
    match agent.source {
        Source::Handler => session["handler"] = json!(agent.name),
        Source::Registry => session["agent"] = json!(agent.name),
    }
    let mut m = json!({
        "version": 1,
        "session": session,
        "placement": {"jurisdictions": agent.jurisdictions},
        "migration": {"cost": "cheap", "acceptable_loss": "0s", "max_blackout": "200ms"},
    });
    if !egress.is_empty() {
        m["egress"] = json!({"hosts": egress});
    }
    Manifest::from_json_str(&m.to_string()).map_err(|e| e.to_string())
}

/// The agent name of a directory entry's handler (`counter`, or `name@version` for a package).
pub fn agent_of(handler: &str) -> &str {
    handler.split('@').next().unwrap_or(handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(name: &str, source: Source) -> Agent {
        Agent {
            name: name.into(),
            description: String::new(),
            version: "1".into(),
            skills: vec![],
            source,
            jurisdictions: vec!["DE".into()],
        }
    }

    #[test]
    fn manifests_name_a_handler_or_an_agent_and_validate() {
        let m = manifest(&agent("counter", Source::Handler), &[]).unwrap();
        assert_eq!(m.session.handler, "counter");
        assert!(m.migration.acceptable_loss.is_zero());
        let m = manifest(&agent("echo", Source::Registry), &["127.0.0.1:9".into()]).unwrap();
        assert_eq!(m.session.agent.as_deref(), Some("echo"));
        assert!(m.egress.allows("127.0.0.1", 9));
        assert_eq!(agent_of("echo@0.1.0"), "echo");
        assert_eq!(agent_of("counter"), "counter");
    }
}

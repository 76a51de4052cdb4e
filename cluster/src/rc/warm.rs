//! Keeping pushed agents warm ahead of demand (ADR 0031).
//!
//! A node is **warm** for an agent package when it holds the package (it reported the hash in
//! [`ToRc::Blobs`](crate::common::wire::ToRc::Blobs)); its nodes load what they fetch, so a warm
//! node starts a session of the agent without a fetch or a compile.
//!
//! - **Placement prefers warm nodes** ([`Colony::admit_preferring`](crate::rc::admission::Colony::admit_preferring)).
//! - **Pre-positioning**: the RC keeps `max(scaling.warm_nodes, ⌈scaling.spike_factor × nodes
//!   hosting the agent's sessions⌉)` nodes warm, capped by the nodes that pass the manifest's
//!   placement filters (jurisdictions, accelerator, memory…). It checks after each push (with the
//!   package's default manifest) and after each placement of one of the agent's sessions, and
//!   orders the missing copies with [`ToNode::Prefetch`](crate::common::wire::ToNode::Prefetch)
//!   onto the best-scoring eligible nodes that are not warm. An order counts as a copy for
//!   [`ORDER_GRACE`] (the node fetches, loads and reports); a node that did not report by then
//!   may be ordered again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opengrid_session::Manifest;

use crate::common::identity::NodeId;
use crate::rc::admission::Requirements;
use crate::rc::{RcCore, RcState};

/// How long a prefetch order counts as a warm copy before the node reports it.
pub const ORDER_GRACE: Duration = Duration::from_secs(60);

/// Prefetch orders not yet confirmed by a report: package hash → node → when ordered.
#[derive(Default)]
pub struct Warming(Mutex<HashMap<String, HashMap<NodeId, Instant>>>);

/// Alive members that reported holding `hash`.
pub(crate) fn holders(st: &RcState, hash: Option<&str>) -> Vec<NodeId> {
    let Some(hash) = hash else {
        return Vec::new();
    };
    st.members
        .iter()
        .filter(|(_, m)| m.alive && m.blobs.contains(hash))
        .map(|(id, _)| *id)
        .collect()
}

/// How many warm nodes an agent needs: `warm_nodes`, or `spike_factor` × the nodes hosting it.
pub fn wanted(warm_nodes: u32, spike_factor: f64, hosting: usize) -> usize {
    let by_demand = (spike_factor.clamp(1.0, 100.0) * hosting as f64).ceil() as usize;
    by_demand.max(warm_nodes as usize)
}

impl RcCore {
    /// Orders `m`'s agent package onto as many more nodes as its `[scaling]` and the observed
    /// demand ask for (see the module docs); nothing for a compiled-in handler.
    pub fn keep_warm(&self, m: &Manifest) -> Vec<NodeId> {
        let Some(hash) = m.session.package.clone() else {
            return Vec::new();
        };
        let req = Requirements::from_manifest(m);
        let targets = {
            let st = crate::rc::lock(&self.state);
            let mut warm = holders(&st, Some(&hash));
            let hosting = st
                .colony
                .nodes()
                .iter()
                .filter(|r| r.alive && r.warm.contains(&m.session.handler))
                .count();
            let want = wanted(m.scaling.warm_nodes, m.scaling.spike_factor, hosting);
            let mut w = self.warming.0.lock().unwrap_or_else(|p| p.into_inner());
            let orders = w.entry(hash.clone()).or_default();
            orders.retain(|id, at| at.elapsed() < ORDER_GRACE && !warm.contains(id));
            warm.extend(orders.keys().copied());
            let need = want.saturating_sub(warm.len());
            if need == 0 {
                return Vec::new();
            }
            let targets = st.colony.best_nodes(&req, need, &warm);
            let now = Instant::now();
            for t in &targets {
                orders.insert(*t, now);
            }
            targets
        };
        if !targets.is_empty() {
            tracing::info!(agent = %m.session.handler, %hash, nodes = targets.len(), "pre-positioning agent package");
            self.prefetch(m, &targets);
        }
        targets
    }

    /// After a push: keeps the new version warm as its package's default manifest asks (its
    /// `[scaling]` and `[placement]`; the rest of a session's manifest plays no part in where
    /// copies go). A default manifest whose sections do not validate is logged and skipped (the
    /// push itself stands).
    pub fn keep_warm_pushed(
        &self,
        handler: &str,
        hash: &str,
        default_manifest: &serde_json::Value,
    ) {
        match pushed_manifest(handler, hash, default_manifest) {
            Ok(m) => {
                self.keep_warm(&m);
            }
            Err(e) => {
                tracing::warn!(%handler, error = %e, "the package's default [placement]/[scaling] do not validate: not pre-positioned")
            }
        }
    }
}

/// The manifest pre-positioning reads for a pushed package: its default manifest's
/// `[placement]` and `[scaling]` on a minimal session of the agent.
pub fn pushed_manifest(
    handler: &str,
    hash: &str,
    default_manifest: &serde_json::Value,
) -> Result<Manifest, opengrid_session::ManifestError> {
    {
        let mut v = serde_json::json!({
            "version": 1,
            "session": {
                "handler": handler,
                "agent": handler,
                "package": hash,
                "continuity": "interactive",
            },
            "migration": {"cost": "never-live", "acceptable_loss": "0s"},
        });
        for section in ["placement", "scaling"] {
            if let Some(t) = default_manifest.get(section) {
                v[section] = t.clone();
            }
        }
        // No [placement]: any jurisdiction (the manifest format wants one listed; admission
        // reads an empty list as anywhere).
        let anywhere = default_manifest.get("placement").is_none();
        if anywhere {
            v["placement"] = serde_json::json!({"jurisdictions": ["EU"]});
        }
        let mut m = Manifest::from_json_str(&v.to_string())?;
        if anywhere {
            m.placement.jurisdictions.clear();
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_follows_scaling_and_demand() {
        assert_eq!(wanted(0, 1.0, 0), 0);
        assert_eq!(wanted(3, 1.0, 0), 3, "warm_nodes before any session");
        assert_eq!(
            wanted(1, 2.0, 3),
            6,
            "spike factor times the nodes hosting it"
        );
        assert_eq!(wanted(1, 1.5, 1), 2, "rounded up");
        assert_eq!(wanted(0, 1e9, 1), 100, "the factor is clamped");
    }

    #[test]
    fn a_pushed_package_default_manifest_gives_placement_and_scaling() {
        let h = "ab".repeat(32);
        let m = pushed_manifest("a@0.1.0", &h, &serde_json::json!({})).unwrap();
        assert_eq!(
            (m.scaling.warm_nodes, m.session.package.as_deref()),
            (0, Some(h.as_str()))
        );
        assert!(m.placement.jurisdictions.is_empty(), "anywhere");
        let d = serde_json::json!({
            "scaling": {"warm_nodes": 2, "spike_factor": 3.0},
            "placement": {"jurisdictions": ["DE"]},
            "session": {"idle_timeout": "bogus"},
        });
        let m = pushed_manifest("a@0.1.0", &h, &d).unwrap();
        assert_eq!(m.scaling.warm_nodes, 2);
        assert_eq!(m.placement.jurisdictions, vec!["DE".to_string()]);
        for bad in [
            serde_json::json!({"scaling": {"warm_nodes": 5000}}),
            serde_json::json!({"scaling": {"spike_factor": 0.5}}),
            serde_json::json!({"placement": {"jurisdictions": ["XX"]}}),
        ] {
            assert!(pushed_manifest("a@0.1.0", &h, &bad).is_err(), "{bad}");
        }
    }
}

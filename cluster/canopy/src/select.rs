//! Cross-colony candidate selection: when local admission cannot satisfy a manifest, which remote
//! colonies (from the peering table) could, in which jurisdictions, best first. Pure and
//! deterministic; nothing here waits for the network. The RC then asks the first candidate's RC
//! directly (RC-to-RC admission over the cluster's authenticated channel) and falls through the
//! list on refusal.
//!
//! Per colony, in order (sovereignty first, so a refusal names the strongest reason):
//! 1. **jurisdiction**: the colony's jurisdictions that satisfy the manifest's allowed list;
//! 2. **treaty**: of those, the ones the treaties allow routing into from the local zone for the
//!    data class;
//! 3. **hardware**: a class at least as capable as required with a free slot and a node with enough
//!    free memory;
//! 4. **handler** and **capabilities** with free slots.
//!
//! Summaries are aggregates, so a candidate is a colony that *may* admit; its RC decides.
//! Candidates are sorted by load, then lowest price, then colony id, then RC did.

use std::fmt;

use opengrid_session::{jurisdiction, AcceleratorClass, Manifest};
use serde::Serialize;

use crate::table::PeerEntry;
use crate::treaty::{Refusal, Treaties};

/// A remote colony that may serve the session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// The colony's peering entry: remote RC control address, client API and did are in
    /// `entry.summary`.
    pub entry: PeerEntry,
    /// The colony's jurisdictions the session may be placed in (manifest ∩ treaties): the remote
    /// admission request must be narrowed to these.
    pub zones: Vec<String>,
}

/// Why one colony is not a candidate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum ColonyReason {
    /// None of its jurisdictions is allowed by the manifest.
    Jurisdiction {
        /// What the colony serves.
        serves: Vec<String>,
        /// What the manifest allows.
        allowed: Vec<String>,
    },
    /// Its allowed jurisdictions are all across a border the treaties close (one refusal per
    /// jurisdiction).
    Treaty {
        /// The refusals.
        refusals: Vec<Refusal>,
    },
    /// No free slot on hardware of the required class with enough memory on one node.
    Hardware {
        /// Class required.
        accelerator: AcceleratorClass,
        /// Memory required on one node, bytes.
        memory: u64,
    },
    /// The handler has no free slot there.
    Handler {
        /// Handler id.
        handler: String,
    },
    /// A required capability has no free slot there.
    Capability {
        /// The missing capability.
        missing: String,
    },
}

/// One colony's refusal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ColonyRefusal {
    /// Colony id.
    pub colony_id: String,
    /// Why.
    pub reason: ColonyReason,
}

/// No remote colony can take the session; every colony's reason is listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NoCandidate {
    /// Handler of the session.
    pub handler: String,
    /// Per-colony reasons (empty when the peering table is empty).
    pub colonies: Vec<ColonyRefusal>,
}

impl NoCandidate {
    /// Treaties that closed a border to a colony which otherwise satisfied the manifest's
    /// jurisdictions, deduplicated, in order of appearance.
    pub fn blocking_treaties(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.colonies {
            if let ColonyReason::Treaty { refusals } = &c.reason {
                for r in refusals {
                    if let Some(t) = r.treaty() {
                        if !out.iter().any(|x| x == t) {
                            out.push(t.to_string());
                        }
                    }
                }
            }
        }
        out
    }
}

impl fmt::Display for NoCandidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.colonies.is_empty() {
            return write!(
                f,
                "no remote colony can serve handler {:?}: the peering table is empty",
                self.handler
            );
        }
        write!(f, "no remote colony can serve handler {:?}:", self.handler)?;
        for (i, c) in self.colonies.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}colony {:?}: ", c.colony_id)?;
            match &c.reason {
                ColonyReason::Jurisdiction { serves, allowed } => {
                    write!(f, "serves {serves:?}, the manifest allows only {allowed:?}")?
                }
                ColonyReason::Treaty { refusals } => {
                    let parts: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
                    write!(f, "{}", parts.join(", "))?
                }
                ColonyReason::Hardware {
                    accelerator,
                    memory,
                } => write!(
                    f,
                    "no free {accelerator} slot with {memory} bytes free on one node"
                )?,
                ColonyReason::Handler { handler } => {
                    write!(f, "no free slot for handler {handler:?}")?
                }
                ColonyReason::Capability { missing } => {
                    write!(f, "no free slot with capability {missing:?}")?
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for NoCandidate {}

/// Remote colonies in `table` that may serve `manifest`, best first; or why none can.
///
/// `local_zone` is the jurisdiction the session originates in (the local colony's), used as the
/// `from` side of every treaty check; `data_class` is the class of the session's data.
pub fn candidates(
    table: &[PeerEntry],
    manifest: &Manifest,
    local_zone: &str,
    treaties: &Treaties,
    data_class: &str,
) -> Result<Vec<Candidate>, NoCandidate> {
    let mut found = Vec::new();
    let mut refused = Vec::new();
    for entry in table {
        match check(entry, manifest, local_zone, treaties, data_class) {
            Ok(zones) => found.push(Candidate {
                entry: entry.clone(),
                zones,
            }),
            Err(reason) => refused.push(ColonyRefusal {
                colony_id: entry.summary.colony_id.clone(),
                reason,
            }),
        }
    }
    if found.is_empty() {
        refused.sort_by(|a, b| a.colony_id.cmp(&b.colony_id));
        return Err(NoCandidate {
            handler: manifest.required_handler().to_string(),
            colonies: refused,
        });
    }
    found.sort_by(|a, b| {
        let (x, y) = (&a.entry.summary, &b.entry.summary);
        (
            x.load_permille,
            x.price.min_micros_per_input,
            &x.colony_id,
            &x.rc_did,
        )
            .cmp(&(
                y.load_permille,
                y.price.min_micros_per_input,
                &y.colony_id,
                &y.rc_did,
            ))
    });
    Ok(found)
}

fn check(
    entry: &PeerEntry,
    manifest: &Manifest,
    local_zone: &str,
    treaties: &Treaties,
    data_class: &str,
) -> Result<Vec<String>, ColonyReason> {
    let s = &entry.summary;
    let p = &manifest.placement;
    let allowed: Vec<&String> = s
        .jurisdictions
        .iter()
        .filter(|j| p.jurisdictions.is_empty() || jurisdiction::satisfies(j, &p.jurisdictions))
        .collect();
    if allowed.is_empty() {
        return Err(ColonyReason::Jurisdiction {
            serves: s.jurisdictions.clone(),
            allowed: p.jurisdictions.clone(),
        });
    }
    let mut zones = Vec::new();
    let mut refusals = Vec::new();
    for j in allowed {
        match treaties.may_route(local_zone, j, data_class) {
            Ok(()) => zones.push(j.clone()),
            Err(r) => refusals.push(r),
        }
    }
    if zones.is_empty() {
        return Err(ColonyReason::Treaty { refusals });
    }
    let memory = p.memory.0;
    let hardware_ok = s.hardware.iter().any(|(class, cap)| {
        *class >= p.accelerator && cap.free_slots > 0 && cap.max_node_free_memory_bytes >= memory
    });
    if !hardware_ok {
        return Err(ColonyReason::Hardware {
            accelerator: p.accelerator,
            memory,
        });
    }
    let handler = manifest.required_handler();
    if s.handlers.get(handler).copied().unwrap_or(0) == 0 {
        return Err(ColonyReason::Handler {
            handler: handler.to_string(),
        });
    }
    if let Some(missing) = p.capabilities.iter().find(|c| {
        *c != handler
            && s.capabilities.get(*c).copied().unwrap_or(0) == 0
            && s.handlers.get(*c).copied().unwrap_or(0) == 0
    }) {
        return Err(ColonyReason::Capability {
            missing: missing.clone(),
        });
    }
    Ok(zones)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::summary::tests::{key, sample};
    use crate::summary::HardwareCapacity;
    use crate::treaty::{FederationTreaty, RefusalReason};

    fn entry(seed: u8, colony: &str, zones: &[&str], load: u16, price: u64) -> PeerEntry {
        let mut s = sample(seed, 1);
        s.colony_id = colony.into();
        s.jurisdictions = zones.iter().map(|z| z.to_string()).collect();
        s.load_permille = load;
        s.price.min_micros_per_input = price;
        s.price.max_micros_per_input = price + 10;
        let signed = s.sign(&key(seed));
        PeerEntry {
            summary: signed.summary,
            signature: signed.signature,
            age_ms: 0,
            expires_in_ms: 90_000,
        }
    }

    fn manifest(zones: &[&str], extra: &str) -> Manifest {
        let z: Vec<String> = zones.iter().map(|z| format!("{z:?}")).collect();
        Manifest::from_toml_str(&format!(
            r#"
version = 1
[session]
handler = "tutor"
continuity = "interactive"
[placement]
jurisdictions = [{}]
{extra}
[migration]
cost = "cheap"
acceptable_loss = "0s"
max_blackout = "50ms"
"#,
            z.join(", ")
        ))
        .unwrap()
    }

    fn de_us_treaty(route: bool) -> Treaties {
        Treaties::new(vec![FederationTreaty {
            name: "de-us-personal".into(),
            from_zone: "DE".into(),
            to_zone: "US".into(),
            route,
            replicate: false,
            data_classes: vec!["personal".into()],
        }])
        .unwrap()
    }

    #[test]
    fn sorted_by_load_then_price_then_id() {
        let table = vec![
            entry(1, "c", &["DE"], 500, 5),
            entry(2, "b", &["FR"], 200, 9),
            entry(3, "a", &["DE"], 200, 9),
            entry(4, "d", &["AT"], 200, 3),
        ];
        let m = manifest(&["EU"], "");
        let eu = Treaties::new(vec![FederationTreaty {
            name: "eu".into(),
            from_zone: "EU".into(),
            to_zone: "EU".into(),
            route: true,
            replicate: true,
            data_classes: vec!["*".into()],
        }])
        .unwrap();
        let got: Vec<String> = candidates(&table, &m, "DE", &eu, "personal")
            .unwrap()
            .into_iter()
            .map(|c| c.entry.summary.colony_id)
            .collect();
        assert_eq!(got, ["d", "a", "b", "c"]);
    }

    #[test]
    fn jurisdiction_and_treaty_filters_narrow_zones() {
        // A colony spanning DE and US; the session allows both but only DE is reachable by treaty.
        let table = vec![entry(1, "atlantic", &["DE", "US"], 100, 1)];
        let m = manifest(&["DE", "US"], "");
        let c = candidates(&table, &m, "DE", &de_us_treaty(false), "personal").unwrap();
        assert_eq!(c[0].zones, ["DE"]);
        let c = candidates(&table, &m, "DE", &de_us_treaty(true), "personal").unwrap();
        assert_eq!(c[0].zones, ["DE", "US"]);
    }

    #[test]
    fn forbidden_border_is_named_even_when_it_is_the_only_capacity() {
        // The only colony with free capacity is across the DE -> US border.
        let mut full = entry(1, "de-full", &["DE"], 1000, 1);
        full.summary
            .hardware
            .values_mut()
            .for_each(|h| h.free_slots = 0);
        let table = vec![full, entry(2, "us-east", &["US"], 50, 1)];
        let m = manifest(&["DE", "US"], "");
        let err = candidates(&table, &m, "DE", &de_us_treaty(false), "personal").unwrap_err();
        assert_eq!(err.blocking_treaties(), ["de-us-personal"]);
        let text = err.to_string();
        assert!(
            text.contains("forbidden by treaty \"de-us-personal\""),
            "{text}"
        );
        assert!(
            text.contains("colony \"de-full\": no free none slot"),
            "{text}"
        );
        // With the treaty allowing it, the US colony is the candidate.
        let ok = candidates(&table, &m, "DE", &de_us_treaty(true), "personal").unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].entry.summary.colony_id, "us-east");
        assert_eq!(ok[0].entry.summary.rc_control_addr, "127.0.0.1:7701");
        // Another data class has no treaty at all: refused as uncovered.
        let err = candidates(&table, &m, "DE", &de_us_treaty(true), "health").unwrap_err();
        match &err.colonies[1].reason {
            ColonyReason::Treaty { refusals } => assert_eq!(
                refusals[0].reason,
                RefusalReason::DataClassNotCovered {
                    treaties: vec!["de-us-personal".into()]
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn manifest_jurisdictions_are_never_widened() {
        let table = vec![entry(1, "us", &["US"], 0, 0)];
        let m = manifest(&["DE"], "");
        let err = candidates(&table, &m, "US", &Treaties::none(), "public").unwrap_err();
        assert!(matches!(
            err.colonies[0].reason,
            ColonyReason::Jurisdiction { .. }
        ));
        assert!(err.blocking_treaties().is_empty());
        let empty = candidates(&[], &m, "US", &Treaties::none(), "public").unwrap_err();
        assert!(empty.to_string().contains("peering table is empty"));
    }

    #[test]
    fn hardware_handler_and_capabilities() {
        let mut e = entry(1, "de", &["DE"], 0, 0);
        e.summary.hardware = BTreeMap::from([(
            AcceleratorClass::GpuLarge,
            HardwareCapacity {
                free_slots: 1,
                free_memory_bytes: 80 << 30,
                max_node_free_memory_bytes: 80 << 30,
            },
        )]);
        e.summary.capabilities =
            BTreeMap::from([("vision".to_string(), 1), ("tts".to_string(), 0)]);
        let table = vec![e];
        let none = Treaties::none();
        // A more capable class satisfies a less demanding manifest.
        let m = manifest(&["DE"], "accelerator = \"gpu-small\"\nmemory = \"1GiB\"");
        candidates(&table, &m, "DE", &none, "x").unwrap();
        let m = manifest(&["DE"], "memory = \"100GiB\"");
        assert!(matches!(
            candidates(&table, &m, "DE", &none, "x")
                .unwrap_err()
                .colonies[0]
                .reason,
            ColonyReason::Hardware { .. }
        ));
        let m = manifest(&["DE"], "capabilities = [\"vision\", \"tutor\"]");
        candidates(&table, &m, "DE", &none, "x").unwrap();
        let m = manifest(&["DE"], "capabilities = [\"tts\"]");
        assert_eq!(
            candidates(&table, &m, "DE", &none, "x")
                .unwrap_err()
                .colonies[0]
                .reason,
            ColonyReason::Capability {
                missing: "tts".into()
            }
        );
        let mut other = table.clone();
        other[0].summary.handlers.clear();
        let m = manifest(&["DE"], "");
        assert_eq!(
            candidates(&other, &m, "DE", &none, "x")
                .unwrap_err()
                .colonies[0]
                .reason,
            ColonyReason::Handler {
                handler: "tutor".into()
            }
        );
    }
}

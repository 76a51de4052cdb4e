//! What this RC publishes on the canopy ([`colony_summary`] from the live admission table) and the
//! pure rule checkpoint replica placement consults ([`may_hold_replica`]).

use std::collections::{BTreeMap, BTreeSet};

use opengrid_canopy::{ColonySummary, HardwareCapacity, PriceRange, Refusal, Treaties};
use opengrid_session::{jurisdiction, Did};
use serde::Serialize;

use crate::rc::admission::Colony;

/// Why a node may not hold a checkpoint replica of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplicaRefusal {
    /// The holder's jurisdiction is not one the manifest allows.
    #[error("jurisdiction {holder} is not in the manifest's allowed {allowed:?}")]
    Jurisdiction {
        /// The holder's jurisdiction.
        holder: String,
        /// The manifest's allowed jurisdictions.
        allowed: Vec<String>,
    },
    /// A treaty forbids (or none allows) replicating into the holder's jurisdiction.
    #[error("{0}")]
    Treaty(Refusal),
}

/// May a node in `holder_jurisdiction` hold a checkpoint replica of a session whose manifest
/// allows `allowed` (empty = anywhere), whose primary runs in `from_zone`, for data of
/// `data_class`? Both the manifest and the treaties must allow it (the manifest is never widened;
/// within one jurisdiction no treaty is needed). Pure: no I/O, no clock.
pub fn may_hold_replica(
    allowed: &[String],
    from_zone: &str,
    treaties: &Treaties,
    data_class: &str,
    holder_jurisdiction: &str,
) -> Result<(), ReplicaRefusal> {
    if !allowed.is_empty() && !jurisdiction::satisfies(holder_jurisdiction, allowed) {
        return Err(ReplicaRefusal::Jurisdiction {
            holder: holder_jurisdiction.to_string(),
            allowed: allowed.to_vec(),
        });
    }
    treaties
        .may_replicate(from_zone, holder_jurisdiction, data_class)
        .map_err(ReplicaRefusal::Treaty)
}

// ---------------------------------------------------------------------------------------------
// Summary from the admission table

/// What a colony summary says about the RC itself.
#[derive(Clone, Debug)]
pub struct SummaryHeader {
    /// Colony id.
    pub colony_id: String,
    /// Region label.
    pub region: String,
    /// Jurisdiction declared while no node is alive.
    pub zone: String,
    /// The RC's did.
    pub rc_did: Did,
    /// Client-API base URL.
    pub rc_client_api: String,
    /// Where other RCs send admission requests (`host:port` of the RC API).
    pub rc_control_addr: String,
}

/// The colony's summary from the RC's live admission table: free slots, free memory and largest
/// free memory on one node by accelerator class; free slots by handler and capability; load;
/// price range; jurisdictions of alive nodes. `seq` and `issued_at_ms` are left for the canopy.
pub fn colony_summary(h: &SummaryHeader, colony: &Colony) -> ColonySummary {
    use opengrid_canopy::summary::{MAX_JURISDICTIONS, MAX_MAP_ENTRIES};
    let mut hardware: BTreeMap<_, HardwareCapacity> = BTreeMap::new();
    let mut handlers: BTreeMap<String, u32> = BTreeMap::new();
    let mut capabilities: BTreeMap<String, u32> = BTreeMap::new();
    let mut jurisdictions = BTreeSet::new();
    let (mut sessions, mut capacity) = (0u64, 0u64);
    let mut price: Option<(u64, u64)> = None;
    for r in colony.nodes().into_iter().filter(|r| r.alive) {
        let s = &r.spec;
        if jurisdiction::is_known(&s.jurisdiction) {
            jurisdictions.insert(s.jurisdiction.clone());
        }
        sessions += u64::from(r.sessions.min(s.capacity));
        capacity += u64::from(s.capacity);
        price = Some(match price {
            None => (s.price_micros_per_input, s.price_micros_per_input),
            Some((lo, hi)) => (
                lo.min(s.price_micros_per_input),
                hi.max(s.price_micros_per_input),
            ),
        });
        let free = s.capacity.saturating_sub(r.sessions);
        let hw = hardware.entry(s.accelerator).or_default();
        if free == 0 {
            continue;
        }
        let free_mem = s.memory.saturating_sub(r.reserved_memory);
        hw.free_slots = hw.free_slots.saturating_add(free);
        hw.free_memory_bytes = hw.free_memory_bytes.saturating_add(free_mem);
        hw.max_node_free_memory_bytes = hw.max_node_free_memory_bytes.max(free_mem);
        for name in &s.handlers {
            let e = handlers.entry(name.clone()).or_default();
            *e = e.saturating_add(free);
        }
        for name in &s.capabilities {
            let e = capabilities.entry(name.clone()).or_default();
            *e = e.saturating_add(free);
        }
    }
    let mut jurisdictions: Vec<String> =
        jurisdictions.into_iter().take(MAX_JURISDICTIONS).collect();
    if jurisdictions.is_empty() {
        jurisdictions.push(h.zone.clone());
    }
    let keep = |m: BTreeMap<String, u32>| -> BTreeMap<String, u32> {
        m.into_iter()
            .filter(|(k, _)| !k.is_empty() && k.len() <= 64)
            .take(MAX_MAP_ENTRIES)
            .collect()
    };
    // No capacity at all reads as fully loaded.
    let load_permille = (sessions * 1000)
        .checked_div(capacity)
        .map_or(1000, |l| l.min(1000) as u16);
    let (lo, hi) = price.unwrap_or((0, 0));
    ColonySummary {
        colony_id: h.colony_id.clone(),
        region: h.region.clone(),
        jurisdictions,
        hardware,
        handlers: keep(handlers),
        capabilities: keep(capabilities),
        load_permille,
        price: PriceRange {
            min_micros_per_input: lo,
            max_micros_per_input: hi,
        },
        rc_client_api: h.rc_client_api.clone(),
        rc_control_addr: h.rc_control_addr.clone(),
        rc_did: h.rc_did.clone(),
        seq: 0,
        issued_at_ms: 0,
    }
}

//! Canopy counters. One naming scheme, `opengrid_canopy_<what>_total` for counters and
//! `opengrid_canopy_<what>` for gauges; [`CanopyMetrics::named`] lists them for an exporter.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters, shared between the swarm task and the API.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected_bad_signature: AtomicU64,
    pub rejected_replay_or_stale: AtomicU64,
    pub rejected_unknown_key: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub expired: AtomicU64,
    pub wire_bytes_sent: AtomicU64,
    pub wire_bytes_received: AtomicU64,
    pub connected_peers: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, peering_entries: u64) -> CanopyMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CanopyMetrics {
            published: g(&self.published),
            received: g(&self.received),
            accepted: g(&self.accepted),
            rejected_bad_signature: g(&self.rejected_bad_signature),
            rejected_replay_or_stale: g(&self.rejected_replay_or_stale),
            rejected_unknown_key: g(&self.rejected_unknown_key),
            rejected_malformed: g(&self.rejected_malformed),
            expired: g(&self.expired),
            wire_bytes_sent: g(&self.wire_bytes_sent),
            wire_bytes_received: g(&self.wire_bytes_received),
            connected_peers: g(&self.connected_peers),
            peering_entries,
        }
    }
}

/// A snapshot of the canopy counters of one RC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CanopyMetrics {
    /// Own summaries published (`opengrid_canopy_published_total`).
    pub published: u64,
    /// Summary messages received for validation, before dedupe by the application
    /// (`opengrid_canopy_received_total`); gossipsub already dropped byte-identical duplicates.
    pub received: u64,
    /// Accepted into the peering table (`opengrid_canopy_accepted_total`).
    pub accepted: u64,
    /// Signature did not verify against the claimed RC
    /// (`opengrid_canopy_rejected_bad_signature_total`).
    pub rejected_bad_signature: u64,
    /// Sequence number not above the last accepted one, or issued outside the freshness window
    /// (`opengrid_canopy_rejected_replay_or_stale_total`).
    pub rejected_replay_or_stale: u64,
    /// Claimed RC not in the trusted set (`opengrid_canopy_rejected_unknown_key_total`).
    pub rejected_unknown_key: u64,
    /// Undecodable, oversized or out-of-range fields (`opengrid_canopy_rejected_malformed_total`).
    pub rejected_malformed: u64,
    /// Peering entries removed because their RC went silent (`opengrid_canopy_expired_total`).
    pub expired: u64,
    /// Bytes written on canopy TCP connections, all protocols (noise, yamux, gossipsub, identify)
    /// (`opengrid_canopy_wire_sent_bytes_total`).
    pub wire_bytes_sent: u64,
    /// Bytes read on canopy TCP connections (`opengrid_canopy_wire_received_bytes_total`).
    pub wire_bytes_received: u64,
    /// Gauge: peers connected now (`opengrid_canopy_connected_peers`).
    pub connected_peers: u64,
    /// Gauge: live peering-table entries (`opengrid_canopy_peering_entries`).
    pub peering_entries: u64,
}

impl CanopyMetrics {
    /// Every metric with its exported name.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("opengrid_canopy_published_total", self.published),
            ("opengrid_canopy_received_total", self.received),
            ("opengrid_canopy_accepted_total", self.accepted),
            (
                "opengrid_canopy_rejected_bad_signature_total",
                self.rejected_bad_signature,
            ),
            (
                "opengrid_canopy_rejected_replay_or_stale_total",
                self.rejected_replay_or_stale,
            ),
            (
                "opengrid_canopy_rejected_unknown_key_total",
                self.rejected_unknown_key,
            ),
            (
                "opengrid_canopy_rejected_malformed_total",
                self.rejected_malformed,
            ),
            ("opengrid_canopy_expired_total", self.expired),
            (
                "opengrid_canopy_wire_sent_bytes_total",
                self.wire_bytes_sent,
            ),
            (
                "opengrid_canopy_wire_received_bytes_total",
                self.wire_bytes_received,
            ),
            ("opengrid_canopy_connected_peers", self.connected_peers),
            ("opengrid_canopy_peering_entries", self.peering_entries),
        ]
    }

    /// Total rejections of every kind.
    pub fn rejected(&self) -> u64 {
        self.rejected_bad_signature
            + self.rejected_replay_or_stale
            + self.rejected_unknown_key
            + self.rejected_malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        for (name, _) in CanopyMetrics::default().named() {
            assert!(name.starts_with("opengrid_canopy_"), "{name}");
        }
    }
}

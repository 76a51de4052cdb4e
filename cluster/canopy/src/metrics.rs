//! Canopy metrics. One naming scheme, `opengrid_canopy_<what>_total` for counters,
//! `opengrid_canopy_<what>_bytes_total` for byte counters, `opengrid_canopy_<what>` for gauges and
//! `opengrid_canopy_<what>_seconds` for the propagation histogram. The counters are atomics
//! ([`CanopyMetrics`] is their copy, in the RC's `/status`); [`export`] makes every one of them an
//! OpenTelemetry instrument on the RC's meter, so they appear on its `/metrics` too.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::metrics::{Histogram, Meter};
use serde::Serialize;

/// Bucket bounds of `opengrid_canopy_propagation_seconds`, in seconds (1 ms … 60 s): a summary
/// crosses a few gossip hops, each a heartbeat (1 s by default) at worst.
pub const PROPAGATION_BUCKETS: [f64; 14] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

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
    pub silent_disconnects: AtomicU64,
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
            silent_disconnects: g(&self.silent_disconnects),
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
    /// Peers disconnected because they stayed connected without announcing the topic (a peer
    /// restarted under the same key; see `Runner::drop_silent_peers`)
    /// (`opengrid_canopy_silent_disconnects_total`).
    pub silent_disconnects: u64,
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
    pub fn named(&self) -> [(&'static str, u64); 13] {
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
                "opengrid_canopy_silent_disconnects_total",
                self.silent_disconnects,
            ),
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

/// Creates the canopy's instruments on `meter`: every metric of [`CanopyMetrics::named`] as an
/// observable counter (`_total`, bytes for `_bytes_total`) or gauge that calls `read` on each
/// collection (nothing is observed once `read` returns `None`, i.e. the canopy stopped), and the
/// propagation histogram, returned for the swarm task to record into.
pub(crate) fn export(
    meter: &Meter,
    read: impl Fn() -> Option<CanopyMetrics> + Clone + Send + Sync + 'static,
) -> Histogram<f64> {
    for (i, (name, _)) in CanopyMetrics::default().named().into_iter().enumerate() {
        let read = read.clone();
        let value = move || read().map(|m| m.named()[i].1);
        match name.strip_suffix("_total") {
            Some(counter) => {
                // the exporter appends `_bytes` for the unit `By`, then `_total`
                let (base, unit) = match counter.strip_suffix("_bytes") {
                    Some(base) => (base, Some("By")),
                    None => (counter, None),
                };
                let mut b = meter.u64_observable_counter(base).with_callback(move |o| {
                    if let Some(v) = value() {
                        o.observe(v, &[]);
                    }
                });
                if let Some(unit) = unit {
                    b = b.with_unit(unit);
                }
                b.build();
            }
            None => {
                meter
                    .u64_observable_gauge(name)
                    .with_callback(move |o| {
                        if let Some(v) = value() {
                            o.observe(v, &[]);
                        }
                    })
                    .build();
            }
        }
    }
    meter
        .f64_histogram("opengrid_canopy_propagation")
        .with_unit("s")
        .with_description(
            "accepted summaries: issuing RC's clock at publication to acceptance here",
        )
        .with_boundaries(PROPAGATION_BUCKETS.to_vec())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use prometheus::{Encoder, Registry, TextEncoder};
    use std::sync::Arc;

    #[test]
    fn names_follow_the_scheme() {
        for (name, _) in CanopyMetrics::default().named() {
            assert!(name.starts_with("opengrid_canopy_"), "{name}");
        }
    }

    #[test]
    fn every_named_metric_is_exported_under_its_name() {
        let registry = Registry::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(
                opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .without_target_info()
                    .scope_info_enabled(false)
                    .build()
                    .unwrap(),
            )
            .build();
        let counters = Arc::new(Counters::default());
        counters.wire_bytes_sent.store(1234, Ordering::Relaxed);
        counters.connected_peers.store(2, Ordering::Relaxed);
        Counters::inc(&counters.rejected_bad_signature);
        let weak = Arc::downgrade(&counters);
        let propagation = export(&provider.meter("opengrid_canopy"), move || {
            weak.upgrade().map(|c| c.snapshot(5))
        });
        propagation.record(0.003, &[]);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let expected = counters.snapshot(5);
        for (name, value) in expected.named() {
            let line = format!("\n{name} {value}\n");
            assert!(
                text.contains(&line),
                "`{}` missing in:\n{text}",
                line.trim()
            );
        }
        assert!(text.contains("opengrid_canopy_wire_sent_bytes_total 1234"));
        assert!(
            text.contains("opengrid_canopy_propagation_seconds_bucket{le=\"0.0025\"} 0")
                && text.contains("opengrid_canopy_propagation_seconds_bucket{le=\"0.005\"} 1"),
            "3 ms lands in the 5 ms bucket:\n{text}"
        );
    }
}

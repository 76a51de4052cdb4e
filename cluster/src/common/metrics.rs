//! Metrics of a node or RC: OpenTelemetry instruments exported in Prometheus text format on
//! `/metrics` (through `opentelemetry-prometheus`). Each node/RC owns its registry, so several can
//! run in one process.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `opengrid_cluster_heartbeats_total{role}` | counter | heartbeats sent (node) / received (rc) |
//! | `opengrid_cluster_placements_total{outcome}` | counter | placement decisions (`placed`, `refused`, `failed`) |
//! | `opengrid_cluster_admission_seconds` | histogram | time to decide one admission |
//! | `opengrid_cluster_nodes_declared_dead_total` | counter | nodes declared dead by the RC |
//! | `opengrid_cluster_rc_took_office_total` | counter | times this replica of an RC group took office as the colony's RC (rc) |
//! | `opengrid_cluster_join_refused_total{reason}` | counter | joins refused (bad signature, stale, wrong colony) |
//! | `opengrid_cluster_control_refused_total{reason}` | counter | control messages refused: bad MAC, replay, no link, wrong claimed sender, bad signature |
//! | `opengrid_cluster_connections_refused_total` | counter | client-API connections closed on arrival: `max_connections` were open |
//! | `opengrid_cluster_lease_lost_total` | counter | times this node lost its lease and stopped serving |
//! | `opengrid_cluster_replica_suspects_total` | counter | nodes taken out of replica sets because a primary's replica writes to them kept failing (rc) |
//! | `opengrid_cluster_sessions_adopted_total` | counter | sessions the RC took into its directory from a holder's report (restarted RC, lost activation) |
//! | `opengrid_cluster_api_requests_total{status}` | counter | client-API requests by HTTP status |
//! | `opengrid_cluster_wire_bytes_total{direction}` | counter | session input/output bytes on the client API |
//! | `opengrid_cluster_handovers_total{outcome}` | counter | live handovers driven from this node (`completed`, `aborted`) |
//! | `opengrid_cluster_handovers_in_total` | counter | sessions activated here by handover |
//! | `opengrid_cluster_handover_blackout_seconds` | histogram ([`SECONDS_BUCKETS`]) | handover blackout: freeze to target active |
//! | `opengrid_cluster_failovers_total{outcome}` | counter | sessions restored elsewhere after their node was lost |
//! | `opengrid_cluster_fenced_total` | counter | sessions dropped because a newer epoch holds them |
//! | `opengrid_cluster_sessions` | gauge | sessions hosted (node) / in the directory (rc) |
//! | `opengrid_cluster_members` | gauge | alive colony members (rc) |
//! | `opengrid_cluster_sessions_below_k` | gauge | active sessions whose alive replica holders are fewer than the colony's k (`replicas`) (rc) |
//! | `opengrid_cluster_sessions_below_min_copies` | gauge | active sessions whose alive replica holders are fewer than their `min_copies`: zero-loss inputs are refused until the set is repaired (rc) |
//!
//! Lower crates create their instruments on a meter of the same provider ([`Metrics::meter`]),
//! so one `/metrics` carries them too: the node's inference pool (`opengrid_runtime_gpu_*`, see
//! `opengrid_runtime_gpu`; with `opengrid_cluster_inference_*_info`, see `node::inference`) and
//! the RC's canopy (`opengrid_canopy_*`, see `opengrid_canopy`).

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

/// Bucket bounds of the seconds histograms that measure waits a user sees (0.5 ms … 10 s).
/// OpenTelemetry's default bounds (0, 5, 10 … 10000) suit milliseconds, not seconds.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The instruments of one node or RC.
pub struct Metrics {
    registry: Registry,
    provider: SdkMeterProvider,
    /// Heartbeats.
    pub heartbeats: Counter<u64>,
    /// Placements by outcome.
    pub placements: Counter<u64>,
    /// Admission decision time.
    pub admission_seconds: Histogram<f64>,
    /// Nodes declared dead.
    pub declared_dead: Counter<u64>,
    /// Times this RC group replica took office.
    pub rc_leader_changes: Counter<u64>,
    /// Joins refused.
    pub join_refused: Counter<u64>,
    /// Client-API connections refused at the connection cap.
    pub connections_refused: Counter<u64>,
    /// Control messages refused by their seal.
    pub control_refused: Counter<u64>,
    /// Leases lost.
    pub lease_lost: Counter<u64>,
    /// Sessions adopted from holding reports.
    pub sessions_adopted: Counter<u64>,
    /// Nodes taken out of replica sets (replica trouble).
    pub replica_suspects: Counter<u64>,
    /// API requests by status.
    pub api_requests: Counter<u64>,
    /// Wire bytes by direction.
    pub wire_bytes: Counter<u64>,
    /// Sessions.
    pub sessions: Gauge<u64>,
    /// Alive members.
    pub members: Gauge<u64>,
    /// Active sessions with fewer alive replica holders than k (rc).
    pub sessions_below_k: Gauge<u64>,
    /// Active sessions with fewer alive replica holders than their `min_copies` (rc).
    pub sessions_below_min_copies: Gauge<u64>,
    /// Handovers driven from this node, by outcome (`completed`, `aborted`).
    pub handovers: Counter<u64>,
    /// Sessions that arrived here by handover.
    pub handovers_in: Counter<u64>,
    /// Handover blackout (freeze → target active).
    pub handover_blackout_seconds: Histogram<f64>,
    /// Sessions restored after a failover (rc: ordered, by outcome).
    pub failovers: Counter<u64>,
    /// Checkpoint writes or inputs refused because this holder's epoch was superseded.
    pub fenced: Counter<u64>,
    role: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Metrics({})", self.role)
    }
}

impl Metrics {
    /// New instruments for `role` (`node` or `rc`).
    pub fn new(role: &'static str) -> Self {
        Self::with_otlp(role, otlp_endpoint_from_env())
    }

    /// New instruments for `role`, also pushed every 10 s over OTLP/HTTP (protobuf) to
    /// `otlp_endpoint` (e.g. `http://127.0.0.1:4318/v1/metrics`) when given.
    pub fn with_otlp(role: &'static str, otlp_endpoint: Option<String>) -> Self {
        let registry = Registry::new();
        let mut builder = SdkMeterProvider::builder();
        match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
        {
            Ok(exporter) => builder = builder.with_reader(exporter),
            Err(e) => {
                tracing::warn!("prometheus exporter unavailable: {e}; /metrics will be empty")
            }
        }
        if let Some(endpoint) = otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig;
            match opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(endpoint.clone())
                .build()
            {
                Ok(exporter) => {
                    tracing::info!(%endpoint, "exporting metrics over OTLP/HTTP");
                    builder = builder.with_reader(
                        opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                            .with_interval(std::time::Duration::from_secs(10))
                            .build(),
                    );
                }
                Err(e) => tracing::warn!(%endpoint, "OTLP exporter not started: {e}"),
            }
        }
        let provider = builder.build();
        let m = provider.meter("opengrid_cluster");
        Metrics {
            heartbeats: m
                .u64_counter("opengrid_cluster_heartbeats")
                .with_description("heartbeats sent (node) or received (rc)")
                .build(),
            placements: m
                .u64_counter("opengrid_cluster_placements")
                .with_description("placement decisions by outcome")
                .build(),
            admission_seconds: m
                .f64_histogram("opengrid_cluster_admission")
                .with_unit("s")
                .with_description("time to decide one admission")
                .with_boundaries(vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 1e-3, 1e-2])
                .build(),
            declared_dead: m
                .u64_counter("opengrid_cluster_nodes_declared_dead")
                .with_description("nodes declared dead")
                .build(),
            rc_leader_changes: m
                .u64_counter("opengrid_cluster_rc_took_office")
                .with_description("times this RC group replica took office")
                .build(),
            join_refused: m
                .u64_counter("opengrid_cluster_join_refused")
                .with_description("join requests refused")
                .build(),
            control_refused: m
                .u64_counter("opengrid_cluster_control_refused")
                .with_description(
                    "control messages refused: bad MAC, replay, no link, wrong sender",
                )
                .build(),
            connections_refused: m
                .u64_counter("opengrid_cluster_connections_refused")
                .with_description(
                    "client-API connections closed on arrival: max_connections were open",
                )
                .build(),
            lease_lost: m
                .u64_counter("opengrid_cluster_lease_lost")
                .with_description("leases lost (node stopped serving)")
                .build(),
            sessions_adopted: m
                .u64_counter("opengrid_cluster_sessions_adopted")
                .with_description("sessions adopted from holders' reports")
                .build(),
            replica_suspects: m
                .u64_counter("opengrid_cluster_replica_suspects")
                .with_description("nodes taken out of replica sets after failing replica writes")
                .build(),
            api_requests: m
                .u64_counter("opengrid_cluster_api_requests")
                .with_description("client API requests by status")
                .build(),
            wire_bytes: m
                .u64_counter("opengrid_cluster_wire")
                .with_unit("By")
                .with_description("session wire bytes on the client API")
                .build(),
            sessions: m
                .u64_gauge("opengrid_cluster_sessions")
                .with_description("sessions hosted (node) or in the directory (rc)")
                .build(),
            members: m
                .u64_gauge("opengrid_cluster_members")
                .with_description("alive colony members")
                .build(),
            sessions_below_k: m
                .u64_gauge("opengrid_cluster_sessions_below_k")
                .with_description("active sessions with fewer alive replica holders than k")
                .build(),
            sessions_below_min_copies: m
                .u64_gauge("opengrid_cluster_sessions_below_min_copies")
                .with_description(
                    "active sessions with fewer alive replica holders than their min_copies \
                     (zero-loss inputs refused until repaired)",
                )
                .build(),
            handovers: m
                .u64_counter("opengrid_cluster_handovers")
                .with_description("live handovers driven from this node, by outcome")
                .build(),
            handovers_in: m
                .u64_counter("opengrid_cluster_handovers_in")
                .with_description("sessions activated here by handover")
                .build(),
            handover_blackout_seconds: m
                .f64_histogram("opengrid_cluster_handover_blackout")
                .with_unit("s")
                .with_description("handover blackout: freeze to target active")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            failovers: m
                .u64_counter("opengrid_cluster_failovers")
                .with_description(
                    "sessions restored elsewhere after their node was lost, by outcome",
                )
                .build(),
            fenced: m
                .u64_counter("opengrid_cluster_fenced")
                .with_description("sessions dropped because a newer epoch holds them")
                .build(),
            registry,
            provider,
            role,
        }
    }

    /// The `role` label.
    pub fn role(&self) -> KeyValue {
        KeyValue::new("role", self.role)
    }

    /// A meter on this node's or RC's own provider, for the instruments of a lower crate
    /// (`scope` names it, e.g. `opengrid_runtime_gpu`): whatever it records is exported here, on
    /// `/metrics` and OTLP, and nowhere else, so several nodes in one process stay apart.
    pub fn meter(&self, scope: &'static str) -> Meter {
        self.provider.meter(scope)
    }

    /// Pushes pending metrics to every push exporter (OTLP) now.
    pub fn flush(&self) -> Result<(), String> {
        self.provider.force_flush().map_err(|e| e.to_string())
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encode error: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `OPENGRID_OTLP_ENDPOINT`, when set and non-empty: OTLP export is opt-in.
pub fn otlp_endpoint_from_env() -> Option<String> {
    std::env::var("OPENGRID_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        let m = Metrics::new("rc");
        m.heartbeats.add(3, &[m.role()]);
        m.admission_seconds.record(2e-6, &[]);
        m.wire_bytes.add(10, &[KeyValue::new("direction", "in")]);
        m.members.record(2, &[]);
        let text = m.render();
        for name in [
            "opengrid_cluster_heartbeats_total",
            "opengrid_cluster_admission_seconds_bucket",
            "opengrid_cluster_wire_bytes_total",
            "opengrid_cluster_members",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }

    /// Seconds histograms have second-valued buckets: a 3 ms blackout is below 0.005 s, not in
    /// a millisecond-style `le="5"` bucket.
    #[test]
    fn a_3ms_blackout_lands_in_a_millisecond_bucket() {
        let m = Metrics::new("node");
        m.handover_blackout_seconds.record(0.003, &[]);
        let text = m.render();
        let bucket = |le: &str| {
            let prefix =
                format!("opengrid_cluster_handover_blackout_seconds_bucket{{le=\"{le}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no le={le} bucket in:\n{text}"))
        };
        assert_eq!(bucket("0.0025"), 0, "{text}");
        assert_eq!(bucket("0.005"), 1, "{text}");
    }

    /// OTLP export is real: a collector on 127.0.0.1 receives an OTLP/HTTP protobuf POST that
    /// carries our metric name.
    #[test]
    fn otlp_export_reaches_a_collector() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body announced by content-length.
            let (head_end, len) = loop {
                let n = sock.read(&mut chunk).unwrap();
                assert!(n > 0, "collector: connection closed early");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            while buf.len() < head_end + len {
                let n = sock.read(&mut chunk).unwrap();
                assert!(n > 0, "collector: body truncated");
                buf.extend_from_slice(&chunk[..n]);
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            buf
        });
        let m = Metrics::with_otlp("node", Some(format!("http://{addr}/v1/metrics")));
        m.heartbeats.add(7, &[m.role()]);
        m.flush().expect("flush");
        let req = collector.join().unwrap();
        let text = String::from_utf8_lossy(&req);
        assert!(text.starts_with("POST /v1/metrics"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("application/x-protobuf"),
            "{text}"
        );
        assert!(
            text.contains("opengrid_cluster_heartbeats"),
            "metric name in the payload"
        );
    }
}

//! Metrics of the session actors: OpenTelemetry histograms on the meter given in
//! [`HostConfig::meter`](crate::HostConfig::meter), recorded where checkpoints are written and
//! handlers run. The exporter belongs to whoever owns the meter's provider (the node: `/metrics`).
//! The names are listed in the crate documentation.

use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _, NoopMeterProvider};

/// Bucket bounds of the actors' seconds histograms (10 µs … 10 s): a handler call or a local
/// checkpoint takes microseconds, a replicated one milliseconds.
pub const SECONDS_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The instruments of one session host, shared by all its sessions.
#[derive(Debug)]
pub(crate) struct ActorMetrics {
    checkpoint_seconds: Histogram<f64>,
    handler_seconds: Histogram<f64>,
}

impl ActorMetrics {
    /// Instruments on `meter`, or recording nowhere without one.
    pub(crate) fn new(meter: Option<&Meter>) -> Self {
        let noop;
        let meter = match meter {
            Some(m) => m,
            None => {
                noop = NoopMeterProvider::new().meter("opengrid_actors");
                &noop
            }
        };
        Self {
            checkpoint_seconds: meter
                .f64_histogram("opengrid_actors_checkpoint")
                .with_unit("s")
                .with_description(
                    "checkpoint writes: encode the state and put it in the store \
                     (replicas included when the store replicates)",
                )
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            handler_seconds: meter
                .f64_histogram("opengrid_actors_handler")
                .with_unit("s")
                .with_description("live handler calls: input in to output out, awaits included")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
        }
    }

    pub(crate) fn observe_checkpoint(&self, took: Duration) {
        self.checkpoint_seconds.record(took.as_secs_f64(), &[]);
    }

    pub(crate) fn observe_handler(&self, took: Duration) {
        self.handler_seconds.record(took.as_secs_f64(), &[]);
    }
}

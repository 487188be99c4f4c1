//! The GenAI client metrics (feature `otel`), through the OpenTelemetry
//! metrics API: the instruments, with the conventions' names, units and
//! bucket boundaries.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};

/// Bucket boundaries the conventions advise for durations, in seconds.
const SECONDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Bucket boundaries the conventions advise for token counts.
const TOKENS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The four client instruments.
pub(crate) struct Instruments {
    duration: Histogram<f64>,
    tokens: Histogram<u64>,
    first_chunk: Histogram<f64>,
    per_chunk: Histogram<f64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        Instruments {
            duration: seconds(
                "gen_ai.client.operation.duration",
                "GenAI operation duration.",
            ),
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(TOKENS.to_vec())
                .build(),
            first_chunk: seconds(
                "gen_ai.client.operation.time_to_first_chunk",
                "Time to receive the first chunk in a streaming operation.",
            ),
            per_chunk: seconds(
                "gen_ai.client.operation.time_per_output_chunk",
                "Time between consecutive chunks in a streaming operation.",
            ),
        }
    }

    /// The whole call, with `error.type` when it failed.
    pub(crate) fn duration(&self, took: Duration, attributes: &[KeyValue], error: Option<&str>) {
        match error {
            Some(kind) => {
                let mut with = attributes.to_vec();
                with.push(KeyValue::new("error.type", kind.to_owned()));
                self.duration.record(took.as_secs_f64(), &with);
            }
            None => self.duration.record(took.as_secs_f64(), attributes),
        }
    }

    /// The tokens a call used, one point per type.
    pub(crate) fn tokens(&self, input: u64, output: u64, attributes: &[KeyValue]) {
        for (kind, n) in [("input", input), ("output", output)] {
            let mut with = attributes.to_vec();
            with.push(KeyValue::new("gen_ai.token.type", kind));
            self.tokens.record(n, &with);
        }
    }

    pub(crate) fn first_chunk(&self, took: Duration, attributes: &[KeyValue]) {
        self.first_chunk.record(took.as_secs_f64(), attributes);
    }

    pub(crate) fn per_chunk(&self, took: Duration, attributes: &[KeyValue]) {
        self.per_chunk.record(took.as_secs_f64(), attributes);
    }
}

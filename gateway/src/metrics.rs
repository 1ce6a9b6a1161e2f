//! The gateway's own metrics, in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::limits::METRIC_SERIES_MAX;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Counters and gauges of one gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route, method, status) -> requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Requests refused with 429.
    pub rate_limited: AtomicU64,
    /// Open event streams.
    pub sse_streams: AtomicI64,
    /// Scatter-gathers run.
    pub scatter_total: AtomicU64,
    /// Scatter-gathers that answered `partial`.
    pub scatter_partial: AtomicU64,
    /// Shard legs that missed the deadline or failed.
    pub scatter_shards_missing: AtomicU64,
    /// Requests being worked on (under `requests_in_flight_max`).
    pub requests_in_flight: AtomicI64,
    /// Requests shed with 503 because `requests_in_flight_max` were in flight.
    pub shed_requests: AtomicU64,
    /// Open HTTP connections (under `connections_max`).
    pub connections: AtomicI64,
    /// Connections refused with 503 because `connections_max` were open.
    pub shed_connections: AtomicU64,
}

impl Metrics {
    /// Counts one answered request.
    pub fn record(&self, route: &str, method: &str, status: u16, took: Duration) {
        {
            let mut map = match self.requests.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let key = (route.to_owned(), method.to_owned(), status);
            if map.len() < METRIC_SERIES_MAX || map.contains_key(&key) {
                *map.entry(key).or_default() += 1;
            }
        }
        let s = took.as_secs_f64();
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            if s <= *le {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP reserva_gateway_requests_total HTTP requests answered, by route template, method and status.\n");
        out.push_str("# TYPE reserva_gateway_requests_total counter\n");
        {
            let map = match self.requests.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            for ((route, method, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "reserva_gateway_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                    route.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
        out.push_str("# HELP reserva_gateway_request_duration_seconds Time to answer an HTTP request (to the first byte of the body).\n");
        out.push_str("# TYPE reserva_gateway_request_duration_seconds histogram\n");
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            let _ = writeln!(
                out,
                "reserva_gateway_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.latency_buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "reserva_gateway_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "reserva_gateway_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "reserva_gateway_request_duration_seconds_count {count}"
        );
        out.push_str("# HELP reserva_gateway_shed_total Requests and connections the gateway answered 503 overloaded at once because it was at its bound, by reason (requests: requests in flight, connections: open connections).\n");
        out.push_str("# TYPE reserva_gateway_shed_total counter\n");
        for (reason, n) in [
            ("requests", &self.shed_requests),
            ("connections", &self.shed_connections),
        ] {
            let _ = writeln!(
                out,
                "reserva_gateway_shed_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let simple: [(&str, &str, &str, i64); 7] = [
            (
                "reserva_gateway_requests_in_flight",
                "gauge",
                "Requests being worked on (shed with 503 past the bound).",
                self.requests_in_flight.load(Ordering::Relaxed),
            ),
            (
                "reserva_gateway_connections",
                "gauge",
                "Open HTTP connections (refused with 503 past the bound).",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "reserva_gateway_rate_limited_total",
                "counter",
                "Requests refused with 429.",
                self.rate_limited.load(Ordering::Relaxed) as i64,
            ),
            (
                "reserva_gateway_sse_streams",
                "gauge",
                "Open server-sent-event streams.",
                self.sse_streams.load(Ordering::Relaxed),
            ),
            (
                "reserva_gateway_scatter_total",
                "counter",
                "Scatter-gather queries over all shards.",
                self.scatter_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "reserva_gateway_scatter_partial_total",
                "counter",
                "Scatter-gather answers marked partial.",
                self.scatter_partial.load(Ordering::Relaxed) as i64,
            ),
            (
                "reserva_gateway_scatter_shards_missing_total",
                "counter",
                "Shard legs of scatter-gathers that missed the deadline or failed.",
                self.scatter_shards_missing.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, kind, help, v) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

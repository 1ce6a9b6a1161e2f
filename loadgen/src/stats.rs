//! Latency histograms, counters per second, and the final report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::limits::LATENCY_US_MAX;
use crate::target::OpError;

/// A histogram of latencies in microseconds, 1 µs .. `LATENCY_US_MAX`, 3 digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// What one finished unit reports.
pub struct Done {
    /// Microseconds from its intended start (open loop) or its start (closed loop).
    pub latency_us: u64,
    /// Its result.
    pub result: Result<(), OpError>,
}

#[derive(Default)]
struct Counts {
    ok: u64,
    shed: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn add(&mut self, r: &Result<(), OpError>) {
        match r {
            Ok(()) => self.ok += 1,
            Err(e) if e.is_shed() => self.shed += 1,
            Err(e) => *self.errors.entry(e.code).or_default() += 1,
        }
    }
    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

struct Rec {
    total: Histogram<u64>,
    second: Histogram<u64>,
    all: Counts,
    sec: Counts,
}

/// Collects results from every batch task: one lock per batch.
pub struct Recorder {
    inner: Mutex<Rec>,
    /// Units sent and not yet answered.
    pub in_flight: AtomicU64,
    /// Units the scheduler could not send because too many were in flight.
    pub backlog_dropped: AtomicU64,
}

/// The numbers of one second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the start (end of this interval).
    pub t: u32,
    /// The rate the schedule asked for during this second (0 in closed loop).
    pub target_rate_per_s: f64,
    /// Units answered successfully.
    pub ok: u64,
    /// Units answered with an error (other than shed).
    pub errors: u64,
    /// Units shed by the target (`overloaded`).
    pub shed: u64,
    /// Latency percentiles of the units finished in this second (µs).
    pub p50_us: u64,
    /// 99th percentile (µs).
    pub p99_us: u64,
    /// 99.9th percentile (µs).
    pub p999_us: u64,
    /// Longest (µs).
    pub max_us: u64,
    /// Units in flight at the end of the second.
    pub in_flight: u64,
    /// The load generator's CPU in this second (percent of one core).
    pub loadgen_cpu_pct: f64,
    /// Errors by code in this second.
    pub error_codes: BTreeMap<&'static str, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder {
            inner: Mutex::new(Rec {
                total: new_histogram(),
                second: new_histogram(),
                all: Counts::default(),
                sec: Counts::default(),
            }),
            in_flight: AtomicU64::new(0),
            backlog_dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rec> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a batch of finished units.
    pub fn record(&self, done: &[Done]) {
        let mut rec = self.lock();
        for d in done {
            let v = d.latency_us.clamp(1, LATENCY_US_MAX);
            // In range by the clamp.
            let _ = rec.total.record(v);
            let _ = rec.second.record(v);
            rec.all.add(&d.result);
            rec.sec.add(&d.result);
        }
        drop(rec);
        self.in_flight
            .fetch_sub(done.len() as u64, Ordering::Relaxed);
    }

    /// Closes the current second: its numbers, and its histogram for `--hdr`.
    pub fn rollover(&self, t: u32, target_rate: f64, cpu: f64) -> (Second, Histogram<u64>) {
        let mut rec = self.lock();
        let hist = std::mem::replace(&mut rec.second, new_histogram());
        let sec = std::mem::take(&mut rec.sec);
        drop(rec);
        let s = Second {
            t,
            target_rate_per_s: target_rate,
            ok: sec.ok,
            errors: sec.error_total(),
            shed: sec.shed,
            p50_us: hist.value_at_quantile(0.5),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            loadgen_cpu_pct: cpu,
            error_codes: sec.errors,
        };
        (s, hist)
    }

    /// Totals so far: the histogram, ok, shed, errors by code.
    pub fn totals(&self) -> (Histogram<u64>, u64, u64, BTreeMap<&'static str, u64>) {
        let rec = self.lock();
        (
            rec.total.clone(),
            rec.all.ok,
            rec.all.shed,
            rec.all.errors.clone(),
        )
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Longest.
    pub max: u64,
    /// Mean.
    pub mean: u64,
}

impl Latency {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean() as u64,
        }
    }
}

/// How the spike went (the `spike` scenario).
#[derive(Debug, Clone, Serialize)]
pub struct SpikeSummary {
    /// Baseline rate.
    pub baseline_rate_per_s: f64,
    /// Peak scheduled rate.
    pub peak_rate_per_s: f64,
    /// Successful units per second while the peak was held (median of its seconds).
    pub goodput_at_peak_per_s: f64,
    /// Shed units while the peak was held.
    pub shed_at_peak: u64,
    /// Worst per-second p99 of admitted (answered) units during the peak (µs).
    pub worst_p99_at_peak_us: u64,
    /// Seconds after the schedule fell back until a second's p99 was under the SLO again.
    pub recovery_s: Option<u32>,
}

/// Everything a run reports (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Target URL.
    pub target: String,
    /// Binding (`reserva`, `redis`, `postgres`, `http`).
    pub target_kind: String,
    /// `open` (a schedule, latency from intended start) or `closed` (`--concurrency`).
    pub mode: String,
    /// Seconds the run lasted.
    pub duration_s: f64,
    /// The requested rate (mean over the schedule; 0 in closed loop).
    pub target_rate_per_s: f64,
    /// Units answered per second (successes, errors and shed).
    pub achieved_ops_per_s: f64,
    /// Successful units per second.
    pub goodput_per_s: f64,
    /// Units scheduled (open loop) or sent (closed loop).
    pub scheduled: u64,
    /// Successful units.
    pub ok: u64,
    /// Errors by code (shed not included).
    pub errors: BTreeMap<String, u64>,
    /// Units the target shed (`overloaded`).
    pub shed: u64,
    /// Latency of all answered units (µs).
    pub latency_us: Latency,
    /// The load generator's mean CPU (percent of one core).
    pub loadgen_cpu_pct: f64,
    /// Worker threads the load generator ran.
    pub loadgen_threads: usize,
    /// The target process's mean CPU, if `--target-pid` was given (percent of one core).
    pub target_cpu_pct: Option<f64>,
    /// How busy all of the machine's CPUs were during the run (percent).
    pub machine_busy_pct: Option<f64>,
    /// Whether the load generator itself looks like the bottleneck.
    pub loadgen_bottleneck: bool,
    /// What the numbers mean and what limited them.
    pub notes: Vec<String>,
    /// The spike summary, for `spike`.
    pub spike: Option<SpikeSummary>,
    /// Every second.
    pub seconds: Vec<Second>,
    /// The steps of a `--rate max` search.
    pub rate_search: Vec<SearchStep>,
    /// The `--verify` outcome.
    pub verify: Option<crate::verify::VerifyReport>,
}

/// One step of a `--rate max` search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchStep {
    /// Rate tried.
    pub rate_per_s: f64,
    /// Successful units per second.
    pub goodput_per_s: f64,
    /// p99 (µs).
    pub p99_us: u64,
    /// Errors and shed units.
    pub failed: u64,
    /// Whether it met the SLO.
    pub passed: bool,
}

/// Formats microseconds for people.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// The live line printed each second.
pub fn live_line(s: &Second) -> String {
    let mut line = format!(
        "[{:>4}s] target {:>9.0}/s  ok {:>9}/s  p50 {:>9}  p99 {:>9}  p999 {:>9}  shed {:>7}  in-flight {:>7}  cpu {:>5.0}%",
        s.t,
        s.target_rate_per_s,
        s.ok,
        fmt_us(s.p50_us),
        fmt_us(s.p99_us),
        fmt_us(s.p999_us),
        s.shed,
        s.in_flight,
        s.loadgen_cpu_pct
    );
    if !s.error_codes.is_empty() {
        let codes: Vec<String> = s
            .error_codes
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        line.push_str("  errors ");
        line.push_str(&codes.join(","));
    }
    line
}

/// The final table (markdown, so it pastes into docs).
pub fn final_table(r: &Report) -> String {
    let errors: u64 = r.errors.values().sum();
    let codes: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
    let mut out = String::new();
    out.push_str(&format!(
        "\n{} {} against {} ({}), {:.1} s\n\n",
        if r.mode == "closed" {
            "CLOSED LOOP (throughput, not latency under a schedule):"
        } else {
            "open loop:"
        },
        r.scenario,
        r.target,
        r.target_kind,
        r.duration_s
    ));
    out.push_str("| target/s | achieved/s | goodput/s | ok | errors | shed | p50 | p90 | p99 | p99.9 | max | loadgen CPU | target CPU |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    out.push_str(&format!(
        "| {:.0} | {:.0} | {:.0} | {} | {}{} | {} | {} | {} | {} | {} | {} | {:.0}% of {} threads | {} |\n",
        r.target_rate_per_s,
        r.achieved_ops_per_s,
        r.goodput_per_s,
        r.ok,
        errors,
        if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        },
        r.shed,
        fmt_us(r.latency_us.p50),
        fmt_us(r.latency_us.p90),
        fmt_us(r.latency_us.p99),
        fmt_us(r.latency_us.p999),
        fmt_us(r.latency_us.max),
        r.loadgen_cpu_pct,
        r.loadgen_threads,
        r.target_cpu_pct
            .map(|c| format!("{c:.0}%"))
            .unwrap_or_else(|| "-".into()),
    ));
    for n in &r.notes {
        out.push_str(&format!("\nnote: {n}"));
    }
    out.push('\n');
    out
}

/// Microseconds from `from` to `to` (0 if `to` is earlier).
pub fn micros_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros() as u64
}

//! Latency histograms, counters per second and per `BUCKET_MS`, the spike
//! phases and recovery time, and the final report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::limits::{BUCKET_MS, LATENCY_US_MAX, RECOVERY_WINDOW_BUCKETS};
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
    /// Latency of the successful units only.
    total_ok: Histogram<u64>,
    second: Histogram<u64>,
    all: Counts,
    sec: Counts,
    /// Latencies of the successes of the current bucket.
    bucket_ok: Histogram<u64>,
    /// Those of the last `RECOVERY_WINDOW_BUCKETS - 1` closed buckets.
    recent_ok: std::collections::VecDeque<Histogram<u64>>,
    bucket: Counts,
    /// `scheduled` and `backlog_dropped` when the last bucket closed.
    scheduled_before: u64,
    dropped_before: u64,
}

/// Collects results from every batch task: one lock per batch.
pub struct Recorder {
    inner: Mutex<Rec>,
    /// Units sent and not yet answered.
    pub in_flight: AtomicU64,
    /// Units the scheduler could not send because too many were in flight.
    pub backlog_dropped: AtomicU64,
    /// Units the schedule made due (open loop) or workers sent (closed loop).
    pub scheduled: AtomicU64,
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
                total_ok: new_histogram(),
                second: new_histogram(),
                all: Counts::default(),
                sec: Counts::default(),
                bucket_ok: new_histogram(),
                recent_ok: std::collections::VecDeque::new(),
                bucket: Counts::default(),
                scheduled_before: 0,
                dropped_before: 0,
            }),
            in_flight: AtomicU64::new(0),
            backlog_dropped: AtomicU64::new(0),
            scheduled: AtomicU64::new(0),
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
            if d.result.is_ok() {
                let _ = rec.bucket_ok.record(v);
                let _ = rec.total_ok.record(v);
            }
            rec.all.add(&d.result);
            rec.sec.add(&d.result);
            rec.bucket.add(&d.result);
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

    /// Closes the current bucket, which ends `end_ms` after the start: its
    /// counts, and the histogram of its successes' latencies.
    pub fn rollover_bucket(&self, end_ms: u64) -> (Bucket, Histogram<u64>) {
        let scheduled = self.scheduled.load(Ordering::Relaxed);
        let dropped = self.backlog_dropped.load(Ordering::Relaxed);
        let mut rec = self.lock();
        let hist = std::mem::replace(&mut rec.bucket_ok, new_histogram());
        let counts = std::mem::take(&mut rec.bucket);
        let offered = scheduled.saturating_sub(rec.scheduled_before);
        let not_sent = dropped.saturating_sub(rec.dropped_before);
        rec.scheduled_before = scheduled;
        rec.dropped_before = dropped;
        let mut window = hist.clone();
        for h in &rec.recent_ok {
            // Same bounds: cannot fail.
            let _ = window.add(h);
        }
        if rec.recent_ok.len() + 1 >= RECOVERY_WINDOW_BUCKETS {
            rec.recent_ok.pop_front();
        }
        rec.recent_ok.push_back(hist.clone());
        drop(rec);
        let b = Bucket {
            end_ms,
            offered,
            ok: counts.ok,
            shed: counts.shed,
            errors: counts.error_total(),
            not_sent,
            ok_p99_us: if hist.is_empty() {
                0
            } else {
                hist.value_at_quantile(0.99)
            },
            window_ok: window.len(),
            ok_p99_window_us: if window.is_empty() {
                0
            } else {
                window.value_at_quantile(0.99)
            },
        };
        (b, hist)
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

    /// The latency histogram of the successful units so far.
    pub fn admitted(&self) -> Histogram<u64> {
        self.lock().total_ok.clone()
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

/// The numbers of one `BUCKET_MS` bucket of a run (finer than a second):
/// what the spike phases, the recovery time and the plot are made of.
/// Answers count in the bucket in which their batch was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Milliseconds since the start at the end of this bucket.
    pub end_ms: u64,
    /// Units the schedule made due (open loop) or workers sent (closed loop).
    pub offered: u64,
    /// Units answered with success (admitted).
    pub ok: u64,
    /// Units shed by the target (`overloaded`).
    pub shed: u64,
    /// Units answered with another error.
    pub errors: u64,
    /// Units due but not sent because too many were in flight (`loadgen_backlog`).
    pub not_sent: u64,
    /// 99th percentile of the successes' latency (µs); 0 without successes.
    pub ok_p99_us: u64,
    /// Successes of the last `RECOVERY_WINDOW_BUCKETS` buckets, this one
    /// included.
    pub window_ok: u64,
    /// 99th percentile of their latency (µs); 0 without successes.
    pub ok_p99_window_us: u64,
}

impl Bucket {
    /// Milliseconds since the start at the beginning of this bucket.
    pub fn start_ms(&self) -> u64 {
        self.end_ms.saturating_sub(BUCKET_MS)
    }

    /// Units answered in this bucket (successes, shed and errors).
    pub fn answered(&self) -> u64 {
        self.ok + self.shed + self.errors
    }

    /// Milliseconds since the start at the middle of this bucket.
    fn mid_ms(&self) -> f64 {
        self.end_ms as f64 - BUCKET_MS as f64 / 2.0
    }
}

/// The spike's phases, in order; `DRAIN` follows the schedule's end.
pub const BASELINE: &str = "baseline";
/// The rate climbing from the baseline to the peak.
pub const RAMP: &str = "ramp";
/// The peak rate held.
pub const PEAK: &str = "peak";
/// Back at the baseline rate until the schedule ends.
pub const AFTER: &str = "after";
/// Answers that came after the schedule ended (nothing offered).
pub const DRAIN: &str = "drain";

/// One window `[from_s, to_s)` of a schedule, in seconds since the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseWindow {
    /// `BASELINE`, `RAMP`, `PEAK` or `AFTER`.
    pub name: &'static str,
    /// Start (s).
    pub from_s: f64,
    /// End (s).
    pub to_s: f64,
}

/// The phase of the bucket ending at `end_ms`: the index of the window (in
/// order, contiguous from 0) that holds the bucket's middle, or
/// `windows.len()` (the drain) past the last one.
pub fn phase_of(windows: &[PhaseWindow], end_ms: u64) -> usize {
    let mid_s = (end_ms as f64 - BUCKET_MS as f64 / 2.0) / 1e3;
    windows
        .iter()
        .position(|w| mid_s < w.to_s)
        .unwrap_or(windows.len())
}

/// What one phase of a spike run did.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// `baseline`, `ramp`, `peak`, `after`, or `drain` (answers after the
    /// schedule ended; listed only when there were any).
    pub phase: &'static str,
    /// Start of the phase's buckets (s since the start).
    pub from_s: f64,
    /// End of the phase's buckets (s since the start).
    pub to_s: f64,
    /// Units scheduled.
    pub offered: u64,
    /// Units scheduled per second.
    pub offered_per_s: f64,
    /// Units answered with success (admitted).
    pub ok: u64,
    /// Successful units per second.
    pub goodput_per_s: f64,
    /// Units shed by the target (`overloaded`).
    pub shed: u64,
    /// Units answered with another error.
    pub errors: u64,
    /// Units due but not sent because too many were in flight (`loadgen_backlog`).
    pub not_sent: u64,
    /// Latency of the successful units answered in this phase (µs), from
    /// one histogram per phase.
    pub admitted_latency_us: Latency,
}

/// Splits the buckets of a run into `windows` (plus the drain, when it saw
/// anything): counts summed per phase, latencies from `admitted` (one
/// histogram of successes per phase, `windows.len() + 1` of them, filled with
/// the buckets `phase_of` assigns to each).
pub fn split_phases(
    windows: &[PhaseWindow],
    buckets: &[Bucket],
    admitted: &[Histogram<u64>],
) -> Vec<PhaseSummary> {
    #[derive(Default, Clone, Copy)]
    struct Acc {
        from_ms: Option<u64>,
        to_ms: u64,
        offered: u64,
        ok: u64,
        shed: u64,
        errors: u64,
        not_sent: u64,
    }
    let mut acc = vec![Acc::default(); windows.len() + 1];
    for b in buckets {
        let Some(a) = acc.get_mut(phase_of(windows, b.end_ms)) else {
            continue;
        };
        a.from_ms = Some(a.from_ms.map_or(b.start_ms(), |f| f.min(b.start_ms())));
        a.to_ms = a.to_ms.max(b.end_ms);
        a.offered += b.offered;
        a.ok += b.ok;
        a.shed += b.shed;
        a.errors += b.errors;
        a.not_sent += b.not_sent;
    }
    let mut out = Vec::with_capacity(acc.len());
    for (i, a) in acc.iter().enumerate() {
        let window = windows.get(i);
        let name = window.map_or(DRAIN, |w| w.name);
        if window.is_none() && a.offered + a.ok + a.shed + a.errors + a.not_sent == 0 {
            continue;
        }
        let (from_s, to_s) = match a.from_ms {
            Some(f) => (f as f64 / 1e3, a.to_ms as f64 / 1e3),
            None => window.map_or((0.0, 0.0), |w| (w.from_s, w.from_s)),
        };
        let secs = to_s - from_s;
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let admitted_latency_us = match admitted.get(i) {
            Some(h) if !h.is_empty() => Latency::of(h),
            _ => Latency::default(),
        };
        out.push(PhaseSummary {
            phase: name,
            from_s,
            to_s,
            offered: a.offered,
            offered_per_s: per_s(a.offered),
            ok: a.ok,
            goodput_per_s: per_s(a.ok),
            shed: a.shed,
            errors: a.errors,
            not_sent: a.not_sent,
            admitted_latency_us,
        });
    }
    out
}

/// Milliseconds from `peak_end_s` until the p99 of successes stayed at most
/// `slo_us`: the start of the first stretch after the peak from which every
/// bucket with traffic to the end of `buckets` met it, minus the peak's end
/// (0 if it never stopped meeting it). A bucket meets it when it has
/// successes, the p99 of the successes of the last second
/// (`RECOVERY_WINDOW_BUCKETS` buckets, itself included) is within
/// `slo_us`, and no unit was left unsent; the stretch then starts at the
/// first bucket of that second with traffic after the peak. A bucket with
/// answers but no success misses it; a bucket with neither answers nor
/// unsent units is neutral. `None` if the last bucket with traffic missed
/// it, or no bucket after the peak had any.
pub fn recovery_ms(buckets: &[Bucket], peak_end_s: f64, slo_us: u64) -> Option<u64> {
    let peak_end_ms = (peak_end_s * 1e3).max(0.0);
    let mut since: Option<u64> = None;
    // The end of the last bucket that missed on its own (no success, or
    // units left unsent): a stretch never starts before it.
    let mut own_miss_end = 0;
    for (i, b) in buckets.iter().enumerate() {
        if b.mid_ms() < peak_end_ms || (b.answered() == 0 && b.not_sent == 0) {
            continue;
        }
        if b.ok == 0 || b.not_sent > 0 {
            own_miss_end = b.end_ms;
            since = None;
        } else if b.ok_p99_window_us <= slo_us {
            // Within the SLO over the window this bucket ends: recovered
            // since the window's first answered bucket after the peak.
            let first = buckets[i.saturating_sub(RECOVERY_WINDOW_BUCKETS - 1)..=i]
                .iter()
                .find(|x| x.mid_ms() >= peak_end_ms && x.answered() > 0)
                .map_or(b.start_ms(), Bucket::start_ms);
            since.get_or_insert(first.max(own_miss_end));
        } else {
            since = None;
        }
    }
    since.map(|s| (s as f64 - peak_end_ms).max(0.0).round() as u64)
}

/// How the spike went (the `spike` scenario), phase by phase.
#[derive(Debug, Clone, Serialize)]
pub struct SpikeSummary {
    /// Baseline rate.
    pub baseline_rate_per_s: f64,
    /// Peak scheduled rate.
    pub peak_rate_per_s: f64,
    /// The p99 objective of admitted units (`--slo`, ms).
    pub slo_ms: f64,
    /// Width of the buckets the phases and the recovery are computed from (ms).
    pub bucket_ms: u64,
    /// `baseline`, `ramp`, `peak`, `after`, and `drain` when answers came
    /// after the schedule ended.
    pub phases: Vec<PhaseSummary>,
    /// Milliseconds from the end of the peak until the p99 of admitted units
    /// was back within the SLO for the rest of the run (see `recovery_ms`);
    /// `None` if it never was, or units were left unanswered.
    pub recovery_ms: Option<u64>,
}

/// The spike summary of a run from its buckets and its per-phase histograms
/// of successes (see `split_phases`).
pub fn spike_summary(
    baseline_rate: f64,
    peak_rate: f64,
    windows: &[PhaseWindow],
    buckets: &[Bucket],
    admitted: &[Histogram<u64>],
    slo_ms: f64,
    unanswered: u64,
) -> SpikeSummary {
    let slo_us = (slo_ms * 1e3).max(0.0) as u64;
    let recovery = match windows.iter().find(|w| w.name == PEAK) {
        Some(peak) if unanswered == 0 => recovery_ms(buckets, peak.to_s, slo_us),
        _ => None,
    };
    SpikeSummary {
        baseline_rate_per_s: baseline_rate,
        peak_rate_per_s: peak_rate,
        slo_ms,
        bucket_ms: BUCKET_MS,
        phases: split_phases(windows, buckets, admitted),
        recovery_ms: recovery,
    }
}

/// The spike's phases as a markdown table, and the recovery.
pub fn spike_table(s: &SpikeSummary, unanswered: u64) -> String {
    let mut out = format!(
        "\nspike: baseline {:.0}/s, peak {:.0}/s; admitted = answered with success; \
         SLO p99 <= {} ms; phases on {} ms buckets\n\n",
        s.baseline_rate_per_s, s.peak_rate_per_s, s.slo_ms, s.bucket_ms
    );
    out.push_str(
        "| phase | seconds | offered/s | goodput/s | shed | errors | admitted p50 | admitted p99 |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for p in &s.phases {
        let lat = |us: u64| {
            if p.ok == 0 {
                "-".to_owned()
            } else {
                fmt_us(us)
            }
        };
        out.push_str(&format!(
            "| {} | {:.1}-{:.1} | {:.0} | {:.0} | {} | {}{} | {} | {} |\n",
            p.phase,
            p.from_s,
            p.to_s,
            p.offered_per_s,
            p.goodput_per_s,
            p.shed,
            p.errors,
            if p.not_sent > 0 {
                format!(" (+{} not sent)", p.not_sent)
            } else {
                String::new()
            },
            lat(p.admitted_latency_us.p50),
            lat(p.admitted_latency_us.p99),
        ));
    }
    out.push_str(&match s.recovery_ms {
        Some(ms) => format!(
            "\nrecovery: {ms} ms after the peak ended, the p99 of admitted units was back \
             within {} ms and stayed there\n",
            s.slo_ms
        ),
        None if unanswered > 0 => {
            format!("\nrecovery: none within the run ({unanswered} units were never answered)\n")
        }
        None => format!(
            "\nrecovery: none within the run: after the peak the p99 of admitted units did \
             not get back within {} ms for good\n",
            s.slo_ms
        ),
    });
    out
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
    /// Latency of the successful (admitted) units only (µs): what a caller
    /// whose request was served waited, with fast refusals left out.
    pub admitted_latency_us: Latency,
    /// The load generator's mean CPU (percent of one core).
    pub loadgen_cpu_pct: f64,
    /// The load generator's CPU time per answered unit (µs).
    pub loadgen_cpu_us_per_unit: f64,
    /// The target's CPU time per answered unit (µs), with `--target-pid`.
    pub target_cpu_us_per_unit: Option<f64>,
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
    /// Every `BUCKET_MS` bucket (for the plot; not written to the JSON).
    #[serde(skip)]
    pub buckets: Vec<Bucket>,
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
    if r.shed > 0 {
        let a = &r.admitted_latency_us;
        out.push_str(&format!(
            "\nadmitted (successful) units only: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            fmt_us(a.p50),
            fmt_us(a.p90),
            fmt_us(a.p99),
            fmt_us(a.p999),
            fmt_us(a.max)
        ));
    }
    if let Some(s) = &r.spike {
        out.push_str(&spike_table(
            s,
            r.errors.get("unanswered").copied().unwrap_or(0),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{CODE_OVERLOADED, OpError};

    /// The phases of a 10 s spike run: the ramp at 2.5 s, the peak at 3.5 s,
    /// the fall at 6 s.
    fn windows() -> Vec<PhaseWindow> {
        let w = |name, from_s, to_s| PhaseWindow { name, from_s, to_s };
        vec![
            w(BASELINE, 0.0, 2.5),
            w(RAMP, 2.5, 3.5),
            w(PEAK, 3.5, 6.0),
            w(AFTER, 6.0, 10.0),
        ]
    }

    /// Bucket `k` (ending at `k * BUCKET_MS`).
    fn bucket(k: u64, offered: u64, ok: u64, shed: u64, ok_p99_us: u64) -> Bucket {
        Bucket {
            end_ms: k * BUCKET_MS,
            offered,
            ok,
            shed,
            errors: 0,
            not_sent: 0,
            ok_p99_us,
            window_ok: 0,
            ok_p99_window_us: 0,
        }
    }

    /// Fills the window fields as the recorder would if every bucket's
    /// successes were all as slow as its p99 (the window's p99 is then the
    /// worst p99 in it).
    fn windowed(mut v: Vec<Bucket>) -> Vec<Bucket> {
        for i in 0..v.len() {
            let w = &v[i.saturating_sub(RECOVERY_WINDOW_BUCKETS - 1)..=i];
            let ok = w.iter().map(|b| b.ok).sum();
            let p99 = w
                .iter()
                .filter(|b| b.ok > 0)
                .map(|b| b.ok_p99_us)
                .max()
                .unwrap_or(0);
            v[i].window_ok = ok;
            v[i].ok_p99_window_us = p99;
        }
        v
    }

    /// A 10 s spike at 100/s (10 per bucket) and 1000/s at the peak, with
    /// the admitted p99 at `p99(k)` in bucket `k`; the target sheds a third
    /// of the peak. Five drain buckets follow; the first holds answers.
    fn run(p99: impl Fn(u64) -> u64) -> Vec<Bucket> {
        let w = windows();
        windowed(
            (1..=105)
                .map(|k| match phase_of(&w, k * BUCKET_MS) {
                    0 | 3 => bucket(k, 10, 10, 0, p99(k)),
                    1 => bucket(k, 55, 50, 5, p99(k)),
                    2 => bucket(k, 100, 66, 34, p99(k)),
                    _ if k == 101 => bucket(k, 0, 3, 0, p99(k)),
                    _ => bucket(k, 0, 0, 0, 0),
                })
                .collect(),
        )
    }

    const MS: u64 = 1_000;

    #[test]
    fn buckets_fall_in_the_phase_that_holds_their_middle() {
        let w = windows();
        for (end_ms, phase) in [
            (100, 0),
            (2_500, 0),
            (2_600, 1),
            (3_500, 1),
            (3_600, 2),
            (6_000, 2),
            (6_100, 3),
            (10_000, 3),
            (10_100, 4),
            (99_900, 4),
        ] {
            assert_eq!(phase_of(&w, end_ms), phase, "bucket ending at {end_ms} ms");
        }
        // Boundaries off the bucket grid go by the bucket's middle.
        let odd = [
            PhaseWindow {
                name: BASELINE,
                from_s: 0.0,
                to_s: 1.75,
            },
            PhaseWindow {
                name: RAMP,
                from_s: 1.75,
                to_s: 2.45,
            },
        ];
        assert_eq!(phase_of(&odd, 1_700), 0);
        assert_eq!(phase_of(&odd, 1_800), 1);
        assert_eq!(phase_of(&odd, 2_500), 2);
        assert_eq!(phase_of(&[], 100), 0);
    }

    #[test]
    fn the_phase_split_sums_buckets_and_takes_latency_from_each_phase_histogram() {
        let w = windows();
        let buckets = run(|_| 2 * MS);
        let mut admitted: Vec<Histogram<u64>> = (0..=w.len()).map(|_| new_histogram()).collect();
        // Admitted latencies: 1 ms at the baseline, 1..=100 ms at the peak.
        for _ in 0..250 {
            admitted[0].record(1_000).unwrap();
        }
        for v in 1..=100 {
            admitted[2].record(v * MS).unwrap();
        }
        let phases = split_phases(&w, &buckets, &admitted);
        let names: Vec<&str> = phases.iter().map(|p| p.phase).collect();
        assert_eq!(names, [BASELINE, RAMP, PEAK, AFTER, DRAIN]);

        let base = &phases[0];
        assert_eq!((base.from_s, base.to_s), (0.0, 2.5));
        assert_eq!(
            (base.offered, base.ok, base.shed, base.errors),
            (250, 250, 0, 0)
        );
        assert!((base.offered_per_s - 100.0).abs() < 1e-9);
        assert!((base.goodput_per_s - 100.0).abs() < 1e-9);
        assert_eq!(base.admitted_latency_us.p50, 1_000);

        let ramp = &phases[1];
        assert_eq!((ramp.from_s, ramp.to_s), (2.5, 3.5));
        assert_eq!((ramp.offered, ramp.ok, ramp.shed), (550, 500, 50));
        // No successes were added to the ramp's histogram.
        assert_eq!(ramp.admitted_latency_us.p99, 0);

        let peak = &phases[2];
        assert_eq!((peak.from_s, peak.to_s), (3.5, 6.0));
        assert_eq!((peak.offered, peak.ok, peak.shed), (2_500, 1_650, 850));
        assert!((peak.offered_per_s - 1_000.0).abs() < 1e-9);
        assert!((peak.goodput_per_s - 660.0).abs() < 1e-9);
        // From the histogram, not from the buckets' p99s (2 ms each).
        let p99 = peak.admitted_latency_us.p99;
        assert!((98_900..=99_100).contains(&p99), "{p99}");
        let p50 = peak.admitted_latency_us.p50;
        assert!((49_900..=50_100).contains(&p50), "{p50}");

        let after = &phases[3];
        assert_eq!((after.from_s, after.to_s), (6.0, 10.0));
        assert_eq!((after.offered, after.ok), (400, 400));

        // The drain spans every bucket after the schedule, nothing offered.
        let drain = &phases[4];
        assert_eq!((drain.from_s, drain.to_s), (10.0, 10.5));
        assert_eq!((drain.offered, drain.ok, drain.offered_per_s), (0, 3, 0.0));

        // The phases account for every bucket.
        let total = |f: fn(&Bucket) -> u64| buckets.iter().map(f).sum::<u64>();
        assert_eq!(phases.iter().map(|p| p.ok).sum::<u64>(), total(|b| b.ok));
        assert_eq!(
            phases.iter().map(|p| p.shed).sum::<u64>(),
            total(|b| b.shed)
        );
        assert_eq!(
            phases.iter().map(|p| p.offered).sum::<u64>(),
            total(|b| b.offered)
        );
    }

    #[test]
    fn a_quiet_drain_is_left_out_and_a_phase_without_buckets_reports_zeros() {
        let w = windows();
        let buckets: Vec<Bucket> = run(|_| MS).into_iter().take(100).collect();
        let phases = split_phases(&w, &buckets, &[]);
        assert_eq!(
            phases.len(),
            4,
            "no drain without answers after the schedule"
        );
        assert_eq!(phases[3].admitted_latency_us.p99, 0);
        // A run cut short: the after phase never started.
        let phases = split_phases(&w, &buckets[..50], &[]);
        let after = &phases[3];
        assert_eq!((after.from_s, after.to_s, after.offered), (6.0, 6.0, 0));
        assert_eq!((after.offered_per_s, after.goodput_per_s), (0.0, 0.0));
    }

    #[test]
    fn recovery_is_when_the_admitted_p99_got_back_under_the_slo_for_good() {
        let slo = 10 * MS;
        // Never above the SLO: recovered at once.
        assert_eq!(recovery_ms(&run(|_| 2 * MS), 6.0, slo), Some(0));
        // Over it through the peak and 1.3 s after it (buckets 61..=73).
        let slow_until = |last: u64| move |k: u64| if k <= last { 50 * MS } else { 2 * MS };
        assert_eq!(recovery_ms(&run(slow_until(73)), 6.0, slo), Some(1_300));
        // Exactly at the SLO counts as within it.
        assert_eq!(recovery_ms(&run(|_| slo), 6.0, slo), Some(0));
        // Back under it, then over it again (bucket 80): from the second time.
        let flap = |k: u64| if k <= 65 || k == 80 { 50 * MS } else { 2 * MS };
        assert_eq!(recovery_ms(&run(flap), 6.0, slo), Some(2_000));
        // Still over it in the drain: never recovered within the run.
        let late = |k: u64| if k == 101 { 50 * MS } else { 2 * MS };
        assert_eq!(recovery_ms(&run(late), 6.0, slo), None);
        // No bucket after the peak.
        assert_eq!(recovery_ms(&run(|_| MS)[..60], 6.0, slo), None);
    }

    #[test]
    fn buckets_without_answers_neither_recover_nor_break_a_recovery() {
        let slo = 10 * MS;
        // Over the SLO until 6.5 s, silent until 7 s, then fine.
        let mut b = run(|k| if k <= 65 { 50 * MS } else { 2 * MS });
        for x in &mut b[65..70] {
            *x = Bucket {
                end_ms: x.end_ms,
                ..Bucket::default()
            };
        }
        let b = windowed(b);
        assert_eq!(recovery_ms(&b, 6.0, slo), Some(1_000));
        // Silent buckets at the end keep a recovery that happened before them.
        let b = run(|_| 2 * MS);
        assert_eq!(recovery_ms(&b[..103], 6.0, slo), Some(0));
    }

    #[test]
    fn answers_without_successes_or_units_left_unsent_are_not_recovered() {
        let slo = 10 * MS;
        // Everything shed from 6 s to 7 s.
        let mut b = run(|_| 2 * MS);
        for x in &mut b[60..70] {
            (x.ok, x.shed, x.ok_p99_us) = (0, 10, 0);
        }
        assert_eq!(recovery_ms(&b, 6.0, slo), Some(1_000));
        // Units not sent at 8 s (the generator's in-flight bound was reached).
        let mut b = run(|_| 2 * MS);
        b[80].not_sent = 5;
        assert_eq!(recovery_ms(&b, 6.0, slo), Some(2_100));
    }

    #[test]
    fn the_spike_summary_names_its_phases_and_withholds_recovery_when_units_hung() {
        let w = windows();
        let b = run(|k| if k <= 70 { 50 * MS } else { 2 * MS });
        let admitted: Vec<Histogram<u64>> = (0..=w.len()).map(|_| new_histogram()).collect();
        let s = spike_summary(100.0, 1_000.0, &w, &b, &admitted, 10.0, 0);
        assert_eq!(s.recovery_ms, Some(1_000));
        assert_eq!((s.bucket_ms, s.slo_ms), (BUCKET_MS, 10.0));
        assert_eq!(s.phases.len(), 5);
        let hung = spike_summary(100.0, 1_000.0, &w, &b, &admitted, 10.0, 7);
        assert_eq!(hung.recovery_ms, None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["recovery_ms"], 1_000);
        assert_eq!(json["phases"][2]["phase"], "peak");
        assert_eq!(json["phases"][2]["shed"], 850);
        assert!(json["phases"][2]["admitted_latency_us"]["p99"].is_u64());
    }

    #[test]
    fn the_spike_table_has_a_row_per_phase_and_says_how_it_recovered() {
        let w = windows();
        let b = run(|k| if k <= 73 { 50 * MS } else { 2 * MS });
        let mut admitted: Vec<Histogram<u64>> = (0..=w.len()).map(|_| new_histogram()).collect();
        for (i, us) in [(0, 1_200), (1, 4_000), (2, 48_000), (3, 9_000), (4, 2_000)] {
            admitted[i].record_n(us, 100).unwrap();
        }
        let s = spike_summary(100.0, 1_000.0, &w, &b, &admitted, 10.0, 0);
        let text = spike_table(&s, 0);
        println!("{text}");
        assert!(text.contains("| baseline | 0.0-2.5 | 100 | 100 | 0 | 0 | 1.20 ms | 1.20 ms |"));
        assert!(text.contains("| peak | 3.5-6.0 | 1000 | 660 | 850 | 0 |"));
        assert!(text.contains("| drain | 10.0-10.5 | 0 | 6 | 0 | 0 |"));
        assert!(text.contains("recovery: 1300 ms after the peak ended"));
        let none = spike_summary(100.0, 1_000.0, &w, &b, &admitted, 10.0, 7);
        assert!(spike_table(&none, 7).contains("7 units were never answered"));
    }

    #[test]
    fn one_slow_answer_in_a_bucket_is_not_a_second_over_the_slo() {
        let rec = Recorder::new();
        let ok = |latency_us| Done {
            latency_us,
            result: Ok(()),
        };
        let mut buckets = Vec::new();
        for k in 1..=12u64 {
            // 20 answers of 2 ms per bucket; bucket 6 has one of 50 ms.
            let mut done: Vec<Done> = (0..20).map(|_| ok(2_000)).collect();
            if k == 6 {
                done[0] = ok(50_000);
            }
            rec.in_flight.fetch_add(20, Ordering::Relaxed);
            rec.record(&done);
            buckets.push(rec.rollover_bucket(k * BUCKET_MS).0);
        }
        let b6 = &buckets[5];
        assert!(b6.ok_p99_us >= 49_000, "{}", b6.ok_p99_us);
        assert!(b6.ok_p99_window_us <= 2_010, "{}", b6.ok_p99_window_us);
        assert_eq!(b6.window_ok, 120);
        assert_eq!(buckets[11].window_ok, 200);
        // With the peak ending at 0.3 s, the run never left the SLO.
        assert_eq!(recovery_ms(&buckets, 0.3, 10_000), Some(0));
    }

    #[test]
    fn buckets_count_offered_and_unsent_units_and_the_p99_of_successes_only() {
        let rec = Recorder::new();
        rec.scheduled.fetch_add(12, Ordering::Relaxed);
        rec.backlog_dropped.fetch_add(2, Ordering::Relaxed);
        rec.in_flight.fetch_add(10, Ordering::Relaxed);
        let mut done: Vec<Done> = (1..=8)
            .map(|i| Done {
                latency_us: i * 1_000,
                result: Ok(()),
            })
            .collect();
        done.push(Done {
            latency_us: 900_000,
            result: Err(OpError::refused(CODE_OVERLOADED)),
        });
        done.push(Done {
            latency_us: 5_000_000,
            result: Err(OpError::unknown("timeout")),
        });
        rec.record(&done);
        let (b, hist) = rec.rollover_bucket(100);
        assert_eq!(
            (b.end_ms, b.offered, b.ok, b.shed, b.errors, b.not_sent),
            (100, 12, 8, 1, 1, 2)
        );
        assert_eq!(hist.len(), 8);
        assert!((7_990..=8_010).contains(&b.ok_p99_us), "{}", b.ok_p99_us);
        // The next bucket starts from nothing.
        rec.scheduled.fetch_add(3, Ordering::Relaxed);
        let (b, hist) = rec.rollover_bucket(200);
        assert_eq!((b.offered, b.ok, b.not_sent, b.ok_p99_us), (3, 0, 0, 0));
        assert!(hist.is_empty());
        // The per-second numbers still see every answer.
        let (s, _) = rec.rollover(1, 0.0, 0.0);
        assert_eq!((s.ok, s.shed, s.errors), (8, 1, 1));
    }
}

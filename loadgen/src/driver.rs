//! Running a scenario: the open-loop schedule (and the closed loop), and the
//! reporter (per-second lines, `BUCKET_MS` buckets, per-phase histograms).
//!
//! Open loop: a scheduler wakes every `TICK`, works out how many units the
//! rate profile made due since its last wake, and hands them to a batch task
//! with each unit's intended start time (unit k of a constant rate r is due
//! at k / r). A unit's latency runs from that intended time to its last
//! answer, so a stalled target or a late scheduler shows up in the numbers
//! instead of slowing the schedule down (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use tokio::task::JoinSet;

use crate::cpu::CpuMeter;
use crate::limits::{
    BUCKET_MS, BUCKETS_MAX, IN_FLIGHT_UNITS_MAX, SECONDS_MAX, TICK, UNITS_PER_BATCH_MAX,
};
use crate::stats::{
    AFTER, BASELINE, Bucket, Done, PEAK, PhaseWindow, RAMP, Recorder, Second, micros_between,
    new_histogram, phase_of,
};
use crate::target::{Binding, CartReq, CheckoutReq, OpError, ReserveReq};
use crate::verify::Ledger;
use crate::workload::{Catalog, Generator, KeyDist, Line, Scenario, Unit};

/// Longest wait for answers after the schedule ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What every batch task needs.
pub struct Ctx<B> {
    /// The target.
    pub binding: Arc<B>,
    /// The catalogue the keys come from.
    pub catalog: Arc<Catalog>,
    /// What to run.
    pub scenario: Scenario,
    /// How keys are drawn.
    pub dist: KeyDist,
    /// What the run was told, for `--verify`.
    pub ledger: Arc<Ledger>,
}

/// The rate over time.
#[derive(Debug, Clone, Copy)]
pub enum Profile {
    /// The same rate throughout.
    Constant(f64),
    /// `base` for the first quarter, a ramp to `base * factor` over the next
    /// tenth, the peak held for a quarter, then straight back to `base`.
    Spike {
        /// Baseline rate.
        base: f64,
        /// Peak / baseline.
        factor: f64,
        /// Run length in seconds.
        duration_s: f64,
    },
}

/// Fractions of a spike run: the ramp starts, the peak starts, the peak ends.
const SPIKE_RAMP_AT: f64 = 0.25;
const SPIKE_PEAK_AT: f64 = 0.35;
const SPIKE_FALL_AT: f64 = 0.60;

impl Profile {
    /// The scheduled rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            Profile::Constant(r) => r,
            Profile::Spike {
                base,
                factor,
                duration_s,
            } => {
                let x = t / duration_s.max(1e-9);
                if !(SPIKE_RAMP_AT..SPIKE_FALL_AT).contains(&x) {
                    base
                } else if x < SPIKE_PEAK_AT {
                    let f = (x - SPIKE_RAMP_AT) / (SPIKE_PEAK_AT - SPIKE_RAMP_AT);
                    base + f * (base * factor - base)
                } else {
                    base * factor
                }
            }
        }
    }

    /// The phases of a spike (baseline, ramp, peak, after), in order and
    /// contiguous from 0 to the run's end; none for a constant rate.
    pub fn phases(&self) -> Vec<PhaseWindow> {
        match *self {
            Profile::Spike { duration_s, .. } => {
                let at = |x: f64| x * duration_s;
                vec![
                    PhaseWindow {
                        name: BASELINE,
                        from_s: 0.0,
                        to_s: at(SPIKE_RAMP_AT),
                    },
                    PhaseWindow {
                        name: RAMP,
                        from_s: at(SPIKE_RAMP_AT),
                        to_s: at(SPIKE_PEAK_AT),
                    },
                    PhaseWindow {
                        name: PEAK,
                        from_s: at(SPIKE_PEAK_AT),
                        to_s: at(SPIKE_FALL_AT),
                    },
                    PhaseWindow {
                        name: AFTER,
                        from_s: at(SPIKE_FALL_AT),
                        to_s: duration_s,
                    },
                ]
            }
            Profile::Constant(_) => Vec::new(),
        }
    }
}

/// How a run went, before it becomes a report.
pub struct RunOutcome {
    /// Every second's numbers.
    pub seconds: Vec<Second>,
    /// Every `BUCKET_MS` bucket's numbers.
    pub buckets: Vec<Bucket>,
    /// Latencies of the successes per phase of the profile (`Profile::phases`,
    /// then the drain); empty without phases.
    pub admitted_by_phase: Vec<Histogram<u64>>,
    /// Wall time from the start to the last answer (or the drain timeout).
    pub elapsed: Duration,
    /// Units scheduled.
    pub scheduled: u64,
    /// Units never answered (still in flight after the drain timeout).
    pub unanswered: u64,
    /// Ticks on which the scheduler woke more than 5 ms late.
    pub late_ticks: u64,
    /// Worst scheduler lateness.
    pub max_lag: Duration,
    /// The load generator's mean CPU (percent of one core).
    pub loadgen_cpu_pct: Option<f64>,
    /// The target's mean CPU, if its pid is known.
    pub target_cpu_pct: Option<f64>,
    /// How busy all of the machine's CPUs were (every process), percent.
    pub machine_busy_pct: Option<f64>,
}

/// Options of the per-second reporter.
#[derive(Clone)]
pub struct ReportOpts {
    /// Print a line per second to stderr.
    pub live: bool,
    /// Write each second's histogram to this interval log.
    pub hdr: Option<std::path::PathBuf>,
    /// The target's pid, for its CPU.
    pub target_pid: Option<u32>,
}

/// Runs `units` and answers, per unit, when it finished and how.
pub async fn execute<B: Binding>(
    ctx: &Ctx<B>,
    units: Vec<Unit>,
) -> Vec<(Instant, Result<(), OpError>)> {
    let n = units.len();
    let mut reserves = (Vec::new(), Vec::new());
    let mut abandons = (Vec::new(), Vec::new());
    let mut checkouts = (Vec::new(), Vec::new());
    let mut browses = (Vec::new(), Vec::new());
    let mut carts = (Vec::new(), Vec::new());
    for (i, u) in units.into_iter().enumerate() {
        match u {
            Unit::Reserve { user, lines } => {
                reserves.0.push(i);
                reserves.1.push(ReserveReq { user, lines });
            }
            Unit::ReserveRelease { user, lines } => {
                abandons.0.push(i);
                abandons.1.push(ReserveReq { user, lines });
            }
            Unit::Checkout { user, lines } => {
                checkouts.0.push(i);
                checkouts.1.push(CheckoutReq { user, lines });
            }
            Unit::Browse { sku } => {
                browses.0.push(i);
                browses.1.push(sku);
            }
            Unit::CartSet { user, sku, qty } => {
                carts.0.push(i);
                carts.1.push(CartReq { user, sku, qty });
            }
        }
    }
    let (r, a, c, b, k) = tokio::join!(
        reserve_confirm(ctx, reserves.1, false),
        reserve_confirm(ctx, abandons.1, true),
        checkout(ctx, checkouts.1),
        async {
            if browses.1.is_empty() {
                return Vec::new();
            }
            let res = ctx.binding.stock(browses.1).await;
            let t = Instant::now();
            res.into_iter().map(|r| (t, r.map(|_| ()))).collect()
        },
        async {
            if carts.1.is_empty() {
                return Vec::new();
            }
            let res = ctx.binding.cart_set(carts.1).await;
            let t = Instant::now();
            res.into_iter().map(|r| (t, r)).collect::<Vec<_>>()
        },
    );
    let mut out: Vec<Option<(Instant, Result<(), OpError>)>> = vec![None; n];
    for (idx, results) in [
        (reserves.0, r),
        (abandons.0, a),
        (checkouts.0, c),
        (browses.0, b),
        (carts.0, k),
    ] {
        for (i, res) in idx.into_iter().zip(results) {
            out[i] = Some(res);
        }
    }
    let now = Instant::now();
    out.into_iter()
        .map(|o| o.unwrap_or((now, Err(OpError::unknown("no_result")))))
        .collect()
}

/// Reserve, then confirm (or with `release`, give back) what was held: one
/// unit per request.
async fn reserve_confirm<B: Binding>(
    ctx: &Ctx<B>,
    reqs: Vec<ReserveReq>,
    release: bool,
) -> Vec<(Instant, Result<(), OpError>)> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let lines: Vec<Vec<Line>> = reqs.iter().map(|r| r.lines.clone()).collect();
    let held = ctx.binding.reserve(reqs).await;
    let t1 = Instant::now();
    let mut out: Vec<(Instant, Result<(), OpError>)> = Vec::with_capacity(held.len());
    let mut holds = Vec::new();
    let mut at = Vec::new();
    for (i, r) in held.into_iter().enumerate() {
        match r {
            Ok(h) => {
                ctx.ledger.held(&h.lines);
                at.push(i);
                holds.push(h);
                out.push((t1, Ok(())));
            }
            Err(e) => {
                if e.unknown_outcome {
                    ctx.ledger.unknown(&lines[i]);
                }
                out.push((t1, Err(e)));
            }
        }
    }
    if holds.is_empty() {
        return out;
    }
    let settled = if release {
        ctx.binding.release(&holds).await
    } else {
        ctx.binding.confirm(&holds).await
    };
    let t2 = Instant::now();
    for ((i, h), r) in at.into_iter().zip(&holds).zip(settled) {
        match &r {
            Ok(()) if release => ctx.ledger.released(&h.lines),
            Ok(()) => ctx.ledger.confirmed(&h.lines),
            Err(e) if e.unknown_outcome => ctx.ledger.unknown(&h.lines),
            Err(_) => {}
        }
        out[i] = (t2, r);
    }
    out
}

async fn checkout<B: Binding>(
    ctx: &Ctx<B>,
    reqs: Vec<CheckoutReq>,
) -> Vec<(Instant, Result<(), OpError>)> {
    if reqs.is_empty() {
        return Vec::new();
    }
    if !ctx.binding.supports_checkout() {
        // Without a checkout on this target, a checkout unit is reserve + confirm.
        let reqs = reqs
            .into_iter()
            .map(|c| ReserveReq {
                user: c.user,
                lines: c.lines,
            })
            .collect();
        return reserve_confirm(ctx, reqs, false).await;
    }
    let lines: Vec<Vec<Line>> = reqs.iter().map(|r| r.lines.clone()).collect();
    let res = ctx.binding.checkout(reqs).await;
    let t = Instant::now();
    res.into_iter()
        .zip(lines)
        .map(|(r, lines)| match r {
            Ok(order) => {
                ctx.ledger.checked_out(&lines, order);
                (t, Ok(()))
            }
            Err(e) => {
                if e.unknown_outcome {
                    ctx.ledger.unknown(&lines);
                }
                (t, Err(e))
            }
        })
        .collect()
}

/// Generates `n` units and runs them; latencies from `first + j * step`.
async fn run_batch<B: Binding>(
    ctx: Arc<Ctx<B>>,
    rec: Arc<Recorder>,
    n: usize,
    first: Instant,
    step: Duration,
    seed: u64,
) {
    let units: Vec<Unit> = {
        let mut g = Generator::new(&ctx.catalog, ctx.scenario, ctx.dist, seed);
        (0..n).map(|_| g.next_unit()).collect()
    };
    let results = execute(&ctx, units).await;
    let done: Vec<Done> = results
        .into_iter()
        .enumerate()
        .map(|(j, (t, result))| Done {
            latency_us: micros_between(first + step.mul_f64(j as f64), t),
            result,
        })
        .collect();
    rec.record(&done);
}

/// What the reporter kept.
struct Reported {
    seconds: Vec<Second>,
    buckets: Vec<Bucket>,
    admitted_by_phase: Vec<Histogram<u64>>,
    loadgen_cpu_pct: Option<f64>,
    target_cpu_pct: Option<f64>,
    machine_busy_pct: Option<f64>,
}

/// Buckets a run of `duration` can fill: the schedule, the drain, and the
/// reporter's wait for the last whole second.
fn buckets_for(duration: Duration) -> usize {
    let ms = (duration + DRAIN_TIMEOUT + Duration::from_secs(2)).as_millis();
    usize::try_from(ms / u128::from(BUCKET_MS))
        .unwrap_or(BUCKETS_MAX)
        .min(BUCKETS_MAX)
}

/// Until `stop` (then to the end of that second): closes a bucket every
/// `BUCKET_MS`, adding its successes' latencies to the histogram of its phase,
/// and every second prints and keeps a line and writes the `--hdr` interval.
async fn reporter(
    rec: Arc<Recorder>,
    profile: Option<Profile>,
    start: Instant,
    stop: Arc<AtomicBool>,
    opts: ReportOpts,
    buckets_max: usize,
) -> anyhow::Result<Reported> {
    let mut file = match &opts.hdr {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| anyhow::anyhow!("cannot create --hdr file {}: {e}", p.display()),
        )?)),
        None => None,
    };
    let mut ser = V2DeflateSerializer::new();
    let mut log = match file.as_mut() {
        Some(f) => Some(
            IntervalLogWriterBuilder::new()
                .with_base_time(SystemTime::now())
                .with_start_time(SystemTime::now())
                .begin_log_with(f, &mut ser)
                .map_err(|e| anyhow::anyhow!("--hdr: {e}"))?,
        ),
        None => None,
    };
    let machine_start = crate::cpu::machine_jiffies();
    let mut own = CpuMeter::start(None);
    let own_total = own;
    let target_total = opts.target_pid.and_then(|p| CpuMeter::start(Some(p)));
    let windows = profile.map(|p| p.phases()).unwrap_or_default();
    let mut admitted_by_phase: Vec<Histogram<u64>> = if windows.is_empty() {
        Vec::new()
    } else {
        (0..=windows.len()).map(|_| new_histogram()).collect()
    };
    let per_second = 1_000 / BUCKET_MS;
    let mut seconds = Vec::new();
    let mut buckets = Vec::new();
    let mut b = 1u64;
    loop {
        let end_ms = b * BUCKET_MS;
        tokio::time::sleep_until((start + Duration::from_millis(end_ms)).into()).await;
        let (bucket, ok_hist) = rec.rollover_bucket(end_ms);
        if let Some(h) = admitted_by_phase.get_mut(phase_of(&windows, end_ms)) {
            // Every histogram has the same bounds, so adding cannot fail.
            let _ = h.add(&ok_hist);
        }
        if buckets.len() < buckets_max {
            buckets.push(bucket);
        }
        if b.is_multiple_of(per_second) {
            let k = u32::try_from(b / per_second).unwrap_or(u32::MAX);
            let cpu = own.as_mut().and_then(CpuMeter::lap).unwrap_or(0.0);
            let rate = profile
                .map(|p| p.rate_at(f64::from(k) - 0.5))
                .unwrap_or(0.0);
            let (s, hist) = rec.rollover(k, rate, cpu);
            if opts.live {
                eprintln!("{}", crate::stats::live_line(&s));
            }
            if let Some(log) = log.as_mut() {
                let at = Duration::from_secs(u64::from(k - 1));
                log.write_histogram(&hist, at, Duration::from_secs(1), None)
                    .map_err(|e| anyhow::anyhow!("--hdr: {e:?}"))?;
            }
            if seconds.len() < SECONDS_MAX {
                seconds.push(s);
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        b += 1;
    }
    drop(log);
    if let Some(mut f) = file {
        use std::io::Write;
        f.flush()?;
    }
    let machine = machine_start
        .zip(crate::cpu::machine_jiffies())
        .map(|(a, b)| crate::cpu::machine_busy_pct(a, b));
    Ok(Reported {
        seconds,
        buckets,
        admitted_by_phase,
        loadgen_cpu_pct: own_total.and_then(|m| m.since_start()),
        target_cpu_pct: target_total.and_then(|m| m.since_start()),
        machine_busy_pct: machine,
    })
}

/// Runs the open-loop schedule for `duration`.
pub async fn open_loop<B: Binding>(
    ctx: Arc<Ctx<B>>,
    rec: Arc<Recorder>,
    profile: Profile,
    duration: Duration,
    opts: ReportOpts,
    seed: u64,
) -> anyhow::Result<RunOutcome> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let rep = tokio::spawn(reporter(
        rec.clone(),
        Some(profile),
        start,
        stop.clone(),
        opts,
        buckets_for(duration),
    ));
    let dur = duration.as_secs_f64();
    let mut tasks = JoinSet::new();
    let (mut due, mut sent, mut last) = (0.0f64, 0u64, 0.0f64);
    let (mut late_ticks, mut max_lag) = (0u64, Duration::ZERO);
    let mut tick = 0u64;
    let mut batch_seed = seed;
    loop {
        let now = Instant::now();
        let t = now.duration_since(start).as_secs_f64().min(dur);
        let r = profile.rate_at(last).max(0.0);
        let due_now = due + r * (t - last);
        let n = (due_now.floor() as u64).saturating_sub(sent);
        if n > 0 && r > 0.0 {
            // Unit k (1-based) is due when the schedule's integral reaches k.
            let first_s = last + ((sent + 1) as f64 - due) / r;
            let first = start + Duration::from_secs_f64(first_s.max(0.0));
            let step = Duration::from_secs_f64(1.0 / r);
            let in_flight = rec.in_flight.load(Ordering::Relaxed);
            let allowed = IN_FLIGHT_UNITS_MAX.saturating_sub(in_flight).min(n);
            rec.backlog_dropped
                .fetch_add(n - allowed, Ordering::Relaxed);
            rec.in_flight.fetch_add(allowed, Ordering::Relaxed);
            let mut offset = 0u64;
            while offset < allowed {
                let k = (allowed - offset).min(UNITS_PER_BATCH_MAX as u64);
                batch_seed = batch_seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                tasks.spawn(run_batch(
                    ctx.clone(),
                    rec.clone(),
                    k as usize,
                    first + step.mul_f64(offset as f64),
                    step,
                    batch_seed,
                ));
                offset += k;
            }
            sent += n;
            rec.scheduled.fetch_add(n, Ordering::Relaxed);
        }
        due = due_now;
        last = t;
        while tasks.try_join_next().is_some() {}
        if t >= dur {
            break;
        }
        tick += 1;
        let next = start + TICK.mul_f64(tick as f64);
        let woke = Instant::now();
        if woke > next + Duration::from_millis(5) {
            late_ticks += 1;
            max_lag = max_lag.max(woke - next);
            // Skip the ticks already missed: the next wake computes their units.
            tick = (woke.duration_since(start).as_secs_f64() / TICK.as_secs_f64()) as u64 + 1;
        }
        tokio::time::sleep_until((start + TICK.mul_f64(tick as f64)).into()).await;
    }
    let unanswered = drain(&mut tasks, &rec).await;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let r = rep.await??;
    Ok(RunOutcome {
        seconds: r.seconds,
        buckets: r.buckets,
        admitted_by_phase: r.admitted_by_phase,
        elapsed,
        scheduled: sent,
        unanswered,
        late_ticks,
        max_lag,
        loadgen_cpu_pct: r.loadgen_cpu_pct,
        target_cpu_pct: r.target_cpu_pct,
        machine_busy_pct: r.machine_busy_pct,
    })
}

async fn drain(tasks: &mut JoinSet<()>, rec: &Recorder) -> u64 {
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tasks.abort_all();
                break;
            }
        }
    }
    rec.in_flight.load(Ordering::Relaxed)
}

/// Runs `concurrency` workers, each sending `batch` units and waiting for
/// their answers before the next (closed loop: latency from each send).
pub async fn closed_loop<B: Binding>(
    ctx: Arc<Ctx<B>>,
    rec: Arc<Recorder>,
    concurrency: usize,
    batch: usize,
    duration: Duration,
    opts: ReportOpts,
    seed: u64,
) -> anyhow::Result<RunOutcome> {
    let start = Instant::now();
    let deadline = start + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let rep = tokio::spawn(reporter(
        rec.clone(),
        None,
        start,
        stop.clone(),
        opts,
        buckets_for(duration),
    ));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let (ctx, rec, sent) = (ctx.clone(), rec.clone(), sent.clone());
        tasks.spawn(async move {
            let mut g = Generator::new(
                &ctx.catalog,
                ctx.scenario,
                ctx.dist,
                seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            while Instant::now() < deadline {
                let units: Vec<Unit> = (0..batch).map(|_| g.next_unit()).collect();
                rec.in_flight.fetch_add(batch as u64, Ordering::Relaxed);
                rec.scheduled.fetch_add(batch as u64, Ordering::Relaxed);
                sent.fetch_add(batch as u64, Ordering::Relaxed);
                let t0 = Instant::now();
                let results = execute(&ctx, units).await;
                let done: Vec<Done> = results
                    .into_iter()
                    .map(|(t, result)| Done {
                        latency_us: micros_between(t0, t),
                        result,
                    })
                    .collect();
                rec.record(&done);
            }
        });
    }
    let unanswered = drain(&mut tasks, &rec).await;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let r = rep.await??;
    Ok(RunOutcome {
        seconds: r.seconds,
        buckets: r.buckets,
        admitted_by_phase: r.admitted_by_phase,
        elapsed,
        scheduled: sent.load(Ordering::Relaxed),
        unanswered,
        late_ticks: 0,
        max_lag: Duration::ZERO,
        loadgen_cpu_pct: r.loadgen_cpu_pct,
        target_cpu_pct: r.target_cpu_pct,
        machine_busy_pct: r.machine_busy_pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_has_four_contiguous_phases_at_the_rates_of_its_schedule() {
        let p = Profile::Spike {
            base: 100.0,
            factor: 10.0,
            duration_s: 40.0,
        };
        let w = p.phases();
        let names: Vec<&str> = w.iter().map(|x| x.name).collect();
        assert_eq!(names, [BASELINE, RAMP, PEAK, AFTER]);
        assert_eq!(w[0].from_s, 0.0);
        assert_eq!(w[3].to_s, 40.0);
        for pair in w.windows(2) {
            assert_eq!(pair[0].to_s, pair[1].from_s);
        }
        assert_eq!((w[2].from_s, w[2].to_s), (14.0, 24.0));
        let mid = |x: &PhaseWindow| (x.from_s + x.to_s) / 2.0;
        assert_eq!(p.rate_at(mid(&w[0])), 100.0);
        assert!((p.rate_at(mid(&w[1])) - 550.0).abs() < 1e-6);
        assert_eq!(p.rate_at(mid(&w[2])), 1_000.0);
        assert_eq!(p.rate_at(mid(&w[3])), 100.0);
        assert!(Profile::Constant(5.0).phases().is_empty());
    }

    #[test]
    fn the_bucket_bound_covers_the_run_and_its_drain() {
        let n = buckets_for(Duration::from_secs(40));
        let needed = (40 + DRAIN_TIMEOUT.as_secs() + 1) * 1_000 / BUCKET_MS;
        assert!(n as u64 >= needed, "{n}");
        assert_eq!(buckets_for(Duration::from_secs(10 * 86_400)), BUCKETS_MAX);
    }
}

//! `reserva-loadgen`: seeds a catalogue and drives reserva (or Redis,
//! PostgreSQL, the REST gateway) with an open-loop schedule, then reports
//! throughput, latency percentiles, errors, shed load and its own CPU.
//!
//! ```text
//! reserva-loadgen seed --target reserva://127.0.0.1:7700 --skus 100000 --warehouses 4 --stock 1000000000
//! reserva-loadgen run  --target reserva://127.0.0.1:7700 --scenario reserve --rate 100000 --duration 30s --verify
//! ```

mod cpu;
mod driver;
mod limits;
mod plot;
mod stats;
mod target;
mod verify;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::driver::{Ctx, Profile, ReportOpts, RunOutcome};
use crate::limits::{
    CONCURRENCY_MAX, CONNECTIONS_MAX, RATE_SEARCH_STEPS_MAX, SEED_CHUNK_SKUS, SEED_IN_FLIGHT,
};
use crate::stats::{Latency, Recorder, Report, SearchStep, SpikeSummary};
use crate::target::Binding;
use crate::verify::Ledger;
use crate::workload::{Catalog, KeyDist, Scenario};

/// Load generator for reserva and its peers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the catalogue's SKUs and stock on a target (batched, idempotent).
    Seed(SeedArgs),
    /// Run a scenario against a target and report.
    Run(Box<RunArgs>),
}

#[derive(Debug, Args, Clone)]
struct TargetArgs {
    /// reserva://HOST:PORT, http://HOST:PORT, redis://HOST:PORT or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    target: String,
    /// Connections: per core for reserva, in total for the others.
    #[arg(long)]
    connections: Option<usize>,
    /// Credential (reserva's HELLO; the gateway's bearer token).
    #[arg(long, default_value = "reserva-loadgen")]
    token: String,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Run only on these CPUs (comma-separated numbers, e.g. `1` or `2,3`):
    /// keeps the generator off the cores the target runs on.
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<Cpus>,
}

#[derive(Debug, Args, Clone)]
struct CatalogArgs {
    /// SKUs in the catalogue (`sku-0` ..).
    #[arg(long, default_value_t = 100_000)]
    skus: u32,
    /// Warehouses stocked per SKU (`wh-0` ..).
    #[arg(long, default_value_t = 4)]
    warehouses: u32,
    /// Units per SKU and warehouse.
    #[arg(long, default_value_t = 1_000_000_000)]
    stock: u64,
    /// Sellers the SKUs are spread over.
    #[arg(long, default_value_t = 1_000)]
    sellers: u32,
    /// Users that place work (`user-0` ..), spread over every order shard.
    #[arg(long, default_value_t = 1_000_000)]
    users: u32,
}

#[derive(Debug, Args)]
struct SeedArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// What to run.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Units per second (open loop): `N` or `N/s`, or per minute as `N/min`
    /// (`100000/min` is the platform's peak of orders); or `max` to search for
    /// the highest rate whose p99 stays under `--slo`. For `spike`, the
    /// baseline rate.
    #[arg(long, default_value = "1000")]
    rate: String,
    /// How long: `30s`, `5m`, or seconds.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Closed loop instead of a schedule: this many workers, each waiting for
    /// its answers before sending again (measures throughput, not latency
    /// under load; labelled CLOSED LOOP in every output).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Units each closed-loop worker sends at once (pipelined).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Zipfian key skew (e.g. 0.99); uniform without it.
    #[arg(long)]
    zipf: Option<f64>,
    /// p99 latency objective in ms for `--rate max`, and for `spike` the p99
    /// of admitted units its recovery time is measured against.
    #[arg(long, default_value_t = 10.0)]
    slo: f64,
    /// `spike`: peak rate / baseline rate.
    #[arg(long, default_value_t = 100.0)]
    spike_factor: f64,
    /// `--rate max`: the first rate tried.
    #[arg(long, default_value_t = 5_000.0)]
    search_start: f64,
    /// `--rate max`: seconds per step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    search_step: Duration,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput and latency over time as SVG (per second; offered
    /// load against goodput and shed per 100 ms; for `spike`, the p99 of
    /// admitted units against `--slo` with the phases and the recovery).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write an HdrHistogram interval log (one histogram per second).
    #[arg(long)]
    hdr: Option<PathBuf>,
    /// After the run, reconcile stock, reservations and orders; exit 2 on any
    /// oversell or lost acknowledged order.
    #[arg(long)]
    verify: bool,
    /// The target server's pid, to report its CPU.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Seed of the key draws (the same seed draws the same keys on every target).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// No per-second lines.
    #[arg(long)]
    quiet: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (30s, 5m, 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s:?} must be between 1 ms and 24 h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--cpus`: the CPUs the generator may run on.
#[derive(Debug, Clone)]
struct Cpus(Vec<usize>);

/// `--cpus`: CPU numbers, comma-separated, each below `CPUS_MAX`.
fn parse_cpus(s: &str) -> Result<Cpus, String> {
    let cpus = s
        .split(',')
        .map(|c| {
            c.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n < limits::CPUS_MAX)
                .ok_or_else(|| {
                    format!(
                        "--cpus {s:?}: {c:?} is not a CPU number below {}",
                        limits::CPUS_MAX
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cpus.is_empty() {
        return Err("--cpus needs at least one CPU".into());
    }
    Ok(Cpus(cpus))
}

/// Restricts this process (and every thread it starts later) to `cpus`.
fn pin_to(cpus: &[usize]) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (threads, cpus) = match &cli.command {
        Command::Seed(a) => (a.target.threads, a.target.cpus.clone()),
        Command::Run(a) => (a.target.threads, a.target.cpus.clone()),
    };
    let threads = threads.clamp(1, 64);
    if let Some(Cpus(cpus)) = &cpus
        && let Err(e) = pin_to(cpus)
    {
        eprintln!("reserva-loadgen: cannot run on CPUs {cpus:?}: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("reserva-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reserva-loadgen: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let (t, c) = match &cli.command {
        Command::Seed(a) => (a.target.clone(), a.catalog.clone()),
        Command::Run(a) => (a.target.clone(), a.catalog.clone()),
    };
    let (scheme, rest) = target::split_url(&t.target)?;
    let conns = t.connections.map(|c| c.clamp(1, CONNECTIONS_MAX));
    match scheme {
        "reserva" => {
            let b = target::reserva::Reserva::connect(rest, conns.unwrap_or(2), &t.token).await?;
            go(cli, Arc::new(b)).await
        }
        "redis" => {
            let b =
                target::redis::Redis::connect(&t.target, conns.unwrap_or(64), c.warehouses).await?;
            go(cli, Arc::new(b)).await
        }
        "postgres" | "postgresql" => {
            let b = target::postgres::Postgres::connect(&t.target, conns.unwrap_or(64)).await?;
            go(cli, Arc::new(b)).await
        }
        "http" => {
            let b =
                target::http::Http::new(&t.target, conns.unwrap_or(256), Some(t.token.clone()))?;
            go(cli, Arc::new(b)).await
        }
        other => bail!(
            "unknown target scheme {other:?}: use reserva://, http://, redis:// or postgres://"
        ),
    }
}

async fn go<B: Binding>(cli: Cli, binding: Arc<B>) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Seed(a) => {
            let c = &a.catalog;
            let catalog = Catalog::new(c.skus, c.warehouses, c.users, c.sellers, c.stock)?;
            seed(binding, &catalog).await?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run(a) => run(*a, binding).await,
    }
}

async fn seed<B: Binding>(binding: Arc<B>, catalog: &Catalog) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = ProgressBar::new(u64::from(catalog.skus));
    bar.set_style(
        ProgressStyle::with_template(
            "seeding {bar:40} {pos}/{len} SKUs {per_sec} eta {eta} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let chunks: Vec<std::ops::Range<u32>> = (0..catalog.skus)
        .step_by(SEED_CHUNK_SKUS)
        .map(|s| s..(s + SEED_CHUNK_SKUS as u32).min(catalog.skus))
        .collect();
    let mut results = futures_util::stream::iter(chunks)
        .map(|r| {
            let b = binding.clone();
            async move {
                let n = r.len() as u64;
                b.seed(catalog, r).await.map(|_| n)
            }
        })
        .buffer_unordered(SEED_IN_FLIGHT);
    while let Some(r) = results.next().await {
        bar.inc(r?);
    }
    bar.finish();
    eprintln!(
        "seeded {} SKUs x {} warehouses ({} units each) on {} in {:.1} s",
        catalog.skus,
        catalog.warehouses,
        catalog.stock,
        binding.kind(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run<B: Binding>(a: RunArgs, binding: Arc<B>) -> anyhow::Result<std::process::ExitCode> {
    let c = &a.catalog;
    let catalog = Arc::new(Catalog::new(
        c.skus,
        c.warehouses,
        c.users,
        c.sellers,
        c.stock,
    )?);
    let dist = match a.zipf {
        Some(s) => KeyDist::zipf(&catalog, s)?,
        None => KeyDist::Uniform,
    };
    if matches!(a.scenario, Scenario::Checkout) && !binding.supports_checkout() {
        bail!(
            "the {} target has no checkout operation in this build",
            binding.kind()
        );
    }
    let ledger = Arc::new(Ledger::new(catalog.skus));
    let ctx = Arc::new(Ctx {
        binding: binding.clone(),
        catalog: catalog.clone(),
        scenario: a.scenario,
        dist,
        ledger: ledger.clone(),
    });
    let mut verify_problems = Vec::new();
    let mut oversold_before = 0;
    let before = if a.verify {
        verify::check_catalogue(&*binding, &catalog).await?;
        eprintln!(
            "verify: reading the stock of {} SKUs before the run",
            catalog.skus
        );
        Some(
            verify::snapshot(
                &*binding,
                &catalog,
                &mut verify_problems,
                &mut oversold_before,
            )
            .await?,
        )
    } else {
        None
    };
    let opts = ReportOpts {
        live: !a.quiet,
        hdr: a.hdr.clone(),
        target_pid: a.target_pid,
    };
    let mut report = if let Some(conc) = a.concurrency {
        if conc == 0 || conc > CONCURRENCY_MAX || a.batch == 0 {
            bail!("--concurrency must be 1..={CONCURRENCY_MAX} and --batch at least 1");
        }
        let rec = Arc::new(Recorder::new());
        let out = driver::closed_loop(
            ctx.clone(),
            rec.clone(),
            conc,
            a.batch,
            a.duration,
            opts,
            a.seed,
        )
        .await?;
        let mut r = build_report(&a, binding.kind(), &rec, &out, 0.0, None);
        r.notes.insert(
            0,
            format!(
                "CLOSED LOOP: {conc} workers x {} units in flight; latency is from each send, \
                 not from a schedule (coordinated omission applies)",
                a.batch
            ),
        );
        r
    } else if a.rate == "max" {
        search_max(&a, ctx.clone(), opts).await?
    } else {
        let rate = parse_rate(&a.rate)?;
        let profile = match a.scenario {
            Scenario::Spike => Profile::Spike {
                base: rate,
                factor: a.spike_factor.max(1.0),
                duration_s: a.duration.as_secs_f64(),
            },
            _ => Profile::Constant(rate),
        };
        let rec = Arc::new(Recorder::new());
        let out =
            driver::open_loop(ctx.clone(), rec.clone(), profile, a.duration, opts, a.seed).await?;
        let mean_rate = mean_rate(profile, a.duration);
        build_report(&a, binding.kind(), &rec, &out, mean_rate, Some(profile))
    };
    let mut code = std::process::ExitCode::SUCCESS;
    if let Some(before) = before {
        eprintln!("verify: reconciling");
        let mut v = verify::reconcile(&*binding, &catalog, &before, &ledger).await?;
        v.oversold_rows += oversold_before;
        v.problems.splice(0..0, verify_problems);
        v.ok = v.ok && oversold_before == 0;
        if v.ok {
            eprintln!(
                "verify: OK: {} SKUs reconciled, {} units deducted by acknowledged operations \
                 ({} in operations with unknown outcome), {} acknowledged orders found",
                v.skus_checked, v.units_deducted_acked, v.units_unknown, v.orders_checked
            );
        } else {
            eprintln!("verify: FAILED");
            for p in &v.problems {
                eprintln!("verify:   {p}");
            }
            code = std::process::ExitCode::from(2);
        }
        report.verify = Some(v);
    }
    println!("{}", stats::final_table(&report));
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        plot::draw(&report, p)?;
    }
    Ok(code)
}

/// A rate in units per second from `N`, `N/s` or `N/min`.
fn parse_rate(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let (number, per_s) = if let Some(n) = t.strip_suffix("/min") {
        (n, 1.0 / 60.0)
    } else if let Some(n) = t.strip_suffix("/s") {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    number
        .trim()
        .replace('_', "")
        .parse::<f64>()
        .ok()
        .map(|r| r * per_s)
        .filter(|r| *r > 0.0 && r.is_finite())
        .with_context(|| {
            format!("--rate {text:?} is not a positive rate: give N, N/s, N/min or max")
        })
}

fn mean_rate(profile: Profile, duration: Duration) -> f64 {
    let d = duration.as_secs_f64();
    let steps = 1000;
    (0..steps)
        .map(|i| profile.rate_at(d * (i as f64 + 0.5) / steps as f64))
        .sum::<f64>()
        / steps as f64
}

fn build_report(
    a: &RunArgs,
    kind: &str,
    rec: &Recorder,
    out: &RunOutcome,
    target_rate: f64,
    profile: Option<Profile>,
) -> Report {
    let (hist, ok, shed, codes) = rec.totals();
    let mut errors: BTreeMap<String, u64> =
        codes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let dropped = rec
        .backlog_dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        errors.insert("loadgen_backlog".into(), dropped);
    }
    if out.unanswered > 0 {
        errors.insert("unanswered".into(), out.unanswered);
    }
    let answered = hist.len();
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    let own = out.loadgen_cpu_pct.unwrap_or(0.0);
    let threads = a.target.threads;
    let goodput = ok as f64 / secs;
    let mut notes = Vec::new();
    // The load generator is suspect when it used most of the cores it was
    // given, or its scheduler could not keep time.
    let cpu_bound = own >= 80.0 * threads as f64;
    let late = out.late_ticks > 0 && out.max_lag > Duration::from_millis(20);
    let behind = target_rate > 0.0 && goodput < 0.95 * target_rate;
    let bottleneck = behind && cpu_bound;
    if cpu_bound {
        notes.push(format!(
            "the load generator used {own:.0}% CPU with {threads} worker threads: it may be the bottleneck \
             (give it more --threads or another machine)"
        ));
    }
    if late {
        notes.push(format!(
            "the scheduler woke late {} times (worst {:.1} ms; a busy machine delays it): \
             latencies include that delay",
            out.late_ticks,
            out.max_lag.as_secs_f64() * 1e3
        ));
    }
    if behind && !bottleneck {
        notes.push(format!(
            "the target did not keep up: {goodput:.0} ok/s of {target_rate:.0}/s scheduled \
             (the load generator had CPU to spare)"
        ));
    }
    if dropped > 0 {
        notes.push(format!(
            "{dropped} units were not sent because {} were already in flight",
            limits::IN_FLIGHT_UNITS_MAX
        ));
    }
    if let Some(m) = out.machine_busy_pct
        && m >= 90.0
    {
        notes.push(format!(
            "the machine's CPUs were {m:.0}% busy (load generator, target and any other process): \
             every side was short of CPU, so these numbers are lower bounds"
        ));
    }
    if let Some(t) = out.target_cpu_pct {
        notes.push(format!("target process CPU: {t:.0}% of one core"));
    }
    // CPU time per answered unit: the share of a core used, times the run,
    // over the units answered in it.
    let per_unit = |pct: f64| pct / 100.0 * secs * 1e6 / answered.max(1) as f64;
    let loadgen_cpu_us_per_unit = per_unit(own);
    let target_cpu_us_per_unit = out.target_cpu_pct.map(per_unit);
    if answered > 0 {
        notes.push(format!(
            "CPU per answered unit: load generator {loadgen_cpu_us_per_unit:.1} µs{}",
            target_cpu_us_per_unit
                .map(|t| format!(", target {t:.1} µs"))
                .unwrap_or_default()
        ));
    }
    let spike = profile.and_then(|p| spike_summary(p, out, a.slo));
    Report {
        scenario: a.scenario.to_string(),
        target: a.target.target.clone(),
        target_kind: kind.to_owned(),
        mode: if a.concurrency.is_some() {
            "closed".into()
        } else {
            "open".into()
        },
        duration_s: secs,
        target_rate_per_s: target_rate,
        achieved_ops_per_s: answered as f64 / secs,
        goodput_per_s: goodput,
        scheduled: out.scheduled,
        ok,
        errors,
        shed,
        latency_us: Latency::of(&hist),
        admitted_latency_us: Latency::of(&rec.admitted()),
        loadgen_cpu_pct: own,
        loadgen_cpu_us_per_unit,
        target_cpu_us_per_unit,
        loadgen_threads: threads,
        target_cpu_pct: out.target_cpu_pct,
        machine_busy_pct: out.machine_busy_pct,
        loadgen_bottleneck: bottleneck,
        notes,
        spike,
        seconds: out.seconds.clone(),
        buckets: out.buckets.clone(),
        rate_search: Vec::new(),
        verify: None,
    }
}

fn spike_summary(profile: Profile, out: &RunOutcome, slo_ms: f64) -> Option<SpikeSummary> {
    let Profile::Spike { base, factor, .. } = profile else {
        return None;
    };
    Some(stats::spike_summary(
        base,
        base * factor,
        &profile.phases(),
        &out.buckets,
        &out.admitted_by_phase,
        slo_ms,
        out.unanswered,
    ))
}

/// `--rate max`: doubles the rate from `--search-start` while a step meets
/// the SLO (p99 under `--slo`, under 1% errors and shed, at least 95% of
/// the rate achieved), then bisects between the last pass and the first
/// failure. Reports the best passing step.
async fn search_max<B: Binding>(
    a: &RunArgs,
    ctx: Arc<Ctx<B>>,
    opts: ReportOpts,
) -> anyhow::Result<Report> {
    let slo_us = (a.slo * 1e3) as u64;
    let mut steps = Vec::new();
    let mut best: Option<Report> = None;
    let (mut lo, mut hi): (f64, Option<f64>) = (0.0, None);
    let mut rate = a.search_start.max(1.0);
    for _ in 0..RATE_SEARCH_STEPS_MAX {
        eprintln!("rate search: trying {rate:.0}/s for {:?}", a.search_step);
        let rec = Arc::new(Recorder::new());
        let profile = Profile::Constant(rate);
        let out = driver::open_loop(
            ctx.clone(),
            rec.clone(),
            profile,
            a.search_step,
            opts.clone(),
            a.seed,
        )
        .await?;
        let r = build_report(a, ctx.binding.kind(), &rec, &out, rate, Some(profile));
        let failed = r.shed + r.errors.values().sum::<u64>();
        let total = r.ok + failed;
        let passed = r.latency_us.p99 <= slo_us
            && (failed as f64) <= 0.01 * total.max(1) as f64
            && r.goodput_per_s >= 0.95 * rate;
        eprintln!(
            "rate search: {rate:.0}/s -> {:.0} ok/s, p99 {}, failed {failed}: {}",
            r.goodput_per_s,
            stats::fmt_us(r.latency_us.p99),
            if passed { "pass" } else { "fail" }
        );
        steps.push(SearchStep {
            rate_per_s: rate,
            goodput_per_s: r.goodput_per_s,
            p99_us: r.latency_us.p99,
            failed,
            passed,
        });
        if passed {
            lo = rate;
            best = Some(r);
        } else {
            hi = Some(rate);
        }
        rate = match hi {
            None => rate * 2.0,
            Some(h) => {
                if h - lo <= (0.05 * h).max(1.0) {
                    break;
                }
                (lo + h) / 2.0
            }
        };
        // Let the target settle between steps.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut report = match best {
        Some(b) => b,
        None => bail!(
            "--rate max: no rate from {:.0}/s met p99 <= {} ms; try a lower --search-start",
            a.search_start,
            a.slo
        ),
    };
    report.notes.insert(
        0,
        format!(
            "--rate max: the highest rate tried whose p99 stayed under {} ms with under 1% errors: {:.0}/s",
            a.slo, lo
        ),
    );
    report.rate_search = steps;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_are_per_second_or_per_minute() {
        assert_eq!(parse_rate("1667").unwrap(), 1667.0);
        assert_eq!(parse_rate("2500/s").unwrap(), 2500.0);
        assert_eq!(parse_rate("100000/min").unwrap(), 100_000.0 / 60.0);
        assert_eq!(parse_rate("100_000/min").unwrap(), 100_000.0 / 60.0);
        assert_eq!(parse_rate("0.5").unwrap(), 0.5);
    }

    #[test]
    fn bad_rates_are_refused_with_the_accepted_forms() {
        for bad in ["", "0", "-5", "abc", "10/h", "inf", "NaN/s", "/min"] {
            let e = parse_rate(bad).unwrap_err().to_string();
            assert!(e.contains("N/min"), "{bad}: {e}");
        }
    }
}

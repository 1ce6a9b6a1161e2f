//! `--plot FILE.svg`: throughput and latency percentiles over time, offered
//! load against goodput and shed finer than a second, and for `spike` the
//! p99 of admitted units against `--slo` with the phases and the recovery.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::limits::BUCKET_MS;
use crate::stats::{Bucket, Report, Second, SpikeSummary};

/// A named, coloured series of per-second values.
type Series = (&'static str, RGBColor, fn(&Second) -> f64);

/// A named, coloured series of per-bucket values.
type FineSeries = (&'static str, RGBColor, fn(&Bucket) -> u64);

/// Height of one panel (pixels).
const PANEL_H: u32 = 380;

/// Points drawn at most per line of the fine panels: longer runs merge
/// neighbouring buckets.
const POINTS_MAX: usize = 1_200;

const ORANGE: RGBColor = RGBColor(230, 140, 0);
const GREY: RGBColor = RGBColor(150, 150, 150);

/// Draws units per second (target, ok, shed, errors) and the per-second
/// p50 / p99 / p99.9 latency in milliseconds (log scale); then offered,
/// goodput, shed and errors per `BUCKET_MS` (units/s); and for `spike` the
/// p99 of admitted units per bucket against `--slo`, with the phases and the
/// recovery marked.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let s = &report.seconds;
    if s.is_empty() {
        anyhow::bail!("--plot: the run lasted less than a second, nothing to draw");
    }
    let (fine, width_ms) = downsample(&report.buckets, POINTS_MAX);
    let spike = report.spike.as_ref().filter(|_| !fine.is_empty());
    let panels = 2 + usize::from(!fine.is_empty()) + usize::from(spike.is_some());
    let height = PANEL_H * u32::try_from(panels).unwrap_or(4);
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((panels, 1));
    let (Some(top), Some(bottom)) = (areas.first(), areas.get(1)) else {
        anyhow::bail!("--plot: cannot lay out the panels");
    };
    let t_max = s.last().map(|x| x.t).unwrap_or(1).max(1);
    let y_max = s
        .iter()
        .map(|x| (x.ok + x.errors + x.shed).max(x.target_rate_per_s as u64))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let title = format!(
        "{} on {} ({} loop): units per second",
        report.scenario, report.target_kind, report.mode
    );
    let mut chart = ChartBuilder::on(top)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0u32..t_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("units/s")
        .draw()
        .map_err(plot_err)?;
    let series: [Series; 4] = [
        ("target", BLACK, |x| x.target_rate_per_s),
        ("ok", GREEN, |x| x.ok as f64),
        ("shed", MAGENTA, |x| x.shed as f64),
        ("errors", RED, |x| x.errors as f64),
    ];
    for (name, color, f) in series {
        if name == "target" && report.mode == "closed" {
            continue;
        }
        chart
            .draw_series(LineSeries::new(s.iter().map(|x| (x.t, f(x))), color))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    draw_legend(&mut chart)?;

    let l_max = s
        .iter()
        .map(|x| x.p999_us.max(x.p99_us))
        .max()
        .unwrap_or(1000) as f64
        / 1e3;
    let mut chart = ChartBuilder::on(bottom)
        .caption("latency per second (ms, log scale)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0u32..t_max, (0.01f64..(l_max * 2.0).max(0.1)).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    let lat: [Series; 3] = [
        ("p50", BLUE, |x| x.p50_us as f64),
        ("p99", ORANGE, |x| x.p99_us as f64),
        ("p99.9", RED, |x| x.p999_us as f64),
    ];
    for (name, color, f) in lat {
        chart
            .draw_series(LineSeries::new(
                s.iter()
                    .filter(|x| x.ok + x.errors + x.shed > 0)
                    .map(|x| (x.t, f(x).max(10.0) / 1e3)),
                color,
            ))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    draw_legend(&mut chart)?;
    if let Some(area) = areas.get(2) {
        draw_offered(area, report, &fine, width_ms)?;
    }
    if let (Some(area), Some(spike)) = (areas.get(3), spike) {
        draw_admitted_p99(area, spike, &fine, width_ms)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One point of the fine panels: merged buckets and the time they span.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// The merged buckets' counts; `ok_p99_us` is the worst of them.
    b: Bucket,
    /// Milliseconds the point spans.
    width_ms: u64,
}

impl Point {
    /// `n` units over the point's span, per second.
    fn per_s(&self, n: u64) -> f64 {
        n as f64 * 1e3 / self.width_ms.max(1) as f64
    }

    /// Where the point is drawn: the middle of its span (s).
    fn mid_s(&self) -> f64 {
        (self.b.end_ms as f64 - self.width_ms as f64 / 2.0) / 1e3
    }
}

/// Merges neighbouring buckets so that at most `max_points` remain: counts
/// are summed, `ok_p99_us` is the worst of the merged buckets. Returns the
/// points and the width most of them span (ms).
fn downsample(buckets: &[Bucket], max_points: usize) -> (Vec<Point>, u64) {
    let group = buckets.len().div_ceil(max_points.max(1)).max(1);
    let points = buckets
        .chunks(group)
        .map(|c| Point {
            b: c.iter().fold(Bucket::default(), |acc, b| Bucket {
                end_ms: b.end_ms,
                offered: acc.offered + b.offered,
                ok: acc.ok + b.ok,
                shed: acc.shed + b.shed,
                errors: acc.errors + b.errors,
                not_sent: acc.not_sent + b.not_sent,
                ok_p99_us: acc.ok_p99_us.max(b.ok_p99_us),
                window_ok: b.window_ok,
                ok_p99_window_us: acc.ok_p99_window_us.max(b.ok_p99_window_us),
            }),
            width_ms: BUCKET_MS * c.len() as u64,
        })
        .collect();
    (points, BUCKET_MS * group as u64)
}

/// Seconds of `ms` milliseconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1e3
}

/// "100 ms" or "1.5 s".
fn width_label(width_ms: u64) -> String {
    if width_ms < 1_000 {
        format!("{width_ms} ms")
    } else {
        format!("{:.1} s", secs(width_ms))
    }
}

/// Offered (scheduled or sent), goodput, shed and errors per point, in units/s.
fn draw_offered(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &Report,
    fine: &[Point],
    width_ms: u64,
) -> anyhow::Result<()> {
    let t_max = fine.last().map_or(1.0, |p| secs(p.b.end_ms)).max(0.1);
    let y_max = fine
        .iter()
        .map(|p| p.per_s(p.b.offered.max(p.b.answered() + p.b.not_sent)))
        .fold(1.0, f64::max)
        * 1.1;
    let title = format!(
        "offered vs goodput vs shed per {} (units/s)",
        width_label(width_ms)
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("units/s")
        .draw()
        .map_err(plot_err)?;
    if let Some(spike) = &report.spike {
        for p in spike.phases.iter().filter(|p| p.from_s > 0.0) {
            chart
                .draw_series(LineSeries::new([(p.from_s, 0.0), (p.from_s, y_max)], GREY))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(spike.phases.iter().map(|p| {
                Text::new(
                    p.phase,
                    (p.from_s + t_max / 200.0, y_max * 0.97),
                    ("sans-serif", 12),
                )
            }))
            .map_err(plot_err)?;
    }
    let offered = if report.mode == "closed" {
        "sent"
    } else {
        "offered (scheduled)"
    };
    let series: [FineSeries; 4] = [
        (offered, BLACK, |b| b.offered),
        ("goodput (ok)", GREEN, |b| b.ok),
        ("shed", MAGENTA, |b| b.shed),
        ("errors and not sent", RED, |b| b.errors + b.not_sent),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                fine.iter().map(|p| (p.mid_s(), p.per_s(f(&p.b)))),
                color,
            ))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    draw_legend(&mut chart)?;
    Ok(())
}

/// The p99 of admitted units per point against the SLO, with the phases and
/// the recovery marked.
fn draw_admitted_p99(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    spike: &SpikeSummary,
    fine: &[Point],
    width_ms: u64,
) -> anyhow::Result<()> {
    let t_max = fine.last().map_or(1.0, |p| secs(p.b.end_ms)).max(0.1);
    let worst = fine.iter().map(|p| p.b.ok_p99_us).max().unwrap_or(0) as f64 / 1e3;
    let y_max = (worst.max(spike.slo_ms) * 2.0).max(0.1);
    let y_min = 0.01f64;
    let peak_end = spike
        .phases
        .iter()
        .find(|p| p.phase == crate::stats::PEAK)
        .map(|p| p.to_s);
    let recovery = match (spike.recovery_ms, peak_end) {
        (Some(ms), Some(_)) => format!("recovered {ms} ms after the peak"),
        _ => "no recovery within the run".to_owned(),
    };
    let title = format!(
        "p99 of admitted units per {}{} (ms, log scale) vs SLO {} ms: {recovery}",
        width_label(width_ms),
        if width_ms > BUCKET_MS {
            ", worst bucket"
        } else {
            ""
        },
        spike.slo_ms
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(plot_err)?;
    for p in spike.phases.iter().filter(|p| p.from_s > 0.0) {
        chart
            .draw_series(LineSeries::new(
                [(p.from_s, y_min), (p.from_s, y_max)],
                GREY,
            ))
            .map_err(plot_err)?;
    }
    chart
        .draw_series(spike.phases.iter().map(|p| {
            Text::new(
                p.phase,
                (p.from_s + t_max / 200.0, y_max * 0.8),
                ("sans-serif", 12),
            )
        }))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            fine.iter()
                .filter(|p| p.b.ok > 0)
                .map(|p| (p.mid_s(), (p.b.ok_p99_us as f64 / 1e3).max(y_min))),
            ORANGE,
        ))
        .map_err(plot_err)?
        .label("p99 of admitted units")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE));
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, spike.slo_ms), (t_max, spike.slo_ms)],
            6,
            4,
            RED.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("SLO (--slo)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    if let (Some(ms), Some(end)) = (spike.recovery_ms, peak_end) {
        let at = end + secs(ms);
        chart
            .draw_series(LineSeries::new(
                [(at, y_min), (at, y_max)],
                GREEN.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label("recovered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    }
    draw_legend(&mut chart)?;
    Ok(())
}

/// Draws the legend of `chart`'s labelled series.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("--plot: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(k: u64, ok: u64, p99: u64) -> Bucket {
        Bucket {
            end_ms: k * BUCKET_MS,
            offered: 10,
            ok,
            shed: 1,
            errors: 0,
            not_sent: 0,
            ok_p99_us: p99,
            window_ok: ok,
            ok_p99_window_us: p99,
        }
    }

    #[test]
    fn downsampling_sums_counts_keeps_the_worst_p99_and_widens_the_points() {
        let b: Vec<Bucket> = (1..=10).map(|k| bucket(k, k, k * 100)).collect();
        let (same, w) = downsample(&b, 20);
        assert_eq!(w, BUCKET_MS);
        assert_eq!(same.iter().map(|p| p.b).collect::<Vec<_>>(), b);
        assert_eq!(same[0].per_s(10), 100.0);
        let (merged, w) = downsample(&b, 4);
        assert_eq!(w, 3 * BUCKET_MS);
        assert_eq!(merged.len(), 4);
        let first = merged[0];
        assert_eq!(first.b.end_ms, 3 * BUCKET_MS);
        assert_eq!((first.b.offered, first.b.ok, first.b.shed), (30, 6, 3));
        assert_eq!(first.b.ok_p99_us, 300);
        assert_eq!(first.per_s(first.b.offered), 100.0);
        assert!((first.mid_s() - 0.15).abs() < 1e-9);
        // The last point holds the one bucket left over, and spans only it.
        let last = merged[3];
        assert_eq!(
            (last.b.end_ms, last.b.ok, last.width_ms),
            (1_000, 10, BUCKET_MS)
        );
        assert_eq!(last.per_s(last.b.offered), 100.0);
        assert!((last.mid_s() - 0.95).abs() < 1e-9);
        assert!(downsample(&[], 10).0.is_empty());
    }
}

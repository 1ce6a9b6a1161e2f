//! `--plot FILE.svg`: throughput and latency percentiles over time.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::{Report, Second};

/// A named, coloured series of per-second values.
type Series = (&'static str, RGBColor, fn(&Second) -> f64);

/// Draws two panels: units per second (target, ok, shed, errors) and the
/// per-second p50 / p99 / p99.9 latency in milliseconds (log scale).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let s = &report.seconds;
    if s.is_empty() {
        anyhow::bail!("--plot: the run lasted less than a second, nothing to draw");
    }
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(380);
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
    let mut chart = ChartBuilder::on(&top)
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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;

    let l_max = s
        .iter()
        .map(|x| x.p999_us.max(x.p99_us))
        .max()
        .unwrap_or(1000) as f64
        / 1e3;
    let mut chart = ChartBuilder::on(&bottom)
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
        ("p99", RGBColor(230, 140, 0), |x| x.p99_us as f64),
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
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("--plot: {e:?}")
}

//! `plot`: latency against offered rate, one line per server (p50 dashed, p99 solid), as
//! SVG, from open-loop `push` results.

use std::path::PathBuf;

use plotters::prelude::*;

use crate::Error;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub inputs: Vec<PathBuf>,
    #[arg(long, default_value = "latency.svg")]
    pub output: PathBuf,
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

pub fn run(a: Args) -> Result<(), Error> {
    let rows = crate::report::load(&a.inputs)?;
    let open: Vec<_> = rows.iter().filter(|r| r["workload"] == "push" && r["mode"] == "open").collect();
    let mut servers: Vec<String> = Vec::new();
    for r in &open {
        let s = r["server"].as_str().unwrap_or("?").to_owned();
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    // Per server: (rate, p50 ms, p99 ms), medians over repeats.
    let mut series = Vec::new();
    let (mut max_rate, mut max_ms, mut min_ms) = (1.0f64, 0.01f64, f64::MAX);
    for s in &servers {
        let mut rates: Vec<f64> = open
            .iter()
            .filter(|r| r["server"] == s.as_str())
            .filter_map(|r| r["offered_rate"].as_f64())
            .collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        rates.dedup();
        let mut pts = Vec::new();
        for rate in rates {
            let at: Vec<_> = open
                .iter()
                .filter(|r| r["server"] == s.as_str() && r["offered_rate"].as_f64() == Some(rate))
                .collect();
            let med = |q: &str| {
                let mut v: Vec<f64> = at.iter().filter_map(|r| r["latency_us"][q].as_f64()).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v.get(v.len() / 2).map(|us| us / 1000.0)
            };
            if let (Some(p50), Some(p99)) = (med("p50"), med("p99")) {
                max_rate = max_rate.max(rate);
                max_ms = max_ms.max(p99);
                min_ms = min_ms.min(p50);
                pts.push((rate, p50, p99));
            }
        }
        series.push((s.clone(), pts));
    }
    let root = SVGBackend::new(&a.output, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("POST → frame latency vs offered rate (p50 dashed, p99 solid)", ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_rate * 1.05, (min_ms.min(0.05) * 0.8..max_ms * 1.5).log_scale())?;
    chart.configure_mesh().x_desc("offered rate (messages/s)").y_desc("latency (ms, log scale)").draw()?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), c.stroke_width(2)))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 3, c.filled())))?;
        chart.draw_series(DashedLineSeries::new(pts.iter().map(|p| (p.0, p.1)), 6, 4, c.stroke_width(1)))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}

/// A process's memory over time, as SVG: one line per process (a restart starts a new
/// one), with moments worth seeing (a kill, a restart) as labelled vertical lines.
///
/// `segments` hold (seconds, MiB) points.
pub fn rss_svg(
    output: &std::path::Path,
    caption: &str,
    segments: &[Vec<(f64, f64)>],
    marks: &[(f64, String)],
) -> Result<(), Error> {
    let pts = segments.iter().flatten();
    let max_t = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let max_mib = pts.map(|p| p.1).fold(1.0f64, f64::max);
    let root = SVGBackend::new(output, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_t * 1.02, 0f64..max_mib * 1.25)?;
    chart.configure_mesh().x_desc("seconds since the server first started").y_desc("RSS (MiB)").draw()?;
    for (i, seg) in segments.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(seg.iter().copied(), c.stroke_width(2)))?
            .label(if i == 0 {
                "first process".to_owned()
            } else {
                format!("process {} (after restart)", i + 1)
            })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    for (i, (t, label)) in marks.iter().enumerate() {
        let top = max_mib * 1.2;
        chart.draw_series(DashedLineSeries::new([(*t, 0.0), (*t, top)], 5, 4, BLACK.stroke_width(1)))?;
        // Marks close in time (a kill, its restart) would print over each other: step down.
        let at = (*t, top * (1.0 - 0.07 * i as f64));
        chart.draw_series(std::iter::once(Text::new(format!(" {label}"), at, ("sans-serif", 13))))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

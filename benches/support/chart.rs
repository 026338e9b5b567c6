//! The benchmarks' line chart (SVG, with plotters): writes accepted per
//! window, one line per series, and horizontal lines for budgets. Shared by
//! the throughput benchmark and the shared-budget scenario.

use plotters::prelude::*;

/// Draws `series` (values per 20 s window) and `lines` (constant levels)
/// into an SVG at `path`; a drawing error is reported, not raised.
pub fn chart(path: &str, title: &str, series: &[(&str, &[usize], RGBColor)], lines: &[(&str, usize, RGBColor)]) {
    let longest = series.iter().map(|(_, s, _)| s.len()).max().unwrap_or(1).max(2);
    let top = series
        .iter()
        .flat_map(|(_, s, _)| s.iter().copied())
        .chain(lines.iter().map(|(_, v, _)| *v))
        .max()
        .unwrap_or(1);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0usize..longest, 0usize..(top * 11 / 10))?;
        c.configure_mesh()
            .x_desc("20 s window")
            .y_desc("writes accepted by Graph")
            .draw()?;
        for (name, value, color) in lines {
            let color = *color;
            c.draw_series(LineSeries::new([(0, *value), (longest, *value)], color.stroke_width(1)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        for (name, data, color) in series {
            let color = *color;
            c.draw_series(LineSeries::new(
                data.iter().enumerate().map(|(i, v)| (i, *v)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    if let Err(e) = draw() {
        eprintln!("chart {path}: {e}");
    }
}

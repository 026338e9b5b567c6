//! Inline SVG charts: no script, no external resource, colours from the
//! page's stylesheet (classes only, so the page's CSP needs no inline
//! styles). Labels and counts are spliced as text, escaped like the rest.

use maud::{Markup, html};

use super::document::Pace;

/// One bar: its label, count and colour class.
pub struct Bar<'a> {
    /// The label (shown as text).
    pub label: &'a str,
    /// The count.
    pub count: u64,
    /// A class from [`super::style_class`].
    pub class: &'static str,
}

const WIDTH: u32 = 640;
const LABEL_WIDTH: u32 = 170;
const ROW: u32 = 26;

/// A horizontal bar chart, one row per bar, with the count after each bar.
pub fn bars(title: &str, bars: &[Bar<'_>]) -> Markup {
    let max = bars.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let plot = WIDTH - LABEL_WIDTH - 60;
    let height = ROW * bars.len().max(1) as u32 + 8;
    html! {
        figure.chart {
            figcaption { (title) }
            svg role="img" aria-label=(title) width=(WIDTH) height=(height) viewBox=(format!("0 0 {WIDTH} {height}")) xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                @if bars.is_empty() {
                    text x="0" y="18" class="muted" { "nothing to show" }
                }
                @for (i, b) in bars.iter().enumerate() {
                    @let y = 4 + i as u32 * ROW;
                    @let w = ((b.count as f64 / max as f64) * plot as f64).round().max(if b.count > 0 { 2.0 } else { 0.0 }) as u32;
                    text x=(LABEL_WIDTH - 8) y=(y + 16) text-anchor="end" { (b.label) }
                    rect class=(b.class) x=(LABEL_WIDTH) y=(y + 3) width=(w) height=(ROW - 8) rx="2" {}
                    text x=(LABEL_WIDTH + w + 6) y=(y + 16) class="count" { (b.count) }
                }
            }
        }
    }
}

/// Writes per throttle window as columns, with the budget as a dashed line.
/// Past [`super::document::PACE_COLUMNS`] windows, each column is the
/// busiest of several neighbouring windows, which the caption says.
pub fn windows(pace: &Pace, budget: u32, window_ms: u64) -> Markup {
    let per = pace.per_column.max(1);
    let caption = if per > 1 {
        format!(
            "Writes per throttle window ({}) against the budget ({budget}); {} windows, each column the busiest of {per}",
            seconds(window_ms),
            pace.windows
        )
    } else {
        format!(
            "Writes per throttle window ({}) against the budget ({budget})",
            seconds(window_ms)
        )
    };
    let writes = &pace.columns;
    if writes.is_empty() {
        return html! {
            figure.chart {
                figcaption { (caption) }
                p.muted { "No writes were sent in this run (a dry run, or nothing to initiate), or the result does not record them." }
            }
        };
    }
    let (left, top, plot_h, bottom) = (44u32, 10u32, 180u32, 28u32);
    let n = writes.len() as u32;
    let col = (((WIDTH - left - 10) / n).clamp(3, 28)) as f64;
    let width = left + (col * n as f64).ceil() as u32 + 10;
    let most = writes.iter().copied().max().unwrap_or(0);
    let scale_max = (budget.max(most) as f64 * 1.1).max(1.0);
    let y_of = |v: f64| top as f64 + plot_h as f64 * (1.0 - v / scale_max);
    let budget_y = y_of(budget as f64);
    // A time label every few columns, at least 48 px apart.
    let step = (48.0 / col).ceil().max(1.0) as usize;
    let height = top + plot_h + bottom;
    let span = window_ms.saturating_mul(per);
    html! {
        figure.chart {
            figcaption { (caption) }
            svg role="img" aria-label=(caption) width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) xmlns="http://www.w3.org/2000/svg" {
                title { (caption) }
                line class="axis" x1=(left) y1=(top) x2=(left) y2=(top + plot_h) {}
                line class="axis" x1=(left) y1=(top + plot_h) x2=(width - 10) y2=(top + plot_h) {}
                text x=(left - 4) y=(top + plot_h) text-anchor="end" class="tick" { "0" }
                @for (i, &w) in writes.iter().enumerate() {
                    @let x = left as f64 + col * i as f64;
                    @let y = y_of(w as f64);
                    rect class=(if w > budget { "over" } else { "c-initiated" }) x=(fmt(x + 1.0)) y=(fmt(y)) width=(fmt((col - 2.0).max(1.0))) height=(fmt(top as f64 + plot_h as f64 - y)) {
                        title {
                            @if per > 1 { (format!("windows {} to {}: at most {w} writes", i as u64 * per + 1, ((i as u64 + 1) * per).min(pace.windows))) }
                            @else { (format!("window {}: {w} writes", i + 1)) }
                        }
                    }
                    @if i % step == 0 {
                        text x=(fmt(x + col / 2.0)) y=(top + plot_h + 16) text-anchor="middle" class="tick" { (seconds(span.saturating_mul(i as u64))) }
                    }
                }
                line class="budget" x1=(left) y1=(fmt(budget_y)) x2=(width - 10) y2=(fmt(budget_y)) {}
                text x=(left - 4) y=(fmt(budget_y + 4.0)) text-anchor="end" class="tick" { (budget) }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// A duration in milliseconds as a short label: `20 s`, `1.5 s`, `4 min`.
pub fn seconds(ms: u64) -> String {
    if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_text_and_bars_scale_to_the_largest_count() {
        let svg = bars(
            "t<b>",
            &[
                Bar {
                    label: "<script>x</script>",
                    count: 10,
                    class: "c-failed",
                },
                Bar {
                    label: "b",
                    count: 5,
                    class: "c-initiated",
                },
            ],
        )
        .into_string();
        assert!(svg.contains("&lt;script&gt;x&lt;/script&gt;") && !svg.contains("<script>"));
        assert!(svg.contains("t&lt;b&gt;"));
        let plot = WIDTH - LABEL_WIDTH - 60;
        assert!(svg.contains(&format!("width=\"{plot}\"")), "{svg}");
        assert!(svg.contains(&format!("width=\"{}\"", plot / 2)), "{svg}");
    }

    #[test]
    fn windows_over_the_budget_are_marked_and_the_budget_line_is_drawn() {
        let svg = windows(&Pace::of([190, 200, 12]), 190, 20_000).into_string();
        assert_eq!(svg.matches("class=\"over\"").count(), 1);
        assert_eq!(svg.matches("class=\"c-initiated\"").count(), 2);
        assert!(svg.contains("class=\"budget\""));
        assert!(svg.contains("window 2: 200 writes"));
        assert!(svg.contains("(20 s)") && svg.contains(">40 s<"));
        assert!(windows(&Pace::of([]), 190, 20_000).into_string().contains("No writes"));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(20_000), "20 s");
        assert_eq!(seconds(1_500), "1.5 s");
        assert_eq!(seconds(240_000), "4 min");
    }
}

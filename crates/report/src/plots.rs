//! Line charts drawn with plotters, each written as SVG (text laid out by the viewer) and
//! PNG (text drawn with the built-in bitmap font of `glyph_backend`), so no system font is
//! needed anywhere. Output is deterministic: the same figures give the same bytes.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::figures::{
    HeldOut, IterationFigures, Summary, EVAL_LOSS, RM_EVAL_ACCURACY, RM_TRAIN_ACCURACY, TRAIN_LOSS,
};
use crate::glyph_backend::GlyphBackend;
use crate::run_dir::Metrics;

/// Pixel size of every chart.
pub const SIZE: (u32, u32) = (720, 420);

/// Series colours, in order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, axis labels and its lines.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem of the outputs (`<stem>.svg`, `<stem>.png`).
    pub stem: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// A written chart: its stem, title and SVG text (for inlining in HTML).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub stem: String,
    pub title: String,
    pub svg: String,
}

/// Axis range with a margin; a flat or single-point range is widened so it has an extent.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {}: {e}", chart.stem);
    root.fill(&WHITE).map_err(err)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(points().map(|p| p.0));
    let (y0, y1) = range(points().map(|p| p.1));
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    // Steps and iterations are whole numbers: label only whole ticks, at most one per unit.
    let integer_x = points().all(|p| p.0.fract() == 0.0);
    let x_ticks = if integer_x {
        ((x1 - x0).floor() as usize + 1).clamp(2, 10)
    } else {
        10
    };
    let x_format = move |v: &f64| {
        if integer_x && v.fract().abs() > 1e-9 {
            String::new()
        } else {
            short(*v)
        }
    };
    ctx.configure_mesh()
        .x_labels(x_ticks)
        .light_line_style(RGBColor(238, 238, 238))
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .x_label_formatter(&x_format)
        .y_label_formatter(&|v| short(*v))
        .draw()
        .map_err(err)?;
    for (k, s) in chart.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        ctx.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        if pts.len() <= 30 {
            ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(err)?;
        }
    }
    if chart.series.len() > 1 {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Tick labels: few significant digits, no float noise.
fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes `<stem>.svg` and `<stem>.png` into `out_dir` (a folder being written
/// atomically as a whole) and returns the SVG text.
pub fn render(chart: &Chart, out_dir: &Path) -> Result<Rendered> {
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        chart,
    )?;
    let svg_path = out_dir.join(format!("{}.svg", chart.stem));
    std::fs::write(&svg_path, svg.as_bytes())
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = out_dir.join(format!("{}.png", chart.stem));
    draw(
        GlyphBackend::new(BitMapBackend::new(&png_path, SIZE)).into_drawing_area(),
        chart,
    )
    .with_context(|| format!("writing {}", png_path.display()))?;
    Ok(Rendered {
        stem: chart.stem.clone(),
        title: chart.title.clone(),
        svg,
    })
}

fn metric_series(m: &Metrics, names: &[&str], label: &str) -> Option<Series> {
    m.first_present(names).map(|n| Series {
        name: format!("{label} ({n})"),
        points: m.series(n),
    })
}

/// Reward-model charts: loss and accuracy over steps (only the metrics present).
pub fn rm_charts(rm: &Metrics) -> Vec<Chart> {
    let mut out = Vec::new();
    let loss: Vec<Series> = [
        metric_series(rm, &TRAIN_LOSS, "train"),
        metric_series(rm, &EVAL_LOSS, "eval"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !loss.is_empty() {
        out.push(Chart {
            stem: "rm_loss".into(),
            title: "Reward model: loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: loss,
        });
    }
    let acc: Vec<Series> = [
        metric_series(rm, &RM_TRAIN_ACCURACY, "train"),
        metric_series(rm, &RM_EVAL_ACCURACY, "eval"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !acc.is_empty() {
        out.push(Chart {
            stem: "rm_accuracy".into(),
            title: "Reward model: pairwise accuracy".into(),
            x_label: "step".into(),
            y_label: "accuracy".into(),
            series: acc,
        });
    }
    out
}

/// Per-iteration charts: proxy reward, gold reward, KL to SFT (against the budget),
/// response length, each on the iteration's training rollouts and, where evaluated, on the
/// held-out prompts; and the reward-vs-KL frontier on the held-out prompts.
pub fn iteration_charts(s: &Summary) -> Vec<Chart> {
    let its = &s.iterations;
    type Pick = fn(&IterationFigures) -> Option<f64>;
    type PickHeld = fn(&HeldOut) -> Option<f64>;
    let specs: [(&str, &str, &str, Pick, Option<PickHeld>); 4] = [
        (
            "proxy_reward",
            "Proxy reward (reward model)",
            "mean reward",
            |f| f.proxy_reward,
            Some(|h| h.proxy_reward),
        ),
        (
            "gold_reward",
            "Gold reward (oracle, never trained on)",
            "mean gold",
            |f| f.gold_reward,
            Some(|h| h.gold_reward),
        ),
        (
            "kl_to_sft",
            "KL to the SFT model",
            "mean sum_t (logp - ref logp)",
            |f| f.kl_to_sft,
            Some(|h| h.kl_to_sft),
        ),
        (
            "response_length",
            "Response length",
            "mean tokens",
            |f| f.response_length,
            None,
        ),
    ];
    let at = |pick: &dyn Fn(&IterationFigures) -> Option<f64>| -> Vec<(f64, f64)> {
        its.iter()
            .filter_map(|f| pick(f).map(|v| (f64::from(f.iteration), v)))
            .collect()
    };
    let mut charts: Vec<Chart> = specs
        .into_iter()
        .filter_map(|(stem, title, y_label, pick, held)| {
            let train = at(&pick);
            if train.is_empty() {
                return None;
            }
            let mut series = vec![Series {
                name: "training rollouts (sampled before the update)".into(),
                points: train,
            }];
            if let Some(h) = held {
                let points = at(&|f: &IterationFigures| f.held_out.as_ref().and_then(h));
                if !points.is_empty() {
                    series.push(Series {
                        name: "held-out prompts (after the update)".into(),
                        points,
                    });
                }
            }
            if stem == "kl_to_sft" {
                if let (Some(b), Some(first), Some(last)) = (s.kl_budget, its.first(), its.last()) {
                    series.push(Series {
                        name: format!("KL budget ({b:.2})"),
                        points: vec![
                            (f64::from(first.iteration), b),
                            (f64::from(last.iteration), b),
                        ],
                    });
                }
            }
            Some(Chart {
                stem: stem.into(),
                title: title.into(),
                x_label: "iteration".into(),
                y_label: y_label.into(),
                series,
            })
        })
        .collect();
    charts.extend(frontier_chart(s));
    charts
}

/// Gold and proxy reward against KL to SFT on the held-out prompts (Gao et al. 2023's
/// over-optimisation frontier): the SFT model at KL 0, then each iteration's policy.
pub fn frontier_chart(s: &Summary) -> Option<Chart> {
    let held: Vec<&HeldOut> = s
        .iterations
        .iter()
        .filter_map(|f| f.held_out.as_ref())
        .collect();
    if held.is_empty() {
        return None;
    }
    let line = |name: &str, sft: Option<f64>, pick: fn(&HeldOut) -> Option<f64>| Series {
        name: name.into(),
        points: sft
            .map(|v| (0.0, v))
            .into_iter()
            .chain(held.iter().filter_map(|h| Some((h.kl_to_sft?, pick(h)?))))
            .collect(),
    };
    Some(Chart {
        stem: "reward_vs_kl".into(),
        title: "Reward against KL to SFT (held-out prompts)".into(),
        x_label: "KL to SFT (nats per response)".into(),
        y_label: "mean reward".into(),
        series: vec![
            line("gold (oracle)", s.gold_reward_sft, |h| h.gold_reward),
            line("proxy (reward model)", s.proxy_reward_sft, |h| {
                h.proxy_reward
            }),
        ]
        .into_iter()
        .filter(|l| !l.points.is_empty())
        .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_have_extent() {
        assert_eq!(range([2.0].into_iter()), (1.9, 2.1));
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = range([0.0, 10.0, f64::NAN].into_iter());
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short(0.0), "0");
        assert_eq!(short(3.0), "3");
        assert_eq!(short(0.12345), "0.123");
        assert_eq!(short(12.345), "12.35");
        assert_eq!(short(250000.0), "2.5e5");
    }
}

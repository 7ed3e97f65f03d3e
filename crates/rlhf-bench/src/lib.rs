//! rlhf-bench: the benchmark harness behind `make bench`.
//!
//! It runs benchmark cases in registry order, prints a table on stdout and writes
//! `{"machine": {...}, "cases": [{"name", "value", "unit", "reference", "reference_value",
//! "ratio"}, ...]}` (ratio = our figure over the reference's, oriented so that higher is
//! better). Timings live here, never in pass/fail tests.
//!
//! # Adding a case
//! 1. Write `src/cases/<name>.rs` with a unit struct implementing [`Case`]: `name()` (the
//!    `--cases` key), `about()` (one line), and `run(&Context) -> Result<Vec<Measurement>>`.
//!    Honour `ctx.quick` (a shorter run for smoke tests) and `ctx.threads`.
//! 2. Add one line to `src/cases/mod.rs`: `mod <name>;` and `&<name>::TheCase,` in `REGISTRY`.
//!
//! A case can use the figures of the cases before it, e.g. the measured matmul rate as its
//! roof: `ctx.value("matmul_fp32")`. A Python reference runs through [`python::run_script`]
//! (scripts under `scripts/bench/`, interpreter from the environment variable `RLHF_PYTHON`,
//! which `make bench` sets); without `RLHF_PYTHON` a case leaves its reference empty.

pub mod cases;
pub mod machine;
pub mod python;
pub mod timing;

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

/// One benchmark case.
pub trait Case: Sync {
    /// The key used by `--cases` and the prefix of the measurement names.
    fn name(&self) -> &'static str;
    /// One line describing what it measures.
    fn about(&self) -> &'static str;
    /// Runs the case and returns its measurements.
    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>>;
}

/// What a case gets: run settings and the measurements of the cases before it.
#[derive(Debug, Clone)]
pub struct Context {
    /// Shorter runs (smoke tests, CI); figures are noisier.
    pub quick: bool,
    /// Compute threads (libtorch intra-op), also passed to Python references.
    pub threads: usize,
    /// Rounds of the training-step and sampling cases (`policy_step`, `rm_step`,
    /// `sampling`): ours and the reference run alternately this many times and each side
    /// reports its best round, so that a machine whose speed drifts between runs does not
    /// decide the ratio (1 = one run each).
    pub rounds: usize,
    /// The Python interpreter for references (env RLHF_PYTHON), if set.
    pub python: Option<PathBuf>,
    /// The folder of the Python reference scripts (`scripts/bench/`).
    pub scripts_dir: PathBuf,
    /// Measurements so far, in order.
    pub done: Vec<Measurement>,
}

impl Context {
    /// The value of an earlier measurement.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.done.iter().find(|m| m.name == name).map(|m| m.value)
    }
}

/// One measured figure and, optionally, the reference it is compared with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// What the figure is compared with (e.g. "python torch 2.11.0, same matmul").
    pub reference: Option<String>,
    pub reference_value: Option<f64>,
    /// value / reference_value when higher is better, the inverse otherwise.
    pub ratio: Option<f64>,
}

impl Measurement {
    /// A figure without a reference.
    pub fn new(name: impl Into<String>, value: f64, unit: &str) -> Measurement {
        Measurement {
            name: name.into(),
            value,
            unit: unit.to_string(),
            reference: None,
            reference_value: None,
            ratio: None,
        }
    }

    /// Adds a reference; `higher_is_better` orients the ratio so that > 1 means we win.
    pub fn against(mut self, reference: &str, value: f64, higher_is_better: bool) -> Self {
        self.ratio = ratio(self.value, value, higher_is_better);
        self.reference = Some(reference.to_string());
        self.reference_value = Some(value);
        self
    }
}

/// Ours over the reference (higher is better) or the reference over ours (lower is better).
pub fn ratio(ours: f64, reference: f64, higher_is_better: bool) -> Option<f64> {
    let r = if higher_is_better {
        ours / reference
    } else {
        reference / ours
    };
    r.is_finite().then_some(r)
}

/// The whole results file.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: machine::Machine,
    pub cases: Vec<Measurement>,
}

/// The Python reference scripts, found relative to this executable (no build path is
/// compiled in): `<tree>/scripts/bench` for `<tree>/target/<profile>/rlhf-bench` (or its
/// `deps/` test binaries), `PREFIX/share/perl-rlhf/scripts/bench` for `PREFIX/bin/rlhf-bench`.
pub fn default_scripts_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating rlhf-bench")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(4)
        .flat_map(|d| {
            [
                d.join("scripts/bench"),
                d.join("share/perl-rlhf/scripts/bench"),
            ]
        })
        .collect();
    candidates
        .iter()
        .find(|d| d.join("common.py").is_file())
        .cloned()
        .with_context(|| {
            format!(
                "the Python reference scripts were not found near {}; looked in {}; pass --scripts-dir",
                exe.display(),
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Picks cases by name (all when `names` is empty), refusing unknown names.
pub fn select(names: &[String]) -> Result<Vec<&'static dyn Case>> {
    let all = cases::registry();
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let known: Vec<&str> = all.iter().map(|c| c.name()).collect();
    for n in names {
        if !known.contains(&n.as_str()) {
            bail!(
                "unknown benchmark case `{n}`; known cases: {}",
                known.join(", ")
            );
        }
    }
    // Registry order, so that roofs are measured before the cases that use them.
    Ok(all
        .iter()
        .copied()
        .filter(|c| names.iter().any(|n| n == c.name()))
        .collect())
}

/// Runs the cases in order; each sees the measurements before it.
pub fn run_cases(cases: &[&dyn Case], mut ctx: Context) -> Result<Vec<Measurement>> {
    for case in cases {
        tracing::info!("case {}: {}", case.name(), case.about());
        let out = case
            .run(&ctx)
            .map_err(|e| e.context(format!("case {}", case.name())))?;
        ctx.done.extend(out);
    }
    Ok(ctx.done)
}

/// The table printed on stdout.
pub fn table(rows: &[Measurement]) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                format!("{:.3} {}", m.value, m.unit),
                m.reference.clone().unwrap_or_else(|| "-".into()),
                num(m.reference_value),
                num(m.ratio),
            ]
        })
        .collect();
    let header = ["case", "value", "reference", "reference value", "ratio"];
    let mut widths = header.map(str::len);
    for r in &cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        r.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    out.push('\n');
    for r in &cells {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_oriented() {
        assert_eq!(ratio(200.0, 100.0, true), Some(2.0));
        assert_eq!(ratio(2.0, 1.0, false), Some(0.5));
        assert_eq!(ratio(1.0, 0.0, true), None);
        let m = Measurement::new("x", 3.0, "s").against("py", 6.0, false);
        assert_eq!(m.ratio, Some(2.0));
    }

    #[test]
    fn selection_keeps_registry_order_and_refuses_unknown() {
        let all = select(&[]).unwrap();
        assert!(!all.is_empty());
        assert_eq!(all[0].name(), "matmul_fp32");
        let err = select(&["nope".into()]).err().unwrap().to_string();
        assert!(err.contains("unknown benchmark case `nope`") && err.contains("matmul_fp32"));
    }

    #[test]
    fn table_aligns_columns() {
        let rows =
            vec![Measurement::new("matmul_fp32", 150.0, "GFLOP/s").against("python", 100.0, true)];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].starts_with("matmul_fp32  150.000 GFLOP/s"));
        assert!(lines[2].ends_with("1.500"));
    }
}

//! Finding and reading the parts of a run folder.
//!
//! Layout (see the README and pipelines/demo.mk):
//! - essential: `rm/metrics.parquet`, `final/{sft,policy}_{rollouts,scores}.parquet`;
//! - optional: `iter-NNN/{rollouts,scores}.parquet` and `iter-NNN/policy/metrics.parquet`,
//!   `iter-NNN/eval_{rollouts,scores}.parquet` (that iteration's policy on the held-out
//!   prompts, for the over-optimisation figures), `timings.jsonl`, and for the PERL comparison `rm-full/metrics.parquet`,
//!   `final-full/policy_{rollouts,scores}.parquet`, `iter-NNN/policy-full/metrics.parquet`.
//!
//! A missing essential part is bad input (exit 3) naming every missing path, unless the
//! report is partial (`report --partial`, a run in progress): then every missing part
//! becomes a note and the report shows what exists so far. A missing optional part
//! becomes a note in the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::parquet_io::read_records;
use rlhf_core::records::{MetricRow, RolloutRow, ScoresTable};
use rlhf_core::CoreError;

/// Long-form metrics of one training stage.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub rows: Vec<MetricRow>,
}

impl Metrics {
    /// Reads a metrics file.
    pub fn read(path: &Path) -> Result<Metrics> {
        let (rows, _) = read_records::<MetricRow>(path)
            .with_context(|| format!("reading metrics {}", path.display()))?;
        Ok(Metrics { rows })
    }

    /// The first of `names` that has any row.
    pub fn first_present<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names
            .iter()
            .copied()
            .find(|n| self.rows.iter().any(|r| r.metric == *n))
    }

    /// (step, value) of one metric, in step order (stable for equal steps).
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let mut points: Vec<(i64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.metric == name)
            .map(|r| (r.step, r.value))
            .collect();
        points.sort_by_key(|p| p.0);
        points.into_iter().map(|(s, v)| (s as f64, v)).collect()
    }

    /// The value at the highest step (the last row among equal steps).
    pub fn last(&self, name: &str) -> Option<f64> {
        self.series(name).last().map(|p| p.1)
    }

    /// The largest value of a metric.
    pub fn max(&self, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .filter(|r| r.metric == name)
            .map(|r| r.value)
            .reduce(f64::max)
    }

    /// The mean value of a metric.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let v: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.metric == name)
            .map(|r| r.value)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// Rollouts and their scores, joined by rollout_id.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub rollouts: Vec<RolloutRow>,
    pub scores: ScoresTable,
    pub rollouts_path: PathBuf,
    pub scores_path: PathBuf,
    /// Index into `scores` for each rollout.
    pub score_index: Vec<usize>,
}

impl Sampled {
    /// Reads a rollouts file and its scores file; every rollout must have a score row.
    pub fn read(rollouts_path: &Path, scores_path: &Path) -> Result<Sampled> {
        let (rollouts, _) = read_records::<RolloutRow>(rollouts_path)
            .with_context(|| format!("reading rollouts {}", rollouts_path.display()))?;
        let (scores, _) = ScoresTable::read(scores_path)
            .with_context(|| format!("reading scores {}", scores_path.display()))?;
        let by_id: HashMap<&str, usize> = scores
            .rollout_id
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let score_index = rollouts
            .iter()
            .enumerate()
            .map(|(row, r)| {
                by_id.get(r.rollout_id.as_str()).copied().ok_or_else(|| {
                    bad_row(
                        rollouts_path,
                        row,
                        format!(
                            "rollout `{}` has no row in {}\n  hint: score every rollout file with score-rewards before the report",
                            r.rollout_id,
                            scores_path.display()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sampled {
            rollouts,
            scores,
            rollouts_path: rollouts_path.to_path_buf(),
            scores_path: scores_path.to_path_buf(),
            score_index,
        })
    }

    /// The score of rollout `i` in source column `column` (`reward` and `penalty` too).
    pub fn score(&self, i: usize, column: &str) -> Option<f32> {
        let j = self.score_index[i];
        match column {
            "reward" => Some(self.scores.reward[j]),
            "penalty" => Some(self.scores.penalty[j]),
            _ => self.scores.source(column).and_then(|v| v[j]),
        }
    }

    /// True when the scores have a source column with at least one value.
    pub fn has_source(&self, column: &str) -> bool {
        self.scores
            .source(column)
            .is_some_and(|v| v.iter().any(Option::is_some))
    }
}

/// One policy iteration folder (`iter-NNN`).
#[derive(Debug, Clone)]
pub struct Iteration {
    pub number: u32,
    pub name: String,
    pub sampled: Option<Sampled>,
    /// The iteration's updated policy on the held-out prompts (`eval_*.parquet`).
    pub eval: Option<Sampled>,
    pub policy_metrics: Option<Metrics>,
    pub full_policy_metrics: Option<Metrics>,
}

/// Everything the report reads from a run folder.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// False when an essential part is missing (a partial report of a run in progress).
    pub complete: bool,
    pub rm: Option<Metrics>,
    pub rm_full: Option<Metrics>,
    pub iterations: Vec<Iteration>,
    pub final_sft: Option<Sampled>,
    pub final_policy: Option<Sampled>,
    pub final_full_policy: Option<Sampled>,
    /// Seconds per stage, summed over repeated stages, in first-appearance order.
    pub timings: Option<Vec<(String, f64)>>,
    /// What was missing or skipped, for the reader.
    pub notes: Vec<String>,
}

/// Relative paths of the essential parts.
pub const ESSENTIALS: [&str; 5] = [
    "rm/metrics.parquet",
    "final/sft_rollouts.parquet",
    "final/sft_scores.parquet",
    "final/policy_rollouts.parquet",
    "final/policy_scores.parquet",
];

fn bad_row(path: &Path, row: usize, message: String) -> anyhow::Error {
    CoreError::BadInput {
        path: path.to_path_buf(),
        row: Some(row),
        message,
    }
    .into()
}

fn bad(path: &Path, message: String) -> anyhow::Error {
    CoreError::BadInput {
        path: path.to_path_buf(),
        row: None,
        message,
    }
    .into()
}

impl RunData {
    /// Reads a run folder; fails naming every missing essential part unless `partial`.
    pub fn load(dir: &Path, partial: bool) -> Result<RunData> {
        if !dir.is_dir() {
            return Err(bad(
                dir,
                "run folder does not exist or is not a folder\n  hint: give the folder a pipeline wrote, e.g. runs/demo".into(),
            ));
        }
        let missing: Vec<&str> = ESSENTIALS
            .iter()
            .copied()
            .filter(|p| !dir.join(p).is_file())
            .collect();
        if !missing.is_empty() && !partial {
            return Err(bad(
                dir,
                format!(
                    "not a complete run folder: missing {}\n  hint: run the pipeline to the end (final evaluation included) before the report, or pass --partial for what exists so far",
                    missing.join(", ")
                ),
            ));
        }
        let mut notes = Vec::new();
        if !missing.is_empty() {
            notes.push(format!(
                "partial report of a run in progress: {} not written yet; the figures that need them are n/a",
                missing.join(", ")
            ));
        }
        let rm = optional_metrics(dir, "rm/metrics.parquet")?;
        let rm_full = optional_metrics(dir, "rm-full/metrics.parquet")?;
        let final_sft = optional_sampled(
            dir,
            "final/sft_rollouts.parquet",
            "final/sft_scores.parquet",
        )?;
        let final_policy = optional_sampled(
            dir,
            "final/policy_rollouts.parquet",
            "final/policy_scores.parquet",
        )?;
        let full_r = dir.join("final-full/policy_rollouts.parquet");
        let full_s = dir.join("final-full/policy_scores.parquet");
        let final_full_policy = if full_r.is_file() && full_s.is_file() {
            Some(Sampled::read(&full_r, &full_s)?)
        } else {
            None
        };
        let iterations = read_iterations(dir, &mut notes)?;
        if iterations.is_empty() {
            notes.push("no iter-NNN folders: the per-iteration plots are skipped".into());
        }
        let timings_path = dir.join("timings.jsonl");
        let timings = if timings_path.is_file() {
            Some(read_timings(&timings_path)?)
        } else {
            notes.push("no timings.jsonl: seconds per stage are not reported".into());
            None
        };
        Ok(RunData {
            dir: dir.to_path_buf(),
            complete: missing.is_empty(),
            rm,
            rm_full,
            iterations,
            final_sft,
            final_policy,
            final_full_policy,
            timings,
            notes,
        })
    }
}

fn optional_sampled(dir: &Path, rollouts: &str, scores: &str) -> Result<Option<Sampled>> {
    let (r, s) = (dir.join(rollouts), dir.join(scores));
    if r.is_file() && s.is_file() {
        Ok(Some(Sampled::read(&r, &s)?))
    } else {
        Ok(None)
    }
}

fn optional_metrics(dir: &Path, rel: &str) -> Result<Option<Metrics>> {
    let path = dir.join(rel);
    if path.is_file() {
        Ok(Some(Metrics::read(&path)?))
    } else {
        Ok(None)
    }
}

/// The iteration number of a folder named `iter-NNN`.
pub fn iteration_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("iter-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_iterations(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<Iteration>> {
    let mut found: Vec<(u32, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            iteration_number(&name).map(|n| (n, name))
        })
        .collect();
    found.sort();
    let mut out = Vec::with_capacity(found.len());
    for (number, name) in found {
        let it = dir.join(&name);
        // A file, or a folder of part files from a sharded run (e.g. pipelines/slurm).
        let pick = |file: &str, folder: &str| {
            let f = it.join(file);
            if f.exists() {
                f
            } else {
                it.join(folder)
            }
        };
        let (r, s) = (
            pick("rollouts.parquet", "rollouts"),
            pick("scores.parquet", "scores"),
        );
        let sampled = match (r.exists(), s.exists()) {
            (true, true) => Some(Sampled::read(&r, &s)?),
            (false, false) => {
                notes.push(format!(
                    "{name}: no rollouts or scores, left out of the plots"
                ));
                None
            }
            (true, false) => {
                notes.push(format!(
                    "{name}: rollouts.parquet without scores.parquet, left out of the plots"
                ));
                None
            }
            (false, true) => {
                notes.push(format!(
                    "{name}: scores.parquet without rollouts.parquet, left out of the plots"
                ));
                None
            }
        };
        let eval = match (
            pick("eval_rollouts.parquet", "eval_rollouts"),
            pick("eval_scores.parquet", "eval_scores"),
        ) {
            (r, s) if r.exists() && s.exists() => Some(Sampled::read(&r, &s)?),
            (r, _) if r.exists() => {
                notes.push(format!(
                    "{name}: eval_rollouts without eval_scores, left out of the held-out figures"
                ));
                None
            }
            _ => None,
        };
        out.push(Iteration {
            number,
            eval,
            policy_metrics: optional_metrics(&it, "policy/metrics.parquet")?,
            full_policy_metrics: optional_metrics(&it, "policy-full/metrics.parquet")?,
            name,
            sampled,
        });
    }
    Ok(out)
}

/// One line of timings.jsonl.
#[derive(Debug, serde::Deserialize)]
struct TimingLine {
    stage: String,
    seconds: f64,
}

/// Reads timings.jsonl: seconds summed per stage, in first-appearance order.
pub fn read_timings(path: &Path) -> Result<Vec<(String, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: Vec<(String, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let t: TimingLine = serde_json::from_str(line).map_err(|e| CoreError::BadInput {
            path: path.to_path_buf(),
            row: Some(i + 1),
            message: format!(
                "expected a JSON object {{\"stage\": string, \"seconds\": number}}: {e}"
            ),
        })?;
        match out.iter_mut().find(|(s, _)| *s == t.stage) {
            Some((_, secs)) => *secs += t.seconds,
            None => out.push((t.stage, t.seconds)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_folder_names() {
        assert_eq!(iteration_number("iter-001"), Some(1));
        assert_eq!(iteration_number("iter-12"), Some(12));
        assert_eq!(iteration_number("iter-"), None);
        assert_eq!(iteration_number("iter-01a"), None);
        assert_eq!(iteration_number("final"), None);
    }

    #[test]
    fn timings_sum_repeated_stages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("timings.jsonl");
        std::fs::write(
            &p,
            "{\"stage\":\"sft\",\"seconds\":2.5}\n\n{\"stage\":\"ppo\",\"seconds\":1}\n{\"stage\":\"sft\",\"seconds\":0.5}\n",
        )
        .unwrap();
        assert_eq!(
            read_timings(&p).unwrap(),
            vec![("sft".to_string(), 3.0), ("ppo".to_string(), 1.0)]
        );
        std::fs::write(&p, "{\"stage\":\"sft\"}\n").unwrap();
        let err = format!("{:#}", read_timings(&p).unwrap_err());
        assert!(err.contains("row 1"), "{err}");
    }

    #[test]
    fn metrics_series_last_max_mean() {
        let row = |step, metric: &str, value| MetricRow {
            stage: "train-rm-lora".into(),
            iteration: 0,
            step,
            metric: metric.into(),
            value,
        };
        let m = Metrics {
            rows: vec![
                row(10, "eval_accuracy", 0.8),
                row(5, "eval_accuracy", 0.6),
                row(5, "loss", 0.7),
            ],
        };
        assert_eq!(m.series("eval_accuracy"), vec![(5.0, 0.6), (10.0, 0.8)]);
        assert_eq!(m.last("eval_accuracy"), Some(0.8));
        assert_eq!(m.max("eval_accuracy"), Some(0.8));
        assert!((m.mean("eval_accuracy").unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(m.first_present(&["accuracy", "loss"]), Some("loss"));
        assert_eq!(m.last("missing"), None);
    }
}

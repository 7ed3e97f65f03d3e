//! A long-form metrics log (stage, iteration, step, metric, value) that stages fill while
//! they run and write as a Parquet artifact (and re-read on --resume).

use std::path::Path;

use crate::error::Result;
use crate::lineage::Lineage;
use crate::parquet_io::{read_records, write_records};
use crate::records::MetricRow;

/// Metric of the training stages: the number of trained parameters.
pub const TRAINABLE_PARAMS: &str = "run/trainable_params";

/// Metric of the training stages: bytes of the trained parameters' weights, gradients and
/// AdamW moments (what grows with the number of trained parameters; the report's PERL table).
pub const TRAINED_STATE_BYTES: &str = "run/trained_state_bytes";

/// Metrics of one stage run.
#[derive(Debug, Clone, Default)]
pub struct MetricsLog {
    pub stage: String,
    pub iteration: i32,
    pub rows: Vec<MetricRow>,
}

impl MetricsLog {
    /// An empty log for a stage and policy iteration.
    pub fn new(stage: &str, iteration: i32) -> MetricsLog {
        MetricsLog {
            stage: stage.to_string(),
            iteration,
            rows: Vec::new(),
        }
    }

    /// Records one value. Non-finite values are kept (they are evidence).
    pub fn push(&mut self, step: i64, metric: &str, value: f64) {
        self.rows.push(MetricRow {
            stage: self.stage.clone(),
            iteration: self.iteration,
            step,
            metric: metric.to_string(),
            value,
        });
    }

    /// Drops rows after `step` (used when resuming from a checkpoint taken at `step`).
    pub fn truncate_after(&mut self, step: i64) {
        self.rows.retain(|r| r.step <= step);
    }

    /// The last value recorded for a metric.
    pub fn last(&self, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .rev()
            .find(|r| r.metric == metric)
            .map(|r| r.value)
    }

    /// Writes the log as a metrics artifact.
    pub fn write(&self, path: &Path, lineage: &Lineage) -> Result<usize> {
        write_records(path, &self.rows, lineage)
    }

    /// Reads a metrics artifact back (for resume).
    pub fn read(path: &Path, stage: &str, iteration: i32) -> Result<MetricsLog> {
        let (rows, _) = read_records::<MetricRow>(path)?;
        Ok(MetricsLog {
            stage: stage.to_string(),
            iteration,
            rows,
        })
    }
}

//! Writing rollouts: rows are streamed to the artifact in fixed chunks of one row group
//! (so memory stays flat and the file layout does not depend on --batch-size), and a
//! summary of the run (finish reasons, response lengths) is kept for the log and the JSON
//! summary. The footer's lineage is fixed when the file is started, so it records the
//! sampling settings, not these counts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{row_group_size, ArtifactWriter};
use rlhf_core::records::{Record, RolloutRow};
use rlhf_core::schema::Artifact;

/// Counts over the written rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub rows: usize,
    pub prompts: usize,
    pub response_tokens: usize,
    pub finish_reasons: BTreeMap<String, usize>,
}

impl Summary {
    /// Mean response length in tokens.
    pub fn mean_response_tokens(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.response_tokens as f64 / self.rows as f64
        }
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "prompts": self.prompts,
            "response_tokens": self.response_tokens,
            "mean_response_tokens": self.mean_response_tokens(),
            "finish_reasons": self.finish_reasons,
        })
    }
}

pub use rlhf_core::resources::peak_rss_bytes;

/// Streams rollout rows into one artifact file.
pub struct RolloutSink {
    writer: ArtifactWriter,
    buffer: Vec<RolloutRow>,
    summary: Summary,
}

impl RolloutSink {
    /// Starts the file (under a temporary name until `finish`).
    pub fn create(target: &Path, lineage: &Lineage) -> Result<RolloutSink> {
        Ok(RolloutSink {
            writer: ArtifactWriter::create(
                target,
                Artifact::Rollouts,
                Artifact::Rollouts.schema(),
                lineage,
            )?,
            buffer: Vec::new(),
            summary: Summary::default(),
        })
    }

    /// Adds the rows of one prompt.
    pub fn push_prompt(&mut self, rows: Vec<RolloutRow>) -> Result<()> {
        self.summary.prompts += 1;
        for r in &rows {
            self.summary.rows += 1;
            self.summary.response_tokens += r.response_tokens.len();
            *self
                .summary
                .finish_reasons
                .entry(r.finish_reason.clone())
                .or_default() += 1;
        }
        self.buffer.extend(rows);
        let chunk = row_group_size(Artifact::Rollouts);
        while self.buffer.len() >= chunk {
            let rest = self.buffer.split_off(chunk);
            let full = std::mem::replace(&mut self.buffer, rest);
            self.writer.write(&RolloutRow::to_batch(&full)?)?;
        }
        Ok(())
    }

    /// The counts so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Writes the last rows, closes the file and renames it into place.
    pub fn finish(mut self) -> Result<Summary> {
        if !self.buffer.is_empty() {
            self.writer.write(&RolloutRow::to_batch(&self.buffer)?)?;
        }
        self.writer.finish()?;
        Ok(self.summary)
    }
}

//! The run summary every stage writes with `--summary-json PATH` (`-`: stdout), in one
//! shape for all stages, so a workflow engine can read any stage's outcome the same way:
//!
//! ```json
//! {"stage": "score-rewards", "version": "0.1.0",
//!  "outputs": [{"path": "runs/demo/iter-001/scores.parquet", "rows": 512}],
//!  "seconds": 3.2, "metrics": {"reward_mean": 0.41}, "details": {...}}
//! ```
//!
//! `outputs` lists what the stage wrote (rows for Parquet files, null for folders),
//! `seconds` the wall time since the process started, `metrics` the headline numbers and
//! `details` the stage's own figures. Nothing else goes to stdout.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the run (called by `GlobalArgs::init`; later calls do nothing).
pub fn mark_start() {
    let _ = STARTED.get_or_init(Instant::now);
}

/// One output of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    /// The path as given on the command line (or derived from it, e.g. a part file).
    pub path: String,
    /// Rows written, for a Parquet file; None for a folder.
    pub rows: Option<u64>,
}

/// The summary of one run of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub version: String,
    pub outputs: Vec<Output>,
    pub seconds: f64,
    pub metrics: Map<String, Value>,
    pub details: Value,
}

impl StageSummary {
    /// An empty summary of `stage` at `version` (pass `env!("CARGO_PKG_VERSION")`).
    pub fn new(stage: &str, version: &str) -> StageSummary {
        StageSummary {
            stage: stage.to_string(),
            version: version.to_string(),
            outputs: Vec::new(),
            seconds: 0.0,
            metrics: Map::new(),
            details: Value::Null,
        }
    }

    /// Adds an output (rows: None for a folder).
    pub fn output(mut self, path: &Path, rows: Option<u64>) -> StageSummary {
        self.outputs.push(Output {
            path: path.display().to_string(),
            rows,
        });
        self
    }

    /// Adds a headline number (non-finite values become null, as JSON has no NaN).
    pub fn metric(mut self, name: &str, value: f64) -> StageSummary {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.metrics.insert(name.to_string(), v);
        self
    }

    /// Sets the stage's own figures.
    pub fn details(mut self, details: impl Serialize) -> StageSummary {
        self.details = serde_json::to_value(details).unwrap_or(Value::Null);
        self
    }

    /// Writes the summary to `target` (`-`: one line on stdout; a file: pretty JSON,
    /// atomically), with `seconds` set to the time since [`mark_start`].
    pub fn write(mut self, target: &Path) -> crate::Result<()> {
        self.seconds = STARTED.get().map_or(0.0, |t| t.elapsed().as_secs_f64());
        if target.as_os_str() == "-" {
            use std::io::Write;
            let line = serde_json::to_string(&self).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                // A closed pipe (`| head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.map_err(|e| crate::CoreError::io("writing", "<stdout>", e)),
            }
        } else {
            let text = serde_json::to_string_pretty(&self).unwrap_or_default() + "\n";
            crate::atomic::write_file(target, text.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shape_for_every_stage() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("summary.json");
        StageSummary::new("score-rewards", "0.1.0")
            .output(Path::new("s.parquet"), Some(4))
            .metric("reward_mean", 0.5)
            .metric("nan", f64::NAN)
            .details(serde_json::json!({"rules": ["gold"]}))
            .write(&path)
            .unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["stage", "version", "outputs", "seconds", "metrics", "details"]
        );
        assert_eq!(v["outputs"][0]["rows"], 4);
        assert_eq!(v["metrics"]["reward_mean"], 0.5);
        assert!(v["metrics"]["nan"].is_null());
    }
}

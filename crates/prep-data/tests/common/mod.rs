//! Helpers shared by the CLI tests: run the built binary, write fixtures, read rejects.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{Record, RejectRow};
use rlhf_core::schema::Artifact;

/// Exit code and output of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the built prep-data binary.
pub fn prep(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_prep-data"))
        .args(args)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .expect("running prep-data");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes JSON lines.
pub fn jsonl(path: &Path, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| r.to_string() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

/// (reason, row number) of every reject in `dir/rejects.parquet`.
pub fn read_rejects(dir: &Path) -> Vec<(String, i64)> {
    read_rejects_file(&dir.join("rejects.parquet"))
}

/// (reason, row number) of every reject in a rejects file.
pub fn read_rejects_file(path: &Path) -> Vec<(String, i64)> {
    let ds = Dataset::open(path, Artifact::Rejects).unwrap();
    let mut out = Vec::new();
    for b in ds.batches() {
        let (p, b) = b.unwrap();
        for r in RejectRow::from_batch(&b, &p).unwrap() {
            out.push((r.reason, r.row_number));
        }
    }
    out
}

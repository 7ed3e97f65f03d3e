//! What several cases share: running the workspace binaries, their work folders, and the
//! embedded task's data as input files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::write_records;
use rlhf_core::schema::Artifact;
use rlhf_core::synthetic::{generate, PromptStyle, SyntheticConfig};

/// A case's work folder in the temp dir, removed when dropped unless RLHF_BENCH_KEEP is set.
pub(super) struct Scratch(PathBuf);

impl Scratch {
    /// Creates `<temp>/rlhf-bench-<tag>-<pid>`.
    pub fn new(tag: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("rlhf-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if keep() {
            tracing::info!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// RLHF_BENCH_KEEP is set: work folders stay for inspection.
pub(super) fn keep() -> bool {
    std::env::var_os("RLHF_BENCH_KEEP").is_some()
}

/// A workspace binary next to this executable (or next to its parent, for test binaries
/// in target/<profile>/deps).
pub(super) fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating rlhf-bench")?;
    let dir = exe.parent().context("rlhf-bench has no folder")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {} (hint: `make build` builds every binary)",
        exe.display()
    )
}

/// Runs a workspace binary and returns the `details` of the summary it prints on stdout's
/// last line with `--summary-json -` (or Null when `json` is false).
pub(super) fn run_bin(name: &str, args: &[String], json: bool) -> Result<serde_json::Value> {
    let bin = binary(name)?;
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{name} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !json {
        return Ok(serde_json::Value::Null);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("{name} printed no JSON summary: {last:?}"))?;
    Ok(summary["details"].clone())
}

pub(super) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

pub(super) fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Writes the embedded task's SFT corpus (`sft.parquet`) and prompts (`prompts.parquet`, at
/// least 4 x max(`prompts`, 16)) into `dir`.
pub(super) fn write_synthetic(dir: &Path, prompts: usize) -> Result<()> {
    let data = generate(&SyntheticConfig {
        seed: 0,
        num_prompts: 4 * prompts.max(16),
        eval_fraction: 0.0,
        completions_per_prompt: 4,
        prompt_style: PromptStyle::Chat,
    })?;
    let lineage = |a| Lineage::new("rlhf-bench", env!("CARGO_PKG_VERSION"), a);
    write_records(&dir.join("sft.parquet"), &data.sft, &lineage(Artifact::Sft))?;
    write_records(
        &dir.join("prompts.parquet"),
        &data.prompts,
        &lineage(Artifact::Prompts),
    )?;
    Ok(())
}

/// Writes the embedded task's corpus and prompts ([`write_synthetic`]) and makes the bench
/// model `dir/model` with init-model: `preset` (`small`, `30m`, ...), a 2048-token BPE trained
/// on the corpus, random weights.
pub(super) fn prepare_model(dir: &Path, prompts: usize, preset: &str, threads: &str) -> Result<()> {
    write_synthetic(dir, prompts)?;
    run_bin(
        "init-model",
        &strings(&[
            "--text-file",
            &p(&dir.join("sft.parquet")),
            "--preset",
            preset,
            "--vocab-size",
            "2048",
            "--out",
            &p(&dir.join("model")),
            "--seed",
            "0",
            "--threads",
            threads,
            "--no-progress",
            "-q",
        ]),
        false,
    )?;
    Ok(())
}

/// A number in a stage's `--summary-json` details (`what` names the stage in the error).
pub(super) fn num(v: &serde_json::Value, field: &str, what: &str) -> Result<f64> {
    v.get(field)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{what} summary has no number `{field}`: {v}"))
}

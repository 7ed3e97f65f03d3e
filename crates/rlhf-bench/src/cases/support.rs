//! What several cases share: running the workspace binaries, their work folders, and the
//! embedded task's data as input files.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

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
    run_bin_with_env(name, args, &[], json)
}

/// [`run_bin`] with environment variables `env` set for the child.
pub(super) fn run_bin_with_env(
    name: &str,
    args: &[String],
    env: &[(&str, &str)],
    json: bool,
) -> Result<serde_json::Value> {
    let bin = binary(name)?;
    let out = Command::new(&bin)
        .args(args)
        .envs(env.iter().copied())
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
    summary_details(&String::from_utf8_lossy(&out.stdout))
        .map_err(|last| anyhow::anyhow!("{name} printed no JSON summary: {last:?}"))
}

/// The `details` of the JSON summary on the last non-empty line of `stdout`; that line
/// when it is not JSON.
fn summary_details(stdout: &str) -> std::result::Result<serde_json::Value, String> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(last)
        .map(|v| v["details"].clone())
        .map_err(|_| last.to_string())
}

/// A finished process: its summary details, wall time and peak resident memory.
pub(super) struct Measured {
    /// The `details` of the JSON summary on stdout's last line (Null when there is none).
    pub details: serde_json::Value,
    /// Wall time from spawn to exit.
    pub seconds: f64,
    /// The child's own peak RSS (`wait4`'s ru_maxrss), in bytes.
    pub peak_rss_bytes: f64,
}

/// Runs a workspace binary like [`run_bin`] and measures it as a whole process: wall time and
/// the child's peak RSS, which covers stages that record no memory figure themselves.
pub(super) fn run_measured(name: &str, args: &[String]) -> Result<Measured> {
    let bin = binary(name)?;
    let start = Instant::now();
    let mut child = Command::new(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_string(&mut stdout)
        .with_context(|| format!("reading {name}'s output"))?;
    let (code, maxrss) = wait_with_peak_rss(child.id())?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = err.join().unwrap_or_default();
    if code != Some(0) {
        bail!("{name} failed (exit {code:?}):\n{stderr}");
    }
    Ok(Measured {
        details: summary_details(&stdout).unwrap_or(serde_json::Value::Null),
        seconds,
        peak_rss_bytes: maxrss as f64,
    })
}

/// Waits for child `pid` and returns its exit code (None when a signal ended it) and its peak
/// RSS in bytes (Linux reports ru_maxrss in KiB).
#[allow(unsafe_code)]
fn wait_with_peak_rss(pid: u32) -> Result<(Option<i32>, u64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet waited for (std's Child is never waited on
    // here); wait4 writes only into the two locals it is given.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).context("waiting for a stage");
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, usage.ru_maxrss.max(0) as u64 * 1024))
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

/// The fastest `run/seconds_per_step` after the first step (warm-up) in a run's metrics
/// (`--record-timings`); interference from other processes only slows steps down. `out`
/// names the run in the error.
pub(super) fn fastest_step(log: &rlhf_core::metrics::MetricsLog, out: &Path) -> Result<f64> {
    let mut steps: Vec<(i64, f64)> = log
        .rows
        .iter()
        .filter(|r| r.metric == "run/seconds_per_step")
        .map(|r| (r.step, r.value))
        .collect();
    steps.sort_by_key(|&(s, _)| s);
    let skip = usize::from(steps.len() > 1);
    steps[skip..]
        .iter()
        .map(|&(_, v)| v)
        .reduce(f64::min)
        .with_context(|| format!("{}: no run/seconds_per_step recorded", out.display()))
}

/// A number in a stage's `--summary-json` details (`what` names the stage in the error).
pub(super) fn num(v: &serde_json::Value, field: &str, what: &str) -> Result<f64> {
    v.get(field)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{what} summary has no number `{field}`: {v}"))
}

/// A side of a comparison run in rounds ([`best_in_turn`]): its figure for a round, or `None`
/// where it cannot run (a Python reference without RLHF_PYTHON).
pub(super) type Side<'a> = &'a mut dyn FnMut(usize) -> Result<Option<f64>>;

/// Runs `sides` in turn `rounds` times over (`--rounds`), so that a machine whose speed drifts
/// between runs weighs on every side alike, and keeps each side's best figure by `better`
/// (`f64::min` for seconds, `f64::max` for rates); a side that never ran stays `None`.
pub(super) fn best_in_turn<const N: usize>(
    rounds: usize,
    better: fn(f64, f64) -> f64,
    mut sides: [Side; N],
) -> Result<[Option<f64>; N]> {
    let mut best = [None; N];
    for round in 0..rounds {
        for (b, side) in best.iter_mut().zip(sides.iter_mut()) {
            if let Some(v) = side(round)? {
                *b = Some(b.map_or(v, |x| better(x, v)));
            }
        }
    }
    Ok(best)
}

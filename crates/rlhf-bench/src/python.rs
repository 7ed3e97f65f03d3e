//! Python reference measurements: a script under `scripts/bench/` run by the interpreter in
//! the environment variable `RLHF_PYTHON` (set by `make bench` to the project's
//! environment). The script prints one JSON object on its last stdout line.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::Context;

/// Runs `<scripts_dir>/<script>` with `args` and parses the JSON object it prints last.
/// Returns None when no interpreter is configured (the case then has no reference).
pub fn run_script(
    ctx: &Context,
    script: &str,
    args: &[String],
) -> Result<Option<serde_json::Value>> {
    let Some(python) = &ctx.python else {
        tracing::warn!("RLHF_PYTHON is not set: no Python reference for {script}");
        return Ok(None);
    };
    let path = ctx.scripts_dir.join(script);
    if !path.is_file() {
        bail!("reference script {} not found", path.display());
    }
    run(python, &path, args).map(Some)
}

fn run(python: &Path, script: &Path, args: &[String]) -> Result<serde_json::Value> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} {} failed ({}):\n{}",
            python.display(),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).with_context(|| {
        format!(
            "{} printed no JSON object on its last line: {last:?}",
            script.display()
        )
    })
}

/// A number field of a reference's JSON output.
pub fn number(v: &serde_json::Value, field: &str, script: &str) -> Result<f64> {
    v.get(field)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{script} output has no number `{field}`: {v}"))
}

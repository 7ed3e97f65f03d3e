//! Checkpoints of an SFT run in `OUT.ckpt/` (rlhf-algo's atomic checkpoint folder): the
//! trainable tensors, the optimiser state, the step, the metrics so far and a fingerprint
//! of everything that shapes the result (settings and input hashes). Metric values are
//! stored as their f64 bit patterns so a resumed run's metrics equal an uninterrupted one's. `--resume` refuses a
//! checkpoint whose fingerprint differs, naming the first difference.

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_algo::checkpoint::{self, CheckpointMeta};
use rlhf_core::error::CoreError;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::records::MetricRow;
use serde_json::{json, Value};

use crate::optimizer::Optimizer;

/// What a checkpoint restores besides tensors.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Optimiser steps already done.
    pub step: u64,
    /// Metrics recorded up to that step.
    pub metrics: MetricsLog,
    /// Real tokens trained on so far.
    pub tokens: u64,
}

/// Where a run stands, for a checkpoint.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// Optimiser steps done.
    pub step: u64,
    /// Micro-batches consumed (the position in the data order).
    pub micro_batches: u64,
    pub seed: u64,
    pub fingerprint: &'a Value,
    pub metrics: &'a MetricsLog,
    /// Real tokens trained on so far.
    pub tokens: u64,
}

/// Saves the run's state (tensors and moments from the optimiser).
pub fn save(dir: &Path, snap: &Snapshot, opt: &Optimizer) -> Result<()> {
    let rows: Vec<Value> = snap
        .metrics
        .rows
        .iter()
        .map(|r| json!([r.step, r.metric, r.value.to_bits()]))
        .collect();
    let mut meta = CheckpointMeta::new(snap.step, snap.micro_batches, snap.seed);
    meta.extra = json!({
        "fingerprint": snap.fingerprint,
        "tokens": snap.tokens,
        "metrics": rows,
    });
    checkpoint::save(dir, &meta, opt.params(), &opt.state())
        .with_context(|| format!("saving checkpoint {}", dir.display()))?;
    Ok(())
}

/// The first key whose value differs between two fingerprints.
fn first_difference(saved: &Value, now: &Value) -> Option<(String, String, String)> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return (saved != now).then(|| ("settings".into(), saved.to_string(), now.to_string()));
    };
    for (k, v) in b {
        let old = a.get(k).cloned().unwrap_or(Value::Null);
        if old != *v {
            return Some((k.clone(), old.to_string(), v.to_string()));
        }
    }
    a.keys()
        .find(|k| !b.contains_key(*k))
        .map(|k| (k.clone(), a[k].to_string(), "null".into()))
}

/// Loads the checkpoint in `dir` into the optimiser's parameters and state, after checking
/// it was written by a run with the same fingerprint. `Ok(Err(mismatch))` when it was not
/// (nothing is loaded then; the caller decides, see `ResumeMode::on_mismatch`).
pub fn load(
    dir: &Path,
    fingerprint: &Value,
    opt: &mut Optimizer,
    stage: &str,
) -> Result<std::result::Result<Restored, CoreError>> {
    let ck =
        checkpoint::load(dir).with_context(|| format!("reading checkpoint {}", dir.display()))?;
    let saved = ck
        .meta
        .extra
        .get("fingerprint")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some((key, old, new)) = first_difference(&saved, fingerprint) {
        return Ok(Err(CoreError::Mismatch {
            what: "resume settings",
            left_name: format!("checkpoint {} ({key})", dir.display()),
            left: old,
            right_name: "this run".into(),
            right: new,
            hint: "resume with the flags and inputs of the interrupted run, or --no-resume to start over".into(),
        }));
    }
    checkpoint::restore_into(opt.params(), &ck.tensors)
        .with_context(|| format!("restoring weights from {}", dir.display()))?;
    opt.load_state(&ck.optimizer)
        .with_context(|| format!("restoring optimizer state from {}", dir.display()))?;
    let mut metrics = MetricsLog::new(stage, 0);
    if let Some(rows) = ck.meta.extra.get("metrics").and_then(Value::as_array) {
        for r in rows {
            let (Some(step), Some(metric), Some(value)) = (
                r.get(0).and_then(Value::as_i64),
                r.get(1).and_then(Value::as_str),
                r.get(2).and_then(Value::as_u64).map(f64::from_bits),
            ) else {
                anyhow::bail!(
                    "{}: malformed metrics entry {r}",
                    dir.join(checkpoint::META_FILE).display()
                );
            };
            metrics.rows.push(MetricRow {
                stage: stage.to_string(),
                iteration: 0,
                step,
                metric: metric.to_string(),
                value,
            });
        }
    }
    Ok(Ok(Restored {
        step: ck.meta.step,
        metrics,
        tokens: ck
            .meta
            .extra
            .get("tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_names_the_key() {
        let a = json!({"lr": 0.1, "seed": 1});
        let b = json!({"lr": 0.2, "seed": 1});
        assert_eq!(
            first_difference(&a, &b),
            Some(("lr".into(), "0.1".into(), "0.2".into()))
        );
        assert_eq!(first_difference(&a, &a), None);
    }
}

//! Case `rm_lora_vs_full`: reward-model training with LoRA against full fine-tuning on the
//! same base, data, batch and flags (PERL, Sidahmed et al. 2024: LoRA reward models reach
//! full-tuning accuracy with 43-74% of the peak memory and up to 1.9x the speed).
//!
//! For each base size (init-model presets `30m` and `100m`; `small` with --quick) it writes
//! a synthetic separable preference set (the chosen response carries a marker word at a
//! varying position), makes the base with the `init-model` binary, and runs the
//! `train-rm-lora` binary twice (LoRA r 8 on q/k/v/o, then `--full`), each in its own
//! process so that peak RSS (VmHWM) is that run's. Figures come from each run's
//! metrics.parquet: seconds per optimiser step, peak RSS, trainable parameters and eval
//! accuracy. The LoRA figures are reported against the full run (ratio > 1: LoRA wins).
//! The work folder (in the temp dir) is removed unless RLHF_BENCH_KEEP is set.

use std::path::Path;

use anyhow::{Context as _, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::PreferenceRow;
use rlhf_core::schema::Artifact;

use super::support::{p, run_bin, strings, Scratch};
use crate::{Case, Context, Measurement};

/// The case.
pub struct RmLoraVsFull;

const WORDS: [&str; 16] = [
    "river", "stone", "maple", "cloud", "amber", "lantern", "copper", "meadow", "harbor", "violet",
    "thunder", "orchard", "silver", "canyon", "ember", "willow",
];

/// The `k`th word of example `i`: one of [`WORDS`], by a hash of both.
pub(super) fn word(i: usize, k: usize) -> &'static str {
    let u = rlhf_core::hash::unit_interval(&format!("{i}:{k}"));
    WORDS[(u * WORDS.len() as f64) as usize % WORDS.len()]
}

/// Pairs whose chosen response says "helpful" where the rejected one says "useless".
fn pairs(n: usize) -> Vec<PreferenceRow> {
    (0..n)
        .map(|i| {
            let resp = |marker: &str| {
                let mut ws: Vec<&str> = (0..6).map(|k| word(i, 10 + k)).collect();
                ws.insert(i % 4, marker);
                ws.join(" ")
            };
            PreferenceRow {
                pair_id: format!("p{i}"),
                prompt_id: format!("q{i}"),
                group_id: None,
                prompt: format!(
                    "User: {} {} {}\nAssistant:",
                    word(i, 0),
                    word(i, 1),
                    word(i, 2)
                ),
                chosen: format!(" {}", resp("helpful")),
                rejected: format!(" {}", resp("useless")),
                label: 1.0,
                margin: None,
                weight: 1.0,
                split: if i % 8 == 7 { "eval" } else { "train" }.into(),
                source: "bench".into(),
                prompt_tokens: None,
                chosen_tokens: None,
                rejected_tokens: None,
            }
        })
        .collect()
}

/// Makes the bench base `model` with init-model: `preset`, a 1024-token BPE trained on the
/// preference file's prompts and responses, random weights.
pub(super) fn init_base(prefs: &Path, preset: &str, model: &Path) -> Result<()> {
    let init = strings(&[
        "--text-file",
        &p(prefs),
        "--text-column",
        "prompt,chosen,rejected",
        "--vocab-size",
        "1024",
        "--preset",
        preset,
        "--out",
        &p(model),
        "-q",
    ]);
    run_bin("init-model", &init, false).map(drop)
}

/// Figures of one training run.
struct RunFigures {
    seconds_per_step: f64,
    peak_rss_gib: f64,
    trainable: f64,
    accuracy: f64,
}

fn train(
    dir: &Path,
    model: &Path,
    prefs: &Path,
    full: bool,
    steps: usize,
    threads: usize,
) -> Result<RunFigures> {
    let out = dir.join(if full { "rm-full" } else { "rm-lora" });
    let mut args = strings(&[
        "--model",
        &p(model),
        "--preferences",
        &p(prefs),
        "--out",
        &p(&out),
        "--max-steps",
        &steps.to_string(),
        "--epochs",
        "100",
        "--batch-size",
        "8",
        "--warmup-steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "-q",
        "--record-timings",
        "--threads",
        &threads.to_string(),
        // PERL's learning rates: higher for LoRA than for full tuning.
        "--learning-rate",
        if full { "1e-4" } else { "1e-3" },
    ]);
    if full {
        args.push("--full".into());
    }
    run_bin("train-rm-lora", &args, false)?;
    let log = MetricsLog::read(&out.join("metrics.parquet"), "train-rm-lora", 0)?;
    let get = |m: &str| log.last(m).with_context(|| format!("metric {m} missing"));
    Ok(RunFigures {
        seconds_per_step: get("run/seconds_per_step")?,
        peak_rss_gib: get("run/peak_rss_bytes")? / (1u64 << 30) as f64,
        trainable: get("run/trainable_params")?,
        accuracy: get("eval/accuracy")?,
    })
}

fn measure(ctx: &Context, root: &Path, preset: &str, steps: usize) -> Result<Vec<Measurement>> {
    let dir = root.join(preset);
    std::fs::create_dir_all(&dir)?;
    let prefs = dir.join("prefs.parquet");
    let l = Lineage::new(
        "rlhf-bench",
        env!("CARGO_PKG_VERSION"),
        Artifact::Preferences,
    );
    write_records(&prefs, &pairs(400), &l)?;
    let model = dir.join("base");
    init_base(&prefs, preset, &model)?;
    let lora = train(&dir, &model, &prefs, false, steps, ctx.threads)?;
    let full = train(&dir, &model, &prefs, true, steps, ctx.threads)?;
    let name = |what: &str| format!("rm_lora_vs_full.{preset}.{what}");
    let vs = "full fine-tuning, same base/data/batch";
    Ok(vec![
        Measurement::new(name("lora_seconds_per_step"), lora.seconds_per_step, "s").against(
            vs,
            full.seconds_per_step,
            false,
        ),
        Measurement::new(name("lora_peak_rss"), lora.peak_rss_gib, "GiB").against(
            vs,
            full.peak_rss_gib,
            false,
        ),
        Measurement::new(
            name("lora_memory_fraction"),
            lora.peak_rss_gib / full.peak_rss_gib,
            "of full",
        ),
        Measurement::new(name("lora_trainable_params"), lora.trainable, "params").against(
            vs,
            full.trainable,
            false,
        ),
        Measurement::new(name("lora_eval_accuracy"), lora.accuracy, "fraction").against(
            vs,
            full.accuracy,
            true,
        ),
    ])
}

impl Case for RmLoraVsFull {
    fn name(&self) -> &'static str {
        "rm_lora_vs_full"
    }

    fn about(&self) -> &'static str {
        "reward model LoRA vs full tuning: time per step, peak RSS, trainable params, eval accuracy"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let root = Scratch::new("rm")?;
        let plan: &[(&str, usize)] = if ctx.quick {
            &[("small", 4)]
        } else {
            &[("30m", 40), ("100m", 20)]
        };
        let mut out = Vec::new();
        for &(preset, steps) in plan {
            out.extend(measure(ctx, root.path(), preset, steps)?);
        }
        Ok(out)
    }
}

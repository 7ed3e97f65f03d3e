//! Case `ppo_lora_vs_full`: one policy update with a LoRA policy against full fine-tuning of
//! the policy, on the same base, rollouts, scores and batch (PERL, Sidahmed et al. 2024: in
//! RL, LoRA used 74-80% of full tuning's peak memory and was up to 1.3x faster).
//!
//! For each base size (init-model presets `30m` and `100m`; `small` with --quick) it writes
//! the embedded task's prompts, makes the base with `init-model` (it stands in for the SFT
//! model: the figures depend on shapes, not on what the weights learned), samples K = 4
//! responses per prompt with `sample-rollouts` and scores them with `score-rewards --rule
//! gold`. Then it runs the `ppo-update` binary twice per algorithm, each in its own process
//! so that peak RSS (VmHWM) is that run's:
//!
//! - LoRA: `--model base`, a fresh adapter (rank 8, alpha 16, every block linear; the demo's
//!   policy adapts the LM head too), reference = the base with the adapter off (log-probs
//!   from the rollouts);
//! - full: `--full --model base --ref-model base`: every weight trains with AdamW (a gradient
//!   and two moments per weight), and the reference is a second, frozen copy.
//!
//! Algorithms: `rloo` (no critic: the policy alone) and, in full runs, `ppo` (a LoRA critic
//! with value head in both modes; with --full it sits on the reference copy). Same flags
//! otherwise: minibatch, micro-batch, epochs, clip, KL coefficient, seed; learning rates
//! differ as in PERL (higher for LoRA), which does not change the work. Figures from each
//! run's metrics.parquet (`--record-timings`): run/seconds_per_step of the fastest optimiser
//! step after the first (warm-up; interference from other processes only slows steps down,
//! and both modes see the same minibatches in the same order), run/peak_rss_bytes and
//! run/trainable_params.
//! The LoRA figures are reported against the full run's (ratio > 1: LoRA wins). The
//! work folder (in the temp dir) is removed unless RLHF_BENCH_KEEP is set.

use std::path::Path;

use anyhow::{Context as _, Result};
use rlhf_core::metrics::MetricsLog;

use super::support::{fastest_step, keep, p, strings, write_synthetic, Scratch};
use crate::{Case, Context, Measurement};

/// Runs a workspace binary with `args`, failing with its stderr.
fn run_bin(name: &str, args: &[String]) -> Result<()> {
    super::support::run_bin(name, args, false).map(drop)
}

/// The case.
pub struct PpoLoraVsFull;

/// One base size and the work done on it.
struct Plan {
    preset: &'static str,
    prompts: usize,
    samples: usize,
    max_new_tokens: usize,
    minibatch: usize,
    micro: usize,
    epochs: usize,
    algos: &'static [&'static str],
}

fn plans(quick: bool) -> Vec<Plan> {
    if quick {
        return vec![Plan {
            preset: "small",
            prompts: 4,
            samples: 4,
            max_new_tokens: 8,
            minibatch: 8,
            micro: 4,
            epochs: 2,
            algos: &["rloo"],
        }];
    }
    ["30m", "100m"]
        .into_iter()
        .map(|preset| Plan {
            preset,
            prompts: 16,
            samples: 4,
            max_new_tokens: 32,
            minibatch: 16,
            micro: 8,
            epochs: 2,
            algos: &["rloo", "ppo"],
        })
        .collect()
}

/// Prompts, base model, rollouts and scores for one plan, under `dir`.
fn prepare(dir: &Path, plan: &Plan, threads: &str) -> Result<()> {
    write_synthetic(dir, plan.prompts)?;
    let common = strings(&["--threads", threads, "--no-progress", "-q", "--seed", "0"]);
    let with = |args: &[&str]| -> Vec<String> {
        let mut a = strings(args);
        a.extend(common.iter().cloned());
        a
    };
    run_bin(
        "init-model",
        &with(&[
            "--text-file",
            &p(&dir.join("sft.parquet")),
            "--text-column",
            "prompt,completion",
            "--preset",
            plan.preset,
            "--vocab-size",
            "2048",
            "--out",
            &p(&dir.join("base")),
        ]),
    )?;
    run_bin(
        "sample-rollouts",
        &with(&[
            "--model",
            &p(&dir.join("base")),
            "--prompts",
            &p(&dir.join("prompts.parquet")),
            "--out",
            &p(&dir.join("rollouts.parquet")),
            "--max-prompts",
            &plan.prompts.to_string(),
            "--samples-per-prompt",
            &plan.samples.to_string(),
            "--max-new-tokens",
            &plan.max_new_tokens.to_string(),
            "--temperature",
            "1",
            "--iteration",
            "1",
            "--device",
            "cpu",
        ]),
    )?;
    run_bin(
        "score-rewards",
        &with(&[
            "--rollouts",
            &p(&dir.join("rollouts.parquet")),
            "--rule",
            "gold",
            "--out",
            &p(&dir.join("scores.parquet")),
        ]),
    )
}

/// Figures of one ppo-update run.
struct RunFigures {
    seconds_per_step: f64,
    peak_rss_gib: f64,
    trainable: f64,
}

/// Runs one policy update (LoRA, or --full) and reads its figures.
fn update(dir: &Path, plan: &Plan, algo: &str, full: bool, threads: &str) -> Result<RunFigures> {
    let tag = if full { "full" } else { "lora" };
    let out = dir.join(format!("{algo}-{tag}"));
    let base = p(&dir.join("base"));
    let mut args = strings(&[
        "--model",
        &base,
        "--rollouts",
        &p(&dir.join("rollouts.parquet")),
        "--scores",
        &p(&dir.join("scores.parquet")),
        "--out",
        &p(&out),
        "--algo",
        algo,
        "--minibatch-size",
        &plan.minibatch.to_string(),
        "--micro-batch-size",
        &plan.micro.to_string(),
        "--epochs",
        &plan.epochs.to_string(),
        "--kl-coef",
        "0.05",
        "--device",
        "cpu",
        "--threads",
        threads,
        "--seed",
        "0",
        "--record-timings",
        "--no-progress",
        "-q",
    ]);
    if full {
        args.extend(strings(&["--full", "--ref-model", &base]));
        args.extend(strings(&["--learning-rate", "1e-5"]));
    } else {
        args.extend(strings(&[
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "all-linear",
            "--learning-rate",
            "3e-3",
        ]));
    }
    run_bin("ppo-update", &args)?;
    let figures = read_figures(&out)?;
    // the folders are big (a full model and its moments); only the metrics were needed
    if !keep() {
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(figures)
}

/// Reads a finished update's figures from its metrics.parquet.
fn read_figures(out: &Path) -> Result<RunFigures> {
    let log = MetricsLog::read(&out.join("metrics.parquet"), "ppo-update", 1)?;
    let get = |m: &str| log.last(m).with_context(|| format!("metric {m} missing"));
    Ok(RunFigures {
        seconds_per_step: fastest_step(&log, out)?,
        peak_rss_gib: get("run/peak_rss_bytes")? / (1u64 << 30) as f64,
        trainable: get("run/trainable_params")?,
    })
}

fn measure(ctx: &Context, root: &Path, plan: &Plan) -> Result<Vec<Measurement>> {
    let threads = ctx.threads.to_string();
    let dir = root.join(plan.preset);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    prepare(&dir, plan, &threads)?;
    let mut out = Vec::new();
    for &algo in plan.algos {
        let lora = update(&dir, plan, algo, false, &threads)?;
        let full = update(&dir, plan, algo, true, &threads)?;
        let name = |what: &str| format!("ppo_lora_vs_full.{}.{algo}.{what}", plan.preset);
        let vs = format!(
            "full fine-tuning + frozen reference copy; {} rollouts, minibatch {}, {} epochs",
            plan.prompts * plan.samples,
            plan.minibatch,
            plan.epochs
        );
        tracing::info!(
            preset = plan.preset,
            algo,
            lora_s_per_step = lora.seconds_per_step,
            full_s_per_step = full.seconds_per_step,
            lora_rss_gib = lora.peak_rss_gib,
            full_rss_gib = full.peak_rss_gib,
            "ppo_lora_vs_full"
        );
        out.extend([
            Measurement::new(name("lora_seconds_per_step"), lora.seconds_per_step, "s").against(
                &vs,
                full.seconds_per_step,
                false,
            ),
            Measurement::new(name("lora_peak_rss"), lora.peak_rss_gib, "GiB").against(
                &vs,
                full.peak_rss_gib,
                false,
            ),
            Measurement::new(
                name("lora_memory_fraction"),
                lora.peak_rss_gib / full.peak_rss_gib,
                "of full",
            ),
            Measurement::new(name("lora_trainable_params"), lora.trainable, "params").against(
                &vs,
                full.trainable,
                false,
            ),
        ]);
    }
    Ok(out)
}

impl Case for PpoLoraVsFull {
    fn name(&self) -> &'static str {
        "ppo_lora_vs_full"
    }

    fn about(&self) -> &'static str {
        "policy update LoRA vs full tuning (rloo, ppo): time per step, peak RSS, trainable params"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let root = Scratch::new("ppo")?;
        let mut out = Vec::new();
        for plan in plans(ctx.quick) {
            out.extend(measure(ctx, root.path(), &plan)?);
        }
        Ok(out)
    }
}

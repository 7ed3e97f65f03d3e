//! Case `policy_step`: GRPO policy-update steps of `ppo-update` against transformers + peft
//! on the same base, rollouts, scores, minibatches and LoRA settings (the bar: 1.3x or
//! better).
//!
//! It writes the embedded task's prompts, makes the `30m` base (`small` with --quick) with
//! `init-model`, samples K = 4 responses of up to 64 tokens to each of 16 prompts with
//! `sample-rollouts` and scores them with `score-rewards --rule length:target=12,unit=words`.
//! Then `ppo-update` (GRPO, beta 0.05, a fresh LoRA r8 on q_proj and v_proj, minibatches of
//! 16 rollouts cut from shuffled prompts (`--minibatch-by-prompt`: a prompt's 4 samples in one
//! minibatch, as TRL batches them), micro-batches of 4, one epoch: 4 optimiser steps,
//! `--record-timings`) and
//! `scripts/bench/policy_step.py` (the same steps with transformers + peft, laid out as TRL
//! lays a batch out, reading the same files). Both figures: the fastest optimiser step after
//! the first. Both sides take the old and reference log-probs from the rollouts. ppo-update
//! runs a prompt once for its K samples in a micro-batch (`Model::forward_batch`); the second
//! run of ours (`RLHF_NO_SHARED_PROMPTS=1`, `seconds_per_step_unshared_prompts`) does not,
//! as transformers does not. With `--rounds N` the three runs repeat N times in turn and each
//! reports its fastest round. The work folder is removed unless RLHF_BENCH_KEEP is set.

use std::path::Path;

use anyhow::Result;
use rlhf_core::metrics::MetricsLog;

use super::support::{
    best_in_turn, fastest_step, p, prepare_model, run_bin, run_bin_with_env, strings, Scratch,
};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct PolicyStep;

const MINIBATCH: &str = "16";
const MICRO: &str = "4";

fn measure(
    ctx: &Context,
    root: &Path,
    preset: &str,
    prompts: usize,
    new: usize,
) -> Result<Vec<Measurement>> {
    let dir = root.join(preset);
    std::fs::create_dir_all(&dir)?;
    let threads = ctx.threads.to_string();
    prepare_model(&dir, prompts, preset, &threads)?;
    let (model, rollouts, scores) = (
        dir.join("model"),
        dir.join("rollouts.parquet"),
        dir.join("scores.parquet"),
    );
    let common = ["--threads", &threads, "--seed", "0", "--no-progress", "-q"];
    let mut args = strings(&[
        "--model",
        &p(&model),
        "--prompts",
        &p(&dir.join("prompts.parquet")),
        "--out",
        &p(&rollouts),
        "--samples-per-prompt",
        "4",
        "--max-new-tokens",
        &new.to_string(),
        "--max-prompts",
        &prompts.to_string(),
        "--temperature",
        "1",
        "--device",
        "cpu",
    ]);
    args.extend(strings(&common));
    run_bin("sample-rollouts", &args, false)?;
    let mut args = strings(&[
        "--rollouts",
        &p(&rollouts),
        "--rule",
        "length:target=12,unit=words",
        "--out",
        &p(&scores),
    ]);
    args.extend(strings(&common));
    run_bin("score-rewards", &args, false)?;
    // What both sides read, and their minibatches.
    let inputs = strings(&[
        "--model",
        &p(&model),
        "--rollouts",
        &p(&rollouts),
        "--scores",
        &p(&scores),
        "--minibatch-size",
        MINIBATCH,
        "--micro-batch-size",
        MICRO,
    ]);
    let update = |out: &str, env: &[(&str, &str)]| -> Result<f64> {
        let out = dir.join(out);
        let mut args = inputs.clone();
        args.extend(strings(&[
            "--out",
            &p(&out),
            "--algo",
            "grpo",
            "--kl-coef",
            "0.05",
            "--learning-rate",
            "1e-5",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--lora-targets",
            "q_proj,v_proj",
            // a prompt's samples in one minibatch, as TRL's GRPOTrainer batches them
            "--minibatch-by-prompt",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--record-timings",
        ]));
        args.extend(strings(&common));
        run_bin_with_env("ppo-update", &args, env, false)?;
        let log = MetricsLog::read(&out.join("metrics.parquet"), "ppo-update", 0)?;
        fastest_step(&log, &out)
    };
    let script = "policy_step.py";
    let mut args = inputs.clone();
    args.extend(strings(&["--threads", &threads]));
    let off = [("RLHF_NO_SHARED_PROMPTS", "1")];
    let [ours, unshared, theirs] = best_in_turn(
        ctx.rounds,
        f64::min,
        [
            &mut |r| update(&format!("policy-{r}"), &[]).map(Some),
            &mut |r| update(&format!("policy-unshared-{r}"), &off).map(Some),
            &mut |_| {
                python::run_script(ctx, script, &args)?
                    .map(|v| python::number(&v, "fastest_seconds_per_step", script))
                    .transpose()
            },
        ],
    )?;
    let name = |what: &str| format!("policy_step.{preset}.{what}");
    let (ours, unshared) = (ours.unwrap_or(f64::NAN), unshared.unwrap_or(f64::NAN));
    let mut m = Measurement::new(name("seconds_per_step"), ours, "s");
    let mut u = Measurement::new(name("seconds_per_step_unshared_prompts"), unshared, "s");
    if let Some(theirs) = theirs {
        let vs = "transformers + peft, same rollouts/minibatches/LoRA";
        m = m.against(vs, theirs, false);
        u = u.against(vs, theirs, false);
    }
    Ok(vec![m, u])
}

impl Case for PolicyStep {
    fn name(&self) -> &'static str {
        "policy_step"
    }

    fn about(&self) -> &'static str {
        "GRPO policy-update step (LoRA r8 q/v, 16 rollouts of <= 64 tokens) vs transformers + peft"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let root = Scratch::new("policy-step")?;
        let (preset, prompts, new) = if ctx.quick {
            ("small", 8, 8)
        } else {
            ("30m", 16, 64)
        };
        measure(ctx, root.path(), preset, prompts, new)
    }
}

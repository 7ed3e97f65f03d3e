//! Case `rl_loop`: the whole RL loop, sample-rollouts -> score-rewards -> ppo-update, run as
//! the real binaries for several iterations, against TRL's GRPOTrainer with a peft LoRA on the
//! same model folder, prompts and settings (`scripts/bench/rl_loop.py`).
//!
//! Settings (both sides): GRPO, K = 4 completions of each of 4 prompts an iteration (the next
//! 4 prompts of the file each time), up to N new tokens at temperature 1, LoRA rank 8 (alpha
//! 16) on q_proj and v_proj, beta 0.05 (KL to the base with the adapter off), learning rate
//! 1e-5 constant, one optimiser step an iteration over all 16 rollouts (TRL's one batch of 16;
//! ppo-update's micro-batches of [`MICRO_BATCH`]); the reward is score-rewards' rule
//! `length:target=12,unit=words`, written in Python for TRL. The bench model is init-model's
//! `30m` preset (`--quick`: `small`, fewer iterations and tokens).
//!
//! - `rl_loop`: completion tokens per second of the whole loop, wall clock from the first
//!   process start to the last exit (every process start and model load included), against
//!   the TRL process's (interpreter start, imports and model loading included).
//! - `rl_loop_iteration`: seconds per iteration once running (lower is better), the median
//!   over iterations after the first on both sides: ours, the three processes' wall time;
//!   TRL's, each optimiser step's (generation, reward, reference and update).
//! - `rl_loop_peak_rss`: the largest peak RSS of our three processes against the TRL
//!   process's.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_records, write_records};
use rlhf_core::records::PromptRow;
use rlhf_core::schema::Artifact;

use super::support::{num, p, prepare_model, run_bin, strings, Scratch};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct RlLoop;

/// Sizes of one run.
struct Sizes {
    preset: &'static str,
    iterations: usize,
    prompts: usize,
    samples: usize,
    max_new_tokens: usize,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            preset: "small",
            iterations: 2,
            prompts: 2,
            samples: 4,
            max_new_tokens: 8,
        }
    } else {
        Sizes {
            preset: "30m",
            iterations: 8,
            prompts: 4,
            samples: 4,
            max_new_tokens: 64,
        }
    }
}

const BETA: &str = "0.05";
const LEARNING_RATE: &str = "1e-5";
const LORA_RANK: &str = "8";
const LORA_ALPHA: &str = "16";
const LORA_TARGETS: &str = "q_proj,v_proj";
const TARGET_WORDS: &str = "12";
/// ppo-update's `--micro-batch-size`: half TRL's batch of 16 (its memory stays well under
/// TRL's). On the iteration-2 files, alternating runs (5, 5 and 2): ppo-update 1.03-1.34 s
/// at 8, 1.16-1.30 s at 16, 1.43-1.51 s at the default 4 (peak RSS 540, 790, 400 MB).
const MICRO_BATCH: &str = "8";

/// Writes `loop-prompts.parquet` (the prompts of every iteration, in order, for TRL) and
/// `iter-NNN/prompts.parquet` (each iteration's).
fn split_prompts(dir: &Path, s: &Sizes) -> Result<()> {
    let (all, _) = read_records::<PromptRow>(&dir.join("prompts.parquet"))?;
    let need = s.iterations * s.prompts;
    anyhow::ensure!(all.len() >= need, "{} prompts, {need} needed", all.len());
    let lineage = || Lineage::new("rlhf-bench", env!("CARGO_PKG_VERSION"), Artifact::Prompts);
    write_records(&dir.join("loop-prompts.parquet"), &all[..need], &lineage())?;
    for (i, chunk) in all[..need].chunks(s.prompts).enumerate() {
        let it = dir.join(format!("iter-{:03}", i + 1));
        std::fs::create_dir_all(&it).with_context(|| format!("creating {}", it.display()))?;
        write_records(&it.join("prompts.parquet"), chunk, &lineage())?;
    }
    Ok(())
}

/// What our loop did: completion tokens, seconds per iteration, the largest peak RSS.
struct Ours {
    tokens: f64,
    seconds: Vec<f64>,
    peak_rss: f64,
}

/// Runs the loop with the three binaries, iteration after iteration.
fn run_ours(dir: &Path, s: &Sizes, threads: &str) -> Result<Ours> {
    let model = p(&dir.join("model"));
    let mut ours = Ours {
        tokens: 0.0,
        seconds: Vec::new(),
        peak_rss: 0.0,
    };
    for i in 1..=s.iterations {
        let it = dir.join(format!("iter-{i:03}"));
        let prev = dir.join(format!("iter-{:03}/policy", i - 1));
        let (rollouts, scores) = (
            p(&it.join("rollouts.parquet")),
            p(&it.join("scores.parquet")),
        );
        let common = |args: &[&str]| {
            let mut v = strings(args);
            v.extend(strings(&[
                "--threads",
                threads,
                "--seed",
                "0",
                "--summary-json",
                "-",
                "--no-progress",
                "-q",
            ]));
            v
        };
        let adapter = |mut args: Vec<String>| {
            if i > 1 {
                args.extend(strings(&["--adapter", &p(&prev)]));
            }
            args
        };
        let start = Instant::now();
        let sampled = run_bin(
            "sample-rollouts",
            &adapter(common(&[
                "--model",
                &model,
                "--prompts",
                &p(&it.join("prompts.parquet")),
                "--out",
                &rollouts,
                "--iteration",
                &i.to_string(),
                "--samples-per-prompt",
                &s.samples.to_string(),
                "--max-new-tokens",
                &s.max_new_tokens.to_string(),
                "--temperature",
                "1",
                "--device",
                "cpu",
            ])),
            true,
        )?;
        let scored = run_bin(
            "score-rewards",
            &common(&[
                "--rollouts",
                &rollouts,
                "--rule",
                &format!("length:target={TARGET_WORDS},unit=words"),
                "--out",
                &scores,
            ]),
            true,
        )?;
        let updated = run_bin(
            "ppo-update",
            &adapter(common(&[
                "--model",
                &model,
                "--rollouts",
                &rollouts,
                "--scores",
                &scores,
                "--out",
                &p(&it.join("policy")),
                "--iteration",
                &i.to_string(),
                "--algo",
                "grpo",
                "--kl-coef",
                BETA,
                "--learning-rate",
                LEARNING_RATE,
                "--lora-rank",
                LORA_RANK,
                "--lora-alpha",
                LORA_ALPHA,
                "--lora-targets",
                LORA_TARGETS,
                "--minibatch-size",
                &(s.prompts * s.samples).to_string(),
                "--micro-batch-size",
                MICRO_BATCH,
                "--epochs",
                "1",
                "--device",
                "cpu",
            ])),
            true,
        )?;
        ours.seconds.push(start.elapsed().as_secs_f64());
        ours.tokens += num(&sampled, "response_tokens", "sample-rollouts")?;
        for (v, what) in [
            (&sampled, "sample-rollouts"),
            (&scored, "score-rewards"),
            (&updated, "ppo-update"),
        ] {
            ours.peak_rss = ours.peak_rss.max(num(v, "peak_rss_bytes", what)?);
        }
    }
    Ok(ours)
}

/// The median of `v` without its first element (unless it is the only one): the time of an
/// iteration once running.
fn after_first(v: &[f64]) -> f64 {
    median(v[1.min(v.len().saturating_sub(1))..].to_vec())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Case for RlLoop {
    fn name(&self) -> &'static str {
        "rl_loop"
    }

    fn about(&self) -> &'static str {
        "the RL loop's three binaries (GRPO, LoRA) for several iterations vs TRL GRPOTrainer + peft"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let s = sizes(ctx.quick);
        let threads = ctx.threads.to_string();
        let scratch = Scratch::new("rl-loop")?;
        let dir = scratch.path();
        prepare_model(dir, s.iterations * s.prompts, s.preset, &threads)?;
        split_prompts(dir, &s)?;

        let start = Instant::now();
        let ours = run_ours(dir, &s, &threads)?;
        let wall = start.elapsed().as_secs_f64();
        let steady = after_first(&ours.seconds);
        let work = format!(
            "{} iterations of {} prompts x {} completions, <= {} tokens, {}, GRPO, LoRA r{LORA_RANK} on {LORA_TARGETS}",
            s.iterations, s.prompts, s.samples, s.max_new_tokens, s.preset
        );
        tracing::info!(
            "rl_loop: ours {:.0} completion tokens in {wall:.1}s, iterations {:?}",
            ours.tokens,
            ours.seconds
        );
        let mut m_loop = Measurement::new("rl_loop", ours.tokens / wall, "completion tokens/s");
        let mut m_iter = Measurement::new("rl_loop_iteration", steady, "s/iteration");
        let mut m_rss = Measurement::new("rl_loop_peak_rss", ours.peak_rss / 1e6, "MB");

        let args = strings(&[
            "--model",
            &p(&dir.join("model")),
            "--prompts",
            &p(&dir.join("loop-prompts.parquet")),
            "--steps",
            &s.iterations.to_string(),
            "--prompts-per-step",
            &s.prompts.to_string(),
            "--samples",
            &s.samples.to_string(),
            "--max-new-tokens",
            &s.max_new_tokens.to_string(),
            "--beta",
            BETA,
            "--learning-rate",
            LEARNING_RATE,
            "--lora-rank",
            LORA_RANK,
            "--lora-alpha",
            LORA_ALPHA,
            "--lora-targets",
            LORA_TARGETS,
            "--target-words",
            TARGET_WORDS,
            "--threads",
            &threads,
            "--out",
            &p(&dir.join("trl")),
        ]);
        let start = Instant::now();
        if let Some(v) = python::run_script(ctx, "rl_loop.py", &args)? {
            let theirs_wall = start.elapsed().as_secs_f64();
            let version = v.get("trl_version").and_then(|x| x.as_str()).unwrap_or("?");
            let tokens = python::number(&v, "completion_tokens", "rl_loop.py")?;
            let steps: Vec<f64> = v
                .get("step_seconds")
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
                .unwrap_or_default();
            anyhow::ensure!(
                steps.len() == s.iterations,
                "rl_loop.py timed {} steps of {}: {v}",
                steps.len(),
                s.iterations
            );
            let reference = format!("TRL {version} GRPOTrainer + peft, {work}");
            m_loop = m_loop.against(
                &format!("{reference}, whole process"),
                tokens / theirs_wall,
                true,
            );
            m_iter = m_iter.against(
                &format!("{reference}, one step"),
                after_first(&steps),
                false,
            );
            if let Ok(rss) = python::number(&v, "peak_rss_bytes", "rl_loop.py") {
                m_rss = m_rss.against("the TRL process's peak RSS", rss / 1e6, false);
            }
        }
        Ok(vec![m_loop, m_iter, m_rss])
    }
}

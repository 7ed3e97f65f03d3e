//! Case `scale`: every stage of the loop at the sizes users bring, so they can see what fits
//! their machine. For random-weight models with the architectures of SmolLM2-135M and
//! Qwen2.5-0.5B (`scripts/bench/scale_model.py`: the published configs, bf16 weights and tied
//! embeddings as on the Hub, a tokenizer of our own filled to the config's vocabulary of 49,152
//! and 151,936 tokens), with prompts of 256 tokens and responses of 128:
//!
//! - `sample`: sample-rollouts, 2 prompts x 2 samples, with reference log-probs;
//! - `rm_lora` / `rm_full`: train-rm-lora for 2 steps of 2 pairs (LoRA rank 8 on every block
//!   linear, or `--full`), evaluated on 2 held-out pairs;
//! - `score`: score-rewards with that LoRA reward model;
//! - `ppo_lora` / `ppo_full`: ppo-update `--algo ppo` for one epoch over the 4 rollouts
//!   (LoRA: policy, critic and reference on one copy of the base; `--full`: AdamW on every
//!   weight, the reference a second frozen copy).
//!
//! Each stage runs as its own process; its figures are the process's wall time (start, model
//! load and writing included), its peak RSS (`wait4`'s ru_maxrss: the child alone), and for the
//! training stages seconds per optimiser step (the run's `--record-timings` metrics, the
//! fastest step after the first). `score.rss_over_base_f32` is scoring's peak RSS over the
//! base's float32 size (the base and a reward adapter, libtorch's own memory included): the
//! base held once. In the training stages the activations of 2-4 sequences of 384 tokens
//! dominate the peak. LoRA figures are reported against `--full`'s (ratio > 1: LoRA wins). Needs `RLHF_PYTHON` (transformers writes the model folders). `--quick` runs the
//! SmolLM2 config cut to 2 layers with 32-token prompts and 8-token responses.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::{Message, PreferenceRow, PromptRow};
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;

use super::support::{fastest_step, keep, p, run_measured, strings, Measured, Scratch};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct Scale;

/// One model size and the work done on it.
struct Plan {
    /// `scale_model.py --size`.
    size: &'static str,
    /// Fewer layers than the published config (smoke tests).
    layers: Option<usize>,
    prompt_tokens: usize,
    new_tokens: usize,
    prompts: usize,
    samples: usize,
    train_pairs: usize,
    eval_pairs: usize,
    steps: usize,
}

fn plans(quick: bool) -> Vec<Plan> {
    let plan = |size| Plan {
        size,
        layers: None,
        prompt_tokens: 256,
        new_tokens: 128,
        prompts: 2,
        samples: 2,
        train_pairs: 4,
        eval_pairs: 2,
        steps: 2,
    };
    if quick {
        return vec![Plan {
            layers: Some(2),
            prompt_tokens: 32,
            new_tokens: 8,
            train_pairs: 2,
            steps: 1,
            ..plan("smollm2-135m")
        }];
    }
    vec![plan("smollm2-135m"), plan("qwen2.5-0.5b")]
}

/// Filler words for prompts and responses.
const WORDS: &[&str] = &[
    "river", "stone", "maple", "cloud", "amber", "lantern", "copper", "meadow", "harbor", "violet",
    "thunder", "orchard", "silver", "canyon", "ember", "willow", "the", "of", "and", "when",
];

/// Words appended one at a time until `measure(text)` reaches `tokens`.
fn text_of(tokens: usize, salt: usize, measure: impl Fn(&str) -> Result<usize>) -> Result<String> {
    let mut words: Vec<&str> = Vec::new();
    for k in 0.. {
        let text = words.join(" ");
        if measure(&text)? >= tokens {
            return Ok(text);
        }
        if k > 8 * tokens {
            bail!("could not make a text of {tokens} tokens");
        }
        let u = rlhf_core::hash::unit_interval(&format!("{salt}:{k}"));
        words.push(WORDS[(u * WORDS.len() as f64) as usize % WORDS.len()]);
    }
    unreachable!()
}

/// Writes `prompts.parquet` (chat prompts of `prompt_tokens` tokens with the model's template)
/// and `prefs.parquet` (pairs on such prompts, responses of `new_tokens` tokens) into `dir`.
fn write_data(dir: &Path, plan: &Plan) -> Result<()> {
    let tok = Tokenizer::from_dir(&dir.join("model"))?;
    let chat = tok.chat()?;
    let n = plan.prompts.max(plan.train_pairs + plan.eval_pairs);
    let mut prompts = Vec::with_capacity(n);
    for i in 0..n {
        let render = |content: &str| chat.render(&[Message::new("user", content)], true);
        let content = text_of(plan.prompt_tokens, i, |t| {
            Ok(tok.encode_rendered(&render(t)?)?.len())
        })?;
        let prompt = render(&content)?;
        prompts.push(PromptRow {
            prompt_id: rlhf_core::hash::content_id(&[&prompt]),
            prompt,
            messages: Some(vec![Message::new("user", &content)]),
            prompt_tokens: None,
            split: "train".into(),
            source: "bench".into(),
            reference: None,
        });
    }
    let response = |salt: usize| {
        text_of(plan.new_tokens, salt, |t| {
            Ok(tok.encode(&format!(" {t}"), false)?.len())
        })
        .map(|t| format!(" {t}"))
    };
    let mut pairs = Vec::new();
    for (i, row) in prompts
        .iter()
        .take(plan.train_pairs + plan.eval_pairs)
        .enumerate()
    {
        pairs.push(PreferenceRow {
            pair_id: format!("p{i}"),
            prompt_id: row.prompt_id.clone(),
            group_id: None,
            prompt: row.prompt.clone(),
            chosen: response(1000 + i)?,
            rejected: response(2000 + i)?,
            label: 1.0,
            margin: None,
            weight: 1.0,
            split: if i < plan.train_pairs {
                "train"
            } else {
                "eval"
            }
            .into(),
            source: "bench".into(),
            prompt_tokens: None,
            chosen_tokens: None,
            rejected_tokens: None,
        });
    }
    let lineage = |a| Lineage::new("rlhf-bench", env!("CARGO_PKG_VERSION"), a);
    write_records(
        &dir.join("prompts.parquet"),
        &prompts[..plan.prompts],
        &lineage(Artifact::Prompts),
    )?;
    write_records(
        &dir.join("prefs.parquet"),
        &pairs,
        &lineage(Artifact::Preferences),
    )?;
    Ok(())
}

/// One stage's figures.
struct Stage {
    run: Measured,
    /// Fastest optimiser step after the first (training stages).
    seconds_per_step: Option<f64>,
}

/// The fastest optimiser step after the first of a finished run in `out`.
fn seconds_per_step(out: &Path, stage: &str, iteration: i32) -> Result<f64> {
    let log = MetricsLog::read(&out.join("metrics.parquet"), stage, iteration)?;
    fastest_step(&log, out)
}

/// Runs every stage on one size; returns (stage name, figures) in order.
fn run_stages(dir: &Path, plan: &Plan, threads: &str) -> Result<Vec<(&'static str, Stage)>> {
    let model = p(&dir.join("model"));
    let common = |args: &[&str]| {
        let mut v = strings(args);
        v.extend(strings(&[
            "--threads",
            threads,
            "--seed",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "-q",
        ]));
        v
    };
    let mut stages = Vec::new();
    let sample = run_measured(
        "sample-rollouts",
        &common(&[
            "--model",
            &model,
            "--prompts",
            &p(&dir.join("prompts.parquet")),
            "--out",
            &p(&dir.join("rollouts.parquet")),
            "--samples-per-prompt",
            &plan.samples.to_string(),
            "--max-new-tokens",
            &plan.new_tokens.to_string(),
            "--temperature",
            "1",
            "--iteration",
            "1",
            "--summary-json",
            "-",
        ]),
    )?;
    stages.push((
        "sample",
        Stage {
            run: sample,
            seconds_per_step: None,
        },
    ));
    for (name, full) in [("rm_lora", false), ("rm_full", true)] {
        let out = dir.join(name);
        let mut args = common(&[
            "--model",
            &model,
            "--preferences",
            &p(&dir.join("prefs.parquet")),
            "--out",
            &p(&out),
            "--max-steps",
            &plan.steps.to_string(),
            "--epochs",
            "100",
            "--batch-size",
            "2",
            "--warmup-steps",
            "0",
            "--record-timings",
        ]);
        if full {
            args.extend(strings(&["--full", "--learning-rate", "1e-5"]));
        } else {
            args.extend(strings(&["--lora-targets", "all-linear"]));
        }
        let run = run_measured("train-rm-lora", &args)?;
        let step = seconds_per_step(&out, "train-rm-lora", 0)?;
        stages.push((
            name,
            Stage {
                run,
                seconds_per_step: Some(step),
            },
        ));
        // the full model is big and nothing reads it; the LoRA one scores the rollouts
        if full && !keep() {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let score = run_measured(
        "score-rewards",
        &common(&[
            "--rollouts",
            &p(&dir.join("rollouts.parquet")),
            "--model",
            &model,
            "--reward-model",
            &p(&dir.join("rm_lora")),
            "--out",
            &p(&dir.join("scores.parquet")),
        ]),
    )?;
    stages.push((
        "score",
        Stage {
            run: score,
            seconds_per_step: None,
        },
    ));
    let batch = (plan.prompts * plan.samples).to_string();
    for (name, full) in [("ppo_lora", false), ("ppo_full", true)] {
        let out = dir.join(name);
        let mut args = common(&[
            "--model",
            &model,
            "--rollouts",
            &p(&dir.join("rollouts.parquet")),
            "--scores",
            &p(&dir.join("scores.parquet")),
            "--out",
            &p(&out),
            "--algo",
            "ppo",
            "--minibatch-size",
            &batch,
            "--micro-batch-size",
            "2",
            "--epochs",
            "1",
            "--kl-coef",
            "0.05",
            "--record-timings",
        ]);
        if full {
            args.extend(strings(&["--full", "--ref-model", &model]));
            args.extend(strings(&["--learning-rate", "1e-5"]));
        } else {
            args.extend(strings(&["--lora-targets", "all-linear"]));
        }
        let run = run_measured("ppo-update", &args)?;
        let step = seconds_per_step(&out, "ppo-update", 1)?;
        stages.push((
            name,
            Stage {
                run,
                seconds_per_step: Some(step),
            },
        ));
        if !keep() {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    Ok(stages)
}

fn measure(ctx: &Context, root: &Path, plan: &Plan) -> Result<Vec<Measurement>> {
    let threads = ctx.threads.to_string();
    let dir = root.join(plan.size);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut args = strings(&["--size", plan.size, "--out", &p(&dir.join("model"))]);
    if let Some(l) = plan.layers {
        args.extend(strings(&["--layers", &l.to_string()]));
    }
    let Some(made) = python::run_script(ctx, "scale_model.py", &args)? else {
        bail!("the scale case needs RLHF_PYTHON (transformers writes its model folders)");
    };
    let params = python::number(&made, "parameters", "scale_model.py")?;
    write_data(&dir, plan)?;
    let stages = run_stages(&dir, plan, &threads)?;

    let gib = |b: f64| b / (1u64 << 30) as f64;
    let label = match plan.layers {
        Some(l) => format!("{}-{l}layers", plan.size),
        None => plan.size.to_string(),
    };
    let name = |stage: &str, what: &str| format!("scale.{label}.{stage}.{what}");
    let get = |stage: &str| -> &Stage {
        &stages
            .iter()
            .find(|(n, _)| *n == stage)
            .expect("every stage ran")
            .1
    };
    let mut out = vec![Measurement::new(
        format!("scale.{label}.parameters"),
        params,
        "params",
    )];
    for (stage, s) in &stages {
        out.push(Measurement::new(name(stage, "seconds"), s.run.seconds, "s"));
        out.push(Measurement::new(
            name(stage, "peak_rss"),
            gib(s.run.peak_rss_bytes),
            "GiB",
        ));
        if let Some(step) = s.seconds_per_step {
            out.push(Measurement::new(name(stage, "seconds_per_step"), step, "s"));
        }
    }
    let sample = get("sample");
    let tokens = sample
        .run
        .details
        .get("response_tokens")
        .and_then(serde_json::Value::as_f64)
        .context("sample-rollouts summary has no response_tokens")?;
    out.push(Measurement::new(
        name("sample", "response_tokens_per_second"),
        tokens / sample.run.seconds,
        "tokens/s (process wall time)",
    ));
    // LoRA against --full, per training stage.
    for (lora, full) in [("rm_lora", "rm_full"), ("ppo_lora", "ppo_full")] {
        let (l, f) = (get(lora), get(full));
        let vs = format!("--full ({full})");
        out.push(
            Measurement::new(
                name(lora, "vs_full_peak_rss"),
                gib(l.run.peak_rss_bytes),
                "GiB",
            )
            .against(&vs, gib(f.run.peak_rss_bytes), false),
        );
        if let (Some(a), Some(b)) = (l.seconds_per_step, f.seconds_per_step) {
            out.push(
                Measurement::new(name(lora, "vs_full_seconds_per_step"), a, "s")
                    .against(&vs, b, false),
            );
        }
    }
    out.push(Measurement::new(
        name("score", "rss_over_base_f32"),
        get("score").run.peak_rss_bytes / (4.0 * params),
        "x the base's float32 bytes",
    ));
    for (stage, s) in &stages {
        tracing::info!(
            size = %label,
            stage,
            seconds = s.run.seconds,
            peak_rss_gib = gib(s.run.peak_rss_bytes),
            seconds_per_step = s.seconds_per_step,
            "scale"
        );
    }
    Ok(out)
}

impl Case for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }

    fn about(&self) -> &'static str {
        "every stage at SmolLM2-135M and Qwen2.5-0.5B sizes (256+128 tokens): seconds and peak RSS, LoRA vs --full"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let root = Scratch::new("scale")?;
        let mut out = Vec::new();
        for plan in plans(ctx.quick) {
            out.extend(measure(ctx, root.path(), &plan)?);
        }
        Ok(out)
    }
}

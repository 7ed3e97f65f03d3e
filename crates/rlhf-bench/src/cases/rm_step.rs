//! Case `rm_step`: reward-model training steps against transformers + peft on the same base,
//! pairs, batch size and LoRA settings (the bar: 1.3x or better).
//!
//! It writes preference pairs of about 250 tokens a sequence (a 150-word prompt, 100-word
//! responses that differ in one marker word), makes the `30m` base (`small` with --quick) with
//! the `init-model` binary, runs `train-rm-lora` (LoRA r8 on q_proj and v_proj, no dropout,
//! batches of 8 pairs, `--record-timings`) and `scripts/bench/rm_step.py` (the same steps with
//! transformers + peft, reading the same file). Both figures are seconds per optimiser step
//! over the same number of steps, the first included and model loading excluded. Our stage
//! runs a pair's shared prompt once for both of its responses (`Model::forward_batch`);
//! transformers runs it twice, and so does our second run (`RLHF_NO_SHARED_PROMPTS=1`,
//! reported as `seconds_per_step_unshared_prompts`). The work folder is removed unless
//! RLHF_BENCH_KEEP is set.

use std::path::Path;

use anyhow::{Context as _, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::parquet_io::write_records;
use rlhf_core::records::PreferenceRow;
use rlhf_core::schema::Artifact;

use super::rm_lora_vs_full::{init_base, word};
use super::support::{best_in_turn, p, run_bin_with_env, strings, Scratch};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct RmStep;

/// Pairs per optimiser step, as in the measurement.
const BATCH: usize = 8;

/// `n` pairs of a `prompt_words`-word prompt and `response_words`-word responses; the chosen
/// one says "helpful" where the rejected one says "useless".
fn pairs(n: usize, prompt_words: usize, response_words: usize) -> Vec<PreferenceRow> {
    (0..n)
        .map(|i| {
            let words = |from: usize, count: usize| -> Vec<&str> {
                (from..from + count).map(|k| word(i, k)).collect()
            };
            let resp = |marker: &str| {
                let mut ws = words(1000, response_words - 1);
                ws.insert(i % response_words, marker);
                ws.join(" ")
            };
            PreferenceRow {
                pair_id: format!("p{i}"),
                prompt_id: format!("q{i}"),
                group_id: None,
                prompt: format!("User: {}\nAssistant:", words(0, prompt_words).join(" ")),
                chosen: format!(" {}", resp("helpful")),
                rejected: format!(" {}", resp("useless")),
                label: 1.0,
                margin: None,
                weight: 1.0,
                split: "train".into(),
                source: "bench".into(),
                prompt_tokens: None,
                chosen_tokens: None,
                rejected_tokens: None,
            }
        })
        .collect()
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
    write_records(&prefs, &pairs(steps * BATCH, 150, 100), &l)?;
    let model = dir.join("base");
    init_base(&prefs, preset, &model)?;
    let threads = ctx.threads.to_string();
    let train = |out: &str, env: &[(&str, &str)]| -> Result<f64> {
        let out = dir.join(out);
        run_bin_with_env(
            "train-rm-lora",
            &strings(&[
                "--model",
                &p(&model),
                "--preferences",
                &p(&prefs),
                "--out",
                &p(&out),
                "--max-steps",
                &steps.to_string(),
                "--batch-size",
                &BATCH.to_string(),
                "--lora-rank",
                "8",
                "--lora-targets",
                "q_proj,v_proj",
                "--learning-rate",
                "1e-3",
                "--device",
                "cpu",
                "--no-progress",
                "-q",
                "--record-timings",
                "--threads",
                &threads,
            ]),
            env,
            false,
        )?;
        let log = MetricsLog::read(&out.join("metrics.parquet"), "train-rm-lora", 0)?;
        log.last("run/seconds_per_step")
            .context("metric run/seconds_per_step missing")
    };
    let script = "rm_step.py";
    let args = strings(&[
        "--model",
        &p(&model),
        "--preferences",
        &p(&prefs),
        "--batch-size",
        &BATCH.to_string(),
        "--steps",
        &steps.to_string(),
        "--threads",
        &threads,
    ]);
    // The same run with each sequence's prompt computed for itself, as transformers does.
    let off = [("RLHF_NO_SHARED_PROMPTS", "1")];
    let mut tokens = None;
    let [ours, unshared, theirs] = best_in_turn(
        ctx.rounds,
        f64::min,
        [
            &mut |r| train(&format!("rm-{r}"), &[]).map(Some),
            &mut |r| train(&format!("rm-unshared-{r}"), &off).map(Some),
            &mut |_| {
                let Some(v) = python::run_script(ctx, script, &args)? else {
                    return Ok(None);
                };
                tokens = Some(python::number(&v, "tokens_per_step", script)?);
                python::number(&v, "seconds_per_step", script).map(Some)
            },
        ],
    )?;
    let name = |what: &str| format!("rm_step.{preset}.{what}");
    let (ours, unshared) = (ours.unwrap_or(f64::NAN), unshared.unwrap_or(f64::NAN));
    let mut m = Measurement::new(name("seconds_per_step"), ours, "s");
    let mut u = Measurement::new(name("seconds_per_step_unshared_prompts"), unshared, "s");
    let mut out = vec![];
    if let (Some(theirs), Some(tokens)) = (theirs, tokens) {
        let vs = "transformers + peft, same pairs/batch/LoRA";
        m = m.against(vs, theirs, false);
        u = u.against(vs, theirs, false);
        out.push(Measurement::new(name("tokens_per_step"), tokens, "tokens"));
    }
    out.splice(0..0, [m, u]);
    Ok(out)
}

impl Case for RmStep {
    fn name(&self) -> &'static str {
        "rm_step"
    }

    fn about(&self) -> &'static str {
        "reward-model training step (LoRA r8 q/v, 8 pairs of ~250 tokens) vs transformers + peft"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let root = Scratch::new("rm-step")?;
        let (preset, steps) = if ctx.quick { ("small", 2) } else { ("30m", 6) };
        measure(ctx, root.path(), preset, steps)
    }
}

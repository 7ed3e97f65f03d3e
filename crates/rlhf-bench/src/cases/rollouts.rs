//! Case `rollouts`: throughput of the two experience stages on the bench model, run as the
//! real binaries on real files.
//!
//! The bench model is `init-model --preset 30m` (Llama, hidden 512, 8 layers, ~30M
//! parameters with a 2048-token BPE trained on the embedded task; `--quick`: the small
//! preset). Prompts are the embedded task's.
//!
//! - `rollouts_sample`: sample-rollouts response tokens per second (K = 4 samples per prompt,
//!   temperature 1, up to N new tokens, reference log-probabilities on), sampling loop only
//!   (the binary's `--summary-json` figure; model loading excluded). Reference: transformers
//!   `generate` on the same prompt groups (same K, N, temperature) plus the same reference
//!   forward pass (`scripts/bench/rollouts.py sample`).
//! - `rollouts_score`: score-rewards sequences per second with a LoRA reward adapter (a PEFT
//!   SEQ_CLS adapter made by the reference script) on those rollouts. Reference: peft on
//!   the same sequences, one right-padded batch per prompt group as score-rewards does on CPU.
//! - `rollouts_sample_peak_rss`: sample-rollouts peak resident memory (lower is better),
//!   against the transformers run's.
//! - `rollouts_memory_growth`: peak memory with twice the prompts over peak memory with the
//!   base count (1.0 = flat: rows are streamed to the file). Full runs only.
//!
//! Without RLHF_PYTHON the reward adapter cannot be made, so only the sampling figures run.

use std::path::Path;

use anyhow::Result;

use super::support::{num, p, prepare_model, run_bin, strings, Scratch};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct Rollouts;

/// Sizes of one run.
struct Sizes {
    preset: &'static str,
    prompts: usize,
    samples: usize,
    max_new_tokens: usize,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            preset: "small",
            prompts: 4,
            samples: 4,
            max_new_tokens: 8,
        }
    } else {
        Sizes {
            preset: "30m",
            prompts: 8,
            samples: 4,
            max_new_tokens: 32,
        }
    }
}

/// Runs sample-rollouts on the first `prompts` prompts; returns its JSON summary.
fn sample(
    dir: &Path,
    s: &Sizes,
    prompts: usize,
    out: &str,
    threads: &str,
) -> Result<serde_json::Value> {
    run_bin(
        "sample-rollouts",
        &strings(&[
            "--model",
            &p(&dir.join("model")),
            "--prompts",
            &p(&dir.join("prompts.parquet")),
            "--out",
            &p(&dir.join(out)),
            "--max-prompts",
            &prompts.to_string(),
            "--samples-per-prompt",
            &s.samples.to_string(),
            "--max-new-tokens",
            &s.max_new_tokens.to_string(),
            "--temperature",
            "1",
            "--device",
            "cpu",
            "--threads",
            threads,
            "--seed",
            "0",
            "--summary-json",
            "-",
            "--no-progress",
            "-q",
        ]),
        true,
    )
}

impl Case for Rollouts {
    fn name(&self) -> &'static str {
        "rollouts"
    }

    fn about(&self) -> &'static str {
        "sample-rollouts tokens/s and score-rewards sequences/s on the bench model, vs transformers/peft"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let s = sizes(ctx.quick);
        let threads = ctx.threads.to_string();
        let scratch = Scratch::new("rollouts")?;
        let dir = scratch.path();
        prepare_model(dir, s.prompts, s.preset, &threads)?;
        let mut out = Vec::new();

        let ours = sample(dir, &s, s.prompts, "rollouts.parquet", &threads)?;
        let tps = num(&ours, "response_tokens_per_second", "sample-rollouts")?;
        let rss = num(&ours, "peak_rss_bytes", "sample-rollouts").ok();
        let rollouts = p(&dir.join("rollouts.parquet"));
        let work = format!(
            "{} prompts x {} samples, <= {} tokens, {}",
            s.prompts, s.samples, s.max_new_tokens, s.preset
        );
        let mut m_sample = Measurement::new("rollouts_sample", tps, "response tokens/s");
        let mut m_rss = rss.map(|r| Measurement::new("rollouts_sample_peak_rss", r / 1e6, "MB"));
        let args = strings(&[
            "sample",
            "--model",
            &p(&dir.join("model")),
            "--rollouts",
            &rollouts,
            "--max-new-tokens",
            &s.max_new_tokens.to_string(),
            "--threads",
            &threads,
        ]);
        if let Some(v) = python::run_script(ctx, "rollouts.py", &args)? {
            let version = v
                .get("torch_version")
                .and_then(|x| x.as_str())
                .unwrap_or("?");
            let reference =
                format!("transformers generate + ref forward (torch {version}), {work}");
            m_sample = m_sample.against(
                &reference,
                python::number(&v, "response_tokens_per_second", "rollouts.py")?,
                true,
            );
            if let (Some(m), Some(theirs)) = (
                m_rss.take(),
                v.get("peak_rss_bytes").and_then(|x| x.as_f64()),
            ) {
                m_rss = Some(m.against("the transformers run's peak RSS", theirs / 1e6, false));
            }
        }
        out.push(m_sample);
        out.extend(m_rss);

        if !ctx.quick {
            let double = sample(dir, &s, 2 * s.prompts, "rollouts-2x.parquet", &threads)?;
            if let (Some(a), Ok(b)) = (rss, num(&double, "peak_rss_bytes", "sample-rollouts")) {
                out.push(Measurement::new(
                    "rollouts_memory_growth",
                    b / a,
                    "x peak RSS at 2x prompts",
                ));
            }
        }

        let rm = p(&dir.join("rm"));
        let made = python::run_script(
            ctx,
            "rollouts.py",
            &strings(&["make-rm", "--model", &p(&dir.join("model")), "--out", &rm]),
        )?;
        if made.is_none() {
            tracing::warn!("no Python: no reward adapter, so no scoring figure");
            return Ok(out);
        }
        let scored = run_bin(
            "score-rewards",
            &strings(&[
                "--rollouts",
                &rollouts,
                "--model",
                &p(&dir.join("model")),
                "--reward-model",
                &rm,
                "--out",
                &p(&dir.join("scores.parquet")),
                "--device",
                "cpu",
                "--threads",
                &threads,
                "--summary-json",
                "-",
                "--no-progress",
                "-q",
            ]),
            true,
        )?;
        let mut m_score = Measurement::new(
            "rollouts_score",
            num(&scored, "sequences_per_second", "score-rewards")?,
            "sequences/s",
        );
        let args = strings(&[
            "score",
            "--model",
            &p(&dir.join("model")),
            "--adapter",
            &rm,
            "--rollouts",
            &rollouts,
            "--threads",
            &threads,
        ]);
        if let Some(v) = python::run_script(ctx, "rollouts.py", &args)? {
            let version = v
                .get("transformers_version")
                .and_then(|x| x.as_str())
                .unwrap_or("?");
            m_score = m_score.against(
                &format!("peft SEQ_CLS (transformers {version}), same sequences and batches"),
                python::number(&v, "sequences_per_second", "rollouts.py")?,
                true,
            );
        }
        out.push(m_score);
        Ok(out)
    }
}

//! Case `sampling`: batched sampling with the KV cache on a random ~30M-parameter Llama
//! (preset llama-30m): batch 16, 64-token prompts, 128 new tokens, temperature 1, on the
//! CPU with `--threads`. Reports tokens/s with the cache, against transformers' `generate`
//! on the same saved model and threads (`scripts/bench/sampling.py`), as a fraction of the
//! matmul roof (the model's forward flops per token over the measured matmul rate), and
//! without the cache (a full forward per token) to show what the cache buys. Set
//! `RLHF_NO_DECODE_KERNELS=1` to time libtorch's own decode path instead of rlhf-nn's CPU
//! decode kernels.
//!
//! This machine's speed drifts by 20% and more between runs of a few seconds (a shared VM), so
//! both sides time [`REPEATS`] runs after the warm-up and report the best; with `--rounds N`
//! the two sides take turns N times and each reports its best over all rounds.

use std::time::Instant;

use anyhow::Result;
use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::{Model, ModelConfig};
use tch::{Device, Kind, Tensor};

use super::support::best_in_turn;
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct Sampling;

/// Timed runs per side (one with `--quick`); the best is reported.
const REPEATS: usize = 3;

/// (batch, prompt tokens, new tokens) of a run.
fn shape(quick: bool) -> (usize, usize, usize) {
    if quick {
        (4, 16, 8)
    } else {
        (16, 64, 128)
    }
}

fn prompts(batch: usize, len: usize, vocab: i64) -> Vec<Vec<i32>> {
    (0..batch)
        .map(|i| {
            (0..len)
                .map(|j| ((i * 131 + j * 17) as i64 % (vocab - 3) + 3) as i32)
                .collect()
        })
        .collect()
}

/// Tokens per second of `generate` with the KV cache: the best of `repeats` runs.
fn with_cache(model: &Model, prompts: &[Vec<i32>], new: usize, repeats: usize) -> Result<f64> {
    let seeds: Vec<u64> = (0..prompts.len() as u64).collect();
    let params = SamplingParams {
        max_new_tokens: new,
        temperature: 1.0,
        ..Default::default()
    };
    // Warm-up: the whole batch, a few tokens (as scripts/bench/sampling.py does), so one-time
    // costs (thread start, first allocations) stay out of the timed run.
    let warm = SamplingParams {
        max_new_tokens: 4,
        ..params.clone()
    };
    generate(model, None, prompts, &seeds, &warm, 0, None)?;
    let mut best = 0f64;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let out = generate(model, None, prompts, &seeds, &params, 0, None)?;
        let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
        best = best.max(tokens as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Tokens per second of greedy decoding with a full forward over the sequence per token.
fn without_cache(model: &Model, prompts: &[Vec<i32>], new: usize) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    let batch = prompts.len() as i64;
    let mut seqs: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| p.iter().map(|&x| x as i64).collect())
        .collect();
    let t = Instant::now();
    for _ in 0..new {
        let n = seqs[0].len() as i64;
        let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
        let ids = Tensor::from_slice(&flat).view([batch, n]);
        let mask = Tensor::ones([batch, n], (Kind::Int64, Device::Cpu));
        let h = model.forward(&ids, &mask, None, false)?;
        let next = Vec::<i64>::try_from(
            model
                .lm_logits(&h.select(1, n - 1), None, false)?
                .argmax(-1, false),
        )?;
        for (s, t) in seqs.iter_mut().zip(next) {
            s.push(t);
        }
    }
    Ok((prompts.len() * new) as f64 / t.elapsed().as_secs_f64())
}

impl Case for Sampling {
    fn name(&self) -> &'static str {
        "sampling"
    }

    fn about(&self) -> &'static str {
        "KV-cache sampling on a ~30M Llama (batch 16, 64-token prompts, 128 new), tokens/s (best of 3) vs transformers generate"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        tch::set_num_threads(ctx.threads as i32);
        let (batch, prompt_len, new) = shape(ctx.quick);
        let cfg = ModelConfig::preset("llama-30m")?;
        let model = Model::random(&cfg, Device::Cpu, Kind::Float, 0)?;
        let dir = tempfile::tempdir()?;
        model.save_pretrained(dir.path())?;
        let prompts = prompts(batch, prompt_len, cfg.vocab_size);

        let repeats = if ctx.quick { 1 } else { REPEATS };
        let uncached_tokens = if ctx.quick { new } else { 32 };
        let uncached = without_cache(&model, &prompts, uncached_tokens)?;
        let args = [
            "--model".to_string(),
            dir.path().display().to_string(),
            "--batch".to_string(),
            batch.to_string(),
            "--prompt-len".to_string(),
            prompt_len.to_string(),
            "--new".to_string(),
            new.to_string(),
            "--threads".to_string(),
            ctx.threads.to_string(),
            "--repeats".to_string(),
            repeats.to_string(),
        ];
        let [cached, theirs] = best_in_turn(
            ctx.rounds,
            f64::max,
            [
                &mut |_| with_cache(&model, &prompts, new, repeats).map(Some),
                &mut |_| {
                    python::run_script(ctx, "sampling.py", &args)?
                        .map(|v| python::number(&v, "tokens_per_s", "sampling.py"))
                        .transpose()
                },
            ],
        )?;
        let cached = cached.unwrap_or(f64::NAN);
        let mut out = Vec::new();
        let mut ours = Measurement::new("sampling.kv_cache.tokens_per_s", cached, "tokens/s");
        if let Some(theirs) = theirs {
            ours = ours.against(
                "transformers generate, same model and threads",
                theirs,
                true,
            );
        }
        out.push(ours);
        // Forward flops per generated token ~ 2 x parameters (the KV-cache attention term is
        // small at these lengths); as a fraction of what the matmul roof allows.
        if let Some(roof) = ctx.value("matmul_fp32") {
            let flops_per_token = 2.0 * cfg.num_parameters() as f64;
            let achieved = cached * flops_per_token / 1e9;
            out.push(
                Measurement::new("sampling.kv_cache.gflops", achieved, "GFLOP/s").against(
                    "matmul_fp32 roof",
                    roof,
                    true,
                ),
            );
        }
        out.push(
            Measurement::new("sampling.cache_vs_no_cache", cached, "tokens/s").against(
                "same model without the KV cache (greedy, full forward per token)",
                uncached,
                true,
            ),
        );
        Ok(out)
    }
}

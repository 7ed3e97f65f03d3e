//! Sampling one window of prompts: K responses per prompt with the policy (base + adapter),
//! then the reference log-probabilities of the same tokens with the adapter switched off (the
//! same base in memory) or from --ref-model, assembled into rollout rows.
//!
//! Batching and determinism: whole prompts decode together, up to the settings' batch rows at
//! once, the next prompt of the window joining as soon as finished rows leave room for its K
//! samples. Each prompt's K samples are prefilled as a batch of their own and then decode with
//! the other prompts' ([`generate_groups`]); on a CPU with the decode kernels every row of a
//! decode step is computed in the same order whatever shares the batch, and the reference
//! log-probs are scored one prompt at a time (libtorch's products round differently for
//! different numbers of rows), so a row is the same bytes whatever --batch-size, the shard or
//! the neighbouring prompts are; each sample's seeded random stream does the rest. Where the
//! kernels do not run, a CPU batch is one prompt for the same reason (unless --pack-prompts);
//! on CUDA whole prompts are packed and scored together for throughput, and a row's numbers
//! then depend on its neighbours within float rounding.

use std::ops::Range;

use anyhow::{Context, Result};
use rlhf_core::records::RolloutRow;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::generate::{generate_groups, Generation, SamplingParams, StopFn};
use rlhf_nn::Model;

use crate::prompts::PromptJob;
use crate::seeding::{rollout_id, sample_seed};

/// Forward batches' worth of prompts sampled in one call: rows that finish early leave room
/// for the next prompts of the window (continuous refill), and the window's rows are written
/// when it ends.
pub const WINDOW_BATCHES: usize = 8;

/// Splits `n` prompts into windows of whole prompts: [`WINDOW_BATCHES`] times as many as fit
/// in `batch_rows` sequences of `samples_per_prompt` each (at least one per batch).
pub fn plan_windows(n: usize, samples_per_prompt: usize, batch_rows: usize) -> Vec<Range<usize>> {
    let per_batch = (batch_rows / samples_per_prompt.max(1)).max(1);
    let per_window = per_batch * WINDOW_BATCHES;
    (0..n)
        .step_by(per_window)
        .map(|start| start..(start + per_window).min(n))
        .collect()
}

/// What stays the same for every window of a run.
pub struct SampleContext<'a> {
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    /// Adapter name inside the model (None = the base is the policy).
    pub adapter: Option<&'a str>,
    pub params: SamplingParams,
    pub stop: Vec<String>,
    pub samples_per_prompt: usize,
    /// Most sequences decoding at once (whole prompts; at least one).
    pub batch_rows: usize,
    pub iteration: i32,
    pub seed: u64,
    pub policy_id: String,
    pub ref_logprobs: bool,
    /// The model that gives ref_logprobs (--ref-model); None: `model` with the adapter off.
    pub ref_model: Option<&'a Model>,
}

impl SampleContext<'_> {
    /// Samples the prompts of one window, at most `batch_rows` sequences decoding at once;
    /// returns each prompt's K rows.
    pub fn sample(&self, jobs: &[PromptJob]) -> Result<Vec<Vec<RolloutRow>>> {
        let _guard = tch::no_grad_guard();
        let k = self.samples_per_prompt;
        let mut prompts = Vec::with_capacity(jobs.len() * k);
        let mut seeds = Vec::with_capacity(jobs.len() * k);
        for job in jobs {
            for s in 0..k {
                prompts.push(job.tokens.clone());
                seeds.push(sample_seed(self.seed, self.iteration, &job.prompt_id, s));
            }
        }
        let pad = self.tokenizer.pad_id as i32;
        let stop = |_: usize, tokens: &[i32]| -> bool {
            // A token may complete a stop string in its middle: look for it anywhere.
            self.tokenizer
                .decode(tokens)
                .is_ok_and(|text| self.stop.iter().any(|s| text.contains(s.as_str())))
        };
        let stop_fn: Option<StopFn> = if self.stop.is_empty() {
            None
        } else {
            Some(&stop)
        };
        let gens: Vec<Generation> = generate_groups(
            self.model,
            self.adapter,
            &prompts,
            &seeds,
            &self.params,
            pad,
            stop_fn,
            k,
            self.batch_rows,
        )
        .context("sampling")?;
        anyhow::ensure!(
            gens.len() == prompts.len(),
            "generate returned {} sequences for {}",
            gens.len(),
            prompts.len()
        );
        let refs = if self.ref_logprobs {
            // one prompt at a time on the CPU (the same shapes whatever the batch), on CUDA
            // as many whole prompts as decode at once
            let rows = match self.model.device().is_cuda() {
                true => (self.batch_rows / k).max(1) * k,
                false => k,
            };
            let mut all = Vec::with_capacity(prompts.len());
            for (p, g) in prompts.chunks(rows).zip(gens.chunks(rows)) {
                all.extend(self.reference_logprobs(p, g)?);
            }
            Some(all)
        } else {
            None
        };
        let mut out = Vec::with_capacity(jobs.len());
        for (j, job) in jobs.iter().enumerate() {
            let mut rows = Vec::with_capacity(k);
            for s in 0..k {
                let i = j * k + s;
                let g = &gens[i];
                rows.push(RolloutRow {
                    rollout_id: rollout_id(&job.prompt_id, self.iteration, s, &self.policy_id),
                    prompt_id: job.prompt_id.clone(),
                    iteration: self.iteration,
                    sample_index: s as i32,
                    prompt: job.prompt.clone(),
                    messages: job.messages.clone(),
                    response: self.tokenizer.decode(&g.tokens)?,
                    prompt_tokens: job.tokens.clone(),
                    response_tokens: g.tokens.clone(),
                    logprobs: g.logprobs.clone(),
                    ref_logprobs: refs.as_ref().map(|r: &Vec<Vec<f32>>| r[i].clone()),
                    finish_reason: g.finish.as_str().to_string(),
                    policy_id: self.policy_id.clone(),
                    seed: seeds[i],
                });
            }
            out.push(rows);
        }
        Ok(out)
    }

    /// log p_ref(token) of every response token at temperature 1: the same base with the
    /// adapter off, or --ref-model (no adapter), through one and the same scoring call.
    fn reference_logprobs(
        &self,
        prompts: &[Vec<i32>],
        gens: &[Generation],
    ) -> Result<Vec<Vec<f32>>> {
        let rows: Vec<(&[i32], &[i32])> = prompts
            .iter()
            .zip(gens)
            .map(|(p, g)| (p.as_slice(), g.tokens.as_slice()))
            .collect();
        let (model, what) = match self.ref_model {
            Some(m) => (m, "reference log-probabilities (--ref-model)"),
            None => (self.model, "reference log-probabilities (adapter off)"),
        };
        let batch = SeqBatch::new(&rows, self.tokenizer.pad_id as i32, model.device())?;
        let lp = rlhf_nn::scoring::token_logprobs(model, None, &batch, false).context(what)?;
        Ok(batch.response_values(&lp)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_hold_whole_prompts() {
        let w = WINDOW_BATCHES;
        assert_eq!(plan_windows(3, 4, 4), vec![0..3]);
        assert_eq!(
            plan_windows(2 * w + 1, 4, 4),
            vec![0..w, w..2 * w, 2 * w..2 * w + 1]
        );
        assert_eq!(
            plan_windows(5 * w, 4, 11),
            vec![0..2 * w, 2 * w..4 * w, 4 * w..5 * w]
        );
        // A prompt with more samples than the batch still gets a batch of its own.
        assert_eq!(plan_windows(w + 1, 16, 8), vec![0..w, w..w + 1]);
        assert!(plan_windows(0, 4, 8).is_empty());
    }
}

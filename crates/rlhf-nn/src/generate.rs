//! Batched generation with a KV cache: prompts are left-padded, one prefill then one decode
//! step per token; each sequence samples on the CPU with its own seeded generator, so its
//! draws do not depend on which other sequences share the batch. Finished rows are dropped
//! from the cache as they finish. Runs without grad.

use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use crate::error::{NnError, Result};
use crate::kv_cache::KvCache;
use crate::sampler::sample_row;
pub use crate::sampler::SamplingParams;
use crate::Model;

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS token was produced (it is the last token).
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// The stop callback asked to stop (after the last token).
    Stop,
}

impl FinishReason {
    /// `eos`, `length` or `stop` (the rollouts artifact's finish_reason values).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens (EOS included when it ended the sequence).
    pub tokens: Vec<i32>,
    /// Log-probability of each token under the sampling distribution (after temperature,
    /// top-k, top-p); for greedy decoding, under the plain softmax.
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Stop callback: `(sequence index, tokens generated so far) -> stop now?`, e.g. a check that
/// the decoded text ends with a stop string.
pub type StopFn<'a> = &'a (dyn Fn(usize, &[i32]) -> bool + 'a);

/// Generates one continuation per prompt. `seeds[i]` seeds sequence i. `pad_id` fills the
/// left padding (masked out). `adapter` None samples from the base (reference policy).
pub fn generate(
    model: &Model,
    adapter: Option<&str>,
    prompts: &[Vec<i32>],
    seeds: &[u64],
    params: &SamplingParams,
    pad_id: i32,
    stop: Option<StopFn>,
) -> Result<Vec<Generation>> {
    let _guard = tch::no_grad_guard();
    params.validate().map_err(NnError::Argument)?;
    if prompts.len() != seeds.len() {
        return Err(NnError::Argument(format!(
            "generate: {} prompts but {} seeds",
            prompts.len(),
            seeds.len()
        )));
    }
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    let vocab = model.config().vocab_size;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(NnError::Argument(format!("generate: prompt {i} is empty")));
        }
        if let Some(t) = p.iter().find(|&&t| t < 0 || t as i64 >= vocab) {
            return Err(NnError::Argument(format!(
                "generate: prompt {i} has token {t} outside the vocabulary (size {vocab})"
            )));
        }
    }
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let cap = (width + params.max_new_tokens) as i64;
    let cfg = model.config();
    if cfg.arch == crate::config::Arch::Gpt2 && cap > cfg.max_position_embeddings {
        return Err(NnError::Argument(format!(
            "generate: prompt length {width} + max_new_tokens {} exceeds n_positions {} of this GPT-2 model",
            params.max_new_tokens, cfg.max_position_embeddings
        )));
    }
    let device = model.device();
    let mut ids = vec![pad_id as i64; b * width];
    let mut mask = vec![0i64; b * width];
    for (i, p) in prompts.iter().enumerate() {
        let off = width - p.len();
        for (j, &t) in p.iter().enumerate() {
            ids[i * width + off + j] = t as i64;
            mask[i * width + off + j] = 1;
        }
    }
    let mut rngs: Vec<_> = seeds
        .iter()
        .map(|&s| crate::rng::rng_for(s, "sample"))
        .collect();
    let mut out: Vec<Generation> = (0..b)
        .map(|_| Generation {
            tokens: vec![],
            logprobs: vec![],
            finish: FinishReason::Length,
        })
        .collect();
    if params.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut cache = KvCache::new(model, b as i64, cap);
    let input = Tensor::from_slice(&ids)
        .view([b as i64, width as i64])
        .to_device(device);
    let m = Tensor::from_slice(&mask)
        .view([b as i64, width as i64])
        .to_device(device);
    // The CPU decode kernels on every thread: for a Llama model from the prefill on where they
    // have kernels for its many rows (AVX-512), else from the first decode step; for GPT-2
    // from the first decode step, from 8 sequences (see `decode_kernels`).
    use crate::decode_kernels::{prefill_kernels, DecodeThreads};
    let llama = cfg.arch == crate::config::Arch::Llama;
    let scope = || match llama {
        true => DecodeThreads::enter_fused(b as i64, model.kind(), device),
        false => DecodeThreads::enter(b as i64, model.kind(), device),
    };
    let mut threads = (llama && prefill_kernels()).then(scope);
    let hidden = model.prefill(&input, &m, &mut cache, adapter)?;
    let mut logits = model.lm_logits(&hidden.select(1, 0))?;
    let threads = threads.get_or_insert_with(scope);
    // active[r] = sequence index of cache row r; slot[seq] = its row while it is active.
    let mut active: Vec<usize> = (0..b).collect();
    let mut slot: Vec<Option<usize>> = (0..b).map(Some).collect();
    for step in 0..params.max_new_tokens {
        let rows = active.len();
        // Read in place (a contiguous f32 CPU tensor no one else holds), else copied.
        let host = logits
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        let copied;
        let flat: &[f32] = match crate::decode_kernels::floats(&host) {
            Some(f) => f,
            None => {
                copied = Vec::<f32>::try_from(host.view([-1]))?;
                &copied
            }
        };
        let v = vocab as usize;
        // Rows draw in parallel, each from its own sequence's generator.
        let mut draws: Vec<(usize, &mut ChaCha8Rng, (usize, f32))> = rngs
            .iter_mut()
            .enumerate()
            .filter_map(|(seq, g)| slot[seq].map(|r| (r, g, (0, 0.0))))
            .collect();
        let sample = |part: &mut [(usize, &mut ChaCha8Rng, (usize, f32))]| {
            for (r, rng, draw) in part.iter_mut() {
                *draw = sample_row(&flat[*r * v..(*r + 1) * v], params, rng);
            }
        };
        // In parallel only while libtorch is single-threaded (its idle workers would spin).
        if threads.active() {
            crate::decode_kernels::split(&mut draws, 1, |_, part| sample(part));
        } else {
            sample(&mut draws);
        }
        let mut picked = vec![(0usize, 0f32); rows];
        for (r, _, draw) in draws {
            picked[r] = draw;
        }
        let mut next = Vec::with_capacity(rows);
        let mut keep = Vec::with_capacity(rows);
        for (r, &seq) in active.iter().enumerate() {
            let (tok, lp) = picked[r];
            let tok = tok as i32;
            let g = &mut out[seq];
            g.tokens.push(tok);
            g.logprobs.push(lp);
            if params.eos_ids.contains(&tok) {
                g.finish = FinishReason::Eos;
            } else if stop.is_some_and(|f| f(seq, &g.tokens)) {
                g.finish = FinishReason::Stop;
            } else {
                keep.push(r as i64);
                next.push(tok as i64);
            }
        }
        if keep.is_empty() || step + 1 == params.max_new_tokens {
            break;
        }
        if keep.len() < rows {
            cache.select_rows(&Tensor::from_slice(&keep).to_device(device));
            active = keep.iter().map(|&r| active[r as usize]).collect();
            slot.fill(None);
            for (r, &seq) in active.iter().enumerate() {
                slot[seq] = Some(r);
            }
        }
        let n = active.len() as i64;
        let input = Tensor::from_slice(&next).view([n, 1]).to_device(device);
        let ones = Tensor::ones([n, 1], (Kind::Int64, device));
        let hidden = model.forward_cached(&input, &ones, &mut cache, adapter)?;
        logits = model.lm_logits(&hidden.select(1, 0))?;
    }
    Ok(out)
}

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
/// All prompts share one prefill; see [`generate_groups`] for outputs that do not depend on
/// the batch.
pub fn generate(
    model: &Model,
    adapter: Option<&str>,
    prompts: &[Vec<i32>],
    seeds: &[u64],
    params: &SamplingParams,
    pad_id: i32,
    stop: Option<StopFn>,
) -> Result<Vec<Generation>> {
    run(model, adapter, prompts, seeds, params, pad_id, stop, None)
}

/// Which threads draw a decode step's rows.
#[derive(Clone, Copy, Debug)]
enum Draw {
    /// The decode kernels' crew (inside their scope, libtorch single-threaded).
    Crew,
    /// rayon's pool (a GPU computes the logits; the host's cores are free).
    Pool,
    /// The calling thread, one row after another.
    Serial,
}

/// Draws each row's next token from its logits (`flat`, rows of `vocab`) with its own
/// sequence's generator: `draws` holds (logits row, generator, result). Each row depends only
/// on its logits and generator, so every [`Draw`] gives the same results.
fn draw_rows(
    flat: &[f32],
    vocab: usize,
    params: &SamplingParams,
    draws: &mut [(usize, &mut ChaCha8Rng, (usize, f32))],
    how: Draw,
) {
    let sample = |part: &mut [(usize, &mut ChaCha8Rng, (usize, f32))]| {
        for (r, rng, draw) in part.iter_mut() {
            *draw = sample_row(&flat[*r * vocab..(*r + 1) * vocab], params, rng);
        }
    };
    match how {
        Draw::Crew => crate::decode_kernels::split(draws, 1, |_, part| sample(part)),
        Draw::Pool => {
            use rayon::prelude::*;
            draws.par_chunks_mut(1).for_each(sample);
        }
        Draw::Serial => sample(draws),
    }
}

/// Rows up to which [`generate_groups`] is batch-invariant for a model of `kind` on `device`:
/// `Some` where the CPU decode kernels run (f32 on an x86-64 CPU with AVX-512F or AVX2+FMA,
/// kernels not turned off), `None` elsewhere (libtorch's products round differently for
/// different numbers of rows).
pub fn batch_invariant_rows(kind: Kind, device: Device) -> Option<usize> {
    (crate::decode_kernels::simd().is_some() && kind == Kind::Float && device == Device::Cpu)
        .then_some(crate::decode_kernels::gemm::MAX_ROWS as usize)
}

/// [`generate`] for prompts in groups of `group` consecutive rows (the K samples of one prompt;
/// the last group may be shorter), at most `max_rows` rows decoding at once (at least one
/// group): each group is prefilled as a batch of its own, with the shapes it would have alone,
/// and joins the batch as soon as finished rows leave room for it (continuous refill); the
/// decode steps run every row together with the CPU decode kernels from one row on (GPT-2
/// too), whose products, attention, norms and sampling compute each row in the same order
/// whatever the other rows hold (a left pad adds exact zeros). Up to
/// [`batch_invariant_rows`] rows, each row's tokens and log-probs are then the same bits
/// whichever other groups share the call and whatever `max_rows` is: the groups of a prompt
/// file can be packed without changing a byte of the output.
#[allow(clippy::too_many_arguments)]
pub fn generate_groups(
    model: &Model,
    adapter: Option<&str>,
    prompts: &[Vec<i32>],
    seeds: &[u64],
    params: &SamplingParams,
    pad_id: i32,
    stop: Option<StopFn>,
    group: usize,
    max_rows: usize,
) -> Result<Vec<Generation>> {
    if group == 0 {
        return Err(NnError::Argument("generate: group of 0 rows".into()));
    }
    let grouping = Some((group, max_rows));
    run(
        model, adapter, prompts, seeds, params, pad_id, stop, grouping,
    )
}

/// Left-pads `prompts` to their longest: (ids, mask) row-major (rows, width), and the width.
fn left_padded(prompts: &[Vec<i32>], pad_id: i32) -> (Vec<i64>, Vec<i64>, usize) {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![pad_id as i64; prompts.len() * width];
    let mut mask = vec![0i64; prompts.len() * width];
    for (i, p) in prompts.iter().enumerate() {
        let off = width - p.len();
        for (j, &t) in p.iter().enumerate() {
            ids[i * width + off + j] = t as i64;
            mask[i * width + off + j] = 1;
        }
    }
    (ids, mask, width)
}

/// Prefills `prompts` (one batch) into a cache of `max_new_tokens` spare positions; returns the
/// cache and the logits of each row's next token. Rows that all hold one prompt (the K
/// samples of a prompt) are prefilled once and the cache row copied.
fn prefill(
    model: &Model,
    adapter: Option<&str>,
    prompts: &[Vec<i32>],
    pad_id: i32,
    max_new_tokens: usize,
) -> Result<(KvCache, Tensor)> {
    if prompts.len() > 1 && prompts.iter().all(|p| *p == prompts[0]) {
        let (mut cache, logits) = prefill(model, adapter, &prompts[..1], pad_id, max_new_tokens)?;
        let rows = Tensor::zeros([prompts.len() as i64], (Kind::Int64, model.device()));
        cache.select_rows(&rows);
        return Ok((cache, logits.index_select(0, &rows)));
    }
    let (ids, mask, width) = left_padded(prompts, pad_id);
    let (b, w) = (prompts.len() as i64, width as i64);
    let device = model.device();
    let mut cache = KvCache::new(model, b, w + max_new_tokens as i64);
    let input = Tensor::from_slice(&ids).view([b, w]).to_device(device);
    let m = Tensor::from_slice(&mask).view([b, w]).to_device(device);
    let hidden = model.prefill(&input, &m, &mut cache, adapter)?;
    let logits = model.lm_logits(&hidden.select(1, 0), adapter, false)?;
    Ok((cache, logits))
}

/// The groups waiting for room in the batch (ranges of sequence indices, in order) and what
/// admits them: each prefilled alone ([`prefill`]), then joined to the rows decoding so far.
struct Room<'a> {
    model: &'a Model,
    adapter: Option<&'a str>,
    prompts: &'a [Vec<i32>],
    pad_id: i32,
    max_new: usize,
    max_rows: usize,
    waiting: std::collections::VecDeque<std::ops::Range<usize>>,
}

impl Room<'_> {
    /// Whether the next waiting group fits beside the `active` rows (any group fits an empty
    /// batch).
    fn fits(&self, active: &[usize]) -> bool {
        self.waiting
            .front()
            .is_some_and(|g| active.is_empty() || active.len() + g.len() <= self.max_rows)
    }

    /// Admits the waiting groups that fit, in order: the cache and next-token logits of
    /// `current`'s rows then theirs (their sequence indices appended to `active`).
    fn admit(
        &mut self,
        current: Option<(KvCache, Tensor)>,
        active: &mut Vec<usize>,
    ) -> Result<Option<(KvCache, Tensor)>> {
        let (mut parts, mut heads): (Vec<KvCache>, Vec<Tensor>) = current.into_iter().unzip();
        while self.fits(active) {
            let g = self.waiting.pop_front().expect("a waiting group");
            let rows = &self.prompts[g.clone()];
            let (part, logits) =
                prefill(self.model, self.adapter, rows, self.pad_id, self.max_new)?;
            parts.push(part);
            heads.push(logits);
            active.extend(g);
        }
        if parts.len() <= 1 {
            return Ok(parts.pop().zip(heads.pop()));
        }
        let len = parts.iter().map(KvCache::len).max().unwrap_or(0);
        let joined = KvCache::join(self.model, &parts, len + self.max_new as i64)?;
        Ok(Some((joined, Tensor::f_cat(&heads, 0)?)))
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    adapter: Option<&str>,
    prompts: &[Vec<i32>],
    seeds: &[u64],
    params: &SamplingParams,
    pad_id: i32,
    stop: Option<StopFn>,
    grouping: Option<(usize, usize)>,
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
    // Groups of rows prefilled together, and how many rows decode at once: every group of a
    // grouped call waits its turn and joins the batch when there is room for it.
    let (group, max_rows) = match grouping {
        Some((g, m)) => (g, m.max(g)),
        None => (b, b),
    };
    let rows_at_once = max_rows.min(b);
    // The CPU decode kernels on every thread: for a Llama model from the prefill on (the packed
    // product takes its many rows); for GPT-2 from the first decode step, from 8 sequences, or
    // from one in groups (see `decode_kernels`). A prefill outside the scope (GPT-2's, later
    // groups' too) runs on libtorch's threads.
    use crate::decode_kernels::{prefill_kernels, DecodeThreads};
    let llama = cfg.arch == crate::config::Arch::Llama;
    let scope = || match llama || grouping.is_some() {
        true => DecodeThreads::enter_fused(rows_at_once as i64, model.kind(), device),
        false => DecodeThreads::enter(rows_at_once as i64, model.kind(), device),
    };
    let prefill_in_scope = llama && prefill_kernels();
    let threads = prefill_in_scope.then(scope);
    let max_new = params.max_new_tokens;
    let mut room = Room {
        model,
        adapter,
        prompts,
        pad_id,
        max_new,
        max_rows,
        waiting: (0..b)
            .step_by(group)
            .map(|s| s..(s + group).min(b))
            .collect(),
    };
    // active[r] = sequence index of cache row r; slot[seq] = its row while it is active.
    let mut active: Vec<usize> = Vec::with_capacity(rows_at_once);
    let (mut cache, mut logits) = room.admit(None, &mut active)?.expect("a first group");
    let mut slot: Vec<Option<usize>> = vec![None; b];
    for (r, &seq) in active.iter().enumerate() {
        slot[seq] = Some(r);
    }
    let mut threads = threads.unwrap_or_else(scope);
    loop {
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
        // On the CPU in parallel only while libtorch is single-threaded (its idle workers
        // would spin); on a GPU the host's cores are otherwise idle (rows drawn one after
        // another made a 152k-vocabulary model sample 256 rows on an H200 at 0.32 s a step,
        // no faster than 32 rows).
        let how = match (threads.active(), device.is_cuda()) {
            (true, _) => Draw::Crew,
            (false, true) => Draw::Pool,
            (false, false) => Draw::Serial,
        };
        draw_rows(flat, v, params, &mut draws, how);
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
            } else if g.tokens.len() < max_new {
                keep.push(r as i64);
                next.push(tok as i64);
            }
        }
        if keep.is_empty() && room.waiting.is_empty() {
            break;
        }
        let mut current = None;
        if !keep.is_empty() {
            if keep.len() < rows {
                cache.select_rows(&Tensor::from_slice(&keep).to_device(device));
            }
            active = keep.iter().map(|&r| active[r as usize]).collect();
            let n = active.len() as i64;
            let input = Tensor::from_slice(&next).view([n, 1]).to_device(device);
            let ones = Tensor::ones([n, 1], (Kind::Int64, device));
            let hidden = model.forward_cached(&input, &ones, &mut cache, adapter)?;
            current = Some((
                cache,
                model.lm_logits(&hidden.select(1, 0), adapter, false)?,
            ));
        } else {
            active.clear();
        }
        // Room for the next group: it joins, prefilled where the first groups were (outside
        // the scope, on libtorch's threads, unless the prefill has kernels).
        if room.fits(&active) {
            if prefill_in_scope {
                current = room.admit(current, &mut active)?;
            } else {
                drop(threads);
                current = room.admit(current, &mut active)?;
                threads = scope();
            }
        }
        (cache, logits) = current.expect("rows to decode");
        slot.fill(None);
        for (r, &seq) in active.iter().enumerate() {
            slot[seq] = Some(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;
    use crate::decode_kernels::paths;
    use crate::lora::LoraConfig;
    use crate::ModelConfig;

    /// Rows drawn on rayon's pool (as on CUDA) or by the crew get the tokens, log-prob bits
    /// and generator states of rows drawn one after another.
    #[test]
    fn every_way_of_drawing_rows_gives_the_same_draws() {
        let (rows, vocab) = (9usize, 300usize);
        let mut g = crate::rng::rng_for(11, "logits");
        let flat: Vec<f32> = (0..rows * vocab)
            .map(|_| (crate::rng::normal(&mut g) * 3.0) as f32)
            .collect();
        let params = SamplingParams {
            temperature: 0.8,
            ..Default::default()
        };
        let run = |how: Draw| {
            let mut rngs: Vec<ChaCha8Rng> = (0..rows as u64)
                .map(|s| crate::rng::rng_for(s, "draw"))
                .collect();
            let mut out = Vec::new();
            for _step in 0..3 {
                // rows in another order than their logits, as in a refilled batch
                let mut draws: Vec<(usize, &mut ChaCha8Rng, (usize, f32))> = rngs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, r)| ((i * 4) % rows, r, (0, 0.0)))
                    .collect();
                draw_rows(&flat, vocab, &params, &mut draws, how);
                out.extend(draws.iter().map(|(r, _, (t, lp))| (*r, *t, lp.to_bits())));
            }
            out
        };
        let serial = run(Draw::Serial);
        assert_eq!(run(Draw::Pool), serial, "rayon's pool");
        let _scope = crate::decode_kernels::DecodeThreads::enter_fused(2, Kind::Float, Device::Cpu);
        assert_eq!(run(Draw::Crew), serial, "the crew");
        // the draws are not all the same token (the check can fail)
        assert!(serial.iter().any(|d| d.1 != serial[0].1));
    }

    /// A random model with adapter "p" on every linear (the LM head too where it is untied),
    /// B non-zero (it changes the outputs).
    fn model(preset: &str) -> Model {
        let cfg = ModelConfig::preset(preset).unwrap();
        let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 5).unwrap();
        let mut targets = vec!["all-linear".to_string()];
        if model.has_untied_lm_head() {
            targets.push(crate::LM_HEAD.into());
        }
        let lora = LoraConfig {
            target_modules: targets,
            ..LoraConfig::default_for(cfg.arch)
        };
        model.add_adapter("p", &lora, None, 6).unwrap();
        let _g = tch::no_grad_guard();
        for mut t in model.adapter_parameters("p").unwrap() {
            let noise = t.randn_like() * 0.2;
            t.copy_(&noise);
        }
        model
    }

    /// Each row's tokens, log-prob bits and finish reason.
    fn bits(gens: &[Generation]) -> Vec<(Vec<i32>, Vec<u32>, FinishReason)> {
        gens.iter()
            .map(|g| {
                let lp = g.logprobs.iter().map(|x| x.to_bits()).collect();
                (g.tokens.clone(), lp, g.finish)
            })
            .collect()
    }

    /// generate_groups gives each group's rows the same bits whether the group runs alone or
    /// packed with groups of other prompt lengths (left padding in the joined cache), in any
    /// order, all at once or joining as rows end early (EOS) and leave the batch (continuous
    /// refill): on every SIMD path, for Llama and GPT-2, with and without an adapter, greedy
    /// and sampled.
    #[test]
    fn packed_groups_give_the_bits_of_each_group_alone() {
        let k = 3;
        let lens = [3usize, 9, 1, 6];
        for preset in ["llama-tiny", "gpt2-tiny"] {
            let m = model(preset);
            let vocab = m.config().vocab_size as i32;
            let mut prompts = Vec::new();
            let mut seeds = Vec::new();
            for (g, &len) in lens.iter().enumerate() {
                let p: Vec<i32> = (0..len as i32)
                    .map(|j| (j * 37 + g as i32 * 11 + 5) % vocab)
                    .collect();
                for s in 0..k {
                    prompts.push(p.clone());
                    seeds.push((g * 10 + s) as u64);
                }
            }
            let ran = paths::for_each("packed_groups_give_the_bits_of_each_group_alone", |path| {
                for (adapter, temperature) in [(Some("p"), 1.0), (None, 0.0)] {
                    let mut params = SamplingParams {
                        max_new_tokens: 10,
                        temperature,
                        ..Default::default()
                    };
                    // An EOS that some rows draw before the end, so rows leave the batch.
                    let first =
                        generate_groups(&m, adapter, &prompts, &seeds, &params, 0, None, k, 32)
                            .unwrap();
                    params.eos_ids = vec![first[1].tokens[2], first[7].tokens[4]];
                    let packed = bits(
                        &generate_groups(&m, adapter, &prompts, &seeds, &params, 0, None, k, 32)
                            .unwrap(),
                    );
                    assert!(
                        packed.iter().any(|r| r.2 == FinishReason::Eos)
                            && packed.iter().any(|r| r.2 == FinishReason::Length)
                    );
                    let what =
                        format!("{preset} {path:?} adapter {adapter:?} temperature {temperature}");
                    for (g, rows) in prompts.chunks(k).enumerate() {
                        let alone = generate_groups(
                            &m,
                            adapter,
                            rows,
                            &seeds[g * k..(g + 1) * k],
                            &params,
                            0,
                            None,
                            k,
                            k,
                        )
                        .unwrap();
                        assert_eq!(
                            bits(&alone),
                            packed[g * k..(g + 1) * k],
                            "{what}: group {g} alone vs packed"
                        );
                    }
                    // Continuous refill: at most one, one and a bit, or two groups decoding
                    // at once, the next joining as rows finish.
                    for max_rows in [k, k + 1, 2 * k] {
                        let refilled = bits(
                            &generate_groups(
                                &m, adapter, &prompts, &seeds, &params, 0, None, k, max_rows,
                            )
                            .unwrap(),
                        );
                        assert_eq!(refilled, packed, "{what}: at most {max_rows} rows at once");
                    }
                    // Two groups per call, in reverse order.
                    let order: Vec<usize> = (0..lens.len()).rev().collect();
                    for pair in order.chunks(2) {
                        let rows: Vec<usize> =
                            pair.iter().flat_map(|&g| g * k..(g + 1) * k).collect();
                        let p: Vec<Vec<i32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
                        let s: Vec<u64> = rows.iter().map(|&i| seeds[i]).collect();
                        let two = bits(
                            &generate_groups(&m, adapter, &p, &s, &params, 0, None, k, 32).unwrap(),
                        );
                        let want: Vec<_> = rows.iter().map(|&i| packed[i].clone()).collect();
                        assert_eq!(two, want, "{what}: groups {pair:?}");
                    }
                }
            });
            assert!(ran > 0 || std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some());
        }
    }
}

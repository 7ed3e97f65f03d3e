//! Phase 1 of an iteration (no gradients): recompute the policy's log-probabilities of the
//! sampled tokens ("old" log-probs, compared with the sampler's), the reference's (adapter
//! off, or the --ref-model copy with --full; or taken from the rollouts), the critic's values, then the rewards, advantages and
//! returns of the chosen algorithm. Everything here is a pure function of the adapters at
//! the start of the iteration, so a resumed run recomputes it identically.

use anyhow::{Context, Result};
use rlhf_algo::advantages::{gae, grpo_advantages, rloo_advantages};
use rlhf_algo::kl::{kl_penalised_rewards, kl_per_token, KlEstimator};
use rlhf_algo::masked::{masked_mean, masked_row_sum, masked_whiten, scalar};
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::scoring;
use tch::Tensor;

use crate::args::Algo;
use crate::data::Example;
use crate::models::Models;
use crate::ragged::{pad, unpad, vector};
use crate::settings::Settings;

/// Name of the policy adapter on the model.
pub const POLICY: &str = "policy";
/// Name of the critic adapter on the model.
pub const CRITIC: &str = "critic";

/// Per-rollout training targets (ragged: one value per response token unless noted).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub old_logp: Vec<Vec<f32>>,
    pub ref_logp: Vec<Vec<f32>>,
    /// Advantage of every response token (sequence-level algorithms broadcast theirs).
    pub advantages: Vec<Vec<f32>>,
    /// Critic targets: per token for ppo, one per rollout for reinforce, empty otherwise.
    pub returns: Vec<Vec<f32>>,
    /// Critic values at the start of the iteration, aligned with `returns`.
    pub old_values: Vec<Vec<f32>>,
    /// Truncated importance weights min(pi_old / pi_sampler, cap) per token (when enabled).
    pub tis_weights: Option<Vec<Vec<f32>>>,
    /// Iteration-level metrics (name, value).
    pub metrics: Vec<(String, f64)>,
    /// Mean per-sequence KL(policy || reference) (k1), the adaptive controller's input.
    pub kl_seq_mean: f64,
    /// The old log-probs are the sampler's, not yet checked: the update's first forward
    /// checks them ([`SamplerCheck::FirstForward`]).
    pub pending_check: bool,
    /// The metrics of a [`SamplerCheck::Replay`] that passed, recorded after the update's
    /// as the first forward's are.
    pub check_metrics: Option<Vec<(String, f64)>>,
}

/// How the sampler's log-probs are checked before they are taken as the old ones (when the
/// rollouts were sampled by this policy and `--recompute-old-logprobs` is not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SamplerCheck {
    /// Recompute [`CHECK_ROWS`] rows now, in a forward of their own.
    Now,
    /// In the update's first forward: before any step the policy is the one that sampled,
    /// so that forward's log-probs of the first micro-batch are recomputed ones, and no
    /// forward is done twice. A mismatch ends the update with [`SamplerMismatch`] before
    /// its first backward; the run then prepares again with every row recomputed
    /// ([`SamplerCheck::Off`]) and starts the update over. Not with LoRA dropout (the
    /// training forward draws it) nor before a resume ([`SamplerCheck::Replay`]).
    FirstForward,
    /// The first forward's check done here, before a resume (its step is done; the
    /// checkpoint is loaded later, so the policy is still the one that sampled): the same
    /// rows (the first micro-batch of the first minibatch), a training forward with grad as
    /// the update runs it, so the check's result and metrics are the uninterrupted run's.
    Replay(Vec<usize>),
    /// The sampler's log-probs are not taken: every row is recomputed.
    Off,
}

/// The check of the sampler's log-probs `sampler` against the policy's `logp` from a
/// training forward before any step (each (b, L-1), read where `mask` is set): the checked
/// rows' metrics ([`sampler_metrics`]), or the mismatch.
pub fn check_sampler(
    logp: &Tensor,
    sampler: &Tensor,
    mask: &Tensor,
) -> std::result::Result<Vec<(String, f64)>, SamplerMismatch> {
    tch::no_grad(|| {
        let log_r = (logp.detach() - sampler).masked_fill(&mask.le(0.5), 0.0);
        let diff = masked_abs_max(&log_r, mask);
        if diff > SAMPLER_LOGPROB_TOLERANCE {
            return Err(SamplerMismatch { diff });
        }
        Ok(sampler_metrics(&log_r, mask))
    })
}

/// The update's first forward found that the sampler's log-probs are not this policy's.
#[derive(Debug)]
pub struct SamplerMismatch {
    /// Largest |forward - sampler| log-prob difference over the micro-batch's tokens.
    pub diff: f32,
}

impl std::fmt::Display for SamplerMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the sampler's log-probs differ from this policy's by up to {} (over {SAMPLER_LOGPROB_TOLERANCE})",
            self.diff
        )
    }
}

impl std::error::Error for SamplerMismatch {}

/// The metrics of the checked rows: `sampler_ratio_*` (pi_recomputed / pi_sampler per token)
/// and `sampler_logprob_abs_diff`; `log_r` holds the log-prob differences, zero outside
/// `mask`.
pub fn sampler_metrics(log_r: &Tensor, mask: &Tensor) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    stats("sampler_ratio", &(log_r.exp() * mask), mask, &mut out);
    out.push((
        "sampler_logprob_abs_diff".into(),
        scalar(&masked_mean(&log_r.abs(), mask)),
    ));
    out
}

/// The largest |x| where `mask` is set (whatever `x` holds elsewhere), infinite when any of
/// them is NaN.
pub fn masked_abs_max(x: &Tensor, mask: &Tensor) -> f32 {
    let d = scalar(&x.abs().masked_fill(&mask.le(0.5), 0.0).max()) as f32;
    match d.is_nan() {
        true => f32::INFINITY,
        false => d,
    }
}

/// Per-rollout policy log-probs (when asked), and reference log-probs and critic values
/// (when asked).
type Scored = (
    Option<Vec<Vec<f32>>>,
    Option<Vec<Vec<f32>>>,
    Option<Vec<Vec<f32>>>,
);

/// The sample of rows whose old log-probs were recomputed: (recomputed, sampler's).
type Checked = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Largest |recomputed - sampler| log-prob difference for which the sampler's log-probs
/// are taken as the old ones. The kernels give bit-identical values on the same weights
/// when sampling ran at temperature 1 without top-k/top-p; anything else (another policy,
/// another temperature, truncation) differs by orders of magnitude more.
pub const SAMPLER_LOGPROB_TOLERANCE: f32 = 1e-5;

/// Scores every rollout with the policy (when `need_old`), the reference (when `need_ref`)
/// and the critic (when `critic`), in forward batches of `micro` rollouts, in order.
fn score_all(
    models: &Models,
    examples: &[Example],
    micro: usize,
    need_old: bool,
    need_ref: bool,
    critic: bool,
) -> Result<Scored> {
    let device = models.device();
    let mut old = need_old.then(Vec::new);
    let mut refs = need_ref.then(Vec::new);
    let mut values = critic.then(Vec::new);
    if !(need_old || need_ref || critic) {
        return Ok((old, refs, values));
    }
    let bar = rlhf_core::progress::bar(examples.len() as u64, "scoring rollouts");
    for chunk in examples.chunks(micro) {
        let rows: Vec<(&[i32], &[i32])> = chunk
            .iter()
            .map(|e| (e.prompt_tokens.as_slice(), e.response_tokens.as_slice()))
            .collect();
        let batch = SeqBatch::new(&rows, 0, device)?;
        if let Some(o) = old.as_mut() {
            let lp =
                scoring::token_logprobs(&models.policy, models.policy_adapter(), &batch, false)?;
            o.extend(batch.response_values(&lp)?);
        }
        if let Some(r) = refs.as_mut() {
            let lp = scoring::token_logprobs(models.reference(), None, &batch, false)?;
            r.extend(batch.response_values(&lp)?);
        }
        if let Some(v) = values.as_mut() {
            let tv = scoring::token_values(models.critic_model(), Some(CRITIC), &batch, false)?;
            v.extend(batch.response_values(&tv)?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((old, refs, values))
}

/// Most rows recomputed to check the sampler's log-probs. A fixed sample, not a micro-batch:
/// with `--micro-batch-size 16` on 16 rollouts the check recomputed every row and saved
/// nothing (ppo-update 1.52-1.62 s against 1.38-1.45 s at micro-batches of 4, the rl_loop
/// bench's iteration 2).
pub const CHECK_ROWS: usize = 4;

/// Rows recomputed to check the sampler's log-probs: [`CHECK_ROWS`] rows, or `micro` when it
/// is fewer (one forward of at most a micro-batch), spread evenly over the rollouts (all of
/// them when there are fewer).
fn check_rows(n: usize, micro: usize) -> Vec<usize> {
    let k = micro.min(CHECK_ROWS).clamp(1, n.max(1));
    let mut rows: Vec<usize> = (0..k).map(|i| i * n / k).collect();
    rows.dedup();
    rows
}

/// The largest |a - b| over the tokens of the rows (infinite when a row's lengths differ).
fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let mut worst = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        if x.len() != y.len() {
            return f32::INFINITY;
        }
        for (u, v) in x.iter().zip(y) {
            let d = (u - v).abs();
            if d.is_nan() {
                return f32::INFINITY;
            }
            worst = worst.max(d);
        }
    }
    worst
}

fn stats(prefix: &str, x: &Tensor, mask: &Tensor, out: &mut Vec<(String, f64)>) {
    let mean = scalar(&masked_mean(x, mask));
    let centred = x - mean;
    let var = scalar(&masked_mean(&(&centred * &centred), mask));
    let big = 1e30;
    let masked_max = scalar(&(x * mask + (mask - 1.0) * big).max());
    let masked_min = scalar(&(x * mask - (mask - 1.0) * big).min());
    out.push((format!("{prefix}_mean"), mean));
    out.push((format!("{prefix}_std"), var.sqrt()));
    out.push((format!("{prefix}_min"), masked_min));
    out.push((format!("{prefix}_max"), masked_max));
}

/// Mean per-sequence KL (k1) of the policy now on the models (after the update) to the
/// reference on the iteration's rollouts: the input of `--kl-control-on updated`.
pub fn updated_kl(
    models: &Models,
    examples: &[Example],
    prep: &Prepared,
    s: &Settings,
) -> Result<f64> {
    let _guard = tch::no_grad_guard();
    if examples.is_empty() {
        return Ok(0.0);
    }
    let (new, _, _) = score_all(models, examples, s.micro_batch_size, true, false, false)
        .context("log-probabilities of the rollouts under the updated policy")?;
    let (new_t, mask) = pad(&new.unwrap_or_default());
    let (ref_t, _) = pad(&prep.ref_logp);
    let kl = kl_per_token(&new_t, &ref_t, KlEstimator::K1) * &mask;
    Ok(scalar(&masked_row_sum(&kl, &mask).mean(tch::Kind::Float)))
}

/// Runs phase 1 with the KL coefficient `beta` of this iteration.
///
/// `sampled_by_this_policy`: the rollouts name no other sampling policy than this one, so
/// their log-probs may be taken as the old ones (after a check, see [`SamplerCheck`]).
pub fn prepare(
    models: &Models,
    examples: &[Example],
    s: &Settings,
    beta: f64,
    sampled_by_this_policy: bool,
    check: &SamplerCheck,
) -> Result<Prepared> {
    let _guard = tch::no_grad_guard();
    let have_ref = examples.iter().all(|e| e.ref_logprobs.is_some());
    // --full: rollouts sampled from a full policy carry its own log-probs as ref_logprobs
    let need_ref = s.recompute_ref || s.full || !have_ref;
    if s.full {
        tracing::info!("--full: computing reference log-probabilities with --ref-model");
    } else if need_ref && !s.recompute_ref {
        tracing::info!("rollouts carry no ref_logprobs: recomputing them with the adapter off");
    }
    // The old log-probs: the sampler's when they are this policy's (checked on a sample of
    // rows), else recomputed for every rollout.
    let mut checked: Option<Checked> = None;
    let take = sampled_by_this_policy
        && !s.recompute_old_logprobs
        && !examples.is_empty()
        && *check != SamplerCheck::Off;
    let pending_check = take && *check == SamplerCheck::FirstForward;
    let mut check_metrics = None;
    if pending_check {
        tracing::info!(
            "the rollouts were sampled by this policy: taking the sampler's log-probs as the old log-probs (the update's first forward checks them)"
        );
    } else if let (true, SamplerCheck::Replay(rows)) = (take, check) {
        let pairs: Vec<(&[i32], &[i32])> = rows
            .iter()
            .map(|&i| {
                let e = &examples[i];
                (e.prompt_tokens.as_slice(), e.response_tokens.as_slice())
            })
            .collect();
        let batch = SeqBatch::new(&pairs, 0, models.device())?;
        let out = tch::with_grad(|| {
            scoring::forward_outputs(
                &models.policy,
                models.policy_adapter(),
                &batch,
                true,
                scoring::Entropy::Off,
                false,
            )
        })
        .context("recomputing log-probabilities of the first micro-batch")?;
        let sampler: Vec<&[f32]> = rows
            .iter()
            .map(|&i| examples[i].sampler_logprobs.as_slice())
            .collect();
        let sampler_t = crate::ragged::at_response(&batch, &sampler)?;
        match check_sampler(&out.logprobs, &sampler_t, &batch.response_mask) {
            Ok(m) => {
                tracing::info!(
                    rows = rows.len(),
                    "the sampler's log-probs are this policy's (the first forward's check, before resuming)"
                );
                check_metrics = Some(m);
            }
            Err(e) => tracing::info!("{e}: recomputing every row"),
        }
    } else if take {
        let rows = check_rows(examples.len(), s.micro_batch_size);
        let sample: Vec<Example> = rows.iter().map(|&i| examples[i].clone()).collect();
        let (recomputed, _, _) = score_all(models, &sample, sample.len(), true, false, false)
            .context("recomputing log-probabilities of a sample of rollouts")?;
        let recomputed = recomputed.unwrap_or_default();
        let sampler: Vec<Vec<f32>> = sample.iter().map(|e| e.sampler_logprobs.clone()).collect();
        let diff = max_abs_diff(&recomputed, &sampler);
        if diff <= SAMPLER_LOGPROB_TOLERANCE {
            tracing::info!(
                rows = rows.len(),
                max_abs_diff = diff,
                "the sampler's log-probs are this policy's: taking them as the old log-probs"
            );
            checked = Some((recomputed, sampler));
        } else {
            tracing::info!(
                rows = rows.len(),
                max_abs_diff = diff,
                "the sampler's log-probs differ from this policy's (temperature, top-k/top-p or another policy): recomputing every row"
            );
        }
    }
    let reuse_old = checked.is_some() || pending_check || check_metrics.is_some();
    let (old_logp, refs, values) = score_all(
        models,
        examples,
        s.micro_batch_size,
        !reuse_old,
        need_ref,
        s.algo.has_critic(),
    )
    .context("recomputing log-probabilities of the rollouts")?;
    let old_logp: Vec<Vec<f32>> = match old_logp {
        Some(o) => o,
        None => examples
            .iter()
            .map(|e| e.sampler_logprobs.clone())
            .collect(),
    };
    let ref_logp: Vec<Vec<f32>> = match refs {
        Some(r) => r,
        None => examples
            .iter()
            .map(|e| e.ref_logprobs.clone().unwrap_or_default())
            .collect(),
    };
    let lens: Vec<usize> = examples.iter().map(|e| e.response_tokens.len()).collect();
    let n = examples.len();
    let (old_t, mask) = pad(&old_logp);
    let (ref_t, _) = pad(&ref_logp);
    let sampler: Vec<Vec<f32>> = examples
        .iter()
        .map(|e| e.sampler_logprobs.clone())
        .collect();
    let (sampler_t, _) = pad(&sampler);
    let scores_v: Vec<f32> = examples.iter().map(|e| e.score).collect();
    let scores = vector(&scores_v);

    let mut metrics: Vec<(String, f64)> = Vec::new();
    // what the trainer sees vs what the sampler saw: ratio pi_old / pi_sampler per token,
    // over every rollout, or over the checked sample when the sampler's were taken
    let log_ratio = (&old_t - &sampler_t) * &mask;
    let ratio = log_ratio.exp() * &mask;
    // (a pending check's metrics come from the update's first forward, a replayed one's
    // are recorded where those are)
    if !pending_check && check_metrics.is_none() {
        let (log_r, m) = match &checked {
            Some((recomputed, sampler)) => {
                let (a, m) = pad(recomputed);
                let (b, _) = pad(sampler);
                ((a - b) * &m, m)
            }
            None => (log_ratio.shallow_clone(), mask.shallow_clone()),
        };
        metrics.extend(sampler_metrics(&log_r, &m));
    }
    metrics.push((
        "old_logprobs_from_sampler".into(),
        if reuse_old { 1.0 } else { 0.0 },
    ));
    let tis_weights = if s.tis_cap > 0.0 {
        Some(unpad(&ratio.clamp_max(s.tis_cap), &lens)?)
    } else {
        None
    };

    // KL to the reference (k1 summed per sequence) at the start of the iteration
    let kl_k1 = kl_per_token(&old_t, &ref_t, KlEstimator::K1) * &mask;
    let kl_seq = masked_row_sum(&kl_k1, &mask);
    let kl_seq_mean = scalar(&kl_seq.mean(tch::Kind::Float));
    metrics.push(("kl_ref".into(), kl_seq_mean));
    metrics.push((
        "kl_ref_per_token".into(),
        scalar(&masked_mean(&kl_k1, &mask)),
    ));
    let kl_est = kl_per_token(&old_t, &ref_t, s.kl_estimator) * &mask;
    let kl_est_seq = masked_row_sum(&kl_est, &mask);
    metrics.push(("kl_coef".into(), beta));
    metrics.push(("score_mean".into(), scalar(&scores.mean(tch::Kind::Float))));
    let resp_len: f64 = lens.iter().sum::<usize>() as f64 / n as f64;
    metrics.push(("response_length".into(), resp_len));
    let eos = examples.iter().filter(|e| e.eos).count() as f64 / n as f64;
    metrics.push(("eos_rate".into(), eos));

    let (advantages, returns, old_values, adv_mask, adv_t, reward_mean);
    match s.algo {
        Algo::Ppo => {
            let values_r = values.unwrap_or_default();
            let (v_t, _) = pad(&values_r);
            let pr =
                kl_penalised_rewards(&old_t, &ref_t, &mask, &scores, beta, 1.0, s.kl_estimator)?;
            reward_mean = scalar(&masked_row_sum(&pr.rewards, &mask).mean(tch::Kind::Float));
            let rewards = if s.whiten_rewards {
                masked_whiten(&pr.rewards, &mask, false)
            } else {
                pr.rewards
            };
            let (adv, ret) = gae(&rewards, &v_t, &mask, s.gamma, s.gae_lambda)?;
            stats("value", &v_t, &mask, &mut metrics);
            let adv = if s.whiten_advantages {
                masked_whiten(&adv, &mask, true)
            } else {
                adv
            };
            advantages = unpad(&adv, &lens)?;
            returns = unpad(&ret, &lens)?;
            old_values = values_r;
            adv_t = adv;
            adv_mask = mask.shallow_clone();
        }
        Algo::Reinforce => {
            // PERL: R = (1 - beta) score - beta KL; baseline V(x) at the first response position
            let values_r = values.unwrap_or_default();
            let baseline: Vec<f32> = values_r
                .iter()
                .map(|v| v.first().copied().unwrap_or(0.0))
                .collect();
            let r_seq = &scores * (1.0 - beta) - &kl_est_seq * beta;
            reward_mean = scalar(&r_seq.mean(tch::Kind::Float));
            let b_t = vector(&baseline);
            let ones = b_t.ones_like();
            stats("value", &b_t, &ones, &mut metrics);
            let a = &r_seq - &b_t;
            let a = if s.whiten_advantages {
                masked_whiten(&a, &ones, true)
            } else {
                a
            };
            let a_v = Vec::<f32>::try_from(&a)?;
            let r_v = Vec::<f32>::try_from(&r_seq)?;
            advantages = lens.iter().zip(&a_v).map(|(&l, &x)| vec![x; l]).collect();
            returns = r_v.iter().map(|&r| vec![r]).collect();
            old_values = baseline.iter().map(|&b| vec![b]).collect();
            adv_t = a;
            adv_mask = ones;
        }
        Algo::Rloo | Algo::Grpo => {
            let keys: Vec<usize> = examples.iter().map(|e| e.group).collect();
            let r_seq: Vec<f64> = if s.algo == Algo::Rloo {
                let r = &scores - &kl_est_seq * beta;
                Vec::<f64>::try_from(r.to_kind(tch::Kind::Double))?
            } else {
                scores_v.iter().map(|&x| x as f64).collect()
            };
            reward_mean = r_seq.iter().sum::<f64>() / n as f64;
            let a = if s.algo == Algo::Rloo {
                rloo_advantages(&r_seq, &keys)?
            } else {
                grpo_advantages(&r_seq, &keys, s.grpo_eps)?
            };
            let a_f: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let a = vector(&a_f);
            let ones = a.ones_like();
            let a = if s.whiten_advantages {
                masked_whiten(&a, &ones, true)
            } else {
                a
            };
            let a_v = Vec::<f32>::try_from(&a)?;
            advantages = lens.iter().zip(&a_v).map(|(&l, &x)| vec![x; l]).collect();
            returns = Vec::new();
            old_values = Vec::new();
            adv_t = a;
            adv_mask = ones;
        }
    }
    metrics.push(("reward_mean".into(), reward_mean));
    stats("advantage", &adv_t, &adv_mask, &mut metrics);
    Ok(Prepared {
        old_logp,
        ref_logp,
        advantages,
        returns,
        old_values,
        tis_weights,
        metrics,
        kl_seq_mean,
        pending_check,
        check_metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check recomputes at most CHECK_ROWS rows (fewer with a smaller micro-batch or
    /// fewer rollouts), spread over the file, each once.
    #[test]
    fn the_check_recomputes_a_few_rows_spread_over_the_file() {
        assert_eq!(check_rows(16, 4), vec![0, 4, 8, 12]);
        assert_eq!(check_rows(16, 16), vec![0, 4, 8, 12]);
        assert_eq!(check_rows(16, 2), vec![0, 8]);
        assert_eq!(check_rows(3, 16), vec![0, 1, 2]);
        assert_eq!(check_rows(1, 4), vec![0]);
        assert_eq!(check_rows(100, 64).len(), CHECK_ROWS);
    }

    /// The check's largest difference reads the masked positions only: what the forward
    /// holds at padding (NaN, infinities) does not count, a NaN among the tokens fails it.
    #[test]
    fn the_largest_difference_reads_the_response_tokens_only() {
        let x = Tensor::from_slice(&[0.5f32, -2.0, f32::NAN, f32::NEG_INFINITY]).view([2, 2]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0]).view([2, 2]);
        assert_eq!(masked_abs_max(&x, &mask), 2.0);
        let mask = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([2, 2]);
        assert_eq!(masked_abs_max(&x, &mask), f32::INFINITY);
    }
}

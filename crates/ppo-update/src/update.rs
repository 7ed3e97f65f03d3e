//! Phase 2 of an iteration: epochs over shuffled minibatches, each accumulated over
//! micro-batches, one AdamW step per minibatch for the policy (its LoRA factors, or every
//! weight with --full) and the critic, with gradient clipping, the learning-rate schedule,
//! per-step metrics; rlhf-algo's step loop runs the steps (seeding, NaN/inf guard,
//! checkpoints, resume, progress).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use rlhf_algo::error::ensure_finite_named;
use rlhf_algo::masked::{masked_mean, scalar};
use rlhf_algo::optim::AdamW;
use rlhf_algo::policy_loss::{clipped_value_loss, kl_loss, ppo_clipped_loss};
use rlhf_algo::step_loop::{StepReport, Steps};
use rlhf_core::metrics::MetricsLog;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::scoring;
use tch::Tensor;

use crate::args::Algo;
use crate::data::Example;
use crate::models::Models;
use crate::prepare::{check_sampler, Prepared, CRITIC, POLICY};
use crate::ragged::at_response;
use crate::settings::Settings;

/// The optimisers of one run.
pub struct Optimizers {
    pub policy: AdamW,
    pub critic: Option<AdamW>,
}

/// One iteration's update, as rlhf-algo's step loop runs it: one step per minibatch.
pub struct Update<'a> {
    pub models: &'a Models,
    pub examples: &'a [Example],
    pub prep: &'a Prepared,
    pub s: &'a Settings,
    pub opt: &'a mut Optimizers,
    /// The minibatches of the iteration, in order.
    pub minibatches: Vec<Vec<usize>>,
    /// Optimiser steps taken before this iteration (metrics are recorded at global steps).
    pub base_step: u64,
    /// KL coefficient of this iteration.
    pub beta: f64,
    /// The metrics of the sampler's log-probs checked in the first forward (when
    /// `prep.pending_check`), once it ran.
    pub checked: Option<Vec<(String, f64)>>,
}

/// The minibatches of the whole iteration: for each epoch a seeded permutation of the
/// rollouts, cut into chunks of `minibatch_size` (the last may be smaller). With
/// `--minibatch-by-prompt` the permutation is of the prompts' groups instead (each group's
/// rollouts in file order, one after another), so that a prompt's K samples land in one
/// minibatch when `minibatch_size` is a multiple of K and its micro-batches compute the prompt
/// once (`Model::forward_batch`); with one rollout per prompt both give the same order (the
/// same seed and label).
pub fn schedule_minibatches(examples: &[Example], s: &Settings, iteration: i32) -> Vec<Vec<usize>> {
    let groups: Vec<usize> = examples.iter().map(|e| e.group).collect();
    let cut = Cut {
        epochs: s.epochs,
        size: s.minibatch_size,
        by_prompt: s.minibatch_by_prompt,
        seed: s.seed,
    };
    schedule(&groups, &cut, iteration)
}

/// What [`schedule_minibatches`] takes from the settings.
struct Cut {
    epochs: usize,
    size: usize,
    by_prompt: bool,
    seed: u64,
}

/// [`schedule_minibatches`] for rollouts whose prompts' groups are `groups` (numbered in order
/// of first appearance).
fn schedule(groups: &[usize], cut: &Cut, iteration: i32) -> Vec<Vec<usize>> {
    let count = groups.iter().map(|g| g + 1).max().unwrap_or(0);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (i, &g) in groups.iter().enumerate() {
        members[g].push(i);
    }
    let mut out = Vec::new();
    for epoch in 0..cut.epochs {
        let label = format!("ppo-update/order/{iteration}/{epoch}");
        let idx: Vec<usize> = if cut.by_prompt {
            rlhf_core::rng::permutation(count, cut.seed, &label)
                .into_iter()
                .flat_map(|g| members[g].iter().copied())
                .collect()
        } else {
            rlhf_core::rng::permutation(groups.len(), cut.seed, &label)
        };
        out.extend(idx.chunks(cut.size).map(<[usize]>::to_vec));
    }
    out
}

/// The rows of the update's first forward: the first micro-batch of the first minibatch, as
/// [`Update`]'s step orders it (empty without minibatches).
pub fn first_micro_batch(
    minibatches: &[Vec<usize>],
    examples: &[Example],
    micro: usize,
) -> Vec<usize> {
    let Some(mb) = minibatches.first() else {
        return Vec::new();
    };
    let order = grouped_by_prompt(mb, examples);
    order[..micro.min(order.len())].to_vec()
}

/// A minibatch's rollouts with those of one prompt next to each other (the prompts in the
/// order the minibatch first names them, each prompt's rollouts in minibatch order), so that a
/// micro-batch holds whole groups and the forward computes each shared prompt once
/// (`Model::forward_batch`). The minibatch's gradient is their sum whatever the order (up to
/// the rounding of the sum).
fn grouped_by_prompt(mb: &[usize], examples: &[Example]) -> Vec<usize> {
    let mut first_seen: HashMap<usize, usize> = HashMap::new();
    for (pos, &i) in mb.iter().enumerate() {
        first_seen.entry(examples[i].group).or_insert(pos);
    }
    let mut out = mb.to_vec();
    out.sort_by_key(|&i| first_seen[&examples[i].group]);
    out
}

/// Sums of per-step diagnostics, weighted by response tokens.
#[derive(Default)]
struct StepSums {
    tokens: f64,
    policy_loss: f64,
    entropy: f64,
    approx_kl: f64,
    clip_frac: f64,
    ratio_mean: f64,
    ratio_max: f64,
    kl_ref: f64,
    value_loss: f64,
    value_clip_frac: f64,
}

/// Names and tensors of the trainable parameters, prefixed by adapter (for checkpoints).
pub fn trainable(models: &Models, critic: bool) -> Result<Vec<(String, Tensor)>> {
    let mut out = prefixed(POLICY, models.policy_parameters()?);
    if critic {
        out.extend(prefixed(CRITIC, models.critic_parameters()?));
    }
    Ok(out)
}

fn prefixed(prefix: &str, list: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    list.into_iter()
        .map(|(n, t)| (format!("{prefix}/{n}"), t))
        .collect()
}

/// Metric: 1 at each optimiser step --kl-max skipped.
pub const KL_SKIPPED: &str = "train/kl_skipped";

/// KL(pi || pi_ref) per response of the current policy, estimated on rollouts sampled by
/// the old policy: the mean of log pi/pi_ref over the rollouts weighted by pi/pi_old
/// (self-normalised importance sampling). `rows`: per micro-batch, (log pi/pi_old,
/// log pi/pi_ref) summed over each response.
pub fn importance_weighted_kl(rows: &[(Tensor, Tensor)]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let log_w = Tensor::cat(&rows.iter().map(|r| &r.0).collect::<Vec<_>>(), 0);
    let kl = Tensor::cat(&rows.iter().map(|r| &r.1).collect::<Vec<_>>(), 0);
    let w = log_w.softmax(0, tch::Kind::Double);
    (w * kl).sum(tch::Kind::Double).double_value(&[])
}

/// The rows `idx` of a ragged per-rollout vector.
fn pick<'a>(v: &'a [Vec<f32>], idx: &[usize]) -> Vec<&'a [f32]> {
    idx.iter().map(|&i| v[i].as_slice()).collect()
}

impl Steps for Update<'_> {
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        trainable(self.models, self.opt.critic.is_some())
    }

    fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        let mut state = prefixed(POLICY, self.opt.policy.state());
        if let Some(c) = &self.opt.critic {
            state.extend(prefixed(CRITIC, c.state()));
        }
        state
    }

    fn load_optimizer_state(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        let part = |prefix: &str| -> Vec<(String, Tensor)> {
            let p = format!("{prefix}/");
            saved
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(&p)
                        .map(|rest| (rest.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        self.opt.policy.load_state(&part(POLICY))?;
        if let Some(c) = self.opt.critic.as_mut() {
            c.load_state(&part(CRITIC))?;
        }
        Ok(())
    }

    fn step(&mut self, k: u64, lr: f64, metrics: &mut MetricsLog) -> Result<StepReport> {
        let (models, examples, prep, s) = (self.models, self.examples, self.prep, self.s);
        let opt = &mut *self.opt;
        let beta = self.beta;
        let mb = &self.minibatches[k as usize];
        let step = self.base_step + k;
        let device = models.device();
        let started = Instant::now();
        let at = (step + 1) as i64;
        let mb_tokens: usize = mb.iter().map(|&i| examples[i].response_tokens.len()).sum();
        let mut sums = StepSums::default();
        // per rollout: log pi_current/pi_old and log pi_current/pi_ref summed over the response
        let mut gate_rows: Vec<(Tensor, Tensor)> = Vec::new();
        opt.policy.zero_grad();
        if let Some(c) = opt.critic.as_mut() {
            c.zero_grad();
        }
        let order = grouped_by_prompt(mb, examples);
        for (m, micro) in order.chunks(s.micro_batch_size).enumerate() {
            let rows: Vec<(&[i32], &[i32])> = micro
                .iter()
                .map(|&i| {
                    (
                        examples[i].prompt_tokens.as_slice(),
                        examples[i].response_tokens.as_slice(),
                    )
                })
                .collect();
            let batch = SeqBatch::new(&rows, 0, device)?;
            let micro_tokens: usize = micro
                .iter()
                .map(|&i| examples[i].response_tokens.len())
                .sum();
            let weight = micro_tokens as f64 / mb_tokens as f64;
            let mask = &batch.response_mask;
            let old = at_response(&batch, &pick(&prep.old_logp, micro))?;
            let adv = at_response(&batch, &pick(&prep.advantages, micro))?;
            // the entropy enters the loss only with a bonus; otherwise it is a metric, computed
            // without grad so its vocabulary-sized softmax leaves the graph at once
            let entropy_kind = match s.entropy_coef > 0.0 {
                true => scoring::Entropy::Trained,
                false => scoring::Entropy::Reported,
            };
            let out = scoring::forward_outputs(
                &models.policy,
                models.policy_adapter(),
                &batch,
                true,
                entropy_kind,
                false,
            )?;
            let logp = out.logprobs;
            if prep.pending_check && k == 0 && m == 0 {
                // the policy has not stepped yet: these are the recomputed old log-probs of
                // the micro-batch's rows (`first_micro_batch`), and `old` holds the sampler's
                self.checked = Some(check_sampler(&logp, &old, mask)?);
                tracing::info!(
                    rows = micro.len(),
                    "the sampler's log-probs are this policy's (checked in the first forward)"
                );
            }
            let entropy = out.entropy.unwrap_or_else(|| logp.zeros_like());
            let pl = ppo_clipped_loss(&logp, &old, &adv, mask, s.clip_range)?;
            let mut loss = match &prep.tis_weights {
                Some(w) => {
                    // token-weighted surrogate: recompute with the importance weights folded in
                    let w = at_response(&batch, &pick(w, micro))?;
                    ppo_clipped_loss(&logp, &old, &(&adv * &w), mask, s.clip_range)?.loss
                }
                None => pl.loss.shallow_clone(),
            };
            let ref_t = at_response(&batch, &pick(&prep.ref_logp, micro))?;
            if s.algo == Algo::Grpo && beta > 0.0 {
                loss += kl_loss(&logp, &ref_t, mask)? * beta;
            }
            let ent = masked_mean(&entropy, mask);
            if s.entropy_coef > 0.0 {
                loss -= &ent * s.entropy_coef;
            }
            let loss_v = scalar(&loss);
            ensure_finite_named("policy loss", loss_v, step)?;
            (loss * weight).backward();
            let kl_ref = tch::no_grad(|| scalar(&masked_mean(&(logp.detach() - &ref_t), mask)));
            if s.kl_max.is_some() {
                tch::no_grad(|| {
                    let sum = |t: Tensor| (t * mask).sum_dim_intlist(1, false, tch::Kind::Double);
                    gate_rows.push((sum(logp.detach() - &old), sum(logp.detach() - &ref_t)));
                });
            }
            sums.tokens += micro_tokens as f64;
            let w = micro_tokens as f64;
            sums.policy_loss += loss_v * w;
            sums.entropy += scalar(&ent) * w;
            sums.approx_kl += pl.approx_kl * w;
            sums.clip_frac += pl.clip_frac * w;
            sums.ratio_mean += pl.ratio_mean * w;
            sums.ratio_max = sums.ratio_max.max(pl.ratio_max);
            sums.kl_ref += kl_ref * w;
            if opt.critic.is_some() {
                // the critic's own model (the frozen reference copy with --full): see
                // Models::critic_model for why it never shares the full policy's weights
                let values =
                    scoring::token_values(models.critic_model(), Some(CRITIC), &batch, true)?;
                let ret = at_response(&batch, &pick(&prep.returns, micro))?;
                let old_v = at_response(&batch, &pick(&prep.old_values, micro))?;
                let (vmask, vweight) = if s.algo == Algo::Ppo {
                    (mask.shallow_clone(), weight)
                } else {
                    let first: Vec<&[f32]> = micro.iter().map(|_| &[1.0f32][..]).collect();
                    (
                        at_response(&batch, &first)?,
                        micro.len() as f64 / mb.len() as f64,
                    )
                };
                let vl = clipped_value_loss(&values, &old_v, &ret, &vmask, s.value_clip_range)?;
                let vl_v = scalar(&vl.loss);
                ensure_finite_named("value loss", vl_v, step)?;
                (vl.loss * vweight).backward();
                sums.value_loss += vl_v * vweight;
                sums.value_clip_frac += vl.clip_frac * vweight;
            }
        }
        let skip = match s.kl_max {
            Some(max) => {
                let kl = importance_weighted_kl(&gate_rows);
                metrics.push(at, "train/kl_ref_is", kl);
                kl > max
            }
            None => false,
        };
        if skip {
            // the policy is over the limit: no update from this minibatch (a later one whose
            // estimate is under the limit may still step)
            metrics.push(at, KL_SKIPPED, 1.0);
            opt.policy.zero_grad();
            if let Some(c) = opt.critic.as_mut() {
                c.zero_grad();
            }
            return Ok(StepReport {
                loss: sums.policy_loss / sums.tokens.max(1.0),
                grad_norm: 0.0,
                tokens: 0,
            });
        }
        let gn = opt.policy.clip_grad_norm(s.max_grad_norm);
        opt.policy.step(lr);
        let mut critic_gn = None;
        if let Some(c) = opt.critic.as_mut() {
            let g = c.clip_grad_norm(s.max_grad_norm);
            ensure_finite_named("critic gradient norm", g, step)?;
            let critic_lr = if s.adamw.lr > 0.0 {
                lr * s.critic_lr / s.adamw.lr
            } else {
                s.critic_lr
            };
            c.step(critic_lr);
            critic_gn = Some(g);
        }
        let secs = started.elapsed().as_secs_f64();
        let t = sums.tokens.max(1.0);
        let m = metrics;
        m.push(at, "train/policy_loss", sums.policy_loss / t);
        m.push(at, "train/entropy", sums.entropy / t);
        m.push(at, "train/approx_kl", sums.approx_kl / t);
        m.push(at, "train/clip_frac", sums.clip_frac / t);
        m.push(at, "train/ratio_mean", sums.ratio_mean / t);
        m.push(at, "train/ratio_max", sums.ratio_max);
        m.push(at, "train/kl_ref_per_token", sums.kl_ref / t);
        m.push(at, "train/grad_norm", gn);
        m.push(at, "train/lr", lr);
        if let Some(g) = critic_gn {
            m.push(at, "train/value_loss", sums.value_loss);
            m.push(at, "train/value_clip_frac", sums.value_clip_frac);
            m.push(at, "train/critic_grad_norm", g);
        }
        if s.record_timings {
            m.push(at, "run/tokens_per_s", mb_tokens as f64 / secs.max(1e-9));
            m.push(at, "run/seconds_per_step", secs);
        }
        tracing::debug!(
            step = at,
            loss = sums.policy_loss / t,
            grad_norm = gn,
            lr,
            tokens_per_s = mb_tokens as f64 / secs.max(1e-9),
            "step"
        );
        Ok(StepReport {
            loss: sums.policy_loss / t,
            grad_norm: gn,
            tokens: mb_tokens as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minibatches_by_prompt_hold_whole_groups_and_single_rollouts_keep_their_order() {
        // 6 prompts x 4 samples, minibatches of 8, 2 epochs.
        let groups: Vec<usize> = (0..24).map(|i| i / 4).collect();
        let cut = |by_prompt| Cut {
            epochs: 2,
            size: 8,
            by_prompt,
            seed: 7,
        };
        let by_prompt = schedule(&groups, &cut(true), 3);
        assert_eq!(by_prompt.len(), 6);
        for mb in &by_prompt {
            let mut gs: Vec<usize> = mb.iter().map(|&i| groups[i]).collect();
            gs.dedup();
            assert_eq!(gs.len(), 2, "two whole groups: {mb:?}");
            assert!(mb.chunks(4).all(|g| g.windows(2).all(|w| w[1] == w[0] + 1)));
        }
        // Each epoch covers every rollout once.
        for epoch in by_prompt.chunks(3) {
            let mut all: Vec<usize> = epoch.concat();
            all.sort_unstable();
            assert_eq!(all, (0..24).collect::<Vec<_>>());
        }
        // Shuffling rollouts mixes the groups (this seed), as before the option existed.
        let by_rollout = schedule(&groups, &cut(false), 3);
        assert_eq!(
            by_rollout[0..3].concat(),
            rlhf_core::rng::permutation(24, 7, "ppo-update/order/3/0")
        );
        assert!(by_rollout.iter().any(|mb| {
            let mut gs: Vec<usize> = mb.iter().map(|&i| groups[i]).collect();
            gs.sort_unstable();
            gs.dedup();
            gs.len() > 2
        }));
        // One rollout per prompt: both orders are the same.
        let single: Vec<usize> = (0..24).collect();
        assert_eq!(
            schedule(&single, &cut(true), 3),
            schedule(&single, &cut(false), 3)
        );
    }
}

//! The training loop: micro-batches from the deterministic batch plan, loss on completion
//! tokens normalised by the completion tokens of the whole optimiser step (so gradient
//! accumulation equals one large batch), global-norm clipping, AdamW with the scheduled
//! learning rate, periodic eval and checkpoints, and a stop with a clear error on a NaN or
//! infinite loss (the last checkpoint stays as it was).

use std::time::Instant;

use anyhow::{Context, Result};
use rlhf_algo::schedule::Schedule;
use rlhf_algo::{ensure_finite, error::ensure_finite_named};
use rlhf_core::metrics::MetricsLog;
use rlhf_nn::Model;
use tracing::{debug, info, warn};

use crate::batching::{derive_seed, locate, Batcher};
use crate::data::{Example, SftData};
use crate::loss::{completion_nll_sum, evaluate, SftBatch};
use crate::optimizer::Optimizer;
use crate::resume;
use crate::settings::Settings;
use rlhf_algo::checkpoint::{CheckpointClock, Due, ResumeMode};

/// Stage name in the metrics file.
pub const STAGE: &str = "train-sft";
/// Seed stream tag of the per-step torch RNG (LoRA dropout).
const DROPOUT_TAG: u64 = 0xD800;

/// Seconds spent in each part of the training steps (logged at debug level).
#[derive(Debug, Default)]
struct Timing {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub steps: u64,
    /// Steps run by this process (fewer than `steps` after a resume).
    pub steps_here: u64,
    /// Real tokens (prompt + completion) processed in training by this process.
    pub tokens_here: u64,
    /// Wall time of this process's training steps (eval excluded), seconds.
    pub train_seconds: f64,
    pub final_train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
}

impl Outcome {
    /// Training throughput of this process.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_here as f64 / self.train_seconds.max(1e-9)
    }
}

/// Everything the loop works on.
pub struct Run<'a> {
    pub settings: &'a Settings,
    pub model: &'a Model,
    pub adapter: Option<&'a str>,
    pub data: &'a SftData,
    pub pad_id: i64,
    /// Settings and input hashes a checkpoint must match.
    pub fingerprint: serde_json::Value,
}

impl Run<'_> {
    /// Optimiser steps of the whole run.
    pub fn total_steps(&self, batches_per_epoch: usize) -> u64 {
        let s = self.settings;
        s.max_steps
            .unwrap_or_else(|| (s.epochs * batches_per_epoch as u64).div_ceil(s.grad_accum as u64))
    }

    fn eval(
        &self,
        eval_batches: &[Vec<usize>],
        metrics: &mut MetricsLog,
        step: u64,
    ) -> Result<Option<f64>> {
        if self.data.eval.is_empty() {
            return Ok(None);
        }
        let (loss, tokens) = evaluate(
            self.model,
            self.adapter,
            &self.data.eval,
            eval_batches,
            self.pad_id,
        )
        .context("evaluating")?;
        metrics.push(step as i64, "eval/loss", loss);
        metrics.push(step as i64, "eval/perplexity", loss.exp());
        metrics.push(step as i64, "eval/tokens", tokens as f64);
        info!(
            step,
            eval_loss = format!("{loss:.4}"),
            perplexity = format!("{:.3}", loss.exp()),
            "eval"
        );
        Ok(Some(loss))
    }

    /// Trains; returns the metrics log and the outcome. The optimiser owns the trainable
    /// tensors (shared with the model).
    pub fn train(&self, opt: &mut Optimizer) -> Result<(MetricsLog, Outcome)> {
        let s = self.settings;
        // Checkpoints by steps, by time and on SIGTERM/SIGINT (then stop: exit 143/130).
        let mut clock = CheckpointClock::new(s.checkpoint_every, s.checkpoint_minutes)
            .with_stop_after(s.stop_after_steps);
        let lengths: Vec<usize> = self.data.train.iter().map(Example::len).collect();
        let batcher = Batcher::new(lengths, s.batch_size, s.seed);
        let per_epoch = batcher.batches_per_epoch();
        let total = self.total_steps(per_epoch);
        let schedule = Schedule {
            kind: s.schedule,
            base_lr: s.learning_rate,
            warmup_steps: s.warmup_steps,
            total_steps: total,
            final_fraction: s.min_lr_fraction,
        };
        schedule.validate().map_err(|e| {
            anyhow::anyhow!(
                "{e} (the run has {total} steps: {per_epoch} batches per epoch, --grad-accum {})",
                s.grad_accum
            )
        })?;
        let eval_lengths: Vec<usize> = self.data.eval.iter().map(Example::len).collect();
        let eval_batches = Batcher::new(eval_lengths, s.eval_batch_size, 0).sequential();

        let mut metrics = MetricsLog::new(STAGE, 0);
        let mut start = 0u64;
        let mut tokens_total = 0u64;
        if rlhf_algo::checkpoint::exists(&s.ckpt_dir) {
            if s.resume.tries() {
                match resume::load(&s.ckpt_dir, &self.fingerprint, opt, STAGE)? {
                    Ok(r) => {
                        info!(step = r.step, total, checkpoint = %s.ckpt_dir.display(), "resuming");
                        start = r.step;
                        metrics = r.metrics;
                        tokens_total = r.tokens;
                    }
                    Err(mismatch) => s.resume.on_mismatch(mismatch.into())?,
                }
            } else {
                warn!(checkpoint = %s.ckpt_dir.display(), "a checkpoint exists; --no-resume: starting over (it will be replaced)");
            }
        } else if s.resume == ResumeMode::Require {
            info!(checkpoint = %s.ckpt_dir.display(), "no checkpoint to resume from; starting from step 0");
        }
        info!(
            train_examples = self.data.train.len(),
            eval_examples = self.data.eval.len(),
            batches_per_epoch = per_epoch,
            steps = total,
            trainable = opt.numel(),
            "training"
        );

        let bar = rlhf_core::progress::bar(total, "sft");
        bar.set_position(start);
        let log_every = (total / 20).max(1);
        let mut epoch_cache: Option<(u64, Vec<Vec<usize>>)> = None;
        let mut outcome = Outcome::default();
        let started = Instant::now();
        let mut eval_seconds = 0.0;
        let ga = s.grad_accum as u64;
        let mut timing = Timing::default();
        for step in start..total {
            tch::manual_seed(derive_seed(s.seed, DROPOUT_TAG, step) as i64);
            opt.zero_grad();
            let mut batches = Vec::with_capacity(s.grad_accum);
            for k in step * ga..(step + 1) * ga {
                let (epoch, index) = locate(k, per_epoch);
                if epoch_cache.as_ref().map(|c| c.0) != Some(epoch) {
                    epoch_cache = Some((epoch, batcher.epoch(epoch)));
                }
                let plan = &epoch_cache
                    .as_ref()
                    .map(|c| &c.1[index])
                    .cloned()
                    .unwrap_or_default();
                let refs: Vec<&Example> = plan.iter().map(|&i| &self.data.train[i]).collect();
                batches.push(SftBatch::new(&refs, self.pad_id, self.model.device()));
            }
            let targets: usize = batches.iter().map(|b| b.num_targets).sum();
            let norm = targets.max(1) as f64;
            let mut loss_sum = 0.0;
            for b in &batches {
                let t0 = Instant::now();
                let nll = completion_nll_sum(self.model, self.adapter, b, true)
                    .with_context(|| format!("forward pass at step {step}"))?;
                loss_sum += nll.double_value(&[]);
                let t1 = Instant::now();
                (nll / norm).backward();
                timing.forward += (t1 - t0).as_secs_f64();
                timing.backward += t1.elapsed().as_secs_f64();
            }
            let t_opt = Instant::now();
            let loss = loss_sum / norm;
            ensure_finite(loss, step + 1).map_err(|e| stop_error(e.into(), s, step))?;
            let grad_norm = opt.clip_grad_norm(s.max_grad_norm);
            ensure_finite_named("gradient norm", grad_norm, step + 1)
                .map_err(|e| stop_error(e.into(), s, step))?;
            let lr = schedule.lr_at(step);
            opt.step(lr);
            timing.optimizer += t_opt.elapsed().as_secs_f64();
            let done = step + 1;
            let tokens: usize = batches.iter().map(|b| b.num_tokens).sum();
            tokens_total += tokens as u64;
            outcome.tokens_here += tokens as u64;
            outcome.steps_here += 1;
            outcome.final_train_loss = Some(loss);
            metrics.push(done as i64, "train/loss", loss);
            metrics.push(done as i64, "train/lr", lr);
            metrics.push(done as i64, "train/grad_norm", grad_norm);
            metrics.push(done as i64, "train/completion_tokens", targets as f64);
            metrics.push(
                done as i64,
                "train/epoch",
                (done * ga) as f64 / per_epoch.max(1) as f64,
            );
            let elapsed = started.elapsed().as_secs_f64() - eval_seconds;
            let rate = outcome.tokens_here as f64 / elapsed.max(1e-9);
            bar.set_position(done);
            bar.set_prefix(format!("loss {loss:.4} lr {lr:.2e} {rate:.0} tok/s"));
            if done % log_every == 0 || done == total {
                info!(
                    step = done,
                    total,
                    loss = format!("{loss:.4}"),
                    lr = format!("{lr:.3e}"),
                    grad_norm = format!("{grad_norm:.3}"),
                    tokens_per_s = format!("{rate:.0}"),
                    "train"
                );
            }
            if s.eval_every > 0 && done % s.eval_every == 0 && done < total {
                let t = Instant::now();
                self.eval(&eval_batches, &mut metrics, done)?;
                eval_seconds += t.elapsed().as_secs_f64();
            }
            let due = clock.after_step(done, total);
            if due != Due::No {
                let t = Instant::now();
                let snap = resume::Snapshot {
                    step: done,
                    micro_batches: done * ga,
                    seed: s.seed,
                    fingerprint: &self.fingerprint,
                    metrics: &metrics,
                    tokens: tokens_total,
                };
                resume::save(&s.ckpt_dir, &snap, opt)?;
                clock.saved();
                eval_seconds += t.elapsed().as_secs_f64();
            }
            if let Due::SaveAndStop(stop) = due {
                bar.finish_and_clear();
                return Err(rlhf_algo::checkpoint::stopped(
                    stop,
                    done,
                    total,
                    &s.ckpt_dir,
                ));
            }
        }
        bar.finish_and_clear();
        outcome.train_seconds = started.elapsed().as_secs_f64() - eval_seconds;
        outcome.steps = total;
        debug!(
            forward_s = timing.forward,
            backward_s = timing.backward,
            optimizer_s = timing.optimizer,
            total_s = outcome.train_seconds,
            "time spent"
        );
        outcome.eval_loss = self.eval(&eval_batches, &mut metrics, total)?;
        metrics.push(total as i64, "train/tokens_total", tokens_total as f64);
        Ok((metrics, outcome))
    }
}

/// The error for a numerical stop, saying what survives.
fn stop_error(err: anyhow::Error, s: &Settings, step: u64) -> anyhow::Error {
    let kept = match rlhf_algo::checkpoint::load_meta(&s.ckpt_dir) {
        Ok(meta) => format!(
            "the last good checkpoint (step {}) is kept in {}",
            meta.step,
            s.ckpt_dir.display()
        ),
        Err(_) => "no checkpoint was written yet (see --checkpoint-every)".to_string(),
    };
    err.context(format!(
        "training stopped at step {}: {kept}; nothing was written to {}",
        step + 1,
        s.out.display()
    ))
}

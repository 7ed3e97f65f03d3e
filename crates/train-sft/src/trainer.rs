//! The SFT step: micro-batches from the deterministic batch plan, loss on completion
//! tokens normalised by the completion tokens of the whole optimiser step (so gradient
//! accumulation equals one large batch), global-norm clipping and AdamW. rlhf-algo's step
//! loop runs the steps (seeding, NaN/inf guard, checkpoints, resume, progress).

use std::time::Instant;

use anyhow::{Context, Result};
use rlhf_algo::schedule::Schedule;
use rlhf_algo::step_loop::{StepLoop, StepReport, Steps};
use rlhf_core::metrics::MetricsLog;
use rlhf_nn::Model;
use tch::Tensor;
use tracing::{debug, info};

use crate::batching::{locate, Batcher};
use crate::data::{Example, SftData};
use crate::loss::{completion_nll_sum, evaluate, SftBatch};
use crate::optimizer::Optimizer;
use crate::settings::Settings;

/// Stage name in the metrics file.
pub const STAGE: &str = "train-sft";

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

/// Everything the steps work on.
pub struct Run<'a> {
    pub settings: &'a Settings,
    pub model: &'a Model,
    pub adapter: Option<&'a str>,
    pub data: &'a SftData,
    pub pad_id: i64,
    /// Settings and input hashes a checkpoint must match.
    pub fingerprint: serde_json::Value,
}

/// The SFT task as the step loop runs it.
struct SftSteps<'a> {
    run: &'a Run<'a>,
    opt: &'a mut Optimizer,
    batcher: Batcher,
    per_epoch: usize,
    epoch_cache: Option<(u64, Vec<Vec<usize>>)>,
    eval_batches: Vec<Vec<usize>>,
    timing: Timing,
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
        info!(
            train_examples = self.data.train.len(),
            eval_examples = self.data.eval.len(),
            batches_per_epoch = per_epoch,
            steps = total,
            trainable = opt.numel(),
            "training"
        );
        let steps_loop = StepLoop {
            stage: STAGE,
            iteration: 0,
            label: "sft",
            dir: s.checkpoint_dir.clone(),
            out: &s.out,
            args: &s.checkpoint,
            seed: s.seed,
            fingerprint: self.fingerprint.clone(),
            total_steps: total,
            offset: 0,
            micro_batches_per_step: s.grad_accum as u64,
            eval_every: s.eval_every,
            schedule: &schedule,
        };
        let mut task = SftSteps {
            run: self,
            opt,
            batcher,
            per_epoch,
            epoch_cache: None,
            eval_batches,
            timing: Timing::default(),
        };
        let mut finished = steps_loop.run(&mut task, MetricsLog::new(STAGE, 0))?;
        let t = &task.timing;
        debug!(
            forward_s = t.forward,
            backward_s = t.backward,
            optimizer_s = t.optimizer,
            total_s = finished.train_seconds,
            "time spent"
        );
        let mut metrics = finished.metrics;
        let eval_loss = self.eval(&task.eval_batches, &mut metrics, total)?;
        metrics.push(total as i64, "train/tokens_total", finished.tokens as f64);
        finished.live.update(&metrics, true);
        let outcome = Outcome {
            steps: total,
            steps_here: finished.steps_here,
            tokens_here: finished.tokens_here,
            train_seconds: finished.train_seconds,
            final_train_loss: finished.last_loss,
            eval_loss,
        };
        Ok((metrics, outcome))
    }
}

impl SftSteps<'_> {
    /// The micro-batches of optimiser step `step`.
    fn batches(&mut self, step: u64) -> Vec<SftBatch> {
        let run = self.run;
        let ga = run.settings.grad_accum as u64;
        let mut batches = Vec::with_capacity(ga as usize);
        for k in step * ga..(step + 1) * ga {
            let (epoch, index) = locate(k, self.per_epoch);
            if self.epoch_cache.as_ref().map(|c| c.0) != Some(epoch) {
                self.epoch_cache = Some((epoch, self.batcher.epoch(epoch)));
            }
            let plan = self
                .epoch_cache
                .as_ref()
                .and_then(|c| c.1.get(index))
                .cloned()
                .unwrap_or_default();
            let refs: Vec<&Example> = plan.iter().map(|&i| &run.data.train[i]).collect();
            batches.push(SftBatch::new(&refs, run.pad_id, run.model.device()));
        }
        batches
    }
}

impl Steps for SftSteps<'_> {
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .opt
            .params()
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect())
    }

    fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.opt.state()
    }

    fn load_optimizer_state(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        Ok(self.opt.load_state(saved)?)
    }

    fn step(&mut self, step: u64, lr: f64, metrics: &mut MetricsLog) -> Result<StepReport> {
        let run = self.run;
        let s = run.settings;
        self.opt.zero_grad();
        let batches = self.batches(step);
        let targets: usize = batches.iter().map(|b| b.num_targets).sum();
        let norm = targets.max(1) as f64;
        let mut loss_sum = 0.0;
        for b in &batches {
            let t0 = Instant::now();
            let nll = completion_nll_sum(run.model, run.adapter, b, true)
                .with_context(|| format!("forward pass at step {}", step + 1))?;
            loss_sum += nll.double_value(&[]);
            let t1 = Instant::now();
            (nll / norm).backward();
            self.timing.forward += (t1 - t0).as_secs_f64();
            self.timing.backward += t1.elapsed().as_secs_f64();
        }
        let t_opt = Instant::now();
        let loss = loss_sum / norm;
        rlhf_algo::ensure_finite(loss, step + 1)?;
        let grad_norm = self.opt.clip_grad_norm(s.max_grad_norm);
        rlhf_algo::error::ensure_finite_named("gradient norm", grad_norm, step + 1)?;
        self.opt.step(lr);
        self.timing.optimizer += t_opt.elapsed().as_secs_f64();
        let done = step + 1;
        let ga = s.grad_accum as u64;
        metrics.push(done as i64, "train/loss", loss);
        metrics.push(done as i64, "train/lr", lr);
        metrics.push(done as i64, "train/grad_norm", grad_norm);
        metrics.push(done as i64, "train/completion_tokens", targets as f64);
        metrics.push(
            done as i64,
            "train/epoch",
            (done * ga) as f64 / self.per_epoch.max(1) as f64,
        );
        Ok(StepReport {
            loss,
            grad_norm,
            tokens: batches.iter().map(|b| b.num_tokens as u64).sum(),
        })
    }

    fn eval(&mut self, done: u64, metrics: &mut MetricsLog) -> Result<()> {
        self.run.eval(&self.eval_batches, metrics, done)?;
        Ok(())
    }
}

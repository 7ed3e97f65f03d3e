//! The training step of one reward model (one ensemble member): length-bucketed
//! micro-batches, gradient accumulation, clipping, AdamW with warmup and decay. rlhf-algo's
//! step loop runs the steps (seeding, NaN/inf guard, checkpoints, resume, evaluation,
//! progress).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rlhf_algo::checkpoint::CheckpointArgs;
use rlhf_algo::optim::{AdamW, AdamWConfig};
use rlhf_algo::schedule::{Schedule, ScheduleKind};
use rlhf_algo::step_loop::{StepLoop, StepReport, Steps};
use rlhf_core::metrics::{MetricsLog, TRAINABLE_PARAMS, TRAINED_STATE_BYTES};
use tch::{Kind, Tensor};
use tracing::{info, warn};

use crate::batching::{epoch_batches, eval_batches, Batch, Group};
use crate::data::{Examples, Seq};
use crate::loss::{self, LossConfig};
use crate::quality::Collected;
use crate::reward_model::{to_vec, RewardModel};

/// Optimisation settings of a run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub adamw: AdamWConfig,
    pub schedule: ScheduleKind,
    /// Final learning rate of a linear or cosine decay, as a fraction of the peak.
    pub final_lr_fraction: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub eval_every: usize,
    pub seed: u64,
    pub loss: LossConfig,
    pub ratings_weight: f64,
    /// Record run/seconds_per_step and run/peak_rss_bytes in the metrics (they differ
    /// between runs, so they are off unless asked for).
    pub record_timings: bool,
}

/// One member's training job.
pub struct Job<'a> {
    pub cfg: &'a TrainConfig,
    pub train: &'a Examples,
    /// Training groups (all of them, or a bootstrap resample).
    pub groups: Vec<Group>,
    pub eval: &'a Examples,
    /// Checkpoint folder (used when checkpointing or resuming).
    pub checkpoint_dir: PathBuf,
    /// The shared checkpoint flags.
    pub checkpoint: &'a CheckpointArgs,
    /// The output folder (named when a step fails).
    pub out: &'a Path,
    /// Seed offset of the member (dropout and data order differ per member).
    pub member: usize,
    /// Everything that must match for a resume to be valid.
    pub fingerprint: serde_json::Value,
}

/// What a finished member reports.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: u64,
    pub metrics: MetricsLog,
    /// Final eval figures (without prefix).
    pub eval: Vec<(String, f64)>,
}

/// The loss of a batch (with graph when the scores have one) and its scores.
pub fn batch_loss(
    rm: &RewardModel,
    ex: &Examples,
    batch: &Batch,
    cfg: &TrainConfig,
    train: bool,
) -> Result<(Tensor, Collected)> {
    let seqs: Vec<&Seq> = batch.seqs.iter().map(|&i| &ex.seqs[i]).collect();
    let scores = rm.scores(&seqs, train)?;
    let device = scores.device();
    let host = to_vec(&scores)?;
    let mut collected = Collected::default();
    let mut parts: Vec<Tensor> = Vec::new();
    if !batch.pairs.is_empty() {
        let pos = |f: fn(&(usize, usize, usize)) -> usize| {
            Tensor::from_slice(&batch.pairs.iter().map(|p| f(p) as i64).collect::<Vec<_>>())
                .to_device(device)
        };
        let field = |f: &dyn Fn(usize) -> f32| {
            Tensor::from_slice(&batch.pairs.iter().map(|p| f(p.2)).collect::<Vec<_>>())
                .to_device(device)
        };
        let rc = scores.index_select(0, &pos(|p| p.0));
        let rr = scores.index_select(0, &pos(|p| p.1));
        let label = field(&|p| ex.pairs[p].label);
        let margin = field(&|p| ex.pairs[p].margin);
        let weight = field(&|p| ex.pairs[p].weight);
        parts.push(loss::pairs(&rc, &rr, &label, &margin, &weight, &cfg.loss)?.loss);
        collected.pairs = batch
            .pairs
            .iter()
            .map(|&(c, r, p)| (host[c], host[r], ex.pairs[p].label as f64))
            .collect();
    }
    if !batch.ratings.is_empty() {
        let idx: Vec<i64> = batch.ratings.iter().map(|r| r.0 as i64).collect();
        let reward = scores.index_select(0, &Tensor::from_slice(&idx).to_device(device));
        let target: Vec<f32> = batch
            .ratings
            .iter()
            .map(|r| ex.ratings[r.1].target)
            .collect();
        let weight: Vec<f32> = batch
            .ratings
            .iter()
            .map(|r| ex.ratings[r.1].weight)
            .collect();
        let l = loss::ratings(
            &reward,
            &Tensor::from_slice(&target).to_device(device),
            &Tensor::from_slice(&weight).to_device(device),
            &cfg.loss,
        )?;
        parts.push(l * cfg.ratings_weight);
        collected.ratings = batch
            .ratings
            .iter()
            .map(|&(s, r)| (host[s], ex.ratings[r].target as f64))
            .collect();
    }
    let loss = parts
        .into_iter()
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, device)));
    Ok((loss, collected))
}

/// Evaluates on `ex` without grad: mean batch loss and the gathered scores.
pub fn evaluate(rm: &RewardModel, ex: &Examples, cfg: &TrainConfig) -> Result<(f64, Collected)> {
    let _guard = tch::no_grad_guard();
    let mut total = 0.0;
    let mut n = 0usize;
    let mut all = Collected::default();
    for batch in eval_batches(ex, cfg.batch_size) {
        let (loss, c) = batch_loss(rm, ex, &batch, cfg, false)?;
        let k = batch.pairs.len() + batch.ratings.len();
        total += loss.double_value(&[]) * k as f64;
        n += k;
        all.extend(c);
    }
    Ok((if n > 0 { total / n as f64 } else { 0.0 }, all))
}

fn push_figures(log: &mut MetricsLog, step: i64, prefix: &str, loss: f64, c: &Collected) {
    log.push(step, &format!("{prefix}/loss"), loss);
    for (name, v) in c.figures() {
        log.push(step, &format!("{prefix}/{name}"), v);
    }
}

/// One member's training as the step loop runs it.
struct MemberSteps<'a> {
    rm: &'a RewardModel<'a>,
    job: &'a Job<'a>,
    opt: AdamW,
    stream: Vec<Batch>,
}

impl Steps for MemberSteps<'_> {
    fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.rm.trainable()
    }

    fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.opt.state()
    }

    fn load_optimizer_state(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
        Ok(self.opt.load_state(saved)?)
    }

    fn step(&mut self, step: u64, lr: f64, metrics: &mut MetricsLog) -> Result<StepReport> {
        let (rm, job, cfg) = (self.rm, self.job, self.job.cfg);
        let mut step_loss = 0.0;
        let mut tokens = 0u64;
        let mut collected = Collected::default();
        for k in 0..cfg.grad_accum {
            let m = step as usize * cfg.grad_accum + k;
            let Some(batch) = self.stream.get(m) else {
                break;
            };
            let (loss, c) = batch_loss(rm, job.train, batch, cfg, true)?;
            let value = loss.double_value(&[]);
            rlhf_algo::ensure_finite(value, step + 1)?;
            (loss / cfg.grad_accum as f64).backward();
            step_loss += value / cfg.grad_accum as f64;
            tokens += batch
                .seqs
                .iter()
                .map(|&i| job.train.seqs[i].len() as u64)
                .sum::<u64>();
            collected.extend(c);
        }
        let norm = if cfg.max_grad_norm > 0.0 {
            self.opt.clip_grad_norm(cfg.max_grad_norm)
        } else {
            self.opt.grad_norm()
        };
        rlhf_algo::error::ensure_finite_named("gradient norm", norm, step + 1)?;
        self.opt.step(lr);
        self.opt.zero_grad();
        let done = step as i64 + 1;
        push_figures(metrics, done, "train", step_loss, &collected);
        metrics.push(done, "train/lr", lr);
        metrics.push(done, "train/grad_norm", norm);
        Ok(StepReport {
            loss: step_loss,
            grad_norm: norm,
            tokens,
        })
    }

    fn eval(&mut self, done: u64, metrics: &mut MetricsLog) -> Result<()> {
        if !self.job.eval.is_empty() {
            let (loss, c) = evaluate(self.rm, self.job.eval, self.job.cfg)?;
            push_figures(metrics, done as i64, "eval", loss, &c);
            info!(step = done, eval_loss = loss, "eval");
        }
        Ok(())
    }
}

/// Trains one reward model; returns its steps, metrics and final eval figures.
pub fn train_member(rm: &RewardModel, job: &Job, iteration: i32) -> Result<Outcome> {
    let cfg = job.cfg;
    let seed = cfg.seed.wrapping_add((job.member as u64) << 32);
    let mut stream: Vec<Batch> = Vec::new();
    for epoch in 0..cfg.epochs {
        stream.extend(epoch_batches(
            job.train,
            &job.groups,
            cfg.batch_size,
            seed,
            epoch,
        ));
    }
    if stream.is_empty() {
        bail!("no training examples (every row has split=eval?)");
    }
    let epoch_steps = stream.len().div_ceil(cfg.grad_accum);
    let total_steps = cfg.max_steps.map_or(epoch_steps, |m| m.min(epoch_steps)) as u64;
    let schedule = Schedule {
        kind: cfg.schedule,
        base_lr: cfg.adamw.lr,
        warmup_steps: cfg.warmup_steps as u64,
        total_steps,
        final_fraction: cfg.final_lr_fraction,
    };
    schedule
        .validate()
        .with_context(|| format!("learning-rate schedule over {total_steps} steps"))?;
    let params = rm.trainable()?;
    let trainable_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
    info!(
        member = job.member,
        steps = total_steps,
        micro_batches = stream.len(),
        trainable_params,
        "training"
    );
    let steps_loop = StepLoop {
        stage: "train-rm-lora",
        iteration,
        label: "training",
        dir: job.checkpoint_dir.clone(),
        out: job.out,
        args: job.checkpoint,
        seed,
        fingerprint: job.fingerprint.clone(),
        total_steps,
        offset: 0,
        micro_batches_per_step: cfg.grad_accum as u64,
        eval_every: cfg.eval_every as u64,
        schedule: &schedule,
    };
    let opt = AdamW::new(params, cfg.adamw);
    let trained_state_bytes = opt.trained_state_bytes();
    let mut task = MemberSteps {
        rm,
        job,
        opt,
        stream,
    };
    let mut finished = steps_loop.run(&mut task, MetricsLog::new("train-rm-lora", iteration))?;
    let seconds_per_step = finished.seconds_per_step();
    let mut log = finished.metrics;
    let end = total_steps as i64;
    let mut eval = Vec::new();
    if job.eval.is_empty() {
        warn!("no eval rows (split=eval): eval metrics are not reported");
    } else {
        let (loss, c) = evaluate(rm, job.eval, cfg)?;
        push_figures(&mut log, end, "eval", loss, &c);
        eval.push(("loss".to_string(), loss));
        eval.extend(c.figures().into_iter().map(|(n, v)| (n.to_string(), v)));
        info!(eval_loss = loss, figures = ?eval, "final eval");
    }
    log.push(end, TRAINABLE_PARAMS, trainable_params as f64);
    log.push(end, TRAINED_STATE_BYTES, trained_state_bytes as f64);
    if let Some(secs) = seconds_per_step {
        info!(seconds_per_step = secs, "timing");
        if cfg.record_timings {
            log.push(end, "run/seconds_per_step", secs);
        }
    }
    if let Some(rss) = rlhf_core::resources::peak_rss_bytes().filter(|_| cfg.record_timings) {
        log.push(end, "run/peak_rss_bytes", rss as f64);
    }
    finished.live.update(&log, true);
    Ok(Outcome {
        steps: total_steps,
        metrics: log,
        eval,
    })
}

//! The training loop of one reward model (one ensemble member): length-bucketed
//! micro-batches, gradient accumulation, clipping, AdamW with warmup and decay, periodic
//! evaluation and checkpoints, resume, and a hard stop on a NaN/inf loss (the last good
//! checkpoint stays in place).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rlhf_algo::checkpoint::{self, CheckpointClock, CheckpointMeta, Due, ResumeMode};
use rlhf_algo::optim::{AdamW, AdamWConfig};
use rlhf_algo::schedule::{Schedule, ScheduleKind};
use rlhf_core::metrics::MetricsLog;
use serde_json::json;
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
    pub checkpoint_every: u64,
    pub checkpoint_minutes: f64,
    /// --stop-after-steps: stop after this many steps of this process (with a checkpoint).
    pub stop_after_steps: Option<u64>,
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
    pub resume: ResumeMode,
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

/// Metrics rows for a checkpoint: values as their f64 bit patterns, so a resumed run's
/// metrics.parquet is byte-identical to an uninterrupted one's (JSON floats are not).
fn rows_to_json(log: &MetricsLog) -> serde_json::Value {
    json!(log
        .rows
        .iter()
        .map(|r| json!([r.step, r.metric, r.value.to_bits()]))
        .collect::<Vec<_>>())
}

fn rows_from_json(log: &mut MetricsLog, v: &serde_json::Value) -> Result<()> {
    let rows = v
        .as_array()
        .context("checkpoint extra `metrics` is not a list")?;
    for r in rows {
        let (step, metric, bits) = (r[0].as_i64(), r[1].as_str(), r[2].as_u64());
        match (step, metric, bits) {
            (Some(s), Some(m), Some(b)) => log.push(s, m, f64::from_bits(b)),
            _ => bail!("checkpoint extra `metrics` has a malformed row: {r}"),
        }
    }
    Ok(())
}

fn save_checkpoint(
    rm: &RewardModel,
    job: &Job,
    opt: &AdamW,
    log: &MetricsLog,
    done: u64,
    seed: u64,
) -> Result<()> {
    let mut meta = CheckpointMeta::new(done, done * job.cfg.grad_accum as u64, seed);
    meta.extra = json!({"fingerprint": job.fingerprint, "metrics": rows_to_json(log)});
    checkpoint::save(&job.checkpoint_dir, &meta, &rm.trainable()?, &opt.state())?;
    Ok(())
}

/// Trains one reward model; returns its steps, metrics and final eval figures.
pub fn train_member(rm: &RewardModel, job: &Job, iteration: i32) -> Result<Outcome> {
    // Checkpoints by steps, by time and on SIGTERM/SIGINT (then stop: exit 143/130).
    let mut clock = CheckpointClock::new(job.cfg.checkpoint_every, job.cfg.checkpoint_minutes)
        .with_stop_after(job.cfg.stop_after_steps);
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
    let shared = params
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut opt = AdamW::new(shared, cfg.adamw);
    let mut log = MetricsLog::new("train-rm-lora", iteration);
    let mut start = 0u64;
    if job.resume.tries() && checkpoint::exists(&job.checkpoint_dir) {
        let ck = checkpoint::load(&job.checkpoint_dir)?;
        let saved = &ck.meta.extra["fingerprint"];
        if *saved != job.fingerprint {
            job.resume
                .on_mismatch(anyhow::Error::new(rlhf_core::CoreError::Mismatch {
                    what: "checkpoint",
                    left_name: job.checkpoint_dir.display().to_string(),
                    left: saved.to_string(),
                    right_name: "this run".into(),
                    right: job.fingerprint.to_string(),
                    hint: "rerun with the original flags and data, or --no-resume to start over"
                        .into(),
                }))?;
        } else {
            checkpoint::restore_into(&params, &ck.tensors)?;
            opt.load_state(&ck.optimizer)?;
            rows_from_json(&mut log, &ck.meta.extra["metrics"])?;
            start = ck.meta.step;
            info!(step = start, dir = %job.checkpoint_dir.display(), "resumed from checkpoint");
        }
    } else if job.resume == ResumeMode::Require {
        info!(dir = %job.checkpoint_dir.display(), "no checkpoint to resume from; starting fresh");
    }
    info!(
        member = job.member,
        steps = total_steps,
        micro_batches = stream.len(),
        trainable_params,
        "training"
    );
    let bar = rlhf_core::progress::bar(total_steps, "training");
    bar.set_position(start);
    let mut step_seconds = 0.0;
    let mut timed_steps = 0u64;
    for step in start..total_steps {
        let t0 = Instant::now();
        let mut step_loss = 0.0;
        let mut collected = Collected::default();
        for k in 0..cfg.grad_accum {
            let m = step as usize * cfg.grad_accum + k;
            let Some(batch) = stream.get(m) else { break };
            tch::manual_seed((seed ^ 0x5eed).wrapping_add(m as u64) as i64);
            let (loss, c) = batch_loss(rm, job.train, batch, cfg, true)?;
            let value = loss.double_value(&[]);
            rlhf_algo::ensure_finite(value, step + 1).with_context(|| {
                format!(
                    "training stopped; the last good checkpoint (if any) is kept in {}",
                    job.checkpoint_dir.display()
                )
            })?;
            (loss / cfg.grad_accum as f64).backward();
            step_loss += value / cfg.grad_accum as f64;
            collected.extend(c);
        }
        let norm = if cfg.max_grad_norm > 0.0 {
            opt.clip_grad_norm(cfg.max_grad_norm)
        } else {
            opt.grad_norm()
        };
        rlhf_algo::error::ensure_finite_named("gradient norm", norm, step + 1).with_context(
            || {
                format!(
                    "training stopped; the last good checkpoint (if any) is kept in {}",
                    job.checkpoint_dir.display()
                )
            },
        )?;
        let lr = schedule.lr_at(step);
        opt.step(lr);
        opt.zero_grad();
        step_seconds += t0.elapsed().as_secs_f64();
        timed_steps += 1;
        let done = step + 1;
        push_figures(&mut log, done as i64, "train", step_loss, &collected);
        log.push(done as i64, "train/lr", lr);
        log.push(done as i64, "train/grad_norm", norm);
        bar.set_position(done);
        if cfg.eval_every > 0
            && done % cfg.eval_every as u64 == 0
            && done < total_steps
            && !job.eval.is_empty()
        {
            let (loss, c) = evaluate(rm, job.eval, cfg)?;
            push_figures(&mut log, done as i64, "eval", loss, &c);
            info!(step = done, eval_loss = loss, "eval");
        }
        match clock.after_step(done, total_steps) {
            Due::No => {}
            Due::Save => {
                save_checkpoint(rm, job, &opt, &log, done, seed)?;
                clock.saved();
            }
            Due::SaveAndStop(stop) => {
                save_checkpoint(rm, job, &opt, &log, done, seed)?;
                bar.finish_and_clear();
                return Err(checkpoint::stopped(
                    stop,
                    done,
                    total_steps,
                    &job.checkpoint_dir,
                ));
            }
        }
    }
    bar.finish_and_clear();
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
    log.push(end, "run/trainable_params", trainable_params as f64);
    if timed_steps > 0 {
        info!(
            seconds_per_step = step_seconds / timed_steps as f64,
            "timing"
        );
        if cfg.record_timings {
            log.push(
                end,
                "run/seconds_per_step",
                step_seconds / timed_steps as f64,
            );
        }
    }
    if let Some(rss) = rlhf_core::resources::peak_rss_bytes().filter(|_| cfg.record_timings) {
        log.push(end, "run/peak_rss_bytes", rss as f64);
    }
    Ok(Outcome {
        steps: total_steps,
        metrics: log,
        eval,
    })
}

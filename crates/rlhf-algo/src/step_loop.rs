//! The resumable step loop of every trainer (train-sft, train-rm-lora, ppo-update). A
//! trainer supplies its optimiser step ([`Steps::step`]: micro-batches, loss, backward,
//! clipping, update, its metrics) and what a checkpoint holds; the loop owns the rest, once:
//!
//! - resume: a checkpoint beside the output is read when the fingerprint (settings and
//!   input hashes) matches, replaced with a warning when it does not, refused under
//!   `--resume` (naming the first differing key), ignored under `--no-resume`;
//! - dropout seeding: torch's generator is reseeded before each step from the seed and the
//!   step, so a resumed run draws the masks an uninterrupted one draws;
//! - the NaN/inf guard on each step's loss and gradient norm, and one error for any failed
//!   step saying which checkpoint survives and that no output was written;
//! - checkpoints by steps, by minutes and on SIGTERM/SIGINT, `--stop-after-steps`, with
//!   metrics stored as f64 bit patterns so a resumed run's metrics equal an uninterrupted
//!   one's to the bit;
//! - progress bar, periodic log lines, mid-run evaluation, throughput and timing;
//! - metrics streamed as they are recorded (`--live-metrics`, `--tensorboard`:
//!   [`rlhf_core::live`]), restarted from the checkpoint's metrics on resume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rlhf_core::live::Stream;
use rlhf_core::metrics::MetricsLog;
use rlhf_core::CoreError;
use serde_json::{json, Value};
use tch::Tensor;
use tracing::{info, warn};

use crate::checkpoint::{self, CheckpointArgs, CheckpointMeta, Due, ResumeMode};
use crate::error::{ensure_finite, ensure_finite_named};

/// What a trainer supplies to the loop.
pub trait Steps {
    /// The trainable tensors a checkpoint holds (shared with the model, so restoring them
    /// restores the model).
    fn tensors(&self) -> Result<Vec<(String, Tensor)>>;
    /// The optimiser state a checkpoint holds.
    fn optimizer_state(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`Steps::optimizer_state`] returned.
    fn load_optimizer_state(&mut self, saved: &[(String, Tensor)]) -> Result<()>;
    /// Runs optimiser step `step` (0-based, of this loop) at learning rate `lr`: zero the
    /// gradients, forward and backward over the step's micro-batches, clip, update, and
    /// push the step's metrics into `metrics`. Torch's generator is already seeded.
    fn step(&mut self, step: u64, lr: f64, metrics: &mut MetricsLog) -> Result<StepReport>;
    /// Evaluates after `done` steps (called every `eval_every` steps before the last; the
    /// final evaluation is the trainer's). Time spent here is not training time.
    fn eval(&mut self, _done: u64, _metrics: &mut MetricsLog) -> Result<()> {
        Ok(())
    }
}

/// What one optimiser step reports to the loop.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// The step's loss (checked for NaN/inf).
    pub loss: f64,
    /// Global gradient norm before clipping (checked for NaN/inf).
    pub grad_norm: f64,
    /// Tokens the step trained on (throughput; a running total is kept in checkpoints).
    pub tokens: u64,
}

/// The settings of one loop.
#[derive(Debug, Clone)]
pub struct StepLoop<'a> {
    /// Stage name (metrics rows, messages).
    pub stage: &'static str,
    /// Policy iteration of the metrics rows (0 outside the RL loop).
    pub iteration: i32,
    /// Progress-bar label.
    pub label: &'a str,
    /// Checkpoint folder of this loop.
    pub dir: PathBuf,
    /// The output that is written only on success (named in errors).
    pub out: &'a Path,
    /// The shared checkpoint flags.
    pub args: &'a CheckpointArgs,
    /// Seed of the run: the dropout masks derive from it.
    pub seed: u64,
    /// Everything a checkpoint must match to be resumed: a JSON object whose first
    /// differing key is named in the mismatch message.
    pub fingerprint: Value,
    /// Optimiser steps of this loop.
    pub total_steps: u64,
    /// Steps before this loop (ppo-update's earlier iterations): the learning-rate
    /// schedule and the dropout seed use `offset + step`.
    pub offset: u64,
    /// Micro-batches per step (recorded as the checkpoint's data position).
    pub micro_batches_per_step: u64,
    /// Call [`Steps::eval`] every N steps (0: never).
    pub eval_every: u64,
    /// The learning rate at a global step.
    pub schedule: &'a crate::schedule::Schedule,
}

/// What a finished loop reports.
#[derive(Debug)]
pub struct Finished {
    /// Metrics of the whole run (those of a resumed checkpoint included).
    pub metrics: MetricsLog,
    /// Steps of the loop (`total_steps`).
    pub steps: u64,
    /// Steps run by this process (fewer after a resume).
    pub steps_here: u64,
    /// Tokens trained on over the whole run, and by this process.
    pub tokens: u64,
    pub tokens_here: u64,
    /// Wall time of this process's steps (evaluations and checkpoints excluded), seconds.
    pub train_seconds: f64,
    /// Loss of the last step run by this process.
    pub last_loss: Option<f64>,
    /// The metrics stream: the trainer sends what it records after the loop with
    /// `live.update(&metrics, true)`.
    pub live: Stream,
}

impl Finished {
    /// Training throughput of this process, tokens per second.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens_here as f64 / self.train_seconds.max(1e-9)
    }

    /// Mean wall time of this process's steps.
    pub fn seconds_per_step(&self) -> Option<f64> {
        (self.steps_here > 0).then(|| self.train_seconds / self.steps_here as f64)
    }
}

/// The checkpoint folder of an output: `OUT.checkpoint` beside it.
pub fn checkpoint_dir_for(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    out.with_file_name(format!("{name}.checkpoint"))
}

/// Removes a finished run's checkpoint folder unless `--keep-checkpoint` asks to keep it.
pub fn remove_checkpoint(dir: &Path, args: &CheckpointArgs) -> Result<()> {
    if !args.keep_checkpoint && dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("removing checkpoint {}", dir.display()))?;
    }
    Ok(())
}

/// The seed of torch's generator before global step `step` (LoRA dropout masks).
pub fn dropout_seed(seed: u64, step: u64) -> i64 {
    (rlhf_core::rng::derive(seed, "dropout", step) >> 1) as i64
}

/// The first key whose value differs between two fingerprints: (key, saved, now).
pub fn first_difference(saved: &Value, now: &Value) -> Option<(String, String, String)> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return (saved != now).then(|| ("settings".into(), saved.to_string(), now.to_string()));
    };
    for (k, v) in b {
        let old = a.get(k).cloned().unwrap_or(Value::Null);
        if old != *v {
            return Some((k.clone(), old.to_string(), v.to_string()));
        }
    }
    a.keys()
        .find(|k| !b.contains_key(*k))
        .map(|k| (k.clone(), a[k].to_string(), "null".into()))
}

/// Metrics rows for a checkpoint, values as their f64 bit patterns (JSON floats may not
/// come back to the same bits).
fn metrics_to_json(log: &MetricsLog) -> Value {
    json!(log
        .rows
        .iter()
        .map(|r| json!([r.step, r.metric, r.value.to_bits()]))
        .collect::<Vec<_>>())
}

fn metrics_from_json(log: &mut MetricsLog, v: &Value, dir: &Path) -> Result<()> {
    let Some(rows) = v.as_array() else {
        bail!("checkpoint {}: `metrics` is not a list", dir.display());
    };
    for r in rows {
        match (r[0].as_i64(), r[1].as_str(), r[2].as_u64()) {
            (Some(step), Some(name), Some(bits)) => log.push(step, name, f64::from_bits(bits)),
            _ => bail!("checkpoint {}: malformed metrics entry {r}", dir.display()),
        }
    }
    Ok(())
}

/// Where a resumed loop starts.
struct Resumed {
    step: u64,
    tokens: u64,
}

impl StepLoop<'_> {
    fn save(&self, task: &dyn Steps, metrics: &MetricsLog, done: u64, tokens: u64) -> Result<()> {
        let mut meta = CheckpointMeta::new(done, done * self.micro_batches_per_step, self.seed);
        meta.extra = json!({
            "fingerprint": self.fingerprint,
            "tokens": tokens,
            "metrics": metrics_to_json(metrics),
        });
        checkpoint::save(&self.dir, &meta, &task.tensors()?, &task.optimizer_state())
            .with_context(|| format!("writing checkpoint {}", self.dir.display()))?;
        tracing::debug!(step = done, dir = %self.dir.display(), "checkpoint saved");
        Ok(())
    }

    /// Reads the checkpoint beside the output as the resume mode says; `None`: start at 0.
    fn resume(&self, task: &mut dyn Steps, metrics: &mut MetricsLog) -> Result<Option<Resumed>> {
        let mode = self.args.mode();
        if !checkpoint::exists(&self.dir) {
            if mode == ResumeMode::Require {
                info!(checkpoint = %self.dir.display(), "--resume: no checkpoint yet; starting from step 0");
            }
            return Ok(None);
        }
        if !mode.tries() {
            warn!(checkpoint = %self.dir.display(), "a checkpoint exists; --no-resume: starting over (it will be replaced)");
            return Ok(None);
        }
        let ck = checkpoint::load(&self.dir)
            .with_context(|| format!("reading checkpoint {}", self.dir.display()))?;
        let saved = ck.meta.extra.get("fingerprint").unwrap_or(&Value::Null);
        if let Some((key, old, new)) = first_difference(saved, &self.fingerprint) {
            mode.on_mismatch(
                CoreError::Mismatch {
                    what: "resume settings",
                    left_name: format!("checkpoint {} ({key})", self.dir.display()),
                    left: old,
                    right_name: "this run".into(),
                    right: new,
                    hint: "resume with the flags and inputs of the interrupted run, or \
                           --no-resume to start over"
                        .into(),
                }
                .into(),
            )?;
            return Ok(None);
        }
        if ck.meta.step > self.total_steps {
            bail!(
                "checkpoint {} is at step {} but the run has {} steps",
                self.dir.display(),
                ck.meta.step,
                self.total_steps
            );
        }
        checkpoint::restore_into(&task.tensors()?, &ck.tensors)
            .with_context(|| format!("restoring weights from {}", self.dir.display()))?;
        task.load_optimizer_state(&ck.optimizer)
            .with_context(|| format!("restoring optimiser state from {}", self.dir.display()))?;
        metrics.rows.clear();
        metrics_from_json(metrics, &ck.meta.extra["metrics"], &self.dir)?;
        let tokens = ck.meta.extra.get("tokens").and_then(Value::as_u64);
        info!(step = ck.meta.step, total = self.total_steps, checkpoint = %self.dir.display(), "resumed from checkpoint");
        Ok(Some(Resumed {
            step: ck.meta.step,
            tokens: tokens.unwrap_or(0),
        }))
    }

    /// The error for a failed step, saying what survives.
    fn failed(&self, err: anyhow::Error, step: u64) -> anyhow::Error {
        let kept = match checkpoint::load_meta(&self.dir) {
            Ok(meta) => format!(
                "the last good checkpoint (step {}) is kept in {}",
                meta.step,
                self.dir.display()
            ),
            Err(_) => "no checkpoint was written yet (see --checkpoint-every)".to_string(),
        };
        err.context(format!(
            "training stopped at step {}: {kept}; nothing was written to {}",
            step + 1,
            self.out.display()
        ))
    }

    /// Runs every step not yet done (resuming a matching checkpoint first) and returns
    /// the metrics and figures. `metrics` holds what was recorded before the loop.
    pub fn run(&self, task: &mut dyn Steps, mut metrics: MetricsLog) -> Result<Finished> {
        let mut clock = self.args.clock();
        let total = self.total_steps;
        let (start, tokens) = match self.resume(task, &mut metrics)? {
            Some(r) => (r.step, r.tokens),
            None => (0, 0),
        };
        let mut fin = Finished {
            metrics,
            steps: total,
            steps_here: 0,
            tokens,
            tokens_here: 0,
            train_seconds: 0.0,
            last_loss: None,
            live: Stream::default(),
        };
        fin.live = Stream::start(&fin.metrics, self.out)?;
        let bar = rlhf_core::progress::bar(total, self.label);
        bar.set_position(start);
        let log_every = (total / 10).max(1);
        for step in start..total {
            let global = self.offset + step;
            tch::manual_seed(dropout_seed(self.seed, global));
            let lr = self.schedule.lr_at(global);
            let t0 = Instant::now();
            let report = task
                .step(step, lr, &mut fin.metrics)
                .and_then(|r| {
                    ensure_finite(r.loss, global + 1)?;
                    ensure_finite_named("gradient norm", r.grad_norm, global + 1)?;
                    Ok(r)
                })
                .map_err(|e| {
                    fin.live.update(&fin.metrics, true);
                    self.failed(e, step)
                })?;
            fin.train_seconds += t0.elapsed().as_secs_f64();
            fin.steps_here += 1;
            fin.tokens_here += report.tokens;
            fin.tokens += report.tokens;
            fin.last_loss = Some(report.loss);
            let done = step + 1;
            let rate = fin.tokens_per_second();
            bar.set_position(done);
            bar.set_prefix(format!(
                "loss {:.4} lr {lr:.2e} {rate:.0} tok/s",
                report.loss
            ));
            if done % log_every == 0 || done == total {
                info!(
                    step = done,
                    total,
                    loss = format!("{:.4}", report.loss),
                    lr = format!("{lr:.3e}"),
                    grad_norm = format!("{:.3}", report.grad_norm),
                    tokens_per_s = format!("{rate:.0}"),
                    "train"
                );
            }
            if self.eval_every > 0 && done % self.eval_every == 0 && done < total {
                task.eval(done, &mut fin.metrics)?;
            }
            let due = clock.after_step(done, total);
            fin.live
                .update(&fin.metrics, due != Due::No || done == total);
            if due != Due::No {
                self.save(task, &fin.metrics, done, fin.tokens)?;
                clock.saved();
            }
            if let Due::SaveAndStop(stop) = due {
                bar.finish_and_clear();
                return Err(checkpoint::stopped(stop, done, total, &self.dir));
            }
        }
        bar.finish_and_clear();
        Ok(fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, AdamWConfig};
    use crate::schedule::Schedule;

    /// The toy tests draw from torch's one global generator: run them one at a time (the
    /// test harness runs tests on parallel threads).
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Fits a vector to a target with a noisy quadratic loss (the noise comes from torch's
    /// generator, so a resumed run matches only when the loop reseeds it per step).
    struct Toy {
        w: Tensor,
        opt: AdamW,
        nan_at: Option<u64>,
    }

    impl Toy {
        fn new() -> Toy {
            let w =
                Tensor::zeros([4], (tch::Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let opt = AdamW::new(
                vec![("w".into(), w.shallow_clone())],
                AdamWConfig::default(),
            );
            Toy {
                w,
                opt,
                nan_at: None,
            }
        }
    }

    impl Steps for Toy {
        fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
            Ok(vec![("w".into(), self.w.shallow_clone())])
        }
        fn optimizer_state(&self) -> Vec<(String, Tensor)> {
            self.opt.state()
        }
        fn load_optimizer_state(&mut self, saved: &[(String, Tensor)]) -> Result<()> {
            Ok(self.opt.load_state(saved)?)
        }
        fn step(&mut self, step: u64, lr: f64, metrics: &mut MetricsLog) -> Result<StepReport> {
            self.opt.zero_grad();
            let noise = Tensor::randn([4], (tch::Kind::Float, tch::Device::Cpu));
            let loss = (&self.w - Tensor::ones([4], (tch::Kind::Float, tch::Device::Cpu)) - noise)
                .square()
                .sum(tch::Kind::Float);
            loss.backward();
            let mut value = loss.double_value(&[]);
            if self.nan_at == Some(step) {
                value = f64::NAN;
            }
            let grad_norm = self.opt.clip_grad_norm(1.0);
            self.opt.step(lr);
            metrics.push(step as i64 + 1, "train/loss", value);
            Ok(StepReport {
                loss: value,
                grad_norm,
                tokens: 4,
            })
        }
    }

    fn args(stop_after_steps: Option<u64>, resume: bool) -> CheckpointArgs {
        CheckpointArgs {
            checkpoint_every: 0,
            checkpoint_minutes: 0.0,
            resume,
            no_resume: false,
            stop_after_steps,
            keep_checkpoint: false,
        }
    }

    fn run_toy(
        dir: &Path,
        args: &CheckpointArgs,
        fingerprint: Value,
        toy: &mut Toy,
    ) -> Result<Finished> {
        let schedule = Schedule::constant(0.05);
        let out = dir.join("out");
        StepLoop {
            stage: "toy",
            iteration: 0,
            label: "toy",
            dir: checkpoint_dir_for(&out),
            out: &out,
            args,
            seed: 7,
            fingerprint,
            total_steps: 6,
            offset: 0,
            micro_batches_per_step: 1,
            eval_every: 0,
            schedule: &schedule,
        }
        .run(toy, MetricsLog::new("toy", 0))
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        Vec::<f32>::try_from(t.detach())
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    #[test]
    fn a_run_stopped_twice_and_resumed_equals_an_uninterrupted_one() {
        let _one_at_a_time = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fp = json!({"lr": 0.05});
        let mut straight = Toy::new();
        let whole = run_toy(dir.path(), &args(None, false), fp.clone(), &mut straight).unwrap();
        assert_eq!((whole.steps, whole.steps_here, whole.tokens), (6, 6, 24));

        let other = tempfile::tempdir().unwrap();
        for expected_step in [2, 4] {
            let mut toy = Toy::new();
            let err =
                run_toy(other.path(), &args(Some(2), false), fp.clone(), &mut toy).unwrap_err();
            let stop = err
                .downcast_ref::<checkpoint::StoppedAtStepLimit>()
                .expect("step limit");
            assert_eq!(stop.done, expected_step);
        }
        let mut toy = Toy::new();
        let rest = run_toy(other.path(), &args(None, true), fp, &mut toy).unwrap();
        assert_eq!((rest.steps_here, rest.tokens, rest.tokens_here), (2, 24, 8));
        assert_eq!(
            bits(&toy.w),
            bits(&straight.w),
            "weights differ after resume"
        );
        let values = |f: &Finished| -> Vec<(i64, u64)> {
            f.metrics
                .rows
                .iter()
                .map(|r| (r.step, r.value.to_bits()))
                .collect()
        };
        assert_eq!(values(&rest), values(&whole), "metrics differ after resume");
    }

    #[test]
    fn other_settings_are_refused_under_resume_and_replaced_by_default() {
        let _one_at_a_time = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let mut toy = Toy::new();
        run_toy(
            dir.path(),
            &args(Some(2), false),
            json!({"lr": 0.05}),
            &mut toy,
        )
        .unwrap_err();
        let mut toy = Toy::new();
        let err = run_toy(dir.path(), &args(None, true), json!({"lr": 0.1}), &mut toy).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("(lr)") && msg.contains("0.05") && msg.contains("0.1"),
            "{msg}"
        );
        let mut toy = Toy::new();
        let fresh = run_toy(dir.path(), &args(None, false), json!({"lr": 0.1}), &mut toy).unwrap();
        assert_eq!(
            fresh.steps_here, 6,
            "a foreign checkpoint is replaced, not resumed"
        );
    }

    #[test]
    fn a_nan_loss_stops_naming_the_step_and_the_surviving_checkpoint() {
        let _one_at_a_time = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let fp = json!({});
        let mut toy = Toy::new();
        run_toy(dir.path(), &args(Some(2), false), fp.clone(), &mut toy).unwrap_err();
        let mut toy = Toy::new();
        toy.nan_at = Some(3);
        let msg = format!(
            "{:#}",
            run_toy(dir.path(), &args(None, false), fp, &mut toy).unwrap_err()
        );
        assert!(msg.contains("training stopped at step 4"), "{msg}");
        assert!(msg.contains("last good checkpoint (step 2)"), "{msg}");
        assert!(msg.contains("is NaN"), "{msg}");
        assert!(msg.contains("nothing was written to"), "{msg}");
    }

    #[test]
    fn first_difference_names_the_key() {
        let a = json!({"lr": 0.1, "seed": 1});
        let b = json!({"lr": 0.2, "seed": 1});
        assert_eq!(
            first_difference(&a, &b),
            Some(("lr".into(), "0.1".into(), "0.2".into()))
        );
        assert_eq!(first_difference(&a, &a), None);
        let c = json!({"seed": 1});
        assert_eq!(
            first_difference(&a, &c),
            Some(("lr".into(), "0.1".into(), "null".into()))
        );
    }

    #[test]
    fn checkpoint_folder_sits_beside_the_output() {
        assert_eq!(
            checkpoint_dir_for(Path::new("runs/demo/sft")),
            PathBuf::from("runs/demo/sft.checkpoint")
        );
        assert_eq!(
            checkpoint_dir_for(Path::new("sft/")),
            PathBuf::from("sft.checkpoint")
        );
    }

    #[test]
    fn dropout_seeds_differ_per_step_and_seed_and_are_stable() {
        assert_ne!(dropout_seed(1, 0), dropout_seed(1, 1));
        assert_ne!(dropout_seed(1, 0), dropout_seed(2, 0));
        assert_eq!(dropout_seed(7, 3), dropout_seed(7, 3));
        assert!(dropout_seed(u64::MAX, u64::MAX) >= 0);
    }
}

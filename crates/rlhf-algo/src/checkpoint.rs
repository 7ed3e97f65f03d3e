//! Training checkpoints: a folder holding the trainable tensors (`trainable.safetensors`),
//! the optimiser state (`optimizer.safetensors`) and a JSON file (`checkpoint.json`) with
//! the step, the position in the data order, the RNG seed and stage-specific extras.
//! Written atomically (temporary sibling folder renamed into place), so a kill leaves
//! either the previous checkpoint or the new one, never a half-written folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::Tensor;

pub use crate::error::{ensure_finite, ensure_finite_named};
use crate::error::{AlgoError, Result};

/// File with the trainable tensors.
pub const TENSORS_FILE: &str = "trainable.safetensors";
/// File with the optimiser state.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File with the JSON metadata.
pub const META_FILE: &str = "checkpoint.json";
/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// Where training stood when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Layout version (checked on load).
    pub format_version: u32,
    /// Optimiser steps (or minibatches) done.
    pub step: u64,
    /// Position in the data order (examples or minibatches consumed).
    pub data_position: u64,
    /// Seed of the run (the data order and dropout derive from it).
    pub seed: u64,
    /// Stage-specific state (metrics so far, controller state, flags to check on resume).
    pub extra: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata at `step` with no extras.
    pub fn new(step: u64, data_position: u64, seed: u64) -> CheckpointMeta {
        CheckpointMeta {
            format_version: FORMAT_VERSION,
            step,
            data_position,
            seed,
            extra: serde_json::Value::Null,
        }
    }
}

/// The checkpoint flags every trainer shares (flattened into train-sft, train-rm-lora and
/// ppo-update): when to write one, and what to do with one found beside `--out`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Checkpoints and resume")]
pub struct CheckpointArgs {
    /// Write a resumable checkpoint beside --out every N optimiser steps (0: by time only).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub checkpoint_every: u64,
    /// Also write one once this many minutes of training have passed since the last
    /// (0: never by time). A checkpoint is also written on SIGTERM/SIGINT before stopping.
    #[arg(long, default_value_t = 5.0, value_name = "MIN")]
    pub checkpoint_minutes: f64,
    /// Require resuming: a checkpoint of other inputs or flags is an error. By default a
    /// matching checkpoint is resumed and one of other inputs or flags is replaced.
    #[arg(long, conflicts_with = "no_resume")]
    pub resume: bool,
    /// Start over, ignoring (and then replacing) any checkpoint beside --out.
    #[arg(long)]
    pub no_resume: bool,
    /// Stop after N optimiser steps of this invocation, after writing a checkpoint, with
    /// exit 1 and no output (for time-limited job slots: no scheduler takes the missing
    /// output for success); the same command run again continues from the checkpoint.
    #[arg(long, value_name = "N")]
    pub stop_after_steps: Option<u64>,
    /// Keep OUT.checkpoint/ after a successful run (it is removed by default).
    #[arg(long)]
    pub keep_checkpoint: bool,
}

impl CheckpointArgs {
    /// The resume mode the flags ask for.
    pub fn mode(&self) -> ResumeMode {
        match (self.resume, self.no_resume) {
            (true, _) => ResumeMode::Require,
            (false, true) => ResumeMode::Never,
            (false, false) => ResumeMode::Auto,
        }
    }

    /// The clock that decides when a checkpoint is due.
    pub fn clock(&self) -> CheckpointClock {
        CheckpointClock::new(self.checkpoint_every, self.checkpoint_minutes)
            .with_stop_after(self.stop_after_steps)
    }

    /// Checks the values (a usage error names the flag).
    pub fn validate(&self) -> std::result::Result<(), rlhf_core::CoreError> {
        if !self.checkpoint_minutes.is_finite() || self.checkpoint_minutes < 0.0 {
            return Err(rlhf_core::CoreError::usage(format!(
                "--checkpoint-minutes {} must be a number >= 0 (0 = by steps only)",
                self.checkpoint_minutes
            )));
        }
        if self.stop_after_steps == Some(0) {
            return Err(rlhf_core::CoreError::usage(
                "--stop-after-steps must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What a trainer does with the checkpoint of an interrupted run beside its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ResumeMode {
    /// Default: resume a checkpoint of the same inputs and flags; replace any other.
    Auto,
    /// `--resume`: resume, and refuse a checkpoint of other inputs or flags.
    Require,
    /// `--no-resume`: start over.
    Never,
}

impl ResumeMode {
    /// True when a checkpoint found beside the output is to be read.
    pub fn tries(self) -> bool {
        self != ResumeMode::Never
    }

    /// A checkpoint made with other inputs or flags (`mismatch` says how): an error under
    /// `--resume`, a fresh start with a warning by default.
    pub fn on_mismatch(self, mismatch: anyhow::Error) -> anyhow::Result<()> {
        match self {
            ResumeMode::Require => Err(mismatch),
            _ => {
                tracing::warn!(
                    "{mismatch:#}\n  starting over: the checkpoint was made with other inputs or \
                     flags (it will be replaced; --resume would refuse it)"
                );
                Ok(())
            }
        }
    }
}

/// Decides, after each optimiser step, whether a checkpoint is due: every N steps, after
/// some minutes of work since the last one, or because SIGTERM/SIGINT asked to stop (then
/// the trainer saves and returns [`stopped`]). One place for every trainer.
#[derive(Debug)]
pub struct CheckpointClock {
    every_steps: u64,
    every: Option<Duration>,
    last: Instant,
    /// --stop-after-steps, and the steps seen in this process.
    stop_after: Option<u64>,
    steps_here: u64,
    /// Released after the last step: a signal during the final evaluation and the writing
    /// of the output then stops the process at once (its temporaries removed).
    cooperative: Option<rlhf_core::signals::Cooperative>,
}

/// What [`CheckpointClock::after_step`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Go on.
    No,
    /// Write a checkpoint, then go on.
    Save,
    /// Write a checkpoint, then stop.
    SaveAndStop(Stop),
}

/// Why a trainer stops after writing a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM/SIGINT arrived (exit 143/130).
    Signal(i32),
    /// --stop-after-steps N was reached (exit 1).
    StepLimit(u64),
}

/// The error after `--stop-after-steps` (exit 1: the output is not written).
#[derive(Debug, thiserror::Error)]
#[error("stopped after {steps} optimiser steps of this run as --stop-after-steps asks; checkpoint of step {done}/{total} in {dir}; rerun the same command to continue")]
pub struct StoppedAtStepLimit {
    pub steps: u64,
    pub done: u64,
    pub total: u64,
    pub dir: String,
}

impl CheckpointClock {
    /// A clock for `every_steps` (0: off) and `every_minutes` (0: off). While it lives,
    /// SIGTERM/SIGINT wait for the trainer's next step instead of stopping the process.
    pub fn new(every_steps: u64, every_minutes: f64) -> CheckpointClock {
        CheckpointClock {
            every_steps,
            every: (every_minutes > 0.0).then(|| Duration::from_secs_f64(every_minutes * 60.0)),
            last: Instant::now(),
            stop_after: None,
            steps_here: 0,
            cooperative: Some(rlhf_core::signals::Cooperative::begin()),
        }
    }

    /// The same clock that also stops after `n` steps of this process (--stop-after-steps).
    pub fn with_stop_after(mut self, n: Option<u64>) -> CheckpointClock {
        self.stop_after = n;
        self
    }

    /// After step `done` of `total`: nothing is due after the last step (the output follows).
    pub fn after_step(&mut self, done: u64, total: u64) -> Due {
        self.steps_here += 1;
        if done >= total {
            if let Some(c) = self.cooperative.take() {
                c.end();
            }
            return Due::No;
        }
        if let Some(signal) = rlhf_core::signals::pending() {
            return Due::SaveAndStop(Stop::Signal(signal));
        }
        if self.stop_after == Some(self.steps_here) {
            return Due::SaveAndStop(Stop::StepLimit(self.steps_here));
        }
        let by_steps = self.every_steps > 0 && done.is_multiple_of(self.every_steps);
        let by_time = self.every.is_some_and(|d| self.last.elapsed() >= d);
        if by_steps || by_time {
            Due::Save
        } else {
            Due::No
        }
    }

    /// Records that a checkpoint was just written.
    pub fn saved(&mut self) {
        self.last = Instant::now();
    }
}

/// The error a trainer returns after saving for `stop`: exit 130/143 for a signal, 1 for
/// --stop-after-steps.
pub fn stopped(stop: Stop, done: u64, total: u64, dir: &Path) -> anyhow::Error {
    match stop {
        Stop::Signal(signal) => rlhf_core::signals::interrupted_error(
            signal,
            format!(
                "checkpoint of step {done}/{total} in {}; rerun the same command to continue",
                dir.display()
            ),
        )
        .into(),
        Stop::StepLimit(steps) => StoppedAtStepLimit {
            steps,
            done,
            total,
            dir: dir.display().to_string(),
        }
        .into(),
    }
}

/// A loaded checkpoint (tensors on the CPU).
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
}

/// True when `dir` holds a finished checkpoint (after putting back one that a killed
/// replacement had moved aside, see `rlhf_core::atomic::recover`).
pub fn exists(dir: &Path) -> bool {
    let _ = rlhf_core::atomic::recover(dir);
    dir.join(META_FILE).is_file()
}

fn to_cpu(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.detach().to_device(tch::Device::Cpu).contiguous(),
            )
        })
        .collect()
}

/// Writes named tensors to one safetensors file (detached, moved to the CPU), naming the
/// file on failure. Not atomic by itself: write into an atomic folder or temporary name.
pub fn write_named(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    Tensor::write_safetensors(&to_cpu(tensors), path)
        .map_err(|e| AlgoError::tch(format!("writing {}", path.display()), e))
}

/// Writes a checkpoint folder at `dir` atomically (replacing an older one).
pub fn save(
    dir: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<PathBuf> {
    let out = rlhf_core::atomic::AtomicDir::new(dir)?;
    write_named(&out.path().join(TENSORS_FILE), tensors)?;
    write_named(&out.path().join(OPTIMIZER_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(meta).map_err(|e| AlgoError::BadState {
        path: dir.join(META_FILE),
        message: format!("cannot serialise checkpoint metadata: {e}"),
    })?;
    let meta_path = out.path().join(META_FILE);
    std::fs::write(&meta_path, json).map_err(|e| AlgoError::io("writing", &meta_path, e))?;
    Ok(out.commit()?)
}

/// Reads the metadata of the checkpoint at `dir`.
pub fn load_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let bytes = std::fs::read(&path).map_err(|e| AlgoError::io("reading", &path, e))?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| AlgoError::BadState {
        path: path.clone(),
        message: format!("not a checkpoint metadata file: {e}"),
    })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(AlgoError::BadState {
            path,
            message: format!(
                "checkpoint format version {} is not supported (expected {FORMAT_VERSION})",
                meta.format_version
            ),
        });
    }
    Ok(meta)
}

/// Reads a named-tensor safetensors file, naming the file on failure.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(AlgoError::BadState {
            path: path.to_path_buf(),
            message: "file is missing".into(),
        });
    }
    let mut list = Tensor::read_safetensors(path)
        .map_err(|e| AlgoError::tch(format!("reading {}", path.display()), e))?;
    list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(list)
}

/// Loads the checkpoint at `dir`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let meta = load_meta(dir)?;
    Ok(Checkpoint {
        meta,
        tensors: read_tensors(&dir.join(TENSORS_FILE))?,
        optimizer: read_tensors(&dir.join(OPTIMIZER_FILE))?,
    })
}

/// Copies saved tensors into live parameters by name (under no-grad). Every parameter
/// must be present with its shape, and every saved tensor must have a parameter.
pub fn restore_into(params: &[(String, Tensor)], saved: &[(String, Tensor)]) -> Result<()> {
    let _guard = tch::no_grad_guard();
    if params.len() != saved.len() {
        return Err(AlgoError::mismatch(
            "number of checkpointed tensors",
            params.len(),
            saved.len(),
        ));
    }
    for (name, p) in params {
        let src = saved
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                AlgoError::mismatch("checkpoint tensors", format!("a tensor `{name}`"), "none")
            })?;
        if src.size() != p.size() {
            return Err(AlgoError::mismatch(
                format!("shape of checkpointed tensor `{name}`"),
                format!("{:?}", p.size()),
                format!("{:?}", src.size()),
            ));
        }
        let mut dst = p.shallow_clone();
        dst.f_copy_(&src.to_kind(p.kind()).to_device(p.device()))
            .map_err(|e| AlgoError::tch(format!("restoring `{name}`"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_due_by_steps_and_never_after_the_last_step() {
        let mut c = CheckpointClock::new(3, 0.0);
        let due: Vec<u64> = (1..=9)
            .filter(|&d| c.after_step(d, 9) == Due::Save)
            .collect();
        assert_eq!(
            due,
            [3, 6],
            "every 3 steps, but not the last (the output follows)"
        );
        let mut off = CheckpointClock::new(0, 0.0);
        assert!((1..=9).all(|d| off.after_step(d, 9) == Due::No));
        let mut timed = CheckpointClock::new(0, 1e-9);
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_eq!(timed.after_step(1, 9), Due::Save, "by time");
    }

    #[test]
    fn stop_after_counts_the_steps_of_this_process_and_exits_1() {
        // resumed at step 4: the second step of this process stops, not step 2
        let mut c = CheckpointClock::new(0, 0.0).with_stop_after(Some(2));
        assert_eq!(c.after_step(5, 9), Due::No);
        assert_eq!(c.after_step(6, 9), Due::SaveAndStop(Stop::StepLimit(2)));
        // reaching the end first: nothing to stop
        let mut end = CheckpointClock::new(0, 0.0).with_stop_after(Some(1));
        assert_eq!(end.after_step(9, 9), Due::No);
        let err = stopped(Stop::StepLimit(2), 6, 9, Path::new("out.ckpt"));
        assert_eq!(rlhf_core::cli::exit_code_for(&err, &[]), 1);
        assert!(err.to_string().contains("stopped after 2"), "{err}");
        let err = stopped(Stop::Signal(15), 6, 9, Path::new("out.ckpt"));
        assert_eq!(rlhf_core::cli::exit_code_for(&err, &[]), 143);
    }

    #[test]
    fn resume_mode_from_flags_and_mismatch_policy() {
        let args = |resume, no_resume| CheckpointArgs {
            checkpoint_every: 0,
            checkpoint_minutes: 5.0,
            resume,
            no_resume,
            stop_after_steps: None,
            keep_checkpoint: false,
        };
        assert_eq!(args(false, false).mode(), ResumeMode::Auto);
        assert_eq!(args(true, false).mode(), ResumeMode::Require);
        assert_eq!(args(false, true).mode(), ResumeMode::Never);
        assert!(!ResumeMode::Never.tries());
        assert!(ResumeMode::Auto
            .on_mismatch(anyhow::anyhow!("other flags"))
            .is_ok());
        assert!(ResumeMode::Require
            .on_mismatch(anyhow::anyhow!("other flags"))
            .is_err());
        let mut bad = args(false, false);
        bad.checkpoint_minutes = -1.0;
        assert!(bad.validate().is_err());
    }
    use crate::optim::{AdamW, AdamWConfig};
    use tch::Kind;

    #[test]
    fn round_trip_restores_tensors_optimizer_and_meta() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("w".into(), w.shallow_clone())],
            AdamWConfig::default(),
        );
        (&w * &w).sum(Kind::Float).backward();
        opt.step(0.01);
        let mut meta = CheckpointMeta::new(1, 8, 42);
        meta.extra = serde_json::json!({"kl_coef": 0.05});
        save(
            &dir,
            &meta,
            &[("w".into(), w.shallow_clone())],
            &opt.state(),
        )
        .unwrap();
        assert!(exists(&dir));

        let w2 = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt2 = AdamW::new(
            vec![("w".into(), w2.shallow_clone())],
            AdamWConfig::default(),
        );
        let ck = load(&dir).unwrap();
        assert_eq!(ck.meta, meta);
        restore_into(&[("w".into(), w2.shallow_clone())], &ck.tensors).unwrap();
        opt2.load_state(&ck.optimizer).unwrap();
        assert_eq!(opt2.step_count(), 1);
        assert!(w2.detach().equal(&w.detach()));
        let st1 = opt.state();
        let st2 = opt2.state();
        for ((n1, t1), (n2, t2)) in st1.iter().zip(&st2) {
            assert_eq!(n1, n2);
            assert!(t1.equal(t2), "{n1}");
        }
    }

    #[test]
    fn save_replaces_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        let t = vec![("a".to_string(), Tensor::from_slice(&[1.0f32]))];
        save(&dir, &CheckpointMeta::new(1, 0, 0), &t, &[]).unwrap();
        save(&dir, &CheckpointMeta::new(2, 0, 0), &t, &[]).unwrap();
        assert_eq!(load_meta(&dir).unwrap().step, 2);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn restore_names_missing_and_misshapen_tensors() {
        let p = vec![(
            "a".to_string(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        )];
        let wrong = vec![(
            "a".to_string(),
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = restore_into(&p, &wrong).unwrap_err().to_string();
        assert!(
            e.contains("shape of checkpointed tensor `a`: expected [2], found [3]"),
            "{e}"
        );
        let other = vec![(
            "b".to_string(),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        )];
        let e = restore_into(&p, &other).unwrap_err().to_string();
        assert!(e.contains("a tensor `a`"), "{e}");
        let root = tempfile::tempdir().unwrap();
        let e = load(root.path()).unwrap_err().to_string();
        assert!(e.contains("checkpoint.json"), "{e}");
    }
}

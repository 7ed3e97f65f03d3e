//! Flags become validated settings in one place, before any model is loaded: ranges,
//! flag combinations, the model folder and the output location are checked here.

use std::path::{Path, PathBuf};

use rlhf_algo::optim::AdamWConfig;
use rlhf_algo::schedule::ScheduleKind;
use rlhf_core::error::CoreError;

use crate::args::Cli;

/// Everything the trainer needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model_dir: PathBuf,
    pub device: tch::Device,
    pub kind: tch::Kind,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Checkpoint folder beside the output: `OUT.checkpoint`.
    pub checkpoint_dir: PathBuf,
    /// LoRA (any --lora-* flag given), else full tuning.
    pub lora: Option<rlhf_nn::LoraChoice>,
    pub epochs: u64,
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub schedule: ScheduleKind,
    pub min_lr_fraction: f64,
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub eval_every: u64,
    /// The shared checkpoint flags.
    pub checkpoint: rlhf_algo::checkpoint::CheckpointArgs,
    pub seed: u64,
}

impl Settings {
    /// Validates the command line.
    pub fn from_cli(cli: &Cli) -> Result<Settings, CoreError> {
        rlhf_core::paths::check_outputs(
            &[("--out", &cli.out)],
            &[("--model", &cli.model.model), ("--data", &cli.data)],
        )?;
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(CoreError::usage(format!("--{name} must be at least 1")))
            } else {
                Ok(v)
            }
        };
        positive("batch-size", cli.batch_size)?;
        positive("grad-accum", cli.grad_accum)?;
        positive("max-seq-len", cli.max_seq_len)?;
        if cli.max_seq_len < 2 {
            return Err(CoreError::usage("--max-seq-len must be at least 2"));
        }
        if cli.max_steps == Some(0) {
            return Err(CoreError::usage("--max-steps must be at least 1"));
        }
        cli.train.checkpoint.validate()?;
        if cli.max_steps.is_none() && cli.epochs == 0 {
            return Err(CoreError::usage("--epochs must be at least 1"));
        }
        let o = &cli.train.optim;
        o.validate()?;
        let lora = cli
            .train
            .lora
            .given()
            .then(|| cli.train.lora.resolve())
            .transpose()?;
        // before any input is read: a device this machine cannot use is a usage error
        let device = cli
            .model
            .device()
            .map_err(|e| CoreError::usage(e.to_string()))?;
        let model_dir = cli.model.model.clone();
        if !model_dir.join("config.json").is_file() {
            return Err(CoreError::BadInput {
                path: model_dir.clone(),
                row: None,
                message: "not a model folder: config.json is missing".into(),
            });
        }
        if !model_dir.join("tokenizer.json").is_file() {
            return Err(CoreError::BadInput {
                path: model_dir.clone(),
                row: None,
                message: "the model folder has no tokenizer.json\n  hint: train-sft tokenizes with the model's own tokenizer".into(),
            });
        }
        if cli.out.is_file() {
            return Err(CoreError::usage(format!(
                "--out {} is a file; give a folder path",
                cli.out.display()
            )));
        }
        if same_path(&cli.out, &model_dir) {
            return Err(CoreError::usage(format!(
                "--out {} is the input model folder; write to a new folder",
                cli.out.display()
            )));
        }
        let schedule_needs_total = o.lr_schedule != ScheduleKind::Constant;
        if schedule_needs_total {
            if let Some(steps) = cli.max_steps {
                if steps <= o.warmup_steps {
                    return Err(CoreError::usage(format!(
                        "--lr-schedule {} needs --max-steps ({steps}) greater than --warmup-steps ({})",
                        o.lr_schedule, o.warmup_steps
                    )));
                }
            }
        }
        Ok(Settings {
            model_dir,
            device,
            kind: cli.model.kind(),
            data: cli.data.clone(),
            out: cli.out.clone(),
            checkpoint_dir: rlhf_algo::step_loop::checkpoint_dir_for(&cli.out),
            lora,
            epochs: cli.epochs,
            max_steps: cli.max_steps,
            batch_size: cli.batch_size,
            eval_batch_size: cli.eval_batch_size.unwrap_or(cli.batch_size).max(1),
            grad_accum: cli.grad_accum,
            learning_rate: o.learning_rate,
            warmup_steps: o.warmup_steps,
            schedule: o.lr_schedule,
            min_lr_fraction: o.final_lr_fraction,
            max_grad_norm: o.max_grad_norm,
            max_seq_len: cli.max_seq_len,
            weight_decay: o.weight_decay,
            adam_beta1: o.adam_beta1,
            adam_beta2: o.adam_beta2,
            adam_eps: o.adam_eps,
            eval_every: cli.eval_every,
            checkpoint: cli.train.checkpoint.clone(),
            seed: cli.global.seed,
        })
    }

    /// AdamW settings for a parameter group (`decay`: matrices; otherwise norms, biases).
    pub fn adamw(&self, decay: bool) -> AdamWConfig {
        AdamWConfig {
            lr: self.learning_rate,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: if decay { self.weight_decay } else { 0.0 },
        }
    }

    /// The settings that must match when resuming (everything that shapes the result),
    /// as JSON stored in the checkpoint.
    pub fn fingerprint(&self) -> serde_json::Value {
        serde_json::json!({
            "lora": self.lora,
            "epochs": self.epochs,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "min_lr_fraction": self.min_lr_fraction,
            "max_grad_norm": self.max_grad_norm,
            "max_seq_len": self.max_seq_len,
            "weight_decay": self.weight_decay,
            "adam_beta1": self.adam_beta1,
            "adam_beta2": self.adam_beta2,
            "adam_eps": self.adam_eps,
            "seed": self.seed,
            "dtype": format!("{:?}", self.kind),
            "device": format!("{:?}", self.device),
            "eval_every": self.eval_every,
            "eval_batch_size": self.eval_batch_size,
        })
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

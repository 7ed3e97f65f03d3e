//! The command line of train-sft. Raw flags only; `settings` validates them into the
//! values the trainer uses before any model is loaded.

use std::path::PathBuf;

use clap::Parser;
use rlhf_algo::schedule::ScheduleKind;
use rlhf_core::cli::GlobalArgs;
use rlhf_nn::ModelArgs;

/// Supervised fine-tuning (full or LoRA) on an sft file.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "train-sft",
    version,
    about,
    long_about = "Supervised fine-tuning on an sft file (prompt + completion, or messages). \
The loss is on completion tokens only (the prompt is masked); batches group examples of \
similar length; AdamW with warm-up and cosine/linear decay, gradient clipping and \
accumulation. Without --lora-rank every weight is trained and OUT is a model folder \
(config.json, model.safetensors, tokenizer files); with --lora-rank OUT is a PEFT adapter \
folder (merge-adapter folds it in). OUT/metrics.parquet holds the metrics in long form. \
Checkpoints go to OUT.ckpt/ (every --checkpoint-every steps, every --checkpoint-minutes, and \
on SIGTERM/SIGINT before exiting 143/130); running the same command again continues from \
there to the same final weights as an uninterrupted run."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// The sft file (a Parquet file, a folder of part files, or a glob). Rows with split
    /// `train` are trained on, rows with split `eval` are measured.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,

    /// Output folder: a model folder (full tuning) or a PEFT adapter folder (LoRA).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// LoRA rank. Without it every weight of the model is trained (full tuning).
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<i64>,

    /// LoRA scale numerator (the adapter's output is scaled by alpha / rank). Default: 2 x rank.
    #[arg(long, value_name = "A")]
    pub lora_alpha: Option<f64>,

    /// Dropout on the LoRA branch's input during training.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub lora_dropout: f64,

    /// Modules that get LoRA adapters, comma-separated (e.g. q_proj,v_proj). Default:
    /// the attention and MLP projections of the model's family.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub target_modules: Vec<String>,

    /// Passes over the training rows (ignored when --max-steps is given).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub epochs: u64,

    /// Optimiser steps to run (overrides --epochs; the data order wraps into later epochs).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,

    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,

    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub grad_accum: usize,

    /// Peak learning rate (after warm-up).
    #[arg(long, default_value_t = 3e-4, value_name = "LR")]
    pub learning_rate: f64,

    /// Optimiser steps of linear warm-up.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub warmup_steps: u64,

    /// Learning-rate decay after warm-up.
    #[arg(long, default_value_t = ScheduleKind::Cosine, value_name = "KIND")]
    pub schedule: ScheduleKind,

    /// Final learning rate as a fraction of the peak (linear and cosine decay).
    #[arg(long, default_value_t = 0.1, value_name = "F")]
    pub min_lr_fraction: f64,

    /// Clip the global gradient norm to this value (0 disables clipping).
    #[arg(long, default_value_t = 1.0, value_name = "NORM")]
    pub max_grad_norm: f64,

    /// Longest example in tokens (prompt + completion); longer ones lose prompt tokens
    /// from the start, then completion tokens from the end. Capped by the model's
    /// maximum position.
    #[arg(long, default_value_t = 512, value_name = "TOKENS")]
    pub max_seq_len: usize,

    /// AdamW decoupled weight decay (applied to matrices, not to norms or biases).
    #[arg(long, default_value_t = 0.0, value_name = "WD")]
    pub weight_decay: f64,

    /// AdamW beta2 (second-moment decay).
    #[arg(long, default_value_t = 0.999, value_name = "B2")]
    pub adam_beta2: f64,

    /// Measure eval loss and perplexity every N optimiser steps (0: only at the end).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: u64,

    /// Examples per eval batch. Default: --batch-size.
    #[arg(long, value_name = "N")]
    pub eval_batch_size: Option<usize>,

    /// Checkpoints go to OUT.ckpt/; a rerun of the same command resumes from them.
    #[command(flatten)]
    pub checkpoint: rlhf_algo::checkpoint::CheckpointArgs,

    /// Stop after this many optimiser steps of this invocation, saving a checkpoint and
    /// writing no output (for time-limited job slots); run the same command again to continue.
    #[arg(long, value_name = "N")]
    pub stop_after_steps: Option<u64>,

    /// Keep OUT.ckpt/ after a successful run (it is removed by default).
    #[arg(long)]
    pub keep_checkpoint: bool,
}

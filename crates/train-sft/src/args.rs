//! The command line of train-sft. Raw flags only; `settings` validates them into the
//! values the trainer uses before any model is loaded.

use std::path::PathBuf;

use clap::Parser;
use rlhf_algo::trainer_args::TrainerArgs;
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
accumulation. Without --lora-* flags every weight is trained and OUT is a model folder \
(config.json, model.safetensors, tokenizer files); with any of them (e.g. --lora-rank 8) \
OUT is a PEFT adapter folder (merge-adapter folds it in). OUT/metrics.parquet holds the metrics in long form. \
Checkpoints go to OUT.checkpoint/ (every --checkpoint-every steps, every --checkpoint-minutes, and \
on SIGTERM/SIGINT before exiting 143/130); running the same command again continues from \
there to the same final weights as an uninterrupted run."
)]
#[command(mut_arg("learning_rate", |a| a.default_value("3e-4").required(false)))]
#[command(mut_arg("lr_schedule", |a| a.default_value("cosine").required(false)))]
#[command(mut_arg("final_lr_fraction", |a| a.default_value("0.1").required(false)))]
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

    /// Longest example in tokens (prompt + completion); longer ones lose prompt tokens
    /// from the start, then completion tokens from the end. Capped by the model's
    /// maximum position.
    #[arg(long, default_value_t = 512, value_name = "TOKENS")]
    pub max_seq_len: usize,

    /// Measure eval loss and perplexity every N optimiser steps (0: only at the end).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: u64,

    /// Examples per eval batch. Default: --batch-size.
    #[arg(long, value_name = "N")]
    pub eval_batch_size: Option<usize>,

    /// LoRA (any --lora-* flag trains a PEFT adapter instead of every weight), optimiser,
    /// and checkpoints in OUT.checkpoint/ (a rerun of the same command resumes from them).
    #[command(flatten)]
    pub train: TrainerArgs,
}

//! train-sft: Supervised fine-tuning (full or LoRA) on an sft file.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Supervised fine-tuning (full or LoRA) on an sft file.
#[derive(Debug, Parser)]
#[command(
    name = "train-sft",
    version,
    about,
    long_about = "Trains on completion tokens only (prompt masked), with AdamW, warmup and decay, gradient clipping, checkpoints and --resume. Writes a model folder (full) or a PEFT adapter folder (LoRA)."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(cli::not_implemented("train-sft"), &[rlhf_nn::is_bad_input])
}

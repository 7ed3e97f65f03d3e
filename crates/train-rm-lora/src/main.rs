//! train-rm-lora: Train a reward model: LoRA adapter plus scalar score head on a frozen base, from preferences and/or ratings.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Train a reward model: LoRA adapter plus scalar score head on a frozen base, from preferences and/or ratings.
#[derive(Debug, Parser)]
#[command(
    name = "train-rm-lora",
    version,
    about,
    long_about = "Bradley-Terry on pairs (soft labels, ties, ranking groups), BCE on thumbs, LoRA or --full; writes a PEFT adapter folder with the score head and reward normalisation, and metrics."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(
        cli::not_implemented("train-rm-lora"),
        &[rlhf_nn::is_bad_input],
    )
}

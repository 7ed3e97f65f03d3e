//! merge-adapter: Fold a LoRA adapter into its base and write a Hugging Face model folder transformers loads as-is.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Fold a LoRA adapter into its base and write a Hugging Face model folder transformers loads as-is.
#[derive(Debug, Parser)]
#[command(
    name = "merge-adapter",
    version,
    about,
    long_about = "Policy adapters become a *ForCausalLM folder, reward adapters a *ForSequenceClassification folder with the score head; --verify compares merged and unmerged logits."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(
        cli::not_implemented("merge-adapter"),
        &[rlhf_nn::is_bad_input],
    )
}

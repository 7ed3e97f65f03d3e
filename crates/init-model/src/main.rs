//! init-model: Train a byte-level BPE tokenizer and write a Hugging Face model folder with random weights.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Train a byte-level BPE tokenizer and write a Hugging Face model folder with random weights.
#[derive(Debug, Parser)]
#[command(
    name = "init-model",
    version,
    about,
    long_about = "Trains a tokenizer on a text column of a Parquet file and writes a Llama-family or GPT-2 model folder (config.json, model.safetensors, tokenizer files) with random weights, for the embedded default."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(cli::not_implemented("init-model"), &[rlhf_nn::is_bad_input])
}

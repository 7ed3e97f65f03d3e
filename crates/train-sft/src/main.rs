//! train-sft: supervised fine-tuning (full or LoRA) on an sft file. Thin entry point:
//! parse, validate, run, map the error to an exit code.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli;
use train_sft::{Cli, Settings};

fn main() -> ExitCode {
    let args = Cli::parse();
    args.global.init();
    rlhf_nn::init_threads(args.global.threads);
    let result = Settings::from_cli(&args)
        .map_err(anyhow::Error::from)
        .and_then(|s| train_sft::run(&s).map(|_| ()));
    cli::finish(result, &[rlhf_nn::is_bad_input, rlhf_algo::is_bad_input])
}

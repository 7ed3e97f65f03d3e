//! sample-rollouts: Sample K responses per prompt from the base model plus an optional policy adapter, with sampling and reference log-probabilities.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Sample K responses per prompt from the base model plus an optional policy adapter, with sampling and reference log-probabilities.
#[derive(Debug, Parser)]
#[command(
    name = "sample-rollouts",
    version,
    about,
    long_about = "Batched sampling with a KV cache; writes the rollouts artifact, deterministic per seed regardless of batch size and sharding."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(
        cli::not_implemented("sample-rollouts"),
        &[rlhf_nn::is_bad_input],
    )
}

//! score-rewards: Score rollouts with reward adapters and rule rewards; write one scores row per rollout.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Score rollouts with reward adapters and rule rewards; write one scores row per rollout.
#[derive(Debug, Parser)]
#[command(
    name = "score-rewards",
    version,
    about,
    long_about = "Combines reward-model adapters (with their stored normalisation), rule rewards, the embedded task's oracle and the missing-EOS penalty into the reward column."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(
        cli::not_implemented("score-rewards"),
        &[rlhf_nn::is_bad_input],
    )
}

//! ppo-update: One policy iteration: PPO, REINFORCE with baseline (PERL), RLOO or GRPO on rollouts and scores; writes the next policy adapter.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// One policy iteration: PPO, REINFORCE with baseline (PERL), RLOO or GRPO on rollouts and scores; writes the next policy adapter.
#[derive(Debug, Parser)]
#[command(
    name = "ppo-update",
    version,
    about,
    long_about = "Reads rollouts and scores, computes KL-regularised advantages and updates the LoRA policy (and critic); writes the next adapter folder with optimiser and KL-controller state, and metrics."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(cli::not_implemented("ppo-update"), &[rlhf_nn::is_bad_input])
}

//! score-rewards: parse the command line, start logging, run the stage, map the outcome to
//! an exit code (0 ok, 1 failure, 2 usage, 3 bad input data). Rule rewards are scored here,
//! without libtorch; a run with `--reward-model` continues in `score-rewards-rm` (beside
//! this executable), which links libtorch and takes this process's place with the same
//! arguments.

use std::os::unix::process::CommandExt as _;

use anyhow::Context as _;
use rlhf_core::cli;
use score_rewards::Cli;

/// The binary that scores reward models, beside this one.
const WITH_REWARD_MODELS: &str = "score-rewards-rm";

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("score-rewards");
    if !cli.reward_models.is_empty() {
        cli::finish(Err(hand_to_reward_models()), &[])
    }
    cli.global.init();
    cli::finish(score_rewards::run(&cli, None), &[])
}

/// Replaces this process by [`WITH_REWARD_MODELS`] with the same arguments (the same process
/// id, so signals and the exit code reach the caller unchanged); returns only when that fails.
fn hand_to_reward_models() -> anyhow::Error {
    let exe = match std::env::current_exe().context("locating score-rewards") {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let target = exe.with_file_name(WITH_REWARD_MODELS);
    let err = std::process::Command::new(&target)
        .arg0("score-rewards")
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::Error::new(err).context(format!(
        "starting {} (it scores reward models; `make build` builds it beside score-rewards)",
        target.display()
    ))
}

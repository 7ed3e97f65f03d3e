//! sample-rollouts: parse the command line, start logging, run the stage, map the outcome
//! to an exit code (0 ok, 1 failure, 2 usage, 3 bad input data).

use rlhf_core::cli;
use sample_rollouts::Cli;

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("sample-rollouts");
    cli.global.init();
    cli::finish_with(
        sample_rollouts::run(&cli),
        &[rlhf_nn::is_bad_input],
        &[rlhf_nn::is_usage],
    )
}

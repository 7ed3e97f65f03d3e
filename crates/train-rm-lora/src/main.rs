//! train-rm-lora: parse the command line, start logging, run the stage, map the error to
//! the documented exit code (0 ok, 1 failure, 2 usage, 3 bad input data).

use rlhf_core::cli;
use train_rm_lora::args::Cli;

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("train-rm-lora");
    cli.global.init();
    cli::finish_with(
        train_rm_lora::run::run(&cli),
        &[rlhf_nn::is_bad_input, rlhf_algo::is_bad_input],
        &[rlhf_nn::is_usage],
    )
}

//! ppo-update: one policy iteration (PPO, REINFORCE with baseline, RLOO or GRPO) on rollouts
//! and scores; writes the next policy adapter. Thin entry point: parse, validate, run,
//! print the JSON summary on stdout, map the error to an exit code.

use ppo_update::{Cli, Settings};
use rlhf_core::cli;

fn main() -> ! {
    let args = rlhf_core::config::parse::<Cli>("ppo-update");
    args.global.init();
    rlhf_nn::init_threads(args.global.threads);
    let result = Settings::from_cli(&args).and_then(|s| {
        let summary = ppo_update::run(&s)?;
        let out = rlhf_core::summary::StageSummary::new("ppo-update", env!("CARGO_PKG_VERSION"))
            .output(&s.out, None)
            .metric("optimizer_steps", summary.optimizer_steps as f64)
            .metric("score_mean", summary.score_mean)
            .metric("kl_ref", summary.kl_ref)
            .metric("next_kl_coef", summary.next_kl_coef)
            .details(&summary);
        args.global.write_summary(out)?;
        Ok(())
    });
    cli::finish_with(
        result,
        &[rlhf_nn::is_bad_input, rlhf_algo::is_bad_input],
        &[rlhf_nn::is_usage],
    )
}

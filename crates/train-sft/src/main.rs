//! train-sft: supervised fine-tuning (full or LoRA) on an sft file. Thin entry point:
//! parse, validate, run, map the error to an exit code.

use rlhf_core::cli;
use train_sft::{Cli, Settings};

fn main() -> ! {
    let args = rlhf_core::config::parse::<Cli>("train-sft");
    args.global.init();
    rlhf_nn::init_threads(args.global.threads);
    let result = Settings::from_cli(&args)
        .map_err(anyhow::Error::from)
        .and_then(|s| {
            let outcome = train_sft::run(&s)?;
            let mut out =
                rlhf_core::summary::StageSummary::new("train-sft", env!("CARGO_PKG_VERSION"))
                    .metric("steps", outcome.steps as f64)
                    .output(&s.out, None);
            if let Some(l) = outcome.eval_loss {
                out = out.metric("eval_loss", l);
            }
            if let Some(l) = outcome.final_train_loss {
                out = out.metric("train_loss", l);
            }
            args.global.write_summary(out.details(&outcome))?;
            Ok(())
        });
    cli::finish_with(
        result,
        &[rlhf_nn::is_bad_input, rlhf_algo::is_bad_input],
        &[rlhf_nn::is_usage],
    )
}

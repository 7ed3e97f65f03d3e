//! init-model: train a byte-level BPE tokenizer and write a Hugging Face model folder with
//! random weights. Thin entry point: parse, validate, run, map the error to an exit code.

use init_model::{Cli, Settings};
use rlhf_core::cli;

fn main() -> ! {
    let args = rlhf_core::config::parse::<Cli>("init-model");
    args.global.init();
    rlhf_nn::init_threads(args.global.threads);
    let result = Settings::from_cli(&args)
        .map_err(anyhow::Error::from)
        .and_then(|s| {
            init_model::run(&s)?;
            let out =
                rlhf_core::summary::StageSummary::new("init-model", env!("CARGO_PKG_VERSION"))
                    .output(&s.out, None);
            args.global.write_summary(out)?;
            Ok(())
        });
    cli::finish(result, &[rlhf_nn::is_bad_input])
}

//! prep-data: Normalise raw feedback data (HH-RLHF, SHP, TL;DR, UltraFeedback, thumbs, rankings, generic) into prompts, preferences, ratings and sft Parquet files, with a rejects file.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Normalise raw feedback data (HH-RLHF, SHP, TL;DR, UltraFeedback, thumbs, rankings, generic) into prompts, preferences, ratings and sft Parquet files, with a rejects file.
#[derive(Debug, Parser)]
#[command(
    name = "prep-data",
    version,
    about,
    long_about = "Reads JSONL, JSON, CSV or Parquet in known feedback formats and writes our prompts, preferences, ratings and sft artifacts, plus rejects for every row it could not use. Also pairs scored rollouts into oracle preferences and generates the embedded synthetic task. Does not need libtorch."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(cli::not_implemented("prep-data"), &[])
}

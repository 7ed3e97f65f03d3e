//! report: Plot and summarise a run folder: reward-model accuracy, proxy and gold reward, KL, lengths, win rate.

use std::process::ExitCode;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Plot and summarise a run folder: reward-model accuracy, proxy and gold reward, KL, lengths, win rate.
#[derive(Debug, Parser)]
#[command(
    name = "report",
    version,
    about,
    long_about = "Reads a run folder (metrics and scores Parquet files) and writes PNG and SVG plots, summary.md, summary.html and summary.json. Does not need libtorch."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish(cli::not_implemented("report"), &[])
}

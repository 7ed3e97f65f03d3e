//! prep-data: normalise raw feedback data (HH-RLHF, SHP, TL;DR, UltraFeedback, thumbs,
//! rankings, generic) into prompts, preferences, ratings and sft Parquet files with a
//! rejects file; label scored rollouts into oracle preference pairs; generate the embedded
//! synthetic task. Does not link libtorch.

mod convert;
mod error;
mod formats;
mod input;
mod output;
mod pairs;
mod reject;
mod render;
mod split;
mod synthetic_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rlhf_core::cli::{self, GlobalArgs};

use crate::reject::Summary;

/// Normalise raw feedback data into the pipeline's Parquet artifacts, with a rejects file.
#[derive(Debug, Parser)]
#[command(
    name = "prep-data",
    version,
    about,
    long_about = "Reads JSONL, JSON, CSV or Parquet in known feedback formats and writes our prompts, preferences, ratings and sft artifacts, plus rejects for every row it could not use. Also pairs scored rollouts into oracle preferences and generates the embedded synthetic task. Does not need libtorch.\n\nExit codes: 0 success, 1 failure, 2 usage (a bad flag value too), 3 bad input data (an unreadable or corrupt file, or --strict and a rejected row), 130/143 stopped by SIGINT/SIGTERM."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert raw feedback files into prompts/preferences/ratings/sft + rejects.
    Convert(Box<convert::ConvertArgs>),
    /// Pair scored rollouts of the same prompt into preferences by a score column (oracle labels).
    Pairs(pairs::PairsArgs),
    /// Generate the embedded synthetic review task from --seed.
    Synthetic(synthetic_cmd::SyntheticArgs),
    /// Copy one split (train/eval) of an artifact file.
    Split(split::SplitArgs),
}

fn report(summary: &Summary, quiet: bool, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    if !quiet {
        for line in summary.lines() {
            eprintln!("{line}");
        }
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(summary)? + "\n";
        if path.as_os_str() == "-" {
            print!("{text}");
        } else {
            rlhf_core::atomic::write_file(path, text.as_bytes())?;
        }
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let quiet = cli.global.quiet > 0;
    match &cli.command {
        Command::Convert(a) => report(&convert::run(a)?, quiet, a.summary_json.as_deref()),
        Command::Pairs(a) => report(
            &pairs::run(a, cli.global.seed)?,
            quiet,
            a.summary_json.as_deref(),
        ),
        Command::Synthetic(a) => report(&synthetic_cmd::run(a, cli.global.seed)?, quiet, None),
        Command::Split(a) => report(&split::run(a)?, quiet, None),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.global.init();
    cli::finish_with(run(&cli), &[error::is_bad_input], &[error::is_usage])
}

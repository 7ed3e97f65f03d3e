//! prep-data: normalise raw feedback data (HH-RLHF, SHP, TL;DR, UltraFeedback, thumbs,
//! rankings, generic) into prompts, preferences, ratings and sft Parquet files with a
//! rejects file; label scored rollouts into oracle preference pairs; generate the embedded
//! synthetic task. Does not link libtorch. The stage's modules live in the library
//! (lib.rs); this file parses the command line and maps the outcome to an exit code.

use clap::{Parser, Subcommand};
use prep_data::reject::Summary;
use prep_data::{convert, error, pairs, split, synthetic_cmd};
use rlhf_core::cli::{self, GlobalArgs};

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

/// Prints the summary on stderr and writes `--summary-json`; `out_dir` is the folder the
/// written file names are relative to (convert, synthetic).
fn report(summary: &Summary, cli: &Cli, out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    if cli.global.quiet == 0 {
        for line in summary.lines() {
            eprintln!("{line}");
        }
    }
    let written: u64 = summary.written.values().sum();
    let mut out = rlhf_core::summary::StageSummary::new("prep-data", env!("CARGO_PKG_VERSION"))
        .metric("rows_read", summary.rows_read as f64)
        .metric("rows_written", written as f64)
        .metric("rows_rejected", summary.total_rejected() as f64)
        .details(summary);
    for (name, rows) in &summary.written {
        let path = match out_dir {
            Some(dir) => dir.join(name),
            None => std::path::PathBuf::from(name),
        };
        out = out.output(&path, Some(*rows));
    }
    cli.global.write_summary(out)?;
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let (summary, out_dir) = match &cli.command {
        Command::Convert(a) => (convert::run(a)?, Some(a.out_dir.as_path())),
        Command::Pairs(a) => (pairs::run(a, cli.global.seed)?, None),
        Command::Synthetic(a) => (
            synthetic_cmd::run(a, cli.global.seed)?,
            Some(a.out_dir.as_path()),
        ),
        Command::Split(a) => (split::run(a)?, None),
    };
    report(&summary, cli, out_dir)
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("prep-data");
    cli.global.init();
    cli::finish_with(run(&cli), &[error::is_bad_input], &[error::is_usage])
}

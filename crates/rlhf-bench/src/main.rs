//! rlhf-bench: runs the benchmark cases, prints a table and writes results.json.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use rlhf_bench::{machine::Machine, Context, Results};
use rlhf_core::cli::{self, GlobalArgs};

/// Benchmark harness (`make bench`): throughput and memory figures with ratios against a roof or a reference.
#[derive(Debug, Parser)]
#[command(
    name = "rlhf-bench",
    version,
    about,
    long_about = "Runs the benchmark cases in order, prints a table on stdout and writes {\"machine\": {...}, \"cases\": [{\"name\", \"value\", \"unit\", \"reference\", \"reference_value\", \"ratio\"}, ...]} (ratio = ours over the reference, oriented so that higher is better). Python references run with the interpreter in RLHF_PYTHON (make bench sets it); without it, references are left empty. Timings belong here, never in pass/fail tests."
)]
struct Cli {
    /// Results file (JSON), written atomically.
    #[arg(long, value_name = "FILE", default_value = "runs/bench/results.json")]
    out: PathBuf,
    /// Comma-separated case names to run (default: all; see --list).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    cases: Vec<String>,
    /// Short measurements (smoke test); figures are noisier.
    #[arg(long)]
    quick: bool,
    /// Rounds of the training-step and sampling cases (policy_step, rm_step, sampling): ours
    /// and the Python reference run alternately N times and each side reports its best round,
    /// so that a machine whose speed drifts between runs does not decide the ratio.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Folder of the Python reference scripts [default: scripts/bench of the work tree this
    /// binary was built in (target/<profile>/), or share/perl-rlhf/scripts/bench beside an
    /// installed bin/].
    #[arg(long, value_name = "DIR")]
    scripts_dir: Option<PathBuf>,
    /// Python interpreter for the references (the project's environment).
    #[arg(long, env = "RLHF_PYTHON", value_name = "PATH")]
    python: Option<PathBuf>,
    #[command(flatten)]
    global: GlobalArgs,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if cli.list {
        for c in rlhf_bench::cases::registry() {
            println!("{:<24} {}", c.name(), c.about());
        }
        return Ok(());
    }
    let selected = rlhf_bench::select(&cli.cases)?;
    let threads = cli.global.threads();
    let ctx = Context {
        quick: cli.quick,
        threads,
        rounds: cli.rounds as usize,
        python: cli.python.clone(),
        scripts_dir: match &cli.scripts_dir {
            Some(d) => d.clone(),
            None => rlhf_bench::default_scripts_dir()?,
        },
        done: Vec::new(),
    };
    let cases = rlhf_bench::run_cases(&selected, ctx)?;
    print!("{}", rlhf_bench::table(&cases));
    let results = Results {
        machine: Machine::detect(threads, cli.quick),
        cases,
    };
    let mut json = serde_json::to_string_pretty(&results).context("serialising results")?;
    json.push('\n');
    rlhf_core::atomic::write_file(&cli.out, json.as_bytes())
        .with_context(|| format!("writing {}", cli.out.display()))?;
    tracing::info!("wrote {}", cli.out.display());
    Ok(())
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("rlhf-bench");
    cli.global.init();
    cli::finish(run(&cli), &[])
}

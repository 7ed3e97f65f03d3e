//! label-pairs: label preference pairs in the browser (`serve`) and export them as a
//! preferences file (`export`). Parses the command line, starts logging, runs the
//! subcommand and maps the outcome to the pipeline's exit codes.

use label_pairs::args::{Cli, Command};
use label_pairs::{error, export, serve};
use rlhf_core::cli;

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(a) => serve::run(a, cli.global.seed),
        Command::Export(a) => {
            let report = export::run(a)?;
            if cli.global.quiet == 0 {
                for line in report.lines(&a.out) {
                    eprintln!("{line}");
                }
            }
            cli.global.write_summary(report.summary(&a.out))?;
            Ok(())
        }
    }
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("label-pairs");
    cli.global.init();
    cli::finish_with(run(&cli), &[error::is_bad_input], &[error::is_usage])
}
